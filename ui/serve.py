"""Serving the page: ``trackside ui`` (in the foreground) and ``trackside server --ui-port``
(in a thread of the server, with its own event loop)."""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Optional
from urllib.parse import quote

from trackside.contracts.network import is_loopback

DEFAULT_PORT = 8080


class ConfigError(ValueError):
    """The page will not be served as asked (the message says what to change)."""


def check_bind(host: str, token: Optional[str]) -> None:
    """Loopback, or a token: anyone who reaches the port could read every run otherwise."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve the page on {host} without a token: anyone who can reach the port could read "
            f"every run. Pass --token (or set TRACKSIDE_TOKEN), or listen on 127.0.0.1"
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one). Raises ConfigError when the
    address cannot be bound."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def page_url(host: str, port: int, token: Optional[str], path: str = "/") -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    url = f"http://{shown}:{port}{path}"
    return url + (f"?token={quote(token, safe='')}" if token else "")


class UIServer:
    """The page over ``api``, served by uvicorn on ``host:port``. ``start()`` serves from a
    thread of its own (its own event loop: a slow page never holds up the caller's loop) and
    returns the bound port; ``stop()`` ends it and waits. ``run()`` serves in the calling
    thread until SIGINT/SIGTERM."""

    def __init__(self, api, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: Optional[str] = None):
        import uvicorn  # optional: the [ui] extra

        from .app import create_app

        check_bind(host, token)
        self.host, self.token = host, token or None
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        app = create_app(api, token=self.token)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        """The page's address, with the token when there is one (what a person opens)."""
        return page_url(self.host, self.port, self.token)

    def start(self) -> int:
        self._thread = threading.Thread(target=self.server.run, args=([self.sock],), name="trackside-ui", daemon=True)
        self._thread.start()
        return self.port

    def run(self) -> None:
        self.server.run(sockets=[self.sock])

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()


def serve(source: Optional[str], host: str, port: int, token: Optional[str], ca: Optional[str] = None) -> int:
    """``trackside ui``: serve the page for a run root or a team server until a signal; the
    exit status."""
    try:
        import uvicorn  # noqa: F401  (optional: the [ui] extra)
        import starlette  # noqa: F401

        from .app import plotly_js

        plotly_js()
    except ImportError as e:
        name = getattr(e, "name", None)
        print(f"trackside ui: {e if name is None else f'needs {name}'}: pip install 'trackside[ui]'", file=sys.stderr)
        return 2
    from trackside.api import Api, StoreNotFoundError, StoreError

    token = token or os.environ.get("TRACKSIDE_TOKEN") or None
    try:
        if source and source.startswith(("grpc://", "grpcs://")):
            api = Api(source, token=token, ca=ca)
            where = source
        else:
            api = Api(source)
            where = api.root
    except (StoreNotFoundError, StoreError) as e:
        print(f"trackside ui: {e}", file=sys.stderr)
        return 1
    try:
        server = UIServer(api, host, port, token)
    except ConfigError as e:
        api.close()
        print(f"trackside ui: {e}", file=sys.stderr)
        return 2
    print(f"trackside ui: {server.url}  (runs of {where}; Ctrl+C stops)", flush=True)
    try:
        server.run()
    finally:
        api.close()
    return 0
