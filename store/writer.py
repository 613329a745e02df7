"""The writer of a store: ``Store``, the one connection that writes a run root's database (the
daemon's, or a team server's). Layout and versions: ``schema``; readers: ``reader``."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable, Collection, Iterable, Mapping, NamedTuple, Optional, Sequence

import msgspec

from trackside.contracts import names
from trackside.contracts.errors import RunNotFoundError
from trackside.contracts.private import create, make_dirs, restrict

from . import edits
from .dialect import SQLite, StoreError, describe, error_text, is_postgres, open_postgres
from .index import check_artifact, media_refs
from .query import VALUES_SCHEMA, index_all, index_values
from .series import SeriesWriter
from .schema import (
    ARTIFACT_SCHEMA,
    DB_NAME,
    DEFAULT_PROJECT,
    MARKS_SCHEMA,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    STATES,
    check_version,
)

_TYPED = b"\xa5_type"  # msgpack's "_type" key: a history blob without it holds no typed value

# History rows go in with multi-row INSERTs: one sqlite3 call per 256 rows instead of one per
# row takes ~0.4 us off each row's ~2 us. A batch is cut into chunks of these sizes (256 as
# often as it fits, then the rest in binary), so a handful of cached statements serve any count.
# 256 rows are 1,024 variables, far below SQLite's limit (32,766) and PostgreSQL's (65,535).
# The conflict clause that merges a stored step is the database's (store/dialect.py).
_INSERT_SIZES = (256, 128, 64, 32, 16, 8, 4, 2, 1)
_INSERT_HISTORY = {
    n: "INSERT INTO history (rid, step, time_us, data) VALUES " + ", ".join(["(?, ?, ?, ?)"] * n) for n in _INSERT_SIZES
}
_LOOKUP_SIZES = (1, 8, 64, 512)  # steps per look-up of stored rows (PostgreSQL's merge in Python)


def _dumps(obj: Any, what: str) -> str:
    # the stdlib encoder, not orjson: it keeps NaN and infinities (a diverged loss in a summary
    # must read back as nan, not None); SQLite's JSON functions read them as JSON5
    try:
        return json.dumps(obj, allow_nan=True, default=edits.json_default, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serializable: {e}") from None


def _check_run_id(run_id: str) -> None:
    # the id becomes a path (<root>/runs/<run_id>): refuse anything that could leave that folder
    names.check_run_id(run_id)


class _Row(NamedTuple):
    """A history row's values that are not numbers (the row table's part of it)."""

    step: int
    time_us: int
    values: dict


class Store:
    """The writer of one run root's store. Not for readers: use ``trackside.api.Api``.

    ``Store(root)`` opens ``<root>/trackside.db``, creating the folder and the database if
    needed. ``Store(root, db="postgresql://...")`` keeps the tables in that PostgreSQL database
    instead (``root`` still holds the files), creating them in an empty database. Raises
    SchemaVersionError when the database is from a newer trackside and StoreError when it is
    not a trackside store or cannot be opened (in WAL mode, for SQLite; the server cannot be
    reached, for PostgreSQL); ImportError naming the extra to install without psycopg.

    Each write method is one transaction: on return it is committed (visible to readers, and
    safe from a process crash; on SQLite ``synchronous=NORMAL`` means a power loss can undo the
    last commits, which the daemon's own WAL replays). On an exception nothing of the call is
    stored; the database's errors (a full disk, an I/O error, a lost server) are raised as
    StoreError naming the database. On PostgreSQL a connection the server dropped is replaced
    at the next call.
    A method may be called from any thread, one call at a time (calls are serialized).
    Methods that take a ``run_id`` create a placeholder run (project ``"uncategorized"``) if
    the run does not exist yet, so that data is never refused for lack of a ``upsert_run``.
    """

    def __init__(self, root: str | os.PathLike, *, db: Optional[str] = None):
        self.root = os.path.abspath(os.fspath(root))
        make_dirs(self.root)
        self.db = db
        self._lock = threading.RLock()
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder().decode
        self._rids: dict[str, int] = {}
        self._keys: dict[int, set] = {}  # rid -> keys known to be in history_keys
        self._console_seq: dict[int, int] = {}  # rid -> next console seq
        self._stale = False  # the caches could not be re-read after a rollback: re-read them first
        self._guards: dict[str, Callable] = {}  # run id -> check run first in its write transactions
        self._series: SeriesWriter
        if db is None:
            self.path = os.path.join(self.root, DB_NAME)
            # SQLite gives its -wal and -shm files the store's mode: 0600 from the start
            create(self.path)
            for suffix in ("-wal", "-shm"):
                restrict(self.path + suffix)
            self._db = SQLite.open_writer(self.path)
        elif is_postgres(db):
            self.path = describe(db)
            self._db = open_postgres(db, writer=True)
        else:
            raise ValueError(
                f"unsupported store database {describe(str(db))!r}: use None (SQLite, <root>/{DB_NAME}) "
                f"or a postgresql:// URL"
            )
        # SQL runs on _conn: the sqlite3 connection, or the PostgreSQL one taking the same SQL
        self._conn = self._db.conn
        self._series = SeriesWriter(self._conn)
        self._insert_history = {n: sql + self._db.history_on_conflict for n, sql in _INSERT_HISTORY.items()}
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        db = self._db
        version = check_version(db)
        if version == 0 and db.table_count():
            raise StoreError(f"{self.path} is not a trackside store (it holds other tables); {db.foreign_hint}")
        db.prepare(new=version == 0)
        if version == 0:
            self._create()
        elif version < SCHEMA_VERSION:
            self._migrate()
        self._add_tables(ARTIFACT_SCHEMA)
        self._add_tables(MARKS_SCHEMA)
        self._add_edit_tables()
        db.register_merge(self._merge_blobs)
        for rid, run_id in self._conn.execute("SELECT rid, run_id FROM runs"):
            self._rids[run_id] = rid

    def _create(self) -> None:
        db = self._db
        db.begin()
        try:
            # a second process may have created it while we waited for the lock
            if db.schema_version() == 0:
                for schema in (SCHEMA, *(MIGRATIONS[v] for v in sorted(MIGRATIONS))):
                    for stmt in db.ddl(schema):
                        self._conn.execute(stmt)
                db.set_schema_version(SCHEMA_VERSION)
            db.commit()
        except BaseException:
            db.rollback()
            raise

    def _migrate(self) -> None:
        """Bring an older store up to SCHEMA_VERSION, one version at a time, in one transaction."""
        db = self._db
        db.begin()
        try:
            # read again under the lock: another process may have migrated it meanwhile
            version = db.schema_version()
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in db.ddl(MIGRATIONS.get(v, "")):
                    self._conn.execute(stmt)
                if v == 2:
                    self._index_stored_media()
                if v == 4:
                    self._history_to_series()
            if version < SCHEMA_VERSION:
                db.set_schema_version(SCHEMA_VERSION)
            db.commit()
        except BaseException:
            db.rollback()
            raise

    def _index_stored_media(self) -> None:
        """Index the typed values of rows stored before the media index existed."""
        cur = self._conn.execute(
            f"SELECT rid, step, data FROM history WHERE {self._db.contains_bytes('data')}", (_TYPED,)
        )
        for rid, step, data in cur.fetchall():
            try:
                values = self._decode(data)
            except msgspec.DecodeError:
                continue
            self._index_media(rid, step, values)

    def _history_to_series(self) -> None:
        """Schema 4: move the numbers of every stored history row into their series (the rows
        keep only what is not a number; rows left empty are deleted), run by run, in step order."""
        conn = self._conn
        for (rid,) in conn.execute("SELECT rid FROM runs ORDER BY rid").fetchall():
            lo = -(2**63)
            while True:
                page = conn.execute(
                    "SELECT step, time_us, data FROM history WHERE rid = ? AND step >= ? ORDER BY step LIMIT 10000",
                    (rid, lo),
                ).fetchall()
                if not page:
                    break
                rows = []
                for step, time_us, data in page:
                    try:
                        values = self._decode(data)
                    except msgspec.DecodeError:
                        values = {}
                    rows.append(_Row(step, time_us, values))
                _new, rest, _keys = self._series.write(rid, rows)
                keep = {r.step: values for r, values in rest}
                conn.executemany(
                    "DELETE FROM history WHERE rid = ? AND step = ?",
                    [(rid, r.step) for r in rows if r.step not in keep],
                )
                conn.executemany(
                    "UPDATE history SET data = ? WHERE rid = ? AND step = ?",
                    [(self._encode(values), rid, step) for step, values in keep.items()],
                )
                lo = page[-1][0] + 1
        self._series.forget()

    def _index_media(self, rid: int, step: int, values: Mapping) -> None:
        """Replace the media index of (rid, step, key) for each typed value in ``values``."""
        conn = self._conn
        for key, value in values.items():
            if type(value) is not dict or "_type" not in value:
                continue
            refs = dict.fromkeys(media_refs(value))
            if not refs:
                refs = {("", None, str(value["_type"])): None}
            conn.execute("DELETE FROM media WHERE rid = ? AND key = ? AND step = ?", (rid, key, step))
            conn.executemany(
                "INSERT INTO media (rid, key, step, path, sha256, type) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (rid, key, step, path) DO UPDATE SET sha256 = excluded.sha256, type = excluded.type",
                [(rid, key, step, path, sha, kind) for path, sha, kind in refs],
            )

    def _add_tables(self, schema: str) -> None:
        """Create the tables of ``schema`` (``IF NOT EXISTS`` statements) that are missing."""
        with self._tx():
            for stmt in self._db.ddl(schema):
                self._conn.execute(stmt)

    def _add_edit_tables(self) -> None:
        """The tables of run queries and edits (``store/query.py``, ``store/edits.py``) and
        ``runs.notes``, added to a store without them; its runs' values are indexed then."""
        with self._tx():
            new_index = not self._db.has_table("run_values")
            for stmt in self._db.ddl(VALUES_SCHEMA + ";" + edits.EDITS_SCHEMA):
                self._conn.execute(stmt)
            edits.add_notes_column(self._db)
            if new_index:
                index_all(self._conn, json.loads)

    # -- plumbing ------------------------------------------------------------------------------

    class _Tx:
        """``with self._tx(run_id):`` one write transaction, holding the lock; rolled back on
        error. With a ``run_id`` whose writes are guarded (``guard_run``), the guard runs first."""

        __slots__ = ("store", "run_id")

        def __init__(self, store, run_id):
            self.store = store
            self.run_id = run_id

        def __enter__(self):
            store = self.store
            store._lock.acquire()
            try:
                store._live()
                db = store._db
                try:
                    db.begin()
                    if store._stale:
                        store._forget_caches()
                except db.Error as e:
                    store._rollback()
                    raise StoreError(f"cannot write {store.path}: {error_text(e)} ({db.busy_hint})") from None
                guard = store._guards.get(self.run_id) if store._guards else None
                if guard is not None:
                    try:
                        guard(store._conn)
                    except BaseException as e:
                        store._rollback()
                        if isinstance(e, db.Error):
                            raise StoreError(f"cannot write {store.path}: {error_text(e)}") from None
                        raise
            except BaseException:
                store._lock.release()
                raise

        def __exit__(self, exc_type, exc, tb):
            store = self.store
            error = store._db.Error
            try:
                if exc_type is None:
                    try:
                        store._db.commit()
                        return False
                    except error as e:  # e.g. the disk is full
                        store._rollback()
                        raise StoreError(
                            f"cannot commit to {store.path}: {error_text(e)}; nothing of this call is stored"
                        ) from e
                store._rollback()
                if isinstance(exc, error):
                    raise StoreError(
                        f"cannot write {store.path}: {error_text(exc)}; nothing of this call is stored"
                    ) from exc
                return False
            finally:
                store._lock.release()

    def _tx(self, run_id: Optional[str] = None) -> "_Tx":
        return self._Tx(self, run_id)

    def guard_run(self, run_id: str, check: Optional[Callable] = None) -> None:
        """Run ``check(conn)`` at the start of every write transaction of ``run_id`` from now on
        (``None``: no more). A check that raises ends the transaction before anything is written:
        nothing of the call is stored and the exception reaches the caller. A server of a tier
        fences its writes of a run with it, so a server that lost the run cannot write it after
        another took it over (server/shared.py)."""
        with self._lock:
            if check is None:
                self._guards.pop(run_id, None)
            else:
                self._guards[run_id] = check

    def _live(self):
        if self._conn is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._conn

    def _rollback(self) -> None:
        try:
            self._db.rollback()
            self._forget_caches()
        except (self._db.Error, StoreError):  # e.g. the server is gone: re-read at the next transaction
            self._stale = True

    def _forget_caches(self) -> None:
        # a rolled-back transaction may have added runs, keys or console lines the caches remember
        self._keys.clear()
        self._series.forget()
        self._console_seq.clear()
        self._rids = {run_id: rid for rid, run_id in self._conn.execute("SELECT rid, run_id FROM runs")}
        self._stale = False

    def _rid(self, run_id: str) -> int:
        """The run's integer key, creating a placeholder run if it does not exist (inside a tx)."""
        rid = self._rids.get(run_id)
        if rid is None:
            _check_run_id(run_id)
            now = time.time()
            rid = self._rids[run_id] = self._db.insert_id(
                "INSERT INTO runs (run_id, project, created_at, updated_at, root_dir) VALUES (?, ?, ?, ?, ?)",
                (run_id, DEFAULT_PROJECT, now, now, self.root),
                "rid",
            )
            self._new_rid(rid, run_id)
        return rid

    def _merge_blobs(self, old: bytes, new: bytes) -> bytes:
        """SQL function ts_merge(old, new): a history row with ``new``'s values merged in."""
        try:
            values = self._decode(old)
        except msgspec.DecodeError:  # cannot happen for rows we wrote; never lose the new values
            return new
        values.update(self._decode(new))
        return self._encode(values)

    def _load_json(self, rid: int, column: str) -> dict:
        raw = self._conn.execute(f"SELECT {column} FROM runs WHERE rid = ?", (rid,)).fetchone()[0]
        return json.loads(raw) if raw else {}

    # -- runs ----------------------------------------------------------------------------------

    def upsert_run(
        self,
        run_id: str,
        *,
        project: str,
        name: Optional[str] = None,
        group: Optional[str] = None,
        job_type: Optional[str] = None,
        tags: Sequence[str] = (),
        config: Optional[Mapping] = None,
        metadata: Optional[Mapping] = None,
        state: str = "running",
        root_dir: Optional[str] = None,
        created_at: Optional[float] = None,
    ) -> None:
        """Create the run, or update it when it exists (a resumed run, or a placeholder).

        On an existing run: ``project`` and ``state`` are set; ``name``, ``group``, ``job_type``
        and ``root_dir`` are set when not None; ``tags`` replace the old ones when not empty;
        ``config`` and ``metadata`` are merged into the stored ones (top-level keys, new value
        wins). ``state="running"`` clears ``exit_code`` and ``finished_at``. ``root_dir`` is the
        run root the run's files live under (``<root_dir>/runs/<run_id>``), default this store's
        root. ``created_at`` (seconds since the epoch, default now) is only used on creation.
        Raises ValueError for an invalid run id or state, TypeError for config or metadata
        that is not JSON-serializable.
        """
        _check_run_id(run_id)
        _check_state(state)
        names.check_project(project)
        tags_json = _dumps(list(tags), "tags") if tags else None
        root_dir = os.path.abspath(root_dir) if root_dir is not None else None
        with self._tx(run_id):
            conn = self._conn
            now = time.time()
            rid = self._rids.get(run_id)
            if rid is not None and not self._run_is(rid, run_id):
                self._forget_run(rid)  # deleted since (Store.delete_run of another process): it starts again
                self._rids.pop(run_id, None)
                rid = None
            if rid is None:
                self._rids[run_id] = self._db.insert_id(
                    "INSERT INTO runs (run_id, project, name, group_name, job_type, tags, config, metadata,"
                    " state, created_at, updated_at, root_dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        project,
                        name,
                        group,
                        job_type,
                        tags_json or "[]",
                        _dumps(dict(config or {}), "config"),
                        _dumps(dict(metadata or {}), "metadata"),
                        state,
                        created_at if created_at is not None else now,
                        now,
                        root_dir or self.root,
                    ),
                    "rid",
                )
                self._new_rid(self._rids[run_id], run_id)
                self._index_run(self._rids[run_id], config=dict(config or {}), tags=list(tags) if tags else None)
                return
            fields = edits.overlay_fields(
                conn,
                rid,
                {"name": name, "group_name": group, "job_type": job_type, "tags": list(tags) if tags else None},
            )
            name, group, job_type = fields["name"], fields["group_name"], fields["job_type"]
            tags_json = _dumps(list(fields["tags"]), "tags") if fields["tags"] is not None else None
            config = edits.overlay_config(conn, rid, config or {})
            merged_config = self._load_json(rid, "config")
            merged_config.update(config or {})
            self._index_run(rid, config=merged_config, tags=fields["tags"])
            merged_meta = self._load_json(rid, "metadata")
            merged_meta.update(metadata or {})
            conn.execute(
                "UPDATE runs SET project = ?, name = coalesce(?, name), group_name = coalesce(?, group_name),"
                " job_type = coalesce(?, job_type), tags = coalesce(?, tags), config = ?, metadata = ?,"
                " state = ?, root_dir = coalesce(?, root_dir), updated_at = ?,"
                " exit_code = CASE WHEN ? = 'running' THEN NULL ELSE exit_code END,"
                " finished_at = CASE WHEN ? = 'running' THEN NULL ELSE finished_at END"
                " WHERE rid = ?",
                (
                    project,
                    name,
                    group,
                    job_type,
                    tags_json,
                    _dumps(merged_config, "config"),
                    _dumps(merged_meta, "metadata"),
                    state,
                    root_dir,
                    now,
                    state,
                    state,
                    rid,
                ),
            )

    # -- edits after the run (store/edits.py) ------------------------------------------------------

    def _new_rid(self, rid: int, run_id: str) -> None:
        """A run was created as ``rid``: SQLite may give a deleted run's rid to a new run, and
        nothing cached of the old one may apply to it."""
        stale = [other for other, r in self._rids.items() if r == rid and other != run_id]
        if stale or rid in self._keys or rid in self._console_seq:
            for other in stale:
                del self._rids[other]
            self._forget_run(rid)

    def _forget_run(self, rid: int) -> None:
        self._keys.pop(rid, None)
        self._console_seq.pop(rid, None)
        self._series.forget()

    def _run_is(self, rid: int, run_id: str) -> bool:
        row = self._conn.execute("SELECT run_id FROM runs WHERE rid = ?", (rid,)).fetchone()
        return row is not None and row[0] == run_id

    def _index_run(self, rid: int, *, config=None, summary=None, tags=None) -> None:
        """Index the run's config, summary or tags for run queries (store/query.py)."""
        for source, value in (("config", config), ("summary", summary), ("tags", tags)):
            if value is not None:
                index_values(self._conn, rid, source, value)

    def edit_run(
        self,
        run_id: str,
        *,
        summary: Optional[Mapping] = None,
        summary_del: Iterable[str] = (),
        config: Optional[Mapping] = None,
        config_del: Iterable[str] = (),
        fields: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Edit a stored run, in one transaction, so that what its writers store later (a live
        run, a replay of its WAL) does not undo the edit (see ``store/edits.py``).

        ``summary``/``config``: keys to assign; ``summary_del``/``config_del``: keys to delete;
        ``fields``: run fields to set (``name``, ``group``, ``job_type``, ``tags`` (a list of
        strings), ``notes``). Raises RunNotFoundError for an unknown run, ValueError for a field
        that cannot be edited or a bad value, TypeError for a value JSON cannot hold."""
        sets = {}
        for attr, value in (fields or {}).items():
            column = edits.EDITABLE.get(attr)
            if column is None:
                raise ValueError(f"cannot edit a run's {attr!r}: editable are {', '.join(edits.EDITABLE)}")
            if attr == "tags":
                if isinstance(value, str) or not all(isinstance(t, str) for t in value or ()):
                    raise ValueError(f"tags must be a list of strings, not {value!r}")
                value = list(dict.fromkeys(value or ()))
            elif value is not None and not isinstance(value, str):
                raise ValueError(f"a run's {attr} must be a string or None, not {type(value).__name__}")
            sets[column] = value
        for what, mapping in (("summary", summary), ("config", config)):
            if mapping:
                edits.to_json(dict(mapping))  # refuse what cannot be stored before the transaction
                for k in mapping:
                    if not isinstance(k, str):
                        raise ValueError(f"{what} keys are strings, not {k!r}")
        with self._tx():
            conn = self._conn
            row = conn.execute(
                "SELECT rid, name, group_name, job_type, tags, notes, summary, config FROM runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r} in {self.path}")
            rid = row[0]
            current = dict(zip(("name", "group_name", "job_type", "tags", "notes"), row[1:6]))
            current["tags"] = json.loads(current["tags"] or "[]")
            if sets:
                edits.record_fields(conn, rid, current, sets)
                if "tags" in sets:
                    self._index_run(rid, tags=sets["tags"])
            for column, mapping, dels, raw in (
                ("summary", summary, summary_del, row[6]),
                ("config", config, config_del, row[7]),
            ):
                dels = list(dels)
                if mapping or dels:
                    new = edits.record_mapping(conn, rid, column, json.loads(raw or "{}"), dict(mapping or {}), dels)
                    conn.execute(f"UPDATE runs SET {column} = ? WHERE rid = ?", (_dumps(new, column), rid))
                    self._index_run(rid, **{column: new})

    def delete_run(self, run_id: str, *, force: bool = False) -> bool:
        """Delete a run: its rows in every table and its folder under this store's root
        (``<root>/runs/<run_id>``; files of a run stored from another root stay there).
        Artifacts it logged with ``log_artifact`` are kept. Returns False when there was no
        such run. Raises ValueError for a run still running (its writers would bring it back),
        unless ``force`` (a run whose writers are gone without a word)."""
        _check_run_id(run_id)
        with self._tx():
            row = self._conn.execute("SELECT rid, state, root_dir FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return False
            rid, state, root_dir = row
            if state == "running" and not force:
                raise ValueError(
                    f"run {run_id!r} is still running: delete it once it has finished (or crashed), "
                    f"else what its writers send next would bring it back (force=True if they are gone)"
                )
            edits.delete_rows(self._db, rid)
            self._rids.pop(run_id, None)
            self._forget_run(rid)
        if os.path.abspath(root_dir or self.root) == self.root:
            edits.remove_run_folder(self.root, run_id)
        return True

    def stored_summary(self, run_id: str) -> dict:
        """The run's summary as stored (empty for an unknown run): a resumed stream goes on from it."""
        with self._lock:
            rid = self._rids.get(run_id)
            if rid is None:
                return {}
            try:
                return self._load_json(rid, "summary")
            except self._db.Error as e:
                self._rollback()
                raise StoreError(f"cannot read {self.path}: {error_text(e)}") from None

    def event_marks(self, run_id: str) -> dict[int, int]:
        """writer -> the seq of its last event whose console lines the store holds: a replayed
        event at or below it was applied already (console lines are appended, not merged)."""
        with self._lock:
            rid = self._rids.get(run_id)
            if rid is None:
                return {}
            try:
                return dict(
                    self._live().execute("SELECT writer, seq FROM event_marks WHERE rid = ?", (rid,)).fetchall()
                )
            except self._db.Error as e:
                self._rollback()
                raise StoreError(f"cannot read {self.path}: {error_text(e)}") from None

    def forget_run(self, run_id: str) -> None:
        """Read ``run_id`` afresh at its next use: its key, the keys, series and console lines it holds.
        For a database that another store writes too (the servers of a tier, each writing the
        runs it owns at a time: docs/multiserver.md), before this one writes the run again."""
        with self._lock:
            try:
                row = self._live().execute("SELECT rid FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            except self._db.Error as e:
                self._rollback()
                raise StoreError(f"cannot read {self.path}: {error_text(e)}") from None
            rid = self._rids.pop(run_id, None)
            for known in (rid, row[0] if row else None):
                self._keys.pop(known, None)
                self._console_seq.pop(known, None)
            self._series.forget()  # its open chunks are read again at their next write
            if row is not None:
                self._rids[run_id] = row[0]

    def run_cursor(self, run_id: str) -> tuple[int, int]:
        """``(wal_cursor, next_step)`` of the run: the WAL offset the store holds everything up
        to (0 for an unknown run) and the step after the highest stored one (0 when none)."""
        with self._lock:
            rid = self._rids.get(run_id)
            if rid is None:
                return 0, 0
            conn = self._live()
            try:
                cursor, last = conn.execute("SELECT wal_cursor, last_step FROM runs WHERE rid = ?", (rid,)).fetchone()
            except self._db.Error as e:
                self._rollback()  # on PostgreSQL: a lost connection is replaced for the next call
                raise StoreError(f"cannot read {self.path}: {error_text(e)}") from None
            return cursor, (last + 1 if last is not None else 0)

    # -- history and console -------------------------------------------------------------------

    def write_rows(self, run_id: str, rows: Iterable, *, cursor: Optional[int] = None) -> int:
        """Store history rows; returns how many merged into a row already stored.

        Each row has ``.step`` (int), ``.time_us`` (int, microseconds since the epoch),
        ``.values`` (dict of msgpack-serializable values), ``.payloads`` (list of bytes, may be
        empty) and ``.amend`` (bool). A row for a step not stored yet is inserted; a row for a
        stored step (an amend, or a replay after a crash) merges into it: new keys are added, a
        key present in both takes the new value, the step keeps its first timestamp. Payloads
        are kept per step, each distinct byte string once. So writing the same rows twice
        stores the same thing as writing them once. ``cursor``, when given, is stored as the
        run's WAL cursor in the same transaction. Raises TypeError for a value msgpack cannot
        encode (nothing of the call is stored).
        """
        with self._tx(run_id):
            return self._write_rows(self._rid(run_id), rows, cursor)

    def _write_rows(self, rid: int, rows, cursor, typed_steps=None) -> int:
        conn = self._conn
        columns = hasattr(rows, "as_columns")  # rows kept as columns: numbers only, steps rising
        if not isinstance(rows, (list, tuple)) and not columns:
            rows = list(rows)
        if rows:
            # the numbers go into their series; the row table keeps a step's other values
            new, rest, seen = self._series.write(rid, rows)
            merged = len(rows) - new
            encode = self._encode
            rest_rows = [_Row(r.step, r.time_us, values) for r, values in rest]
            try:
                blobs = [encode(r.values) for r in rest_rows]
            except (TypeError, msgspec.EncodeError) as e:
                raise TypeError(_bad_row(rest_rows, encode, e)) from None
            if self._db.merges_in_sql:  # SQLite: ts_merge merges a stored step in the upsert
                steps, times = [r.step for r in rest_rows], [r.time_us for r in rest_rows]
            else:
                steps, times, blobs = self._merge_stored(rid, rest_rows, blobs)
            # the parameters of all rows in one flat list, (rid, step, time_us, data) after another
            params = [rid] * (4 * len(steps))
            params[1::4] = steps
            params[2::4] = times
            params[3::4] = blobs
            done = 0
            for size in _INSERT_SIZES:  # whole chunks of the largest size, then the rest in binary
                sql = self._insert_history[size]
                while len(steps) - done >= size:
                    conn.execute(sql, params[4 * done : 4 * (done + size)])
                    done += size
            if typed_steps is None:
                for r, data in zip(rest_rows, blobs):
                    if _TYPED in data:  # a bytes search: only rows with more than numbers pay for it
                        self._index_media(rid, r.step, r.values)
            elif typed_steps:
                for r in rows:
                    if r.step in typed_steps:
                        self._index_media(rid, r.step, r.values)
            known = self._keys.get(rid)
            if known is None:
                known = self._keys[rid] = {
                    k for (k,) in conn.execute("SELECT key FROM history_keys WHERE rid = ?", (rid,))
                }
            new_keys = seen - known  # rarely any: a run logs the same keys step after step
            if new_keys:
                conn.executemany(
                    "INSERT INTO history_keys (rid, key) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [(rid, k) for k in new_keys],
                )
                known |= new_keys
            if columns:  # no payloads
                top = rows.steps[-1]
            else:
                for r in rows:
                    if r.payloads:
                        self._add_payloads(rid, r.step, r.payloads)
                top = max(r.step for r in rows)
            conn.execute(
                "UPDATE runs SET history_rows = history_rows + ?,"
                " last_step = CASE WHEN last_step IS NULL OR last_step < ? THEN ? ELSE last_step END,"
                " wal_cursor = coalesce(?, wal_cursor), updated_at = ? WHERE rid = ?",
                (new, top, top, cursor, time.time(), rid),
            )
            return merged
        if cursor is not None:
            conn.execute("UPDATE runs SET wal_cursor = ? WHERE rid = ?", (cursor, rid))
        return 0

    def _merge_stored(self, rid: int, rows: list, blobs: list) -> tuple[list, list, list]:
        """For a database that cannot merge in SQL (PostgreSQL): ``(steps, times, blobs)`` with
        one entry per step of ``rows``, each holding the values already stored for that step
        (read in this transaction) and those of every row of it in order, and the step's earliest
        timestamp, as ts_merge merges on SQLite."""
        first: dict[int, int] = {}  # step -> its index in the lists
        steps, times, out = [], [], []
        pending: dict[int, dict] = {}  # index -> merged values of a step that repeats in rows
        for r, blob in zip(rows, blobs):
            i = first.get(r.step)
            if i is None:
                first[r.step] = len(steps)
                steps.append(r.step)
                times.append(r.time_us)
                out.append(blob)
                continue
            values = pending.get(i)
            if values is None:
                values = pending[i] = self._decode(out[i])
            values.update(r.values)
            times[i] = min(times[i], r.time_us)
        for i, values in pending.items():
            out[i] = self._encode(values)
        # only a step up to the run's last one can be stored: new steps, the usual case, cost no look-up
        (last,) = self._conn.execute("SELECT last_step FROM runs WHERE rid = ?", (rid,)).fetchone()
        if last is not None:
            for step, time_us, data in self._stored_rows(rid, sorted(s for s in steps if s <= last)):
                i = first[step]
                out[i] = self._merge_blobs(data, out[i])
                times[i] = min(times[i], time_us)
        return steps, times, out

    def _stored_rows(self, rid: int, steps: list[int]) -> Iterable[tuple[int, int, bytes]]:
        """``(step, time_us, data)`` of the stored history rows among ``steps`` (sorted)."""
        top = _LOOKUP_SIZES[-1]
        for i in range(0, len(steps), top):
            chunk = steps[i : i + top]
            # a few statement shapes serve any count: a chunk is padded with its last step
            size = next(n for n in _LOOKUP_SIZES if n >= len(chunk))
            chunk += [chunk[-1]] * (size - len(chunk))
            # the range lets the primary key narrow the scan even before the planner has statistics
            yield from self._conn.execute(
                "SELECT step, time_us, data FROM history WHERE rid = ? AND step >= ? AND step <= ?"
                f" AND step IN ({', '.join('?' * size)})",
                (rid, chunk[0], chunk[-1], *chunk),
            ).fetchall()

    def _add_payloads(self, rid: int, step: int, payloads) -> None:
        conn = self._conn
        have = [
            d
            for (d,) in conn.execute(
                "SELECT data FROM history_payloads WHERE rid = ? AND step = ? ORDER BY idx", (rid, step)
            )
        ]
        idx = len(have)
        for p in payloads:
            p = bytes(p)
            if p not in have:
                conn.execute(
                    "INSERT INTO history_payloads (rid, step, idx, data) VALUES (?, ?, ?, ?)", (rid, step, idx, p)
                )
                have.append(p)
                idx += 1

    def append_console(self, run_id: str, lines: Iterable, *, cursor: Optional[int] = None) -> None:
        """Append console lines ``(time_us, stream, text)`` after the run's stored ones, in
        order. ``text`` is one line; a trailing newline is dropped. Appending is not idempotent:
        pass ``cursor`` (stored in the same transaction) to know where a replay must start."""
        with self._tx(run_id):
            self._append_console(self._rid(run_id), lines)
            if cursor is not None:
                self._conn.execute("UPDATE runs SET wal_cursor = ? WHERE rid = ?", (cursor, self._rids[run_id]))

    def _append_console(self, rid: int, lines) -> None:
        conn = self._conn
        seq = self._console_seq.get(rid)
        if seq is None:
            (top,) = conn.execute("SELECT max(seq) FROM console WHERE rid = ?", (rid,)).fetchone()
            seq = top + 1 if top is not None else 0
        params = []
        for time_us, stream, text in lines:
            if text.endswith("\n"):
                text = text[:-1]
            params.append((rid, seq, int(time_us), str(stream), text))
            seq += 1
        conn.executemany("INSERT INTO console (rid, seq, time_us, stream, text) VALUES (?, ?, ?, ?, ?)", params)
        self._console_seq[rid] = seq

    # -- all at once -----------------------------------------------------------------------------

    def apply(
        self,
        run_id: str,
        *,
        rows: Iterable = (),
        config: Optional[Mapping] = None,
        metadata: Optional[Mapping] = None,
        console: Iterable = (),
        summary: Optional[Mapping] = None,
        cursor: Optional[int] = None,
        final_state: Optional[tuple[str, Optional[int]]] = None,
        artifacts: Iterable = (),
        system: Iterable = (),
        typed_steps: Optional[Collection[int]] = None,
        marks: Optional[Mapping[int, int]] = None,
    ) -> int:
        """Everything the daemon has for a run since its last call, in ONE transaction.

        ``rows`` as in ``write_rows``; ``config`` and ``metadata`` merge (top-level keys, new
        value wins; empty or None changes nothing); ``console`` as in ``append_console``;
        ``summary`` replaces the stored summary (None keeps it); ``cursor`` sets the run's WAL
        cursor (None keeps it); ``final_state`` = ``(state, exit_code)`` ends the run
        (``(state, exit_code, finished_at)`` for a run replayed later). Because
        the cursor commits with the data, a daemon that replays its WAL from ``run_cursor``
        after a crash stores each record exactly once. Returns ``write_rows``'s count.
        ``artifacts``: artifact versions to index, each as ``check_artifact`` returns it (see
        ``add_artifact``). ``system``: system-metrics rows as in ``write_system_metrics``.
        ``typed_steps``: the steps among ``rows`` that may hold typed values (dicts with a
        ``"_type"``, indexed in ``media``); a caller that knows saves the search of every row,
        which None (the default) does. ``marks``: writer -> the seq of its last event whose
        console lines are in ``console`` (see ``event_marks``).
        Raises as the single methods do; on an exception nothing of the call is stored.
        """
        if final_state is not None and (final_state[0] == "running" or final_state[0] not in STATES):
            raise ValueError(f"invalid final state {final_state[0]!r}: use one of {', '.join(STATES[1:])}")
        summary_json = _dumps(dict(summary), "summary") if summary is not None else None
        with self._tx(run_id):
            conn = self._conn
            rid = self._rid(run_id)
            merged = self._write_rows(rid, rows, cursor, typed_steps)
            if console:
                self._append_console(rid, console)
            if marks:
                conn.executemany(
                    "INSERT INTO event_marks (rid, writer, seq) VALUES (?, ?, ?)"
                    " ON CONFLICT (rid, writer) DO UPDATE SET seq = excluded.seq",
                    [(rid, int(w), int(q)) for w, q in marks.items()],
                )
            for artifact in artifacts:
                self._add_artifact(rid, artifact)
            if system:
                self._write_system(rid, system)
            sets, params = ["updated_at = ?"], [time.time()]
            for column, update in (("config", config), ("metadata", metadata)):
                if update:
                    if column == "config":
                        update = edits.overlay_config(conn, rid, update)
                    merged_obj = self._load_json(rid, column)
                    merged_obj.update(update)
                    sets.append(f"{column} = ?")
                    params.append(_dumps(merged_obj, column))
                    if column == "config":
                        self._index_run(rid, config=merged_obj)
            if summary is not None:
                current = dict(summary)
                edited = edits.overlay_summary(conn, rid, current)
                self._index_run(rid, summary=edited)
                sets.append("summary = ?")
                params.append(summary_json if edited is current else _dumps(edited, "summary"))
            if final_state is not None:
                self._series.seal(rid)
                state, exit_code, *when = final_state  # (state, exit_code[, finished_at]): now by default
                sets += ["state = ?", "exit_code = ?", "finished_at = ?"]
                params += [state, exit_code, when[0] if when else time.time()]
            if len(sets) > 1:
                conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE rid = ?", (*params, rid))
            return merged

    # -- system metrics --------------------------------------------------------------------------

    def write_system_metrics(self, run_id: str, rows: Iterable) -> None:
        """Store system-metrics rows ``(time_us, host, values)`` of a run (``values``: a dict of
        msgpack-serializable values). A row for a (time, host) already stored replaces it, so
        writing the same rows twice stores them once. Raises TypeError for a value msgpack
        cannot encode (nothing of the call is stored)."""
        with self._tx(run_id):
            self._write_system(self._rid(run_id), rows)

    def _write_system(self, rid: int, rows) -> None:
        encode = self._encode
        try:
            params = [(rid, int(t), str(host), encode(values)) for t, host, values in rows]
        except (TypeError, msgspec.EncodeError) as e:
            raise TypeError(f"system metrics cannot be stored: {e}") from None
        self._conn.executemany(
            "INSERT INTO system_metrics (rid, time_us, host, data) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (rid, time_us, host) DO UPDATE SET data = excluded.data",
            params,
        )

    # -- artifacts -------------------------------------------------------------------------------

    def add_artifact(self, run_id: str, artifact: Mapping) -> tuple[str, int]:
        """Store one artifact version logged by ``run_id``; returns ``(name, version)``.

        ``artifact`` is an "artifact" event's data (checked with ``check_artifact``). The
        version is the name's next one (from 0), and "latest" and the given aliases move to it.
        An artifact logged with ``log_artifact`` whose digest equals the latest version's is
        that version (nothing new is stored; the aliases move); a table logged with ``run.log``
        (``run_key`` set) is always a new version, and an INCREMENTAL one gets the next
        increment number of its name. Idempotent per ``uid``: the same call again returns
        the version stored the first time. Raises ValueError/TypeError for bad data.
        """
        artifact = check_artifact(artifact)
        with self._tx(run_id):
            return self._add_artifact(self._rid(run_id), artifact)

    def _add_artifact(self, rid: int, a: Mapping) -> tuple[str, int]:
        conn = self._conn
        name = a["name"]
        done = conn.execute(
            "SELECT a.name, a.version FROM artifact_logs l JOIN artifacts a ON a.aid = l.aid WHERE l.uid = ?",
            (a["uid"],),
        ).fetchone()
        if done is not None:  # a replayed event
            return done[0], done[1]
        latest = conn.execute(
            "SELECT aid, version, digest FROM artifacts WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()
        if latest is not None and a["run_key"] is None and latest[2] == a["digest"]:
            aid, version = latest[0], latest[1]
        else:
            version = latest[1] + 1 if latest is not None else 0
            increment = None
            if a["incremental"]:
                (increment,) = conn.execute(
                    "SELECT coalesce(max(increment) + 1, 0) FROM artifacts WHERE name = ? AND increment IS NOT NULL",
                    (name,),
                ).fetchone()
            aid = self._db.insert_id(
                "INSERT INTO artifacts (name, version, type, rid, digest, description, metadata, manifest, run_key,"
                " step, increment, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    a["type"],
                    rid,
                    a["digest"],
                    a["description"],
                    _dumps(a["metadata"], "artifact metadata"),
                    _dumps(a["manifest"], "artifact manifest"),
                    a["run_key"],
                    a["step"],
                    increment,
                    time.time(),
                ),
                "aid",
            )
        conn.execute("INSERT INTO artifact_logs (uid, aid) VALUES (?, ?)", (a["uid"], aid))
        conn.executemany(
            "INSERT INTO artifact_aliases (name, alias, version) VALUES (?, ?, ?)"
            " ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
            [(name, alias, version) for alias in dict.fromkeys(["latest", *a["aliases"]])],
        )
        return name, version

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit nothing more and close; on SQLite the last connection to close checkpoints
        the WAL into the database. Idempotent."""
        with self._lock:
            if self._conn is None:
                return
            self._conn = None
            self._db.close(optimize=True)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.path}{' (closed)' if self._conn is None else ''}>"


def _check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"invalid run state {state!r}: use one of {', '.join(STATES)}")


def _bad_row(rows, encode, error) -> str:
    for r in rows:
        try:
            encode(r.values)
        except (TypeError, msgspec.EncodeError):
            for k, v in r.values.items():
                try:
                    encode(v)
                except (TypeError, msgspec.EncodeError):
                    return f"step {r.step}: value of {k!r} ({type(v).__name__}) cannot be stored: {error}"
            return f"step {r.step}: the row cannot be stored: {error}"
    return f"a row cannot be stored: {error}"
