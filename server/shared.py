"""The servers of a tier on one PostgreSQL database: ``trackside server --shared``.

Any number of servers share one database and one root (the files); any of them takes any
upload, and a daemon may move from one to another mid-run. Design and reasons:
docs/multiserver.md. In short:

- **Ingest anywhere.** ``Append`` checks the records as a single server does and inserts them
  into ``run_records`` in one transaction; the primary key ``(run_id, writer, seq)`` drops what
  the tier holds already, whichever server got it first. The reply comes after the commit: an
  acknowledged record is in the database, not on one server's disk.
- **Materialize under one owner per run.** A server owns a run while it holds the run's
  session advisory lock (``pg_try_advisory_lock``) on its coordination connection. The owner
  feeds the run's records, in ``id`` order from the run's store cursor, through the pipeline a
  single server runs (a read-only ``RunStream``: merge across writers and hosts, summary,
  store), and the cursor moves in the transaction that stores the rows, so each record is
  stored once. A server that dies loses its session and with it its locks; another server's
  next poll takes the run over and goes on from the cursor.
- **A lost owner writes nothing more.** Taking a run, the owner writes a fresh token into
  ``shared_runs.owner`` (an update that waits for the write transactions of the run still in
  flight, which hold the row ``FOR SHARE``) before it reads the cursor; each of its store
  transactions of the run first checks, holding the row ``FOR SHARE``, that the token is still
  its own (``Store.guard_run``). A server whose coordination session ended while it was writing
  (a network partition, a stalled process) finishes the transaction it had begun before the new
  owner reads the cursor, and every later one fails (``FencedOut``) without writing.
- **No record is skipped.** Identity values are handed out before commit, so a reader could see
  id 12 committed while id 11 is still being inserted. Each ingest transaction holds the run's
  feed lock shared, and the owner takes it exclusively around each read: it sees every
  transaction that took an id before its read, and any later one gets a higher id.

Everything here runs only with a ``postgresql://`` store; the default server (one process,
SQLite or PostgreSQL) is ``daemon/sink.py``'s ``LocalSink``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
import time
from typing import Optional

import msgspec

from trackside import _native as codec
from trackside._native.constants import PARSE_OK, PARSE_REASONS, RECORD_EVENT, RECORD_HEADER_SIZE, RECORD_LOG
from trackside.daemon.records import BadRecord, record_writer_seq
from trackside.daemon.sink import LocalSink, StoreHandle, check_record, check_run
from trackside.daemon.stream import Appended, RunStream
from trackside.store import StoreError
from trackside.store.dialect import describe, error_text, is_postgres

log = logging.getLogger("trackside.shared")

# Advisory lock spaces (the first key of pg_advisory_lock(int, int); the second is the run id's
# hashtext). Distinct from the store's write lock (store/dialect.py), which is a single bigint key.
OWN_LOCK = 0x74727331  # session lock: the server holding it materializes the run
FEED_LOCK = 0x74727332  # transaction lock: ingests hold it shared, the owner's reads exclusively

SCHEMA = """
CREATE TABLE IF NOT EXISTS run_records (
    run_id  TEXT COLLATE "C" NOT NULL,
    writer  BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    id      BIGINT GENERATED ALWAYS AS IDENTITY,
    rtype   SMALLINT NOT NULL,
    body    BYTEA NOT NULL,
    PRIMARY KEY (run_id, writer, seq)
);
CREATE INDEX IF NOT EXISTS run_records_order ON run_records (run_id, id);
CREATE INDEX IF NOT EXISTS run_records_arrival ON run_records (id);
CREATE TABLE IF NOT EXISTS shared_runs (
    run_id        TEXT COLLATE "C" PRIMARY KEY,
    info          BYTEA NOT NULL,
    done_through  BIGINT NOT NULL DEFAULT 0,
    owner         TEXT
);
"""
# shared_runs of a tier from before owner tokens; only run when the column is missing (an ALTER
# TABLE waits for every transaction on the table, and every later one waits for it)
ADD_OWNER = "ALTER TABLE shared_runs ADD COLUMN IF NOT EXISTS owner TEXT"
# ``run_records``: every uploaded record (``body``: the framed WAL record as the daemon sent it),
# ``id`` its arrival order, which the owner's cursor (the store's ``runs.wal_cursor``) runs over.
# ``shared_runs``: a run's info from its first upload (msgpack: project, settings ...), and
# ``done_through``: the id through which an owner materialized everything before it let the run
# go (a run whose records go past it wants an owner); ``owner``: the token of the server that took
# the run last (its store transactions of the run check it first).

POLL = 0.1  # seconds between looks for new records (runs without an owner, owned runs to feed)
SCAN_EVERY = 2.0  # seconds between looks for runs behind that the quick look cannot see
FEED_EVERY = 1.0  # an owned run reads its records at least this often, new ones seen or not
IDLE_CLOSE = 30.0  # seconds without new records after which an owner lets a run go
READ_RECORDS = 256  # records per read of an owner ...
READ_BYTES = 4 << 20  # ... or about this many bytes
RECALL_RECORDS = 2048  # LOG records before the cursor a new owner merges again (values kept for late entries)
CONNECTIONS = 6  # database connections for ingest and the owners' reads
_MAX_ID = (1 << 63) - 1

_encode_info = msgspec.msgpack.Encoder().encode
_decode_info = msgspec.msgpack.Decoder(dict).decode


class FencedOut(Exception):
    """This server's write of a run was refused: another server owns the run now."""


