"""The daemon's gRPC listener (loopback): the ``trackside.v1.Ingest`` service and the standard
health service. It carries the same messages as the Unix socket and feeds the same run streams."""

from __future__ import annotations

import asyncio

import grpc
import msgspec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from trackside.contracts.protocol import PROTOCOL_VERSION, Ack, Done, Hello
from trackside.proto.trackside.v1 import trackside_pb2 as pb
from trackside.proto.trackside.v1 import trackside_pb2_grpc as pb_grpc

from .records import BadRecord

SERVICE = "trackside.v1.Ingest"
SEND_GRACE = 30.0  # seconds a run opened by a writer waits for that writer's Send


class _GrpcConnection:
    """Stands in for a socket connection: acks go to the response stream's queue."""

    def __init__(self, writer: int):
        self.writer_id = writer
        self.queue: asyncio.Queue = asyncio.Queue()

    def send(self, msg) -> None:
        if isinstance(msg, (Ack, Done)):
            self.queue.put_nowait(pb.Ack(writer=self.writer_id, seq=msg.seq, done=isinstance(msg, Done)))


class IngestService(pb_grpc.IngestServicer):
    def __init__(self, daemon):
        self.daemon = daemon

    async def Open(self, request, context):
        if request.protocol != PROTOCOL_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {request.protocol} is not supported (this daemon speaks {PROTOCOL_VERSION})",
            )
        try:
            info = msgspec.msgpack.decode(request.run_info) if request.run_info else {}
            if not isinstance(info, dict):
                raise BadRecord(f"run_info must be a map, not {type(info).__name__}")
            root = info.pop("root", None)
            if not root:
                raise BadRecord("run_info must carry the absolute run root as 'root'")
            hello = Hello(request.protocol, request.run_id, request.writer, request.pid, request.rank, root, info)
            stream = await self.daemon.open_stream(hello)
        except (BadRecord, ValueError, TypeError, OSError, msgspec.DecodeError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot open run {request.run_id}: {e}")
        # the writer's Send is a second call, which a busy host may make a while later
        stream.expect(request.writer, SEND_GRACE)
        return pb.Welcome(
            protocol=PROTOCOL_VERSION,
            acked_seq=stream.seqs.get(request.writer, 0),
            run_dir=stream.dir,
            next_step=stream.next_step,
        )

    async def Send(self, request_iterator, context):
        conn = None
        stream = None
        error: list[str] = []

        async def pump():
            nonlocal conn, stream
            try:
                async for batch in request_iterator:
                    if stream is None:
                        stream = self.daemon.streams.get(batch.run_id)
                        if stream is None:
                            raise BadRecord(f"run {batch.run_id} is not open: call Open first")
                        conn = _GrpcConnection(batch.writer)
                        stream.attach(conn, batch.writer)
                        conn_ready.set()
                    if batch.run_id != stream.run_id or batch.writer != conn.writer_id:
                        raise BadRecord("one Send stream carries one run and one writer")
                    stream.accept(conn, batch.writer, batch.seq, batch.record)
            except (BadRecord, ValueError) as e:
                error.append(str(e))
            finally:
                conn_ready.set()

        conn_ready = asyncio.Event()
        task = asyncio.create_task(pump())
        await conn_ready.wait()
        try:
            if conn is not None:
                # acks (and the writer's done) as they come, until the writer ends its stream
                while True:
                    get = asyncio.ensure_future(conn.queue.get())
                    await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        get.cancel()
                        break
                    yield get.result()
                if not error:  # everything it sent is acknowledged before the stream ends
                    await stream.durable(stream.wal.end_offset)
                while not conn.queue.empty():
                    yield conn.queue.get_nowait()
        finally:
            if conn is not None and stream is not None:
                stream.detach(conn)
            task.cancel()
        if error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error[0])

    async def Status(self, request, context):
        return pb.StatusReply(status=msgspec.msgpack.encode(self.daemon.status()))


async def start_grpc(daemon, host: str, port: int):
    """Start the gRPC server; returns it and the bound port."""
    server = grpc.aio.server()
    pb_grpc.add_IngestServicer_to_server(IngestService(daemon), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, bound
