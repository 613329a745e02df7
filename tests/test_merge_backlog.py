"""The run stream in-process (daemon/stream.py ``RunStream``, fed by stand-in connections): its
merge backlog serves the writer behind first so pending rows stay few (live and on replay),
lets record bodies go from memory and reads them back from the WAL (damage found then is
reported and skipped), lets a writer far ahead of a silent one through after the merge window,
holds the acks of the writer ahead once it passes its bound; late rich entries dropped leave no
state behind."""

import asyncio
import concurrent.futures
import os
import time

import pytest

import trackside
from trackside import _native as codec
from trackside._native.constants import RECORD_EVENT
from trackside.contracts.protocol import Ack, Done, Event, encode_event
from trackside.daemon import stream as stream_mod
from trackside.daemon.sink import StoreHandle
from trackside.daemon.stream import RunStream
from trackside.daemon.wal import WAL


A, B = 11, 22  # writer ids


class FakeConn:
    """Stands in for a writer's socket: keeps what the stream sends."""

    def __init__(self, writer):
        self.writer_id = writer
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)

    def acked(self):
        return max((m.seq for m in self.sent if isinstance(m, Ack)), default=0)


def batch(writer, seq, steps, key):
    """A LOG record of one committed entry per step, ``{key: step}``."""
    return codec.encode_batch(writer, seq, [(s, True, 1_700_000_000_000_000 + s, {key: float(s)}, None) for s in steps])


def finish_record(writer, seq):
    return codec.frame(RECORD_EVENT, encode_event(Event(writer, seq, "finish", {"exit_code": 0})))


def attach_two(stream):
    """Writers A and B connected to ``stream``: their stand-in connections."""
    ca, cb = FakeConn(A), FakeConn(B)
    stream.attach(ca, A)
    stream.attach(cb, B)
    return ca, cb


def open_stream(root, run_id="r1", **settings):
    """A local RunStream on ``root`` (started by the caller) and a function that closes it."""
    handle = StoreHandle(str(root))
    pool = concurrent.futures.ThreadPoolExecutor(2)
    info = {"settings": {"durability": "flush", **settings}}
    stream = RunStream(
        run_id, str(root), os.path.join(str(root), "runs", run_id), info, handle.store, handle.call, pool
    )

    async def close():
        await stream.close()
        handle.close()
        pool.shutdown()

    return stream, close


def watch_pending(stream):
    """The most rows the stream's merger held pending after any add, of rows or of columns."""
    seen = [0]
    merger = stream.merger

    def counting(add):
        def counting_add(*a, **kw):
            taken = add(*a, **kw)
            seen[0] = max(seen[0], merger.pending())
            return taken

        return counting_add

    merger.add = counting(merger.add)
    merger.add_blocks = counting(merger.add_blocks)
    return seen


async def settle(stream, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not stream.settled():
        assert time.monotonic() < deadline, "the stream did not settle"
        await asyncio.sleep(0.01)


async def stored_rows(stream, root, timeout=20.0, want=None) -> int:
    """The rows of run r1 in the store at ``root``, read between the stream's store calls; with
    ``want``, once there are that many (or ``timeout`` seconds passed)."""

    def count():
        try:
            with trackside.Api(str(root)) as api:
                return api.run("r1").history_rows
        except KeyError:
            return 0

    deadline = time.monotonic() + timeout
    while True:
        n = await stream._store_call(count)
        if want is None or n >= want or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.05)


def two_writers_far_apart(steps=2000, per=100):
    """Writer A's whole run, then writer B's (what the daemon sees of free-running ranks when A
    is far ahead): records of ``per`` steps each, own keys, a finish at each end."""
    a = [batch(A, i + 1, range(s, s + per), "a") for i, s in enumerate(range(0, steps, per))]
    b = [batch(B, i + 1, range(s, s + per), "b") for i, s in enumerate(range(0, steps, per))]
    return a + [finish_record(A, len(a) + 1)], b + [finish_record(B, len(b) + 1)]


