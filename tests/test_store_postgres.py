"""The store on both backends: every test here runs on SQLite and on a real PostgreSQL (the
``postgres_url`` fixture of conftest.py: a private cluster, a fresh database per test).
Written with ``Store(root, db=...)``, read back with ``Api(root, db=...)``: history, amended
steps, summary and config, console, media, system metrics, artifacts and tables, the WAL
cursor, reopening, and readers while the writer writes."""

import math
import os
import subprocess
import sys
import threading
import time

import pytest

from trackside.api import Api
from trackside.store import DB_NAME, SCHEMA_VERSION, SchemaVersionError, Store, StoreError, open_reader

from conftest import T0, Row, rows, stored_run_ids


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    """None (the SQLite file) or the URL of an empty PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def root(tmp_path):
    return tmp_path / "trackside"


@pytest.fixture
def store(root, db):
    s = Store(root, db=db)
    yield s
    s.close()


@pytest.fixture
def api(store, root, db):
    a = Api(root, db=db)
    yield a
    a.close()


def query(store, sql, params=()):
    """Rows of ``sql`` (the common SQL form) read on a connection of its own."""
    reader = open_reader(store.path, db=store.db)
    try:
        return [tuple(r) for r in reader.conn.execute(sql, params).fetchall()]
    finally:
        reader.close()


# -- opening ---------------------------------------------------------------------------------------


def test_new_store_has_every_table_and_the_schema_version(store):
    reader = open_reader(store.path, db=store.db)
    try:
        assert reader.schema_version() == SCHEMA_VERSION
        for table in (
            "runs",
            "history",
            "history_payloads",
            "history_keys",
            "console",
            "media",
            "system_metrics",
            "artifacts",
            "artifact_aliases",
            "artifact_logs",
        ):
            assert reader.has_table(table), table
    finally:
        reader.close()


def test_postgres_store_keeps_no_database_file(root, postgres_url):
    with Store(root, db=postgres_url) as s:
        s.write_rows("r1", rows(3))
    assert not os.path.exists(root / DB_NAME)


def test_postgres_columns_hold_64_bit_integers_doubles_and_bytes(root, postgres_url):
    import psycopg

    Store(root, db=postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        types = dict(
            conn.execute(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema()"
            ).fetchall()
        )
        identity = conn.execute(
            "SELECT is_identity FROM information_schema.columns WHERE table_name = 'runs' AND column_name = 'rid'"
        ).fetchone()[0]
    assert types["history.step"] == types["history.time_us"] == types["runs.wal_cursor"] == "bigint"
    assert types["history.data"] == types["system_metrics.data"] == "bytea"
    assert types["runs.created_at"] == "double precision"
    assert identity == "YES"


def test_reopening_changes_nothing_and_keeps_every_run(root, db):
    for i in range(3):
        with Store(root, db=db) as s:
            s.upsert_run(f"r{i}", project="p")
            s.write_rows(f"r{i}", rows(5))
            s.append_console("r0", [(T0 + i, "stdout", f"line {i}")])
            assert stored_run_ids(s) >= {f"r{j}" for j in range(i + 1)}
    with Api(root, db=db) as a:
        assert sorted(r.id for r in a.runs()) == ["r0", "r1", "r2"]
        assert len({r._rid for r in a.runs()}) == 3
        assert a.run("r0").console() == "line 0\nline 1\nline 2\n"  # seq continues after reopening
        assert all(len(r.history()) == 5 for r in a.runs())


def _set_version(root, db, version, *statements):
    """Run ``statements`` on the store's database, then set its schema version."""
    if db is None:
        import sqlite3

        con = sqlite3.connect(root / DB_NAME)
        for stmt in statements:
            con.execute(stmt)
        con.execute(f"PRAGMA user_version = {version}")
        con.commit()
        con.close()
    else:
        import psycopg

        with psycopg.connect(db) as conn:
            for stmt in statements:
                conn.execute(stmt)
            conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(version),))


