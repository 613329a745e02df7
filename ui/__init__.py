"""``trackside ui``: the web page where people look at their runs.

    trackside ui                      # the runs of ./trackside (or $TRACKSIDE_DIR) on http://127.0.0.1:8080
    trackside ui grpc://tracker:7311 --token T
    trackside server --ui-port 8080   # the same page beside a team server

An ASGI app (Starlette on uvicorn) with a JSON API under ``/api/`` (``docs/ui-api.md``) that
reads through ``trackside.Api``; the page is the package's own ES modules and CSS, with
plotly.js from the installed ``plotly`` package: nothing is fetched from the internet.
Needs the ``[ui]`` extra (starlette, uvicorn, orjson, plotly); ``import trackside`` does not
import this package.
"""

from .serve import DEFAULT_PORT, ConfigError, UIServer, serve

__all__ = ["DEFAULT_PORT", "ConfigError", "UIServer", "serve"]
