"""The series layout (store/series.py, store/chunks.py, store/sampling.py) and the reads built on
it: ``RunView.series``, ``buckets``, ``history(samples=)``, ``tail``, ``Api.buckets_many``.

Buckets are checked against a brute-force computation over a model of what was written; the
chunk size is made tiny here so that small runs have every level of units."""

import math
import sqlite3

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trackside.api import Api
from trackside.store import Store, sampling, series
from trackside.store.schema import MIGRATIONS, SCHEMA

from conftest import T0, Row


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Chunks of 4 points: level 1 units hold 64 points, level 2 1,024, level 3 16,384."""
    monkeypatch.setattr(series, "CHUNK_POINTS", 4)
    monkeypatch.setattr(sampling, "_RAW_POINTS", 0)
    monkeypatch.setattr(sampling, "_RAW_PER_SAMPLE", 0)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """``(store, api)`` on SQLite or on a fresh PostgreSQL database."""
    db = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    store = Store(tmp_path / "root", db=db)
    api = Api(tmp_path / "root", db=db)
    yield store, api
    api.close()
    store.close()


def brute(points: dict, lo: int, hi: int):
    """(steps, values) of a {step: value} model in [lo, hi], in step order."""
    steps = sorted(s for s in points if lo <= s <= hi)
    return steps, [float(points[s]) for s in steps]


def check_buckets(b, points: dict, lo: int, hi: int, samples: int) -> None:
    """Every bucket's figures are those of the model's points between its first and last
    step, and the buckets hold every point of [lo, hi] once."""
    steps, _ = brute(points, lo, hi)
    assert len(b.x) <= samples
    assert int(b.count.sum()) == len(steps)
    if b.exact:
        assert b.step.tolist() == steps
    prev = None
    for i in range(len(b.x)):
        s, v = brute(points, int(b.first_step[i]), int(b.step[i]))
        assert s and s[0] == b.first_step[i] and s[-1] == b.step[i]
        assert len(s) == b.count[i]
        if prev is not None:
            assert b.first_step[i] > prev  # in order, no point in two buckets
        prev = b.step[i]
        real = [x for x in v if not math.isnan(x)]
        for got, want in ((b.min[i], min(real, default=math.nan)), (b.max[i], max(real, default=math.nan))):
            assert got == want or (math.isnan(got) and math.isnan(want))
        for got, want in ((b.first[i], v[0]), (b.last[i], v[-1])):
            assert got == want or (math.isnan(got) and math.isnan(want))


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(-1e6, 1e6, width=32),
    st.integers(-(2**40), 2**40),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    n=st.integers(1, 700),
    gaps=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    batch=st.integers(1, 300),
)
def test_buckets_equal_a_brute_force_computation(tmp_path_factory, tiny_chunks, data, n, gaps, batch):
    root = tmp_path_factory.mktemp("series")
    model: dict = {}
    rows, step = [], 0
    for i in range(n):
        step += gaps[i % len(gaps)]
        v = data.draw(values)
        model[step] = v
        rows.append(Row(step, T0 + step, {"k": v}))
    with Store(root) as store:
        store.upsert_run("r", project="p")
        for i in range(0, len(rows), batch):
            store.write_rows("r", rows[i : i + batch])
        # amends of stored steps: a replaced value, and a step between stored ones
        for _ in range(data.draw(st.integers(0, 3))):
            at = data.draw(st.sampled_from(sorted(model)))
            v = data.draw(values)
            model[at] = v
            store.write_rows("r", [Row(at, T0 + at, {"k": v})])
    with Api(root) as api:
        run = api.run("r")
        s = run.series("k")
        assert s.steps.tolist() == sorted(model)
        for got, want in zip(s.values.tolist(), [model[k] for k in sorted(model)]):
            assert got == want or (math.isnan(got) and math.isnan(want))
        top = max(model)
        for _ in range(4):
            samples = data.draw(st.integers(1, 120))
            lo = data.draw(st.integers(0, top))
            hi = data.draw(st.integers(lo, top + 2))
            b = run.buckets("k", samples, min_step=lo, max_step=hi + 1)["k"]
            check_buckets(b, model, lo, hi, samples)


def test_levels_are_read_in_proportion_to_the_buckets(tmp_path, tiny_chunks):
    with Store(tmp_path) as store:
        for i in range(0, 20_000, 1000):
            store.write_rows("r", [Row(s, T0 + s, {"k": float(s % 97)}) for s in range(i, i + 1000)])
    model = {s: float(s % 97) for s in range(20_000)}
    with Api(tmp_path) as api:
        run = api.run("r")
        rows_read = []
        api.conn.set_trace_callback(lambda sql: rows_read.append(sql))
        b = run.buckets("k", 50)["k"]
        api.conn.set_trace_callback(None)
        check_buckets(b, model, 0, 20_000, 50)
        assert 25 <= len(b.x) <= 50
        # 5,000 chunks of 4 points: the sampling read the levels above them, and no chunk
        assert not [q for q in rows_read if "series_chunks" in q]
        zoom = run.buckets("k", 50, min_step=1003, max_step=1990)["k"]
        check_buckets(zoom, model, 1003, 1989, 50)


def test_values_keep_their_kind_and_rows_rebuild(backend):
    store, api = backend
    logged = []
    for s in range(1, 1500):
        values = {"f": s / 3, "i": s * 7, "f32": float(np.float32(s / 7))}
        if s % 100 == 0:
            values["text"] = f"step {s}"
            values["flag"] = True
            values["big"] = 2**63 + s  # beyond int64: kept in the row table
        logged.append(Row(s, T0 + s * 10, values))
    store.write_rows("r", logged[:700])
    store.write_rows("r", logged[700:])
    run = api.run("r")
    rows = run.history()
    assert [r["_step"] for r in rows] == list(range(1, 1500))
    for row, w in zip(rows, logged):
        assert {k: v for k, v in row.items() if k not in ("_step", "_timestamp")} == w.values
        assert type(row["i"]) is int and type(row["f"]) is float
        assert row["_timestamp"] == pytest.approx(w.time_us / 1e6)
    s = run.series("i")
    assert s.values.dtype == np.int64 and s.values.tolist() == [r * 7 for r in range(1, 1500)]
    assert run.series("text").steps.size == 0  # not a number: no series
    assert run.history(keys=["text"]) == [
        {"_step": s, "_timestamp": pytest.approx((T0 + s * 10) / 1e6), "text": f"step {s}"}
        for s in range(100, 1500, 100)
    ]
    assert run.history_rows == 1499 or api.run("r").history_rows == 1499


def test_an_amend_replaces_values_and_keeps_the_first_timestamp(backend):
    store, api = backend
    store.write_rows("r", [Row(s, T0 + s, {"a": 1.0}) for s in range(2000)])
    merged = store.write_rows("r", [Row(5, T0 + 99999, {"a": 2.0, "b": 3}), Row(1500, T0 + 99999, {"a": 4.0})])
    assert merged == 2
    assert store.write_rows("r", [Row(1_000_000, T0 + 5, {"a": 5.0}), Row(2500, T0 + 6, {"c": "x"})]) == 0
    run = api.run("r")
    assert run.history_rows == 2002
    rows = {r["_step"]: r for r in run.history()}
    assert rows[5] == {"_step": 5, "_timestamp": pytest.approx((T0 + 5) / 1e6), "a": 2.0, "b": 3}
    assert rows[1500]["a"] == 4.0 and rows[2500]["c"] == "x" and rows[1_000_000]["a"] == 5.0
    b = run.buckets("a", 10)["a"]
    check_buckets(b, {**{s: 1.0 for s in range(2000)}, 5: 2.0, 1500: 4.0, 1_000_000: 5.0}, 0, 1_000_000, 10)


def test_a_value_logged_as_timestamp_leaves_the_row_index_alone(backend):
    """``_timestamp`` names the series of every stored step's time: a value logged under that
    name is kept with the row (and shown there, as logged), never written over the steps' times."""
    store, api = backend
    store.write_rows("r", [Row(s, T0 + s * 10, {"loss": float(s), "_timestamp": 123.0}) for s in range(5)])
    store.write_rows("r", [Row(2, T0 + 99, {"_timestamp": 7})])  # a late one too
    run = api.run("r")
    assert run.series("loss").timestamps.tolist() == pytest.approx([(T0 + s * 10) / 1e6 for s in range(5)])
    assert [r["_timestamp"] for r in run.history()] == [123.0, 123.0, 7, 123.0, 123.0]
    assert run.buckets("loss", 10, x_axis="_timestamp")["loss"].x.tolist() == pytest.approx(
        [(T0 + s * 10) / 1e6 for s in range(5)]
    )
    assert "_timestamp" not in run.buckets()


