"""The sidecar daemon: one per host and user, on uvloop.

It listens on a Unix socket (``trackside.contracts.protocol`` frames) and on gRPC (loopback), keeps a
``RunStream`` per live run, and shuts down in order: on SIGTERM or SIGINT it stops taking work,
drains every stream (commit, merge, store), fsyncs and closes; a second signal exits at once.
With no run and no connection for ``idle_timeout`` seconds it exits by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import fcntl
import gc
import logging
import os
import signal
import sys
import time

import msgspec

from trackside.contracts import discovery, names
from trackside.contracts.version import __version__
from trackside.contracts.private import restrict
from trackside.contracts.protocol import (
    LENGTH,
    MAX_FRAME,
    PROTOCOL_VERSION,
    Batch,
    Hello,
    Refused,
    StatusQuery,
    StatusReply,
    Welcome,
    client_decoder,
    pack,
)

from . import registry
from .metrics import start_metrics
from .signals import drain_on_signals
from .sink import GC_THRESHOLD, StoreHandle, run_info
from .records import BadRecord
from .stream import RunStream
from .sysmetrics import Sampler

log = logging.getLogger("trackside.daemon")


class AlreadyRunning(RuntimeError):
    pass


class Connection:
    """One writer's socket: frames in, acks out; closed alone when its frames are bad."""

    __slots__ = ("writer", "stream", "writer_id", "peer", "rank", "records", "bytes")

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.stream: RunStream | None = None
        self.writer_id = 0
        self.peer = "?"
        self.rank = None
        self.records = 0  # batches accepted on this connection, for `trackside top`
        self.bytes = 0

    def send(self, msg) -> None:
        if not self.writer.is_closing():
            self.writer.write(pack(msg))

    def refuse(self, reason: str) -> None:
        log.warning("closing connection of writer %s (pid %s): %s", self.writer_id, self.peer, reason)
        self.send(Refused(reason))
        self.writer.close()