def test_store_of_schema_1_is_migrated_once(root, db):
    import trackside

    with Store(root, db=db) as s:
        s.write_rows("r1", [Row(0, T0, {"loss": 1.0}), Row(1, T0, {"h": trackside.Histogram([1, 2]).to_json()})])
    # the store as trackside wrote it before the media index and system metrics existed
    _set_version(root, db, 1, "DROP TABLE media", "DROP TABLE system_metrics")
    for _ in range(2):  # the second opening finds nothing to do
        with Store(root, db=db) as s:
            s.write_system_metrics("r1", [(T0, "h", {"system/cpu": 1.0})])
        reader = open_reader(str(root / DB_NAME), db=db)
        assert reader.schema_version() == SCHEMA_VERSION
        reader.close()
        with Api(root, db=db) as a:
            assert [(f["key"], f["step"], f["type"]) for f in a.run("r1").media_files()] == [("h", 1, "histogram")]
            assert len(a.run("r1").system_metrics()) == 1


def test_newer_schema_is_refused_by_writer_and_reader(root, db):
    Store(root, db=db).close()
    _set_version(root, db, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError, match=r"newer trackside.*upgrade"):
        Store(root, db=db)
    with pytest.raises(SchemaVersionError, match="newer trackside"):
        Api(root, db=db)


def test_postgres_database_holding_other_tables_is_refused(root, postgres_url):
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE orders (id int)")
    with pytest.raises(StoreError, match=r"not a trackside store \(it holds other tables\); give trackside a database"):
        Store(root, db=postgres_url)


def test_api_on_a_postgres_database_without_a_store_says_so(root, postgres_url):
    with pytest.raises(StoreError, match="no trackside store in postgresql://.*nothing has been stored there yet"):
        Api(root, db=postgres_url)


def test_unreachable_postgres_is_a_clear_error_that_hides_the_password(root):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    url = f"postgresql://me:s3cret@127.0.0.1:{port}/trackside"
    for open_it in (lambda: Store(root, db=url), lambda: Api(root, db=url)):
        with pytest.raises(StoreError, match=r"cannot connect to the store postgresql://me:\*\*\*@127") as e:
            open_it()
        assert "s3cret" not in str(e.value)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://me:s3cret@db.lan:5432/runs", "postgresql://me:***@db.lan:5432/runs"),
        (
            "postgresql://db.lan/runs?sslmode=require&password=s3cret",
            "postgresql://db.lan/runs?sslmode=require&password=***",
        ),
        ("postgresql:///runs?host=/run/pg", "postgresql:///runs?host=/run/pg"),
    ],
)
def test_messages_show_the_database_url_without_its_password(url, shown):
    from trackside.store.dialect import describe

    assert describe(url) == shown


def test_unsupported_database_url_is_refused(root):
    with pytest.raises(ValueError, match="unsupported store database 'mysql://x'"):
        Store(root, db="mysql://x")


