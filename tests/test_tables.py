"""Tables, after the seeds' table pages: creating and logging, the three log modes (IMMUTABLE,
MUTABLE, INCREMENTAL), combining incremental and immutable tables, resuming runs with
incremental tables, adding data, retrieving data, the row limit, and filter/group/sort on the
command line. The seeds' placeholder functions get small stand-ins; everything is logged
through ``import trackside as wandb`` against a real daemon and read back equal."""

import json
import math
import os

import numpy as np
import pytest

import trackside as wandb
from trackside.artifacts import ArtifactNotFoundError
from trackside.data_types.base import DataType
from trackside.data_types.table import Table
from trackside.tablequery import QueryError, compile_where, query


class Point(DataType):
    """A stand-in data type for table cells: a value with a file of its own."""

    _type = "test-point"

    def __init__(self, x, y):
        self.x, self.y = x, y

    def to_json(self, run):
        from trackside.data_types.base import store_bytes
        from trackside.data_types.table import _target_dir

        ref = store_bytes(_target_dir(run), json.dumps([self.x, self.y]).encode(), "json")
        return {"_type": self._type, **ref}

    @classmethod
    def from_json(cls, obj, source):
        with open(os.path.join(source, obj["path"])) as f:
            return cls(*json.load(f))

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def to_numpy(self):
        return np.array([self.x, self.y])


# -- stand-ins for the seeds' placeholders ---------------------------------------------------------


class Model:
    def predict(self, inputs):
        rng = np.random.default_rng(len(inputs))
        p = rng.random((len(inputs), 3))
        return p / p.sum(axis=1, keepdims=True)


model = Model()


def load_eval_data():
    return [f"sample-{i}" for i in range(6)], [i % 3 for i in range(6)]


def get_num_batches():
    return 4


def get_training_batch(step):
    return [f"x{step}-{i}" for i in range(3)], [(step + i) % 2 for i in range(3)]


def train_model_on_batch(inputs, labels):
    pass


def predict_on_batch(inputs):
    return [len(x) % 2 for x in inputs]


def read(run):
    return wandb.Api(run.root).run(run.id)


# -- create and log a table ------------------------------------------------------------------------


def test_create_and_log_a_table(ts):
    with wandb.init(project="table-demo") as run:
        my_table = wandb.Table(columns=["a", "b"], data=[["a1", "b1"], ["a2", "b2"]], log_mode="IMMUTABLE")
        run.log({"table_name": my_table})
    r = read(run)
    back = r.table("table_name")
    assert back == my_table
    assert back.columns == ["a", "b"] and back.data == [["a1", "b1"], ["a2", "b2"]]
    # the history row and the summary hold a reference to the rows file, not the rows
    (row,) = r.history(keys=["table_name"])
    form = row["table_name"]
    assert form["_type"] == "table" and form["nrows"] == 2 and "data" not in form
    assert os.path.isfile(os.path.join(r.dir, form["path"]))
    assert r.summary["table_name"]["path"] == form["path"]


def test_table_is_not_one_json_blob(ts):
    n = 20_000
    t = wandb.Table(columns=["i", "x", "s"], data=[[i, i / 7, f"r{i}"] for i in range(n)])
    with wandb.init(project="p") as run:
        run.log({"big": t})
    r = read(run)
    (row,) = r.history(keys=["big"])
    assert len(json.dumps(row["big"])) < 1000  # the row holds a reference
    with open(os.path.join(r.dir, row["big"]["path"]), "rb") as f:
        assert f.read(1) != b"{"  # msgpack, not JSON
    assert r.table("big") == t


def test_immutable_table_logged_twice_is_an_error(ts):
    with wandb.init(project="p") as run:
        t = wandb.Table(columns=["a"], data=[[1]])
        run.log({"t": t})
        with pytest.raises(wandb.UsageError, match=r"IMMUTABLE table was already logged.*MUTABLE"):
            run.log({"t": t})
        with pytest.raises(wandb.UsageError, match="IMMUTABLE"):
            run.log({"other_key": t})
        # a new table made from its data is a new table
        run.log({"t2": wandb.Table(columns=t.columns, data=t.data)})
    r = read(run)
    assert [k for k in ("t", "t2", "other_key") if k in r.table_keys()] == ["t", "t2"]
    assert [row["_step"] for row in r.history(keys=["t"])] == [0]


