"""Runs uploaded by the daemon to a `trackside server`, and the faults that must lose nothing:
the server stopped and started again, killed mid-batch, the daemon killed mid-upload, a
refused token, `trackside sync` interrupted. After each, the server holds every record the
training process logged, exactly once. Real daemons, servers and training processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import trackside
from trackside.contracts.discovery import pid_alive
from trackside.remote import UploadClient

from conftest import daemon_pid, run_script, stop, stop_daemon, wait_until

TRAIN = """
import sys, time, trackside
steps, pause = int(sys.argv[1]), float(sys.argv[2])
run = trackside.init(project="team", name="upload", config={"lr": 0.1},
                     settings={"upload_interval": 0.2, "system_metrics": False})
print(run.id, flush=True)
for i in range(steps):
    run.log({"loss": 1.0 / (i + 1), "i": i})
    if i % 100 == 0:
        print("line", i, flush=True)
    if pause:
        time.sleep(pause)
run.finish()
print("done", flush=True)
"""


def env_for(ts, url, **extra):
    env = dict(ts.env, TRACKSIDE_SERVER=url, **extra)
    env.pop("TRACKSIDE_TOKEN", None) if "TRACKSIDE_TOKEN" not in extra else None
    return env


def train(ts, url, steps=300, pause=0.0, **extra):
    out = run_script(TRAIN, env_for(ts, url, **extra), steps, pause, timeout=120).stdout
    return out.split()[0]


def start_training(ts, url, steps, pause, until_step=None):
    """A training process logging to ``url``; returns it and its run id once it logged past
    ``until_step`` (at once when None). ``finish_training`` waits for its clean end."""
    p = subprocess.Popen(
        [sys.executable, "-c", TRAIN, str(steps), str(pause)],
        env=env_for(ts, url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = p.stdout.readline().strip()
    if until_step is not None:
        for line in p.stdout:
            if line.startswith("line") and int(line.split()[1]) >= until_step:
                break
    return p, run_id


def finish_training(p) -> None:
    out, err = p.communicate(timeout=120)  # training never waits on the server
    assert p.returncode == 0, err


def assert_complete(url, run_id, steps, timeout=30):
    """The server holds every step once, and every console line once (a duplicated record
    would repeat lines: rows alone merge duplicates away)."""
    api = trackside.Api(url)
    wait_until(lambda: api.run(run_id).history_rows == steps and api.run(run_id).state == "finished", timeout)
    run = api.run(run_id)
    rows = run.history()
    assert [r["_step"] for r in rows] == list(range(steps))
    assert [r["i"] for r in rows] == list(range(steps))
    assert run.config == {"lr": 0.1}
    lines = [line for line in run.console().splitlines() if line.startswith("line ")]
    assert lines == [f"line {i}" for i in range(0, steps, 100)]


def test_a_run_uploads_to_the_server_and_keeps_no_local_store(ts, servers, tmp_path):
    server = servers.start(tmp_path / "server")
    run_id = train(ts, server.url, steps=500)
    assert_complete(server.url, run_id, 500)
    assert not os.path.exists(os.path.join(ts.root, "trackside.db"))
    # the daemon's upload cursor reached the end: a later sync of the same WAL sends nothing new
    state = json.load(open(os.path.join(ts.root, "runs", run_id, "upload.json")))
    assert state["records"] > 0


def test_media_files_reach_the_server_with_their_rows(ts, servers, tmp_path):
    server = servers.start(tmp_path / "server")
    code = """
import numpy as np, trackside
run = trackside.init(project="team", settings={"upload_interval": 0.2, "system_metrics": False})
for i in range(3):
    run.log({"img": trackside.Image(np.full((8, 8, 3), i * 60, dtype=np.uint8)), "i": i})
