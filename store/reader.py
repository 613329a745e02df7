"""Readers of a store: connections that see the writer's commits as they happen, never
blocking it (SQLite in WAL mode; PostgreSQL's MVCC). ``trackside.Api``, the CLI and the team
server read through these; the daemon writes through ``writer.Store``."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, NamedTuple, Optional

from .dialect import SQLite, StoreError, open_postgres
from .query import regexp
from .schema import DB_NAME, check_version


class ConsoleLine(NamedTuple):
    """One captured console line, as read back."""

    time: float  # seconds since the epoch
    stream: str  # "stdout" or "stderr"
    text: str


def open_reader(path: Optional[str] = None, *, db: Optional[str] = None, timeout: float = 5.0):
    """A read-only connection to a store that sees the writer's commits as they happen: the
    SQLite file at ``path``, or the PostgreSQL database of the URL ``db``. Returns the
    database object of ``store/dialect.py`` (run SQL on its ``conn``). Raises SchemaVersionError
    for a newer store, StoreError for a database that holds none. For a file, the caller
    checks that it exists (to give its own hint)."""
    database: Any
    if db is not None:
        database = open_postgres(db, writer=False)
    elif path is None:
        raise ValueError("open_reader needs the store file's path or a database URL (db=)")
    else:
        database = SQLite.open_reader(path, timeout)
    try:
        if check_version(database) == 0:
            if database.name == "sqlite":
                raise StoreError(f"{path} is not a trackside store (it has no trackside schema)")
            raise StoreError(
                f"no trackside store in {database.where}: nothing has been stored there yet (a trackside "
                f"server started with --db {database.where} creates it)"
            )
    except BaseException:
        database.close()
        raise
    return database


def open_readonly(path: str, timeout: float = 5.0):
    """A read-only ``sqlite3.Connection`` to the store file at ``path`` (see ``open_reader``)."""
    return open_reader(path, timeout=timeout).conn


class StoreReader:
    """A read-only view of one store: ``conn`` to run SQL on (the writer's commits appear as
    they happen), ``root`` where its files are, ``path`` for messages. ``trackside.Api`` is one;
    the SDK's artifact reader opens one of its own. Usable from several threads; ``close()`` (or
    a ``with`` block) releases the database. Raises as ``open_reader`` does."""

    def __init__(self, root: str, path: Optional[str] = None, *, db: Optional[str] = None, timeout: float = 5.0):
        self.root = root
        self._snapshot_lock = threading.RLock()
        self._snapshots = 0
        self.db = db
        if db is not None:
            self._db = open_reader(db=db)
            self.path = self._db.where  # the URL without its password, for messages
        else:
            self.path = path or os.path.join(root, DB_NAME)
            if not os.path.isfile(self.path):
                raise StoreError(f"no trackside store at {self.path}")
            self._db = open_reader(self.path, timeout=timeout)
            # the $regex of run queries (store/query.py); PostgreSQL has its own (~)
            self._db.conn.create_function("ts_regexp", 2, regexp, deterministic=True)

    @property
    def conn(self):
        """What the read methods run SQL on: a ``sqlite3.Connection``, or for PostgreSQL an
        object whose ``execute`` takes the same SQL (``store/dialect.py``)."""
        if self._db is None:
            raise StoreError(f"this reader of {self.path} is closed")
        return self._db.conn

    @contextmanager
    def snapshot(self):
        """``with reader.snapshot():`` the statements run inside see one state of the store
        (several reads that must agree: a history page's series, a sampled chart). Nests;
        holds the reader for the block, so keep it short."""
        with self._snapshot_lock:
            self.conn  # raises when closed
            if self._snapshots:
                self._snapshots += 1
                try:
                    yield
                finally:
                    self._snapshots -= 1
                return
            self._db.begin_read()
            self._snapshots = 1
            try:
                yield
            finally:
                self._snapshots = 0
                self._db.end_read()

    def has_table(self, name: str) -> bool:
        """Whether the store has table ``name`` (asked each time: a writer may migrate it meanwhile)."""
        self.conn  # raises when closed
        return self._db.has_table(name)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``: which SQL the store speaks (``store/dialect.py``)."""
        self.conn  # raises when closed
        return self._db.name

    def has_column(self, table: str, column: str) -> bool:
        """Whether the store's ``table`` has ``column`` (one added on open by a newer writer)."""
        self.conn  # raises when closed
        return self._db.has_column(table, column)

    def missing_table(self, exc: BaseException) -> bool:
        """Whether a query failed because the store lacks a table (an older store)."""
        return self._db is not None and self._db.missing_table(exc)

    def close(self) -> None:
        """Close the database connection. Idempotent."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