# -- log modes -------------------------------------------------------------------------------------


def test_mutable_mode_stores_a_new_version_per_log(ts):
    snapshots = []
    with wandb.init(project="mutable-table-demo") as run:
        table = wandb.Table(columns=["input", "label", "prediction"], log_mode="MUTABLE")
        inputs, labels = load_eval_data()
        raw_preds = model.predict(inputs)
        for inp, label, pred in zip(inputs, labels, raw_preds):
            table.add_data(inp, label, pred)
        run.log({"eval_table": table})
        snapshots.append(Table(columns=list(table.columns), data=[list(r) for r in table.data]))

        confidences = np.max(raw_preds, axis=1)
        table.add_column("confidence", confidences)
        run.log({"eval_table": table})
        snapshots.append(Table(columns=list(table.columns), data=[list(r) for r in table.data]))

        post_preds = (confidences > 0.7).astype(int)
        table.add_column("final_prediction", post_preds)
        run.log({"eval_table": table})
    r = read(run)
    assert r.table("eval_table") == table
    assert r.table("eval_table", version="latest") == table
    assert r.table("eval_table", version=0) == snapshots[0]
    assert r.table("eval_table", version="v1") == snapshots[1]
    assert r.table("eval_table", version=1).columns == ["input", "label", "prediction", "confidence"]
    pred = r.table("eval_table").get_column("prediction", convert_to="numpy")
    assert np.array_equal(pred, raw_preds)
    with pytest.raises(ArtifactNotFoundError, match=r"no version 'v3'.*v0 to v2"):
        r.table("eval_table", version=3)


def test_incremental_mode_logs_only_new_rows_and_steps_through_increments(ts):
    with wandb.init(project="incremental-table-demo") as run:
        table = wandb.Table(columns=["step", "input", "label", "prediction"], log_mode="INCREMENTAL")
        for step in range(get_num_batches()):
            inputs, labels = get_training_batch(step)
            train_model_on_batch(inputs, labels)
            predictions = predict_on_batch(inputs)
            for input_item, label, prediction in zip(inputs, labels, predictions):
                table.add_data(step, input_item, label, prediction)
            run.log({"training_table": table}, step=step)
    r = read(run)
    assert r.table("training_table") == table
    incs = r.table_increments("training_table")
    assert [(i.increment, i.step, len(i.table.data)) for i in incs] == [(0, 0, 3), (1, 1, 3), (2, 2, 3), (3, 3, 3)]
    assert [row for i in incs for row in i.table.data] == table.data
    assert all(row[0] == i.increment for i in incs for row in i.table.data)
    # stepping back: the table as it was after increment 1
    assert r.table("training_table", version=1).data == table.data[:6]
    # each history row references only its increment
    assert [row["training_table"]["nrows"] for row in r.history(keys=["training_table"])] == [3, 3, 3, 3]


@pytest.mark.filterwarnings("ignore:trackside. metric name")  # the seed's own key, "table-incr"
def test_incremental_and_immutable_tables_combined(ts):
    with wandb.init(project="combined-logging-example") as run:
        incr_table = wandb.Table(columns=["step", "input", "prediction", "label"], log_mode="INCREMENTAL")
        for step in range(get_num_batches()):
            inputs, labels = get_training_batch(step)
            predictions = predict_on_batch(inputs)
            for inp, pred, label in zip(inputs, predictions, labels):
                incr_table.add_data(step, inp, pred, label)
            run.log({"table-incr": incr_table}, step=step)
        final_table = wandb.Table(columns=incr_table.columns, data=incr_table.data, log_mode="IMMUTABLE")
        run.log({"table": final_table})
    r = read(run)
    assert r.table("table") == final_table == r.table("table-incr")
    assert len(r.table_increments("table-incr")) == get_num_batches()


