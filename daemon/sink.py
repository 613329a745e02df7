"""Where uploaded WAL records become stored runs: the ``LocalSink``.

A sink takes the framed records of runs' WALs (from a daemon's uploader, or from ``trackside
sync`` replaying an offline run) and stores them exactly once in a store: the records go
through the same per-run pipeline as a live run in the daemon (``RunStream``: its own WAL,
merge across writers, summary, materialize), so a run read back from a server or a synced
store is the run the daemon would have stored.

Exactly once: a record is identified by its ``(writer, seq)``. The sink's WAL of a run knows
the highest seq of every writer it holds (recovered at start), so a retried or replayed batch
appends nothing twice; the store's cursor says how far the WAL is materialized, so a crash
between the two replays the rest and never stores a row twice.

``trackside server`` puts a network API in front of one sink; ``trackside sync --to PATH``
uses one in-process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import tempfile
import time

import msgspec

from trackside import _native as codec
from trackside.contracts import names
from trackside._native.constants import PARSE_OK, RECORD_EVENT, RECORD_LOG
from trackside.contracts.private import make_dirs, write_atomic
from trackside.contracts.protocol import event_decoder

from trackside.store import Store, check_artifact, media_refs
from .records import BadRecord
from .stream import RunStream

log = logging.getLogger("trackside.sink")

# The pipeline (a daemon's, a server's) allocates millions of short-lived rows and dicts, none in
# cycles that matter: collecting every 700 allocations cost ~0.6 us per record, every 20,000
# still ~0.25 us (a merge group's entries, rows and dicts live longer than that and were
# traversed again and again). Past 100,000 a group's objects are mostly gone before a
# collection comes: its processes collect that rarely (gc.set_threshold(*GC_THRESHOLD)).
GC_THRESHOLD = (100_000, 20, 20)

LOCK_NAME = "sink.lock"  # held by the one process that writes a root's run WALs through a sink


class SinkBusy(RuntimeError):
    """Another process (a ``trackside server`` or ``trackside sync``) stores into this root."""


IDLE_CLOSE = 30.0  # seconds a run's stream stays open after its last upload


class StoreHandle:
    """A store with the one thread that writes it (SQLite likes one writer; so does ordering)."""

    def __init__(self, root: str, db: str | None = None):
        self.root = root
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        kwargs = {"db": db} if db else {}
        self.store = self.pool.submit(Store, root, **kwargs).result()
        self.runs = 0

    async def call(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self.pool.submit(self.store.close).result()
        self.pool.shutdown()


def check_file_path(path: str) -> str:
    """A file path a sink accepts (``trackside.contracts.names.check_file_path``: relative to the run
    root, inside ``runs/<id>/`` but not its WAL, or ``artifacts/``). Raises BadRecord."""
    try:
        return names.check_file_path(path)
    except names.BadName as e:
        raise BadRecord(str(e)) from None


def _local_path(root: str, path: str) -> str:
    """Where the file ``path`` is under ``root``: checked, and inside it with symlinks resolved."""
    try:
        return names.contained(root, check_file_path(path), "file path")
    except names.BadName as e:
        raise BadRecord(str(e)) from None


# The names an upload carries are checked where they enter (a server, a sync into a root):
# the run id and project of the upload, the file paths its rows' rich values name, and in its
# events the project of a "run" event and the entry names and file paths of an "artifact"
# event. A record that fails is refused with BadRecord naming the value; the records before it
# are kept.


def check_run(run_id: str, info) -> None:
    try:
        names.check_run_id(run_id)
        if isinstance(info, dict) and info.get("project") is not None:
            names.check_project(info["project"])
    except names.BadName as e:
        raise BadRecord(str(e)) from None


def check_record(run_id: str, record) -> None:
    status, rtype, start, end = codec.parse_record(record)
    if status != PARSE_OK:
        return  # refused by the stream, which says why
    if rtype == RECORD_LOG:
        # a file path sits under a "path" key, whatever its encoding: its raw bytes are in the
        # record. A byte search is far cheaper than decoding every entry, and most records
        # (scalars only) end there
        if bytes(record).find(b"path", start, end) >= 0:
            _check_media_paths(run_id, memoryview(record)[start:end])
        return
    if rtype != RECORD_EVENT:
        return
    try:
        ev = event_decoder.decode(memoryview(record)[start:end])
    except msgspec.DecodeError:
        return
    try:
        if ev.kind == "artifact":
            check_artifact(ev.data)
        elif ev.kind == "run" and isinstance(ev.data, dict) and ev.data.get("project") is not None:
            names.check_project(ev.data["project"])
    except (ValueError, TypeError) as e:
        raise BadRecord(f"writer {ev.writer} seq {ev.seq}: {ev.kind!r} event: {e}") from None


def _check_media_paths(run_id: str, body) -> None:
    """The file paths named by the rich values (payloads) of a LOG record's entries."""
    try:
        writer, seq, entries = codec.decode_batch(body)
    except (ValueError, TypeError):
        return  # undecodable: the stream reports it
    for step, _, _, _, payload in entries:
        if payload is None:
            continue
        try:
            rich = msgspec.msgpack.decode(payload)
        except msgspec.DecodeError:
            continue  # kept aside by the stream, never read as a file
        if not isinstance(rich, dict):
            continue
        for key, value in rich.items():
            for path, _, _ in media_refs(value):
                try:
                    names.check_media_path(path, run_id)
                except names.BadName as e:
                    raise BadRecord(f"writer {writer} seq {seq}: step {step} key {key!r}: {e}") from None


