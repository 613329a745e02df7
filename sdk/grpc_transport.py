"""The writer's link to the daemon over gRPC (``init(settings={"transport": "grpc"})``).

Everything but the connection is ``transport.Client``'s: the same batches encoded in the
caller, the same sequence numbers, acknowledgements, resends after a reconnect and bounded
buffer. Only the wire differs: ``trackside.v1.Ingest.Open`` says hello, then one
bidirectional ``Send`` stream carries the batches up and the acks (and the writer's done)
back. The daemon listens on loopback; its address comes from its ``daemon.json`` (the same
discovery as the Unix socket), or from ``TRACKSIDE_DAEMON_GRPC`` (``host:port``) when the
writer cannot see the daemon's folder (a container sharing the host's network, say).

Useful where a Unix socket cannot be shared; the socket is the faster path on one host. A
process forked from a gRPC writer writes over the socket (gRPC does not survive fork()), unless
only ``TRACKSIDE_DAEMON_GRPC`` leads to the daemon.
"""

from __future__ import annotations

import os
import queue
import threading
import time

import grpc
import msgspec

from .contracts import discovery
from .contracts.protocol import PROTOCOL_VERSION, Welcome
from .proto.trackside.v1 import trackside_pb2 as pb
from .proto.trackside.v1 import trackside_pb2_grpc as pb_grpc
from .transport import Client, Refusal, TransportError, _block_signals, ensure_daemon

ENV_ADDRESS = "TRACKSIDE_DAEMON_GRPC"


class _Link:
    """One Send stream: the queue its requests come from, and the channel under it. Stands
    where the Unix-socket client keeps its socket (``shutdown``/``close`` end it)."""

    def __init__(self, channel, requests: queue.SimpleQueue):
        self.channel = channel
        self.requests = requests

    def shutdown(self, how=None) -> None:
        self.requests.put(None)  # ends the request stream: the daemon sees the writer leave

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


class GrpcClient(Client):
    """``Client`` over the daemon's gRPC listener."""

    def _address(self) -> str:
        address = os.environ.get(ENV_ADDRESS)
        if address:
            return address
        ensure_daemon(self.folder).close()  # starts the host's daemon when none runs
        deadline = time.monotonic() + 10
        while True:  # the socket answers a moment before daemon.json names the gRPC port
            address = (discovery.read_info(self.folder) or {}).get("grpc")
            if address:
                return address
            if time.monotonic() > deadline:
                raise TransportError(f"the trackside daemon of {self.folder} has no gRPC listener")
            time.sleep(0.02)

    def _connect(self) -> None:
        address = self._address()
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.IngestStub(channel)
        hello = pb.Hello(
            protocol=PROTOCOL_VERSION,
            run_id=self.run_id,
            writer=self.writer,
            pid=os.getpid(),
            rank=self.rank,
            run_info=msgspec.msgpack.encode({**self.run_info, "root": self.root}),
        )
        try:
            w = stub.Open(hello, timeout=30)
        except grpc.RpcError as e:
            channel.close()
            if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                raise Refusal(f"the trackside daemon refused run {self.run_id}: {e.details()}") from None
            raise OSError(f"gRPC {address}: {e.code().name}: {e.details()}") from None  # retried
        self.welcome = Welcome(w.protocol, w.acked_seq, w.run_dir, w.next_step)
        requests: queue.SimpleQueue = queue.SimpleQueue()
        resend, gen = self._welcomed(w.acked_seq)
        link = _Link(channel, requests)
        self._send(link, resend)
        responses = stub.Send(iter(requests.get, None))
        self._sock = link
        threading.Thread(target=self._grpc_reader, args=(responses, gen), name="trackside-acks", daemon=True).start()

    def _send(self, link: _Link, records) -> None:
        for seq, record in records:
            link.requests.put(pb.Batch(run_id=self.run_id, writer=self.writer, seq=seq, record=record))

    def _grpc_reader(self, responses, gen: int) -> None:
        _block_signals()
        try:
            for ack in responses:
                with self._acked:
                    if gen != self._gen:
                        return
                    if ack.done:
                        self._done_seq = max(self._done_seq, ack.seq)
                        self._acked.notify_all()
                    else:
                        self._ack(ack.seq)
        except grpc.RpcError as e:
            if gen != self._gen or self._closing:
                return
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:  # the daemon refused a batch: say why
                self._fail(f"the trackside daemon closed this writer's connection: {e.details()}")
                return
            with self._acked:  # as the socket reader: a reconnect that won meanwhile is not undone
                if gen != self._gen:
                    return
                self._lost = True  # the flusher reconnects and resends what is not acked
            self._wake.set()
        except Exception:  # anything else ends this stream too: reconnect, never a silent dead reader
            with self._acked:
                lost = gen == self._gen and not self._closing
                if lost:
                    self._lost = True
            if lost:
                self._wake.set()

    def after_fork(self) -> None:
        # a gRPC channel is not the child's to use (nor to close): forget it, start afresh
        self._sock = None
        self._init_state()
        if not os.environ.get(ENV_ADDRESS):
            # gRPC does not survive fork() while its threads run (its fork handlers are skipped,
            # and a new channel in the child now and then never delivers): a forked child that
            # can see the daemon's folder writes over its Unix socket instead
            self.__class__ = Client
