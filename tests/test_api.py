"""Reading runs back: ``trackside.api.Api`` over a store written by ``Store`` (no daemon), and
the CLI's output helpers in ``trackside.cli.display``."""

import csv
import io
import json
import math
import sqlite3
import sys

import pytest

from trackside.cli import display
from trackside.api import Api, RunNotFoundError, SchemaVersionError, StoreNotFoundError
from trackside.store import DB_NAME, SCHEMA_VERSION, Store

from conftest import T0, Row, rows


@pytest.fixture
def root(tmp_path):
    return tmp_path / "trackside"


@pytest.fixture
def store(root):
    s = Store(root)
    yield s
    s.close()


@pytest.fixture
def api(store, root):
    a = Api(root)
    yield a
    a.close()


# -- opening ---------------------------------------------------------------------------------------


def test_missing_store_error_names_path_and_hint(tmp_path):
    with pytest.raises(StoreNotFoundError, match=r"no trackside store at .*trackside\.db.*TRACKSIDE_DIR") as e:
        Api(tmp_path / "nothing")
    assert isinstance(e.value, FileNotFoundError)


def test_default_root_from_env(store, root, monkeypatch):
    store.upsert_run("r1", project="p")
    monkeypatch.setenv("TRACKSIDE_DIR", str(root))
    with Api() as a:
        assert a.root == str(root)
        assert [r.id for r in a.runs()] == ["r1"]


def test_default_root_is_cwd_trackside(store, root, monkeypatch):
    monkeypatch.delenv("TRACKSIDE_DIR", raising=False)
    monkeypatch.chdir(root.parent)
    with Api() as a:
        assert a.path == str(root / DB_NAME)


def test_init_dir_is_accepted_as_root(store, root):
    with Api(root.parent) as a:  # init(dir=D) writes D/trackside
        assert a.root == str(root)


def test_newer_schema_refused(store, root):
    store.close()
    con = sqlite3.connect(root / DB_NAME)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    con.close()
    with pytest.raises(SchemaVersionError, match="newer trackside"):
        Api(root)


def test_reads_after_writer_closed(store, root):
    store.write_rows("r1", rows(3))
    store.close()
    with Api(root) as a:
        assert len(a.run("r1").history()) == 3


# -- runs ------------------------------------------------------------------------------------------


def test_run_attributes(store, api, root):
    store.upsert_run(
        "abc123",
        project="p",
        name="n",
        group="g",
        job_type="train",
        tags=["x"],
        config={"lr": 0.1},
        metadata={"host": "h"},
        created_at=100.0,
    )
    store.apply("abc123", summary={"loss": 0.5, "diverged": float("nan")})
    store.write_rows("abc123", rows(4))
    store.apply("abc123", final_state=("finished", 0))
    r = api.run("abc123")
    assert (r.id, r.project, r.name, r.group, r.job_type, r.tags) == ("abc123", "p", "n", "g", "train", ["x"])
    assert (r.state, r.exit_code, r.created_at) == ("finished", 0, 100.0)
    assert r.finished_at > 100.0
    assert r.dir == str(root / "runs" / "abc123")
    assert r.config == {"lr": 0.1}
    assert r.metadata == {"host": "h"}
    assert r.summary["loss"] == 0.5 and math.isnan(r.summary["diverged"])
    assert (r.history_rows, r.last_step) == (4, 3)
    assert repr(r) == "<RunView p/abc123 name='n' state=finished>"


def test_runs_newest_first_and_by_project(store, api):
    store.upsert_run("old", project="a", created_at=1.0)
    store.upsert_run("new", project="b", created_at=3.0)
    store.upsert_run("mid", project="a", created_at=2.0)
    assert [r.id for r in api.runs()] == ["new", "mid", "old"]
    assert [r.id for r in api.runs("a")] == ["mid", "old"]
    assert [r.id for r in api.runs("me/a")] == ["mid", "old"]
    assert api.runs("none") == []


def test_run_by_unique_prefix(store, api):
    store.upsert_run("abc111", project="p")
    store.upsert_run("abd222", project="p")
    assert api.run("abc").id == "abc111"
    assert api.run("abd2").id == "abd222"


def test_ambiguous_prefix_names_the_candidates(store, api):
    store.upsert_run("abc111", project="p")
    store.upsert_run("abd222", project="p")
    with pytest.raises(RunNotFoundError, match=r"prefix 'ab' matches several runs \(abc111, abd222\)"):
        api.run("ab")


