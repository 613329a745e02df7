"""``trackside server``: the team destination.

Daemons (through their uploaders) and ``trackside sync`` send the records of their runs' WALs
to the ``trackside.v1.Upload`` service; a ``LocalSink`` stores each record exactly once and
runs the same pipeline as a live run (merge, summary, store), so a run read back from the
server is the run the daemon would have stored. ``trackside.Api("grpc://host:port")`` reads
runs back through ``trackside.v1.Read``, a whitelisted set of the local ``Api``'s calls.

Security (DESIGN §10): the server binds loopback unless told otherwise, and a non-loopback
bind refuses to start without a token; with a token, every call must carry the metadata
``authorization: Bearer <token>``. ``--tls-cert``/``--tls-key`` encrypt the connection.

Several servers on one PostgreSQL database and one shared root (``--shared``) form a tier: any
of them takes any upload, and each run is stored by one of them at a time
(``server/shared.py``, docs/multiserver.md).

Shutdown in order: SIGTERM or SIGINT stops taking calls, lets the calls in flight finish, then
drains the sink (every acknowledged batch is durable already; what is not yet in the store is
stored) and closes the store. A second signal exits at once: the WAL still holds everything
acknowledged, and the next start stores it.

    trackside server --root /data/trackside --host 0.0.0.0 --token "$TOKEN" --tls-cert c.pem --tls-key k.pem
    python -m trackside.server.team_server --port 0 --info-file server.json
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import hashlib
import hmac
import inspect
import json
import logging
import os
import re
import sys
import tempfile
import threading

import grpc
import msgspec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from trackside.contracts.version import __version__
from trackside.proto.trackside.v1 import trackside_pb2 as pb
from trackside.proto.trackside.v1 import trackside_pb2_grpc as pb_grpc

from trackside.api import RUN_FIELDS
from trackside.contracts.constants import SERVER_PORT
from trackside.contracts.network import is_loopback
from trackside.daemon.signals import drain_on_signals
from trackside.server.options import add_server_arguments
from trackside.daemon.sink import GC_THRESHOLD, LocalSink, SinkBusy, check_file_path
from trackside.store import StoreError
from trackside.store.dialect import is_postgres
from trackside.store.sampling import to_wire
from trackside.server.shared import SharedSink
from trackside.daemon.records import BadRecord
from trackside.api import Api
from trackside.artifacts import run_table_artifact

log = logging.getLogger("trackside.server")

# An upload batch is at most 16 MiB of records; the limit leaves room for the envelope and
# for a page of read results.
MAX_MESSAGE = 64 * 1024 * 1024
FILE_CHUNK = 1024 * 1024  # GetFile streams files in pieces of this size
PAGE_ITEMS = 1000  # Scan sends results in pages of at most this many items ...
PAGE_BYTES = 4 * 1024 * 1024  # ... or about this many bytes, whichever comes first
CHUNK_WAIT = 120.0  # seconds PutFile waits for the next chunk before it gives the file up
SIZE_HEADER = "trackside-file-size"  # PutFile metadata, required: the file's size, checked before it is kept
ERROR_HEADER = "trackside-error"  # trailing metadata of a refused read: the exception's class name
STORE_NAME = "the server's store"  # what messages call the store: a client never learns its path
SHA256_NAME = re.compile(r"[0-9a-f]{64}")  # media and artifact files are named by their SHA-256
STOP_GRACE = 10.0  # seconds calls in flight get to finish at shutdown
SERVICES = ("trackside.v1.Upload", "trackside.v1.Read", "trackside.v1.Edit")

_encode = msgspec.msgpack.Encoder().encode
_decode_args = msgspec.msgpack.Decoder(dict[str, object]).decode


class ConfigError(ValueError):
    """The server will not start as configured (the message says what to change)."""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


# -- the read-back calls ---------------------------------------------------------------------------
# Each Read call names one of these functions; its msgpack arguments are their keyword
# arguments. Nothing else of the server's Api can be reached.


def _run_fields(run) -> dict:
    fields = {f: getattr(run, f) for f in RUN_FIELDS}
    fields.update(config=run.config, summary=dict(run.summary), metadata=run.metadata, notes=run.notes)
    return fields


def _runs(api, project=None, filters=None, order=None, offset=0, limit=None):
    """A page of ``Api.runs``: the runs from ``offset`` (at most ``limit``; all when None)."""
    runs = api.runs(project, filters=filters, order=order, per_page=max(1, min(int(limit or 1000), 1000)))
    offset = max(0, int(offset))
    if limit is None:
        return [_run_fields(r) for i, r in enumerate(runs) if i >= offset]
    return [_run_fields(r) for r in runs[offset : offset + max(0, int(limit))]]


def _count_runs(api, project=None, filters=None):
    return len(api.runs(project, filters=filters))


def _run(api, run_id):
    return _run_fields(api.run(run_id))


def _keys(api, run_id):
    return api.run(run_id).keys()


def _series(api, run_id, key, min_step=None, max_step=None):
    return to_wire(api.run(run_id).series(key, min_step, max_step))


def _buckets(api, run_id, keys=None, samples=1000, min_step=None, max_step=None, x_axis="_step"):
    found = api.run(run_id).buckets(keys, samples, min_step, max_step, x_axis=x_axis)
    return {key: to_wire(b) for key, b in found.items()}


def _buckets_many(api, runs, key, samples=1000, min_step=None, max_step=None, x_axis="_step"):
    found = api.buckets_many(runs, key, samples, min_step, max_step, x_axis=x_axis)
    return {run_id: to_wire(b) for run_id, b in found.items()}


def _tail(api, run_id, keys=None, since=-1, limit=10000):
    return list(api.run(run_id).tail(keys, since, limit))


def _table_keys(api, run_id):
    return api.run(run_id).table_keys()


def _history(api, run_id, keys=None, min_step=None, max_step=None, samples=None, page_size=1000):
    run = api.run(run_id)
    if samples is not None:  # sampling needs every row first
        return run.history(keys, min_step, max_step, samples=samples)
    return run.scan_history(keys, min_step, max_step, page_size=page_size)


def _console_lines(api, run_id, stream=None):
    return [tuple(line) for line in api.run(run_id).console_lines(stream)]


def _system_metrics(api, run_id, keys=None, host=None):
    return api.run(run_id).system_metrics(keys, host)


def _media_files(api, run_id, key=None):
    run = api.run(run_id)
    out = []
    for f in run.media_files(key):
        if f["path"] is not None:  # the server's own path means nothing to a client: the one GetFile takes
            f["path"] = f"runs/{run.id}/" + os.path.relpath(f["path"], run.dir).replace(os.sep, "/")
        out.append(f)
    return out


# Artifacts and tables: the client rebuilds the objects itself from the manifests, fetching
# the files they name with GetFile (paths relative to an entry's ``source`` folder under the root).


def _artifact_fields(art) -> dict:
    return {
        "name": art.name,
        "version": art.version,
        "type": art.type,
        "description": art.description,
        "metadata": art.metadata,
        "aliases": art.aliases,
        "digest": art.digest,
        "run_key": art.run_key,
        "step": art.step,
        "increment": art.increment,
        "manifest": art.manifest,
    }


def _artifact(api, name, type=None):
    return _artifact_fields(api.artifact(name, type))


def _artifact_increments(api, name, version):
    """The INCREMENTAL table versions of ``name`` up to ``version``: ``[version, step,
    increment, manifest]`` each (what ``Artifact._increment_rows`` reads locally)."""
    return [list(row) for row in api.artifact(f"{name}:{version}")._increment_rows()]


def _table(api, run_id, key, version=None):
    """The artifact holding the table the run logged under ``key`` and its entry's name."""
    art, entry = run_table_artifact(api, api.run(run_id).id, key, version)
    return {"artifact": _artifact_fields(art), "entry": entry}


