"""Artifacts, after the seeds' table and datasets pages: artifact tables, use_artifact().get()
giving back equal objects (also in another process), logged tables reachable as
``run-<id>-<key>``, versions and aliases, JoinedTable, datasets with images, files, resuming
from an artifact table, and bad input. Everything runs through ``import trackside as wandb``
against a real daemon."""

import json
import os

import numpy as np
import pytest

import trackside as wandb
from trackside.artifacts import ArtifactNotFoundError
from trackside.store import Store, check_artifact

from conftest import run_script


def predictions_table(n=4, seed=0):
    rng = np.random.default_rng(seed)
    t = wandb.Table(columns=["id", "prediction", "truth", "score"])
    for i in range(n):
        t.add_data(i, int(rng.integers(10)), i % 10, float(rng.random()))
    return t


# -- artifact tables -----------------------------------------------------------------------------


def test_artifact_tables_log_artifact_and_use_artifact_get(ts):
    test_table = predictions_table()
    with wandb.init(project="my_project") as run:
        test_predictions = wandb.Artifact("mnist_test_preds", type="predictions")
        test_predictions.add(test_table, "my_test_key")
        logged = run.log_artifact(test_predictions)
        assert logged is test_predictions and logged.version == "v0" and logged.aliases == ["latest"]
        # the same run reads it back at once: log_artifact returns once the store holds it
        got = run.use_artifact("mnist_test_preds:latest").get("my_test_key")
        assert got == test_table and got is not test_table
    with wandb.init(project="my_project") as other:
        art = other.use_artifact("mnist_test_preds:v0", type="predictions")
        assert art.get("my_test_key") == test_table
        assert art.type == "predictions" and art.entries == ["my_test_key"]
    assert wandb.Api(ts.root).artifact("mnist_test_preds").get("my_test_key") == test_table


def test_use_artifact_get_in_another_process(ts):
    table = wandb.Table(columns=["name", "vec", "ok"], data=[["a", np.arange(3.0), True], ["b", np.ones(3), None]])
    with wandb.init(project="p") as run:
        art = wandb.Artifact("shared", "dataset")
        art.add(table, "rows")
        run.log_artifact(art)
    code = (
        "import sys, json, trackside as wandb\n"
        "t = wandb.Api(sys.argv[1]).artifact('shared:latest').get('rows')\n"
        "print(json.dumps({'columns': t.columns, 'data': [[c.tolist() if hasattr(c, 'tolist') else c for c in r]"
        " for r in t.data]}))\n"
    )
    out = json.loads(run_script(code, ts.env, ts.root).stdout)
    assert out == {
        "columns": ["name", "vec", "ok"],
        "data": [["a", [0.0, 1.0, 2.0], True], ["b", [1.0, 1.0, 1.0], None]],
    }


def test_logged_table_is_reachable_as_run_artifact(ts):
    with wandb.init() as run:
        my_table = wandb.Table(columns=["a", "b"], data=[["1a", "1b"], ["2a", "2b"]])
        run.log({"table_key": my_table})
        # the same run, at once: use_artifact waits for what this run logged
        assert run.use_artifact(f"run-{run.id}-table_key:latest").get("table_key") == my_table
    with wandb.init() as reader:
        art = reader.use_artifact(f"run-{run.id}-table_key:v0")
        assert art.get("table_key") == my_table
        assert art.run_key == "table_key" and art.type == "run_table"
    assert [a.qualified_name for a in wandb.Api(ts.root).run(run.id).logged_artifacts()] == [
        f"run-{run.id}-table_key:v0"
    ]


def test_each_log_to_the_same_key_is_a_new_version(ts):
    tables = [predictions_table(seed=s) for s in range(3)]
    with wandb.init() as run:
        for t in tables:
            run.log({"preds": t})
    api = wandb.Api(ts.root)
    for v, t in enumerate(tables):
        assert api.artifact(f"run-{run.id}-preds:v{v}").get("preds") == t
    assert api.artifact(f"run-{run.id}-preds:latest").version == "v2"


