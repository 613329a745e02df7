"""Where SQLite and PostgreSQL differ, for the store (``store/writer.py``) and its readers
(``trackside.api``). Everything else writes one form of SQL, SQLite's, and runs it through
``<database>.conn.execute``: a ``sqlite3.Connection`` for SQLite, a ``Postgres`` (which
translates the statement once and caches it) for PostgreSQL.

The common form: ``?`` placeholders (never a ``?`` inside a literal), upserts with
``ON CONFLICT`` (SQLite 3.24, PostgreSQL 9.5), ``CASE`` rather than the two-argument
``min``/``max`` (SQLite) or ``least``/``greatest`` (PostgreSQL), and DDL with SQLite's column
types in upper case and names in lower case. The differences, all here:

- placeholders ``?`` -> ``%s`` (psycopg's);
- DDL types: INTEGER -> BIGINT (steps and microsecond times need 64 bits), REAL -> DOUBLE
  PRECISION (PostgreSQL's REAL has 4 bytes), BLOB -> BYTEA, TEXT -> TEXT COLLATE "C" (byte
  order, as SQLite compares: sorted lists and run-id prefix look-ups agree on both), an
  ``INTEGER PRIMARY KEY`` (SQLite's rowid) -> an identity column; ``WITHOUT ROWID`` is dropped;
- the schema version: SQLite's ``PRAGMA user_version``; in PostgreSQL a row of the ``meta``
  table;
- the id of an inserted row: ``lastrowid`` -> ``RETURNING``;
- an amended history step: SQLite merges the msgpack blobs in the upsert through the SQL
  function ``ts_merge`` (a Python callback); PostgreSQL cannot call back into Python, so the
  store merges them itself (``merges_in_sql`` is False) and the upsert writes the result;
- the write lock: SQLite's ``BEGIN IMMEDIATE``; in PostgreSQL each write transaction takes a
  transaction-scoped advisory lock, so that writers take turns as they do on SQLite;
- connection settings: SQLite's PRAGMAs (WAL mode, so readers never block the writer);
  PostgreSQL needs none for that (MVCC): its readers run each statement as its own read-only
  transaction.

psycopg is imported only when a ``postgresql://`` URL is opened.
"""

from __future__ import annotations

import os
import re
import sqlite3
from typing import Any, Callable, Optional
from urllib.parse import quote, urlsplit

