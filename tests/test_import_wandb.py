"""``trackside import wandb``: offline runs written by the real ``wandb`` package (scalars,
summary, config, a Table, an Image, a Histogram, console, an artifact) read back equal."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("wandb")
np = pytest.importorskip("numpy")
pytest.importorskip("PIL")

import trackside
from trackside.cli import main as cli
from trackside.integration.wandb import WandbFormatError, records

SCRIPT = r"""
import json, sys
import numpy as np
import wandb

out = sys.argv[1]
run = wandb.init(project="proj", name="my-run", config={"lr": 0.1, "layers": [1, 2], "opt": {"name": "sgd"}},
                 tags=["t1"], group="g", job_type="train", mode="offline")
times = []
for i in range(3):
    run.log({"loss": 1.0 / (i + 1), "acc": i * 0.25, "sub": {"x": i}})
run.log({"img": wandb.Image(np.arange(12, dtype=np.uint8).reshape(3, 4), caption="c"),
         "hist": wandb.Histogram(np.arange(10.0), num_bins=5),
         "tab": wandb.Table(columns=["a", "b"], data=[[1, "x"], [2, "y"]])}, step=5)
print("hello console")
run.summary["best"] = 0.9
with open(out + ".txt", "w") as f:
    f.write("artifact content")
art = wandb.Artifact("data", type="dataset")
art.add_file(out + ".txt", name="f.txt")
run.log_artifact(art)
json.dump({"id": run.id, "dir": run.dir}, open(out, "w"))
run.finish()
"""


@pytest.fixture
def wandb_run(tmp_path):
    """One offline W&B run written by the wandb package, in tmp_path only."""
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(tmp_path),
        **{
            k: str(tmp_path / "wandb-home" / k.lower())
            for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")
        },
    )
    for k in ("TRACKSIDE_RUN_ID", "WANDB_RUN_ID", "WANDB_PROJECT"):
        env.pop(k, None)
    out = tmp_path / "wandb-run.json"
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    info = json.loads(out.read_text())
    info["folder"] = os.path.dirname(info["dir"])
    return info


def test_offline_run_imports_equal(ts, tmp_path, wandb_run, capsys):
    assert cli(["import", "wandb", str(tmp_path / "wandb"), "--root", ts.root]) == 0
    out = capsys.readouterr().out
    assert f"run {wandb_run['id']} (my-run): 4 rows" in out, out

    r = trackside.Api(ts.root).run(wandb_run["id"])
    assert (r.project, r.name, r.group, r.job_type, r.tags) == ("proj", "my-run", "g", "train", ["t1"])
    assert r.config == {"lr": 0.1, "layers": [1, 2], "opt": {"name": "sgd"}}
    rows = r.history(objects=True)
    assert [row["_step"] for row in rows] == [0, 1, 2, 5]
    assert [(row["loss"], row["acc"], row["sub/x"]) for row in rows[:3]] == [
        (1.0, 0.0, 0),
        (0.5, 0.25, 1),
        (1 / 3, 0.5, 2),
    ]
    # W&B's own record of the rows, times included
    wb_rows = [
        json.loads(i.value_json)
        for rec in records(_wandb_file(wandb_run))
        if rec.HasField("history")
        for i in rec.history.item
        if i.key == "_timestamp" or list(i.nested_key) == ["_timestamp"]
    ]
    assert [row["_timestamp"] for row in rows] == pytest.approx(wb_rows, abs=1e-6)

    counts, edges = np.histogram(np.arange(10.0), bins=5)
    assert rows[3]["hist"].histogram == counts.tolist() and rows[3]["hist"].bins == edges.tolist()
    img = rows[3]["img"]
    assert img.caption == "c" and (img.width, img.height) == (4, 3)
    png = next(f for f in _files(wandb_run, "media/images") if f.endswith(".png"))
    assert img._data == read(png, "rb")
    table = r.table("tab")
    assert table.columns == ["a", "b"] and table.data == [[1, "x"], [2, "y"]]

    assert r.summary["best"] == 0.9 and r.summary["loss"] == 1 / 3
    assert "hello console" in r.console()
    assert r.state == "finished"
    (art,) = [a for a in r.logged_artifacts() if a.name == "data"]
    assert art.type == "dataset" and read(art.get_path("f.txt")) == "artifact content"
    assert r.metadata["imported"]["run_id"] == wandb_run["id"]

    # a second import finds the run and imports nothing
    assert cli(["import", "wandb", wandb_run["folder"], "--root", ts.root]) == 0
    assert "exists already" in capsys.readouterr().out
    assert len(trackside.Api(ts.root).runs()) == 1


def test_a_file_that_is_not_a_wandb_run_is_an_error(ts, tmp_path, capsys):
    bad = tmp_path / "offline-run-1-x" / "run-x.wandb"
    bad.parent.mkdir()
    bad.write_bytes(b"not a run")
    with pytest.raises(WandbFormatError, match="is not a W&B run file"):
        list(records(str(bad)))
    assert cli(["import", "wandb", str(tmp_path), "--root", ts.root]) == 1
    assert f"trackside import wandb: {bad} is not a W&B run file" in capsys.readouterr().err


def test_a_missing_folder_says_so(ts, tmp_path, capsys):
    assert cli(["import", "wandb", str(tmp_path / "nope"), "--root", ts.root]) == 1
    assert f"no such folder: {tmp_path / 'nope'}" in capsys.readouterr().err


def _wandb_file(info):
    return next(os.path.join(info["folder"], f) for f in os.listdir(info["folder"]) if f.endswith(".wandb"))


def _files(info, sub):
    folder = os.path.join(info["dir"], sub)
    return [os.path.join(folder, f) for f in os.listdir(folder)]


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()
