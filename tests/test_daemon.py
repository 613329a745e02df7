"""The daemon with real writer processes: merging across ranks, crashes of the daemon and of
writers, bad frames, a second daemon, permissions, gRPC, shutdown."""

import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

import trackside
from trackside.contracts import discovery
from trackside.contracts.protocol import PROTOCOL_VERSION, Batch, Hello, Refused, Welcome, pack, server_decoder

from conftest import daemon_pid, stop_daemon

WRITER = """
import os, sys, trackside
rank = int(sys.argv[1]); steps = int(sys.argv[2]); mode = sys.argv[3]
os.environ["RANK"] = str(rank)
run = trackside.init()
for step in range(steps):
    if mode == "own":
        run.log({f"rank{rank}/loss": rank * 1000 + step}, step=step)
    else:
        run.log({"loss": float(rank), "count": 1}, step=step)
run.finish()
"""


def start_run(**kw):
    run = trackside.init(project="p", **kw)
    return run


def wait_for(predicate, timeout=20.0, interval=0.02):
    """Poll ``predicate`` until true; a run or store not there yet counts as false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (LookupError, FileNotFoundError):
            pass
        time.sleep(interval)
    return False


def writers(ts, run, n, steps, mode):
    env = dict(os.environ, TRACKSIDE_RUN_ID=run.id)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(r), str(steps), mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(1, n + 1)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err


def test_four_writers_with_different_keys_merge_into_one_row_per_step(ts):
    run = start_run()
    writers(ts, run, 4, 50, "own")
    run.finish()
    rows = trackside.Api(ts.root).run(run.id).history()
    assert [r["_step"] for r in rows] == list(range(50))
    for r in rows:
        assert {k: v for k, v in r.items() if not k.startswith("_")} == {
            f"rank{k}/loss": k * 1000 + r["_step"] for k in range(1, 5)
        }


@pytest.mark.parametrize("reduce,expected", [("mean", 2.5), ("sum", 10.0), ("min", 1.0), ("max", 4.0)])
def test_colliding_keys_from_four_writers_follow_the_reduce_rule(ts, reduce, expected):
    run = start_run(settings={"merge_window": 60.0})
    run.define_metric("loss", reduce=reduce)
    run.define_metric("count", reduce="sum")
    assert run._client.flush()  # the definitions reach the daemon before the other writers start
    writers(ts, run, 4, 20, "same")
    run.finish()
    rows = trackside.Api(ts.root).run(run.id).history()
    assert len(rows) == 20
    assert all(r["loss"] == expected for r in rows), rows[:3]
    assert all(r["count"] == 4 for r in rows), rows[:3]


def test_daemon_killed_mid_run_loses_nothing_and_duplicates_nothing(ts):
    """kill -9 of the daemon while a writer logs with durability fsync: the SDK reconnects to a
    new daemon and resends what was not acknowledged; every logged step is stored exactly once."""
    code = """
import sys, time, trackside
run = trackside.init(project="p", settings={"durability": "fsync"})
print(run.id, flush=True)
for step in range(3000):
    run.log({"x": step, "y": step * 0.5})
    if step % 100 == 0:
        print(step, flush=True)
    time.sleep(0.0005)
run.finish()
print("done", flush=True)
"""
    p = subprocess.Popen(
        [sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run_id = p.stdout.readline().strip()
    for kill_at in (500, 1500):
        while True:
            line = p.stdout.readline()
            assert line, p.stderr.read()
            if line.strip().isdigit() and int(line) >= kill_at:
                break
        os.kill(daemon_pid(ts), signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "done" in out
    rows = trackside.Api(ts.root).run(run_id).history()
    assert [r["_step"] for r in rows] == list(range(3000))
    assert all(r["x"] == r["_step"] and r["y"] == r["_step"] * 0.5 for r in rows)


def test_writer_killed_leaves_the_run_readable(ts):
    code = """
