"""Resuming runs: ``init(id=..., resume="must")`` continues the steps of a finished run (and
refuses a run that does not exist); runs a daemon left unfinished are resumed by the next one
(daemon/registry.py): a daemon killed mid-run, whose writers never come back, still gets every
record of the WAL stored once the host's next daemon starts."""

import os
import signal
import subprocess
import sys

import pytest

import trackside
from trackside import _native as codec
from trackside._native.constants import RECORD_LOG
from trackside._run import UsageError
from trackside.daemon import registry
from trackside.daemon.wal import read_records

from conftest import daemon_pid, history, wait_until

WRITER = """
import sys, trackside
run = trackside.init(project="p", settings={"durability": "fsync", "merge_window": 1.0})
print(run.id, flush=True)
i = 0
while True:
    run.log({"x": i})
    if i % 1000 == 0:
        run._client.flush()  # durable up to here before we say so
        print(i, flush=True)
    i += 1
"""


def wal_steps(root, run_id) -> set:
    steps = set()
    for rec in read_records(os.path.join(root, "runs", run_id, "wal")):
        if rec.type == RECORD_LOG:
            _, _, entries = codec.decode_batch(rec.body)
            steps.update(e[0] for e in entries)
    return steps


def test_a_run_whose_daemon_and_writer_died_is_stored_by_the_next_daemon(ts):
    p = subprocess.Popen([sys.executable, "-c", WRITER], env=ts.env, stdout=subprocess.PIPE, text=True)
    try:
        run_id = p.stdout.readline().strip()
        for line in p.stdout:
            if int(line) >= 20000:
                break
        os.kill(daemon_pid(ts), signal.SIGKILL)  # the daemon dies mid-run ...
        p.kill()  # ... and so does the writer: nobody reconnects
        p.wait()
    finally:
        p.kill()
    assert registry.entries(ts.daemon_dir) == [(run_id, ts.root)]
    logged = wal_steps(ts.root, run_id)  # what was durable when the daemon died
    assert len(logged) >= 20000
    # a short idle timeout: the resumed stream (no writer will come) closes soon after it is stored
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "daemon", "start"],
        env=dict(ts.env, TRACKSIDE_IDLE_TIMEOUT="3"),
        check=True,
        capture_output=True,
        timeout=60,
    )
    wait_until(lambda: trackside.Api(ts.root).run(run_id).history_rows == len(logged), timeout=60)
    rows = trackside.Api(ts.root).run(run_id).history()
    assert {r["_step"] for r in rows} == logged
    assert all(r["x"] == r["_step"] for r in rows)
    # once everything is stored and the stream closes, the run leaves the registry
    wait_until(lambda: registry.entries(ts.daemon_dir) == [], timeout=60)


def test_a_run_that_finished_cleanly_leaves_no_entry(ts):
    run = trackside.init(project="p")
    run.log({"a": 1})
    run.finish()
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "daemon", "stop"],
        env=ts.env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert registry.entries(ts.daemon_dir) == []


def test_resume_continues_steps_of_the_same_run(ts):
    run = trackside.init(project="p", id="resumable")
    run.log({"a": 1})
    run.log({"a": 2})
    run.finish()
    os.environ.pop("TRACKSIDE_RUN_ID", None)
    run = trackside.init(project="p", id="resumable", resume="must")
    assert run.step == 2
    run.log({"a": 3})
    run.finish()
    assert [(r["_step"], r["a"]) for r in history(run)] == [(0, 1), (1, 2), (2, 3)]
    os.environ.pop("TRACKSIDE_RUN_ID", None)
    with pytest.raises(UsageError, match="does not exist"):
        trackside.init(project="p", id="missing", resume="must")
