"""``trackside import mlflow``: runs written by the real ``mlflow`` package to a local tracking
store (SQLite) read back equal: params as config, metrics with their steps and times as
history, tags, status, artifacts' files."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("mlflow")

import trackside
from trackside.cli import main as cli

SCRIPT = r"""
import json, sys
import mlflow

uri, out = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("exp1")
with mlflow.start_run(run_name="first") as run:
    mlflow.log_params({"lr": 0.1, "optimizer": "sgd"})
    for step, (loss, t) in enumerate([(0.5, 1700000000000), (0.25, 1700000001500), (0.125, 1700000003000)]):
        mlflow.log_metric("loss", loss, step=step, timestamp=t)
    mlflow.log_metric("acc", 0.75, step=2, timestamp=1700000004000)
    mlflow.set_tag("team", "vision")
    with open("notes.txt", "w") as f:
        f.write("artifact body")
    mlflow.log_artifact("notes.txt", artifact_path="docs")
    first = run.info.run_id
mlflow.set_experiment("exp2")
with mlflow.start_run(run_name="broken") as run:
    mlflow.log_metric("loss", 9.0, step=0)
    second = run.info.run_id
mlflow.end_run()
mlflow.MlflowClient(uri).set_terminated(second, status="FAILED")
json.dump({"first": first, "second": second}, open(out, "w"))
"""


@pytest.fixture
def mlflow_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "ids.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRACKSIDE_RUN_ID"))}
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, uri, str(out)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return uri, json.loads(out.read_text())


def test_mlflow_runs_import_equal(ts, mlflow_store, capsys):
    uri, ids = mlflow_store
    assert cli(["import", "mlflow", "--tracking-uri", uri, "--experiment", "exp1", "--root", ts.root]) == 0
    assert f"run {ids['first']} (first): 3 rows" in capsys.readouterr().out

    api = trackside.Api(ts.root)
    (r,) = api.runs()
    assert (r.id, r.name, r.project) == (ids["first"], "first", "exp1")
    assert r.config == {"lr": "0.1", "optimizer": "sgd"}
    assert r.tags == ["team=vision"]
    rows = r.history()
    assert [(row["_step"], row["_timestamp"], row["loss"]) for row in rows] == [
        (0, 1700000000.0, 0.5),
        (1, 1700000001.5, 0.25),
        (2, 1700000004.0, 0.125),
    ]
    assert rows[2]["acc"] == 0.75
    meta = r.metadata["imported"]
    assert meta["tags"]["mlflow.runName"] == "first" and meta["status"] == "FINISHED"
    assert r.state == "finished" and r.finished_at == 1700000004.0  # the run ends at its last row
    (art,) = r.logged_artifacts()
    assert art.name == f"mlflow-{ids['first']}" and read(art.get_path("docs/notes.txt")) == "artifact body"

    # all experiments: the second run comes in (failed); the first is not imported again
    assert cli(["import", "mlflow", "--tracking-uri", uri, "--root", ts.root]) == 0
    assert "exists already" in capsys.readouterr().out
    broken = trackside.Api(ts.root).run(ids["second"])
    assert broken.state == "failed" and broken.project == "exp2" and broken.history()[0]["loss"] == 9.0


def test_an_unknown_experiment_lists_the_known_ones(ts, mlflow_store, capsys):
    uri, _ = mlflow_store
    assert cli(["import", "mlflow", "--tracking-uri", uri, "--experiment", "nope", "--root", ts.root]) == 1
    assert (
        "trackside import mlflow: no MLflow experiment named 'nope' in this tracking store; "
        "it has: 'Default', 'exp1', 'exp2'"
    ) in capsys.readouterr().err


def read(path):
    with open(path) as f:
        return f.read()