import time, trackside
run = trackside.init(project="p")
print(run.id, flush=True)
for step in range(100):
    run.log({"x": step})
assert run._client.flush()
print("flushed", flush=True)
time.sleep(60)
"""
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE, text=True)
    run_id = p.stdout.readline().strip()
    assert p.stdout.readline().strip() == "flushed"
    p.kill()
    p.wait()
    api = trackside.Api(ts.root)

    def stored():
        try:
            return len(api.run(run_id).history()) >= 99
        except KeyError:  # flushed means durable in the WAL; the store may not hold the run yet
            return False

    assert wait_for(stored)
    rows = api.run(run_id).history()
    assert [r["x"] for r in rows][:99] == list(range(99))


def raw_connect(ts):
    s = socket.socket(socket.AF_UNIX)
    s.connect(discovery.socket_path(ts.daemon_dir))
    s.settimeout(10)
    return s


def read_msg(s):
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack("<I", head)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return server_decoder.decode(body)


def hello(s, run_id, root, writer=7):
    s.sendall(pack(Hello(PROTOCOL_VERSION, run_id, writer, os.getpid(), 0, root, {"project": "p"})))
    return read_msg(s)


@pytest.mark.parametrize(
    "garbage,reason",
    [
        (struct.pack("<I", 1 << 30), "exceeds the limit"),
        (struct.pack("<I", 5) + b"\xc1\xc1\xc1\xc1\xc1", "malformed frame"),
        (pack(Batch(1, b"not a record at all")), "no record marker"),
        (struct.pack("<I", 100) + b"short", "closed inside a frame"),  # truncated, then the client goes away
    ],
)
def test_bad_frame_closes_only_that_connection(ts, garbage, reason):
    run = start_run()
    run.log({"a": 1})
    s = raw_connect(ts)
    assert isinstance(hello(s, "rawrun", ts.root), Welcome)
    s.sendall(garbage)
    if reason == "closed inside a frame":
        s.shutdown(socket.SHUT_WR)  # the client goes away mid-frame
    msg = read_msg(s)
    assert isinstance(msg, Refused) and reason in msg.reason
    assert read_msg(s) is None  # closed
    s.close()
    run.log({"a": 2})  # the other writer goes on
    run.finish()
    assert [r["a"] for r in trackside.Api(ts.root).run(run.id).history()] == [1, 2]


def test_unknown_protocol_version_is_refused(ts):
    start_run().finish()
    s = raw_connect(ts)
    s.sendall(pack(Hello(PROTOCOL_VERSION + 1, "r", 1, os.getpid(), 0, ts.root, {})))
    msg = read_msg(s)
    assert isinstance(msg, Refused) and "protocol version" in msg.reason


def test_batch_whose_record_claims_another_writer_is_refused(ts):
    from trackside import _native as codec

    start_run().finish()
    s = raw_connect(ts)
    assert isinstance(hello(s, "rawrun", ts.root, writer=7), Welcome)
    s.sendall(pack(Batch(1, codec.encode_batch(8, 1, [(0, True, 1, {"a": 1}, None)]))))
    msg = read_msg(s)
    assert isinstance(msg, Refused) and "writer and seq differ" in msg.reason


def test_second_daemon_refuses_to_start(ts):
    start_run().finish()
    p = subprocess.run(
        [sys.executable, "-m", "trackside.daemon", "--dir", ts.daemon_dir], capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 2
    assert "already running" in p.stderr


def test_socket_folder_is_private(ts):
    start_run().finish()
    assert stat.S_IMODE(os.stat(ts.daemon_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(discovery.socket_path(ts.daemon_dir)).st_mode) == 0o600
    info = discovery.read_info(ts.daemon_dir)
    assert info["grpc"].startswith("127.0.0.1:")


def test_grpc_ingest_and_health(ts):
    import grpc
    import msgspec
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from trackside import _native as codec
    from trackside.proto.trackside.v1 import trackside_pb2 as pb
    from trackside.proto.trackside.v1 import trackside_pb2_grpc as pb_grpc

    start_run().finish()
    target = discovery.read_info(ts.daemon_dir)["grpc"]
    with grpc.insecure_channel(target) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="trackside.v1.Ingest"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.IngestStub(ch)
        info = msgspec.msgpack.encode({"root": ts.root, "project": "grpc"})
        welcome = stub.Open(pb.Hello(protocol=PROTOCOL_VERSION, run_id="viagrpc", writer=5, pid=1, run_info=info))
        assert welcome.acked_seq == 0
        batches = [
            pb.Batch(
                run_id="viagrpc",
                writer=5,
                seq=i,
                record=codec.encode_batch(5, i, [(i - 1, True, 1_000_000 * i, {"g": i}, None)]),
            )
            for i in range(1, 4)
        ]
        acks = [a.seq for a in stub.Send(iter(batches))]
        assert acks and acks[-1] == 3
    # acknowledged is durable, not stored yet: the run appears in the store a moment later
    assert wait_for(lambda: [r["g"] for r in trackside.Api(ts.root).run("viagrpc").history()] == [1, 2, 3])


def test_sigterm_drains_and_stops(ts):
    run = start_run()
    for i in range(1000):
        run.log({"a": i})
    assert run._client.flush()
    pid = daemon_pid(ts)
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not discovery.pid_alive(pid))
    assert not os.path.exists(discovery.socket_path(ts.daemon_dir))
    rows = trackside.Api(ts.root).run(run.id).history()
    assert len(rows) == 1000  # drained: merged and stored before exit
    run.log({"a": 1000})  # the SDK starts a new daemon and goes on
    run.finish()
    assert len(trackside.Api(ts.root).run(run.id).history()) == 1001


def test_idle_daemon_exits_by_itself(ts, monkeypatch):
    monkeypatch.setenv("TRACKSIDE_IDLE_TIMEOUT", "0.5")
    start_run().finish()
    pid = daemon_pid(ts)
    assert wait_for(lambda: not discovery.pid_alive(pid), timeout=30)


def test_daemon_cli_start_status_stop(ts):
    env = dict(os.environ)
    cli = [sys.executable, "-m", "trackside.cli"]
    p = subprocess.run(cli + ["daemon", "start"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "started" in p.stdout
    p = subprocess.run(cli + ["daemon", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "pid" in p.stdout
    p = subprocess.run(cli + ["daemon", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "stopped" in p.stdout
    p = subprocess.run(cli + ["daemon", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1


def test_daemon_start_logs_no_refused_connection(ts):
    """`trackside daemon start` checks that the daemon answers by connecting and closing: a
    connection closed before its first frame is a probe, not a client to refuse."""
    cli = [sys.executable, "-m", "trackside.cli"]
    p = subprocess.run(cli + ["daemon", "start"], env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    start_run().finish()  # a real client too, so the log is not read before the daemon got to the probe
    with open(os.path.join(ts.daemon_dir, "daemon.log")) as f:
        text = f.read()
    assert "first frame must be hello" not in text and "closing connection" not in text, text


def test_full_disk_holds_acks_and_loses_nothing(ts, tmp_path):
    """A run root on a small filesystem that fills up: the daemon stops acknowledging (log()
    waits once the buffer is full), reports the error, and once space is back everything
    logged is stored, exactly once; the WAL is never corrupt."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root): no filesystem to fill")
    try:
        import threading

        from trackside.transport import daemon_status

        filler = mnt / "filler"
        run = trackside.init(project="p", dir=mnt, settings={"max_buffer": 200_000})
        run.log({"a": -1})
        assert run._client.flush()
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        with open(filler, "wb") as f:  # leave ~100 KB
            f.write(b"\0" * (free - 100_000))
        done = threading.Event()

        def logger():
            for i in range(20000):
                run.log({"a": i, "b": i * 0.5, "pad": "p" * 64})
            done.set()

        t = threading.Thread(target=logger)
        t.start()
        info = discovery.read_info(ts.daemon_dir)
        assert wait_for(lambda: any(r.get("error") for r in daemon_status(info)["runs"]), timeout=30)
        assert not done.is_set()  # backpressure: log() waits while nothing is acknowledged
        filler.unlink()
        t.join(120)
        assert done.is_set()
        run.finish()
        rows = trackside.Api(run.root).run(run.id).history()
        assert [r["a"] for r in rows] == list(range(-1, 20000))
    finally:
        stop_daemon(ts.daemon_dir)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_merge_window_stores_rows_held_back_by_a_silent_writer(ts):
    """A rank that stops in the middle of a step (hung, not dead) holds rows back only for
    the merge window; then the daemon stores them while the run is live."""
    run = start_run(settings={"merge_window": 1.0})
    code = """
import os, time, trackside
os.environ["RANK"] = "1"
run = trackside.init()
run.log({"r1": 1}, step=0, commit=False)  # stays in step 0
assert run._client.flush()
print("ready", flush=True)
time.sleep(30)
"""
    p = subprocess.Popen(
        [sys.executable, "-c", code], env=dict(os.environ, TRACKSIDE_RUN_ID=run.id), stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "ready"
        for step in range(5):
            run.log({"r0": step}, step=step, commit=True)
        assert run._client.flush()
        api = trackside.Api(ts.root)
        assert wait_for(lambda: len(api.run(run.id).history()) == 5, timeout=15)
        rows = api.run(run.id).history()
        assert rows[0] == {**rows[0], "r0": 0, "r1": 1}
    finally:
        p.kill()
        p.wait()


# -- the run stream in-process: backlog order, memory, backpressure ---------------------------------

import asyncio
import concurrent.futures

from trackside import _native as codec
from trackside.daemon import stream as stream_mod
from trackside.daemon.sink import StoreHandle
from trackside.daemon.stream import RunStream
from trackside.daemon.wal import WAL
from trackside.contracts.protocol import Ack, Done, Event, encode_event
from trackside._native.constants import RECORD_EVENT

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
    """The most rows the stream's merger held pending after any add."""
    seen = [0]
    add = stream.merger.add

    def counting_add(*a, **kw):
        add(*a, **kw)
        seen[0] = max(seen[0], stream.merger.pending())

    stream.merger.add = counting_add
    return seen


async def settle(stream, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not stream.settled():
        assert time.monotonic() < deadline, "the stream did not settle"
        await asyncio.sleep(0.01)


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
        ca, cb = FakeConn(A), FakeConn(B)
        stream.attach(ca, A)
        stream.attach(cb, B)
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
        await asyncio.sleep(0.05)
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
    backlog for one merge window, then are stored."""
    monkeypatch.setattr(stream_mod, "MERGE_LEAD", 50)

    async def main():
        stream, close = open_stream(tmp_path, merge_window=0.5)
        await stream.start()
        ca, cb = FakeConn(A), FakeConn(B)
        stream.attach(ca, A)
        stream.attach(cb, B)
        stream.accept(cb, B, 1, codec.encode_batch(B, 1, [(0, False, 0, {"b": 0.0}, None)]))
        await settle(stream)
        for i in range(10):
            stream.accept(ca, A, i + 1, batch(A, i + 1, range(i * 100, i * 100 + 100), "a"))
        await settle(stream)
        held = stream.status()["merge_backlog"]
        t0 = time.monotonic()
        while stream.status()["merge_backlog"] and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # the ticker lets the rows go
        rows = await stream._store_call(lambda: trackside.Api(str(tmp_path)).run("r1").history_rows)
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
        ca, cb = FakeConn(A), FakeConn(B)
        stream.attach(ca, A)
        stream.attach(cb, B)
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
