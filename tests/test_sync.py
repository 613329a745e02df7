"""Offline runs and ``trackside sync``: the WAL only while training, replayed into a store later,
into the run's own root or another, while the run is written or after; twice is harmless."""

import json
import os
import subprocess
import sys
import time


import trackside
from trackside.daemon.sync import find_runs

from conftest import run_script, stop_daemon, wait_until

OFFLINE = """
import sys, time, trackside
steps, pause = int(sys.argv[1]), float(sys.argv[2])
run = trackside.init(project="p", name="offline", mode="offline", config={"lr": 0.5})
for i in range(steps):
    run.log({"loss": 1.0 / (i + 1), "i": i})
    if pause:
        time.sleep(pause)
run.summary["best"] = 1
print("some output")
run.finish()
print(run.id)
"""


def cli(*args, env, timeout=60, check=True):
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise AssertionError(f"trackside {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def offline_run(ts, steps=500, pause=0.0) -> str:
    return run_script(OFFLINE, ts.env, steps, pause).stdout.split()[-1]


def check_rows(root, run_id, steps):
    run = trackside.Api(root).run(run_id)
    rows = run.history()
    assert [r["_step"] for r in rows] == list(range(steps))
    assert [r["i"] for r in rows] == list(range(steps))
    assert run.config == {"lr": 0.5}
    assert run.summary["best"] == 1
    assert run.state == "finished"
    assert "some output" in run.console()
    return run


def test_an_offline_run_keeps_only_its_wal(ts):
    run_id = offline_run(ts, steps=100)
    run_dir = os.path.join(ts.root, "runs", run_id)
    assert os.path.isdir(os.path.join(run_dir, "wal"))
    with open(os.path.join(run_dir, "run.json")) as f:
        assert json.load(f)["dest"] == "offline"
    assert not os.path.exists(os.path.join(ts.root, "trackside.db"))
    assert find_runs(ts.root) == [run_dir]


def wal_files(root, run_id) -> dict:
    wal = os.path.join(root, "runs", run_id, "wal")
    return {name: open(os.path.join(wal, name), "rb").read() for name in sorted(os.listdir(wal))}


def test_sync_fills_the_runs_own_store_and_twice_is_harmless(ts):
    run_id = offline_run(ts, steps=500)
    stop_daemon(ts.daemon_dir)  # the offline run's WAL is complete
    before = wal_files(ts.root, run_id)
    out = cli("sync", env=ts.env).stdout
    assert f"run {run_id} -> {ts.root}" in out
    check_rows(ts.root, run_id, 500)
    assert wal_files(ts.root, run_id) == before  # read in place, never rewritten
    out = cli("sync", env=ts.env).stdout
    assert "0 new records" in out
    check_rows(ts.root, run_id, 500)


def test_sync_to_another_root_carries_media_and_system_metrics(ts, tmp_path):
    code = """
import numpy as np, trackside
run = trackside.init(project="p", mode="offline", settings={"system_sample_interval": 0.05, "system_log_interval": 0.2})
for i in range(5):
    run.log({"img": trackside.Image(np.full((4, 4, 3), i * 40, dtype=np.uint8)), "x": i})
import time; time.sleep(0.5)
run.finish()
print(run.id)
"""
    run_id = run_script(code, ts.env).stdout.split()[-1]
    stop_daemon(ts.daemon_dir)  # the run's stream closes: its last system-metrics window is in the WAL
    target = str(tmp_path / "archive")
    run_dir = os.path.join(ts.root, "runs", run_id)
    cli("sync", run_dir, "--to", target, env=ts.env)
    run = trackside.Api(target).run(run_id)
    assert [r["x"] for r in run.history()] == list(range(5))
    assert len(run.media("img")) == 5  # rebuilt from the files, which must have come along
    files = run.media_files("img")
    assert len(files) == 5 and all(f["path"].startswith(target) for f in files)
    for f in files:
        with open(f["path"], "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert run.system_metrics(), "system metrics travel in the WAL of an offline run"
    # again: nothing new; the archive still holds each row once
    assert "0 new records" in cli("sync", run_dir, "--to", target, env=ts.env).stdout
    assert len(trackside.Api(target).run(run_id).history()) == 5


def test_sync_follows_a_run_while_it_is_written(ts, tmp_path):
    target = str(tmp_path / "archive")
    writer = subprocess.Popen(
        [sys.executable, "-c", OFFLINE, "60", "0.05"], env=ts.env, stdout=subprocess.PIPE, text=True
    )
    try:
        runs = os.path.join(ts.root, "runs")
        wait_until(lambda: os.path.isdir(runs) and os.listdir(runs), timeout=30)
        run_dir = os.path.join(runs, os.listdir(runs)[0])
        wait_until(lambda: os.path.exists(os.path.join(run_dir, "wal")), timeout=30)
        follower = subprocess.Popen(
            [sys.executable, "-m", "trackside.cli", "sync", run_dir, "--to", target, "--follow"],
            env=ts.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = follower.communicate(timeout=60)  # ends by itself once the run has finished
        finally:
            follower.kill()
        assert follower.returncode == 0, err
        assert writer.wait(30) == 0
    finally:
        writer.kill()
    check_rows(target, os.path.basename(run_dir), 60)


def test_syncing_a_run_the_daemon_stores_into_its_own_root_is_refused(ts):
    run = trackside.init(project="p")
    run.log({"a": 1})
    run.finish()
    p = cli("sync", os.path.join(ts.root, "runs", run.id), env=ts.env, check=False)
    assert p.returncode == 1
    assert "stored in" in p.stderr and "--to" in p.stderr


def test_sync_of_a_folder_that_is_not_a_run_says_so(ts, tmp_path):
    p = cli("sync", str(tmp_path), env=ts.env, check=False)
    assert p.returncode == 1
    assert "not a run folder" in p.stderr


def test_an_online_run_copied_with_sync_reads_back_the_same(ts, tmp_path):
    run = trackside.init(project="p", config={"lr": 0.5})
    for i in range(200):
        run.log({"loss": i * 0.5}, step=i)
        if i % 20 == 0:
            run.log({"late": i}, step=max(i - 3, 0))
    run.finish()
    target = str(tmp_path / "copy")
    cli("sync", os.path.join(ts.root, "runs", run.id), "--to", target, env=ts.env)
    original, copy = trackside.Api(ts.root).run(run.id), trackside.Api(target).run(run.id)
    assert copy.history() == original.history()
    assert copy.summary == original.summary


def test_a_synced_run_keeps_its_own_start_and_end_times(ts, tmp_path):
    started = time.time()
    run_id = offline_run(ts, steps=50, pause=0.02)  # about 1 s of training
    ended = time.time()
    # a gap, not a wait for anything: the sync runs over a second after the run ended, so a
    # finish time taken from the sync instead of the WAL fails the check on finished_at below
    time.sleep(1.0)
    cli("sync", os.path.join(ts.root, "runs", run_id), "--to", str(tmp_path / "later"), env=ts.env)
    run = trackside.Api(str(tmp_path / "later")).run(run_id)
    assert started <= run.created_at <= started + 30  # not the time of the sync
    assert run.finished_at <= ended + 0.5
    assert 0.5 < run.runtime < ended - started + 0.5