def run_info(run_dir: str, info: dict | None = None) -> dict:
    """The run's info (project, settings ...) kept in ``run_dir/run.json``: written from
    ``info`` the first time, read back when ``info`` is empty (a stream reopened after a
    restart merges with the run's own settings)."""
    path = os.path.join(run_dir, "run.json")
    if info:
        if not os.path.exists(path):
            make_dirs(run_dir)
            write_atomic(path, msgspec.json.encode(info))
        return info
    try:
        with open(path, "rb") as f:
            return msgspec.json.decode(f.read())
    except (FileNotFoundError, msgspec.DecodeError):
        return {}


class LocalSink:
    """Stores the uploaded records of any number of runs into one store, exactly once."""

    def __init__(self, root: str, *, db: str | None = None, idle_close: float = IDLE_CLOSE):
        self.root = os.path.abspath(root)
        self.db = db
        self.idle_close = idle_close
        self.streams: dict[str, RunStream] = {}
        self._used: dict[str, float] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self.handle: StoreHandle | None = None
        self.io_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="sink-wal")
        self._idle_task: asyncio.Task | None = None
        self._lock_fd: int | None = None
        self.stats = {"uploads": 0, "records": 0, "duplicates": 0, "files": 0, "file_bytes": 0}

    async def start(self) -> None:
        """Open the store, and finish materializing any run whose WAL is ahead of the store
        (a sink stopped between making records durable and storing them)."""
        make_dirs(os.path.join(self.root, "runs"))
        self._take_lock()
        loop = asyncio.get_running_loop()
        self.handle = await loop.run_in_executor(None, StoreHandle, self.root, self.db)
        for run_id in await loop.run_in_executor(None, self._runs_behind):
            stream = await self._open(run_id, {})
            await self._close(run_id, stream)
        self._idle_task = asyncio.create_task(self._close_idle())

    def _take_lock(self) -> None:
        """One writer per root: two processes appending to one run's WAL would interleave
        records, so a second server (or a sync) on the same root is refused."""
        path = os.path.join(self.root, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SinkBusy(
                f"{self.root} is in use by another trackside server or sync (it holds {path}); "
                f"stop it, or use another root"
            ) from None
        self._lock_fd = fd

    def _runs_behind(self) -> list[str]:
        runs = os.path.join(self.root, "runs")
        behind = []
        for run_id in sorted(os.listdir(runs)):
            wal_dir = os.path.join(runs, run_id, "wal")
            try:
                names.check_run_id(run_id)
            except names.BadName:
                continue  # not a run folder
            if not os.path.isdir(wal_dir):
                continue
            size = sum(e.stat().st_size for e in os.scandir(wal_dir) if e.is_file())
            cursor, _ = self.handle.store.run_cursor(run_id)
            if size and (cursor == 0 or cursor < size):
                behind.append(run_id)  # cheap test: a WAL's logical end is at most its bytes on disk
        return behind

    async def append(self, run_id: str, info: dict, records) -> tuple[int, int]:
        """Store a run's records (framed WAL records, in WAL order): returns ``(stored,
        duplicates)`` once they are durable in the sink's WAL; they are merged and stored in
        the store moments later. Raises BadRecord for a record it will not store (the records
        before it are kept)."""
        check_run(run_id, info)
        stream = await self._open(run_id, info or {})
        self._used[run_id] = time.monotonic()
        stored = duplicates = 0
        end = None
        try:
            for record in records:
                check_record(run_id, record)
                new, end = stream.accept_record(record)
                if new:
                    stored += 1
                else:
                    duplicates += 1
        finally:
            if end is not None:
                await stream.durable(end)
            self._used[run_id] = time.monotonic()
            self.stats["uploads"] += 1
            self.stats["records"] += stored
            self.stats["duplicates"] += duplicates
        return stored, duplicates

    async def wait_stored(self, run_id: str, timeout: float = 30.0) -> None:
        """Wait until everything appended to ``run_id`` is in the store (tests, sync)."""
        stream = self.streams.get(run_id)
        if stream is None:
            return
        deadline = time.monotonic() + timeout
        while not stream.settled():
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id}: not stored within {timeout} s")
            await asyncio.sleep(0.01)

    # -- files -----------------------------------------------------------------------------------

    def missing_files(self, paths) -> list[str]:
        return [p for p in paths if not os.path.exists(_local_path(self.root, p))]

    def put_file(self, path: str, chunks) -> int:
        """Write a file (an iterable of byte chunks) at ``path`` under the root, atomically;
        a file already there is kept (files are content-addressed). Returns its size."""
        target = _local_path(self.root, path)
        folder = os.path.dirname(target)
        make_dirs(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
            if not os.path.exists(target):
                os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.stats["files"] += 1
        self.stats["file_bytes"] += size
        return size

    # -- runs ------------------------------------------------------------------------------------

    async def _open(self, run_id: str, info: dict) -> RunStream:
        stream = self.streams.get(run_id)
        if stream is not None:
            return stream
        lock = self._opening.setdefault(run_id, asyncio.Lock())
        async with lock:
            stream = self.streams.get(run_id)
            if stream is None:
                run_dir = os.path.join(self.root, "runs", run_id)
                info = await asyncio.get_running_loop().run_in_executor(None, run_info, run_dir, info)
                info = {**info, "dest": "local"}  # stored here, whatever the run was started with
                stream = RunStream(
                    run_id, self.root, run_dir, info, self.handle.store, self.handle.call, self.io_pool, live=False
                )
                await stream.start()
                self.streams[run_id] = stream
                self._used[run_id] = time.monotonic()
        return stream

    async def _close(self, run_id: str, stream: RunStream) -> None:
        self.streams.pop(run_id, None)
        self._used.pop(run_id, None)
        await stream.close()

    async def _close_idle(self) -> None:
        while True:
            await asyncio.sleep(min(0.2, self.idle_close / 4))
            now = time.monotonic()
            for run_id, stream in list(self.streams.items()):
                # a run whose writers all finished (the hosts' system-metrics writers too) is
                # let go at once; one that went silent, after ``idle_close``
                if stream.idle() and (stream.done() or now - self._used.get(run_id, now) > self.idle_close):
                    try:
                        await self._close(run_id, stream)
                    except Exception:
                        log.exception("run %s: closing its stream failed", run_id)

    def status(self) -> dict:
        return {
            "root": self.root,
            "db": "postgresql" if self.db and self.db.startswith("postgres") else "sqlite",
            **self.stats,
            "runs": [s.status() for s in self.streams.values()],
        }

    async def close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        for run_id, stream in list(self.streams.items()):
            try:
                await self._close(run_id, stream)
            except Exception:
                log.exception("run %s: error while draining", run_id)
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        self.io_pool.shutdown()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
