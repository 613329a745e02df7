"""The store's schema: one SQLite database per run root, ``<root>/trackside.db``, or a PostgreSQL database.

One writer (the daemon, or a ``trackside server``, through one ``Store``) and any number of
readers (``trackside.api``, the CLI, a UI) at once: a reader never waits for the writer and
sees every transaction committed before its statement began. SQLite runs in WAL mode for this;
PostgreSQL does it anyway (MVCC).

PostgreSQL: ``Store(root, db="postgresql://user@host/database")`` keeps the tables below in
that database (an empty one, or one a trackside store created; needs ``pip install
'trackside[server]'``) and the files (media, tables, artifacts) under ``root`` as for SQLite;
``trackside.Api(root, db=...)`` reads it back. Both backends run the same statements and the
same schema; the few differences (placeholders, column types, the schema version, how an
amended step's values merge) live in ``store/dialect.py``. The writer holds one connection, each
reader its own.

Schema (SQLite's ``PRAGMA user_version``, PostgreSQL's ``meta`` table = ``SCHEMA_VERSION``):

- ``runs``: one row per run. ``rid`` is a small integer key used by every other table (an
  integer in each history row instead of the run id string keeps rows short and inserts fast).
  ``config``, ``summary``, ``metadata`` and ``tags`` are JSON text; ``wal_cursor`` is the
  daemon's WAL offset up to which everything is stored (see ``apply``).
- ``history``: per (run, step), the values of the step that are not numbers (text, booleans,
  rich values) as a msgpack map; a step of numbers only has no row here (schema 4). The numbers
  are in the series tables below.
- ``history_payloads``: a step's opaque payloads (rich values), kept out of ``history`` so that
  scalar reads never page them in.
- ``history_keys``: every key a run has logged, for listing without scanning history.
- ``console``: captured output lines, ``seq`` numbered per run from 0.
- ``artifacts``: one row per artifact version (``name``, ``version`` from 0), its ``manifest``
  (JSON: entry name -> a logged object or a content-addressed file, paths relative to the run
  root) and, for a table logged with ``run.log``, the run's ``run_key``, ``step`` and
  ``increment`` (INCREMENTAL tables: 0, 1, ... per run and key). ``artifact_aliases`` maps
  ``(name, alias)`` to a version ("latest" and the user's own); ``artifact_logs`` maps the SDK's
  id of each log call to the version it stored, so a replayed event stores nothing twice and the
  SDK can wait for its artifact. These tables are created with ``IF NOT EXISTS`` when the daemon
  opens a store: adding them changes nothing an older reader reads.
- ``media`` (schema 2): an index of the typed values (images, histograms, ...) in history rows:
  one row per (run, key, step, file) with the file's ``path`` (relative to the run folder; ''
  for a value without a file), ``sha256`` and the ``type`` of the value owning it. Filled in
  the transaction that writes the rows, so readers can find a key's media without scanning
  history; a store of schema 1 is indexed once when a newer daemon opens it.
- ``series_keys``, ``series_chunks``, ``series_stats`` (schema 4): every numeric value of the
  history, per run and key, in compressed column chunks with statistics at several levels;
  key 0 of a run, ``_timestamp``, lists every stored step with its time (``store/series.py``).
- ``system_metrics`` (schema 3): the sampled system metrics of a run, one row per (run, time,
  host): ``data`` is a msgpack map of ``system/...`` keys aggregated over one log interval
  (``daemon/sysmetrics/window.py``), ``time_us`` the end of that interval.
"""

from __future__ import annotations


from .dialect import StoreError

DB_NAME = "trackside.db"
SCHEMA_VERSION = 4
STATES = ("running", "finished", "failed", "crashed")
DEFAULT_PROJECT = "uncategorized"

# Readers and the writer share these statements' idea of the layout; bump SCHEMA_VERSION (and add
# a migration in Store._migrate) for any change a reader of the old version would misread.
SCHEMA = """
CREATE TABLE runs (
    rid           INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL UNIQUE,
    project       TEXT NOT NULL,
    name          TEXT,
    group_name    TEXT,
    job_type      TEXT,
    tags          TEXT NOT NULL DEFAULT '[]',
    config        TEXT NOT NULL DEFAULT '{}',
    summary       TEXT NOT NULL DEFAULT '{}',
    metadata      TEXT NOT NULL DEFAULT '{}',
    state         TEXT NOT NULL DEFAULT 'running',
    exit_code     INTEGER,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    finished_at   REAL,
    root_dir      TEXT NOT NULL,
    history_rows  INTEGER NOT NULL DEFAULT 0,
    last_step     INTEGER,
    wal_cursor    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX runs_project ON runs (project, created_at);
CREATE TABLE history (
    rid      INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    time_us  INTEGER NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (rid, step)
) WITHOUT ROWID;
CREATE TABLE history_payloads (
    rid   INTEGER NOT NULL,
    step  INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    data  BLOB NOT NULL,
    PRIMARY KEY (rid, step, idx)
);
CREATE TABLE history_keys (
    rid  INTEGER NOT NULL,
    key  TEXT NOT NULL,
    PRIMARY KEY (rid, key)
) WITHOUT ROWID;
CREATE TABLE console (
    rid      INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    time_us  INTEGER NOT NULL,
    stream   TEXT NOT NULL,
    text     TEXT NOT NULL,
    PRIMARY KEY (rid, seq)
) WITHOUT ROWID;
"""

