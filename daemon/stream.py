"""One run's pipeline inside the daemon.

Stages, each one object reading one queue and writing the next (DESIGN §2):

1. accept (``RunStream.accept``): check the record's frame and checksum, drop a ``(writer,
   seq)`` already held, append it to the run's WAL (memory only); the record, named
   (``Appended``), goes into the commit stage's queue.
2. ``CommitStage``: make the WAL durable (one write and fsync for everything appended since
   the last pass: group commit), acknowledge ``(writer, seq)`` to each connection, hand the
   records on: into the ``Backlog`` (stored runs) or to the ``Uploader`` (runs sent to a server).
3. merge (``RunStream``'s materializer over the ``Backlog``, the ``Merger`` and the
   ``Summary``): decode, merge steps across writers, gather config, console, metadata and
   indexes into one group of changes.
4. ``StoreStage``: write each group into the store in one transaction, the WAL cursor with it;
   a writer's ``finish`` is reported once it is all stored.
5. upload (``daemon/uploader.py`` ``Uploader``): for runs whose destination is a server.

What follows the commit is the stream's ``Mode`` (from ``info["dest"]``): ``STORE`` (the
default) runs stages 3 and 4 into the run root's store; ``OFFLINE`` keeps the WAL only
(``trackside sync`` replays it later); ``UPLOAD`` runs the uploader, and the server runs the
same stages; ``READ_ONLY`` stores someone else's WAL (``trackside sync`` into the run's own
root). Without a local stage 3, system metrics go into the WAL as events of the host's own
writer, so they travel with the run.

Raw records are durable before they are merged, so a crash never loses a half-built step: on
restart the WAL is replayed from the store's cursor, through the same backlog.

Memory stays bounded however far the materializer lags or the writers drift apart: the backlog
keeps the bodies of at most ``MERGE_MEMORY`` bytes of records and reads the others back from
the WAL (the WAL is the overflow buffer), and it serves the writer furthest behind first, so
the merger's pending rows (the one state that grows with the drift) stay few. Past
``MERGE_BACKLOG`` bytes waiting, writers ahead get no acks until the rest catch up: their
bounded buffers then make ``log()`` wait.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import os
import random
import time
from typing import NamedTuple, Optional

import msgspec

from trackside import _native as codec
from trackside._native.constants import (
    MAX_RECORD_SIZE,
    PARSE_OK,
    PARSE_REASONS,
    RECORD_EVENT,
    RECORD_HEADER_SIZE,
    RECORD_LOG,
)
from trackside.contracts.discovery import pid_alive
from trackside.contracts.protocol import Ack, Done, Event, encode_event, event_decoder

from .columns import ColumnRows
from .merger import Merger
from .records import BadRecord, read_writer_seq, record_writer_seq
from .summary import Summary
from trackside.store import StoreError, check_artifact
from .wal import WAL, WALError, read_record, read_records

log = logging.getLogger("trackside.daemon")

# 16 MiB of bodies is ~170,000 entries of 10 floats: seconds of a fast writer, a small share of
# the daemon's memory (the same entries decoded and pending would take ten times as much)
MERGE_MEMORY = 16 << 20  # bytes of waiting records kept in memory; the rest are read back from the WAL
# ~1 s of the store stage's rate: with the writers' own 16 MiB buffers, what is logged but not
# stored after an overload, and so finish(), stays within seconds (bench/bench_scale.py)
MERGE_BACKLOG = 16 << 20  # bytes of waiting records past which writers ahead get no acks (backpressure)
# a pending row of 4 writers' 10 floats is ~3.5 KB: a lead of 4,096 steps, plus a batch and a
# group of entries, keeps the merger to ~10,000 rows (~35 MB) whatever the drift
MERGE_LEAD = 4096  # steps a writer may run ahead of the slowest live one before its records wait
# ~5,500 entries of 10 floats: big enough that a transaction's fixed cost is small, small enough
# that SQLite's cost per row stays flat (it grows in transactions of 16k rows)
MERGE_GROUP = 512 << 10  # bytes of records merged into one store transaction
REPLAY_GROUP = 256  # WAL records read at a time when a stream restarts or catches up
SUMMARY_EVERY = 1.0  # seconds between summary snapshots written to the store while live
# a server's stream that starts again re-reads this much of the stored WAL into the merger, so
# that late entries of a lagging host are still reduced with what was stored (Merger.recall)
RECALL_BYTES = 16 << 20


class Mode(enum.Enum):
    """Where a run stream's records go after the commit (its destination, ``info["dest"]``)."""

    STORE = "store"  # merged and stored in the run root's store (dest "local")
    UPLOAD = "upload"  # sent by the uploader to a trackside server (dest "grpc://...")
    OFFLINE = "offline"  # kept in the WAL only, until `trackside sync`
    READ_ONLY = "read_only"  # someone else's WAL, stored from here (`trackside sync` into the run's own root)


class Appended(NamedTuple):
    """A record appended to the WAL's buffer, waiting for its commit. A resend the WAL holds
    already has ``rtype`` and ``body`` None: it is only acknowledged."""

    end: int  # WAL offset after the record
    conn: object  # the connection to acknowledge (None: an upload, a replay)
    writer: int
    seq: int
    rtype: Optional[int]
    body: Optional[memoryview]


