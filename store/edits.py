"""Edits of a run after the fact, and deleting a run: what ``trackside.Api``'s ``run.summary[k]
= v``, ``run.update()`` and ``run.delete()`` write (through ``Store.edit_run`` and
``Store.delete_run``), locally and on a team server.

Design: an edit is a row of ``run_edits`` that the store's writer merges with everything the
run's writers store afterwards, rather than an event in the run's WAL.

- Why not the WAL: a run that has finished has no daemon and no writer any more, a run on a
  team server has its WAL on the server, and a run synced or imported may have no WAL at all;
  an edit must work for all of them, in one transaction, without starting a daemon.
- Why it survives a replay: the daemon (or the server's sink) writes a run's summary as a whole
  snapshot, its config and its fields (name, tags, ...) as the run's writers set them, and it
  replays its WAL after a crash (from the store's cursor, its summary restored from the store)
  or when a run is synced again. Every one of those writes goes through ``Store.apply`` and
  ``Store.upsert_run``, which lay the run's edits over what they write (``overlay_*``), so a
  replay cannot write the old value back over an edit.
- Ordering with a live run: each edit keeps ``base``, the value the run's writers had stored for
  the key when the edit was made. While what the writers store for the key is still ``base``,
  the edit wins (a replay of records older than the edit writes ``base`` again, or nothing). Once
  the writers store another value for the key, that change came after the edit, and it wins: the
  edit row is dropped. "After" is store order: a value the run logged before the edit but that
  reached the store after it (within the daemon's ~1 s store interval) counts as later, the same
  with or without a crash in between, since a replay stores the same values again.
  ``run.summary["best"] = x`` assigned by the live run holds ``x`` in every snapshot, so an edit
  of ``best`` stands until the run assigns another value; a key the run logs every step takes
  the run's next value, as it would in the run's own summary.
- Deleting removes the run's rows from every table that has a ``rid`` column (found by looking,
  so tables added later are covered), the tables it logged with ``run.log``, and its folder
  ``<root>/runs/<run id>`` under the store's own root (its id checked as a name first, a
  symlink removed rather than followed). Artifacts logged with ``log_artifact`` are kept, as
  other runs may use them.

Tables and columns here are added on open, idempotently (``CREATE ... IF NOT EXISTS``, and a
check-then-ALTER for ``runs.notes``): an older reader never reads them.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterable, Mapping, Optional

from trackside.contracts import names

__all__ = [
    "EDITABLE",
    "EDITS_SCHEMA",
    "add_notes_column",
    "delete_rows",
    "overlay_config",
    "overlay_fields",
    "overlay_summary",
    "record_fields",
    "record_mapping",
    "remove_run_folder",
    "to_json",
]

EDITS_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_edits (
    rid    INTEGER NOT NULL,
    field  TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT,
    base   TEXT,
    PRIMARY KEY (rid, field, key)
) WITHOUT ROWID
"""
# field: "summary", "config", or "run" (key: a column of runs); value: the edit as JSON, NULL for
# a deleted key; base: the writers' value when the edit was made as JSON, NULL when they had none

# the run's fields an edit may change: attribute -> column of runs
EDITABLE = {"name": "name", "group": "group_name", "job_type": "job_type", "tags": "tags", "notes": "notes"}


