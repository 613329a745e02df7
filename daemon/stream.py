"""One run's pipeline inside the daemon.

Stages, each one object reading one queue and writing the next (DESIGN §2):

1. ``accept``: check the record's checksum, append it to the run's WAL (memory only).
2. the committer: make the WAL durable (one write and fsync for everything appended since the
   last one: group commit), acknowledge ``(writer, seq)`` to each connection, queue the records.
3. the materializer: decode, merge steps across writers, keep the summary, write rows, config,
   console and metadata into the store; report a writer's ``finish`` once it is all stored.

Raw records are durable before they are merged, so a crash never loses a half-built step: on
restart the WAL is replayed from the store's cursor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import msgspec

from trackside import _native as codec
from trackside._native.constants import PARSE_OK, PARSE_REASONS, RECORD_EVENT, RECORD_LOG
from trackside.protocol import Ack, Done, event_decoder

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

    def __init__(self, run_id: str, root: str, run_dir: str, info: dict, store, store_call, io_pool):
        self.run_id = run_id
        self.root = root
        self.dir = run_dir
        settings = info.get("settings") or {}
        self.settings = settings  # the first writer's init settings (the sampler reads its own)
        self.durability = settings.get("durability", "fsync")
        self.store = store
        self._store_call = store_call  # runs a function in the store's thread
        self._io_pool = io_pool
        self.wal = WAL(
            os.path.join(run_dir, "wal"),
            durability=self.durability,
            reporter=self._report_damage,
        )
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
        cursor, self.next_step = await self._store_call(self.store.run_cursor, self.run_id)
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
                if fresh:
                    self._unmerged += 1
                    await self._merge_queue.put(fresh)
            if self._closing and not self._pending:
                await self._merge_queue.put(None)
                return

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
                await self._apply_event(ev, conn, config, meta, console, finished)
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
        )
        for conn, seq, _ in finished:
            if conn is not None:
                conn.send(Done(seq))


    async def _apply_event(self, ev, conn, config, meta, console, finished) -> None:
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
        await self._store(system=[(t, host, values) for t, values in rows], metadata=metadata or None)

    # -- shutdown --------------------------------------------------------------------------------

    def settled(self) -> bool:
        """Everything appended is durable and through the materializer (rows a live writer
        still holds back may wait in the merger)."""
        return not self._pending and self._unmerged == 0

    def idle(self) -> bool:
        return not self.connections and not self._pending and self._merge_queue.empty()

    async def close(self) -> None:
        """Drain: commit what is appended, merge and store it, fsync and close the WAL."""
        self._closing = True
        self._wanted.set()
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
            "wal_bytes": self.wal.end_offset,
            "durable_offset": self.wal.durable_offset,
            "merge_backlog": self._merge_queue.qsize(),
            "pending_rows": self.merger.pending(),
            "error": self.error,
            **self.stats,
            **{f"merge_{k}": v for k, v in self.merger.stats.items()},
        }


def _run_fields(data: dict, root: str) -> dict:
    keep = ("project", "name", "group", "job_type", "tags", "config", "metadata")
    fields = {k: data[k] for k in keep if data.get(k) is not None}
    fields.setdefault("project", "uncategorized")
    fields["root_dir"] = root
    return fields