def _logged_artifacts(api, run_id):
    return [_artifact_fields(a) for a in api.run(run_id).logged_artifacts()]


QUERIES = {
    "runs": _runs,
    "count_runs": _count_runs,
    "run": _run,
    "keys": _keys,
    "series": _series,
    "buckets": _buckets,
    "buckets_many": _buckets_many,
    "tail": _tail,
    "table_keys": _table_keys,
    "artifact": _artifact,
    "artifact_increments": _artifact_increments,
    "table": _table,
    "logged_artifacts": _logged_artifacts,
}
SCANS = {
    "history": _history,
    "console_lines": _console_lines,
    "system_metrics": _system_metrics,
    "media_files": _media_files,
}


def _pages(items):
    """msgpack arrays of at most PAGE_ITEMS items or about PAGE_BYTES bytes; each item is
    encoded once and the array header written by hand around them."""
    parts: list[bytes] = []
    size = 0
    for item in items:
        b = _encode(item)
        parts.append(b)
        size += len(b)
        if len(parts) >= PAGE_ITEMS or size >= PAGE_BYTES:
            yield _array(parts)
            parts, size = [], 0
    if parts:
        yield _array(parts)


def _array(parts: list[bytes]) -> bytes:
    return b"\xdd" + len(parts).to_bytes(4, "big") + b"".join(parts)  # msgpack array 32