def test_unknown_run_id_error_names_the_id(store, api):
    store.upsert_run("abc111", project="p")
    with pytest.raises(KeyError) as e:
        api.run("zzz")
    assert str(e.value) == f"no run 'zzz' in {api.path} (1 run; `trackside runs` lists them)"


def test_run_by_path(store, api):
    store.upsert_run("abc111", project="p")
    assert api.run("me/p/abc111").id == "abc111"
    assert api.run("p/abc").id == "abc111"
    with pytest.raises(RunNotFoundError, match="in project 'p', not 'q'"):
        api.run("me/q/abc111")


def test_refresh_sees_new_state(store, api):
    store.upsert_run("r1", project="p")
    r = api.run("r1")
    store.apply("r1", final_state=("crashed", 137))
    assert r.state == "running"  # a snapshot
    assert r.refresh().state == "crashed" and r.exit_code == 137


# -- history ---------------------------------------------------------------------------------------


def test_history_round_trip(store, api):
    store.write_rows("r1", rows(3))
    assert api.run("r1").history() == [
        {"_step": s, "_timestamp": (T0 + s * 1000) / 1e6, "loss": float(s), "acc": s + 0.1} for s in range(3)
    ]


def test_history_key_filter_omits_rows_without_keys(store, api):
    store.write_rows("r1", rows(4, keys=("loss",)))
    store.write_rows("r1", [Row(s, T0, {"val": s}, amend=True) for s in (1, 3)])
    run = api.run("r1")
    assert [(r["_step"], r["val"]) for r in run.history(keys=["val"])] == [(1, 1), (3, 3)]
    both = run.history(keys=["val", "loss"])
    assert [sorted(r) for r in both] == [
        ["_step", "_timestamp", "loss"],
        ["_step", "_timestamp", "loss", "val"],
        ["_step", "_timestamp", "loss"],
        ["_step", "_timestamp", "loss", "val"],
    ]
    assert run.history(keys="val") == run.history(keys=["_step", "val"])
    assert run.history(keys=["missing"]) == []
    assert [r for r in run.history(keys=["_step"])] == [
        {"_step": s, "_timestamp": T0 / 1e6 if s in (1, 3) else (T0 + s * 1000) / 1e6} for s in range(4)
    ]


def test_history_step_range(store, api):
    store.write_rows("r1", rows(100))
    run = api.run("r1")
    assert [r["_step"] for r in run.history(min_step=10, max_step=15)] == [10, 11, 12, 13, 14]
    assert [r["_step"] for r in run.history(min_step=97)] == [97, 98, 99]
    assert [r["_step"] for r in run.history(max_step=2)] == [0, 1]
    assert [r["_step"] for r in run.history(keys=["acc"], min_step=50, max_step=52)] == [50, 51]
    assert run.history(min_step=200) == []


def test_history_samples(store, api):
    store.write_rows("r1", rows(101))
    sampled = api.run("r1").history(samples=5)  # 5 buckets 20 steps wide: the last of each, with min and max
    assert [r["_step"] for r in sampled] == [19, 39, 59, 79, 100]
    assert sampled[0] == {
        "_step": 19,
        "loss": 19.0,
        "loss:min": 0.0,
        "loss:max": 19.0,
        "acc": 19.1,
        "acc:min": 0.1,
        "acc:max": 19.1,
    }


def test_history_of_one_run_only(store, api):
    store.write_rows("r1", rows(3))
    store.write_rows("r2", rows(5))
    assert len(api.run("r1").history()) == 3
    assert api.run("r2").keys() == ["acc", "loss"]


def test_payloads_only_when_present(store, api):
    store.write_rows("r1", [Row(0, T0, {"a": 1}), Row(1, T0, {"a": 2}, [b"\x00img"])])
    hist = api.run("r1").history()
    assert "_payloads" not in hist[0]
    assert hist[1]["_payloads"] == [b"\x00img"]
    assert "_payloads" not in api.run("r1").history(keys=["a"])[1]
    assert api.run("r1").history(keys=["_payloads"]) == [
        {"_step": 1, "_timestamp": T0 / 1e6, "_payloads": [b"\x00img"]}
    ]


def test_pandas_missing_gives_install_hint(store, api, monkeypatch):
    store.write_rows("r1", rows(2))
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        api.run("r1").history(pandas=True)


