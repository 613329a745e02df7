"""``trackside sync``: replay runs' WALs into a store or a server.

    trackside sync                                # every offline run under ./trackside, into its own store
    trackside sync trackside/runs/3kf9 --to grpc://team:7311
    trackside sync trackside/runs/3kf9 --to /data/archive --follow

A run folder (``<root>/runs/<id>``) holds the run's WAL and ``run.json`` (its project, name and
settings). The destination is a server URL, another run root, or (by default) the run's own
root, whose local store is then filled in place from the WAL, which is not copied.

Syncing is idempotent: each (run, destination) keeps a cursor (``sync-<digest>.json`` in the
run folder) that moves only after the destination acknowledged a batch, and destinations drop
records they hold already. An interrupted sync, run again, goes on where it stopped; a second
sync of a finished run sends nothing. ``--follow`` keeps syncing a run that is still being
written, until every writer that logged to it has finished (or Ctrl-C).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from trackside.contracts import names

from .sink import LocalSink, SinkBusy, StoreHandle, run_info
from .stream import RunStream
from .uploader import MAX_RECORDS, RemoteDestination, SinkDestination, Uploader

FOLLOW_POLL = 0.5  # seconds between looks at a followed run's WAL
FOLLOW_QUIET = 2.0  # a followed run whose writers all finished is done once its WAL is this quiet


class SyncError(Exception):
    """A run cannot be synced (the message says why)."""


@dataclass
class Progress:
    """What one run's sync did; ``on_progress`` gets it after every batch."""

    run_id: str
    dest: str
    total_bytes: int = 0
    done_bytes: int = 0
    records: int = 0
    duplicates: int = 0
    files: int = 0
    error: Optional[str] = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def find_runs(root: str, *, only_offline: bool = True) -> list[str]:
    """The run folders under ``root`` (offline runs only, by default)."""
    runs = os.path.join(root, "runs")
    out = []
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else ():
        folder = os.path.join(runs, name)
        try:
            names.check_run_id(name)
        except names.BadName:
            continue  # not a run folder
        if not os.path.isdir(os.path.join(folder, "wal")):
            continue
        if only_offline and run_info(folder).get("dest") != "offline":
            continue
        out.append(folder)
    return out


def _check_run_dir(run_dir: str) -> tuple[str, str]:
    """``(root, run_id)`` of a run folder; SyncError when it is not one."""
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(os.path.join(run_dir, "wal")):
        raise SyncError(f"{run_dir} is not a run folder (no wal/ inside): pass <root>/runs/<run id>")
    parent = os.path.dirname(run_dir)
    if os.path.basename(parent) != "runs":
        raise SyncError(f"{run_dir} is not inside a run root's runs/ folder")
    try:
        names.check_run_id(os.path.basename(run_dir))
    except names.BadName as e:
        raise SyncError(f"{run_dir} is not a run folder: {e}") from None
    return os.path.dirname(parent), os.path.basename(run_dir)


def _wal_size(run_dir: str) -> int:
    wal = os.path.join(run_dir, "wal")
    return sum(e.stat().st_size for e in os.scandir(wal) if e.is_file())


async def sync_runs(
    run_dirs: list[str],
    to: Optional[str] = None,
    *,
    follow: bool = False,
    token: Optional[str] = None,
    ca: Optional[str] = None,
    on_progress: Optional[Callable[[Progress], None]] = None,
    interval: float = 0.0,
    max_records: int = MAX_RECORDS,
) -> list[Progress]:
    """Sync each run folder into ``to`` (URL, run root, or None: the run's own root)."""
    checked = [(os.path.abspath(d), *_check_run_dir(d)) for d in run_dirs]
    results = []
    remote = to is not None and to.startswith(("grpc://", "grpcs://"))
    sink = None
    dest = None
    try:
        if remote:
            dest = RemoteDestination(
                to,
                token=token or os.environ.get("TRACKSIDE_TOKEN") or None,
                ca=ca or os.environ.get("TRACKSIDE_TLS_CA") or None,
            )
        for run_dir, root, run_id in checked:
            target = to if remote else os.path.abspath(to or root)
            progress = Progress(run_id, target, total_bytes=_wal_size(run_dir))
            started = time.monotonic()
            if not remote and target == root:
                if run_info(run_dir).get("dest", "local") == "local":
                    raise SyncError(
                        f"run {run_id} is stored in {root} by the daemon already; sync it elsewhere with --to URL|PATH"
                    )
                await _sync_in_place(run_dir, root, run_id, progress, follow, on_progress)
            else:
                if not remote and (sink is None or sink.root != target):
                    if sink is not None:
                        await sink.close()
                    sink = LocalSink(target)
                    try:
                        await sink.start()
                    except SinkBusy as e:
                        raise SyncError(str(e)) from None
                    dest = SinkDestination(sink)
                await _sync_by_upload(run_dir, root, run_id, dest, progress, follow, on_progress, interval, max_records)
                if sink is not None:
                    await sink.wait_stored(run_id)
            progress.seconds = time.monotonic() - started
            results.append(progress)
    finally:
        if sink is not None:
            await sink.close()
        if dest is not None:
            dest.close()
    return results