def _read_error(e: BaseException) -> tuple[grpc.StatusCode, str, tuple]:
    """The status, message and trailing metadata a failed read call answers with. A refused
    call names its exception's class in ERROR_HEADER, for the client to raise the same one."""
    kind = ((ERROR_HEADER, type(e).__name__),)
    if isinstance(e, KeyError):  # RunNotFoundError, ArtifactNotFoundError, no media there
        return grpc.StatusCode.NOT_FOUND, str(e.args[0]) if e.args else "not found", kind
    if isinstance(e, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(e), kind
    if isinstance(e, (ValueError, TypeError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e), kind
    if isinstance(e, StoreError):
        return grpc.StatusCode.UNAVAILABLE, f"the server's store: {e}", ()
    log.error("read call failed", exc_info=e)
    return grpc.StatusCode.INTERNAL, f"the server failed: {type(e).__name__}: {e}", ()


# -- services --------------------------------------------------------------------------------------


class UploadService(pb_grpc.UploadServicer):
    def __init__(self, server: "TeamServer"):
        self.server = server

    async def Append(self, request, context):
        sink = self.server.sink
        try:
            info = _decode_args(request.run_info) if request.run_info else {}
            info.pop("dest", None)  # the uploader's destination (this server) means nothing here
            stored, duplicates = await sink.append(request.run_id, info, request.records)
        except (BadRecord, ValueError) as e:  # msgspec.DecodeError and RecordTooLarge are ValueErrors
            problem = f"run {request.run_id!r}: {e}"
        except StoreError as e:  # a shared server's database is away: the client tries another server
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the server's store: {e}")
        else:
            return pb.UploadReply(stored=stored, duplicates=duplicates)
        log.warning("refused an upload: %s", problem)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def MissingFiles(self, request, context):
        loop = asyncio.get_running_loop()
        try:
            missing = await loop.run_in_executor(
                self.server.file_pool, self.server.sink.missing_files, list(request.paths)
            )
        except BadRecord as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.MissingFilesReply(paths=missing)

    async def PutFile(self, request_iterator, context):
        loop = asyncio.get_running_loop()
        chunks = request_iterator.__aiter__()
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "PutFile: the stream carried no chunk")
        path = first.path
        try:
            check_file_path(path)
            expected = int(dict(context.invocation_metadata() or ()).get(SIZE_HEADER, -1))
            if expected < 0:
                raise ValueError(f"the call must carry the metadata {SIZE_HEADER}: the file's size in bytes")
        except (BadRecord, ValueError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"PutFile: {e}")

        async def next_chunk():
            return await chunks.__anext__()

        upload = _Upload()
        self.server.uploads.add(upload)

        def pull():
            if upload.ended.is_set():
                raise BadRecord(f"PutFile {path}: the call ended before the file did; nothing kept")
            pending = upload.pending = asyncio.run_coroutine_threadsafe(next_chunk(), loop)
            if upload.ended.is_set():
                pending.cancel()
            try:
                return pending.result(CHUNK_WAIT)
            except concurrent.futures.TimeoutError:
                pending.cancel()
                raise BadRecord(f"PutFile {path}: no data for {CHUNK_WAIT:.0f} s; nothing kept") from None
            except concurrent.futures.CancelledError:
                raise BadRecord(f"PutFile {path}: the call ended before the file did; nothing kept") from None

        def data():
            # runs in the file thread, which pulls each chunk from the loop as it writes: the
            # client can send no faster than the disk takes the file
            digest = hashlib.sha256(first.data)
            received = len(first.data)
            yield first.data
            while True:
                try:
                    chunk = pull()
                except StopAsyncIteration:
                    break
                if chunk.path and chunk.path != path:
                    raise BadRecord(f"PutFile: one stream carries one file ({path!r}), not also {chunk.path!r}")
                digest.update(chunk.data)
                received += len(chunk.data)
                yield chunk.data
            # a cancelled stream ends like a complete one: only the size the client announced
            # (and the SHA-256 a content-addressed name carries) tells a cut-off file apart
            if received != expected:
                raise BadRecord(f"PutFile {path}: {received} of {expected} bytes arrived; nothing kept")
            name = path.rsplit("/", 1)[-1].split(".", 1)[0]
            if SHA256_NAME.fullmatch(name) and digest.hexdigest() != name:
                raise BadRecord(f"PutFile {path}: the content's SHA-256 differs from the one its name carries")

        try:
            size = await loop.run_in_executor(self.server.file_pool, self.server.sink.put_file, path, data())
        except BadRecord as e:
            problem = str(e)
        except asyncio.CancelledError:  # the client left: free the file thread
            upload.end()
            raise
        else:
            return pb.FileReply(bytes=size)
        finally:
            self.server.uploads.discard(upload)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def Status(self, request, context):
        status = {"version": __version__, "address": self.server.address, **self.server.sink.status()}
        return pb.StatusReply(status=_encode(status))


class _Upload:
    """A PutFile in progress: its file thread waits on ``pending`` for the next chunk."""

    def __init__(self):
        self.ended = threading.Event()
        self.pending: concurrent.futures.Future | None = None

    def end(self) -> None:
        """The call is over (the client left, the server stops): the file thread stops
        waiting and drops the partial file."""
        self.ended.set()
        if self.pending is not None:
            self.pending.cancel()


class ReadService(pb_grpc.ReadServicer):
    def __init__(self, server: "TeamServer"):
        self.server = server

    async def _call(self, request, table: dict, context):
        """The function and keyword arguments a Query or Scan names; aborts for anything else."""
        fn = table.get(request.method)
        if fn is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"no read call {request.method!r}: this server answers {', '.join(sorted(table))}",
            )
        try:
            kwargs = _decode_args(request.args) if request.args else {}
            inspect.signature(fn).bind(None, **kwargs)
        except (msgspec.DecodeError, TypeError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{request.method}: bad arguments: {e}")
        return fn, kwargs

    async def Query(self, request, context):
        fn, kwargs = await self._call(request, QUERIES, context)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.server.read_pool, lambda: _encode(fn(self.server.api, **kwargs)))
        except Exception as e:
            code, message, trailer = _read_error(e)
        else:
            return pb.QueryReply(result=result)
        await context.abort(code, message, trailer)

    async def Scan(self, request, context):
        fn, kwargs = await self._call(request, SCANS, context)
        loop = asyncio.get_running_loop()
        pages = _pages(_lazy(fn, self.server.api, kwargs))
        while True:
            try:
                page = await loop.run_in_executor(self.server.read_pool, next, pages, None)
            except Exception as e:
                code, message, trailer = _read_error(e)
                break
            if page is None:
                return
            yield pb.QueryReply(result=page)
        await context.abort(code, message, trailer)

    async def GetFile(self, request, context):
        loop = asyncio.get_running_loop()
        try:
            f = await loop.run_in_executor(self.server.file_pool, self.server.open_file, request.path)
        except BadRecord as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no file {request.path!r} on this server")
        with f:
            first = True
            while True:
                data = await loop.run_in_executor(self.server.file_pool, f.read, FILE_CHUNK)
                if not data and not first:
                    return
                # the first chunk names the file (and says it exists, even when it is empty)
                yield pb.FileChunk(path=request.path if first else "", data=data)
                first = False