def test_pandas_dataframe(store, api):
    pd = pytest.importorskip("pandas")
    store.write_rows("r1", rows(5))
    df = api.run("r1").history(keys=["loss"], pandas=True)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["_step", "_timestamp", "loss"]
    assert df["loss"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_keys_sorted(store, api):
    store.write_rows("r1", rows(2, keys=("z", "a", "m/x")))
    assert api.run("r1").keys() == ["a", "m/x", "z"]


# -- scan_history ----------------------------------------------------------------------------------


def test_scan_history_pages_over_10000_rows(store, api):
    for start in range(0, 10_000, 1000):
        store.write_rows("r1", rows(1000, start=start))
    run = api.run("r1")
    pages = []
    api.conn.set_trace_callback(lambda sql: pages.append(sql) if "FROM history WHERE" in sql else None)
    scanned = list(run.scan_history(page_size=1000))
    api.conn.set_trace_callback(None)
    assert [r["_step"] for r in scanned] == list(range(10_000))
    assert scanned == run.history()
    # one read of the row table per page, each bounded by the page's 1,000 steps
    assert [p.split("step >= ")[1].split(" ORDER")[0] for p in pages] == [
        f"{lo} AND step <= {lo + 999}" for lo in range(0, 10_000, 1000)
    ]


def test_scan_history_odd_page_size_range_and_keys(store, api):
    store.write_rows("r1", rows(10_000))
    run = api.run("r1")
    got = list(run.scan_history(keys=["acc"], min_step=123, max_step=9_876, page_size=333))
    assert [r["_step"] for r in got] == list(range(123, 9_876))
    assert got == run.history(keys=["acc"], min_step=123, max_step=9_876)
    with pytest.raises(ValueError, match="page_size"):
        next(run.scan_history(page_size=0))


def test_scan_history_sees_rows_written_during_the_scan(store, api):
    store.write_rows("r1", rows(10))
    scan = api.run("r1").scan_history(page_size=5)
    first = [next(scan)["_step"] for _ in range(5)]
    store.write_rows("r1", rows(5, start=10))
    assert first + [r["_step"] for r in scan] == list(range(15))


# -- live reads --------------------------------------------------------------------------------------


def test_reader_sees_committed_rows_while_writer_is_open(store, api):
    store.upsert_run("r1", project="p")
    run = api.run("r1")
    assert run.history() == []
    store.write_rows("r1", rows(5))
    assert len(run.history()) == 5
    store.write_rows("r1", rows(5, start=5))
    store.append_console("r1", [(T0, "stdout", "live")])
    assert len(run.history()) == 10
    assert run.console() == "live\n"


def test_reader_is_not_blocked_by_an_open_write_transaction(store, api):
    store.write_rows("r1", rows(3))
    run = api.run("r1")
    conn = store._conn
    conn.execute("BEGIN IMMEDIATE")  # the writer is mid-transaction, holding the write lock
    try:
        conn.execute("DELETE FROM history")
        assert len(run.history()) == 3  # readers see the last commit and do not wait
    finally:
        conn.execute("ROLLBACK")
    assert len(run.history()) == 3


def test_new_run_visible_to_open_api(store, api):
    assert api.runs() == []
    store.upsert_run("r1", project="p")
    assert [r.id for r in api.runs()] == ["r1"]


# -- console ---------------------------------------------------------------------------------------


def test_console_text_and_lines(store, api):
    store.append_console("r1", [(T0, "stdout", "epoch 1\n"), (T0 + 1_000_000, "stderr", "warning: x")])
    store.append_console("r1", [(T0 + 2_000_000, "stdout", "epoch 2")])
    run = api.run("r1")
    assert run.console() == "epoch 1\nwarning: x\nepoch 2\n"
    lines = run.console_lines()
    assert [(l.stream, l.text) for l in lines] == [
        ("stdout", "epoch 1"),
        ("stderr", "warning: x"),
        ("stdout", "epoch 2"),
    ]
    assert lines[1].time == T0 / 1e6 + 1
    assert [l.text for l in run.console_lines("stderr")] == ["warning: x"]


# -- display -----------------------------------------------------------------------------------------


@pytest.fixture
def shown(store, api):
    store.upsert_run("r1", project="p", name="first", tags=["a"], created_at=1.0)
    store.upsert_run("r2", project="p", created_at=2.0)
    store.write_rows("r1", [Row(0, T0, {"loss": 0.5, "acc": 0.25}), Row(1, T0 + 1, {"loss": 0.1 + 0.2})])
    store.apply("r1", summary={"loss": 0.3, "best": {"acc": 0.25}})
    store.apply("r1", final_state=("finished", 0))
    return api


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_print_runs_json(shown):
    out = io.StringIO()
    display.print_runs(shown.runs(), "json", file=out)
    doc = json.loads(out.getvalue())
    assert [r["id"] for r in doc] == ["r2", "r1"]
    assert doc[1]["tags"] == ["a"] and doc[1]["state"] == "finished" and doc[1]["exit_code"] == 0


def test_print_runs_csv(shown):
    out = io.StringIO()
    display.print_runs(shown.runs(), "csv", file=out)
    got = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["id"] for r in got] == ["r2", "r1"]
    assert got[1]["name"] == "first" and got[1]["history_rows"] == "2" and got[0]["name"] == ""


