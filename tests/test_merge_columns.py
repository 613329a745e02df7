"""The merge stage's column path (daemon/columns.py, ``Merger.add_blocks``): plain batches kept
as columns give the rows the row path gives, and the summary and the store take them whole."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conftest import load_codec
from trackside.daemon.columns import ColumnRows
from trackside.daemon.merger import Merger
from trackside.daemon.summary import Summary

codec = load_codec("cython")
T0 = 1_700_000_000_000_000


def body(writer: int, seq: int, entries) -> bytes:
    record = codec.encode_batch(writer, seq, entries)
    _, _, start, end = codec.parse_record(record)
    return record[start:end]


def feed(m: Merger, writer: int, b: bytes, now: float, columns: bool) -> bool:
    """One batch into ``m`` as the run stream feeds it; True if it went in as columns."""
    if columns and m.add_plain(writer, b, now) is not None:
        return True
    m.join(writer)
    m.add(writer, codec.decode_batch(b)[2], now)
    return False


def rows_of(out) -> list:
    """Rows in a form that tells 1 from 1.0 and ignores the order of a row's keys."""
    return [(r.step, r.time_us, sorted((k, type(v).__name__, v) for k, v in r.values.items()), r.amend) for r in out]


def entries(first: int, n: int, keys, t: int, kind: str = "d", commit=True) -> list:
    out = []
    for i in range(n):
        values = {k: (float(first + i) + j / 4 if kind == "d" else first + i + j) for j, k in enumerate(keys)}
        out.append((first + i, True if i < n - 1 else commit, t + i, values, None))
    return out


# -- what the column path gives -----------------------------------------------------------------


def test_two_writers_with_their_own_keys_make_one_row_per_step_as_columns():
    m = Merger(merge_window=None)
    m.join(2, now=0.0)
    assert feed(m, 1, body(1, 1, entries(0, 100, ("rank0/loss", "rank0/lr"), T0)), 1.0, True)
    assert m.finalize(1.0) == [] and m.pending() == 100  # rank 1 has not logged: the rows wait
    assert feed(m, 2, body(2, 1, entries(0, 60, ("rank1/loss",), T0 + 5)), 2.0, True)
    out = m.finalize(2.0)
    assert isinstance(out, ColumnRows) and len(out) == 60 and list(out.steps) == list(range(60))
    assert list(out.times) == [T0 + 5 + i for i in range(60)]  # a step's time: its latest entry's
    first = list(out)[0]
    assert first.values == {"rank0/loss": 0.0, "rank0/lr": 0.25, "rank1/loss": 0.0} and not first.amend
    assert out[-1].step == 59 and out[-1].values["rank1/loss"] == 59.0
    rest = m.finalize(2.0, everything=True)
    assert list(rest.steps) == list(range(60, 100)) and rest.keys == ["rank0/loss", "rank0/lr"]
    assert m.pending() == 0 and m.stats["rows_emitted"] == 100


def test_a_key_two_writers_log_at_the_same_steps_goes_the_row_way_and_follows_its_rule():
    m = Merger(merge_window=None)
    m.define_metric("tokens", reduce="sum")
    assert not feed(m, 1, body(1, 1, entries(0, 10, ("tokens",), T0)), 1.0, True)  # a reduce rule: rows
    m2 = Merger(merge_window=None)  # every key "last": columns, until another writer shares one
    assert feed(m2, 1, body(1, 1, entries(0, 10, ("loss",), T0)), 1.0, True)
    assert not feed(m2, 2, body(2, 1, entries(5, 10, ("loss",), T0, kind="q")), 2.0, True)
    out = m2.finalize(2.0, everything=True)
    assert isinstance(out, list) and [r.step for r in out] == list(range(15))
    assert out[5].values == {"loss": 5 + 0} and out[4].values == {"loss": 4.0}  # the later writer's value
    assert m2.stats["collisions"] == 5


