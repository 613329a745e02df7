"""The local store's writer: schema, runs, history rows (insert, replay, amend), payloads,
console, the one-transaction ``apply`` and its WAL cursor, and the errors it gives."""

import math
import os
import sqlite3

import pytest

import trackside

from trackside.store import DB_NAME, SCHEMA_VERSION, SchemaVersionError, Store, StoreError

from conftest import T0, Row, stored_run_ids


def rows(n, start=0, keys=("loss", "acc")):  # a microsecond apart, unlike conftest.rows
    return [Row(s, T0 + s, {k: s + i / 10 for i, k in enumerate(keys)}) for s in range(start, start + n)]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    yield s
    s.close()


def history(store, run_id):
    """The stored rows of a run as {step: (time_us, values)}, rebuilt from the series and the
    row table, read straight from SQLite."""
    import msgspec

    from trackside.store.sampling import STEP_MAX, STEP_MIN, SeriesReader, build_rows

    rid = store._rids[run_id]
    con = sqlite3.connect(store.path)
    try:

        def rest(first, last):
            sql = "SELECT step, time_us, data FROM history WHERE rid = ? AND step >= ? AND step <= ? ORDER BY step"
            return con.execute(sql, (rid, first, last)).fetchall()

        rows, _ = build_rows(SeriesReader(con), rid, None, STEP_MIN, STEP_MAX, None, rest, msgspec.msgpack.decode)
        return {r.pop("_step"): (round(r.pop("_timestamp") * 1e6), r) for r in rows}
    finally:
        con.close()


