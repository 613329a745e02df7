"""The README's main job, examples/train.py: three processes (rank 0 and two forked workers that
join its run) train and log; the run reads back whole right after finish()."""

import os
import subprocess
import sys

import pytest

import trackside

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train.py")


def test_main_job_logs_three_ranks_into_one_run(ts, tmp_path):
    pytest.importorskip("numpy")
    p = subprocess.run(
        [sys.executable, EXAMPLE, "--steps", "40", "--dir", str(tmp_path)],
        env=ts.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "state finished, 40 rows" in p.stdout
    api = trackside.Api(str(tmp_path / "trackside"))
    (run,) = api.runs(project="examples")
    rows = run.history()
    assert [r["_step"] for r in rows] == list(range(40))
    for r in rows:  # every rank's loss is in every step's row
        assert {"rank0/loss", "rank1/loss", "rank2/loss", "accuracy"} <= set(r)
    assert rows[-1]["loss"] < rows[0]["loss"]  # it trains
    assert run.summary["accuracy"]["max"] >= rows[0]["accuracy"]