run.finish()
print(run.id)
"""
    run_id = run_script(code, env_for(ts, server.url)).stdout.split()[-1]
    api = trackside.Api(server.url)
    wait_until(lambda: api.run(run_id).history_rows == 3)
    files = api.run(run_id).media_files("img")
    assert len(files) == 3
    for f in files:
        assert os.path.isfile(os.path.join(server.root, "runs", run_id, f["path"].split(f"runs/{run_id}/")[-1]))


def test_the_server_stopped_during_a_run_and_started_later_gets_everything(ts, servers, tmp_path):
    root = tmp_path / "server"
    server = servers.start(root)
    port = server.port
    p, run_id = start_training(ts, server.url, 400, 0.005)
    with trackside.Api(server.url) as api:  # part of the run is on the server: then it stops
        wait_until(lambda: api.run(run_id).history_rows > 0)
    stop(server.proc)  # a clean stop mid-run: the uploader retries with backoff
    finish_training(p)
    status = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "status"], env=ts.env, capture_output=True, text=True
    ).stdout
    assert f"run {run_id}" in status and "upload lag" in status
    server = servers.start(root, "--port", str(port))
    assert_complete(server.url, run_id, 400, timeout=60)


def test_a_server_killed_mid_batch_stores_everything_once(ts, servers, tmp_path):
    root = tmp_path / "server"
    server = servers.start(root)
    port = server.port
    p, run_id = start_training(ts, server.url, 3000, 0.0005, until_step=1000)
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait()
    finish_training(p)
    server = servers.start(root, "--port", str(port))
    assert_complete(server.url, run_id, 3000, timeout=60)


def test_the_daemon_killed_mid_upload_resumes_from_its_cursor(ts, servers, tmp_path):
    """The run finishes while the server is away; the daemon is killed with its WAL not
    uploaded; the next daemon resumes the run by itself and uploads the rest, once."""
    root = tmp_path / "server"
    server = servers.start(root)
    port = server.port
    url = server.url
    p, run_id = start_training(ts, url, 2000, 0.001, until_step=800)
    os.kill(server.pid, signal.SIGKILL)  # part of the run is on the server, the rest is not
    server.proc.wait()
    finish_training(p)
    pid = daemon_pid(ts)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid))
    server = servers.start(root, "--port", str(port))
    env = env_for(ts, url)
    subprocess.run([sys.executable, "-m", "trackside.cli", "daemon", "start"], env=env, check=True, capture_output=True)
    assert_complete(url, run_id, 2000, timeout=60)


def test_a_refused_token_stops_uploads_and_sync_sends_them_later(ts, servers, tmp_path, monkeypatch):
    server = servers.start(tmp_path / "server", "--token", "right")
    run_id = train(ts, server.url, steps=200, TRACKSIDE_TOKEN="wrong")
    run_dir = os.path.join(ts.root, "runs", run_id)

    def refused():
        out = subprocess.run(
            [sys.executable, "-m", "trackside.cli", "status"], env=ts.env, capture_output=True, text=True
        ).stdout
        return "stopped:" in out and "token" in out.lower()

    wait_until(refused)
    stop_daemon(ts.daemon_dir)
    env = dict(ts.env)
    env.pop("TRACKSIDE_TOKEN", None)
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "sync", run_dir, "--to", server.url, "--token", "right"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    monkeypatch.setenv("TRACKSIDE_TOKEN", "right")  # for reading back
    assert_complete(server.url, run_id, 200)


def test_sync_interrupted_and_run_again_stores_everything_once(ts, servers, tmp_path):
    server = servers.start(tmp_path / "server")
    code = """
import trackside
run = trackside.init(project="team", mode="offline", config={"lr": 0.1}, settings={"system_metrics": False})
for i in range(4000):
    run.log({"loss": 1.0 / (i + 1), "i": i})
    if i % 100 == 0:
        print("line", i, flush=True)
        run._client.flush()  # many WAL records: the sync below has many batches to be cut off in
