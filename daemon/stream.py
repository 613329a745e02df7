"""One run's pipeline inside the daemon.

Stages, each one object reading one queue and writing the next (DESIGN §2):

1. ``accept``: check the record's checksum, append it to the run's WAL (memory only).
2. the committer: make the WAL durable (one write and fsync for everything appended since the
   last one: group commit), acknowledge ``(writer, seq)`` to each connection, queue the records.
3. the materializer: decode, merge steps across writers, keep the summary, write rows, config,
   console and metadata into the store; report a writer's ``finish`` once it is all stored.

Raw records are durable before they are merged, so a crash never loses a half-built step: on
restart the WAL is replayed from the store's cursor.

A run's destination (``info["dest"]``) picks what follows the commit: ``"local"`` (the default)
runs stage 3 into the run root's store; ``"offline"`` keeps the WAL only (``trackside sync``
replays it later); a server URL runs an ``Uploader`` that sends the WAL to a ``trackside
server``, where the same stages run. Without a local stage 3, system metrics go into the WAL as
events of the host's own writer, so they travel with the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time

import msgspec

from trackside import _native as codec
from trackside._native.constants import PARSE_OK, PARSE_REASONS, RECORD_EVENT, RECORD_LOG
from trackside.protocol import Ack, Done, Event, encode_event, event_decoder

from .merger import Merger
from .summary import Summary
from .store import StoreError, check_artifact
from .wal import WAL, WALError

log = logging.getLogger("trackside.daemon")

MERGE_QUEUE = 64  # committed groups waiting to be merged; past it, acks wait (backpressure)
REPLAY_GROUP = 256  # WAL records materialized at a time when a run's stream restarts
SUMMARY_EVERY = 1.0  # seconds between summary snapshots written to the store while live


class BadRecord(ValueError):
    """A client sent a record the daemon will not store; its connection is closed."""


def read_writer_seq(body) -> tuple[int, int]:
    """``(writer, seq)`` from the start of a LOG body without decoding the entries."""
    out = []
    pos = 0
    for _ in range(2):
        n = shift = 0
        while True:
            if pos >= len(body) or shift > 63:
                raise BadRecord("LOG body too short for its writer and seq")
            b = body[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        out.append(n)
    return out[0], out[1]


class RunStream:
    """The daemon's state for one run: its WAL, merger, summary and the writers attached."""

    def __init__(self, run_id: str, root: str, run_dir: str, info: dict, store, store_call, io_pool,
                 *, read_only: bool = False, live: bool = True):
        self.run_id = run_id
        self.info = info
        self.dest = info.get("dest") or "local"  # "local", "offline" or a server URL
        self.local = self.dest == "local"
        self.uploader = None
        self.root = root
        self.dir = run_dir
        settings = info.get("settings") or {}
        self.settings = settings  # the first writer's init settings (the sampler reads its own)
        self.durability = settings.get("durability", "fsync")
        self.store = store
        self._store_call = store_call  # runs a function in the store's thread
        self._io_pool = io_pool
        # read_only: the WAL belongs to someone else (a daemon writing an offline run) and this
        # stream only stores what it holds (`trackside sync` into the run's own root): see catch_up
        self.read_only = read_only
        self._read_from = 0
        self.wal = None if read_only else WAL(
            os.path.join(run_dir, "wal"),
            durability=self.durability,
            reporter=self._report_damage,
        )
        self.live = live and not read_only  # False: records replayed long after they were logged
        self.merger = Merger(
            late_steps=settings.get("late_steps", "amend"),
            merge_window=float(settings.get("merge_window", 10.0)),
            on_warning=self._warn,
        )
        self.summary = Summary(self.merger.metrics)
        self.seqs: dict[int, int] = {}  # writer -> highest seq appended to the WAL
        self.connections: set = set()
        self.pids: dict[int, tuple[int, int]] = {}  # training process -> (connections, rank): system metrics watch it
        self.finished_writers: set[int] = set()
        self.warnings: list[str] = []
        self.error: str | None = None  # set while the WAL cannot be made durable
        self.damage: list[tuple] = []
        self.stats = {"records": 0, "entries": 0, "duplicates": 0, "bytes": 0}
        self.next_step = 0
        self._pending: list = []  # (end offset, connection, writer, seq, type, body)
        self._wanted = asyncio.Event()
        self._merge_queue: asyncio.Queue = asyncio.Queue(MERGE_QUEUE)
        self._closing = False
        self.idle_since: float | None = None
        self._last_summary = 0.0
        self._summary_dirty = False
        self._tasks: list[asyncio.Task] = []
        self._artifacts: list = []  # artifact versions to index, stored with the group's transaction
        self._typed_steps: set[int] = set()  # steps given rich values, until their rows are stored
        self._unmerged = 0  # committed groups not yet through the materializer
        self._durable_waiters: list = []  # (WAL offset, future): resolved once the WAL is durable there

    # -- start and recovery ------------------------------------------------------------------

    async def start(self) -> None:
        if not self.local:
            return await self._start_without_store()
        cursor, self.next_step = await self._store_call(self.store.run_cursor, self.run_id)
        if self.read_only:
            self._read_from = cursor
            await self.catch_up()
            return
        replay = []
        replayed = 0
        for rec in self.wal.records():
            if rec.type == RECORD_LOG:
                writer, seq = read_writer_seq(rec.body)
            else:
                ev = event_decoder.decode(rec.body)
                writer, seq = ev.writer, ev.seq
            if seq > self.seqs.get(writer, 0):
                self.seqs[writer] = seq
            if rec.offset >= cursor:
                replay.append((rec.end, None, writer, seq, rec.type, rec.body))
                replayed += 1
                if len(replay) >= REPLAY_GROUP:  # bounded memory, however long the backlog
                    await self._materialize(replay)
                    replay = []
        if replay:
            await self._materialize(replay)
        if replayed:
            log.info("run %s: replayed %d records from WAL offset %d", self.run_id, replayed, cursor)
        self._tasks = [
            asyncio.create_task(self._committer(), name=f"commit-{self.run_id}"),
            asyncio.create_task(self._materializer(), name=f"merge-{self.run_id}"),
            asyncio.create_task(self._ticker(), name=f"tick-{self.run_id}"),
        ]

    async def catch_up(self) -> int:
        """A read-only stream: store the records its WAL gained since the last call (in groups,
        so memory stays bounded); returns how many."""
        loop = asyncio.get_running_loop()
        done = 0
        while True:
            group = await loop.run_in_executor(self._io_pool, self._read_group)
            if not group:
                return done
            await self._materialize(group)
            self._read_from = group[-1][0]
            done += len(group)

    def _read_group(self) -> list:
        from .wal import read_records

        group = []
        for rec in read_records(os.path.join(self.dir, "wal"), self._read_from, reporter=self._report_damage):
            if rec.type == RECORD_LOG:
                writer, seq = read_writer_seq(rec.body)
            else:
                ev = event_decoder.decode(rec.body)
                writer, seq = ev.writer, ev.seq
            group.append((rec.end, None, writer, seq, rec.type, rec.body))
            self.stats["records"] += 1
            if len(group) >= REPLAY_GROUP:
                break
        return group

    async def _start_without_store(self) -> None:
        """Offline or uploading: recover the writers' seqs; the uploader (if any) goes on from
        its own cursor."""
        for rec in self.wal.records():
            if rec.type == RECORD_LOG:
                writer, seq = read_writer_seq(rec.body)
            else:
                ev = event_decoder.decode(rec.body)
                writer, seq = ev.writer, ev.seq
            if seq > self.seqs.get(writer, 0):
                self.seqs[writer] = seq
        self._tasks = [asyncio.create_task(self._committer(), name=f"commit-{self.run_id}")]
        if self.dest != "offline":
            from .uploader import RemoteDestination, Uploader

            # the token of the writer that opened the run, else the daemon's own environment's
            dest = RemoteDestination(self.dest, token=self.info.get("token") or os.environ.get("TRACKSIDE_TOKEN") or None,
                                     ca=os.environ.get("TRACKSIDE_TLS_CA") or None)
            info = {k: v for k, v in self.info.items() if k not in ("root", "dest", "token")}
            self.uploader = Uploader(self.run_id, self.root, self.dir, info, dest,
                                     limit=lambda: self.wal.durable_offset,
                                     interval=float(self.settings.get("upload_interval", 1.0)))
            self._upload_stop = asyncio.Event()
            backlog = await asyncio.get_running_loop().run_in_executor(self._io_pool, self.uploader.count_backlog)
            self.uploader.durable(self.wal.durable_offset, backlog)
            self._tasks.append(asyncio.create_task(self.uploader.run(stop=self._upload_stop),
                                                   name=f"upload-{self.run_id}"))

    # -- stage 1: accept ---------------------------------------------------------------------

    def accept(self, conn, writer: int, seq: int, record: bytes) -> None:
        """Append one batch; its ack follows once it is durable. Raises BadRecord."""
        if seq <= self.seqs.get(writer, 0):
            # already in the WAL (a resend after a reconnect): ack it, store nothing
            self.stats["duplicates"] += 1
            self._pending.append((self.wal.end_offset, conn, writer, seq, None, None))
            self._wanted.set()
            return
        status, rtype, start, end = codec.parse_record(record)
        if status != PARSE_OK or end != len(record):
            raise BadRecord(f"batch {seq}: {PARSE_REASONS.get(status, 'record does not fill the frame')}")
        body = memoryview(record)[start:end]
        if rtype == RECORD_LOG:
            if read_writer_seq(body) != (writer, seq):
                raise BadRecord(f"batch {seq}: the record's writer and seq differ from the frame's")
        elif rtype == RECORD_EVENT:
            try:
                ev = event_decoder.decode(body)
            except msgspec.DecodeError as e:
                raise BadRecord(f"batch {seq}: malformed event: {e}") from None
            if (ev.writer, ev.seq) != (writer, seq):
                raise BadRecord(f"batch {seq}: the event's writer and seq differ from the frame's")
        offset_end = self.wal.append(record)  # RecordTooLarge is a ValueError: the caller refuses
        self.seqs[writer] = seq
        self.stats["records"] += 1
        self.stats["bytes"] += len(record)
        self._pending.append((offset_end, conn, writer, seq, rtype, body))
        self._wanted.set()

    def accept_record(self, record) -> tuple[bool, int]:
        """Append one framed WAL record that carries its own ``(writer, seq)`` (an upload, a
        sync): ``(new, end offset)``; a record already held is not appended again (new=False).
        Raises BadRecord."""
        status, rtype, start, end = codec.parse_record(record)
        if status != PARSE_OK or end != len(record):
            raise BadRecord(f"record: {PARSE_REASONS.get(status, 'record does not fill the frame')}")
        body = memoryview(record)[start:end]
        if rtype == RECORD_LOG:
            writer, seq = read_writer_seq(body)
        elif rtype == RECORD_EVENT:
            try:
                ev = event_decoder.decode(body)
            except msgspec.DecodeError as e:
                raise BadRecord(f"malformed event: {e}") from None
            writer, seq = ev.writer, ev.seq
        else:
            raise BadRecord(f"record type {rtype} is not a LOG or EVENT record")
        new = seq > self.seqs.get(writer, 0)
        self.accept(None, writer, seq, record)
        return new, self._pending[-1][0]

    async def durable(self, offset: int) -> None:
        """Return once the WAL is durable up to ``offset`` (waits, without limit, while the
        disk refuses writes: backpressure)."""
        if self.wal.durable_offset >= offset and not self._pending:
            return
        fut = asyncio.get_running_loop().create_future()
        self._durable_waiters.append((offset, fut))
        self._wanted.set()
        await fut

    def _wake_durable(self, committed: int) -> None:
        waiting = []
        for offset, fut in self._durable_waiters:
            if offset <= committed:
                if not fut.done():
                    fut.set_result(None)
            else:
                waiting.append((offset, fut))
        self._durable_waiters = waiting

    # -- stage 2: commit and ack ---------------------------------------------------------------

    async def _committer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            group, self._pending = self._pending, []
            if group:
                try:
                    await loop.run_in_executor(self._io_pool, self.wal.commit, group[-1][0])
                except (OSError, WALError) as e:
                    # a full or failing disk: nothing is acknowledged, so the writers' buffers
                    # fill and log() applies backpressure; the WAL keeps the records and retries
                    if self.error is None:
                        log.error("run %s: cannot make the WAL durable (%s); holding acks and retrying", self.run_id, e)
                    self.error = f"WAL write failed: {e}"
                    self._pending = group + self._pending
                    await asyncio.sleep(1.0)
                    self._wanted.set()
                    continue
                if self.error is not None:
                    log.info("run %s: WAL writes work again", self.run_id)
                    self.error = None
                if self._durable_waiters:
                    self._wake_durable(group[-1][0])
                acks: dict = {}
                for _, conn, writer, seq, _, _ in group:
                    if conn is not None:
                        acks[conn] = seq
                for conn, seq in acks.items():
                    conn.send(Ack(seq))
                fresh = [g for g in group if g[4] is not None]
                if not self.local:
                    try:
                        self._committed_without_store(fresh)
                    except Exception:  # a bug here must not stop acks: the WAL has the records
                        log.exception("run %s: after-commit work failed", self.run_id)
                elif fresh:
                    self._unmerged += 1
                    await self._merge_queue.put(fresh)
            if self._closing and not self._pending:
                if self.local:
                    await self._merge_queue.put(None)
                return

    def _committed_without_store(self, group) -> None:
        """Offline or uploading, a writer's finish is done once its records are durable."""
        for end, conn, writer, seq, rtype, body in group:
            if rtype == RECORD_EVENT:
                if event_decoder.decode(body).kind == "finish":
                    self.finished_writers.add(writer)
        self._send_done(group)
        if self.uploader is not None and group:
            self.uploader.durable(group[-1][0], len(group))

    # -- stage 3: merge and store --------------------------------------------------------------

    async def _materializer(self) -> None:
        while True:
            group = await self._merge_queue.get()
            if group is None:
                return
            try:
                await self._materialize(group)
            except Exception:  # a bug here must not stop ingestion: the WAL keeps the data
                log.exception("run %s: materializing failed; the WAL keeps the records", self.run_id)
            finally:
                if group:
                    self._unmerged -= 1

    async def _materialize(self, group) -> None:
        now = time.monotonic()
        config: dict = {}
        meta: dict = {}
        console: list = []
        finished: list = []
        system: list = []
        for end, conn, writer, seq, rtype, body in group:
            if rtype == RECORD_LOG:
                _, _, entries = codec.decode_batch(body)
                if any(e[4] is not None for e in entries):
                    entries = [self._with_payload(e, writer, seq) for e in entries]
                if writer not in self.merger.writers:
                    self.merger.join(writer)
                self.merger.add(writer, entries, now)
                self.stats["entries"] += len(entries)
                continue
            ev = event_decoder.decode(body)
            try:
                await self._apply_event(ev, conn, config, meta, console, finished, system)
            except (ValueError, TypeError, AttributeError) as e:  # one writer's bad event
                self._warn(f"ignored {ev.kind!r} event of writer {writer} (seq {seq}): {e}")
        everything = bool(finished) and self.merger.live_writers() == 0
        rows = self.merger.finalize(now, everything=everything)
        # the WAL cursor moves only past records whose rows are all stored (an empty group is
        # the ticker's: rows the merge window let go)
        cursor = group[-1][0] if group and self.merger.pending() == 0 else None
        if rows:
            self.summary.update(rows)
            self._summary_dirty = True
            self.next_step = max(self.next_step, rows[-1].step + 1)  # rows come in step order
        summary = None
        if self._summary_dirty and (finished or now - self._last_summary >= SUMMARY_EVERY):
            summary = self.summary.snapshot()
            self._summary_dirty = False
            self._last_summary = now
        final_state = None
        if everything:
            exit_code = max((d.get("exit_code") or 0 for _, _, d in finished), key=abs)
            final_state = ("finished" if exit_code == 0 else "failed", exit_code)
        if final_state is not None and not self.live and rows:
            # replayed later (sync, a server): the run ended around its last row, not now
            final_state += (max(rows[-1].time_us / 1e6, 0.0),)
        artifacts, self._artifacts = self._artifacts, []
        await self._store(
            rows=rows,
            typed_steps=self._take_typed(rows),
            config=config,
            metadata=meta,
            console=console,
            summary=summary,
            cursor=cursor,
            final_state=final_state,
            artifacts=artifacts,
            system=system,
        )
        self._send_done(group)

    def _send_done(self, group) -> None:
        """Tell each finished writer how far it is done: its finish and whatever it sent after
        (console lines flushed at exit ride behind the finish event)."""
        done: dict = {}
        for _, conn, writer, seq, _, _ in group:
            if conn is not None and writer in self.finished_writers:
                done[conn] = seq
        for conn, seq in done.items():
            conn.send(Done(seq))


    async def _apply_event(self, ev, conn, config, meta, console, finished, system) -> None:
        kind, data, writer, seq = ev.kind, ev.data, ev.writer, ev.seq
        if kind == "config":
            config.update(data)
        elif kind == "summary":
            self.summary.update_explicit(data.get("set") or {}, data.get("del") or ())
            self._summary_dirty = True
        elif kind == "define_metric":
            self.merger.define_metric(**data)
        elif kind == "console":
            console.extend(tuple(x) for x in data)
        elif kind == "meta":
            meta.update(data)
        elif kind == "run":
            await self._store_call(self.store.upsert_run, self.run_id, **_run_fields(data, self.root))
        elif kind == "join":
            self.merger.join(writer)
        elif kind == "artifact":
            # checked here, so that one writer's bad artifact is a warning, never a failed group
            self._artifacts.append(check_artifact(data))
        elif kind == "system":  # a host's system metrics, from a WAL that travelled (see write_system)
            host = str(data["host"])
            system.extend((int(t), host, dict(values)) for t, values in data["rows"])
            meta.update(data.get("metadata") or {})
        elif kind == "finish":
            self.merger.leave(writer)
            self.finished_writers.add(writer)
            finished.append((conn, seq, data or {}))

    def _with_payload(self, entry, writer: int, seq: int):
        """Rich values travel as a msgpack map in the payload; in the row they are values."""
        step, commit, time_us, values, payload = entry
        if payload is None:
            return entry
        try:
            rich = msgspec.msgpack.decode(payload)
            if not isinstance(rich, dict):
                raise TypeError(f"a {type(rich).__name__}, not a map")
        except (msgspec.DecodeError, TypeError) as e:
            self._warn(f"writer {writer} batch {seq}: step {step} has a payload that is not a map of values ({e}); kept aside")
            return entry
        self._typed_steps.add(step)
        return (step, commit, time_us, {**values, **rich}, None)

    def _take_typed(self, rows) -> set:
        """The steps of ``rows`` that got rich values: only their rows can hold media to index
        (plain entries carry scalars only)."""
        if not self._typed_steps or not rows:
            return set()
        typed = self._typed_steps.intersection([r.step for r in rows])
        self._typed_steps -= typed
        return typed

    async def _store(self, **changes) -> None:
        """Write one transaction into the store, retrying while the store cannot take it (a full
        disk): merging stops, the merge queue fills, acks wait, and the writers slow down."""
        delay = 0.5
        while True:
            try:
                await self._store_call(self.store.apply, self.run_id, **changes)
            except (StoreError, OSError) as e:
                if self.error is None:
                    log.error("run %s: cannot write the store (%s); retrying", self.run_id, e)
                self.error = f"store write failed: {e}"
                if self._closing and delay > 8:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self.error is not None and self.error.startswith("store"):
                log.info("run %s: store writes work again", self.run_id)
                self.error = None
            return

    async def _ticker(self) -> None:
        """Finalize rows held back by a silent writer once the merge window passes."""
        while True:
            await asyncio.sleep(1.0)
            if self.merger.pending() and self._merge_queue.empty():
                await self._merge_queue.put([])

    # -- system metrics ----------------------------------------------------------------------------

    def add_pid(self, pid: int, rank: int) -> None:
        """A training process connected (one call per connection): the sampler watches it."""
        n, _ = self.pids.get(pid, (0, rank))
        self.pids[pid] = (n + 1, rank)

    def remove_pid(self, pid: int) -> None:
        """One connection of ``pid`` closed; the sampler stops watching it with its last one."""
        n, rank = self.pids.get(pid, (0, 0))
        if n > 1:
            self.pids[pid] = (n - 1, rank)
        else:
            self.pids.pop(pid, None)

    async def write_system(self, host: str, rows, metadata=None) -> None:
        """Store system-metrics rows ``(time_us, values)`` sampled on ``host`` (and metadata to
        merge), retried like every store write. Returns once they are in the store."""
        if self.local:
            await self._store(system=[(t, host, values) for t, values in rows], metadata=metadata or None)
            return
        # no store here: into the WAL, as an event of this host's writer, to travel with the run
        writer = system_writer(host)
        seq = self.seqs.get(writer, 0) + 1
        data = {"host": host, "rows": [[t, values] for t, values in rows], "metadata": metadata or None}
        body = encode_event(Event(writer, seq, "system", data))
        end = self.wal.append(codec.frame(RECORD_EVENT, body))
        self.seqs[writer] = seq
        self._pending.append((end, None, writer, seq, RECORD_EVENT, memoryview(body)))
        self._wanted.set()

    # -- shutdown --------------------------------------------------------------------------------

    def complete(self) -> bool:
        """After close: nothing of this run is left for a later daemon to do (every row
        stored, or everything uploaded; an offline run waits for ``trackside sync``)."""
        if self.uploader is not None:
            return self.uploader.caught_up()
        return not self.local or self.merger.pending() == 0

    def settled(self) -> bool:
        """Everything appended is durable and through the materializer (rows a live writer
        still holds back may wait in the merger)."""
        return not self._pending and self._unmerged == 0

    def idle(self) -> bool:
        if self.uploader is not None and not self.uploader.caught_up():
            return False
        return not self.connections and not self._pending and self._merge_queue.empty()

    async def close(self) -> None:
        """Drain: commit what is appended, merge and store it, fsync and close the WAL."""
        self._closing = True
        self._wanted.set()
        if self.read_only:
            rows = self.merger.finalize(time.monotonic(), everything=False)
            if rows or self._summary_dirty:
                self.summary.update(rows)
                await self._store(rows=rows, typed_steps=self._take_typed(rows), summary=self.summary.snapshot(),
                                  cursor=None)
            return
        if not self.local:
            await self._tasks[0]
            if self.uploader is not None:
                await self._stop_uploader(self._tasks[1])
            self.wal.close()
            return
        committer, materializer, ticker = self._tasks
        ticker.cancel()
        await committer
        await materializer
        rows = self.merger.finalize(time.monotonic(), everything=False)
        if rows or self._summary_dirty:
            self.summary.update(rows)
            await self._store(
                rows=rows, typed_steps=self._take_typed(rows), summary=self.summary.snapshot(), cursor=None
            )
        self.wal.close()

    async def _stop_uploader(self, task, grace: float = 5.0) -> None:
        """Let the uploader send what is durable (a few seconds at most: a destination that is
        away must not hold the daemon); its cursor is saved, so the next start goes on."""
        self._upload_stop.set()
        try:
            await asyncio.wait_for(task, grace)
        except asyncio.TimeoutError:
            log.warning("run %s: uploads to %s go on at the next start (%d bytes behind)",
                        self.run_id, self.dest, self.uploader.status()["lag_bytes"])
        except Exception:
            log.exception("run %s: the uploader failed", self.run_id)
        self.uploader.dest.close()

    # -- reporting -------------------------------------------------------------------------------

    def _report_damage(self, path, offset, nbytes, reason) -> None:
        self.damage.append((path, offset, nbytes, reason))
        log.warning("run %s: WAL damage in %s at offset %d: %d bytes dropped (%s)", self.run_id, path, offset, nbytes, reason)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("run %s: %s", self.run_id, message)

    def attach(self, conn, writer: int) -> None:
        """A writer connected: it takes part in merging from now on (see Merger.join)."""
        self.connections.add(conn)
        if writer not in self.finished_writers:
            self.merger.join(writer, time.monotonic())

    def detach(self, conn) -> None:
        """A writer's connection ended. One that never sent anything (a process forked from a
        rank that did not log, say) stops holding rows back; one that did may come back (a
        reconnect), and its rows wait for it up to the merge window."""
        self.connections.discard(conn)
        writer = conn.writer_id
        if writer not in self.seqs and not any(c.writer_id == writer for c in self.connections):
            self.merger.leave(writer)

    def status(self) -> dict:
        return {
            "run_id": self.run_id,
            "root": self.root,
            "writers": len(self.seqs),
            "connections": len(self.connections),
            "wal_bytes": self.wal.end_offset if self.wal else self._read_from,
            "durable_offset": self.wal.durable_offset if self.wal else self._read_from,
            "merge_backlog": self._merge_queue.qsize(),
            "pending_rows": self.merger.pending(),
            "error": self.error,
            "dest": self.dest,
            "upload": self.uploader.status() if self.uploader is not None else None,
            **self.stats,
            **{f"merge_{k}": v for k, v in self.merger.stats.items()},
        }


def system_writer(host: str) -> int:
    """The writer id of a host's system metrics in a WAL: the same on every start of the host's
    daemon (its seqs go on from the WAL), different across hosts uploading into one run."""
    return int.from_bytes(hashlib.sha256(f"system:{host}".encode()).digest()[:8], "big") >> 1


def _run_fields(data: dict, root: str) -> dict:
    keep = ("project", "name", "group", "job_type", "tags", "config", "metadata")
    fields = {k: data[k] for k in keep if data.get(k) is not None}
    fields.setdefault("project", "uncategorized")
    fields["root_dir"] = root
    started = (data.get("metadata") or {}).get("started_at")
    if isinstance(started, (int, float)):
        fields["created_at"] = float(started)  # a run synced or uploaded later keeps its own start time
    return fields