def test_resuming_a_run_continues_its_incremental_table(ts):
    with wandb.init(project="resume-incremental") as first:
        table = wandb.Table(columns=["step", "metric"], log_mode="INCREMENTAL")
        for step in range(3):
            table.add_data(step, step * 0.5)
            first.log({"metrics": table}, step=step)
    resume_step, final_step = 3, 6
    resumed_run = wandb.init(project="resume-incremental", id=first.id, resume="must")
    # a new table: no need to fill it with what was logged before
    table = wandb.Table(columns=["step", "metric"], log_mode="INCREMENTAL")
    for step in range(resume_step, final_step):
        table.add_data(step, step * 0.5)
        resumed_run.log({"metrics": table}, step=step)
    resumed_run.finish()
    r = read(resumed_run)
    assert r.table("metrics").data == [[s, s * 0.5] for s in range(final_step)]
    assert [(i.increment, i.step) for i in r.table_increments("metrics")] == [(s, s) for s in range(final_step)]


# -- building tables -------------------------------------------------------------------------------


def test_table_from_rows_dataframe_and_array():
    t = wandb.Table(columns=["a", "b", "c"], data=[["1a", "1b", "1c"], ["2a", "2b", "2c"]])
    assert t.data == [["1a", "1b", "1c"], ["2a", "2b", "2c"]]
    assert wandb.Table(("image", "label")).columns == ["image", "label"]  # columns first, positionally
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"id": [1, 2, 3], "score": [0.5, 0.25, np.nan], "name": ["x", "y", None]})
    t = wandb.Table(dataframe=df)
    assert t.columns == ["id", "score", "name"]
    assert t.data[0] == [1, 0.5, "x"] and t.data[2][2] is None and math.isnan(t.data[2][1])
    assert type(t.data[0][0]) is int and t.column_types == {"id": "number", "score": "number", "name": "string"}
    t = wandb.Table(columns=["x", "y"], data=np.arange(6).reshape(3, 2))
    assert t.data == [[0, 1], [2, 3], [4, 5]]


def test_add_data_and_add_column():
    columns = ["id", "image", "guess", "truth"] + [f"score_{d}" for d in range(10)]
    test_table = wandb.Table(columns=columns)
    for img_id in range(3):
        scores = np.linspace(0, 1, 10)
        test_table.add_data(img_id, Point(img_id, 0), img_id % 2, 1, *scores)
    assert len(test_table.data) == 3 and type(test_table.data[0][4]) is float
    test_table.add_column("note", ["a", "b", "c"])
    test_table.add_column(name="weight", data=np.array([1.5, 2.5, 3.5]))
    assert test_table.get_column("weight") == [1.5, 2.5, 3.5]
    assert test_table.get_column("note") == ["a", "b", "c"]
    # a column on an empty table makes its rows
    t = wandb.Table()
    t.add_column("x", [1, 2])
    assert t.data == [[1], [2]]


def test_retrieve_rows_and_columns():
    t = wandb.Table(columns=["id", "p", "v"], data=[[i, Point(i, -i), np.arange(3) * i] for i in range(4)])
    assert [(i, row[0]) for i, row in t.iterrows()] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert t.get_column("id") == [0, 1, 2, 3]
    ids = t.get_column("id", convert_to="numpy")
    assert isinstance(ids, np.ndarray) and ids.tolist() == [0, 1, 2, 3]
    pts = t.get_column("p", convert_to="numpy")  # data types by their to_numpy()
    assert pts.shape == (4, 2) and pts[3].tolist() == [3, -3]
    assert t.get_column("v", convert_to="numpy").shape == (4, 3)
    with pytest.raises(KeyError, match="no column 'nope'"):
        t.get_column("nope")