def test_backlog_serves_the_writer_behind_first_so_pending_rows_stay_few(tmp_path, monkeypatch):
    """Writer A's records all arrive before B's: the backlog holds A back (more than the lead
    ahead of B) and serves B, so the merger never holds more than the lead plus a batch of
    rows (and a group's worth: one record here), and every row merges both writers."""
    monkeypatch.setattr(stream_mod, "MERGE_LEAD", 200)
    monkeypatch.setattr(stream_mod, "MERGE_GROUP", 1)

    async def main():
        stream, close = open_stream(tmp_path)
        await stream.start()
        pending = watch_pending(stream)
        ca, cb = attach_two(stream)
        recs_a, recs_b = two_writers_far_apart()
        stream.accept(cb, B, 1, recs_b[0])  # both have logged: then B holds A back
        for seq, rec in enumerate(recs_a, 1):
            stream.accept(ca, A, seq, rec)
        await settle(stream)
        assert stream.status()["merge_backlog"] > 0  # A waits for B
        assert not any(isinstance(m, Done) for m in ca.sent)
        for seq, rec in enumerate(recs_b[1:], 2):
            stream.accept(cb, B, seq, rec)
        await settle(stream)
        assert any(isinstance(m, Done) for m in ca.sent) and any(isinstance(m, Done) for m in cb.sent)
        await close()
        return pending[0], stream.merger.stats

    most, stats = asyncio.run(main())
    assert most <= 200 + 2 * 100
    assert stats["amends"] == 0
    rows = trackside.Api(str(tmp_path)).run("r1").history()
    assert [r["_step"] for r in rows] == list(range(2000))
    assert all(r["a"] == r["b"] == r["_step"] for r in rows)


def test_replay_after_a_crash_keeps_pending_rows_few(tmp_path, monkeypatch):
    """A restarted stream replays a WAL where one writer ran far ahead through the same
    backlog: bounded merger state, the same rows."""
    monkeypatch.setattr(stream_mod, "MERGE_LEAD", 200)
    monkeypatch.setattr(stream_mod, "MERGE_GROUP", 1)
    recs_a, recs_b = two_writers_far_apart()
    with WAL(tmp_path / "runs" / "r1" / "wal") as wal:
        for rec in recs_a + recs_b:
            wal.append(rec)
        wal.commit()

    async def main():
        stream, close = open_stream(tmp_path)
        pending = watch_pending(stream)
        await stream.start()  # replays
        await close()
        return pending[0]

    assert asyncio.run(main()) <= 200 + 2 * 100
    rows = trackside.Api(str(tmp_path)).run("r1").history()
    assert [r["_step"] for r in rows] == list(range(2000))
    assert all(r["a"] == r["b"] == r["_step"] for r in rows)


def test_records_let_go_from_memory_are_read_back_from_the_wal(tmp_path, monkeypatch):
    """With no memory for waiting records, every body is read back from the WAL when its
    turn comes: all rows are stored, once."""
    monkeypatch.setattr(stream_mod, "MERGE_MEMORY", 0)
    reads = []
    read_record = stream_mod.read_record
    monkeypatch.setattr(stream_mod, "read_record", lambda *a: reads.append(a) or read_record(*a))

    async def main():
        stream, close = open_stream(tmp_path)
        await stream.start()
        conn = FakeConn(A)
        stream.attach(conn, A)
        for i in range(20):
            stream.accept(conn, A, i + 1, batch(A, i + 1, range(i * 50, i * 50 + 50), "a"))
        stream.accept(conn, A, 21, finish_record(A, 21))
        await settle(stream)
        await close()

    asyncio.run(main())
    assert len(reads) == 21
    rows = trackside.Api(str(tmp_path)).run("r1").history()
    assert [r["a"] for r in rows] == [float(s) for s in range(1000)]