class CommitStage:
    """Stage 2: takes the records appended since its last pass, makes the WAL durable through
    the last of them (one write and fsync for all: group commit) and hands the group on
    (``on_commit``: acknowledgements and the next stage's queue). While the disk refuses writes
    it keeps the group, says why in ``error`` and retries: nothing is acknowledged meanwhile, so
    the writers' bounded buffers slow them down."""

    def __init__(self, run_id: str, wal: WAL, io_pool, on_commit):
        self.run_id = run_id
        self.wal = wal
        self._io_pool = io_pool
        self._on_commit = on_commit
        self.pending: list[Appended] = []  # its queue: appended, not committed yet
        self.error: Optional[str] = None  # set while the WAL cannot be made durable
        self.closing = False
        # the WAL is durable and every batch acknowledged up to here: the WAL's own durable
        # offset runs ahead while a group's acks are not sent yet
        self.acked_through = wal.durable_offset
        self._wanted = asyncio.Event()
        self._waiters: list = []  # (WAL offset, future): resolved once committed there

    def put(self, record: Appended) -> None:
        self.pending.append(record)
        self._wanted.set()

    def wake(self) -> None:
        self._wanted.set()

    async def durable(self, offset: int) -> None:
        """Return once the WAL is durable up to ``offset`` and the batches before it have their
        acks sent (or held: backpressure); waits, without limit, while the disk refuses writes."""
        if self.acked_through >= offset and not self.pending:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((offset, fut))
        self._wanted.set()
        await fut

    async def run(self) -> None:
        """Commit until closing and nothing is left."""
        while True:
            try:
                if await self._pass():
                    return
            except Exception:  # a bug must not end acks for good: acks are cumulative, the next one covers these
                log.exception("run %s: committing failed; going on", self.run_id)
                await asyncio.sleep(0.5)
                self._wanted.set()

    async def _pass(self) -> bool:
        await self._wanted.wait()
        self._wanted.clear()
        group, self.pending = self.pending, []
        if group:
            try:
                await asyncio.get_running_loop().run_in_executor(self._io_pool, self.wal.commit, group[-1].end)
            except (OSError, WALError) as e:
                if self.error is None:
                    log.error("run %s: cannot make the WAL durable (%s); holding acks and retrying", self.run_id, e)
                self.error = f"WAL write failed: {e}"
                self.pending = group + self.pending
                await asyncio.sleep(1.0)
                self._wanted.set()
                return False
            if self.error is not None:
                log.info("run %s: WAL writes work again", self.run_id)
                self.error = None
            self._on_commit(group)
            self.acked_through = group[-1].end
            if self._waiters:
                self._wake(group[-1].end)
        return self.closing and not self.pending

    def _wake(self, committed: int) -> None:
        waiting = []
        for offset, fut in self._waiters:
            if offset <= committed:
                if not fut.done():
                    fut.set_result(None)
            else:
                waiting.append((offset, fut))
        self._waiters = waiting


class StoreStage:
    """The store stage: writes one run's changes into the store, one transaction per call (rows,
    console, config, summary, indexes and the WAL cursor together), in the store's own thread.
    While the store cannot take a write (a full disk, a lost database) it says why in ``error``
    and retries with backoff: merging then waits, the merge queue fills, acks are held, and the
    writers slow down. Nothing is lost: the WAL keeps the records."""

    def __init__(self, run_id: str, store, call):
        self.run_id = run_id
        self.store = store
        self.call = call  # runs a function in the store's thread
        self.error: Optional[str] = None
        self.closing = False  # past ~15 s of retries while closing, give up (the WAL replays it)

    async def write(self, **changes) -> None:
        """Return once ``changes`` are committed (see ``Store.apply``)."""
        delay = 0.5
        while True:
            try:
                await self.call(self.store.apply, self.run_id, **changes)
            except (StoreError, OSError) as e:
                if self.error is None:
                    log.error("run %s: cannot write the store (%s); retrying", self.run_id, e)
                self.error = f"store write failed: {e}"
                if self.closing and delay > 8:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self.error is not None:
                log.info("run %s: store writes work again", self.run_id)
                self.error = None
            return


class Waiting(NamedTuple):
    """A committed record in the backlog. The first six fields are those of a committed group's
    tuples; ``body`` is None once memory let it go (read back from ``end - size``)."""

    end: int  # WAL offset after the record
    conn: object
    writer: int
    seq: int
    rtype: int
    body: Optional[memoryview]
    size: int  # framed bytes, header included
    since: float  # monotonic time it was committed


class Backlog:
    """Stage 3's queue: committed records waiting for the merger, per writer in WAL order.

    Memory keeps the bodies of at most ``memory`` bytes of records; the others keep their place
    in the WAL only. ``take`` serves the writer furthest behind first and holds back a writer
    more than ``lead`` steps ahead of the slowest live writer (``Merger.lead``), so the merger's
    pending rows stay few however far the writers drift apart. A record held back for a merge
    window is served anyway: by then the merger would have let its rows go too.
    """

    def __init__(self, memory: int, lead: int):
        self.memory = memory
        self.lead = lead
        self._queues: dict[int, collections.deque] = {}  # writer -> its waiting records (none: no entry)
        self.records = 0
        self.bytes = 0  # framed bytes of every waiting record
        self.kept = 0  # framed bytes of the waiting records whose bodies are in memory
        self.end = 0  # the end offset of the last record added

    def add(self, end: int, conn, writer: int, seq: int, rtype: int, body, since: float, readable: bool) -> None:
        """Queue one committed record. ``readable``: it is in the WAL's files, so its body may
        be let go."""
        size = RECORD_HEADER_SIZE + len(body)
        if readable and self.kept + size > self.memory:
            body = None
        else:
            self.kept += size
        queue = self._queues.get(writer)
        if queue is None:
            queue = self._queues[writer] = collections.deque()
        queue.append(Waiting(end, conn, writer, seq, rtype, body, size, since))
        self.records += 1
        self.bytes += size
        self.end = end

    def waiting(self, writer: int) -> bool:
        """Whether ``writer`` has records in the backlog."""
        return writer in self._queues

    def served_through(self) -> int:
        """A WAL offset every record before which has been taken."""
        if not self._queues:
            return self.end
        return min(q[0].end - q[0].size for q in self._queues.values())

    def ready(self, merger, now: float) -> bool:
        """Whether ``take`` would serve a record now."""
        return self._choose(merger, now, False) is not None

    def take(self, merger, now: float, drain: bool = False) -> Optional[tuple[Waiting, bool]]:
        """The record to merge next, and whether it was held back past the merge window (then
        its rows are as old as the record); None while every waiting writer must wait for the
        others. ``drain``: never wait (shutdown, replay)."""
        chosen = self._choose(merger, now, drain)
        if chosen is None:
            return None
        best, overdue = chosen
        queue = self._queues[best]
        rec = queue.popleft()
        if not queue:
            del self._queues[best]
        self.records -= 1
        self.bytes -= rec.size
        if rec.body is not None:
            self.kept -= rec.size
        return rec, overdue

    def _choose(self, merger, now: float, drain: bool) -> Optional[tuple[int, bool]]:
        best = None
        best_lead = 0.0
        for writer in self._queues:
            lead = merger.lead(writer)
            if best is None or lead < best_lead:
                best, best_lead = writer, lead
        if best is None or best_lead <= self.lead or drain:
            return None if best is None else (best, False)
        # every waiting writer is far ahead of a live writer that has sent nothing newer
        best = min(self._queues, key=lambda w: self._queues[w][0].since)
        window = merger.merge_window
        if window is None or now - self._queues[best][0].since < window:
            return None
        return best, True