run.finish()
print(run.id)
"""
    run_id = run_script(code, ts.env, timeout=120).stdout.split()[-1]
    stop_daemon(ts.daemon_dir)
    run_dir = os.path.join(ts.root, "runs", run_id)
    cmd = [sys.executable, "-m", "trackside.cli", "sync", run_dir, "--to", server.url, "--batch-records", "1"]
    p = subprocess.Popen(cmd, env=ts.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        state = [f for f in os.listdir(run_dir) if f.startswith("sync-")]
        if state:
            break
        time.sleep(0.005)
    p.kill()  # cut off mid-sync, after at least one batch was acknowledged
    p.wait()
    assert state, "the sync made no progress to cut off"
    with UploadClient(server.url) as client:
        partial = client.status()["records"]
    p = subprocess.run(cmd, env=ts.env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert_complete(server.url, run_id, 4000)
    with UploadClient(server.url) as client:
        status = client.status()
    assert status["records"] > partial


def test_a_server_on_postgresql_stores_an_uploaded_run_and_a_restart_adds_nothing(ts, servers, tmp_path, postgres_url):
    root = tmp_path / "server"
    server = servers.start(root, "--db", postgres_url)
    port = server.port
    run_id = train(ts, server.url, steps=1000)
    assert_complete(server.url, run_id, 1000)
    stop(server.proc)
    # the same WAL synced again into the restarted server: every record is a duplicate
    server = servers.start(root, "--db", postgres_url, "--port", str(port))
    stop_daemon(ts.daemon_dir)
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "sync", os.path.join(ts.root, "runs", run_id), "--to", server.url],
        env=ts.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "0 new records" in p.stdout
    assert_complete(server.url, run_id, 1000)
    assert trackside.Api(str(root), db=postgres_url).run(run_id).history_rows == 1000


def test_top_and_metrics_show_the_upload_lag_while_the_server_is_away(ts, servers, tmp_path):
    pytest.importorskip("prometheus_client")
    server = servers.start(tmp_path / "server")
    url = server.url
    stop(server.proc)  # the server is away from the start: everything waits in the WAL
    env = env_for(ts, url)
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "daemon", "start", "--metrics-port", "0"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    run_id = train(ts, url, steps=300)
    out = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "top", "--once"], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    row = next(line for line in out.splitlines() if run_id in line)
    assert "rec /" in row and "retrying" in row, out
    import urllib.request

    metrics = json.load(open(os.path.join(ts.daemon_dir, "daemon.json")))["metrics"]
    body = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
    lag = next(
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith(f'trackside_run_upload_lag_records{{run="{run_id}"}}')
    )
    assert lag > 0


def test_the_training_processs_token_reaches_a_daemon_started_without_one(ts, servers, tmp_path, monkeypatch):
    token = "tok-" + os.urandom(8).hex()  # made here: never in a file (a git diff the run records, say)
    server = servers.start(tmp_path / "server", "--token", token)
    env = env_for(ts, server.url)
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "daemon", "start"], env=env, check=True, capture_output=True, timeout=60
    )  # no token in the daemon's environment
    run_id = train(ts, server.url, steps=100, TRACKSIDE_TOKEN=token)
    monkeypatch.setenv("TRACKSIDE_TOKEN", token)
    assert_complete(server.url, run_id, 100)
    # kept in the daemon's memory only: not beside the WAL, not in the WAL, not at the server
    run_dir = os.path.join(ts.root, "runs", run_id)
    for folder, _, files in os.walk(run_dir):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                assert token.encode() not in f.read(), name
    for folder, _, files in os.walk(server.root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                assert token.encode() not in f.read(), name


def test_the_image_cells_of_a_table_in_an_artifact_reach_the_server(ts, servers, tmp_path):
    server = servers.start(tmp_path / "server")
    code = """
import numpy as np, trackside
run = trackside.init(project="team", settings={"upload_interval": 0.2, "system_metrics": False})
table = trackside.Table(columns=["id", "img"])
for i in range(3):
    table.add_data(i, trackside.Image(np.full((4, 4, 3), i * 50, dtype=np.uint8)))
art = trackside.Artifact("samples", "dataset")
art.add(table, "table")
run.log_artifact(art)
run.finish()
print(run.id)
"""
    run_script(code, env_for(ts, server.url))
    api = trackside.Api(server.url)

    def got():
        return api.artifact("samples").get("table")  # rebuilding each cell's image reads its file

    wait_until(lambda: got() is not None)
    table = got()
    assert [row[0] for row in table.iterrows()] == [0, 1, 2]
    cells = table.get_column("img")
    assert len(cells) == 3 and all(type(c).__name__ == "Image" for c in cells)


def test_a_second_signal_stops_a_draining_daemon_at_once(ts, servers, tmp_path):
    """The first SIGTERM drains (here: waits its grace period for an upload to a server that
    takes the connection and never answers); a second one exits at once, and the next daemon
    goes on from the WAL."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the kernel's backlog; nothing ever answers
    silent.settimeout(30)
    port = silent.getsockname()[1]
    url = f"grpc://127.0.0.1:{port}"
    upload = None
    try:
        env = env_for(ts, url)
        subprocess.run(
            [sys.executable, "-m", "trackside.cli", "daemon", "start"],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        run_id = train(ts, url, steps=100)
        # the first upload is under way, waiting for an answer: its connection (made by its
        # first call, channels connect lazily) reaches the silent server, which never answers
        upload, _ = silent.accept()
        pid = daemon_pid(ts)
        log_path = os.path.join(ts.daemon_dir, "daemon.log")
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: "draining" in open(log_path).read())
        os.kill(pid, signal.SIGTERM)
        from trackside.contracts.discovery import pid_alive

        wait_until(lambda: not pid_alive(pid), timeout=10)
        assert "second signal: exiting now" in open(log_path).read()
    finally:
        if upload is not None:
            upload.close()
        silent.close()
    # nothing acknowledged is lost: the next daemon resumes the upload to a real server there
    server = servers.start(tmp_path / "server", "--port", str(port))
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "daemon", "start"], env=env, check=True, capture_output=True, timeout=60
    )
    assert_complete(server.url, run_id, 100, timeout=60)