def run_row(store, run_id, *columns):
    con = sqlite3.connect(store.path)
    try:
        return con.execute(f"SELECT {', '.join(columns)} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        con.close()


# -- opening ---------------------------------------------------------------------------------------


def test_store_creates_database_in_wal_mode(tmp_path):
    root = tmp_path / "deep" / "trackside"
    with Store(root) as s:
        assert s.path == str(root / DB_NAME)
        con = sqlite3.connect(s.path)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        con.close()


def test_store_reopens_with_data(tmp_path):
    with Store(tmp_path) as s:
        s.upsert_run("r1", project="p")
        s.write_rows("r1", rows(10))
        s.append_console("r1", [(T0, "stdout", "a")])
    with Store(tmp_path) as s:
        assert stored_run_ids(s) == {"r1"}
        assert len(history(s, "r1")) == 10
        s.append_console("r1", [(T0, "stdout", "b")])  # seq continues after reopening
        con = sqlite3.connect(s.path)
        assert con.execute("SELECT seq, text FROM console ORDER BY seq").fetchall() == [(0, "a"), (1, "b")]
        con.close()


def test_newer_schema_is_refused(tmp_path):
    Store(tmp_path).close()
    con = sqlite3.connect(tmp_path / DB_NAME)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(SchemaVersionError, match=r"newer trackside.*upgrade"):
        Store(tmp_path)


def test_foreign_sqlite_database_is_refused(tmp_path):
    con = sqlite3.connect(tmp_path / DB_NAME)
    con.execute("CREATE TABLE t (x)")
    con.close()
    with pytest.raises(StoreError, match="not a trackside store"):
        Store(tmp_path)


def test_file_that_is_not_sqlite_is_refused(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a trackside store"):
        Store(tmp_path)


def test_closed_store_raises_and_close_is_idempotent(tmp_path):
    s = Store(tmp_path)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.write_rows("r1", rows(1))


# -- runs ------------------------------------------------------------------------------------------


def test_upsert_run_creates_run(store):
    store.upsert_run(
        "r1",
        project="p",
        name="n",
        group="g",
        job_type="train",
        tags=["a", "b"],
        config={"lr": 0.1},
        metadata={"host": "h"},
        created_at=123.0,
    )
    got = run_row(
        store,
        "r1",
        "project",
        "name",
        "group_name",
        "job_type",
        "tags",
        "config",
        "metadata",
        "state",
        "created_at",
        "root_dir",
    )
    assert got == ("p", "n", "g", "train", '["a","b"]', '{"lr":0.1}', '{"host":"h"}', "running", 123.0, store.root)


def test_upsert_existing_run_resumes_and_merges(store):
    store.upsert_run("r1", project="p", name="n", tags=["a"], config={"lr": 0.1, "bs": 8}, metadata={"x": 1})
    store.apply("r1", final_state=("crashed", 1))
    store.upsert_run("r1", project="p2", config={"lr": 0.2}, metadata={"y": 2})
    name, tags, config, metadata, state, exit_code, finished = run_row(
        store, "r1", "name", "tags", "config", "metadata", "state", "exit_code", "finished_at"
    )
    assert (name, tags) == ("n", '["a"]')  # None and empty tags keep the old values
    assert config == '{"lr":0.2,"bs":8}'
    assert metadata == '{"x":1,"y":2}'
    assert (state, exit_code, finished) == ("running", None, None)


def test_update_config_merges_and_set_summary_replaces(store):
    store.upsert_run("r1", project="p", config={"a": 1})
    store.apply("r1", config={"b": 2})
    store.apply("r1", config={"a": 3})
    store.apply("r1", summary={"loss": 1.0, "old": 1})
    store.apply("r1", summary={"loss": float("nan")})
    store.apply("r1", metadata={"git": "abc"})
    store.apply("r1", metadata={"host": "h"})
    config, summary, metadata = run_row(store, "r1", "config", "summary", "metadata")
    assert config == '{"a":3,"b":2}'
    assert summary == '{"loss":NaN}'  # NaN is kept, not turned into null
    assert metadata == '{"git":"abc","host":"h"}'


def test_finish_run_sets_state_exit_code_and_time(store):
    store.upsert_run("r1", project="p")
    store.apply("r1", final_state=("failed", 3))
    state, exit_code, finished = run_row(store, "r1", "state", "exit_code", "finished_at")
    assert (state, exit_code) == ("failed", 3)
    assert finished is not None


def test_invalid_state_is_refused(store):
    with pytest.raises(ValueError, match="invalid run state 'done'"):
        store.upsert_run("r1", project="p", state="done")
    with pytest.raises(ValueError, match="invalid final state 'running'"):
        store.apply("r1", final_state=("running", 0))


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", "a\0b", "x" * 129])
def test_run_id_that_could_escape_the_run_folder_is_refused(store, bad):
    with pytest.raises(ValueError, match="invalid run id"):
        store.upsert_run(bad, project="p")
    with pytest.raises(ValueError, match="invalid run id"):
        store.write_rows(bad, rows(1))


def test_unjsonable_config_is_refused_with_what(store):
    with pytest.raises(TypeError, match="config is not JSON-serializable"):
        store.upsert_run("r1", project="p", config={"f": object()})
    assert "r1" not in stored_run_ids(store)


def test_data_for_an_unknown_run_creates_a_placeholder(store):
    store.write_rows("r9", rows(3))
    assert run_row(store, "r9", "project", "state") == ("uncategorized", "running")
    store.upsert_run("r9", project="real", name="named")
    assert run_row(store, "r9", "project", "name") == ("real", "named")
    assert len(history(store, "r9")) == 3


# -- history ---------------------------------------------------------------------------------------


def test_rows_round_trip(store):
    store.upsert_run("r1", project="p")
    values = {"f": 1.5, "i": -7, "s": "text", "b": True, "n": None, "nan": float("nan"), "l": [1, 2]}
    assert store.write_rows("r1", [Row(0, T0, values)]) == 0
    t, got = history(store, "r1")[0]
    assert t == T0
    assert math.isnan(got.pop("nan"))
    values.pop("nan")
    assert got == values


def test_replayed_rows_merge_without_duplicates(store):
    batch = rows(100)
    assert store.write_rows("r1", batch) == 0
    assert store.write_rows("r1", batch) == 100  # every row merged into its stored step
    got = history(store, "r1")
    assert len(got) == 100
    assert got[5] == (T0 + 5, {"loss": 5.0, "acc": 5.1})
    assert run_row(store, "r1", "history_rows", "last_step") == (100, 99)


def test_replay_merges_values_new_key_added_same_key_new_wins(store):
    store.write_rows("r1", [Row(3, T0, {"a": 1, "b": 2})])
    store.write_rows("r1", [Row(3, T0 + 50, {"b": 20, "c": 30})])
    assert history(store, "r1")[3] == (T0, {"a": 1, "b": 20, "c": 30})  # keeps its first timestamp


def test_same_step_twice_in_one_batch_is_one_row(store):
    assert store.write_rows("r1", [Row(1, T0, {"a": 1}), Row(1, T0 + 1, {"b": 2})]) == 1
    assert history(store, "r1") == {1: (T0, {"a": 1, "b": 2})}
    assert run_row(store, "r1", "history_rows") == (1,)


def test_amend_row_merges_into_existing_row(store):
    store.write_rows("r1", rows(5))
    assert store.write_rows("r1", [Row(2, T0 + 99, {"loss": -1.0, "late": 7}, amend=True)]) == 1
    assert history(store, "r1")[2] == (T0 + 2, {"loss": -1.0, "acc": 2.1, "late": 7})


def test_amend_row_for_missing_step_inserts(store):
    store.write_rows("r1", rows(2))
    assert store.write_rows("r1", [Row(10, T0, {"x": 1}, amend=True)]) == 0
    assert history(store, "r1")[10] == (T0, {"x": 1})
    assert store.run_cursor("r1") == (0, 11)


def test_payloads_are_kept_once_each(store):
    store.write_rows("r1", [Row(0, T0, {"img": 1}, [b"p1", b"p2"])])
    store.write_rows("r1", [Row(0, T0, {"img": 1}, [b"p1", b"p2"])])  # a replay adds nothing
    store.write_rows("r1", [Row(0, T0, {}, [b"p3"], amend=True)])
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT idx, data FROM history_payloads ORDER BY idx").fetchall() == [
        (0, b"p1"),
        (1, b"p2"),
        (2, b"p3"),
    ]
    con.close()


def test_history_keys_are_recorded(store):
    store.write_rows("r1", rows(3, keys=("a", "b")))
    store.write_rows("r1", rows(3, start=3, keys=("b", "c")))
    con = sqlite3.connect(store.path)
    assert [k for (k,) in con.execute("SELECT key FROM history_keys ORDER BY key")] == ["a", "b", "c"]
    con.close()


def test_unencodable_value_is_refused_naming_step_and_key(store):
    store.write_rows("r1", rows(2))
    with pytest.raises(TypeError, match=r"step 5: value of 'bad' \(object\)"):
        store.write_rows("r1", [Row(4, T0, {"ok": 1}), Row(5, T0, {"bad": object()})])
    assert sorted(history(store, "r1")) == [0, 1]  # nothing of the failed call is stored


# -- console ---------------------------------------------------------------------------------------


def test_console_lines_append_in_order(store):
    store.append_console("r1", [(T0, "stdout", "one\n"), (T0 + 1, "stderr", "two")])
    store.append_console("r1", [(T0 + 2, "stdout", "three")])
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT seq, time_us, stream, text FROM console ORDER BY seq").fetchall() == [
        (0, T0, "stdout", "one"),
        (1, T0 + 1, "stderr", "two"),
        (2, T0 + 2, "stdout", "three"),
    ]
    con.close()