class EditService(pb_grpc.EditServicer):
    """Edits of stored runs, written by the sink's store thread: in order with what the sink
    stores of the same runs (``store/edits.py`` says why they survive later uploads)."""

    def __init__(self, server: "TeamServer"):
        self.server = server

    async def Apply(self, request, context):
        fn = EDITS.get(request.method)
        if fn is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"no edit call {request.method!r}: this server answers {', '.join(sorted(EDITS))}",
            )
        try:
            kwargs = _decode_args(request.args) if request.args else {}
            inspect.signature(fn).bind(None, **kwargs)
        except (msgspec.DecodeError, TypeError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{request.method}: bad arguments: {e}")
        try:
            result = await fn(self.server.sink, **kwargs)
        except Exception as e:
            code, message, trailer = _read_error(e)
        else:
            return pb.QueryReply(result=_encode(result))
        await context.abort(code, message, trailer)


async def _edit_run(sink, run_id, summary=None, summary_del=(), config=None, config_del=(), fields=None):
    store = sink.handle.store
    await sink.handle.call(
        store.edit_run,
        str(run_id),
        summary=summary,
        summary_del=list(summary_del or ()),
        config=config,
        config_del=list(config_del or ()),
        fields=fields,
    )
    return None


async def _delete_run(sink, run_id, force=False):
    run_id = str(run_id)
    if run_id in sink.streams:
        raise ValueError(f"run {run_id!r} is being uploaded to this server: delete it once its uploads have ended")
    return await sink.handle.call(sink.handle.store.delete_run, run_id, force=bool(force))


EDITS = {"edit_run": _edit_run, "delete_run": _delete_run}


def _lazy(fn, api, kwargs):
    """Call ``fn`` only when the first page is asked for (in the read thread), then yield its items."""
    yield from fn(api, **kwargs)


class _TokenCheck(grpc.aio.ServerInterceptor):
    """Every call must carry ``authorization: Bearer <token>``; others end UNAUTHENTICATED."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        given = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if given is None:
            message = "this trackside server requires a token: pass token=... (or set TRACKSIDE_TOKEN) to the client"
        elif hmac.compare_digest(given.encode() if isinstance(given, str) else given, self.expected):
            return handler
        else:
            message = "the token is not the one this trackside server accepts"
        return _refusal(handler, message)


def _refusal(handler, message: str):
    """A handler of the same shape as ``handler`` that ends the call UNAUTHENTICATED."""
    code = grpc.StatusCode.UNAUTHENTICATED

    async def unary(request, context):
        await context.abort(code, message)

    async def streaming(request, context):
        await context.abort(code, message)
        yield  # never reached: makes this a response stream

    ser = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **ser)
    return grpc.stream_stream_rpc_method_handler(streaming, **ser)


# -- the server ------------------------------------------------------------------------------------


class TeamServer:
    """A ``trackside server``: a LocalSink behind the Upload and Read services.

    Raises ConfigError (at construction, or from ``start`` when the port cannot be bound) for
    a configuration it refuses: a non-loopback ``host`` without a token, half a TLS pair, an
    unreadable certificate.
    """

    def __init__(
        self,
        root: str,
        *,
        db: str | None = None,
        host: str = "127.0.0.1",
        port: int = SERVER_PORT,
        token: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        info_file: str | None = None,
        ui_port: int | None = None,
        shared: bool = False,
    ):
        self.root = os.path.abspath(root)
        self.ui_port = ui_port
        self.ui = None  # the web page (trackside.ui.UIServer) once started, with ui_port
        self.ui_api = None  # the page's own reader of the store
        self.db = db
        self.host = host
        self.port = port
        self.token = token or None
        self.info_file = os.path.abspath(info_file) if info_file else None
        if self.token is not None and not (
            self.token.isascii() and self.token.isprintable() and self.token.strip() == self.token
        ):
            raise ConfigError(
                "the token must be printable ASCII without surrounding spaces (it travels as gRPC metadata)"
            )
        if not is_loopback(host) and self.token is None:
            raise ConfigError(
                f"refusing to listen on {host} without a token: anyone who can reach the port could read "
                f"and write runs. Pass --token (or set TRACKSIDE_TOKEN), or listen on 127.0.0.1"
            )
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        self.credentials = None
        if tls_cert is not None:
            pair = []
            for what, path in (("key", tls_key), ("certificate", tls_cert)):
                try:
                    with open(path, "rb") as f:
                        pair.append(f.read())
                except OSError as e:
                    raise ConfigError(f"cannot read the TLS {what} {path}: {e.strerror}") from None
            self.credentials = grpc.ssl_server_credentials([(pair[0], pair[1])])
        elif self.token is not None and not is_loopback(host):
            log.warning(
                "listening on %s with a token but without TLS: the token and the runs travel unencrypted "
                "(add --tls-cert and --tls-key)",
                host,
            )
        if shared and not is_postgres(db):
            raise ConfigError("--shared needs a PostgreSQL database: --db postgresql://...")
        self.sink = SharedSink(self.root, db=db) if shared else LocalSink(self.root, db=db)
        self.api = None
        self.read_pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="read")
        self.file_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="files")
        self.uploads: set[_Upload] = set()  # PutFile calls in progress
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._stop: asyncio.Event | None = None

    @property
    def address(self) -> str:
        return _address(self.host, self.port)

    @property
    def url(self) -> str:
        return f"{'grpcs' if self.credentials else 'grpc'}://{self.address}"

    async def start(self) -> int:
        """Open the store (storing what a previous life left in the WAL) and listen; returns
        the bound port. Call ``close()`` afterwards, also when this raised."""
        try:
            await self.sink.start()
        except SinkBusy as e:
            raise ConfigError(str(e)) from None

        loop = asyncio.get_running_loop()
        kwargs = {"db": self.db} if self.db else {}
        self.api = await loop.run_in_executor(None, lambda: Api(self.root, **kwargs))
        self.api.path = STORE_NAME  # the Api names its path in messages (no run 'x' in PATH), which clients read
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        interceptors = [_TokenCheck(self.token)] if self.token else []
        self._server = server = grpc.aio.server(options=options, interceptors=interceptors)
        pb_grpc.add_UploadServicer_to_server(UploadService(self), server)
        pb_grpc.add_ReadServicer_to_server(ReadService(self), server)
        pb_grpc.add_EditServicer_to_server(EditService(self), server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        target = _address(self.host, self.port)
        try:
            if self.credentials is not None:
                port = server.add_secure_port(target, self.credentials)
            else:
                port = server.add_insecure_port(target)
        except RuntimeError as e:
            port = 0
            reason = str(e)
        else:
            reason = "the address is in use or not this machine's"
        if not port:
            raise ConfigError(f"cannot listen on {target}: {reason}")
        self.port = port
        await server.start()
        if self.ui_port is not None:
            await loop.run_in_executor(None, self._start_ui)
        for name in ("", *SERVICES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.info_file:
            _write_json(
                self.info_file,
                {
                    "pid": os.getpid(),
                    "address": self.address,
                    "url": self.url,
                    "port": port,
                    "root": self.root,
                    "version": __version__,
                    "ui_url": self.ui.url if self.ui is not None else None,
                },
            )
        log.info(
            "trackside server %s listening on %s (store %s, token %s)",
            __version__,
            self.url,
            self.root,
            "required" if self.token else "not required",
        )
        return port

    def _start_ui(self) -> None:
        """Serve the web page beside the server (its own thread and event loop), reading the
        store through an Api of its own, behind the same token."""
        try:
            from trackside.ui import ConfigError as UIConfigError, UIServer  # lazy: the [ui] extra
        except ImportError as e:
            raise ConfigError(f"--ui-port needs {e.name or e}: pip install 'trackside[ui]'") from None
        kwargs = {"db": self.db} if self.db else {}
        api = Api(self.root, **kwargs)
        try:
            self.ui = UIServer(api, self.host, self.ui_port, self.token)
        except (UIConfigError, ImportError) as e:
            api.close()
            raise ConfigError(f"--ui-port: {e}") from None
        self.ui_api = api
        self.ui.start()
        log.info("the web page: http://%s:%d/ (plain HTTP)", self.host, self.ui.port)

    def _stop_ui(self) -> None:
        if self.ui is not None:
            self.ui.stop()
            self.ui = None
        if self.ui_api is not None:
            self.ui_api.close()
            self.ui_api = None

    async def serve(self) -> None:
        """Start, run until ``stop()`` or SIGTERM/SIGINT, then shut down in order; a second
        signal exits at once."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        drain_on_signals(loop, self._stop, log, "signal received: finishing the calls in flight, then draining")
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.close()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def close(self) -> None:
        """Stop taking calls, let those in flight finish, drain the sink, close the store."""
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace=STOP_GRACE)
            self._server = None
        for upload in list(self.uploads):  # calls cut at the end of the grace period
            upload.end()
        await asyncio.get_running_loop().run_in_executor(None, self._stop_ui)
        await self._close_store()
        if self.info_file:
            _remove_own_info(self.info_file)
        log.info("trackside server stopped")

    async def _close_store(self) -> None:
        await self.sink.close()
        if self.api is not None:
            self.api.close()
            self.api = None
        loop = asyncio.get_running_loop()
        for pool in (self.read_pool, self.file_pool):  # waits for their threads, off the loop they may need
            await loop.run_in_executor(None, pool.shutdown)

    def open_file(self, path: str):
        """Open a file under the root for reading, by the path rules of uploads (``runs/<id>/...``
        but not a WAL, or ``artifacts/...``); a symlink cannot lead out of the root."""
        full = os.path.realpath(os.path.join(self.root, check_file_path(path)))
        if not full.startswith(os.path.realpath(self.root) + os.sep):
            raise BadRecord(f"file path {path!r} leads out of the server's root")
        return open(full, "rb")