def test_versions_and_aliases(ts):
    with wandb.init() as run:
        versions = []
        for i in range(3):
            art = wandb.Artifact("model-eval", "eval", metadata={"round": i})
            art.add(predictions_table(seed=i), "t")
            run.log_artifact(art, aliases=["best"] if i == 1 else None)
            versions.append(art)
        assert [a.version for a in versions] == ["v0", "v1", "v2"]
        same = wandb.Artifact("model-eval", "eval", metadata={"round": 2})
        same.add(predictions_table(seed=2), "t")
        assert run.log_artifact(same).version == "v2"  # identical content: no new version
    api = wandb.Api(ts.root)
    assert api.artifact("model-eval:best").version == "v1"
    assert api.artifact("model-eval:best").metadata == {"round": 1}
    latest = api.artifact("model-eval:latest")
    assert latest.version == "v2" and latest.aliases == ["latest"]
    assert api.artifact("model-eval:v0").get("t") == predictions_table(seed=0)
    assert api.artifact("entity/project/model-eval:v1").version == "v1"  # the documented long form


def test_unknown_artifact_alias_or_name_is_a_clear_error(ts):
    with wandb.init() as run:
        art = wandb.Artifact("ds", "dataset")
        art.add(predictions_table(), "t")
        run.log_artifact(art, aliases=["prod"])
        with pytest.raises(
            ArtifactNotFoundError,
            match=r"artifact 'ds' has no version 'v7': its versions are v0 to v0, "
            r"its aliases latest, prod",
        ):
            run.use_artifact("ds:v7")
        with pytest.raises(ArtifactNotFoundError, match="has no version 'staging'"):
            run.use_artifact("ds:staging")
        with pytest.raises(ArtifactNotFoundError, match=r"no artifact named 'dataset' .*\(artifacts: ds\)"):
            run.use_artifact("dataset:latest")
        with pytest.raises(ValueError, match="of type 'dataset', not 'model'"):
            run.use_artifact("ds:latest", type="model")
        with pytest.raises(KeyError, match=r"has no entry 'nope'; its entries: 't'"):
            run.use_artifact("ds").get("nope")


def test_joined_table(ts):
    songs = wandb.Table(columns=["song_id", "title"], data=[[1, "a"], [2, "b"], [3, "c"]])
    synth = wandb.Table(columns=["song_id", "title", "quality"], data=[[2, "b'", 0.5], [1, "a'", 0.9], [1, "a''", 0.1]])
    with wandb.init(project="my_project") as run:
        for name, entry, t in (("original_songs", "original_samples", songs), ("synth_songs", "synth_samples", synth)):
            art = wandb.Artifact(name, "dataset")
            art.add(t, entry)
            run.log_artifact(art)
    with wandb.init(project="my_project") as run:
        orig_table = run.use_artifact("original_songs:latest").get("original_samples")
        synth_table = run.use_artifact("synth_songs:latest").get("synth_samples")
        join_table = wandb.JoinedTable(orig_table, synth_table, "song_id")
        join_at = wandb.Artifact("synth_summary", "analysis")
        join_at.add(join_table, "synth_explore")
        run.log_artifact(join_at)
        run.log({"joined": join_table})
    back = wandb.Api(ts.root).artifact("synth_summary:latest").get("synth_explore")
    assert back == join_table
    joined = back.joined()
    assert joined.columns == ["song_id", "title_1", "title_2", "quality"]
    assert joined.data == [[1, "a", "a'", 0.9], [1, "a", "a''", 0.1], [2, "b", "b'", 0.5]]
    assert wandb.Api(ts.root).run(run.id).table("joined") == join_table
    with pytest.raises(KeyError, match="no column 'nope' to join on"):
        wandb.JoinedTable(songs, synth, "nope")
    diff = wandb.JoinedTable(songs, wandb.Table(columns=["sid", "x"], data=[[3, True]]), ["song_id", "sid"])
    assert diff.joined().data == [[3, "c", True]]