def test_x_axes(backend):
    store, api = backend
    store.upsert_run("r", project="p")
    store.write_rows("r", [Row(s, T0 + s * 1_000_000, {"loss": 1.0 / (s + 1), "epoch": s // 10}) for s in range(100)])
    run = api.run("r")
    t = run.buckets("loss", 1000, x_axis="_timestamp")["loss"]
    assert t.exact and t.x.tolist() == pytest.approx([(T0 + s * 1_000_000) / 1e6 for s in range(100)])
    r = run.buckets("loss", 1000, x_axis="_runtime")["loss"]
    assert r.x.tolist() == pytest.approx([(T0 + s * 1_000_000) / 1e6 - run.created_at for s in range(100)])
    e = run.buckets("loss", 5, x_axis="epoch")["loss"]
    assert len(e.x) == 5 and e.count.sum() == 100 and e.x.tolist() == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert e.max.tolist() == [1.0, 1 / 21, 1 / 41, 1 / 61, 1 / 81]
    assert run.buckets("loss", 5, x_axis="nope")["loss"].x.size == 0


def test_sampled_history_tail_and_many_runs(backend):
    store, api = backend
    for r in ("a", "b", "c"):
        store.write_rows(r, [Row(s, T0 + s, {"loss": float(s) if r != "c" else -float(s)}) for s in range(5000)])
    run = api.run("a")
    rows = run.history(keys=["loss"], samples=100)
    assert 50 <= len(rows) <= 100
    assert rows[-1] == {"_step": 4999, "loss": 4999.0, "loss:min": rows[-1]["loss:min"], "loss:max": 4999.0}
    assert rows[0]["loss:min"] == 0.0
    tail = run.tail(since=4990)
    assert [r["_step"] for r in tail.rows] == list(range(4991, 5000)) and tail.cursor == 4999
    store.write_rows("a", [Row(5000, T0 + 5000, {"loss": 1.5, "note": "new"})])
    again = run.tail(since=tail.cursor)
    assert again.rows == [{"_step": 5000, "_timestamp": pytest.approx((T0 + 5000) / 1e6), "loss": 1.5, "note": "new"}]
    assert run.tail(since=again.cursor) == ([], 5000)
    many = api.buckets_many(["a", "b", "c"], "loss", samples=10)
    assert set(many) == {"a", "b", "c"}
    assert many["c"].min.min() == -4999.0 and many["b"].max.max() == 4999.0
    with pytest.raises(KeyError):
        api.buckets_many(["a", "zz"], "loss")


def test_a_store_of_schema_3_is_migrated(tmp_path):
    """A store laid out as schema 3 wrote it (whole rows as msgpack maps) opens with its numbers
    moved into series and reads back the same."""
    path = tmp_path / "trackside.db"
    con = sqlite3.connect(path)
    for schema in (SCHEMA, MIGRATIONS[2], MIGRATIONS[3]):
        con.executescript(schema)
    con.execute(
        "INSERT INTO runs (rid, run_id, project, created_at, updated_at, root_dir, history_rows, last_step)"
        " VALUES (1, 'old', 'p', 1.0, 2.0, ?, 3000, 2999)",
        (str(tmp_path),),
    )
    enc = msgspec.msgpack.encode
    image = {"_type": "image-file", "path": "media/images/x.png", "sha256": "0" * 64}
    want = {}
    for s in range(3000):
        values = {"loss": 1 / (s + 1), "step_i": s}
        if s % 1000 == 0:
            values["img"] = image
        want[s] = values
        con.execute("INSERT INTO history (rid, step, time_us, data) VALUES (1, ?, ?, ?)", (s, T0 + s, enc(values)))
    con.execute("INSERT INTO history_keys (rid, key) VALUES (1, 'loss'), (1, 'step_i'), (1, 'img')")
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    Store(tmp_path).close()
    with Api(tmp_path) as api:
        run = api.run("old")
        rows = run.history()
        assert {r["_step"]: {k: v for k, v in r.items() if k[0] != "_"} for r in rows} == want
        assert run.series("loss").values.tolist() == [1 / (s + 1) for s in range(3000)]
        (left,) = api.conn.execute("SELECT count(*) FROM history").fetchone()
        assert left == 3  # only the steps with an image keep a row
        assert api.conn.execute("PRAGMA user_version").fetchone()[0] == 4


def test_the_team_server_serves_the_same_reads(servers, tmp_path):
    """``Api("grpc://...")``: series, buckets, tail and buckets_many equal the local reads."""
    root = tmp_path / "server"
    with Store(root) as store:
        for r in ("a", "b"):
            store.write_rows(r, [Row(s, T0 + s, {"loss": s / 7, "n": s}) for s in range(3000)])
    server = servers.start(root)
    remote, local = Api(server.url), Api(root)
    try:
        for attr in ("steps", "values", "timestamps"):
            assert (
                getattr(remote.run("a").series("loss"), attr).tolist()
                == getattr(local.run("a").series("loss"), attr).tolist()
            )
        got = remote.run("a").buckets(["loss", "n"], 50, min_step=10, max_step=2000, x_axis="_runtime")
        want = local.run("a").buckets(["loss", "n"], 50, min_step=10, max_step=2000, x_axis="_runtime")
        for key in ("loss", "n"):
            assert got[key].exact == want[key].exact
            assert all(np.array_equal(g, w) for g, w in zip(got[key][:-1], want[key][:-1]))
        assert remote.run("a").tail(since=2995) == local.run("a").tail(since=2995)
        many = remote.buckets_many(["a", "b"], "n", samples=10)
        assert many.keys() == {"a", "b"} and many["b"].count.sum() == 3000
        assert remote.run("a").history(keys=["n"], samples=10) == local.run("a").history(keys=["n"], samples=10)
    finally:
        remote.close()
        local.close()


def test_many_runs_read_together_equal_each_run_read_alone(backend, tiny_chunks):
    """``buckets_many`` reads short runs' chunks in one statement: the same buckets as
    ``buckets`` run by run, for short and long runs, integer and float keys, and a run
    without the key."""
    store, api = backend
    sizes = {"a": 3, "b": 40, "c": 300, "d": 5000}
    for run_id, n in sizes.items():
        store.write_rows(run_id, [Row(s, T0 + s, {"v": (s * 7) % 13 if run_id == "b" else s / 3}) for s in range(n)])
    store.write_rows("e", [Row(0, T0, {"other": 1.0})])
    for samples in (1, 10, 100):
        many = api.buckets_many(list(sizes) + ["e"], "v", samples)
        assert many["e"].x.size == 0
        for run_id in sizes:
            alone = api.run(run_id).buckets("v", samples)["v"]
            assert many[run_id].exact == alone.exact
            assert all(np.array_equal(m, a) for m, a in zip(many[run_id][:-1], alone[:-1])), (run_id, samples)