def test_psycopg_is_imported_only_for_a_postgres_url_and_its_absence_names_the_extra(tmp_path):
    code = (
        "import sys\n"
        "import trackside, trackside.api, trackside.store\n"
        "assert 'psycopg' not in sys.modules, 'import trackside imported psycopg'\n"
        "sys.modules['psycopg'] = None  # as if it were not installed\n"
        "from trackside.store import Store\n"
        "for open_it in (lambda: Store(sys.argv[1], db='postgresql://localhost/x'),\n"
        "                lambda: trackside.Api(sys.argv[1], db='postgresql://localhost/x')):\n"
        "    try:\n"
        "        open_it()\n"
        "    except ImportError as e:\n"
        "        assert \"pip install 'trackside[server]'\" in str(e), e\n"
        "    else:\n"
        "        raise AssertionError('no ImportError')\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


# -- history ---------------------------------------------------------------------------------------


def test_history_round_trip_with_64_bit_steps_and_times(store, api):
    values = {"f": 1.5, "i": -(2**62), "s": "text", "b": True, "n": None, "nan": float("nan"), "l": [1, 2]}
    big = 2**53
    store.write_rows("r1", [Row(0, T0, values), Row(big, 2**62, {"f": 2.0})])
    got = api.run("r1").history()
    assert [r["_step"] for r in got] == [0, big]
    assert got[1]["_timestamp"] == 2**62 / 1e6
    assert math.isnan(got[0].pop("nan"))
    assert {k: v for k, v in got[0].items() if not k.startswith("_")} == {k: v for k, v in values.items() if k != "nan"}
    run = api.run("r1")
    assert (run.history_rows, run.last_step) == (2, big)


def test_history_keys_ranges_pages_and_samples(store, api):
    for start in range(0, 3000, 1000):
        store.write_rows("r1", rows(1000, start=start, keys=("loss", "acc", "lr")))
    run = api.run("r1")
    assert run.keys() == ["acc", "loss", "lr"]
    assert [r["_step"] for r in run.scan_history(page_size=333)] == list(range(3000))
    assert run.history(keys=["acc"], min_step=10, max_step=13) == [
        {"_step": s, "_timestamp": (T0 + s * 1000) / 1e6, "acc": s + 0.1} for s in (10, 11, 12)
    ]
    assert [r["_step"] for r in run.history(keys="loss", samples=3)] == [999, 1999, 2999]


def test_amended_step_merges_values_and_keeps_its_first_timestamp(store, api):
    store.write_rows("r1", rows(5))
    assert store.write_rows("r1", [Row(2, T0 + 99_000, {"loss": -1.0, "late": 7}, amend=True)]) == 1
    # the same step twice in one batch, already stored: the earliest timestamp stays
    assert store.write_rows("r1", [Row(3, T0, {"a": 1}), Row(3, T0 + 1, {"a": 2, "b": 3}), Row(9, T0, {"x": 1})]) == 2
    hist = {r["_step"]: r for r in api.run("r1").history()}
    assert hist[2] == {"_step": 2, "_timestamp": (T0 + 2000) / 1e6, "loss": -1.0, "acc": 2.1, "late": 7}
    assert hist[3] == {"_step": 3, "_timestamp": T0 / 1e6, "loss": 3.0, "acc": 3.1, "a": 2, "b": 3}
    run = api.run("r1")
    assert (run.history_rows, run.last_step) == (6, 9)
    assert run.keys() == ["a", "acc", "b", "late", "loss", "x"]


def test_replayed_rows_merge_without_duplicates(store, api):
    batch = rows(1500)  # more steps than one look-up of stored rows takes
    assert store.write_rows("r1", batch) == 0
    assert store.write_rows("r1", batch) == 1500
    assert store.write_rows("r1", batch[700:713]) == 13
    got = api.run("r1").history()
    assert len(got) == 1500 and got[5] == {"_step": 5, "_timestamp": (T0 + 5000) / 1e6, "loss": 5.0, "acc": 5.1}
    assert api.run("r1").history_rows == 1500


def test_payloads_are_kept_once_each(store, api):
    store.write_rows("r1", [Row(0, T0, {"img": 1}, [b"p1", b"\x00p2"])])
    store.write_rows("r1", [Row(0, T0, {"img": 1}, [b"p1", b"\x00p2"])])  # a replay adds nothing
    store.write_rows("r1", [Row(0, T0, {}, [b"p3"], amend=True)])
    assert api.run("r1").history()[0]["_payloads"] == [b"p1", b"\x00p2", b"p3"]


def test_unencodable_value_is_refused_and_nothing_is_stored(store, api):
    store.write_rows("r1", rows(2))
    with pytest.raises(TypeError, match=r"step 5: value of 'bad' \(object\)"):
        store.write_rows("r1", [Row(4, T0, {"ok": 1}), Row(5, T0, {"bad": object()})])
    assert [r["_step"] for r in api.run("r1").history()] == [0, 1]


# -- runs, summary, config, console ----------------------------------------------------------------


def test_run_attributes_summary_config_and_metadata(store, api, root):
    store.upsert_run(
        "abc123",
        project="p",
        name="n",
        group="g",
        job_type="train",
        tags=["x", "y"],
        config={"lr": 0.1, "bs": 8},
        metadata={"host": "h"},
        created_at=100.5,
    )
    store.apply("abc123", config={"lr": 0.2})
    store.apply("abc123", metadata={"git": "abc"})
    store.apply("abc123", summary={"loss": 0.5, "diverged": float("nan")})
    store.apply("abc123", final_state=("failed", 3))
    r = api.run("abc1")  # a prefix
    assert (r.id, r.project, r.name, r.group, r.job_type, r.tags) == ("abc123", "p", "n", "g", "train", ["x", "y"])
    assert (r.state, r.exit_code, r.created_at) == ("failed", 3, 100.5)
    assert r.finished_at > 100.5
    assert r.dir == str(root / "runs" / "abc123")
    assert r.config == {"lr": 0.2, "bs": 8} and r.metadata == {"host": "h", "git": "abc"}
    assert r.summary["loss"] == 0.5 and math.isnan(r.summary["diverged"])
    store.upsert_run("abc123", project="p2")  # resumed
    r.refresh()
    assert (r.project, r.state, r.exit_code, r.finished_at, r.name) == ("p2", "running", None, None, "n")


def test_runs_newest_first_by_project_and_prefix_lookup(store, api):
    store.upsert_run("old", project="a", created_at=1.0)
    store.upsert_run("new", project="b", created_at=3.0)
    store.upsert_run("nez", project="b", created_at=2.0)
    assert [r.id for r in api.runs()] == ["new", "nez", "old"]
    assert [r.id for r in api.runs("entity/b")] == ["new", "nez"]
    assert api.run("ol").id == "old"
    with pytest.raises(KeyError, match="matches several runs"):
        api.run("ne")
    with pytest.raises(KeyError, match="no run 'zz'.*3 runs"):
        api.run("zz")


def test_data_for_an_unknown_run_creates_a_placeholder(store, api):
    store.write_rows("r9", rows(3))
    assert (api.run("r9").project, api.run("r9").state) == ("uncategorized", "running")


def test_console_lines_in_order(store, api):
    store.append_console("r1", [(T0, "stdout", "epoch 1\n"), (T0 + 1_000_000, "stderr", "warning: x")])
    store.append_console("r1", [(T0 + 2_000_000, "stdout", "epoch 2")])
    run = api.run("r1")
    assert run.console() == "epoch 1\nwarning: x\nepoch 2\n"
    assert [(l.stream, l.text, l.time) for l in run.console_lines("stderr")] == [("stderr", "warning: x", T0 / 1e6 + 1)]


# -- apply and the WAL cursor ----------------------------------------------------------------------


def test_apply_stores_everything_with_the_cursor(store, api):
    store.upsert_run("r1", project="p")
    assert store.run_cursor("r1") == (0, 0)
    store.apply(
        "r1",
        rows=rows(10),
        config={"lr": 1},
        console=[(T0, "stdout", "hi")],
        summary={"loss": 9.0},
        cursor=4096,
        system=[(T0, "h", {"system/cpu": 1.0})],
    )
    assert store.run_cursor("r1") == (4096, 10)
    store.apply("r1", final_state=("finished", 0))
    assert store.run_cursor("r1") == (4096, 10)  # None keeps the cursor
    r = api.run("r1")
    assert (r.config, r.summary, r.state, r.console()) == ({"lr": 1}, {"loss": 9.0}, "finished", "hi\n")
    assert store.run_cursor("nope") == (0, 0)


def test_apply_is_one_transaction(store, api):
    store.upsert_run("r1", project="p", config={"a": 1})
    store.apply("r1", rows=rows(2), cursor=10)
    with pytest.raises(TypeError):
        store.apply(
            "r1", rows=[Row(5, T0, {"bad": object()})], config={"a": 2}, console=[(T0, "stdout", "x")], cursor=20
        )
    assert store.run_cursor("r1") == (10, 2)
    r = api.run("r1")
    assert (r.config, r.console(), len(r.history())) == ({"a": 1}, "", 2)
    store.apply("r1", console=[(T0, "stdout", "y")])  # caches were reset: seq starts at 0 again
    assert api.run("r1").console_lines()[0].text == "y"


def test_failed_sql_is_a_store_error_and_the_store_goes_on(store, api):
    store.apply("r1", rows=rows(3), cursor=5)

    def boom(rid, lines):  # SQL the database refuses, in the middle of a call
        store._conn.execute("INSERT INTO no_such_table VALUES (?)", (1,))

    store._append_console = boom
    with pytest.raises(StoreError, match="no_such_table.*nothing of this call is stored"):
        store.apply("r1", rows=rows(3, start=3), console=[(T0, "stdout", "x")], cursor=9)
    del store._append_console
    assert store.run_cursor("r1") == (5, 3)
    store.apply("r1", rows=rows(3, start=3), console=[(T0, "stdout", "x")], cursor=9)
    assert store.run_cursor("r1") == (9, 6)
    assert len(api.run("r1").history()) == 6


def test_rows_written_from_several_threads(store, api):
    errors = []

    def work(start):
        try:
            store.write_rows("r1", rows(500, start=start))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i * 500,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(api.run("r1").history()) == 2000


# -- media, system metrics, artifacts --------------------------------------------------------------


def test_media_index_and_media_read_back(store, api, root):
    import trackside

    run_dir = str(root / "runs" / "r1")
    page = trackside.Html("<p>hello</p>")
    hist = trackside.Histogram([1, 2, 3])
    store.upsert_run("r1", project="p")
    store.write_rows("r1", [Row(0, T0, {"loss": 1.0}), Row(1, T0, {"page": page.to_json(run_dir)})])
    store.write_rows("r1", [Row(0, T0, {"h": hist.to_json()}, amend=True)])
    run = api.run("r1")
    files = run.media_files()
    assert [(f["key"], f["step"], f["type"]) for f in files] == [("h", 0, "histogram"), ("page", 1, "html-file")]
    assert files[1]["path"].startswith(run_dir) and os.path.isfile(files[1]["path"])
    assert run.media("page", 1) == page
    assert run.media("h") == [(0, hist)]
    assert run.media("loss") == []
    assert run.history(objects=True)[0]["h"] == hist


def test_system_metrics_replace_and_filter(store, api):
    store.write_system_metrics(
        "r1", [(T0, "a", {"system/cpu": 10.0, "system/mem": 1}), (T0, "b", {"system/cpu": 20.0})]
    )
    store.write_system_metrics(
        "r1",
        [
            (T0, "a", {"system/cpu": 11.0, "system/mem": 2}),  # the same window again
            (T0 + 1_000_000, "a", {"system/cpu": 12.0}),
        ],
    )
    run = api.run("r1")
    assert run.system_metrics() == [
        {"_timestamp": T0 / 1e6, "host": "a", "system/cpu": 11.0, "system/mem": 2},
        {"_timestamp": T0 / 1e6, "host": "b", "system/cpu": 20.0},
        {"_timestamp": T0 / 1e6 + 1, "host": "a", "system/cpu": 12.0},
    ]
    assert run.system_metrics(keys="system/mem") == [{"_timestamp": T0 / 1e6, "host": "a", "system/mem": 2}]
    assert [r["system/cpu"] for r in run.system_metrics(host="b")] == [20.0]


def test_artifacts_versions_aliases_and_replays(store, api):
    base = {
        "uid": "u1",
        "name": "n",
        "type": "dataset",
        "digest": "d1",
        "manifest": {"e": {"kind": "object", "obj": 1}},
    }
    assert store.add_artifact("r1", base) == ("n", 0)
    assert store.add_artifact("r1", base) == ("n", 0)  # a replayed event
    assert store.add_artifact("r1", {**base, "uid": "u2"}) == ("n", 0)  # same digest: the same version
    assert store.add_artifact("r1", {**base, "uid": "u3", "digest": "d2", "aliases": ["best"]}) == ("n", 1)
    assert store.add_artifact("r1", {**base, "uid": "u4", "digest": "d3"}) == ("n", 2)
    best = api.artifact("n:best", type="dataset")
    assert (best.version, best.aliases) == ("v1", ["best"])
    assert api.artifact("n").version == "v2" and api.artifact("n:v0").version == "v0"
    with pytest.raises(KeyError, match="has no version 'v9'.*v0 to v2"):
        api.artifact("n:v9")
    with pytest.raises(KeyError, match="no artifact named 'm'"):
        api.artifact("m")
    assert [a.version for a in api.run("r1").logged_artifacts()] == ["v0", "v1", "v2"]


def test_incremental_table_logged_by_a_run_reads_back(store, api, root):
    import trackside
    from trackside.artifacts import table_artifact_name

    run_dir = str(root / "runs" / "r1")
    store.upsert_run("r1", project="p")
    table = trackside.Table(columns=["a", "b"], log_mode="INCREMENTAL")
    for i in range(3):
        table.add_data(i, f"x{i}")
        form = table._write(run_dir, table.data[i:], "incremental-table")  # what run.log stores: the new rows
        manifest = {"k": {"kind": "object", "obj": form, "source": "runs/r1"}}
        store.add_artifact(
            "r1",
            {
                "uid": f"t{i}",
                "name": table_artifact_name("r1", "k"),
                "type": "run_table",
                "digest": f"d{i}",
                "manifest": manifest,
                "run_key": "k",
                "step": i,
                "incremental": True,
            },
        )
    run = api.run("r1")
    assert run.table_keys() == ["k"]
    assert run.table("k").data == [[0, "x0"], [1, "x1"], [2, "x2"]]
    assert run.table("k", 1).data == [[0, "x0"], [1, "x1"]]
    assert [(i.increment, i.step, i.table.data) for i in run.table_increments("k")] == [
        (0, 0, [[0, "x0"]]),
        (1, 1, [[1, "x1"]]),
        (2, 2, [[2, "x2"]]),
    ]


# -- readers while the writer writes ---------------------------------------------------------------


def test_reader_sees_each_commit_while_the_writer_writes(store, api):
    store.upsert_run("r1", project="p")
    run = api.run("r1")
    done = threading.Event()
    errors = []

    def write():
        try:
            for i in range(40):
                store.write_rows("r1", rows(100, start=100 * i))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen = []
    while not done.is_set():
        steps = [r["_step"] for r in run.history(keys=["loss"])]
        assert steps == list(range(len(steps)))  # a prefix of whole batches, never part of one
        assert len(steps) % 100 == 0
        seen.append(len(steps))
    writer.join()
    assert not errors
    assert seen == sorted(seen)
    assert len(run.history()) == 4000


def test_reader_is_not_blocked_by_an_open_write_transaction(store, api):
    store.write_rows("r1", rows(3))
    run = api.run("r1")
    store._db.begin()  # the writer is mid-transaction, holding its write lock
    try:
        store._conn.execute("DELETE FROM history")
        store._conn.execute("UPDATE runs SET project = 'changed'")
        t0 = time.monotonic()
        assert len(run.history()) == 3  # readers see the last commit and do not wait
        assert api.run("r1").project == "uncategorized"
        assert time.monotonic() - t0 < 2
    finally:
        store._db.rollback()
    assert len(run.history()) == 3


def test_postgres_writer_replaces_a_connection_the_server_dropped(root, postgres_url):
    import psycopg

    with Store(root, db=postgres_url) as s:
        s.write_rows("r1", rows(3), cursor=1)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (s._db.raw.info.backend_pid,))
        s.write_rows("r1", rows(3, start=3), cursor=2)  # on a new connection
        assert s.run_cursor("r1") == (2, 6)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (s._db.raw.info.backend_pid,))
        with pytest.raises(StoreError, match="cannot read"):
            s.run_cursor("r1")  # a read outside a write cannot be retried safely: said, then replaced
        assert s.run_cursor("r1") == (2, 6)
    with Api(root, db=postgres_url) as a:
        assert len(a.run("r1").history()) == 6


def test_postgres_writers_take_turns(root, postgres_url):
    with Store(root, db=postgres_url) as first, Store(root, db=postgres_url) as second:
        first.upsert_run("a", project="p")
        second.upsert_run("b", project="p")
        first._db.begin()  # holds the write lock
        committing = threading.Event()

        def commit():
            committing.set()
            first._db.commit()

        released = threading.Timer(0.3, commit)
        released.start()
        second.write_rows("b", rows(2))  # waits for the first writer's transaction
        # proves the wait by what happened, not by the time it took: the second write returned
        # only after the first writer went to commit
        assert committing.is_set()
        released.join()
    with Api(root, db=postgres_url) as a:
        assert sorted(r.id for r in a.runs()) == ["a", "b"]