def test_a_step_the_writer_left_open_takes_more_keys_the_row_way():
    m = Merger(merge_window=None)
    assert feed(m, 1, body(1, 1, entries(0, 3, ("loss",), T0, commit=False)), 1.0, True)
    assert list(m.finalize(1.0).steps) == [0, 1]  # step 2 is open
    assert not feed(m, 1, body(1, 2, [(2, True, T0 + 9, {"acc": 1.0}, None)]), 2.0, True)
    assert rows_of(m.finalize(2.0)) == [(2, T0 + 9, [("acc", "float", 1.0), ("loss", "float", 2.0)], False)]


def test_blocks_of_a_stuck_writer_go_out_after_the_merge_window_as_rows():
    m = Merger(merge_window=5.0)
    m.join(2, now=0.0)  # rank 1 connected and never logs
    assert feed(m, 1, body(1, 1, entries(0, 10, ("loss",), T0)), 1.0, True)
    assert m.finalize(3.0) == []
    out = m.finalize(6.5)
    assert [r.step for r in out] == list(range(10)) and m.pending() == 0


def test_a_writer_back_after_leaving_cannot_add_columns_at_steps_of_its_own_waiting_ones():
    """It joins again as a fresh writer (no cursor), but its old blocks still wait: a step of
    theirs again goes the row way, where the later value wins."""
    m = Merger(merge_window=None)
    assert feed(m, 1, body(1, 1, entries(0, 2, ("a",), T0, kind="q", commit=False)), 1.0, True)
    m.leave(1)
    assert not feed(m, 1, body(1, 2, entries(1, 2, ("a",), T0 + 7)), 2.0, True)
    assert rows_of(m.finalize(2.0, everything=True)) == [
        (0, T0, [("a", "int", 0)], False),
        (1, T0 + 7, [("a", "float", 1.0)], False),
        (2, T0 + 8, [("a", "float", 2.0)], False),
    ]


def test_a_reduce_rule_defined_while_blocks_wait_turns_them_into_rows():
    m = Merger(merge_window=None)
    assert feed(m, 1, body(1, 1, entries(0, 4, ("t",), T0)), 1.0, True)
    m.join(2)
    assert feed(m, 2, body(2, 1, entries(0, 2, ("u",), T0)), 1.0, True)
    m.define_metric("t", reduce="sum")
    out = m.finalize(1.0)
    assert isinstance(out, list) and [r.step for r in out] == [0, 1]
    assert m.lowest_pending() == 2 and m.is_pending(3) and not m.is_pending(1)


# -- property: the same rows as the row path -----------------------------------------------------

_ops = st.lists(
    st.tuples(
        st.sampled_from(["log", "log", "log", "log", "finalize", "leave", "join", "define"]),
        st.integers(0, 2),  # writer
        st.integers(-2, 3),  # first step from the writer's next one
        st.integers(1, 6),  # entries
        st.sampled_from(["own", "own", "shared", "both"]),  # keys
        st.sampled_from(["d", "d", "q", "bool"]),  # values
        st.booleans(),  # the last entry commits
    ),
    max_size=60,
)


