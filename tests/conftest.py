"""Shared fixtures. Every codec test runs on both implementations: the Cython extension and
its pure-Python twin (the reference)."""

import importlib
from typing import NamedTuple

import pytest

IMPLEMENTATIONS = ["python", "cython"]


def load_codec(name: str):
    """The codec module of one implementation. The Cython one must be built: a missing
    extension fails the tests instead of silently testing the twin twice."""
    if name == "python":
        return importlib.import_module("trackside._native._twin")
    try:
        return importlib.import_module("trackside._native._codec")
    except ImportError as e:  # pragma: no cover - a broken build
        pytest.fail(f"the Cython codec is not built ({e}); run: pip install -e .")


@pytest.fixture(params=IMPLEMENTATIONS)
def codec(request):
    return load_codec(request.param)


# -- history rows as the merger makes them (daemon/merger.py's Row), for store and Api tests ------

T0 = 1_700_000_000_000_000


class Row(NamedTuple):
    step: int
    time_us: int
    values: dict
    payloads: list = []
    amend: bool = False


def stored_run_ids(store) -> set:
    """The ids of the runs a store holds (placeholders included), read as a reader reads them."""
    from trackside.store.reader import StoreReader

    with StoreReader(store.root, db=store.db) as reader:
        return {r for (r,) in reader.conn.execute("SELECT run_id FROM runs")}


def rows(n, start=0, keys=("loss", "acc")):
    return [Row(s, T0 + s * 1000, {k: s + i / 10 for i, k in enumerate(keys)}) for s in range(start, start + n)]


# -- a private daemon per test ---------------------------------------------------------------------

import json
import os
import signal
import subprocess
import sys
import time
import types

ENV_KEYS = (
    "TRACKSIDE_DAEMON_DIR",
    "TRACKSIDE_DIR",
    "TRACKSIDE_RUN_ID",
    "TRACKSIDE_RUN_STARTED_BY",
    "TRACKSIDE_MODE",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
)


def stop_daemon(folder, timeout: float = 20.0) -> None:
    """Stop the daemon of ``folder`` (SIGTERM, then SIGKILL) and wait until it is gone."""
    try:
        with open(os.path.join(folder, "daemon.json")) as f:
            pid = json.load(f)["pid"]
    except (OSError, ValueError, KeyError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    from trackside.contracts.discovery import pid_alive

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ts(tmp_path, monkeypatch):
    """An isolated trackside world: its own daemon folder and run root, the daemon stopped after.

    Yields a namespace with ``root`` (the run root), ``daemon_dir`` and ``env`` (the environment
    for child processes)."""
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    daemon_dir = tmp_path / "daemon"
    root = tmp_path / "trackside"
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TRACKSIDE_DAEMON_DIR", str(daemon_dir))
    monkeypatch.setenv("TRACKSIDE_DIR", str(root))
    monkeypatch.setenv("TRACKSIDE_IDLE_TIMEOUT", "60")
    ns = types.SimpleNamespace(root=str(root), daemon_dir=str(daemon_dir), tmp=tmp_path)
    ns.env = dict(os.environ)
    try:
        yield ns
    finally:
        from trackside._run import _finish_all

        _finish_all(0)
        stop_daemon(str(daemon_dir))
        for k, v in saved.items():  # init() exports the run id for children: undo it
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_script(code: str, env: dict, *args, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process with ``env``."""
    p = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise AssertionError(f"script failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


# -- a real PostgreSQL (tests/pg.py) ----------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server for this session: $TRACKSIDE_TEST_POSTGRES, else a private
    cluster started here and removed at the end. Skips only when PostgreSQL is not installed."""
    import pg

    url = os.environ.get(pg.ENV_URL)
    if url:
        yield url
        return
    bin_dir = pg.find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
            f"install it (apt-get install postgresql) or set {pg.ENV_URL} to a server URL"
        )
    cluster = pg.Cluster(bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty PostgreSQL database for one test (its URL); dropped after the test."""
    import pg

    url = pg.create_database(postgres_server)
    try:
        yield url
    finally:
        pg.drop_database(postgres_server, url)


def history(run):
    """The rows of ``run`` as read back from its store."""
    import trackside

    return trackside.Api(run.root).run(run.id).history()


def start_run(**kw):
    """A run of project "p" in the test's trackside world (the ``ts`` fixture)."""
    import trackside

    run = trackside.init(project="p", **kw)
    return run


def daemon_pid(ts) -> int:
    from trackside.contracts import discovery

    return discovery.read_info(ts.daemon_dir)["pid"]


# -- trackside server processes --------------------------------------------------------------------


@pytest.fixture
def servers(tmp_path):
    """Starts servers (``servers.start(root, *args, env=...)``); every one is stopped after
    the test: SIGTERM, then SIGKILL."""
    procs = []

    def start(root, *args, env=None, expect_start=True):
        n = len(procs)
        info_file = tmp_path / f"server{n}.json"
        log = open(tmp_path / f"server{n}.log", "w+")
        env = dict(os.environ if env is None else env)
        cmd = [
            sys.executable,
            "-m",
            "trackside.server.team_server",
            "--root",
            str(root),
            "--port",
            "0",
            "--info-file",
            str(info_file),
            *args,
        ]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        server = types.SimpleNamespace(proc=proc, root=str(root), log=log)
        deadline = time.monotonic() + 20
        while not info_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                server.output = log.read()
                if expect_start:
                    raise AssertionError(f"the server did not start ({proc.poll()}):\n{server.output}")
                return server
            time.sleep(0.02)
        info = json.loads(info_file.read_text())
        server.port, server.pid = info["port"], info["pid"]
        server.url = f"grpc://127.0.0.1:{server.port}"
        return server

    ns = types.SimpleNamespace(start=start)
    try:
        yield ns
    finally:
        for proc in procs:
            stop(proc)


def stop(proc, timeout=15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_until(check, timeout=15.0):
    """Poll ``check`` until it is true; AssertionError, naming it, once ``timeout`` seconds pass.
    A run or store not there yet (KeyError, LookupError, FileNotFoundError) counts as false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (LookupError, FileNotFoundError):  # the run is not stored yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(0.05)