def to_json(obj: Any) -> str:
    """A value as the store keeps it in its JSON columns (NaN and infinities kept, numpy values
    as lists). Raises TypeError for what JSON cannot hold."""
    try:
        return json.dumps(obj, allow_nan=True, default=json_default, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{obj!r:.80} cannot be stored: {e}") from None


def json_default(obj: Any) -> Any:
    """What JSON cannot hold as it is, in the store's JSON columns: numpy values as lists."""
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, without importing numpy
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def add_notes_column(db) -> None:
    """Add ``runs.notes`` to a store without it (inside the caller's write transaction)."""
    if not db.has_column("runs", "notes"):
        db.conn.execute("ALTER TABLE runs ADD COLUMN notes TEXT")


def _edits(conn, rid: int, field: str) -> dict:
    return {
        k: (v, b)
        for k, v, b in conn.execute(
            "SELECT key, value, base FROM run_edits WHERE rid = ? AND field = ?", (rid, field)
        ).fetchall()
    }


def _drop(conn, rid: int, field: str, keys: list) -> None:
    if keys:
        conn.executemany(
            "DELETE FROM run_edits WHERE rid = ? AND field = ? AND key = ?", [(rid, field, k) for k in keys]
        )


# -- recording an edit (Store.edit_run) --------------------------------------------------------------


def record_mapping(conn, rid: int, field: str, current: Mapping, sets: Mapping, dels: Iterable[str]) -> dict:
    """Record edits of the run's summary or config (``field``), whose stored value is
    ``current``: ``sets`` assigned, ``dels`` deleted. Returns the new value to store."""
    have = _edits(conn, rid, field)
    new = dict(current)
    rows = []

    def base(k: str) -> Optional[str]:
        if k in have:  # edited before: the writers' value is still the one of the first edit
            return have[k][1]
        return to_json(current[k]) if k in current else None

    for k, v in sets.items():
        rows.append((rid, field, str(k), to_json(v), base(k)))
        new[k] = v
    for k in dels:
        rows.append((rid, field, str(k), None, base(k)))
        new.pop(k, None)
    _upsert(conn, rows)
    return new


def record_fields(conn, rid: int, current: Mapping[str, Any], sets: Mapping[str, Any]) -> None:
    """Record edits of the run's columns (``sets``: column -> new value; ``current``: column ->
    stored value, tags as a list) and write them."""
    have = _edits(conn, rid, "run")
    rows = []
    for column, v in sets.items():
        base = have[column][1] if column in have else to_json(current.get(column))
        rows.append((rid, "run", column, to_json(v), base))
        stored = to_json(list(v or ())) if column == "tags" else v
        conn.execute(f"UPDATE runs SET {column} = ? WHERE rid = ?", (stored, rid))
    _upsert(conn, rows)


def _upsert(conn, rows: list) -> None:
    conn.executemany(
        "INSERT INTO run_edits (rid, field, key, value, base) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (rid, field, key) DO UPDATE SET value = excluded.value, base = excluded.base",
        rows,
    )


# -- laying edits over what the writers store ---------------------------------------------------------


def overlay_summary(conn, rid: int, summary: dict) -> dict:
    """The summary snapshot a writer stores, with the run's summary edits laid over it (an edit
    whose key the writers changed since is dropped: that change is later)."""
    edits = _edits(conn, rid, "summary")
    if not edits:
        return summary
    out = dict(summary)
    gone = []
    for k, (value, base) in edits.items():
        theirs = to_json(summary[k]) if k in summary else None
        if theirs != base:
            gone.append(k)
        elif value is None:
            out.pop(k, None)
        else:
            out[k] = json.loads(value)
    _drop(conn, rid, "summary", gone)
    return out


def overlay_config(conn, rid: int, update: Mapping) -> dict:
    """A writer's config update (top-level keys) with the run's config edits laid over it."""
    edits = _edits(conn, rid, "config")
    if not edits:
        return dict(update)
    out = dict(update)
    gone = []
    for k, (value, base) in edits.items():
        if k not in update:
            continue
        if to_json(update[k]) != base:
            gone.append(k)
        elif value is None:
            del out[k]
        else:
            out[k] = json.loads(value)
    _drop(conn, rid, "config", gone)
    return out


def overlay_fields(conn, rid: int, fields: dict) -> dict:
    """A writer's run fields (column -> value, None: not set; tags a list) with the run's edits
    of them laid over it."""
    edits = _edits(conn, rid, "run")
    if not edits:
        return fields
    out = dict(fields)
    gone = []
    for column, (value, base) in edits.items():
        theirs = fields.get(column)
        if theirs is None:  # not set by this write: the stored (edited) value stays
            continue
        if to_json(list(theirs) if column == "tags" else theirs) != base:
            gone.append(column)
        else:
            out[column] = json.loads(value) if value is not None else None
    _drop(conn, rid, "run", gone)
    return out


# -- deleting a run -----------------------------------------------------------------------------------


def delete_rows(db, rid: int) -> None:
    """Delete the run ``rid`` from every table (inside the caller's write transaction): the
    tables it logged with ``run.log`` too, not the artifacts it logged with ``log_artifact``."""
    conn = db.conn
    logged = "SELECT aid FROM artifacts WHERE rid = ? AND run_key IS NOT NULL"
    if db.has_table("artifacts"):
        conn.execute(f"DELETE FROM artifact_logs WHERE aid IN ({logged})", (rid,))
        conn.execute(
            "DELETE FROM artifact_aliases WHERE name IN"
            " (SELECT name FROM artifacts WHERE rid = ? AND run_key IS NOT NULL)",
            (rid,),
        )
        conn.execute("DELETE FROM artifacts WHERE rid = ? AND run_key IS NOT NULL", (rid,))
    for table in db.tables_with_column("rid"):
        if table not in ("artifacts", "runs"):
            conn.execute(f"DELETE FROM {table} WHERE rid = ?", (rid,))
    conn.execute("DELETE FROM runs WHERE rid = ?", (rid,))


def remove_run_folder(root: str, run_id: str) -> None:
    """Remove ``<root>/runs/<run_id>`` (the run's WAL, media, tables): the id is checked as a
    name first; a symlink there is removed, never followed."""
    names.check_run_id(run_id)
    runs = os.path.join(root, "runs")
    path = os.path.join(runs, run_id)
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.isdir(path):
        names.contained(runs, run_id, "run folder")
        shutil.rmtree(path)  # removes links inside, never what they point to
