"""A private PostgreSQL for the tests: one throw-away cluster per test session.

``Cluster.start()`` runs ``initdb`` into a temporary folder and starts the server on
127.0.0.1 (a free port, its Unix socket in that folder, trust authentication, no fsync);
``stop()`` stops it and removes the folder. PostgreSQL refuses to run as root, so under root
the binaries run as the ``postgres`` user. ``TRACKSIDE_TEST_POSTGRES`` (a server URL) uses
that server instead of starting one. Each test then gets a database of its own
(``create_database``), dropped after it (``drop_database``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

ENV_URL = "TRACKSIDE_TEST_POSTGRES"


def find_bin_dir() -> Optional[str]:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's
    /usr/lib/postgresql/<version>/bin (the newest), else None."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl", path=os.path.dirname(initdb)):
        return os.path.dirname(initdb)
    found = [
        d
        for d in glob.glob("/usr/lib/postgresql/*/bin") + glob.glob("/usr/local/pgsql/bin")
        if os.path.isfile(os.path.join(d, "initdb")) and os.path.isfile(os.path.join(d, "pg_ctl"))
    ]

    def version(d: str) -> float:
        try:
            return float(d.split("/")[-2])
        except ValueError:
            return 0.0

    return max(found, key=version) if found else None


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A PostgreSQL cluster of our own in a temporary folder."""

    def __init__(self, bin_dir: str):
        self.bin_dir = bin_dir
        self.folder: Optional[str] = None
        self.url: Optional[str] = None
        # the server refuses to run as root: run its programs as the postgres user
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        cmd = [*self._as, os.path.join(self.bin_dir, args[0]), *args[1:]]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            log = ""
            if self.folder and os.path.isfile(os.path.join(self.folder, "server.log")):
                with open(os.path.join(self.folder, "server.log"), errors="replace") as f:
                    log = f.read()[-4000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}\n{log}")

    def start(self) -> str:
        """Create and start the cluster; returns its server URL (database ``postgres``)."""
        if self._as and (shutil.which("runuser") is None or not _has_user("postgres")):
            raise RuntimeError(
                "PostgreSQL refuses to run as root, and there is no 'postgres' user (or no runuser) to run it "
                f"as: create the user (useradd postgres), run the tests as another user, or set {ENV_URL}"
            )
        self.folder = tempfile.mkdtemp(prefix="trackside-pg-")
        if self._as:
            shutil.chown(self.folder, "postgres", "postgres")
        data = os.path.join(self.folder, "data")
        self._run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        for attempt in range(5):  # a free port can be taken between the probe and the start
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {self.folder} -c fsync=off"
                f" -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    data,
                    "-l",
                    os.path.join(self.folder, "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                )
            except RuntimeError:
                if attempt == 4:
                    raise
                continue
            self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            return self.url
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder. Idempotent."""
        folder, self.folder = self.folder, None
        if folder is None:
            return
        try:
            data = os.path.join(folder, "data")
            if os.path.isfile(os.path.join(data, "postmaster.pid")):
                cmd = [*self._as, os.path.join(self.bin_dir, "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"]
                subprocess.run(cmd, capture_output=True, timeout=60)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def create_database(server_url: str) -> str:
    """A new empty database on the server; returns its URL."""
    import psycopg

    name = "trackside_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    """Drop the database of ``url`` (ending the sessions still connected to it)."""
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        # FORCE ends the sessions and waits for them (a kill -9'd server's backend may linger);
        # a process of the test still reconnecting can slip in between: try again a few times
        for attempt in range(20):
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.ObjectInUse:
                if attempt == 19:
                    raise
                time.sleep(0.25)
