"""Writers over the daemon's gRPC listener (``settings={"transport": "grpc"}``): the same run as
over the Unix socket, the same promises when the daemon is killed, forks, bad settings; the
listener itself (``trackside.v1.Ingest`` and the health service) with a hand-made client."""

import os
import signal
import subprocess
import sys
import time

import pytest

import trackside
from trackside._run import UsageError
from trackside.contracts import discovery
from trackside.contracts.protocol import PROTOCOL_VERSION

from conftest import daemon_pid, run_script, start_run, wait_until

GRPC = {"transport": "grpc"}


def test_a_run_over_grpc_reads_back_like_one_over_the_socket(ts):
    run = trackside.init(project="p", config={"lr": 0.1}, settings=GRPC)
    for i in range(2000):
        run.log({"loss": 1.0 / (i + 1), "i": i})
    run.log({"late": 1}, step=5)
    run.summary["best"] = 3
    run.finish()
    view = trackside.Api(ts.root).run(run.id)
    rows = view.history()
    assert [r["i"] for r in rows] == list(range(2000))
    assert rows[5]["late"] == 1
    assert view.summary["best"] == 3 and view.config == {"lr": 0.1}
    assert view.state == "finished"


def test_grpc_writer_survives_a_killed_daemon_without_loss_or_duplicates(ts):
    code = """
import sys, time, trackside
run = trackside.init(project="p", settings={"transport": "grpc", "durability": "fsync"})
print(run.id, flush=True)
for step in range(3000):
    run.log({"x": step})
    if step % 100 == 0:
        print(step, flush=True)
    time.sleep(0.0005)
run.finish()
print("done", flush=True)
"""
    p = subprocess.Popen(
        [sys.executable, "-c", code], env=ts.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run_id = p.stdout.readline().strip()
    for line in p.stdout:
        if line.strip().isdigit() and int(line) >= 1000:
            break
    os.kill(daemon_pid(ts), signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "done" in out
    rows = trackside.Api(ts.root).run(run_id).history()
    assert [r["_step"] for r in rows] == list(range(3000))
    assert all(r["x"] == r["_step"] for r in rows)


def test_a_forked_child_of_a_grpc_writer_logs_as_a_writer_of_its_own(ts):
    """gRPC does not survive fork(): the child writes over the daemon's Unix socket."""
    code = """
import os, trackside
run = trackside.init(project="p", settings={"transport": "grpc"})
run.log({"parent": 1}, step=0)
pid = os.fork()
if pid == 0:
    run.log({"child": 2}, step=0)
    assert type(run._client).__name__ == "Client", type(run._client)
    run.finish()
    os._exit(0)
os.waitpid(pid, 0)
run.finish()
print(run.id)
"""
    run_id = run_script(code, ts.env).stdout.split()[-1]
    (row,) = trackside.Api(ts.root).run(run_id).history()
    assert row["parent"] == 1 and row["child"] == 2


def test_an_unknown_transport_is_refused():
    with pytest.raises(UsageError, match="transport='pigeon'"):
        trackside.init(project="p", settings={"transport": "pigeon"})


def test_a_writer_that_cannot_see_the_daemons_folder_finds_it_by_address(ts, tmp_path):
    """TRACKSIDE_DAEMON_GRPC names the daemon's gRPC address: the writer needs nothing else (a
    container sharing the host's network, say), and starts no daemon of its own."""
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "daemon", "start"],
        env=ts.env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    from trackside.contracts import discovery

    address = discovery.read_info(ts.daemon_dir)["grpc"]
    elsewhere = tmp_path / "no-daemon-here"
    env = dict(ts.env, TRACKSIDE_DAEMON_DIR=str(elsewhere), TRACKSIDE_DAEMON_GRPC=address)
    code = """
import trackside
run = trackside.init(project="p", settings={"transport": "grpc"})
for i in range(100):
    run.log({"i": i})
run.finish()
print(run.id)
"""
    run_id = run_script(code, env).stdout.split()[-1]
    assert [r["i"] for r in trackside.Api(ts.root).run(run_id).history()] == list(range(100))
    assert not (elsewhere / "daemon.json").exists()  # no second daemon was started


def test_a_run_opened_over_grpc_waits_for_its_writers_first_send(ts):
    """Open and Send are two calls: on a busy host the Send may come a while after the Open.
    The run stays open for it, not closed as a run whose writers all finished."""
    import grpc
    import msgspec

    from trackside import _native as codec
    from trackside.proto.trackside.v1 import trackside_pb2 as pb
    from trackside.proto.trackside.v1 import trackside_pb2_grpc as pb_grpc

    start_run().finish()  # starts the daemon
    target = discovery.read_info(ts.daemon_dir)["grpc"]
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.IngestStub(ch)
        info = msgspec.msgpack.encode({"root": ts.root, "project": "grpc"})
        stub.Open(pb.Hello(protocol=PROTOCOL_VERSION, run_id="slowsend", writer=7, pid=1, run_info=info))
        time.sleep(1.5)  # several rounds of the daemon's idle check
        batch = pb.Batch(
            run_id="slowsend", writer=7, seq=1, record=codec.encode_batch(7, 1, [(0, True, 1_000_000, {"g": 1}, None)])
        )
        assert [a.seq for a in stub.Send(iter([batch]))][-1] == 1
    wait_until(lambda: [r["g"] for r in trackside.Api(ts.root).run("slowsend").history()] == [1], timeout=20)


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
    wait_until(lambda: [r["g"] for r in trackside.Api(ts.root).run("viagrpc").history()] == [1, 2, 3], timeout=20)