def _psycopg():
    import psycopg  # optional: psycopg (pip install 'trackside[server]'); only a shared server needs it

    return psycopg


class _Pool:
    """A few autocommit connections, each used by one thread at a time; a broken one is
    replaced when it is handed back."""

    def __init__(self, url: str, size: int):
        self.url = url
        self._pg = _psycopg()
        self._free: queue.LifoQueue = queue.LifoQueue()
        self._all: list = []
        self._lock = threading.Lock()
        for _ in range(size):
            self._free.put(None)  # connected on first use

    def _connect(self):
        try:
            conn = self._pg.connect(self.url, autocommit=True)
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS ingest"
                " (ord INT, writer BIGINT, seq BIGINT, rtype SMALLINT, body BYTEA) ON COMMIT DELETE ROWS"
            )
        except self._pg.Error as e:
            raise StoreError(f"cannot connect to the store {describe(self.url)}: {error_text(e)}") from None
        with self._lock:
            self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def connection(self):
        conn = self._free.get()
        try:
            if conn is None or conn.closed or conn.broken:
                conn = self._connect()
            yield conn
        except self._pg.Error as e:
            if conn is not None and not conn.closed and not conn.broken:
                conn.rollback()
            raise StoreError(f"{describe(self.url)}: {error_text(e)}") from None
        finally:
            self._free.put(conn)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _parse(record) -> tuple[int, int, int]:
    """``(writer, seq, rtype)`` of one framed record, checked as a daemon checks what it appends
    (frame, checksum, the body's writer and seq). Raises BadRecord."""
    status, rtype, start, end = codec.parse_record(record)
    if status != PARSE_OK or end != len(record):
        raise BadRecord(f"record: {PARSE_REASONS.get(status, 'record does not fill the frame')}")
    if rtype not in (RECORD_LOG, RECORD_EVENT):
        raise BadRecord(f"record type {rtype} is not a LOG or EVENT record")
    writer, seq = record_writer_seq(rtype, memoryview(record)[start:end])
    if not (0 < writer <= _MAX_ID and 0 < seq <= _MAX_ID):
        raise BadRecord(f"writer {writer} seq {seq}: out of range")
    return writer, seq, rtype


