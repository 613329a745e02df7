"""The read-back CLI on a real run: runs, history, summary in every format."""

import csv
import io
import json
import os
import subprocess
import sys

import trackside


def cli(ts, *args):
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", *args], env=dict(os.environ), capture_output=True, text=True, timeout=60
    )
    return p


def logged_run(ts):
    run = trackside.init(project="cli", name="demo", config={"lr": 0.1})
    for i in range(5):
        run.log({"loss": 1.0 / (i + 1), "acc": i / 10})
    run.finish()
    return run


def test_runs_lists_the_run(ts):
    run = logged_run(ts)
    p = cli(ts, "runs", "--format", "json")
    assert p.returncode == 0, p.stderr
    ids = [r["id"] for r in json.loads(p.stdout)]
    assert run.id in ids


def test_history_in_json_csv_and_table(ts):
    run = logged_run(ts)
    p = cli(ts, "history", run.id, "--format", "json", "--keys", "loss")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["loss"] for r in rows] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert all("acc" not in r for r in rows)
    p = cli(ts, "history", run.id[:5], "--format", "csv", "--min-step", "3")
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [int(r["_step"]) for r in rows] == [3, 4]
    p = cli(ts, "history", run.id)
    assert p.returncode == 0 and "loss" in p.stdout and "acc" in p.stdout


def test_summary_prints_last_values(ts):
    run = logged_run(ts)
    p = cli(ts, "summary", run.id, "--format", "json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["loss"] == 0.2


def test_unknown_run_is_a_clear_error(ts):
    logged_run(ts)
    p = cli(ts, "history", "nosuchrun")
    assert p.returncode == 1
    assert "nosuchrun" in p.stderr
