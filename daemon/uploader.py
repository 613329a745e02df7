"""Uploads: one run's WAL, sent to a destination in batches, from a persisted cursor.

The daemon runs an ``Uploader`` per run whose destination is a ``trackside server``;
``trackside sync`` runs one per offline run it replays. Either way:

- records are read from the WAL on disk (never held in memory beyond one batch), from the
  cursor in ``<run dir>/<state file>`` up to the ``limit`` (the WAL's durable end, for a live
  run);
- a batch is bounded by records and bytes and goes out at most every ``interval`` seconds
  (sooner when a batch is full: catching up);
- the files the batch's records reference (media, tables, artifact files) go first, so a
  reader never sees a row whose file is missing;
- the cursor moves only after the destination acknowledged the batch, and the destination
  drops records it already holds (by writer and seq), so a crash anywhere repeats a batch and
  never stores it twice;
- transient errors (destination away, timeouts) retry with exponential backoff and jitter;
  permanent ones (a refused token, a refused record) stop the uploader and say why.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import time
from typing import Callable, Optional

import msgspec

from trackside import _native as codec
from trackside.contracts import names
from trackside._native.constants import RECORD_EVENT
from trackside.contracts.private import write_atomic
from trackside.contracts.protocol import event_decoder
from trackside.contracts.upload import PermanentUploadError, TransientUploadError, UploadClient
from trackside.store.tables import BUILTIN_KINDS, read_columns

from .records import BadRecord
from .wal import read_records

log = logging.getLogger("trackside.upload")

MAX_RECORDS = 4096  # WAL records per upload (a record is one client batch: up to thousands of steps)
MAX_BYTES = 4 << 20  # bytes per upload
INTERVAL = 1.0  # seconds between uploads while keeping up
MARK_EVERY = 1.0  # seconds of lag one progress mark stands for
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
_SKIP = {"wal", "upload.json", "run.json"}  # run-folder entries that are not the run's files (nor sync-*.json)


# -- destinations ----------------------------------------------------------------------------------


class RemoteDestination:
    """A ``trackside server``, through the synchronous gRPC client in a worker thread."""

    def __init__(self, url: str, token: Optional[str] = None, ca: Optional[str] = None):
        self.url = url
        self.client = UploadClient(url, token=token, ca=ca)

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def append(self, run_id: str, info: dict, records: list) -> tuple[int, int]:
        return await self._call(self.client.append, run_id, info, records)

    async def missing_files(self, paths: list) -> list:
        return await self._call(self.client.missing_files, paths)

    async def put_file(self, path: str, local_path: str) -> None:
        await self._call(self.client.put_file, path, local_path)

    def close(self) -> None:
        self.client.close()

    def __str__(self) -> str:
        return self.url


class SinkDestination:
    """A store in this process (``trackside sync --to PATH``): a started ``LocalSink``."""

    def __init__(self, sink):
        self.sink = sink

    async def append(self, run_id: str, info: dict, records: list) -> tuple[int, int]:
        try:
            return await self.sink.append(run_id, info, records)
        except BadRecord as e:
            raise PermanentUploadError(str(e), "INVALID_ARGUMENT", "this process's store") from None

    async def missing_files(self, paths: list) -> list:
        return self.sink.missing_files(paths)

    async def put_file(self, path: str, local_path: str) -> None:
        def chunks():
            with open(local_path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        await asyncio.get_running_loop().run_in_executor(None, self.sink.put_file, path, chunks())

    def close(self) -> None:
        pass

    def __str__(self) -> str:
        return self.sink.root


# -- the uploader ----------------------------------------------------------------------------------


class Uploader:
    """Sends the WAL of the run in ``run_dir`` (under run root ``root``) to ``dest``."""

    def __init__(
        self,
        run_id: str,
        root: str,
        run_dir: str,
        info: dict,
        dest,
        *,
        limit: Optional[Callable[[], Optional[int]]] = None,
        state_file: str = "upload.json",
        interval: float = INTERVAL,
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_BYTES,
    ):
        self.run_id = run_id
        self.root = root
        self.run_dir = run_dir
        self.wal_dir = os.path.join(run_dir, "wal")
        self.info = info
        self.dest = dest
        self.limit = limit or (lambda: None)  # None: whatever the files hold
        self.state_path = os.path.join(run_dir, state_file)
        self.interval = interval
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.cursor, self.uploaded = self._load_state()
        self.error: Optional[str] = None  # a permanent error: the uploader stopped
        self.retrying: Optional[str] = None  # the last transient error, while retrying
        self.files_sent: set[str] = set()
        self._sent_folders: dict[str, tuple[int, list]] = {}  # folder -> (mtime_ns, subfolders): all its files sent
        self.stats = {"batches": 0, "records": 0, "duplicates": 0, "files": 0, "retries": 0}
        self.writers: set[int] = set()
        self.finished: set[int] = set()
        self.system_writers: set[int] = set()  # hosts' system-metrics writers: they never finish
        self._marks: collections.deque = collections.deque()  # (WAL offset, time it was durable, records)
        self._wake = asyncio.Event()
        self._last_send = 0.0

    # -- state -----------------------------------------------------------------------------------

    def _load_state(self) -> tuple[int, int]:
        try:
            with open(self.state_path, "rb") as f:
                state = msgspec.json.decode(f.read())
            return int(state.get("offset", 0)), int(state.get("records", 0))
        except (FileNotFoundError, msgspec.DecodeError, TypeError, ValueError):
            return 0, 0

    def _save_state(self) -> None:
        # not fsynced: a cursor lost in a crash only repeats batches the destination drops
        write_atomic(
            self.state_path,
            msgspec.json.encode({"dest": str(self.dest), "offset": self.cursor, "records": self.uploaded}),
        )

    # -- progress --------------------------------------------------------------------------------

    def durable(self, offset: int, records: int = 0) -> None:
        """The run's WAL is durable up to ``offset`` (``records`` more than before): upload it
        (at the next interval)."""
        now = time.time()
        if self._marks and now - self._marks[-1][1] < MARK_EVERY:
            # one mark per second at most: a server away for days costs a mark per second of
            # lag, not one per commit (the newest mark stands for its second)
            _, since, n = self._marks[-1]
            self._marks[-1] = (offset, since, n + records)
        else:
            self._marks.append((offset, now, records))
        self._wake.set()

    def count_backlog(self) -> int:
        """Records in the WAL past the cursor (a daemon resuming a run counts them once)."""
        return sum(1 for _ in read_records(self.wal_dir, self.cursor, stop=self.limit()))

    def caught_up(self) -> bool:
        end = self.limit()
        return self.error is not None or (end is not None and self.cursor >= end)

    def lag_seconds(self) -> float:
        return time.time() - self._marks[0][1] if self._marks and not self.caught_up() else 0.0

    def status(self) -> dict:
        end = self.limit()
        return {
            "dest": str(self.dest),
            "cursor": self.cursor,
            "lag_bytes": max((end or self.cursor) - self.cursor, 0),
            "lag_records": self._lag_records(),
            "lag_seconds": round(self.lag_seconds(), 3),
            "uploaded": self.uploaded,
            "error": self.error,
            "retrying": self.retrying,
            **self.stats,
        }

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, *, follow: bool = True, stop: Optional[asyncio.Event] = None) -> None:
        """Upload until caught up (``follow=False``), or until ``stop`` is set and everything up
        to the limit is sent. Returns early, with ``self.error`` set, on a permanent error.
        Anything else that goes wrong (a bug, a WAL file that cannot be read) is logged, shown
        in ``retrying`` and retried: uploads never stop silently while the daemon takes data."""
        delay = BACKOFF_MIN
        while True:
            try:
                return await self._upload(follow, stop)
            except Exception as e:
                self.stats["retries"] += 1
                self.retrying = f"{type(e).__name__}: {e}"
                log.exception("run %s: uploading to %s failed; retrying", self.run_id, self.dest)
                if stop is not None and stop.is_set():
                    return  # shutting down: the cursor is saved, the next start goes on
                await self._wait(stop, delay * (0.5 + random.random()))
                delay = min(delay * 2, BACKOFF_MAX)

    async def _upload(self, follow: bool, stop: Optional[asyncio.Event]) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_MIN
        while True:
            end = self.limit()
            if end is not None and self.cursor >= end:
                self._marks.clear()
                if not follow or (stop is not None and stop.is_set()):
                    return
                self._wake.clear()
                await self._wait(stop, None)
                continue
            wait = self._last_send + self.interval - time.monotonic()
            if wait > 0 and follow and not (stop is not None and stop.is_set()) and not self._batch_ready(end):
                await self._wait(stop, wait, wake=False)  # keeping up: one upload per interval
                end = self.limit()  # what became durable meanwhile goes too
            batch, files, next_cursor = await loop.run_in_executor(None, self._read_batch, end)
            if not batch:
                if not follow or (stop is not None and stop.is_set()):
                    return
                self._wake.clear()
                await self._wait(stop, self.interval)  # nothing durable to read yet
                continue
            try:
                await self._send(batch, files)
            except PermanentUploadError as e:
                self.error = str(e)
                log.error("run %s: upload to %s stopped: %s", self.run_id, self.dest, e)
                return
            except (TransientUploadError, OSError) as e:
                self.stats["retries"] += 1
                if self.retrying is None:
                    log.warning("run %s: upload to %s failed (%s); retrying", self.run_id, self.dest, e)
                self.retrying = str(e)
                if stop is not None and stop.is_set() and follow:
                    return  # shutting down: the cursor is saved, the next start goes on
                await self._wait(stop, delay * (0.5 + random.random()))  # jitter: hosts retry apart
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if self.retrying is not None:
                log.info("run %s: uploads to %s work again", self.run_id, self.dest)
                self.retrying = None
            delay = BACKOFF_MIN
            self.cursor = next_cursor
            await loop.run_in_executor(None, self._save_state)
            while self._marks and self._marks[0][0] <= self.cursor:
                self._marks.popleft()

    def _batch_ready(self, end: Optional[int]) -> bool:
        """A full batch is waiting (catching up): send it without waiting for the interval."""
        if end is not None and end - self.cursor >= self.max_bytes:
            return True
        return self._lag_records() >= self.max_records

    def _lag_records(self) -> int:
        """Records durable but not uploaded (a mark partly uploaded counts whole)."""
        return sum(m[2] for m in self._marks if m[0] > self.cursor)

    async def _wait(self, stop: Optional[asyncio.Event], timeout: Optional[float], wake: bool = True) -> None:
        waits = [asyncio.ensure_future(self._wake.wait())] if wake else []
        if stop is not None:
            waits.append(asyncio.ensure_future(stop.wait()))
        if not waits:
            await asyncio.sleep(timeout)
            return
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _read_batch(self, end: Optional[int]):
        """Up to the batch limits of framed records from the cursor; the files they need."""
        records: list[bytes] = []
        size = 0
        next_cursor = self.cursor
        artifact_files: list[str] = []
        for rec in read_records(self.wal_dir, self.cursor, stop=end):
            framed = codec.frame(rec.type, rec.body)
            if records and (len(records) >= self.max_records or size + len(framed) > self.max_bytes):
                break
            records.append(framed)
            size += len(framed)
            next_cursor = rec.end
            if rec.type == RECORD_EVENT:
                self._note_event(rec.body, artifact_files)
        if not records:
            return [], [], self.cursor
        return records, self._new_files() + artifact_files, next_cursor

    def _note_event(self, body, artifact_files: list) -> None:
        try:
            ev = event_decoder.decode(body)
        except msgspec.DecodeError:
            return  # the destination refuses it and says why
        self.writers.add(ev.writer)
        if ev.kind == "finish":
            self.finished.add(ev.writer)
        elif ev.kind == "system":
            self.system_writers.add(ev.writer)
        elif ev.kind == "artifact":
            artifact_files.extend(p for p in _artifact_files(ev.data, self.root) if p not in self.files_sent)

    def _new_files(self) -> list[str]:
        """The run folder's files not sent yet (media and tables are written before the record
        that names them, so every file a batch's rows reference is here when it is read).

        A folder whose files were all sent is not listed again until its mtime changes (a run
        may hold 100,000 images: one stat per folder per upload instead of a full listing);
        its subfolders are still looked at, each by the same rule."""
        out = []
        stack = [self.run_dir]
        now = time.time_ns()
        while stack:
            folder = stack.pop()
            try:
                mtime = os.stat(folder).st_mtime_ns
            except FileNotFoundError:
                continue
            seen = self._sent_folders.get(folder)
            if seen is not None and seen[0] == mtime:
                stack.extend(seen[1])
                continue
            subfolders, new = [], []
            with os.scandir(folder) as entries:
                for e in entries:
                    if folder == self.run_dir and (e.name in _SKIP or e.name.startswith("sync-")):
                        continue
                    if e.is_dir(follow_symlinks=False):
                        subfolders.append(e.path)
                    elif not (e.name.startswith(".") or e.name.endswith(".tmp")):  # not one being written
                        rel = f"runs/{self.run_id}/" + os.path.relpath(e.path, self.run_dir).replace(os.sep, "/")
                        if rel not in self.files_sent:
                            new.append(rel)
            stack.extend(subfolders)
            out.extend(new)
            if (
                not new and now - mtime > 2_000_000_000
            ):  # mtimes tick coarsely: a folder changed just now is listed again
                self._sent_folders[folder] = (mtime, subfolders)
        return out

    async def _send(self, records: list, files: list) -> None:
        if files:
            local = {}
            for p in dict.fromkeys(files):
                full = self._local_file(p)
                if full is not None:
                    local[p] = full
            files = list(local)
            missing = set(await self.dest.missing_files(files)) if files else set()
            for path in files:
                if path in missing:
                    await self.dest.put_file(path, local[path])
                    self.stats["files"] += 1
                self.files_sent.add(path)
        stored, duplicates = await self.dest.append(self.run_id, self.info, records)
        self._last_send = time.monotonic()
        self.uploaded += stored
        self.stats["batches"] += 1
        self.stats["records"] += stored
        self.stats["duplicates"] += duplicates

    def _local_file(self, path: str) -> Optional[str]:
        """The file to send for ``path`` (relative to the root), or None: a path the
        destination would refuse, a file not there (yet), or one that leads out of the root
        (a symlink: what it points to is not the run's to send; skipped with a warning)."""
        try:
            full = names.contained(self.root, names.check_file_path(path), "file path")
        except names.BadName as e:
            log.warning("run %s: not uploading %s: %s", self.run_id, path, e)
            self.files_sent.add(path)  # listed once, warned once
            return None
        return full if os.path.isfile(full) else None


def _artifact_files(data, root: str) -> list[str]:
    """The files of an artifact event, relative to the run root: file entries name theirs;
    a logged object's (a table's) paths are relative to its ``source`` folder, and a table's
    cells (images ...) name files of their own, read from its rows file."""
    out = []
    manifest = data.get("manifest") if isinstance(data, dict) else None
    for entry in (manifest or {}).values():
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("path"), str):
            out.append(entry["path"])
        source = entry.get("source")
        if isinstance(source, str):
            out.extend(f"{source}/{p}" for p in _object_files(entry.get("obj"), os.path.join(root, source)))
    return out


_TABLE_TYPES = ("table", "incremental-table")


def _object_files(value, folder: str) -> list[str]:
    """The paths (relative to ``folder``) a logged object names, its table cells' included."""
    out = _paths(value)
    for form in _forms(value):
        if form.get("_type") in _TABLE_TYPES and isinstance(form.get("path"), str):
            try:
                _, types, columns, _ = read_columns(form, folder)
            except (OSError, ValueError):
                continue  # a missing or damaged rows file: the reader says so; its cells stay behind
            for kind, cells in zip(types, columns):
                if kind is not None and (kind not in BUILTIN_KINDS or kind == "mixed"):
                    out.extend(_object_files(cells, folder))
    return out


def _forms(value):
    """Every logged form (a dict with ``_type``) in ``value``, at any depth."""
    if isinstance(value, dict):
        if "_type" in value:
            yield value
        for v in value.values():
            yield from _forms(v)
    elif isinstance(value, list):
        for v in value:
            yield from _forms(v)


def _paths(value) -> list[str]:
    """Every string under a "path" key, at any depth."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "path" and isinstance(v, str):
                out.append(v)
            else:
                out.extend(_paths(v))
    elif isinstance(value, list):
        for v in value:
            out.extend(_paths(v))
    return out
