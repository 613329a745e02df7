"""The top room: the ``trackside`` command (``main``), ``trackside top``, the profiler behind
``trackside bench``, and the importers' command line. It may import every other room (it starts
daemons and servers, reads stores, syncs runs); nothing imports it."""

from .main import main

__all__ = ["main"]