__all__ = ["Postgres", "SQLite", "StoreError", "describe", "error_text", "is_postgres", "open_postgres"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
PAGE_SIZE = 8192  # a history row with 10 keys is ~250 bytes: 8 KiB pages insert ~15% faster than 4 KiB
# pg_advisory_xact_lock key of a store's write lock ("trks"); advisory locks are per database
_WRITE_LOCK = 0x74726B73


class StoreError(Exception):
    """The store cannot be opened or written (the message says why and what to do)."""


def is_postgres(db: Optional[str]) -> bool:
    """Whether ``db`` names a PostgreSQL database (a ``postgresql://`` URL)."""
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


def describe(db: str) -> str:
    """``db`` for messages: a URL's password (``user:password@`` or ``?password=``) is replaced
    by ``***``."""
    parts = urlsplit(db)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{quote(parts.username or '', safe='')}:***@{netloc.rsplit('@', 1)[1]}"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return db
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def error_text(exc: BaseException) -> str:
    """A database error's message on one line (PostgreSQL's own, without the statement it quotes)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return primary or str(exc).strip()


def _psycopg():
    try:
        import psycopg  # optional: psycopg (pip install 'trackside[server]')
    except ImportError:
        raise ImportError(
            "a PostgreSQL store (postgresql://...) needs psycopg, which is not installed: "
            "pip install 'trackside[server]'"
        ) from None
    return psycopg


# -- SQLite ------------------------------------------------------------------------------------------


class SQLite:
    """A store in a SQLite file. ``conn`` is the ``sqlite3.Connection``: the common SQL runs
    on it as it is."""

    name = "sqlite"
    merges_in_sql = True
    Error = sqlite3.Error
    # the conflict clause of the history upsert: ts_merge is Store._merge_blobs (register_merge)
    history_on_conflict = (
        " ON CONFLICT (rid, step) DO UPDATE SET data = ts_merge(data, excluded.data),"
        " time_us = min(time_us, excluded.time_us)"
    )
    busy_hint = "is another process writing this store? only one trackside daemon may write a run root"
    foreign_hint = "move it away"

    def __init__(self, conn: sqlite3.Connection, where: str):
        self.conn = conn
        self.where = where

    @classmethod
    def open_writer(cls, path: str) -> "SQLite":
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot open the store {path}: {e}") from None
        return cls(conn, path)

    @classmethod
    def open_reader(cls, path: str, timeout: float) -> "SQLite":
        """A read-only connection that sees the writer's commits as they happen."""
        uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot open the store {path} for reading: {e}") from None
        return cls(conn, path)

    def prepare(self, new: bool) -> None:
        """Connection settings of the writer; ``new``: the file holds no tables yet."""
        conn = self.conn
        if new:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect before the first table
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(
                f"cannot put {self.where} in WAL mode (journal_mode stays {mode!r}); readers could not "
                f"read while the daemon writes. Network file systems do not support it: use a local "
                f"folder for the run root"
            )
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate the -wal file back to 64 MiB
        # checkpoint every 64 MiB of WAL instead of SQLite's 8 MiB: the pages that history
        # inserts touch again and again (the B-tree's right edge) are copied back once per
        # checkpoint, so fewer checkpoints copy far less (about a quarter of the store's time at
        # the default, measured with bench_ingest); readers of a longer WAL pay little for it
        conn.execute(f"PRAGMA wal_autocheckpoint = {(64 << 20) // PAGE_SIZE}")
        conn.execute("PRAGMA cache_size = -16384")  # 16 MiB

    def register_merge(self, merge: Callable[[bytes, bytes], bytes]) -> None:
        self.conn.create_function("ts_merge", 2, merge, deterministic=True)

    def begin_read(self) -> None:
        """Start a read transaction: its statements see one snapshot (WAL mode)."""
        self.conn.execute("BEGIN")

    def end_read(self) -> None:
        self.conn.execute("COMMIT")

    def schema_version(self) -> int:
        """The store's schema version, 0 for a database without a trackside schema."""
        try:
            return self.conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError as e:  # e.g. a read-only folder without the -shm file
            raise StoreError(f"cannot read the store {self.where}: {e}") from None
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.where} is not a trackside store ({e})") from None

    def set_schema_version(self, version: int) -> None:
        self.conn.execute(f"PRAGMA user_version = {int(version)}")

    def table_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]

    def has_table(self, name: str) -> bool:
        return (
            self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?)", (name,)
            ).fetchone()[0]
            == 1
        )

    def missing_table(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a statement named a table the store does not have (yet)."""
        return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)

    def has_column(self, table: str, column: str) -> bool:
        return any(row[1] == column for row in self.conn.execute(f"PRAGMA table_info({table})"))

    def tables_with_column(self, column: str) -> list[str]:
        """The tables that have ``column`` (e.g. every table holding rows of a run, ``rid``)."""
        tables = [t for (t,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [t for t in tables if self.has_column(t, column)]

    def ddl(self, schema: str) -> list[str]:
        """The statements of ``schema`` (DDL in the common form, separated by ``;``)."""
        return [stmt for stmt in schema.split(";") if stmt.strip()]

    def insert_id(self, sql: str, params: Any, key: str) -> int:
        """Run the INSERT ``sql``; returns the new row's ``key`` (its integer primary key)."""
        return self.conn.execute(sql, params).lastrowid

    def contains_bytes(self, column: str) -> str:
        """A condition true when the blob ``column`` contains the bytes of the next parameter."""
        return f"instr({column}, ?) > 0"

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def begin(self) -> None:
        """Start a write transaction, waiting (up to 10 s) for another writer to finish."""
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self, optimize: bool = False) -> None:
        if optimize:
            try:
                self.conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
        self.conn.close()


# -- PostgreSQL --------------------------------------------------------------------------------------

_PG_DDL = [
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
]
_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_SQL_CACHE_SIZE = 1024  # translated statements kept; the store and readers use a few dozen