def test_cells_of_every_kind_read_back_equal(ts):
    rows = [
        [1, 0.5, "s", True, [1, [2, 3]], {"k": "v"}, b"\x00\x01", np.eye(2), Point(1, 2), None],
        [2, float("nan"), "", False, [], {}, b"", np.zeros((2, 2), dtype=np.float32), None, None],
        [None, float("inf"), None, None, None, None, None, None, Point(3, 4), None],
    ]
    columns = ["i", "f", "s", "b", "l", "d", "raw", "arr", "point", "empty"]
    t = wandb.Table(columns=columns, data=rows)
    with wandb.init(project="p") as run:
        run.log({"kinds": t})
    back = read(run).table("kinds")
    assert back == t
    assert back.column_types == t.column_types
    assert back.data[1][7].dtype == np.float32 and back.data[0][8] == Point(1, 2)


def test_table_with_images_and_classes_reads_back_equal(ts):
    image = pytest.importorskip("trackside.data_types.image")
    pytest.importorskip("PIL")
    class_set = wandb.Classes([{"name": c, "id": i} for i, c in enumerate(["dog", "cat"])])
    pixels = [np.full((4, 5, 3), i * 40, dtype=np.uint8) for i in range(3)]
    t = wandb.Table(columns=["id", "image", "prediction", "truth"])
    for i, px in enumerate(pixels):
        t.add_data(i, image.Image(px, caption=f"img {i}", classes=class_set), i % 2, 0)
    with wandb.init(project="p") as run:
        run.log({"preds": t})
    back = read(run).table("preds")
    assert back == t
    assert np.array_equal(back.get_column("image", convert_to="numpy"), np.stack(pixels))


# -- bad input -------------------------------------------------------------------------------------


def test_wrong_row_length_is_an_error():
    t = wandb.Table(columns=["a", "b"])
    with pytest.raises(ValueError, match=r"row 0 has 3 values, but the table has 2 columns \(a, b\)"):
        t.add_data(1, 2, 3)
    with pytest.raises(ValueError, match="row 1 has 1 value,"):
        wandb.Table(columns=["a", "b"], data=[[1, 2], [3]])
    assert t.data == []


def test_wrong_cell_type_names_row_and_column():
    t = wandb.Table(columns=["id", "label"], data=[[1, "cat"], [2, "dog"]])
    with pytest.raises(
        TypeError,
        match=r"row 2, column 'id': 'three' is a string value, but the column holds "
        r"number values \(set by row 0\)",
    ):
        t.add_data("three", "bird")
    with pytest.raises(TypeError, match=r"row 1, column 'x'.*bool"):
        wandb.Table(columns=["x"], data=[[1.5], [True]])
    with pytest.raises(TypeError, match=r"row 0, column 'x': a object cannot go in a table"):
        wandb.Table(columns=["x"], data=[[object()]])
    assert len(t.data) == 2 and t.column_types == {"id": "number", "label": "string"}  # unchanged
    t.add_data(None, None)  # None fits every column
    mixed = wandb.Table(columns=["x"], data=[[1], ["a"]], allow_mixed_types=True)
    assert mixed.column_types == {"x": "mixed"}


def test_column_of_the_wrong_length_is_an_error():
    t = wandb.Table(columns=["a"], data=[[1], [2], [3]])
    with pytest.raises(ValueError, match=r"column 'b' has 2 values, but the table has 3 rows"):
        t.add_column("b", [1, 2])
    with pytest.raises(ValueError, match="already has a column 'a'"):
        t.add_column("a", [1, 2, 3])
    with pytest.raises(TypeError, match=r"row 2, column 'c'"):
        t.add_column("c", [1, 2, "x"])
    assert t.columns == ["a"]


def test_more_rows_than_max_artifact_rows_is_an_error(ts, monkeypatch):
    monkeypatch.setattr(Table, "MAX_ARTIFACT_ROWS", 5)
    t = wandb.Table(columns=["a"], data=[[i] for i in range(6)])
    with wandb.init(project="p") as run:
        with pytest.raises(ValueError, match=r"6 rows, more than Table.MAX_ARTIFACT_ROWS \(5\).*MAX_ARTIFACT_ROWS = 6"):
            run.log({"t": t})
        art = wandb.Artifact("a", "dataset")
        with pytest.raises(ValueError, match="MAX_ARTIFACT_ROWS"):
            art.add(t, "t")
        wandb.Table.MAX_ARTIFACT_ROWS = 6  # overridable
        run.log({"t": t})
    assert read(run).table("t") == t


