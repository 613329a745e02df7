"""Exceptions shared by both codec implementations, so callers catch one class whichever runs."""


class CodecError(ValueError):
    """A record body passed its checksum but does not decode (a format or encoder bug)."""
