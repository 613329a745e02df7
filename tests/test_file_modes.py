"""What trackside writes is its user's only: every file 0600 (the store and its -wal/-shm,
run.json, upload.json, daemon.log, the registry, media, tables, artifacts) and every folder
0700, whatever the umask, after a real run into the local store and into a real server; the
daemon's socket folder 0700 and its socket 0600, its gRPC listener on loopback."""

import os
import stat
import subprocess
import sys

import pytest

import trackside
from trackside.contracts import discovery

from conftest import start_run, wait_until

TRAIN = """
import sys, numpy as np, trackside
run = trackside.init(project="modes", settings={"system_metrics": False, "upload_interval": 0.1})
for i in range(20):
    run.log({"loss": 1.0 / (i + 1), "img": trackside.Image(np.full((4, 4), i, dtype=np.uint8))})
run.log({"preds": trackside.Table(columns=["a"], data=[[1], [2]])})
art = trackside.Artifact("data", "dataset")
art.add_file(sys.argv[1])
run.log_artifact(art)
print("ROWS", flush=True)
sys.stdin.readline()  # the test looks at the files of the live run here
run.finish()
print(run.id, flush=True)
"""


def modes(*tops):
    """``{path: mode}`` of everything under ``tops`` (the tops included)."""
    out = {}
    for top in tops:
        out[str(top)] = stat.S_IMODE(os.lstat(top).st_mode)
        for folder, dirs, files in os.walk(top):
            for name in dirs + files:
                path = os.path.join(folder, name)
                out[path] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def wrong(found):
    """The paths whose mode is not 0700 (folders) or 0600 (anything else)."""
    return {
        p: oct(m) for p, m in found.items() if m != (0o700 if os.path.isdir(p) and not os.path.islink(p) else 0o600)
    }


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)  # the usual umask: without care, files come out 0644 and folders 0755
    try:
        yield
    finally:
        os.umask(old)


def _run_and_check(ts, env, tmp_path, names):
    data = tmp_path / "labels.csv"
    data.write_text("a,b\n")
    p = subprocess.Popen(
        [sys.executable, "-c", TRAIN, str(data)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "ROWS", p.stderr.read()
        live = modes(ts.root, ts.daemon_dir)
        p.stdin.write("\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    found = {os.path.basename(path) for path in live}
    assert set(names) <= found, set(names) - found
    assert wrong(live) == {}
    return out.split()[-1]


def test_a_local_run_leaves_only_private_files(ts, tmp_path, loose_umask):
    _run_and_check(
        ts,
        ts.env,
        tmp_path,
        [
            "trackside.db",
            "trackside.db-wal",
            "trackside.db-shm",
            "run.json",
            "daemon.log",
            "media",
            "artifacts",
            "wal",
            "runs",
        ],
    )
    assert wrong(modes(ts.root, ts.daemon_dir)) == {}


def test_an_uploaded_run_and_the_servers_store_are_private(ts, servers, tmp_path, loose_umask):
    server = servers.start(tmp_path / "server")
    run_id = _run_and_check(
        ts,
        dict(ts.env, TRACKSIDE_SERVER=server.url),
        tmp_path,
        ["run.json", "upload.json", "daemon.log", "media", "wal"],
    )
    api = trackside.Api(server.url)
    wait_until(lambda: api.run(run_id).state == "finished" and api.run(run_id).history_rows == 21, 30)
    assert len(api.run(run_id).media("img")) == 20
    api.close()
    on_server = modes(server.root)
    found = {os.path.basename(p) for p in on_server}
    assert {
        "trackside.db",
        "trackside.db-wal",
        "trackside.db-shm",
        "run.json",
        "sink.lock",
        "media",
        "artifacts",
        "wal",
    } <= found
    assert wrong(on_server) == {}
    assert wrong(modes(ts.root, ts.daemon_dir)) == {}


def test_socket_folder_is_private(ts):
    start_run().finish()
    assert stat.S_IMODE(os.stat(ts.daemon_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(discovery.socket_path(ts.daemon_dir)).st_mode) == 0o600
    info = discovery.read_info(ts.daemon_dir)
    assert info["grpc"].startswith("127.0.0.1:")
