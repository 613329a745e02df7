"""Several writers on one run: ranks started as other processes join it (``TRACKSIDE_RUN_ID``), a
forked child writes as a writer of its own; the entries of one step merge into one row, keys
that collide follow ``define_metric(reduce=...)``, and a silent rank holds rows back only for
the merge window. Real daemons and writer processes."""

import os
import subprocess
import sys

import pytest

import trackside

from conftest import history, start_run, wait_until


WRITER = """
import os, sys, trackside
rank = int(sys.argv[1]); steps = int(sys.argv[2]); mode = sys.argv[3]
os.environ["RANK"] = str(rank)
run = trackside.init()
for step in range(steps):
    if mode == "own":
        run.log({f"rank{rank}/loss": rank * 1000 + step}, step=step)
    else:
        run.log({"loss": float(rank), "count": 1}, step=step)
run.finish()
"""


def writers(ts, run, n, steps, mode):
    env = dict(os.environ, TRACKSIDE_RUN_ID=run.id)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(r), str(steps), mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(1, n + 1)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err


def test_four_writers_with_different_keys_merge_into_one_row_per_step(ts):
    run = start_run()
    writers(ts, run, 4, 50, "own")
    run.finish()
    rows = trackside.Api(ts.root).run(run.id).history()
    assert [r["_step"] for r in rows] == list(range(50))
    for r in rows:
        assert {k: v for k, v in r.items() if not k.startswith("_")} == {
            f"rank{k}/loss": k * 1000 + r["_step"] for k in range(1, 5)
        }


@pytest.mark.parametrize("reduce,expected", [("mean", 2.5), ("sum", 10.0), ("min", 1.0), ("max", 4.0)])
def test_colliding_keys_from_four_writers_follow_the_reduce_rule(ts, reduce, expected):
    run = start_run(settings={"merge_window": 60.0})
    run.define_metric("loss", reduce=reduce)
    run.define_metric("count", reduce="sum")
    assert run._client.flush()  # the definitions reach the daemon before the other writers start
    writers(ts, run, 4, 20, "same")
    run.finish()
    rows = trackside.Api(ts.root).run(run.id).history()
    assert len(rows) == 20
    assert all(r["loss"] == expected for r in rows), rows[:3]
    assert all(r["count"] == 4 for r in rows), rows[:3]


def test_merge_window_stores_rows_held_back_by_a_silent_writer(ts):
    """A rank that stops in the middle of a step (hung, not dead) holds rows back only for
    the merge window; then the daemon stores them while the run is live."""
    run = start_run(settings={"merge_window": 1.0})
    code = """
import os, time, trackside
os.environ["RANK"] = "1"
run = trackside.init()
run.log({"r1": 1}, step=0, commit=False)  # stays in step 0
assert run._client.flush()
print("ready", flush=True)
time.sleep(30)
"""
    p = subprocess.Popen(
        [sys.executable, "-c", code], env=dict(os.environ, TRACKSIDE_RUN_ID=run.id), stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "ready"
        for step in range(5):
            run.log({"r0": step}, step=step, commit=True)
        assert run._client.flush()
        api = trackside.Api(ts.root)
        wait_until(lambda: len(api.run(run.id).history()) == 5, timeout=15)
        rows = api.run(run.id).history()
        assert rows[0] == {**rows[0], "r0": 0, "r1": 1}
    finally:
        p.kill()
        p.wait()


def test_forked_child_joins_the_run_as_another_writer(ts):
    run = trackside.init(project="p")
    run.log({"parent": 1}, step=0)
    pid = os.fork()
    if pid == 0:  # the child: a new writer of the same run
        code = 1
        try:
            run.log({"child": 2}, step=0)
            run.finish()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run.log({"parent": 3}, step=1)
    run.finish()
    rows = history(run)
    assert rows[0]["parent"] == 1 and rows[0]["child"] == 2
    assert rows[1]["parent"] == 3
