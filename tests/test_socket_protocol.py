"""The daemon's Unix-socket protocol with hand-made frames: hello and ``Welcome``, an unknown
protocol version, bad frames (too long, malformed, not a record, cut short) and a batch whose
record claims another writer: each is refused with a reason and costs only its own
connection."""

import os
import socket
import struct

import pytest

import trackside
from trackside.contracts import discovery
from trackside.contracts.protocol import PROTOCOL_VERSION, Batch, Hello, Refused, Welcome, pack, server_decoder

from conftest import start_run


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