@settings(max_examples=int(os.environ.get("TRACKSIDE_HYPOTHESIS_EXAMPLES", "300")), deadline=None)
@given(ops=_ops, window=st.sampled_from([None, None, 2.5, 6.0]), late=st.sampled_from(["amend", "drop"]))
def test_property_columns_give_the_rows_of_the_row_path(ops, window, late):
    rows_way = Merger(merge_window=window, late_steps=late)
    cols_way = Merger(merge_window=window, late_steps=late)
    nxt: dict = {}
    seq: dict = {}
    now = 0.0
    taken = 0
    for op, w, delta, n, keys, kind, commit in ops:
        now += 1.0
        if op == "finalize":
            assert rows_of(cols_way.finalize(now)) == rows_of(rows_way.finalize(now))
        elif op == "leave":
            rows_way.leave(w + 1)
            cols_way.leave(w + 1)
        elif op == "join":  # a rank connected: it holds rows back until it logs (or the window passed)
            rows_way.join(w + 1, now=now)
            cols_way.join(w + 1, now=now)
        elif op == "define":
            rows_way.define_metric("shared/b", reduce="sum")
            cols_way.define_metric("shared/b", reduce="sum")
        else:
            names = {
                "own": (f"w{w}/a", f"w{w}/b"),
                "shared": ("shared/a", "shared/b"),
                "both": (f"w{w}/a", "shared/a"),
            }[keys]
            first = max(0, nxt.get(w, 0) + delta)
            batch = entries(first, n, names, T0 + int(now) * 100, "q" if kind == "q" else "d", commit)
            if kind == "bool":
                batch[-1][3][names[0]] = True
            nxt[w] = max(nxt.get(w, 0), first + n)
            seq[w] = seq.get(w, 0) + 1
            b = body(w + 1, seq[w], batch)
            feed(rows_way, w + 1, b, now, columns=False)
            taken += feed(cols_way, w + 1, b, now, columns=True)
        assert cols_way.lowest_pending() == rows_way.lowest_pending()
    assert rows_of(cols_way.finalize(now, everything=True)) == rows_of(rows_way.finalize(now, everything=True))
    assert cols_way.pending() == rows_way.pending() == 0
    for counted in ("rows_emitted", "amends", "collisions", "late_dropped", "late_reduced"):
        assert cols_way.stats[counted] == rows_way.stats[counted], counted
    event(f"batches taken as columns: {min(taken, 3)}+")


# -- the summary and the store take the columns ---------------------------------------------------


def two_writers_rows():
    m = Merger(merge_window=None)
    feed(m, 1, body(1, 1, entries(0, 700, ("rank0/loss", "epoch"), T0)), 1.0, True)
    feed(m, 2, body(2, 1, entries(0, 700, ("rank1/loss",), T0, kind="q")), 1.0, True)
    out = m.finalize(1.0, everything=True)
    assert isinstance(out, ColumnRows)
    return out


@pytest.mark.parametrize("rules", [False, True])
def test_the_summary_of_columns_is_the_summary_of_their_rows(rules):
    cols = two_writers_rows()
    snapshots = []
    for rows in (cols, list(cols)):
        m = Merger()
        if rules:
            m.define_metric("rank0/*", summary="min,max,mean,first")
            m.define_metric("rank1/loss", summary="best", goal="minimize")
        summary = Summary(m.metrics)
        summary.update({"note": "kept"})
        summary.update(rows)
        snapshots.append(summary.snapshot())
    assert snapshots[0] == snapshots[1] and list(snapshots[0]) == list(snapshots[1])
    if rules:
        assert snapshots[0]["rank0/loss"] == {"min": 0.0, "max": 699.0, "mean": 349.5, "first": 0.0}
        assert snapshots[0]["rank1/loss"] == {"best": 0}
    else:
        assert snapshots[0]["rank1/loss"] == 699 and type(snapshots[0]["rank1/loss"]) is int


@pytest.mark.parametrize("replayed", [False, True])
def test_the_store_keeps_columns_as_it_keeps_their_rows(replayed):
    from trackside import Api
    from trackside.store import Store

    cols = two_writers_rows()
    got = []
    for rows in (cols, list(cols)):
        with tempfile.TemporaryDirectory() as root:
            store = Store(root)
            store.upsert_run("r", project="p")
            store.apply("r", rows=rows, cursor=1)
            if replayed:  # a daemon restarted after a crash writes the same rows again
                store.apply("r", rows=rows, cursor=1)
            store.close()
            with Api(root) as api:
                run = api.run("r")
                got.append((run.history(), run.last_step))
    assert got[0] == got[1]
    history = got[0][0]
    assert len(history) == 700 and history[699]["rank1/loss"] == 699 and history[3]["epoch"] == 3.25