def test_add_data_to_resumed_runs_from_an_artifact_table(ts):
    with wandb.init(project="my_project") as run:
        best = wandb.Table(columns=["col1", "col2", "col3"], data=[[1, 0.9, 0.1], [2, 0.95, 0.05]])
        run.log({"best_checkpt": best})
    table_tag = f"run-{run.id}-best_checkpt:latest"
    table_name = "best_checkpt"
    with wandb.init(project="my_project") as run:
        best_checkpt_table = run.use_artifact(table_tag).get(table_name)
        best_iter, best_metric_max, best_metric_min = best_checkpt_table.data[-1]
        best_checkpt_table.add_data(best_iter + 1, best_metric_max + 0.01, best_metric_min / 2)
        best_checkpt_table = wandb.Table(columns=["col1", "col2", "col3"], data=best_checkpt_table.data)
        run.log({table_name: best_checkpt_table})
    assert wandb.Api(ts.root).run(run.id).table(table_name).data == [[1, 0.9, 0.1], [2, 0.95, 0.05], [3, 0.96, 0.025]]


def test_dataset_with_images_and_classes_in_an_artifact(ts):
    image = pytest.importorskip("trackside.data_types.image")
    pytest.importorskip("PIL")
    classes = ["airplane", "automobile", "bird"]
    x_test = np.random.default_rng(1).integers(0, 255, size=(6, 8, 8, 3), dtype=np.uint8)
    y_test = [[i % 3] for i in range(6)]
    class_set = wandb.Classes([{"name": c, "id": i} for i, c in enumerate(classes)])
    with wandb.init(job_type="create-dataset") as run:
        table = wandb.Table(("image", "label"))
        for x, y in zip(x_test, y_test):
            table.add_data(image.Image(x, classes=class_set), classes[y[0]])
        dataset_artifact = wandb.Artifact("my-dataset", type="dataset")
        dataset_artifact.add(table, "dataset")
        dataset_artifact.add(class_set, "classes")
        dataset_artifact.add(image.Image(x_test[0], caption="first"), "an-image")
        run.log_artifact(dataset_artifact)
    art = wandb.Api(ts.root).artifact("my-dataset:v0")
    assert art.get("dataset") == table
    assert art.get("classes") == class_set
    assert art.get("an-image") == image.Image(x_test[0], caption="first")
    assert np.array_equal(art.get("dataset").get_column("image", convert_to="numpy"), x_test)
    # the files live under the run root's artifacts folder, content-addressed
    assert os.path.isdir(os.path.join(ts.root, "artifacts", "media"))