# -- apply and the WAL cursor ------------------------------------------------------------------------


def test_apply_stores_everything_with_the_cursor(store):
    store.upsert_run("r1", project="p")
    merged = store.apply(
        "r1",
        rows=rows(10),
        config={"lr": 1},
        metadata={"m": 1},
        console=[(T0, "stdout", "hi")],
        summary={"loss": 9.0},
        cursor=4096,
    )
    assert merged == 0
    assert store.run_cursor("r1") == (4096, 10)
    assert run_row(store, "r1", "config", "metadata", "summary") == ('{"lr":1}', '{"m":1}', '{"loss":9.0}')
    store.apply("r1", cursor=None, final_state=("finished", 0))
    assert store.run_cursor("r1") == (4096, 10)  # None keeps the cursor
    assert run_row(store, "r1", "state", "exit_code") == ("finished", 0)


def test_apply_is_one_transaction(store):
    store.upsert_run("r1", project="p", config={"a": 1})
    store.apply("r1", rows=rows(2), cursor=10)
    with pytest.raises(TypeError):
        store.apply(
            "r1", rows=[Row(5, T0, {"bad": object()})], config={"a": 2}, console=[(T0, "stdout", "x")], cursor=20
        )
    assert store.run_cursor("r1") == (10, 2)
    assert run_row(store, "r1", "config") == ('{"a":1}',)
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT count(*) FROM console").fetchone() == (0,)
    con.close()
    store.apply("r1", console=[(T0, "stdout", "y")])  # caches were reset: seq starts at 0 again
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT seq, text FROM console").fetchall() == [(0, "y")]
    con.close()