class Postgres:
    """A store in a PostgreSQL database, on one connection of its own (psycopg 3).

    ``conn`` is the object itself: its ``execute(sql, params)`` and ``executemany`` take the
    common SQL and return psycopg cursors. The connection is in autocommit mode: the writer
    opens its transactions with ``begin`` (as on SQLite), a reader's statements are each a
    read-only transaction of their own, so a long read never holds an old snapshot.
    """

    name = "postgresql"
    merges_in_sql = False
    # the store has already merged a stored step's values into the row it writes
    history_on_conflict = " ON CONFLICT (rid, step) DO UPDATE SET data = excluded.data, time_us = excluded.time_us"
    busy_hint = "is the server reachable? only one trackside server may write a database at a time"
    foreign_hint = "give trackside a database of its own (createdb trackside)"

    def __init__(self, url: str, *, writer: bool):
        self._pg = _psycopg()
        self.Error = self._pg.Error
        self.url = url
        self.where = describe(url)
        self.writer = writer
        self.conn = self
        self._sql: dict[str, str] = {}
        self.raw = self._connect()

    def _connect(self):
        pg = self._pg
        try:
            raw = pg.connect(self.url, autocommit=True)
        except pg.Error as e:
            raise StoreError(f"cannot connect to the store {self.where}: {error_text(e)}") from None
        try:
            if self.writer:
                # wait for another writer's transaction as long as SQLite's busy timeout does
                raw.execute("SET lock_timeout = '10s'")
            else:
                raw.execute("SET default_transaction_read_only = on")
        except BaseException:
            raw.close()
            raise
        return raw

    def _translate(self, sql: str) -> str:
        q = self._sql.get(sql)
        if q is None:
            if len(self._sql) >= _SQL_CACHE_SIZE:
                self._sql.clear()
            q = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return q

    def execute(self, sql: str, params: Any = None):
        if params is None:  # psycopg reads placeholders only when given parameters
            return self.raw.execute(sql)
        return self.raw.execute(self._translate(sql), params)

    def executemany(self, sql: str, params_seq):
        cur = self.raw.cursor()
        cur.executemany(self._translate(sql), params_seq)
        return cur

    def prepare(self, new: bool) -> None:
        """Nothing to set: PostgreSQL's readers never block its writer."""

    def register_merge(self, merge: Callable[[bytes, bytes], bytes]) -> None:
        """Nothing to register: the store merges in Python (``merges_in_sql`` is False)."""

    def begin_read(self) -> None:
        """Start a read transaction: its statements see one snapshot."""
        if self._lost():
            self.raw = self._connect()
        self.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def end_read(self) -> None:
        if self._lost():
            return
        self.raw.execute(
            "ROLLBACK" if self.raw.info.transaction_status == self._pg.pq.TransactionStatus.INERROR else "COMMIT"
        )

    def schema_version(self) -> int:
        try:
            if not self.has_table("meta"):
                return 0
            row = self.raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except self._pg.Error as e:
            raise StoreError(f"cannot read the store {self.where}: {error_text(e)}") from None
        return int(row[0]) if row else 0

    def set_schema_version(self, version: int) -> None:
        for stmt in self.ddl(_META):
            self.raw.execute(stmt)
        self.raw.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(int(version)),),
        )

    def table_count(self) -> int:
        return self.raw.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()[0]

    def has_table(self, name: str) -> bool:
        return self.raw.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    def missing_table(self, exc: BaseException) -> bool:
        return isinstance(exc, self._pg.errors.UndefinedTable)

    def has_column(self, table: str, column: str) -> bool:
        return self.raw.execute(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = %s AND column_name = %s)",
            (table, column),
        ).fetchone()[0]

    def tables_with_column(self, column: str) -> list[str]:
        return [
            t
            for (t,) in self.raw.execute(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND column_name = %s ORDER BY table_name",
                (column,),
            )
        ]

    def ddl(self, schema: str) -> list[str]:
        out = []
        for stmt in schema.split(";"):
            if stmt.strip():
                for pattern, repl in _PG_DDL:
                    stmt = pattern.sub(repl, stmt)
                out.append(stmt)
        return out

    def insert_id(self, sql: str, params: Any, key: str) -> int:
        return self.execute(f"{sql} RETURNING {key}", params).fetchone()[0]

    def contains_bytes(self, column: str) -> str:
        return f"position(? IN {column}) > 0"

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != self._pg.pq.TransactionStatus.IDLE

    def _lost(self) -> bool:
        return self.raw.closed or self.raw.broken

    def begin(self) -> None:
        """Start a write transaction holding the store's write lock (waits up to 10 s for
        another writer). A connection the server dropped (a restart) is replaced first:
        nothing of a transaction can be lost before it begins."""
        lock = f"BEGIN; SELECT pg_advisory_xact_lock({_WRITE_LOCK})"
        try:
            self.raw.execute(lock)
        except self._pg.OperationalError:
            if not self._lost():
                self.rollback()  # e.g. the lock timed out: the transaction is aborted
                raise
            self.raw = self._connect()
            self.raw.execute(lock)

    def commit(self) -> None:
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        """End the transaction; a lost connection is replaced (its transaction died with it)."""
        if self._lost():
            self.raw = self._connect()
        elif self.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self, optimize: bool = False) -> None:
        self.raw.close()


def open_postgres(url: str, *, writer: bool) -> Postgres:
    """A connection to the PostgreSQL database of ``url``: the store's writer (``writer``) or a
    reader. Raises ImportError naming the extra to install without psycopg, StoreError when
    the server cannot be reached."""
    if not is_postgres(url):
        raise ValueError(f"not a PostgreSQL URL: {describe(str(url))!r} (use postgresql://user@host/database)")
    return Postgres(url, writer=writer)
