"""The daemon with real writer processes: merging across ranks, crashes of the daemon and of
writers, bad frames, a second daemon, permissions, gRPC, shutdown."""

import json
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
from trackside import discovery
from trackside._native.constants import RECORD_LOG
from trackside.protocol import PROTOCOL_VERSION, Batch, Hello, Refused, Welcome, pack, server_decoder

from conftest import run_script, stop_daemon

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


def daemon_pid(ts) -> int:
    return discovery.read_info(ts.daemon_dir)["pid"]


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
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(r), str(steps), mode], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(1, n + 1)]
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
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
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


@pytest.mark.parametrize("garbage,reason", [
    (struct.pack("<I", 1 << 30), "exceeds the limit"),
    (struct.pack("<I", 5) + b"\xc1\xc1\xc1\xc1\xc1", "malformed frame"),
    (pack(Batch(1, b"not a record at all")), "no record marker"),
    (struct.pack("<I", 100) + b"short", None),  # truncated, then the client goes away
])
def test_bad_frame_closes_only_that_connection(ts, garbage, reason):
    run = start_run()
    run.log({"a": 1})
    s = raw_connect(ts)
    assert isinstance(hello(s, "rawrun", ts.root), Welcome)
    s.sendall(garbage)
    if reason is None:
        s.shutdown(socket.SHUT_WR)
        assert read_msg(s) is None or True
    else:
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
    p = subprocess.run([sys.executable, "-m", "trackside.daemon", "--dir", ts.daemon_dir], capture_output=True,
                       text=True, timeout=30)
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
        batches = [pb.Batch(run_id="viagrpc", writer=5, seq=i,
                            record=codec.encode_batch(5, i, [(i - 1, True, 1_000_000 * i, {"g": i}, None)]))
                   for i in range(1, 4)]
        acks = [a.seq for a in stub.Send(iter(batches))]
        assert acks and acks[-1] == 3
    run = trackside.Api(ts.root).run("viagrpc")
    assert wait_for(lambda: [r["g"] for r in run.history()] == [1, 2, 3])


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
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, TRACKSIDE_RUN_ID=run.id),
                         stdout=subprocess.PIPE, text=True)
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