def test_print_runs_table_plain_and_rich(shown):
    out = io.StringIO()
    display.print_runs(shown.runs(), "table", file=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["id", "project", "name", "state", "created", "runtime", "rows"]
    assert lines[2].split()[:4] == ["r1", "p", "first", "finished"]
    assert "\x1b" not in out.getvalue()
    tty = Tty()
    display.print_runs(shown.runs(), "table", file=tty)
    assert "r1" in tty.getvalue() and "━" in tty.getvalue()  # rich's box drawing


def test_print_history_json(shown):
    out = io.StringIO()
    display.print_history(shown.run("r1").history(), None, "json", file=out)
    doc = json.loads(out.getvalue())
    assert doc == [
        {"_step": 0, "_timestamp": T0 / 1e6, "loss": 0.5, "acc": 0.25},
        {"_step": 1, "_timestamp": (T0 + 1) / 1e6, "loss": 0.1 + 0.2},
    ]


def test_print_history_csv_reads_back(shown):
    out = io.StringIO()
    display.print_history(shown.run("r1").history(), ["loss", "acc"], "csv", file=out)
    got = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(got[0]) == ["_step", "_timestamp", "loss", "acc"]
    assert [float(r["loss"]) for r in got] == [0.5, 0.1 + 0.2]  # floats round-trip exactly
    assert got[1]["acc"] == ""


def test_print_history_table(shown):
    out = io.StringIO()
    display.print_history(shown.run("r1").history(), None, "table", file=out)
    assert out.getvalue().splitlines() == [
        "_step  loss   acc",
        "    0   0.5  0.25",
        "    1   0.3",
    ]
    tty = Tty()
    display.print_history(shown.run("r1").history(), ["loss"], "table", file=tty)
    assert "0.5" in tty.getvalue() and "acc" not in tty.getvalue()


def test_print_summary_all_formats(shown):
    run = shown.run("r1")
    out = io.StringIO()
    display.print_summary(run, "json", file=out)
    assert json.loads(out.getvalue()) == {"loss": 0.3, "best": {"acc": 0.25}}
    out = io.StringIO()
    display.print_summary(run, "csv", file=out)
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [["key", "value"], ["best.acc", "0.25"], ["loss", "0.3"]]
    out = io.StringIO()
    display.print_summary(run, "table", file=out)
    assert out.getvalue().splitlines() == ["key       value", "best.acc   0.25", "loss        0.3"]


def test_display_unknown_format(shown):
    with pytest.raises(ValueError, match="unknown output format 'xml': use one of table, json, csv"):
        display.print_runs(shown.runs(), "xml", file=io.StringIO())


def test_display_bytes_in_json_and_csv(store, api):
    store.write_rows("r1", [Row(0, T0, {"a": 1}, [b"\x01\x02"])])
    hist = api.run("r1").history()
    out = io.StringIO()
    display.print_history(hist, ["a", "_payloads"], "json", file=out)
    assert json.loads(out.getvalue())[0]["_payloads"] == ["AQI="]


def test_history_keys_with_any_names_and_values(store, api):
    values = {"k1": 1, "k0": [1, 2], "a b/c.d": {"x": None}, "ключ": "v", "_x": True, "": 0.5}
    store.write_rows("r1", [Row(0, T0, values)])
    run = api.run("r1")
    for key, value in values.items():
        assert run.history(keys=[key]) == [{"_step": 0, "_timestamp": T0 / 1e6, key: value}]
    assert run.history(keys=["k0", "k1"])[0] == {"_step": 0, "_timestamp": T0 / 1e6, "k0": [1, 2], "k1": 1}