def _owner_check(run_id: str, token: str):
    """The guard of an owner's store transactions of ``run_id`` (``Store.guard_run``): the run's
    token is still ``token``, and stays so until the transaction ends (the row held ``FOR
    SHARE``: a new owner's claim waits for it). Raises FencedOut otherwise."""

    def check(conn) -> None:
        row = conn.execute("SELECT owner FROM shared_runs WHERE run_id = ? FOR SHARE", (run_id,)).fetchone()
        if row is None or row[0] != token:
            raise FencedOut(f"run {run_id}: another server took it over")

    return check


class _Owned:
    """A run this server owns: its stream and the task feeding it."""

    def __init__(self, run_id: str, stream: RunStream):
        self.run_id = run_id
        self.stream = stream
        self.wake = asyncio.Event()
        self.task: Optional[asyncio.Task] = None
        self.fed_at = time.monotonic()  # when it last read new records
        self.release = False  # done, idle or shutting down: close and unlock after this pass


class SharedSink(LocalSink):
    """The sink of a server of a tier: ``append`` inserts into the shared database; runs are
    materialized by whichever server owns them (see the module's docstring). Files go under the
    shared root as with a ``LocalSink``."""

    def __init__(self, root: str, *, db: str, idle_close: float = IDLE_CLOSE, poll: float = POLL):
        if not is_postgres(db):
            raise ValueError("a shared server needs a postgresql:// database (--db)")
        super().__init__(root, db=db, idle_close=idle_close)
        self.poll = poll
        self.pool: Optional[_Pool] = None
        self.owned: dict[str, _Owned] = {}
        self._coord = None  # the coordination connection: holds the run locks, polls
        self._coord_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coord")
        self._db_pool = concurrent.futures.ThreadPoolExecutor(CONNECTIONS, thread_name_prefix="shared")
        self._seen = 0  # the highest record id the quick look has seen
        self._elsewhere: dict[str, float] = {}  # run -> when its lock was found taken (tried again at a scan)
        self._scanned = 0.0
        self._stopping = False
        self._takes = 0  # runs taken so far: with the server's id, each take's owner token
        self._id = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"
        self.stats.update(owned=0, taken_over=0, released=0, fenced=0)

    # -- lifetime --------------------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(os.path.join(self.root, "runs"), exist_ok=True)
        loop = asyncio.get_running_loop()
        self.handle = await loop.run_in_executor(None, StoreHandle, self.root, self.db)
        self.pool = _Pool(self.db, CONNECTIONS)
        await loop.run_in_executor(self._db_pool, self._create_tables)
        await self._coord_call(self._connect_coord)
        self._seen = await self._coord_call(self._max_id)
        self._idle_task = asyncio.create_task(self._coordinate(), name="coordinate")

    def _create_tables(self) -> None:
        with self.pool.connection() as conn:
            with conn.transaction():
                # one server creates them at a time (the store's write lock, store/dialect.py)
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x74726B73,))
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                if not conn.execute(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                    " AND table_name = 'shared_runs' AND column_name = 'owner'"
                ).fetchone():
                    conn.execute(ADD_OWNER)

    async def close(self) -> None:
        self._stopping = True
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_task
        for owned in list(self.owned.values()):
            owned.release = True
            owned.wake.set()
        for owned in list(self.owned.values()):
            if owned.task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await owned.task
        if self._coord is not None:
            await self._coord_call(self._coord.close)
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        self._coord_pool.shutdown()
        self._db_pool.shutdown()
        self.io_pool.shutdown()
        if self.pool is not None:
            self.pool.close()

    # -- ingest ----------------------------------------------------------------------------------

    async def append(self, run_id: str, info: dict, records) -> tuple[int, int]:
        """Insert a run's records into the tier's database: ``(stored, duplicates)`` once they
        are committed there. Raises BadRecord for a record it will not store (the records
        before it are stored), StoreError when the database cannot take them now."""
        check_run(run_id, info)
        rows = []
        bad = None
        for i, record in enumerate(records):
            try:
                check_record(run_id, record)
                writer, seq, rtype = _parse(record)
            except BadRecord as e:
                bad = e
                break
            rows.append((i, writer, seq, rtype, bytes(record)))
        stored = 0
        if rows:
            loop = asyncio.get_running_loop()
            stored = await loop.run_in_executor(self._db_pool, self._insert, run_id, _encode_info(info or {}), rows)
        duplicates = len(rows) - stored
        self.stats["uploads"] += 1
        self.stats["records"] += stored
        self.stats["duplicates"] += duplicates
        if bad is not None:
            raise bad
        return stored, duplicates

    def _insert(self, run_id: str, info: bytes, rows: list) -> int:
        with self.pool.connection() as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock_shared(%s, hashtext(%s))", (FEED_LOCK, run_id))
                conn.execute(
                    "INSERT INTO shared_runs (run_id, info) VALUES (%s, %s) ON CONFLICT (run_id) DO NOTHING",
                    (run_id, info),
                )
                with conn.cursor().copy("COPY ingest (ord, writer, seq, rtype, body) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["int4", "int8", "int8", "int2", "bytea"])
                    for row in rows:
                        cp.write_row(row)
                cur = conn.execute(
                    "INSERT INTO run_records (run_id, writer, seq, rtype, body)"
                    " SELECT %s, writer, seq, rtype, body FROM ingest ORDER BY ord"
                    " ON CONFLICT (run_id, writer, seq) DO NOTHING",
                    (run_id,),
                )
                return cur.rowcount

    async def wait_stored(self, run_id: str, timeout: float = 30.0) -> None:
        """Wait until this server's owned stream of ``run_id`` read everything there is (tests)."""
        deadline = time.monotonic() + timeout
        while True:
            last = await self._coord_call(self._last_id, run_id)
            owned = self.owned.get(run_id)
            if owned is None or owned.stream.read_offset >= last:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id}: not stored within {timeout} s")
            await asyncio.sleep(0.02)

    # -- coordination ----------------------------------------------------------------------------

    async def _coord_call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._coord_pool, fn, *args)

    def _connect_coord(self) -> None:
        pg = _psycopg()
        try:
            self._coord = pg.connect(self.db, autocommit=True)
        except pg.Error as e:
            raise StoreError(f"cannot connect to the store {describe(self.db)}: {error_text(e)}") from None

    def _max_id(self) -> int:
        return self._coord.execute("SELECT coalesce(max(id), 0) FROM run_records").fetchone()[0]

    def _last_id(self, run_id: str) -> int:
        row = self._coord.execute("SELECT max(id) FROM run_records WHERE run_id = %s", (run_id,)).fetchone()
        return row[0] or 0

    def _look(self, scan: bool) -> tuple[set, set]:
        """``(runs with records new since the last look, runs behind)``: the second only with
        ``scan`` (runs an owner let go before their last records, or whose owner died)."""
        new = set()
        rows = self._coord.execute(
            "SELECT run_id, max(id) FROM run_records WHERE id > %s GROUP BY run_id", (self._seen,)
        ).fetchall()
        for run_id, top in rows:
            new.add(run_id)
            self._seen = max(self._seen, top)
        behind = set()
        if scan:
            behind = {
                r
                for (r,) in self._coord.execute(
                    "SELECT s.run_id FROM shared_runs s WHERE EXISTS"
                    " (SELECT 1 FROM run_records r WHERE r.run_id = s.run_id AND r.id > s.done_through)"
                )
            }
        return new, behind

    def _try_lock(self, run_id: str) -> bool:
        return self._coord.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (OWN_LOCK, run_id)).fetchone()[0]

    def _unlock(self, run_id: str) -> None:
        self._coord.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (OWN_LOCK, run_id))

    def _info(self, run_id: str) -> dict:
        row = self._coord.execute("SELECT info FROM shared_runs WHERE run_id = %s", (run_id,)).fetchone()
        try:
            return _decode_info(row[0]) if row else {}
        except msgspec.DecodeError:
            return {}

    async def _coordinate(self) -> None:
        """Look for runs with new records every ``poll`` seconds: feed those this server owns,
        try to own the others; let go of runs that are done or idle."""
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                coord_lost = self._coord is None or self._coord.closed or self._coord.broken
                log.error(
                    "coordination failed (%s)%s", e, "; the runs this server owned are let go" if coord_lost else ""
                )
                if coord_lost:
                    self._abandon()
                    try:
                        await self._coord_call(self._connect_coord)
                    except StoreError:
                        pass
                await asyncio.sleep(1.0)

    async def _round(self) -> None:
        now = time.monotonic()
        scan = now - self._scanned >= SCAN_EVERY
        if scan:
            self._scanned = now
        new, behind = await self._coord_call(self._look, scan)
        for run_id in new | behind:
            owned = self.owned.get(run_id)
            if owned is not None:
                owned.wake.set()
                continue
            if self._stopping or (run_id not in behind and now - self._elsewhere.get(run_id, 0.0) < SCAN_EVERY):
                continue  # owned by another server a moment ago: looked at again at the next scan
            if await self._coord_call(self._try_lock, run_id):
                self._elsewhere.pop(run_id, None)
                await self._take(run_id)
            else:
                self._elsewhere[run_id] = now
        for owned in self.owned.values():
            if now - owned.fed_at >= FEED_EVERY:
                owned.wake.set()

    async def _take(self, run_id: str) -> None:
        """This server holds the run's lock: build its stream from the store's cursor and feed it."""
        try:
            info = await self._coord_call(self._info, run_id)
            loop = asyncio.get_running_loop()
            self._takes += 1
            token = f"{self._id}:{self._takes}"
            # the token first (waits for a former owner's transaction still in flight), the
            # cursor after it: a former owner's later writes are refused
            await loop.run_in_executor(self._db_pool, self._claim, run_id, token)
            await self.handle.call(self.handle.store.guard_run, run_id, _owner_check(run_id, token))
            await self.handle.call(self.handle.store.forget_run, run_id)  # another server may have written it
            cursor, next_step = await self.handle.call(self.handle.store.run_cursor, run_id)
            stream = RunStream(
                run_id,
                self.root,
                os.path.join(self.root, "runs", run_id),
                {**info, "dest": "local"},
                self.handle.store,
                self.handle.call,
                self.io_pool,
                read_only=True,
                live=False,
                reader=lambda offset: self._read(run_id, offset),
            )
            for writer, rtype, body, values in await loop.run_in_executor(self._db_pool, self._before, run_id, cursor):
                stream.recall(rtype, writer, body, values)
        except Exception:
            await self._coord_call(self._unlock, run_id)
            raise
        owned = self.owned[run_id] = _Owned(run_id, stream)
        self.stats["owned"] = len(self.owned)
        if cursor or next_step:  # stored by another server (or by this one) before
            self.stats["taken_over"] += 1
        log.info("run %s: materializing here from record %d", run_id, cursor)
        owned.task = asyncio.create_task(self._feed(owned), name=f"own-{run_id}")

    def _claim(self, run_id: str, token: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE shared_runs SET owner = %s WHERE run_id = %s", (token, run_id))

    def _before(self, run_id: str, cursor: int) -> list:
        """What a new owner recalls of the records before the cursor: every event, and the
        last RECALL_RECORDS LOG records (their values kept for late entries)."""
        if not cursor:
            return []
        out = []
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT id FROM run_records WHERE run_id = %s AND id <= %s AND rtype = %s"
                " ORDER BY id DESC OFFSET %s LIMIT 1",
                (run_id, cursor, RECORD_LOG, RECALL_RECORDS),
            ).fetchone()
            window = row[0] if row else 0
            for writer, rtype, body, id_ in conn.execute(
                "SELECT writer, rtype, body, id FROM run_records WHERE run_id = %s AND id <= %s"
                " AND (rtype = %s OR id > %s) ORDER BY id",
                (run_id, cursor, RECORD_EVENT, window),
            ):
                _, _, start, end = codec.parse_record(body)
                out.append((writer, rtype, memoryview(body)[start:end], id_ > window))
        return out

    def _read(self, run_id: str, offset: int) -> list:
        """The run's records after id ``offset``, in id order (a stream's reader, in an io
        thread); every ingest that took an id before this read has committed."""
        group = []
        with self.pool.connection() as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (FEED_LOCK, run_id))
                rows = conn.execute(
                    "SELECT id, writer, seq, rtype, body FROM"
                    " (SELECT id, writer, seq, rtype, body, sum(octet_length(body)) OVER (ORDER BY id) AS total"
                    "  FROM run_records WHERE run_id = %s AND id > %s ORDER BY id LIMIT %s) q"
                    " WHERE total - octet_length(body) < %s ORDER BY id",
                    (run_id, offset, READ_RECORDS, READ_BYTES),
                ).fetchall()
        for id_, writer, seq, rtype, body in rows:
            status, _, start, end = codec.parse_record(body)
            if status != PARSE_OK:  # checked on the way in: damaged in the database since
                log.error("run %s: record %d (writer %d seq %d) is damaged", run_id, id_, writer, seq)
                start, end = RECORD_HEADER_SIZE, len(body)  # the stream reports what does not decode
            group.append(Appended(id_, None, writer, seq, rtype, memoryview(body)[start:end]))
        return group

    async def _feed(self, owned: _Owned) -> None:
        """Feed an owned run whenever woken, until it is done, idle or the server stops; then
        store what is final, let go of the lock and say how far the run was materialized."""
        stream = owned.stream
        delay = 0.5
        try:
            await stream.start()  # reads and stores everything after the cursor
            while not owned.release:
                await owned.wake.wait()
                owned.wake.clear()
                try:
                    if await stream.catch_up():
                        owned.fed_at = time.monotonic()
                    delay = 0.5
                except StoreError as e:
                    log.warning("run %s: reading its records failed (%s); retrying", owned.run_id, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    owned.wake.set()
                    continue
                if stream.done() or time.monotonic() - owned.fed_at > self.idle_close:
                    owned.release = True
            await stream.close()
            await self.handle.call(self.handle.store.guard_run, owned.run_id, None)  # its writes are done
            await self._coord_call(self._let_go, owned.run_id, stream.read_offset)
            self.stats["released"] += 1
            log.info("run %s: let go through record %d", owned.run_id, stream.read_offset)
        except asyncio.CancelledError:
            raise
        except FencedOut as e:
            self.stats["fenced"] += 1
            log.warning("%s; this server stopped materializing it", e)
        except Exception:
            log.exception("run %s: materializing failed; letting the run go", owned.run_id)
            with contextlib.suppress(Exception):
                await self._coord_call(self._unlock, owned.run_id)
        finally:
            if self.owned.get(owned.run_id) is owned:
                del self.owned[owned.run_id]
            self.stats["owned"] = len(self.owned)

    def _let_go(self, run_id: str, through: int) -> None:
        self._coord.execute(
            "UPDATE shared_runs SET done_through = greatest(done_through, %s) WHERE run_id = %s", (through, run_id)
        )
        self._unlock(run_id)

    def _abandon(self) -> None:
        """The coordination connection is lost, and with it every lock: stop feeding at once
        (another server may own these runs now); nothing more is written for them here."""
        for owned in list(self.owned.values()):
            if owned.task is not None:
                owned.task.cancel()
        self.owned.clear()
        self.stats["owned"] = 0

    def status(self) -> dict:
        return {
            "root": self.root,
            "db": "postgresql",
            "shared": True,
            **self.stats,
            "runs": [o.stream.status() for o in self.owned.values()],
        }