def test_unknown_table_key_names_the_runs_tables(ts):
    with wandb.init(project="p") as run:
        run.log({"a": wandb.Table(columns=["x"], data=[[1]])})
    with pytest.raises(ArtifactNotFoundError, match=r"logged no table under 'b' \(its tables: 'a'\)"):
        read(run).table("b")


# -- filter, group, sort -----------------------------------------------------------------------------

ROWS = [["cat", 0.9, 1], ["dog", 0.4, 2], ["cat", 0.2, None], ["bird", 0.7, 4], ["dog", 0.8, 5]]
COLS = ["label", "score", "n"]


def test_where_expressions():
    def where(expr):
        test = compile_where(expr, COLS)
        return [r for r in ROWS if test(r)]

    assert where("label == cat") == [ROWS[0], ROWS[2]]
    assert where("label = 'cat' and score > 0.5") == [ROWS[0]]
    assert where("score >= 0.8 or label == bird") == [ROWS[0], ROWS[3], ROWS[4]]
    assert where("not (label == dog)") == [ROWS[0], ROWS[2], ROWS[3]]
    assert where("n > 1 and n < 5") == [ROWS[1], ROWS[3]]  # None has no order: false
    assert where("n == null") == [ROWS[2]]
    assert where("label contains ir") == [ROWS[3]]
    assert where('`label` startswith "d"') == [ROWS[1], ROWS[4]]
    assert where("label > 1") == []  # a string and a number: no order, false
    for bad, msg in [
        ("nope == 1", "no column 'nope'"),
        ("label ==", "ends too early"),
        ("label cat", "expected an operator"),
        ("label == cat dog", "unexpected 'dog'"),
        ("__import__('os') == 1", "no column"),
        ("", "empty"),
    ]:
        with pytest.raises(QueryError, match=msg):
            compile_where(bad, COLS)


def test_filter_group_and_sort():
    cols, rows = query(COLS, ROWS, where="score > 0.3", sort="score", descending=True, limit=3)
    assert rows == [ROWS[0], ROWS[4], ROWS[3]]
    cols, rows = query(COLS, ROWS, group_by="label", sort="count", descending=True)
    assert cols == ["label", "count", "mean(score)", "mean(n)"]
    assert rows[0][:2] in (["cat", 2], ["dog", 2]) and rows[-1] == ["bird", 1, 0.7, 4.0]
    assert dict((r[0], r[3]) for r in rows)["cat"] == 1.0  # None skipped in the mean


def test_cli_table_filters_groups_and_sorts(ts, capsys):
    from trackside.cli import main

    t = wandb.Table(columns=COLS, data=ROWS)
    with wandb.init(project="p") as run:
        run.log({"preds": t})
    assert main(["table", run.id, "preds", "--where", "label == dog", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"label": "dog", "score": 0.4, "n": 2},
        {"label": "dog", "score": 0.8, "n": 5},
    ]
    assert main(["table", run.id, "preds", "--group-by", "label", "--sort", "label", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "label,count,mean(score),mean(n)" and out[1].startswith("bird,1,0.7")
    assert main(["table", run.id, "preds", "--sort", "score", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == COLS and len(lines) == 3 and lines[1].split()[1] == "0.2"
    assert main(["table", run.id, "preds", "--where", "nope > 1"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    assert main(["table", run.id, "missing"]) == 1
    assert "logged no table under 'missing'" in capsys.readouterr().err


def test_damaged_rows_file_is_a_clear_error(tmp_path):
    import hashlib

    from trackside.data_types.table import read_columns

    (tmp_path / "rows.msgpack").write_bytes(b"\xc1 not msgpack")
    obj = {"_type": "table-file", "path": "rows.msgpack", "sha256": hashlib.sha256(b"\xc1 not msgpack").hexdigest()}
    with pytest.raises(ValueError, match="rows.msgpack cannot be read"):
        read_columns(obj, str(tmp_path))