async def _sync_by_upload(run_dir, root, run_id, dest, progress, follow, on_progress, interval, max_records) -> None:
    info = {k: v for k, v in run_info(run_dir).items() if k not in ("root", "dest")}
    state = "sync-" + hashlib.sha256(str(dest).encode()).hexdigest()[:12] + ".json"
    uploader = Uploader(run_id, root, run_dir, info, dest, state_file=state, interval=interval, max_records=max_records)
    stop = asyncio.Event()
    task = asyncio.create_task(uploader.run(follow=follow, stop=stop))
    try:
        while not task.done():
            await asyncio.wait([task], timeout=FOLLOW_POLL if follow else 0.2)
            _report(progress, uploader, run_dir, on_progress)
            if follow and not stop.is_set() and _finished(uploader, run_dir):
                stop.set()
        await task
    finally:
        task.cancel()
    if uploader.error:
        _report(progress, uploader, run_dir, on_progress)
        progress.error = uploader.error
        raise SyncError(f"run {run_id}: {uploader.error}")
    _report(progress, uploader, run_dir, None)
    progress.done_bytes = progress.total_bytes  # all sent (the WAL's bytes count its segment headers too)
    if on_progress is not None:
        on_progress(progress)


def _report(progress, uploader, run_dir, on_progress) -> None:
    progress.total_bytes = max(_wal_size(run_dir), progress.total_bytes)
    progress.done_bytes = uploader.cursor
    progress.records = uploader.stats["records"]
    progress.duplicates = uploader.stats["duplicates"]
    progress.files = uploader.stats["files"]
    if uploader.retrying:
        progress.extra["retrying"] = uploader.retrying
    if on_progress is not None:
        on_progress(progress)


def _finished(uploader, run_dir) -> bool:
    """A followed run is done when every writer seen has finished and the WAL went quiet."""
    if not uploader.writers or not uploader.finished >= _log_writers(uploader):
        return False
    wal = os.path.join(run_dir, "wal")
    newest = max((e.stat().st_mtime for e in os.scandir(wal) if e.is_file()), default=0)
    return time.time() - newest > FOLLOW_QUIET


def _log_writers(uploader) -> set:
    return uploader.writers - uploader.system_writers


async def _sync_in_place(run_dir, root, run_id, progress, follow, on_progress) -> None:
    """Fill the run root's own store from the run's WAL, read in place (a daemon may still be
    appending to it: it is never opened for writing here)."""
    loop = asyncio.get_running_loop()
    handle = await loop.run_in_executor(None, StoreHandle, root)
    try:
        info = {**run_info(run_dir), "dest": "local"}  # stored here, whatever the run was started with
        stream = RunStream(run_id, root, run_dir, info, handle.store, handle.call, None, read_only=True)
        await stream.start()
        quiet_since = time.monotonic()
        while True:
            progress.done_bytes = stream.read_offset
            progress.records = stream.stats["records"]
            progress.total_bytes = max(_wal_size(run_dir), progress.total_bytes)
            if on_progress is not None:
                on_progress(progress)
            if not follow:
                break
            await asyncio.sleep(FOLLOW_POLL)
            if await stream.catch_up():
                quiet_since = time.monotonic()
            elif (
                stream.finished_writers
                and stream.merger.live_writers() == 0
                and time.monotonic() - quiet_since > FOLLOW_QUIET
            ):
                break
        await stream.close()
        progress.done_bytes = stream.read_offset
    finally:
        handle.close()
