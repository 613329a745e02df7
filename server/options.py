"""The options of ``trackside server``, light to import: the CLI builds its ``server`` command
from them without loading the server (grpc) until the command runs."""

from __future__ import annotations

import argparse
import os

from trackside.contracts.constants import SERVER_PORT

DEFAULT_ROOT = "trackside-server"


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=DEFAULT_ROOT, help=f"where runs are kept (default: ./{DEFAULT_ROOT})")
    p.add_argument("--db", help="database URL (default: SQLite in the root; postgresql://... for a team)")
    p.add_argument(
        "--shared",
        action="store_true",
        help="one of several servers on one PostgreSQL database (--db) and one root: any of them takes "
        "any upload, each run is stored by one of them at a time (docs/multiserver.md)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: loopback; any other address requires a token)",
    )
    p.add_argument("--port", type=int, default=SERVER_PORT, help=f"port (default {SERVER_PORT}; 0: any free port)")
    p.add_argument(
        "--token",
        help="require this token on every call (default: $TRACKSIDE_TOKEN; prefer the "
        "variable, the command line is visible to other users)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="TLS certificate chain (PEM); with --tls-key")
    p.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM); with --tls-cert")
    p.add_argument(
        "--ui-port",
        type=int,
        metavar="N",
        help="also serve the web page (trackside ui) on port N of --host, with the same token (needs trackside[ui])",
    )
    p.add_argument("--info-file", metavar="FILE", help="write pid and address here once listening (JSON)")
    p.add_argument("--log-level", default=os.environ.get("TRACKSIDE_LOG_LEVEL", "INFO"))