class _Group:
    """What one store transaction gathers while its records are merged."""

    __slots__ = ("records", "config", "meta", "console", "finished", "system", "marks")

    def __init__(self):
        self.records: list = []
        self.config: dict = {}
        self.meta: dict = {}
        self.console: list = []
        self.finished: list = []
        self.system: list = []
        self.marks: dict = {}  # writer -> seq of its last event whose console lines are in `console`


class RunStream:
    """The daemon's state for one run: its WAL, merger, summary and the writers attached."""

    def __init__(
        self,
        run_id: str,
        root: str,
        run_dir: str,
        info: dict,
        store,
        store_call,
        io_pool,
        *,
        read_only: bool = False,
        live: bool = True,
        reader=None,
    ):
        self.run_id = run_id
        # READ_ONLY: reads the records after an offset (a list of ``Appended``, in order; empty
        # when there are none): the run's WAL files by default; a server of a tier reads the
        # database's raw records instead (server/shared.py), and then waits for the announced
        # world like any server's stream (world_finished)
        self._reader = reader
        # a stream with a reader: record end -> the highest step the record holds (-inf for an
        # event or a record that failed, +inf before it is merged), in read order, for the
        # records the cursor has not passed: the cursor moves past those whose steps are all
        # below the lowest pending row, not only when no row is pending (see _cursor)
        self._spans: Optional[dict] = {} if reader is not None else None
        self.info = info
        self.dest = info.get("dest") or "local"  # "local", "offline" or a server URL
        if read_only:
            self.mode = Mode.READ_ONLY
        elif self.dest == "local":
            self.mode = Mode.STORE
        else:
            self.mode = Mode.OFFLINE if self.dest == "offline" else Mode.UPLOAD
        self.uploader = None
        self.root = root
        self.dir = run_dir
        settings = info.get("settings") or {}
        self.settings = settings  # the first writer's init settings (the sampler reads its own)
        self.durability = settings.get("durability", "fsync")
        self.store = store
        self._store_call = store_call  # runs a function in the store's thread
        self._io_pool = io_pool
        self._read_from = 0  # READ_ONLY: how far this stream has read the WAL (see catch_up)
        self.warnings: list[str] = []
        self.damage: list[dict] = []  # WAL damage found (path, offset, bytes, reason): status and metadata
        self._damage_stored = 0  # how many of them the store's metadata holds
        self.wal = (
            None
            if read_only
            else WAL(
                os.path.join(run_dir, "wal"),
                durability=self.durability,
                max_record_size=RECORD_HEADER_SIZE + MAX_RECORD_SIZE,  # all the format allows (log() checks it)
                reporter=self._report_damage,
            )
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
        # writers that opened the run and have not connected their stream yet (gRPC: Open and
        # Send are two calls) -> until when the run waits for them
        self._expected: dict[int, float] = {}
        self._writing: Optional[asyncio.Future] = None  # the group being stored while the next one merges
        self.pids: dict[int, tuple[int, int]] = {}  # training process -> (connections, rank): system metrics watch it
        self.finished_writers: set[int] = set()
        self.system_writer: Optional[int] = None  # this host's system-metrics writer, once it wrote into the WAL
        self.system_done = False  # its last rows are written: the sampler lets the run go
        self.ranks: dict[int, int] = {}  # writer -> the rank it announced (its "join" event)
        self.world_size = 0  # the largest world size a writer announced (0: none did)
        self.storing = StoreStage(run_id, store, store_call) if store is not None else None
        # entries_as_columns: the entries merged on the column path (the rest went as rows)
        self.stats = {"records": 0, "entries": 0, "entries_as_columns": 0, "duplicates": 0, "bytes": 0}
        self.next_step = 0
        self.commit = None if self.wal is None else CommitStage(run_id, self.wal, io_pool, self._committed)
        self._backlog = Backlog(MERGE_MEMORY, MERGE_LEAD)
        self._merge_wanted = asyncio.Event()  # set when the backlog gained records, or time passed
        self._tick = False  # the ticker asks for a finalize even with nothing to merge
        self._committed_all = False  # closing: the committer has handed over its last records
        self._unstored = 0  # committed records not yet through the store (backlog included)
        self._held_acks: dict = {}  # connection -> (writer, seq): acks held back (backpressure)
        self._closing = False
        self.idle_since: float | None = None
        self._last_summary = 0.0
        self._summary_dirty = False
        self._tasks: list[asyncio.Task] = []
        self._artifacts: list = []  # artifact versions to index, stored with the group's transaction
        self._marks: dict[int, int] = {}  # writer -> seq of its last event whose console lines are stored
        self._done: dict[int, int] = {}  # finished writer -> the seq through which it is stored (Done)
        self._away: dict[int, Optional[int]] = {}  # writer -> pid: connection ended, process alive then
        self._typed_steps: set[int] = set()  # steps given rich values, until their rows are stored
        # plain batches as columns (see columns.py); TRACKSIDE_NO_COLUMNS=1 merges every entry
        # as a row, as before it (bench/bench_scale.py measures one against the other)
        self._columns = os.environ.get("TRACKSIDE_NO_COLUMNS", "") in ("", "0")

    @property
    def local(self) -> bool:
        """Records are merged and stored here (a local run, or a sync into its own root)."""
        return self.mode in (Mode.STORE, Mode.READ_ONLY)

    @property
    def read_only(self) -> bool:
        return self.mode is Mode.READ_ONLY

    @property
    def error(self) -> Optional[str]:
        """Why the WAL or the store refuses writes just now (retried), or None."""
        return (self.commit.error if self.commit is not None else None) or (
            self.storing.error if self.storing is not None else None
        )

    # -- start and recovery ------------------------------------------------------------------

    async def start(self) -> None:
        if not self.local:
            return await self._start_without_store()
        cursor, self.next_step = await self._store_call(self.store.run_cursor, self.run_id)
        self._marks = await self._store_call(self.store.event_marks, self.run_id)
        self.summary.restore(await self._store_call(self.store.stored_summary, self.run_id))
        self._backlog.end = cursor  # everything before it is stored
        if self.read_only:
            self._read_from = cursor
            await self.catch_up()
            return
        now = time.monotonic()
        replayed = 0
        for rec in self.wal.records():
            writer, seq = record_writer_seq(rec.type, rec.body)
            if seq > self.seqs.get(writer, 0):
                self.seqs[writer] = seq
            if rec.offset >= cursor:
                self._backlog.add(rec.end, None, writer, seq, rec.type, memoryview(rec.body), now, True)
                self._unstored += 1
                replayed += 1
                if replayed % REPLAY_GROUP == 0:
                    # merge what the backlog serves; records of writers far ahead wait for the
                    # others' to be read, so memory stays bounded however long the backlog
                    await self._merge_backlog()
            elif rec.type == RECORD_EVENT:  # stored before this start: what the merger must still know
                self._recall(rec.body)  # (metric definitions: a resumed run's summary kinds and reduce rules)
                if writer in self.finished_writers:
                    self._done[writer] = seq  # stored, finish included
            elif not self.live:
                if cursor - rec.offset <= RECALL_BYTES:
                    try:
                        self.merger.recall(writer, codec.decode_batch(rec.body)[2])
                    except Exception:  # merging it failed when it was stored, and was reported then
                        pass
        if replayed:
            await self._merge_backlog(drain=True)
            log.info("run %s: replayed %d records from WAL offset %d", self.run_id, replayed, cursor)
        if len(self.damage) > self._damage_stored:  # found while reading the WAL: readers see it now
            await self.storing.write(metadata={"wal_damage": self._damage_report()})
        self._tasks = [
            asyncio.create_task(self._committer(), name=f"commit-{self.run_id}"),
            asyncio.create_task(self._materializer(), name=f"merge-{self.run_id}"),
            asyncio.create_task(self._ticker(), name=f"tick-{self.run_id}"),
        ]

    @property
    def read_offset(self) -> int:
        """A read-only stream: the WAL offset it has read and stored up to."""
        return self._read_from

    async def catch_up(self) -> int:
        """A read-only stream: store the records its WAL gained since the last call (in groups,
        so memory stays bounded); returns how many."""
        loop = asyncio.get_running_loop()
        done = 0
        while True:
            group = await loop.run_in_executor(self._io_pool, self._read_group)
            if not group:
                return done
            now = time.monotonic()
            for r in group:
                # bodies stay in memory (a group at a time): this stream has no WAL to re-read from
                self._backlog.add(r.end, None, r.writer, r.seq, r.rtype, r.body, now, False)
            self._unstored += len(group)
            await self._merge_backlog(drain=True)
            self._read_from = group[-1].end
            done += len(group)

    def _read_group(self) -> list:
        if self._reader is not None:
            group = self._reader(self._read_from)
            for r in group:
                self._spans[r.end] = _UNMERGED
                if r.seq > self.seqs.get(r.writer, 0):
                    self.seqs[r.writer] = r.seq
            self.stats["records"] += len(group)
            return group
        group = []
        for rec in read_records(os.path.join(self.dir, "wal"), self._read_from, reporter=self._report_damage):
            writer, seq = record_writer_seq(rec.type, rec.body)
            group.append(Appended(rec.end, None, writer, seq, rec.type, rec.body))
            self.stats["records"] += 1
            if len(group) >= REPLAY_GROUP:
                break
        return group

    async def _start_without_store(self) -> None:
        """Offline or uploading: recover the writers' seqs; the uploader (if any) goes on from
        its own cursor."""
        for rec in self.wal.records():
            writer, seq = record_writer_seq(rec.type, rec.body)
            if seq > self.seqs.get(writer, 0):
                self.seqs[writer] = seq
            if self.system_writer is None and rec.type == RECORD_EVENT and _event_kind(rec.body) == "system":
                self.system_writer = writer  # this host's, from before a restart: its seqs go on
        self._tasks = [asyncio.create_task(self._committer(), name=f"commit-{self.run_id}")]
        if self.dest != "offline":
            from .uploader import RemoteDestination, Uploader  # lazy: it loads grpc, which only uploading runs need

            # the token of the writer that opened the run, else the daemon's own environment's
            dest = RemoteDestination(
                self.dest,
                token=self.info.get("token") or os.environ.get("TRACKSIDE_TOKEN") or None,
                ca=os.environ.get("TRACKSIDE_TLS_CA") or None,
            )
            info = {k: v for k, v in self.info.items() if k not in ("root", "dest", "token")}
            self.uploader = Uploader(
                self.run_id,
                self.root,
                self.dir,
                info,
                dest,
                limit=lambda: self.wal.durable_offset,
                interval=float(self.settings.get("upload_interval", 1.0)),
            )
            self._upload_stop = asyncio.Event()
            backlog = await asyncio.get_running_loop().run_in_executor(self._io_pool, self.uploader.count_backlog)
            self.uploader.durable(self.wal.durable_offset, backlog)
            self._tasks.append(
                asyncio.create_task(self.uploader.run(stop=self._upload_stop), name=f"upload-{self.run_id}")
            )

    # -- stage 1: accept ---------------------------------------------------------------------

    def accept(self, conn, writer: int, seq: int, record: bytes) -> None:
        """Append one batch; its ack follows once it is durable. Raises BadRecord."""
        if seq <= self.seqs.get(writer, 0):
            # already in the WAL (a resend after a reconnect): ack it, store nothing
            self.stats["duplicates"] += 1
            self.commit.put(Appended(self.wal.end_offset, conn, writer, seq, None, None))
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
        self.commit.put(Appended(offset_end, conn, writer, seq, rtype, body))

    def accept_record(self, record) -> tuple[bool, int]:
        """Append one framed WAL record that carries its own ``(writer, seq)`` (an upload, a
        sync): ``(new, end offset)``; a record already held is not appended again (new=False).
        Raises BadRecord."""
        status, rtype, start, end = codec.parse_record(record)
        if status != PARSE_OK or end != len(record):
            raise BadRecord(f"record: {PARSE_REASONS.get(status, 'record does not fill the frame')}")
        writer, seq = record_writer_seq(rtype, memoryview(record)[start:end])
        new = seq > self.seqs.get(writer, 0)
        self.accept(None, writer, seq, record)
        return new, self.commit.pending[-1].end

    async def durable(self, offset: int) -> None:
        """Return once the WAL is durable up to ``offset`` and the batches before it have their
        acks sent (or held: backpressure)."""
        await self.commit.durable(offset)

    # -- stage 2: commit and ack ---------------------------------------------------------------

    async def _committer(self) -> None:
        await self.commit.run()
        if self.local:  # closing: the last records are in the backlog, the materializer drains it
            self._committed_all = True
            self._merge_wanted.set()

    def _committed(self, group: list) -> None:
        """A committed group: into the backlog (or to the uploader), and acknowledged."""
        fresh = [r for r in group if r.rtype is not None]
        if self.local and fresh:
            now = time.monotonic()
            written = self.wal.written_offset
            for r in fresh:
                self._backlog.add(r.end, r.conn, r.writer, r.seq, r.rtype, r.body, now, r.end <= written)
            self._unstored += len(fresh)
            self._merge_wanted.set()
        acks: dict = {}
        for r in group:
            if r.conn is not None:
                acks[r.conn] = (r.writer, r.seq)
        for conn, (writer, seq) in acks.items():
            self._ack(conn, writer, seq)
        if not self.local:
            try:
                self._committed_without_store(fresh)
            except Exception:  # a bug here must not stop acks: the WAL has the records
                log.exception("run %s: after-commit work failed", self.run_id)

    def _backlog_full(self) -> bool:
        # a waiting record costs memory of its own (~256 bytes) even when its body is on disk
        return self._backlog.bytes + 256 * self._backlog.records > MERGE_BACKLOG

    def _ack(self, conn, writer: int, seq: int) -> None:
        """Acknowledge a durable batch; while the backlog is full, a writer with records waiting
        in it gets its ack later (``_release_acks``), so its bounded buffer makes it wait."""
        if self._backlog_full() and self._backlog.waiting(writer):
            self._held_acks[conn] = (writer, seq)
        else:
            self._held_acks.pop(conn, None)
            conn.send(Ack(seq))

    def _release_acks(self) -> None:
        if not self._held_acks:
            return
        full = self._backlog_full()
        for conn, (writer, seq) in list(self._held_acks.items()):
            if not full or not self._backlog.waiting(writer) or self._closing:
                del self._held_acks[conn]
                conn.send(Ack(seq))

    def _committed_without_store(self, group) -> None:
        """Offline or uploading, a writer's finish is done once its records are durable."""
        for r in group:
            if r.rtype == RECORD_EVENT:
                if event_decoder.decode(r.body).kind == "finish":
                    self.finished_writers.add(r.writer)
        self._send_done(group)
        if self.uploader is not None and group:
            self.uploader.durable(group[-1].end, len(group))

    # -- stage 3: merge and store --------------------------------------------------------------

    async def _materializer(self) -> None:
        while True:
            await self._merge_wanted.wait()
            self._merge_wanted.clear()
            try:
                await self._merge_backlog(drain=self._committed_all)
            except Exception:  # a bug here must not stop ingestion: the WAL keeps the data
                log.exception("run %s: materializing failed; the WAL keeps the records", self.run_id)
                if self._committed_all:
                    return  # what is left waits in the WAL for the next start (see complete)
            if self._committed_all and not self._backlog.records:
                return

    async def _merge_backlog(self, drain: bool = False) -> None:
        """Merge and store what the backlog serves, a group at a time, until it serves nothing.
        The next group is merged while the store writes the one before (one write in flight,
        so groups are stored in order)."""
        try:
            while True:
                group = await self._next_group(drain)
                if self._writing is not None:
                    await self._writing
                    self._writing = None
                if group is None:
                    return
                self._writing = asyncio.ensure_future(self._store_group(*group))
        finally:
            if self._writing is not None:
                writing, self._writing = self._writing, None
                await writing

    async def _next_group(self, drain: bool):
        """Merge records the backlog serves, up to ``MERGE_GROUP`` bytes, and finalize: the
        store call's arguments and the records, or None when there is nothing to store."""
        now = time.monotonic()
        group = _Group()
        size = 0
        while size < MERGE_GROUP:
            served = self._backlog.take(self.merger, now, drain)
            if served is None:
                break
            rec, overdue = served
            group.records.append(rec)
            size += rec.size
            try:
                body = rec.body
                if body is None:
                    found = await asyncio.get_running_loop().run_in_executor(
                        self._io_pool, read_record, self.wal.directory, rec.end - rec.size, rec.end, self._report_damage
                    )
                    if found is None:  # damaged on disk since it was written: reported
                        continue
                    body = found.body
                # held back past the merge window: its rows are as old as the record, so the
                # merger lets them go at once instead of a window later
                top = await self._feed(
                    group, rec.conn, rec.writer, rec.seq, rec.rtype, body, rec.since if overdue else now
                )
                if self._spans is not None:
                    self._spans[rec.end] = _NO_STEPS if top is None else top
            except Exception:  # a bug here must not stop ingestion: the WAL keeps the record
                log.exception("run %s: merging writer %d's batch %d failed", self.run_id, rec.writer, rec.seq)
                if self._spans is not None:
                    self._spans[rec.end] = _NO_STEPS
        if not group.records and not (self._tick and (self.merger.pending() or self._summary_dirty)):
            return None
        self._tick = False  # an empty group is the ticker's: rows the merge window let go
        try:
            return self._changes(group, now, self._backlog.served_through()), group.records
        except Exception:
            self._unstored -= len(group.records)
            raise

    async def _store_group(self, changes: dict, records: list) -> None:
        try:
            await self.storing.write(**changes)
            self._send_done(records)
        finally:
            self._unstored -= len(records)
            self._release_acks()

    async def _feed(self, group: "_Group", conn, writer: int, seq: int, rtype: int, body, now: float):
        """One record into the merger (a LOG record) or into ``group`` (an event). A record that
        does not decode is reported and skipped, and its writer is no longer waited for.
        Returns the highest step of a LOG record's entries (None for anything else)."""
        if rtype == RECORD_LOG:
            taken = self.merger.add_plain(writer, body, now) if self._columns else None  # numbers, steps rising
            if taken is not None:
                n, top = taken
                self.stats["entries"] += n
                self.stats["entries_as_columns"] += n
                return top
            try:
                _, _, entries = codec.decode_batch(body)
            except codec.CodecError as e:
                return self._undecodable(conn, writer, seq, str(e))
            if any(e[4] is not None for e in entries):
                entries = [self._with_payload(e, writer, seq) for e in entries]
            if writer not in self.merger.writers:
                self.merger.join(writer)
            dropped = self.merger.stats["late_dropped"]
            self.merger.add(writer, entries, now)
            if self.merger.stats["late_dropped"] != dropped and self._typed_steps:
                # late entries dropped (late_steps="drop") make no row that would take their
                # steps out of _typed_steps
                self._typed_steps = {s for s in self._typed_steps if self.merger.is_pending(s)}
            self.stats["entries"] += len(entries)
            return max((e[0] for e in entries), default=None)
        try:
            ev = event_decoder.decode(body)
        except msgspec.DecodeError as e:
            return self._undecodable(conn, writer, seq, str(e))
        try:
            await self._apply_event(ev, conn, group)
        except (ValueError, TypeError, AttributeError) as e:  # one writer's bad event
            self._warn(f"ignored {ev.kind!r} event of writer {writer} (seq {seq}): {e}")

    def _changes(self, group: "_Group", now: float, fed_through: Optional[int]) -> dict:
        """Finalize after ``group``: the store call's arguments. ``fed_through``: every record
        before this WAL offset is merged."""
        finished = group.finished
        everything = bool(finished) and self.merger.live_writers() == 0 and self.world_finished()
        rows = self.merger.finalize(now, everything=everything)
        # the WAL cursor moves only past records whose rows are all stored
        cursor = self._cursor(fed_through)
        if rows:
            self.summary.update(rows)
            self._summary_dirty = True
            self.next_step = max(self.next_step, rows[-1].step + 1)  # rows come in step order
        summary = None
        # the cursor never moves past a change the stored summary lacks: a replay from it would
        # not see that change again (an acknowledged run.summary assignment was lost so)
        if self._summary_dirty and (finished or cursor is not None or now - self._last_summary >= SUMMARY_EVERY):
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
        if len(self.damage) > self._damage_stored:
            group.meta["wal_damage"] = self._damage_report()
        return dict(
            rows=rows,
            typed_steps=self._take_typed(rows),
            config=group.config,
            metadata=group.meta,
            console=group.console,
            marks=group.marks,
            summary=summary,
            cursor=cursor,
            final_state=final_state,
            artifacts=artifacts,
            system=group.system,
        )

    def _cursor(self, fed_through: Optional[int]) -> Optional[int]:
        """Where the cursor may move after a finalize: past every merged record when no row is
        pending. A stream with a reader (its records in read order, every record read merged
        before a finalize: the reader's groups fit one store group) also moves it past the
        leading records whose steps all lie below the lowest pending row: their rows are final,
        and a pending row's entries all lie in records after them. None: it stays."""
        low = self.merger.lowest_pending()
        spans = self._spans
        if spans is None:
            return fed_through if low is None else None
        cursor = None
        for end, top in spans.items():
            if top == _UNMERGED or (low is not None and top >= low):
                break
            cursor = end
        if cursor is not None:
            for end in [e for e in spans if e <= cursor]:
                del spans[end]
        return cursor

    def _send_done(self, group) -> None:
        """Tell each finished writer how far it is done: its finish and whatever it sent after
        (console lines flushed at exit ride behind the finish event). Told on the writer's
        connections now, not only the one its records came on: a writer that reconnected while
        they were merged would never hear it otherwise (and a later reconnect hears it on
        ``welcomed``)."""
        done: dict = {}
        for _, conn, writer, seq, *_ in group:
            if writer in self.finished_writers and seq > done.get(writer, 0):
                done[writer] = seq
        if not done:
            return
        for writer, seq in done.items():
            if seq > self._done.get(writer, 0):
                self._done[writer] = seq
        conns = {id(c): c for c in [*self.connections, *(r.conn for r in group if r.conn is not None)]}
        for conn in conns.values():
            seq = done.get(conn.writer_id)
            if seq is None:
                continue
            held = self._held_acks.pop(conn, None)
            if held is not None:
                conn.send(Ack(held[1]))  # stored is durable: no writer hears Done before its Ack
            conn.send(Done(seq))

    def welcomed(self, conn, writer: int) -> None:
        """After a writer's Welcome: a writer whose finish is stored already (it reconnected
        after the daemon died between storing its finish and telling it so; the records came
        back through the WAL, with no connection to answer) hears its Done again."""
        seq = self._done.get(writer)
        if seq is not None:
            conn.send(Done(seq))

    async def _apply_event(self, ev, conn, group: "_Group") -> None:
        kind, data, writer, seq = ev.kind, ev.data, ev.writer, ev.seq
        config, meta, console, finished, system = group.config, group.meta, group.console, group.finished, group.system
        if kind == "config":
            config.update(data)
        elif kind == "summary":
            self.summary.update_explicit(data.get("set") or {}, data.get("del") or ())
            self._summary_dirty = True
        elif kind == "define_metric":
            self.merger.define_metric(**data)
        elif kind == "console":
            # appended, not merged: a replay from an older cursor must not append them again
            if seq <= self._marks.get(writer, 0):
                return
            console.extend(tuple(x) for x in data)
            self._marks[writer] = group.marks[writer] = seq
        elif kind == "meta":
            meta.update(data)
        elif kind == "run":
            if self._writing is not None:  # the groups before this event are stored before it
                await self._writing
            await self._store_call(self.store.upsert_run, self.run_id, **_run_fields(data, self.root))
        elif kind == "join":
            self.merger.join(writer)
            self.ranks[writer] = int(data.get("rank") or 0)
            self.world_size = max(self.world_size, int(data.get("world_size") or 0))
        elif kind == "artifact":
            # checked here, so that one writer's bad artifact is a warning, never a failed group
            self._artifacts.append(check_artifact(data))
        elif kind == "system":  # a host's system metrics, from a WAL that travelled (see write_system)
            host = str(data["host"])
            system.extend((int(t), host, dict(values)) for t, values in data["rows"])
            meta.update(data.get("metadata") or {})
        elif kind == "finish":
            if (data or {}).get("system"):  # a host's system metrics ended: no training writer's end
                self.finished_writers.add(writer)
                return
            self.merger.leave(writer)
            self.finished_writers.add(writer)
            finished.append((conn, seq, data or {}))
            if conn is not None:
                # a writer of this host with no connection left is gone (killed, say) or
                # between connections: the last live writer's finish does not wait for it, its
                # rows are final now (what it sends later amends them)
                self._leave_disconnected()

    def _undecodable(self, conn, writer: int, seq: int, reason: str) -> None:
        """A record that passed its checksum but does not decode (a foreign or broken writer):
        skipped and counted; its writer holds no rows back, and its connection is closed."""
        self.stats["undecodable"] = self.stats.get("undecodable", 0) + 1
        self._warn(f"skipped writer {writer}'s batch {seq}: it does not decode ({reason})")
        self.merger.leave(writer)
        refuse = getattr(conn, "refuse", None)
        if refuse is not None:
            refuse(f"batch {seq} does not decode ({reason}); the writer's connection is closed")

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
            self._warn(
                f"writer {writer} batch {seq}: step {step} has a payload that is not a map of values ({e}); kept aside"
            )
            return entry
        self._typed_steps.add(step)
        return (step, commit, time_us, {**values, **rich}, None)

    def _take_typed(self, rows) -> set:
        """The steps of ``rows`` that got rich values: only their rows can hold media to index
        (plain entries carry scalars only)."""
        if not self._typed_steps or not rows:
            return set()
        typed = self._typed_steps.intersection(rows.steps if isinstance(rows, ColumnRows) else [r.step for r in rows])
        self._typed_steps -= typed
        return typed

    async def _ticker(self) -> None:
        """Finalize rows held back by a silent writer once the merge window passes; serve the
        records the backlog held back for one."""
        while True:
            await asyncio.sleep(1.0)
            try:
                if self._away:
                    self._check_away()
            except Exception:  # a bug must not end the ticks that let held rows go
                log.exception("run %s: looking at departed writers failed", self.run_id)
            # a summary set by a writer that then fell silent (or died) is stored within ~2 s too
            if self.merger.pending() or self._backlog.records or self._summary_dirty:
                self._tick = True
                self._merge_wanted.set()

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
            await self.storing.write(system=[(t, host, values) for t, values in rows], metadata=metadata or None)
            return
        # no store here: into the WAL, as an event of this host's writer, to travel with the run
        writer = self.system_writer
        if writer is None:
            writer = self.system_writer = new_system_writer(self.seqs)
        seq = self.seqs.get(writer, 0) + 1
        data = {"host": host, "rows": [[t, values] for t, values in rows], "metadata": metadata or None}
        body = encode_event(Event(writer, seq, "system", data))
        end = self.wal.append(codec.frame(RECORD_EVENT, body))
        self.seqs[writer] = seq
        self.commit.put(Appended(end, None, writer, seq, RECORD_EVENT, memoryview(body)))

    def training_done(self) -> bool:
        """Every training writer that sent anything has finished (the host's system-metrics
        writer is no training writer: it ends with them, see ``finish_system``)."""
        writers = set(self.seqs)
        writers.discard(self.system_writer)
        return bool(writers) and writers <= self.finished_writers

    def finish_system(self) -> None:
        """The run's system metrics from this host are all written: say so in the WAL, so that
        whoever stores the run (a server) knows this writer is done too."""
        self.system_done = True
        writer = self.system_writer
        if writer is None or self.local or writer in self.finished_writers:
            return
        seq = self.seqs[writer] + 1
        body = encode_event(Event(writer, seq, "finish", {"system": True}))
        end = self.wal.append(codec.frame(RECORD_EVENT, body))
        self.seqs[writer] = seq
        self.commit.put(Appended(end, None, writer, seq, RECORD_EVENT, memoryview(body)))

    def _recall(self, body) -> None:
        """An event stored before this stream started (a server restarted, a run reopened):
        the ranks that announced themselves and those that finished still count."""
        try:
            ev = event_decoder.decode(body)
            if ev.kind == "join":
                self.ranks[ev.writer] = int(ev.data.get("rank") or 0)
                self.world_size = max(self.world_size, int(ev.data.get("world_size") or 0))
            elif ev.kind == "finish":
                self.finished_writers.add(ev.writer)
            elif ev.kind == "define_metric":
                self.merger.define_metric(**ev.data)
        except (ValueError, TypeError, AttributeError, msgspec.DecodeError):
            pass  # a bad event was reported when it was stored

    def recall(self, rtype: int, writer: int, body, values: bool) -> None:
        """A record stored before this stream started, read by whoever feeds a read-only stream
        (see ``reader``), before ``start``: an event counts as on a WAL's replay (ranks, finished
        writers, metric definitions); a LOG record's entries, with ``values``, are kept for the
        reduce rule of late entries (``Merger.recall``)."""
        self.seqs.setdefault(writer, 0)  # a writer of the run: done() waits for its finish
        if rtype == RECORD_EVENT:
            self._recall(body)
        elif values:
            try:
                self.merger.recall(writer, codec.decode_batch(body)[2])
            except Exception:  # merging it failed when it was stored, and was reported then
                pass

    def world_finished(self) -> bool:
        """A stream that stores uploads (a server's) has seen every rank of the announced world
        finish; a host's daemon sees its own ranks only, and does not wait for the others (nor
        does ``trackside sync`` of a host's offline run into its own root)."""
        if self.live or (self.read_only and self._reader is None) or not self.world_size:
            return True
        # ranks, not writers: a rank's children (data loader workers) inherit its RANK
        return len({self.ranks[w] for w in self.finished_writers.intersection(self.ranks)}) >= self.world_size

    def done(self) -> bool:
        """Every writer that sent anything, the system-metrics ones included, has finished (and,
        on a server, every rank of the announced world)."""
        return self.finished_writers >= set(self.seqs) and self.world_finished()

    # -- shutdown --------------------------------------------------------------------------------

    def complete(self) -> bool:
        """After close: nothing of this run is left for a later daemon to do (every row
        stored, or everything uploaded; an offline run waits for ``trackside sync``)."""
        if self.uploader is not None:
            return self.uploader.caught_up()
        return not self.local or (self.merger.pending() == 0 and not self._backlog.records)

    def settled(self) -> bool:
        """Everything appended is durable and through the materializer (rows a live writer
        still holds back may wait in the merger, records of writers far ahead of it in the
        backlog)."""
        return (
            not (self.commit and self.commit.pending)
            and self._unstored == self._backlog.records
            and not self._backlog.ready(self.merger, time.monotonic())
        )

    def idle(self) -> bool:
        if self.uploader is not None and not self.uploader.caught_up():
            return False
        if self._expected:
            now = time.monotonic()
            for writer, until in list(self._expected.items()):
                if until <= now:
                    del self._expected[writer]  # opened and never came: it holds nothing any more
            if self._expected:
                return False
        return not self.connections and not (self.commit and self.commit.pending) and self._unstored == 0

    async def close(self) -> None:
        """Drain: commit what is appended, merge and store it, fsync and close the WAL."""
        self._closing = True
        if self.storing is not None:
            self.storing.closing = True
        if self.commit is not None:
            self.commit.closing = True
            self.commit.wake()
        if self.read_only:
            rows = self.merger.finalize(time.monotonic(), everything=False)
            if rows or self._summary_dirty:
                self.summary.update(rows)
                await self.storing.write(
                    rows=rows, typed_steps=self._take_typed(rows), summary=self.summary.snapshot(), cursor=None
                )
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
        self._release_acks()
        rows = self.merger.finalize(time.monotonic(), everything=False)
        if rows or self._summary_dirty:
            self.summary.update(rows)
            await self.storing.write(
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
            log.warning(
                "run %s: uploads to %s go on at the next start (%d bytes behind)",
                self.run_id,
                self.dest,
                self.uploader.status()["lag_bytes"],
            )
        except Exception:
            log.exception("run %s: the uploader failed", self.run_id)
        self.uploader.dest.close()

    # -- reporting -------------------------------------------------------------------------------

    def _report_damage(self, path, offset, nbytes, reason) -> None:
        # called from the io threads too: a list append is atomic, the store picks it up later
        self.damage.append({"path": os.fspath(path), "offset": offset, "bytes": nbytes, "reason": reason})
        log.warning(
            "run %s: WAL damage in %s at offset %d: %d bytes dropped (%s)", self.run_id, path, offset, nbytes, reason
        )

    def _damage_report(self) -> list:
        """Every damage found so far, for the run's metadata (``wal_damage``)."""
        damage = list(self.damage)
        self._damage_stored = len(damage)
        return damage

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("run %s: %s", self.run_id, message)

    def expect(self, writer: int, seconds: float) -> None:
        """``writer`` opened the run and will connect its stream (gRPC Open, then Send): the run
        is not idle while it may still come, for up to ``seconds``."""
        self._expected[writer] = time.monotonic() + seconds

    def attach(self, conn, writer: int) -> None:
        """A writer connected: it takes part in merging from now on (see Merger.join)."""
        self.connections.add(conn)
        self._expected.pop(writer, None)
        self._away.pop(writer, None)
        if writer not in self.finished_writers:
            self.merger.join(writer, time.monotonic())

    def detach(self, conn) -> None:
        """A writer's connection ended. One that never sent anything (a process forked from a
        rank that did not log, say) or whose process is gone (killed) stops holding rows back;
        one that did may come back (a reconnect), and its rows wait for it while its process
        lives, up to the merge window (the ticker looks at its pid)."""
        self.connections.discard(conn)
        writer = conn.writer_id
        if any(c.writer_id == writer for c in self.connections):
            return
        pid = getattr(conn, "peer", None)
        if writer not in self.seqs or (isinstance(pid, int) and not pid_alive(pid)):
            self._leave(writer)
        else:
            self._away[writer] = pid if isinstance(pid, int) else None

    def _leave(self, writer: int) -> None:
        self._away.pop(writer, None)
        if writer in self.merger.writers:
            self.merger.leave(writer)
            self._tick = True  # rows it held back may be final now
            self._merge_wanted.set()

    def _leave_disconnected(self) -> None:
        connected = {c.writer_id for c in self.connections}
        for writer in [w for w in self.merger.writers if w not in connected]:
            self._leave(writer)

    def _check_away(self) -> None:
        """Writers whose connection ended while their process lived: gone once it is."""
        for writer, pid in list(self._away.items()):
            if pid is not None and not pid_alive(pid):
                self._leave(writer)

    def status(self) -> dict:
        return {
            "run_id": self.run_id,
            "root": self.root,
            "writers": len(self.seqs),
            "connections": len(self.connections),
            "wal_bytes": self.wal.end_offset if self.wal else self._read_from,
            "durable_offset": self.wal.durable_offset if self.wal else self._read_from,
            "merge_backlog": self._backlog.records,
            "pending_rows": self.merger.pending(),
            "error": self.error,
            "damage": list(self.damage),
            "dest": self.dest,
            "upload": self.uploader.status() if self.uploader is not None else None,
            **self.stats,
            **{f"merge_{k}": v for k, v in self.merger.stats.items()},
        }


_UNMERGED = float("inf")
_NO_STEPS = float("-inf")


def _event_kind(body) -> Optional[str]:
    try:
        return event_decoder.decode(body).kind
    except msgspec.DecodeError:
        return None


def new_system_writer(taken) -> int:
    """A writer id for this host's system metrics in a run's WAL: random, as the training
    writers' are, so two hosts uploading into one run never share one, whatever their host
    names (containers and pods share them). A restarted daemon finds it again in the WAL."""
    while True:
        writer = random.getrandbits(62) + 1
        if writer not in taken:
            return writer


def _run_fields(data: dict, root: str) -> dict:
    keep = ("project", "name", "group", "job_type", "tags", "config", "metadata")
    fields = {k: data[k] for k in keep if data.get(k) is not None}
    fields.setdefault("project", "uncategorized")
    fields["root_dir"] = root
    started = (data.get("metadata") or {}).get("started_at")
    if isinstance(started, (int, float)):
        fields["created_at"] = float(started)  # a run synced or uploaded later keeps its own start time
    return fields