def test_a_record_damaged_on_disk_before_it_is_read_back_is_reported_and_skipped(tmp_path, monkeypatch):
    """Batch 2 is damaged in the WAL while it waits in the backlog (proven: the stream settled
    with batches 2 and 3 waiting, bodies let go): reading it back reports the damage, and the
    rows of batches 1 and 3 are stored."""
    monkeypatch.setattr(stream_mod, "MERGE_MEMORY", 0)

    async def main():
        stream, close = open_stream(tmp_path)
        await stream.start()
        conn = FakeConn(A)
        stream.attach(conn, A)
        stream.accept(conn, A, 1, batch(A, 1, range(0, 10), "a"))
        await settle(stream)
        # hold the merger back with a second writer far behind, so A's next records wait
        stream.attach(FakeConn(B), B)
        stream.merger.add(B, [(0, False, 0, {"b": 0.0}, None)])
        stream._backlog.lead = 0
        stream.accept(conn, A, 2, batch(A, 2, range(10, 20), "a"))
        stream.accept(conn, A, 3, batch(A, 3, range(20, 30), "a"))
        await stream.durable(stream.wal.end_offset)
        await settle(stream)  # the materializer has looked and holds batches 2 and 3 back
        assert stream.status()["merge_backlog"] == 2  # waiting, their bodies in the WAL only
        # flip a byte in the body of batch 2, in the WAL file
        seg = sorted((tmp_path / "runs" / "r1" / "wal").iterdir())[-1]
        data = bytearray(seg.read_bytes())
        at = data.find(b"a", len(data) - 2 * len(batch(A, 3, range(20, 30), "a")))
        data[at] ^= 0xFF
        seg.write_bytes(bytes(data))
        stream.merger.leave(B)
        stream._merge_wanted.set()
        await settle(stream)
        await close()
        return stream.damage

    damage = asyncio.run(main())
    assert len(damage) == 1 and "checksum" in damage[0]["reason"]
    rows = trackside.Api(str(tmp_path)).run("r1").history()
    assert [r.get("a") for r in rows if "a" in r] == [float(s) for s in list(range(10)) + list(range(20, 30))]


def test_a_writer_far_ahead_of_a_silent_one_is_stored_after_the_merge_window(tmp_path, monkeypatch):
    """B logged step 0 and went quiet (hung, connected): A's records far ahead wait in the
    backlog for one merge window, then are stored. Proven by the backlog holding records once
    the stream settled, then every row stored (waited for, up to 20 s; the window is 0.5 s)."""
    monkeypatch.setattr(stream_mod, "MERGE_LEAD", 50)

    async def main():
        stream, close = open_stream(tmp_path, merge_window=0.5)
        await stream.start()
        ca, cb = attach_two(stream)
        stream.accept(cb, B, 1, codec.encode_batch(B, 1, [(0, False, 0, {"b": 0.0}, None)]))
        await settle(stream)
        for i in range(10):
            stream.accept(ca, A, i + 1, batch(A, i + 1, range(i * 100, i * 100 + 100), "a"))
        await settle(stream)
        held = stream.status()["merge_backlog"]
        # a merge window later the backlog lets A's records go and the ticker their rows
        rows = await stored_rows(stream, tmp_path, want=1000)
        await close()
        return held, rows

    held, rows = asyncio.run(main())
    assert held > 0  # waited, first
    assert rows == 1000


def test_backlog_past_its_bound_holds_the_acks_of_the_writer_ahead_only(tmp_path, monkeypatch):
    """Backpressure: once the backlog passes MERGE_BACKLOG, the writer whose records wait in it
    gets no acks (its bounded buffer then makes log() wait); the writer behind is acked as
    usual, and once it catches up every ack is sent."""
    monkeypatch.setattr(stream_mod, "MERGE_LEAD", 50)
    monkeypatch.setattr(stream_mod, "MERGE_BACKLOG", 20_000)

    async def main():
        stream, close = open_stream(tmp_path)
        await stream.start()
        ca, cb = attach_two(stream)
        stream.accept(cb, B, 1, batch(B, 1, range(0, 10), "b"))
        await settle(stream)
        for i in range(20):
            stream.accept(ca, A, i + 1, batch(A, i + 1, range(i * 100, i * 100 + 100), "a"))
        await settle(stream)
        held = ca.acked()
        stream.accept(cb, B, 2, batch(B, 2, range(10, 20), "b"))
        await settle(stream)
        b_acked = cb.acked()
        stream.accept(cb, B, 3, batch(B, 3, range(20, 2000), "b"))
        await settle(stream)
        a_acked = ca.acked()
        await close()
        return held, b_acked, a_acked

    held, b_acked, a_acked = asyncio.run(main())
    assert held < 20  # the backlog filled up with A's records: later ones were not acknowledged
    assert b_acked == 2
    assert a_acked == 20