class Daemon:
    def __init__(
        self,
        folder: str | None = None,
        *,
        idle_timeout: float = 30.0,
        grpc_port: int | None = 0,
        grpc_host: str = "127.0.0.1",
        system_metrics: bool = True,
        sample_interval: float = 1.0,
        log_interval: float = 10.0,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ):
        self.folder = folder or discovery.daemon_dir()
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self._metrics = None
        self.idle_timeout = idle_timeout
        self.grpc_port = grpc_port
        self.grpc_host = grpc_host
        self.socket = discovery.socket_path(self.folder)
        self.streams: dict[str, RunStream] = {}
        self.stores: dict[str, StoreHandle] = {}
        self.connections: set[Connection] = set()
        self.io_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="wal")
        self._stop = None
        self._last_busy = time.monotonic()
        self._lock_fd = None
        self._grpc = None
        self._opening: dict[str, asyncio.Lock] = {}
        self._store_opening: dict[str, asyncio.Lock] = {}  # root -> held while its store opens
        # one sampler for the host, shared by every run (defaults for runs that set no intervals)
        # (a run whose training writers all finished is no longer sampled: see _idle_watch)
        self.sampler = Sampler(
            lambda: [s for s in self.streams.values() if not s.system_done],
            enabled=system_metrics,
            sample_interval=sample_interval,
            log_interval=log_interval,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(os.path.join(self.folder, discovery.LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = discovery.read_info(self.folder) or {}
            raise AlreadyRunning(
                f"a trackside daemon is already running for {self.folder} (pid {info.get('pid', '?')}); "
                f"stop it with `trackside daemon stop` or use another TRACKSIDE_DAEMON_DIR"
            ) from None
        self._lock_fd = fd

    async def serve(self) -> None:
        """Run until told to stop, a signal, or idleness; then shut down in order."""
        self._take_lock()
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        drain_on_signals(loop, self._stop, log)
        if os.path.exists(self.socket):
            os.unlink(self.socket)  # we hold the lock: whatever is there is stale
        old_umask = os.umask(0o177)  # the socket is born 0600
        try:
            server = await asyncio.start_unix_server(self._handle, path=self.socket, limit=MAX_FRAME)
        finally:
            os.umask(old_umask)
        os.chmod(self.socket, 0o600)
        grpc_port = None
        if self.grpc_port is not None:
            # lazy: grpc (~50 ms) only with --grpc-port; init() waits for the daemon to start
            from .grpc_service import start_grpc

            self._grpc, grpc_port = await start_grpc(self, self.grpc_host, self.grpc_port)
        metrics = None
        if self.metrics_port is not None:
            self._metrics, port = start_metrics(self, loop, self.metrics_host, self.metrics_port)
            metrics = f"{self.metrics_host}:{port}"
        discovery.write_info(
            self.folder,
            {
                "pid": os.getpid(),
                "socket": self.socket,
                "grpc": f"{self.grpc_host}:{grpc_port}" if grpc_port else None,
                "version": __version__,
                "started": time.time(),
                "metrics": metrics,
            },
        )
        log.info("trackside daemon %s listening on %s (gRPC %s)", __version__, self.socket, grpc_port)
        await self._resume_runs()
        idle = asyncio.create_task(self._idle_watch())
        self.sampler.start()
        try:
            await self._stop.wait()
        finally:
            idle.cancel()
            server.close()
            if self._grpc is not None:
                await self._grpc.stop(grace=0.5)
            if self._metrics is not None:
                self._metrics.shutdown()
            await self._shutdown()
            discovery.remove_info(self.folder, os.getpid())
            try:
                os.unlink(self.socket)
            except FileNotFoundError:
                pass

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _shutdown(self) -> None:
        for conn in list(self.connections):
            conn.writer.close()
        try:  # each run's last system-metrics window, while the stores are open; NVML shut down
            await self.sampler.stop()
        except Exception:
            log.exception("stopping the system-metrics sampler failed")
        for stream in list(self.streams.values()):
            try:
                await stream.close()
                if stream.complete():
                    registry.remove(self.folder, stream.run_id)
            except Exception:
                log.exception("run %s: error while draining", stream.run_id)
        self.streams.clear()
        for handle in self.stores.values():
            handle.close()
        self.stores.clear()
        self.io_pool.shutdown()

    async def _idle_watch(self) -> None:
        while True:
            await asyncio.sleep(min(0.2, max(self.idle_timeout / 4, 0.05)))
            now = time.monotonic()
            for run_id, stream in list(self.streams.items()):
                if not stream.system_done and not stream.local and stream.training_done():
                    # the host's system metrics end with the run's training writers: their
                    # last rows and their finish go into the WAL, and nothing holds the run open
                    stream.system_done = True
                    try:
                        await self.sampler.close_run(stream)
                        stream.finish_system()
                    except Exception:
                        log.exception("run %s: ending its system metrics failed", run_id)
                if not stream.idle():
                    stream.idle_since = None
                    continue
                if stream.idle_since is None:
                    stream.idle_since = now
                # every writer said finish; or the writers vanished (killed) long enough ago
                # (uploads refused for good: kept for the idle timeout, so `trackside status` says why)
                done = stream.done() and not (stream.uploader is not None and stream.uploader.error)
                if done or now - stream.idle_since > max(self.idle_timeout, 5.0):
                    try:
                        await self._close_stream(run_id)
                    except Exception:
                        log.exception("run %s: closing its stream failed", run_id)
            if self.connections or self.streams:
                self._last_busy = time.monotonic()
            elif self.idle_timeout > 0 and time.monotonic() - self._last_busy > self.idle_timeout:
                log.info("idle for %.0f s: exiting", self.idle_timeout)
                self._stop.set()
                return

    async def _close_stream(self, run_id: str) -> None:
        stream = self.streams.pop(run_id)
        await self.sampler.close_run(stream)  # its last system-metrics window, before the store may close
        await stream.close()
        if stream.complete():
            registry.remove(self.folder, run_id)
        if not stream.local:
            return
        handle = self.stores[stream.root]
        handle.runs -= 1
        if handle.runs == 0:
            del self.stores[stream.root]
            handle.close()

    # -- runs ------------------------------------------------------------------------------------

    async def open_stream(self, hello: Hello) -> RunStream:
        return await self._open_run(hello.run_id, hello.root, hello.run_info)

    async def _open_run(self, run_id: str, root: str, info: dict) -> RunStream:
        try:
            names.check_run_id(run_id)
        except names.BadName as e:
            raise BadRecord(str(e)) from None
        if not isinstance(root, str) or not os.path.isabs(root):
            raise BadRecord(f"run root {root!r} must be an absolute path")
        check_run_info(info)
        if info.get("project") is not None:
            try:
                names.check_project(info["project"])
            except names.BadName as e:
                raise BadRecord(str(e)) from None
        dest = info.get("dest") or "local"
        if dest not in ("local", "offline") and not str(dest).startswith(("grpc://", "grpcs://")):
            raise BadRecord(f"destination {dest!r} is not 'local', 'offline' or a grpc:// or grpcs:// URL")
        lock = self._opening.setdefault(run_id, asyncio.Lock())
        async with lock:
            stream = self.streams.get(run_id)
            if stream is not None:
                if stream.root != root:
                    raise BadRecord(f"run {run_id} is already live under {stream.root}, not {root}")
                return stream
            loop = asyncio.get_running_loop()
            run_dir = os.path.join(root, "runs", run_id)
            # the writer's server token stays in memory: never in run.json, the WAL or an upload
            token = info.get("token")
            info = {k: v for k, v in info.items() if k != "token"}
            # the run's info beside its WAL (sync reads it) and in the registry (a restart resumes it)
            info = await loop.run_in_executor(None, run_info, run_dir, info)
            if token:
                info = {**info, "token": token}
            await loop.run_in_executor(None, registry.add, self.folder, run_id, root)
            handle = None
            if dest == "local":  # offline and uploading runs keep no store on this host
                # one store per root, opened once: runs of one root opening at the same moment
                # (another run's lock) wait here for the first one's store, not open their own
                async with self._store_opening.setdefault(root, asyncio.Lock()):
                    handle = self.stores.get(root)
                    if handle is None:
                        handle = await loop.run_in_executor(None, StoreHandle, root)
                        self.stores[root] = handle
                    handle.runs += 1
            stream = RunStream(
                run_id, root, run_dir, info, handle and handle.store, handle and handle.call, self.io_pool
            )
            try:
                await stream.start()
            except BaseException:
                if handle is not None:
                    handle.runs -= 1
                raise
            self.streams[run_id] = stream
            return stream

    async def _resume_runs(self) -> None:
        """Reopen the runs a previous daemon left unfinished (not all stored, not all uploaded):
        each replays its WAL from its cursor and closes once idle."""
        for run_id, root in registry.entries(self.folder):
            run_dir = os.path.join(root, "runs", run_id)
            if not os.path.isdir(os.path.join(run_dir, "wal")):
                registry.remove(self.folder, run_id)  # the run folder is gone: nothing to resume
                continue
            try:
                await self._open_run(run_id, root, {})
                log.info("run %s: resumed", run_id)
            except Exception:
                log.exception("run %s: cannot resume it", run_id)

    # -- the Unix socket -----------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer)
        self.connections.add(conn)
        try:
            hello = await self._read(reader)
            if isinstance(hello, StatusQuery):
                conn.send(StatusReply(self.status()))
                await writer.drain()
                writer.close()
                return
            if hello is None:
                return  # closed before its first frame: a probe (`trackside daemon start`), not a client
            if not isinstance(hello, Hello):
                return conn.refuse("the first frame must be hello")
            conn.writer_id, conn.peer, conn.rank = hello.writer, hello.pid, hello.rank
            if hello.protocol != PROTOCOL_VERSION:
                return conn.refuse(
                    f"protocol version {hello.protocol} is not supported (this daemon speaks {PROTOCOL_VERSION})"
                )
            try:
                stream = await self.open_stream(hello)
            except (BadRecord, OSError, ValueError, TypeError) as e:
                return conn.refuse(f"cannot open run {hello.run_id}: {e}")
            except Exception as e:  # a hello nothing above foresaw: still a reason, never a silent close
                log.exception("run %s: cannot open it", hello.run_id)
                return conn.refuse(f"cannot open run {hello.run_id}: {type(e).__name__}: {e}")
            conn.stream = stream
            stream.attach(conn, hello.writer)
            stream.add_pid(hello.pid, hello.rank)
            self.sampler.wake()
            conn.send(Welcome(PROTOCOL_VERSION, stream.seqs.get(hello.writer, 0), stream.dir, stream.next_step))
            stream.welcomed(conn, hello.writer)
            while True:
                msg = await self._read(reader)
                if msg is None:
                    return
                if not isinstance(msg, Batch):
                    return conn.refuse(f"unexpected {type(msg).__name__} frame after hello")
                try:
                    stream.accept(conn, hello.writer, msg.seq, msg.record)
                except (BadRecord, ValueError) as e:
                    return conn.refuse(str(e))
                conn.records += 1
                conn.bytes += len(msg.record)
        except _FrameError as e:
            conn.refuse(str(e))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # one client's bad luck never takes the daemon down
            log.exception("connection of writer %s failed", conn.writer_id)
            conn.writer.close()
        finally:
            self.connections.discard(conn)
            if conn.stream is not None:
                conn.stream.detach(conn)
                conn.stream.remove_pid(conn.peer)
            self._last_busy = time.monotonic()

    @staticmethod
    async def _read(reader: asyncio.StreamReader):
        try:
            head = await reader.readexactly(4)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise _FrameError("connection closed inside a frame header") from None
            return None
        (n,) = LENGTH.unpack(head)
        if n > MAX_FRAME:
            raise _FrameError(f"frame of {n} bytes exceeds the limit of {MAX_FRAME}")
        try:
            body = await reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise _FrameError(f"connection closed inside a frame ({n} bytes announced)") from None
        try:
            return client_decoder.decode(body)
        except msgspec.DecodeError as e:
            raise _FrameError(f"malformed frame: {e}") from None

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "connections": len(self.connections),
            "runs": [dict(s.status(), writer_stats=self._writer_stats(s)) for s in self.streams.values()],
            "system_metrics": self.sampler.status(),
        }

    def _writer_stats(self, stream: RunStream) -> list:
        """Per connected writer of ``stream``: batches and bytes accepted on its connection."""
        return [
            {"writer": c.writer_id, "pid": c.peer, "rank": c.rank, "records": c.records, "bytes": c.bytes}
            for c in self.connections
            if c.stream is stream
        ]


class _FrameError(Exception):
    pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="trackside-daemon", description="the trackside sidecar daemon")
    p.add_argument("--dir", help="daemon folder (default: $TRACKSIDE_DAEMON_DIR or a per-user runtime folder)")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=float(os.environ.get("TRACKSIDE_IDLE_TIMEOUT", 30)),
        help="exit after this many seconds without runs (0: never)",
    )
    p.add_argument("--grpc-port", type=int, default=0, help="gRPC port on loopback (0: any free port)")
    p.add_argument("--no-grpc", action="store_true", help="do not start the gRPC listener")
    p.add_argument(
        "--detach",
        action="store_true",
        help="fork into the background (the parent returns at once; the daemon is nobody's child)",
    )
    p.add_argument("--log-level", default=os.environ.get("TRACKSIDE_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--sample-interval",
        type=float,
        default=1.0,
        help="seconds between system-metrics samples, for runs that set no system_sample_interval",
    )
    p.add_argument(
        "--log-interval",
        type=float,
        default=10.0,
        help="seconds of samples aggregated into one stored row, for runs that set no system_log_interval",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics (the figures of `trackside top`) on this port (0: any free port)",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics endpoint (default: loopback)")
    p.add_argument(
        "--no-system-metrics",
        action="store_true",
        help="sample no system metrics (CPU, memory, disk, network, GPUs) for any run",
    )
    args = p.parse_args(argv)
    # collect rarely (GC_THRESHOLD's reasons), and keep what start-up loaded out of the
    # collector's sight (gc.freeze below)
    gc.set_threshold(*GC_THRESHOLD)
    # a daemon spawned from an SDK background thread inherits that thread's blocked signals
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    for flag in ("sample_interval", "log_interval"):
        if not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} must be a positive number of seconds, not {getattr(args, flag)}")
    if args.detach and os.fork() > 0:
        os._exit(0)  # the spawner reaps this parent at once; the daemon never becomes a zombie
    if args.detach:
        os.setsid()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # what the daemon writes (stores, run folders, media) holds its users' runs: theirs only
    os.umask(0o077)
    folder = discovery.daemon_dir() if args.dir is None else os.path.abspath(args.dir)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    restrict(os.path.join(folder, "daemon.log"))  # the spawner made it with its own umask
    daemon = Daemon(
        folder,
        idle_timeout=args.idle_timeout,
        grpc_port=None if args.no_grpc else args.grpc_port,
        system_metrics=not args.no_system_metrics,
        sample_interval=args.sample_interval,
        log_interval=args.log_interval,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    try:
        import uvloop  # optional: uvloop (not on Windows)
    except ImportError:  # uvloop is a dependency, but never let its absence stop logging
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        gc.freeze()
        runner(daemon.serve())
    except AlreadyRunning as e:
        print(f"trackside daemon: {e}", file=sys.stderr)
        return 2
    return 0


_TEXT_FIELDS = ("project", "name", "group", "job_type")


def check_run_info(info) -> None:
    """A hello's run info, as far as the daemon relies on it; BadRecord says what is wrong."""
    if not isinstance(info, dict):
        raise BadRecord(f"run info must be a map, not {type(info).__name__}")
    for key in _TEXT_FIELDS:
        if info.get(key) is not None and not isinstance(info[key], str):
            raise BadRecord(f"run info {key!r} must be a string, not {type(info[key]).__name__}")
    tags = info.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise BadRecord(f"run info 'tags' must be a list of strings, not {tags!r}")
    settings = info.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise BadRecord(f"run info 'settings' must be a map, not {type(settings).__name__}")
    dest = info.get("dest")
    if dest is not None and not isinstance(dest, str):
        raise BadRecord(f"run info 'dest' must be a string, not {type(dest).__name__}")
