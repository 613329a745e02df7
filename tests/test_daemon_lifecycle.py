"""The daemon's life: one per folder (a second refuses to start), ``trackside daemon
start|status|stop``, SIGTERM drains and stops (the SDK starts a new one), an idle daemon exits
by itself, and the start command's probe is not a refused client."""

import os
import signal
import subprocess
import sys
import time

import trackside
from trackside.contracts import discovery

from conftest import daemon_pid, start_run, wait_until


def test_second_daemon_refuses_to_start(ts):
    start_run().finish()
    p = subprocess.run(
        [sys.executable, "-m", "trackside.daemon", "--dir", ts.daemon_dir], capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 2
    assert "already running" in p.stderr


def test_sigterm_drains_and_stops(ts):
    run = start_run()
    for i in range(1000):
        run.log({"a": i})
    assert run._client.flush()
    pid = daemon_pid(ts)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not discovery.pid_alive(pid), timeout=20)
    assert not os.path.exists(discovery.socket_path(ts.daemon_dir))
    rows = trackside.Api(ts.root).run(run.id).history()
    assert len(rows) == 1000  # drained: merged and stored before exit
    run.log({"a": 1000})  # the SDK starts a new daemon and goes on
    run.finish()
    assert len(trackside.Api(ts.root).run(run.id).history()) == 1001


def test_idle_daemon_exits_by_itself(ts, monkeypatch):
    monkeypatch.setenv("TRACKSIDE_IDLE_TIMEOUT", "0.5")
    start_run().finish()
    pid = daemon_pid(ts)
    wait_until(lambda: not discovery.pid_alive(pid), timeout=30)


def test_daemon_cli_start_status_stop(ts):
    env = dict(os.environ)
    cli = [sys.executable, "-m", "trackside.cli"]
    p = subprocess.run(cli + ["daemon", "start"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "started" in p.stdout
    p = subprocess.run(cli + ["daemon", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "pid" in p.stdout
    p = subprocess.run(cli + ["daemon", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "stopped" in p.stdout
    p = subprocess.run(cli + ["daemon", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1


def test_daemon_start_logs_no_refused_connection(ts):
    """`trackside daemon start` checks that the daemon answers by connecting and closing: a
    connection closed before its first frame is a probe, not a client to refuse."""
    cli = [sys.executable, "-m", "trackside.cli"]
    p = subprocess.run(cli + ["daemon", "start"], env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    start_run().finish()  # a real client too, so the log is not read before the daemon got to the probe
    with open(os.path.join(ts.daemon_dir, "daemon.log")) as f:
        text = f.read()
    assert "first frame must be hello" not in text and "closing connection" not in text, text


STARTER = """
import os, sys, time, trackside
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
run = trackside.init(project="crowd", settings={"system_metrics": False, "finish_timeout": 30})
for i in range(int(sys.argv[2])):
    run.log({"x": float(i)})
run.finish()
print(run.id)
"""


def test_runs_opened_at_once_under_one_root_share_one_store(ts):
    """Processes that start their runs at the same moment on a fresh daemon (ranks of a job,
    a sweep's workers) open one store for their root between them: a run that ends early does
    not close the store under the others."""
    subprocess.run([sys.executable, "-m", "trackside.cli", "daemon", "start"], env=ts.env, check=True, timeout=60)
    go = ts.tmp / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(go), str(50 if k % 2 else 5000)],
            env=ts.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(6)
    ]
    try:
        time.sleep(1.5)  # every process imported trackside and waits
        go.touch()
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    api = trackside.Api(ts.root)
    for k, (out, _) in enumerate(outs):
        assert api.run(out.split()[-1]).history_rows == (50 if k % 2 else 5000)
    log = open(os.path.join(ts.daemon_dir, "daemon.log")).read()
    assert "Traceback" not in log, log[-3000:]
