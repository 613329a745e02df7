"""`trackside top --once` and the daemon's Prometheus endpoint (`--metrics-port`), on a real daemon."""

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from conftest import wait_until

WRITER = """
import sys, time, trackside
run = trackside.init(project="top", id=sys.argv[1])
for i in range(10**9):
    run.log({"loss": i * 0.5, "acc": 1.0})
    if i % 500 == 0:
        time.sleep(0.005)
    if i % 1000 == 0 and __import__("os").path.exists(sys.argv[2]):
        break
run.finish()
"""


@pytest.fixture
def busy_daemon(ts):
    pytest.importorskip("prometheus_client")
    start = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "daemon", "start", "--metrics-port", "0"],
        env=ts.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert start.returncode == 0, start.stderr
    stop_file = ts.tmp / "stop"
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, "toprun", str(stop_file)],
        env=ts.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    from trackside.transport import daemon_status

    info = json.load(open(os.path.join(ts.daemon_dir, "daemon.json")))

    def busy():
        runs = daemon_status(info)["runs"]
        return runs and runs[0]["entries"] > 0 and runs[0]["writer_stats"]

    try:
        wait_until(busy, timeout=30)
        yield info
    finally:
        stop_file.write_text("")
        p.wait(60)


def test_top_once_shows_run_and_writer_rates(busy_daemon, ts):
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "top", "--once"], env=ts.env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "toprun" in out and "rank 0 pid" in out
    assert "upload lag" in out and "—" in out
    row = next(line for line in out.splitlines() if "toprun" in line)
    rate = row.split("│")[2].strip().replace(",", "")
    assert float(rate) > 0, out


def test_top_without_daemon_says_so(ts):
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "top", "--once"], env=ts.env, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 1 and "no trackside daemon is running" in p.stderr


def test_metrics_endpoint_scrape(busy_daemon):
    host_port = busy_daemon["metrics"]
    assert host_port.startswith("127.0.0.1:")  # loopback by default
    body = urllib.request.urlopen(f"http://{host_port}/metrics", timeout=10).read().decode()
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in body.splitlines()
        if line.startswith("trackside_") and " " in line
    }
    assert lines['trackside_run_entries_total{run="toprun"}'] > 0
    assert 'trackside_run_wal_bytes{run="toprun"}' in lines
    assert 'trackside_run_merge_backlog{run="toprun"}' in lines
    assert 'trackside_run_late_dropped_total{run="toprun"}' in lines
    assert any(k.startswith('trackside_writer_batches_total{rank="0",run="toprun"') for k in lines), body
    assert lines["trackside_daemon_runs"] == 1


def test_top_shows_a_runs_upload_lag_and_why_it_stopped():
    from trackside.cli.top import snapshot_rows

    run = {
        "run_id": "r1",
        "entries": 10,
        "bytes": 100,
        "records": 2,
        "wal_bytes": 500,
        "merge_backlog": 0,
        "pending_rows": 0,
        "writer_stats": [],
        "upload": {"lag_records": 1200, "lag_seconds": 3.5, "error": None, "retrying": "server away"},
    }
    (row,) = snapshot_rows({"runs": [run]}, None, 0)
    assert row[-1] == "1,200 rec / 3.5 s retrying"
    run["upload"] = dict(run["upload"], error="token refused", retrying=None)
    (row,) = snapshot_rows({"runs": [run]}, None, 0)
    assert row[-1] == "1,200 rec / 3.5 s STOPPED: token refused"
    run["upload"] = None  # stored locally
    (row,) = snapshot_rows({"runs": [run]}, None, 0)
    assert row[-1] is None