def _write_json(path: str, data: dict) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the new, never half."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".server-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _remove_own_info(path: str) -> None:
    try:
        with open(path) as f:
            if json.load(f).get("pid") != os.getpid():
                return  # another server took the file over
        os.unlink(path)
    except (OSError, ValueError):
        pass


def main(argv=None, prog: str = "trackside server") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="serve a team's runs: daemons and `trackside sync` upload "
        "to it, trackside.Api('grpc://HOST:PORT') reads from it",
    )
    add_server_arguments(p)
    return serve(p.parse_args(argv), prog)


def serve(args: argparse.Namespace, prog: str = "trackside server") -> int:
    """Run a server with the options of ``add_server_arguments`` until a signal stops it; the
    exit status."""
    if not 0 <= args.port <= 65535:
        print(f"{prog}: --port must be 0 to 65535, not {args.port}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.umask(0o077)  # the store, run folders and files it keeps are its user's only
    token = args.token or os.environ.get("TRACKSIDE_TOKEN") or None
    try:
        server = TeamServer(
            args.root,
            db=args.db,
            host=args.host,
            port=args.port,
            token=token,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            info_file=args.info_file,
            ui_port=args.ui_port,
            shared=args.shared,
        )
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    gc.set_threshold(*GC_THRESHOLD)  # the daemon's pipeline: collect as rarely as a daemon does
    try:
        import uvloop  # optional: uvloop (not on Windows)
    except ImportError:  # uvloop is a dependency, but the server runs without it
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(server.serve())
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m trackside.server.team_server"))