def test_failed_sql_rolls_back_and_keeps_cursor(store, monkeypatch):
    store.apply("r1", rows=rows(3), cursor=5)

    def boom(*a):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_append_console", boom)
    with pytest.raises(StoreError, match="disk I/O error; nothing of this call is stored"):
        store.apply("r1", rows=rows(3, start=3), console=[(T0, "stdout", "x")], cursor=9)
    monkeypatch.undo()
    assert store.run_cursor("r1") == (5, 3)
    assert sorted(history(store, "r1")) == [0, 1, 2]


def test_full_disk_is_a_clear_error_and_the_store_goes_on(store):
    store.write_rows("r1", rows(10))
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow: a full disk
    big = [Row(s, T0, {"blob": "x" * 4000}) for s in range(10, 60)]
    with pytest.raises(StoreError, match="database or disk is full"):
        store.apply("r1", rows=big, cursor=99)
    assert store.run_cursor("r1") == (0, 10)
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    store.apply("r1", rows=big, cursor=99)  # space again: the same call succeeds
    assert store.run_cursor("r1") == (99, 60)


def test_run_cursor_of_unknown_run(store):
    assert store.run_cursor("nope") == (0, 0)


def test_database_files_stay_in_root(tmp_path):
    with Store(tmp_path) as s:
        s.write_rows("r1", rows(5))
    assert sorted(os.listdir(tmp_path)) == [DB_NAME]  # the last close checkpoints and removes -wal/-shm


def test_a_guard_that_refuses_a_runs_write_stores_nothing_of_it(tmp_path):
    """``guard_run``: the check runs first in each write transaction of its run; when it raises,
    nothing of the call is stored and the caller gets the exception. Other runs are not guarded."""

    class Refused(Exception):
        pass

    store = Store(tmp_path)
    store.apply("mine", rows=[Row(0, T0, {"a": 1.0})], console=[(T0, "stdout", "kept")], cursor=1)
    seen = []

    def check(conn):
        seen.append(conn.execute("SELECT wal_cursor FROM runs WHERE run_id = ?", ("mine",)).fetchone()[0])
        raise Refused("another server owns it")

    store.guard_run("mine", check)
    with pytest.raises(Refused):
        store.apply("mine", rows=[Row(1, T0, {"a": 2.0})], console=[(T0, "stdout", "lost")], cursor=2)
    with pytest.raises(Refused):
        store.write_rows("mine", [Row(2, T0, {"a": 3.0})])
    store.apply("other", rows=[Row(0, T0, {"b": 1.0})])  # not guarded
    assert seen == [1, 1]
    assert store.run_cursor("mine")[0] == 1
    store.guard_run("mine", None)
    store.apply("mine", rows=[Row(1, T0, {"a": 2.0})], console=[(T0, "stdout", "then")], cursor=2)
    store.close()
    run = trackside.Api(str(tmp_path)).run("mine")
    assert [r["a"] for r in run.history()] == [1.0, 2.0]
    assert run.console() == "kept\nthen\n"