# Artifacts (and the tables runs log, which are artifacts too). Created on open, not versioned:
# they only add tables, so a reader of SCHEMA_VERSION 1 without them reads everything else.
ARTIFACT_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    aid          INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    type         TEXT NOT NULL,
    rid          INTEGER NOT NULL,
    digest       TEXT NOT NULL,
    description  TEXT,
    metadata     TEXT NOT NULL DEFAULT '{}',
    manifest     TEXT NOT NULL,
    run_key      TEXT,
    step         INTEGER,
    increment    INTEGER,
    created_at   REAL NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX IF NOT EXISTS artifacts_run ON artifacts (rid, run_key, version);
CREATE TABLE IF NOT EXISTS artifact_aliases (
    name     TEXT NOT NULL,
    alias    TEXT NOT NULL,
    version  INTEGER NOT NULL,
    PRIMARY KEY (name, alias)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifact_logs (
    uid  TEXT PRIMARY KEY,
    aid  INTEGER NOT NULL
) WITHOUT ROWID;
"""
# Replays append nothing twice: per (run, writer), the highest seq of its events whose appends
# (console lines) the store holds, written in the transaction that holds them. Created on open
# like the artifact tables: no reader reads it.
MARKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_marks (
    rid     INTEGER NOT NULL,
    writer  INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (rid, writer)
) WITHOUT ROWID;
"""

# Migrations: version -> the statements that bring a store of the version before it there. A new
# store runs SCHEMA and then every migration, so both paths end with the same tables.
MEDIA_SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    rid     INTEGER NOT NULL,
    key     TEXT NOT NULL,
    step    INTEGER NOT NULL,
    path    TEXT NOT NULL,
    sha256  TEXT,
    type    TEXT NOT NULL,
    PRIMARY KEY (rid, key, step, path)
) WITHOUT ROWID;
"""
MIGRATIONS = {2: MEDIA_SCHEMA}
# System metrics have a time axis, not steps: one row per (run, window end, host), the window's
# aggregates as a msgpack map. The host is in the key: each host's daemon stores its own rows.
SYSTEM_SCHEMA = """
CREATE TABLE IF NOT EXISTS system_metrics (
    rid      INTEGER NOT NULL,
    time_us  INTEGER NOT NULL,
    host     TEXT NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (rid, time_us, host)
) WITHOUT ROWID;
"""
MIGRATIONS[3] = SYSTEM_SCHEMA
# Schema 4: the series layout (store/series.py, store/chunks.py): every number of a history row
# lives in its key's chunked series; the history table keeps only a step's other values. The
# migration moves the numbers of stored rows there (Store._history_to_series).
SERIES_SCHEMA = """
CREATE TABLE IF NOT EXISTS series_keys (
    rid  INTEGER NOT NULL,
    kid  INTEGER NOT NULL,
    key  TEXT NOT NULL,
    PRIMARY KEY (rid, kid)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS series_keys_key ON series_keys (rid, key);
CREATE TABLE IF NOT EXISTS series_chunks (
    rid    INTEGER NOT NULL,
    kid    INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    steps  BLOB NOT NULL,
    vals   BLOB NOT NULL,
    PRIMARY KEY (rid, kid, idx)
);
-- a rowid table: a chunk of a few KB fits a page's cell (an index B-tree would spill most of it
-- into an overflow page of its own, tripling the file)
CREATE TABLE IF NOT EXISTS series_stats (
    rid         INTEGER NOT NULL,
    kid         INTEGER NOT NULL,
    level       INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    first_step  INTEGER NOT NULL,
    last_step   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    vmin        REAL,
    vmax        REAL,
    vfirst      REAL,
    vlast       REAL,
    t_first     INTEGER NOT NULL,
    t_last      INTEGER NOT NULL,
    PRIMARY KEY (rid, kid, level, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS series_stats_steps ON series_stats (rid, kid, level, last_step);
"""
MIGRATIONS[4] = SERIES_SCHEMA


class SchemaVersionError(StoreError):
    """The database was written by a newer trackside whose schema this one cannot read."""


def check_version(db) -> int:
    """The database's schema version; raises SchemaVersionError when it is newer than ours."""
    version = db.schema_version()
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{db.where} was written by a newer trackside (store schema {version}; this trackside "
            f"reads up to {SCHEMA_VERSION}): upgrade trackside (pip install -U trackside)"
        )
    return version