def test_files_in_artifacts(ts, tmp_path):
    (tmp_path / "labels.csv").write_text("id,label\n1,cat\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("A")
    (tmp_path / "data" / "sub").mkdir()
    (tmp_path / "data" / "sub" / "b.txt").write_text("B")
    with wandb.init() as run:
        art = wandb.Artifact("raw", "dataset", description="raw files")
        assert art.add_file(tmp_path / "labels.csv") == "labels.csv"
        assert art.add_dir(tmp_path / "data", name="data") == ["data/a.txt", "data/sub/b.txt"]
        run.log_artifact(art)
        from_path = run.log_artifact(str(tmp_path / "labels.csv"), type="labels")
        assert from_path.name == "labels.csv" and from_path.version == "v0"
    got = wandb.Api(ts.root).artifact("raw:latest")
    assert got.description == "raw files"
    with open(got.get_path("labels.csv")) as f:
        assert f.read() == "id,label\n1,cat\n"
    assert got.get("data/sub/b.txt").startswith(os.path.join(ts.root, "artifacts"))
    out = got.download(tmp_path / "down")
    assert (tmp_path / "down" / "data" / "sub" / "b.txt").read_text() == "B"
    assert out == str(tmp_path / "down")


# -- bad input ---------------------------------------------------------------------------------------


def test_artifact_bad_input(ts, tmp_path):
    art = wandb.Artifact("a", "t")
    with pytest.raises(TypeError, match=r"add\(\) takes a trackside data type.*use add_file"):
        art.add({"x": 1}, "x")
    with pytest.raises(FileNotFoundError, match="no such file to add to artifact 'a'"):
        art.add_file(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="no ':'"):
        wandb.Artifact("a:b", "t")
    with pytest.raises(TypeError, match="metadata must be a dict, not list"):
        wandb.Artifact("a", "t", metadata=[1])
    with pytest.raises(ValueError, match="without '..'"):
        art.add(wandb.Table(columns=["x"]), "../escape")
    art.add(wandb.Table(columns=["x"], data=[[1]]), "t")
    with wandb.init() as run:
        with pytest.raises(ValueError, match="alias 'v3' is not valid"):
            run.log_artifact(art, aliases=["v3"])
        run.log_artifact(art)
        with pytest.raises(ValueError, match="already logged"):
            run.log_artifact(art)
        with pytest.raises(ValueError, match="already logged and cannot change"):
            art.add(wandb.Table(columns=["x"]), "u")
    with pytest.raises(wandb.UsageError, match="not live"):
        run.log_artifact(wandb.Artifact("b", "t"))


def test_module_level_log_and_use_artifact(ts):
    t = predictions_table()
    wandb.init(job_type="create-dataset")
    art = wandb.Artifact("my-dataset-1", type="dataset")
    art.add(t, "an-entry")
    wandb.log_artifact(art, aliases=["v1-candidate"])
    wandb.finish()
    wandb.init()
    artifact = wandb.use_artifact("my-dataset-1:v1-candidate")
    assert artifact.get("an-entry") == t
    wandb.finish()


def test_a_bad_artifact_event_is_a_warning_and_loses_nothing(ts):
    with wandb.init() as run:
        run.log({"loss": 1.0})
        run._event("artifact", {"name": "no uid"})  # what a broken client might send
        run.log({"loss": 0.5, "t": wandb.Table(columns=["a"], data=[[1]])})
    r = wandb.Api(ts.root).run(run.id)
    assert [row["loss"] for row in r.history(keys=["loss"])] == [1.0, 0.5]
    assert r.table("t").data == [[1]]


def test_store_indexes_artifacts_once_per_log_call(tmp_path):
    base = {"uid": "u1", "name": "n", "type": "t", "digest": "d1", "manifest": {"e": {"kind": "object", "obj": {}}}}
    with Store(tmp_path) as s:
        assert s.add_artifact("r1", base) == ("n", 0)
        assert s.add_artifact("r1", base) == ("n", 0)  # a replayed event
        assert s.add_artifact("r1", {**base, "uid": "u2"}) == ("n", 0)  # same digest: the same version
        assert s.add_artifact("r1", {**base, "uid": "u3", "digest": "d2", "aliases": ["best"]}) == ("n", 1)
        inc = {**base, "name": "run-r1-k", "run_key": "k", "incremental": True}
        assert [s.add_artifact("r1", {**inc, "uid": f"i{i}"}) for i in range(3)] == [("run-r1-k", i) for i in range(3)]
        increments = s._conn.execute("SELECT increment FROM artifacts WHERE name = 'run-r1-k' ORDER BY version")
        assert [i for (i,) in increments] == [0, 1, 2]
    for bad, msg in [
        ({**base, "name": "a:b"}, "no ':'"),
        ({**base, "uid": ""}, "uid"),
        ({**base, "manifest": []}, "manifest"),
        ({**base, "aliases": ["v1"]}, "aliases"),
        ([], "map"),
    ]:
        with pytest.raises((ValueError, TypeError), match=msg):
            check_artifact(bad)