def test_rich_entries_dropped_as_late_leave_no_step_behind(tmp_path):
    """late_steps="drop": a late entry with a rich value makes no row; its step must not stay
    in the stream's set of steps to index media for (it grew with every drop)."""
    payload = __import__("msgspec").msgpack.encode({"img": {"_type": "point", "x": 1}})

    async def main():
        stream, close = open_stream(tmp_path, late_steps="drop")
        await stream.start()
        conn = FakeConn(A)
        stream.attach(conn, A)
        stream.accept(conn, A, 1, batch(A, 1, range(0, 100), "a"))
        await settle(stream)
        late = [(s, True, 0, {}, payload) for s in range(10, 60)]
        stream.accept(conn, A, 2, codec.encode_batch(A, 2, late))
        stream.accept(conn, A, 3, codec.encode_batch(A, 3, [(100, True, 0, {"a": 100.0}, payload)]))
        await settle(stream)
        typed = set(stream._typed_steps)
        dropped = stream.merger.stats["late_dropped"]
        await close()
        return typed, dropped

    typed, dropped = asyncio.run(main())
    assert dropped == 50
    assert typed == set()
    rows = trackside.Api(str(tmp_path)).run("r1").history()
    assert len(rows) == 101 and rows[100]["img"] == {"_type": "point", "x": 1}


@pytest.mark.parametrize("columns", [True, False])
def test_plain_batches_are_merged_as_columns_and_the_rest_as_rows(tmp_path, monkeypatch, columns):
    """Two writers' plain records (numbers, rising steps) go the column path; a record with
    text in it turns what waits into rows; every step is stored once with both writers' keys,
    and the summary has the last values. TRACKSIDE_NO_COLUMNS=1: all of it as rows, the same
    stored."""
    if not columns:
        monkeypatch.setenv("TRACKSIDE_NO_COLUMNS", "1")

    async def main():
        stream, close = open_stream(tmp_path)
        await stream.start()
        ca, cb = attach_two(stream)
        for seq, s in enumerate(range(0, 1000, 100), 1):
            stream.accept(ca, A, seq, batch(A, seq, range(s, s + 100), "a"))
            if seq == 6:  # B's sixth record is not plain: text next to its number
                entries = [
                    (x, True, 1_700_000_000_000_000 + x, {"b": float(x), "note": "x"}, None) for x in range(s, s + 100)
                ]
                stream.accept(cb, B, seq, codec.encode_batch(B, seq, entries))
            else:
                stream.accept(cb, B, seq, batch(B, seq, range(s, s + 100), "b"))
        stream.accept(ca, A, 11, finish_record(A, 11))
        stream.accept(cb, B, 11, finish_record(B, 11))
        await settle(stream)
        status = stream.status()
        await close()
        return status

    status = asyncio.run(main())
    assert status["entries"] == 2000
    assert 1000 <= status["entries_as_columns"] <= 1900 if columns else status["entries_as_columns"] == 0
    with trackside.Api(str(tmp_path)) as api:
        run = api.run("r1")
        rows = run.history()
        summary = run.summary
    assert [r["_step"] for r in rows] == list(range(1000))
    assert all(r["a"] == r["b"] == r["_step"] for r in rows)
    assert [r["_step"] for r in rows if "note" in r] == list(range(500, 600))
    assert (summary["a"], summary["b"], summary["note"]) == (999.0, 999.0, "x")