def test_one_root_takes_one_server_and_no_sync_beside_it(ts, servers, tmp_path):
    root = tmp_path / "server"
    server = servers.start(root)
    second = servers.start(root, expect_start=False)
    assert second.proc.wait(30) == 2
    assert "in use by another trackside server or sync" in second.output
    run = trackside.init(project="p")
    run.log({"a": 1})
    run.finish()
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "sync", os.path.join(ts.root, "runs", run.id), "--to", str(root)],
        env=ts.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "in use by another trackside server or sync" in p.stderr
    # the first server is unharmed
    assert trackside.Api(server.url).runs() == []


def test_an_upload_batch_is_bounded_whatever_the_backlog(tmp_path):
    """While the server is away the WAL keeps everything and the uploader holds one batch at a
    time: at most max_records records and max_bytes bytes (one record always goes, however big)."""
    from test_sink import synthetic_records
    from trackside.daemon.uploader import Uploader
    from trackside.daemon.wal import WAL

    run_dir = tmp_path / "runs" / "r1"
    records = synthetic_records(500)  # 1,000 records
    with WAL(str(run_dir / "wal"), durability="none") as wal:
        for r in records:
            wal.append(r)
        wal.commit()
    up = Uploader("r1", str(tmp_path), str(run_dir), {}, dest=None, max_records=64, max_bytes=1 << 20)
    batch, _, cursor = up._read_batch(None)
    assert batch == records[:64]
    up.cursor = cursor
    up.max_bytes = sum(len(r) for r in records[64:67])
    batch, _, _ = up._read_batch(None)
    assert batch == records[64:67]
    up.max_bytes = 1
    assert up._read_batch(None)[0] == records[64:65]


def test_the_uploaders_lag_bookkeeping_stays_small_while_the_server_is_away(tmp_path):
    """Every commit reports durable records; while nothing uploads, the uploader keeps at most a
    mark per second of lag, and still counts every record."""
    from trackside.daemon.uploader import Uploader

    up = Uploader("r1", str(tmp_path), str(tmp_path / "runs" / "r1"), {}, dest=None)
    for i in range(1, 10_001):  # 10,000 commits within a second
        up.durable(i * 100, 3)
    assert len(up._marks) <= 2
    assert up._lag_records() == 30_000
    up.cursor = 10_000 * 100  # everything uploaded
    assert up._lag_records() == 0


def test_the_uploader_lists_only_folders_that_changed_since_their_files_were_sent(tmp_path):
    from trackside.daemon.uploader import Uploader

    run_dir = tmp_path / "runs" / "r1"
    for rel in ("media/ab/1.png", "media/cd/2.png"):
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_bytes(b"x")
    (run_dir / "wal").mkdir()
    (run_dir / "upload.json").write_text("{}")
    up = Uploader("r1", str(tmp_path), str(run_dir), {}, dest=None)
    first = sorted(up._new_files())
    assert first == ["runs/r1/media/ab/1.png", "runs/r1/media/cd/2.png"]  # not the WAL, not the state
    up.files_sent.update(first)
    old = time.time() - 10
    folders = [run_dir, run_dir / "media", run_dir / "media" / "ab", run_dir / "media" / "cd"]
    for folder in folders:
        os.utime(folder, (old, old))
    assert up._new_files() == []
    assert set(up._sent_folders) == {str(f) for f in folders}  # listed no more while unchanged
    (run_dir / "media" / "ab" / "3.png").write_bytes(b"y")  # the folder's mtime moves
    assert up._new_files() == ["runs/r1/media/ab/3.png"]


def test_an_unexpected_failure_of_an_upload_is_retried_not_the_end_of_uploads(tmp_path):
    """A failure that is neither a refusal nor a lost server (a bug, say) once ended the upload
    task while the daemon went on taking data: nothing was sent again, nothing said so."""
    import asyncio

    from test_sink import synthetic_records
    from trackside.daemon.uploader import Uploader
    from trackside.daemon.wal import WAL

    run_dir = tmp_path / "runs" / "r1"
    records = synthetic_records(50)
    with WAL(str(run_dir / "wal"), durability="none") as wal:
        for r in records:
            wal.append(r)
        wal.commit()

    class FailsOnce:
        """A destination whose first append fails the way a bug would."""

        def __init__(self):
            self.records, self.failed = [], False

        async def append(self, run_id, info, batch):
            if not self.failed:
                self.failed = True
                raise RuntimeError("a bug in the first upload")
            self.records.extend(batch)
            return len(batch), 0

        async def missing_files(self, paths):
            return []

        def close(self):
            pass

    dest = FailsOnce()
    up = Uploader("r1", str(tmp_path), str(run_dir), {}, dest=dest)
    asyncio.run(asyncio.wait_for(up.run(follow=False), 30))
    assert dest.failed and dest.records == records
    assert up.error is None and up.stats["retries"] == 1
