"""Read back what runs logged: ``Api`` over a run root's local store.

    api = trackside.Api()                      # $TRACKSIDE_DIR, else ./trackside
    run = api.run("3kf9")                      # an id or a unique prefix of one
    run.history(keys=["loss"], min_step=100)   # [{"_step": 100, "_timestamp": ..., "loss": 0.3}, ...]
    for row in run.scan_history(): ...         # every row, a page at a time

    api = trackside.Api(root, db="postgresql://host/trackside")  # a store kept in PostgreSQL
    api.runs("mnist", filters={"config.lr": {"$gt": 0.01}}, order="-summary.acc")  # a paged Runs

Reads are live: a query sees every batch the daemon committed before it started, while the
run is still writing. Edits after the run (``run.summary[k] = v``, ``run.update()``,
``run.delete()``) go through a writer of the store opened for them (``store/edits.py``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Optional, Sequence, Union

import msgspec
import numpy as np

from trackside.contracts.errors import RunNotFoundError
from trackside.data_types.base import from_json
from trackside.store import DB_NAME, SchemaVersionError, Store, StoreError
from trackside.store.query import compile_query
from trackside.store.reader import ConsoleLine, StoreReader
from trackside.store.sampling import Buckets, Series, SeriesReader, Tail, build_rows, empty_buckets, sampled_rows

from .artifacts import load_artifact, run_artifacts, run_table, run_table_increments, run_table_keys
from .contracts import names
from .runs import RunEdits, Runs

__all__ = [
    "Api",
    "ConsoleLine",
    "RunNotFoundError",
    "RunView",
    "Runs",
    "SchemaVersionError",
    "StoreError",
    "StoreNotFoundError",
    "Series",
    "Buckets",
    "Tail",
]

_META_KEYS = ("_step", "_timestamp")
_STEP_MIN = -(2**63)
_STEP_END = 2**63 - 1  # exclusive upper bound standing for "no max_step"

_decode = msgspec.msgpack.Decoder().decode
UNSET = msgspec.UNSET
astuple = msgspec.structs.astuple


def _picker(keys: tuple[str, ...]):
    """A decoder of history blobs that reads only ``keys`` (absent ones are UNSET) and skips
    the other values without building them: 1.6x faster than decoding whole rows for 2 of 10."""
    fields = [(f"k{i}", Any, UNSET) for i in range(len(keys))]
    struct = msgspec.defstruct("Picked", fields, rename={f"k{i}": k for i, k in enumerate(keys)})
    return msgspec.msgpack.Decoder(struct).decode


def _bounds(min_step: Optional[int], max_step: Optional[int]) -> tuple[int, int]:
    """Inclusive step bounds of ``min_step <= step < max_step``."""
    lo = _STEP_MIN if min_step is None else int(min_step)
    hi = _STEP_END - 1 if max_step is None else int(max_step) - 1
    return lo, hi


def _key_list(keys: Union[str, Sequence[str], None]) -> Optional[list[str]]:
    if keys is None:
        return None
    return [keys] if isinstance(keys, str) else list(dict.fromkeys(keys))


class StoreNotFoundError(FileNotFoundError):
    """The run root holds no store (nothing was logged there, or it is the wrong folder)."""


def default_root() -> str:
    """The run root when none is given: ``$TRACKSIDE_DIR``, else ``./trackside``."""
    return os.environ.get("TRACKSIDE_DIR") or os.path.join(os.getcwd(), "trackside")


def _last_part(path: Optional[str]) -> Optional[str]:
    # accept the documented "entity/project" and "entity/project/run_id" forms
    return path.rstrip("/").rsplit("/", 1)[-1] if path else path


class Api(StoreReader):
    """Read-only access to the store of one run root.

    ``root``: the run root (the folder holding ``trackside.db``); default ``$TRACKSIDE_DIR``,
    else ``./trackside``. The folder given to ``init(dir=D)`` works too (its ``trackside``
    subfolder is used). ``db``: a ``postgresql://`` URL to read the store kept in that
    PostgreSQL database (by ``Store(root, db=...)``, a ``trackside server --db``) instead;
    ``root`` is then only where artifact files are found. Raises StoreNotFoundError when
    there is no store file, StoreError when the database holds no store (or the server cannot
    be reached), SchemaVersionError when the store is from a newer trackside, ImportError
    naming the extra to install when a PostgreSQL URL is given without psycopg. Usable from
    several threads; ``close()`` (or a ``with`` block) releases the database.

    ``Api("grpc://host:port")`` (or ``grpcs://``) reads from a ``trackside server`` instead: a
    ``trackside.remote.RemoteApi`` with the same calls (``token=``, ``ca=`` keywords).
    """

    def __new__(cls, root=None, *args, **kwargs):
        if isinstance(root, str) and root.startswith(("grpc://", "grpcs://")):
            from .remote import RemoteApi  # lazy: grpc only for a server URL

            return RemoteApi(root, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, root: Union[str, os.PathLike, None] = None, *, db: Optional[str] = None, timeout: float = 5.0):
        root = os.path.abspath(os.fspath(root)) if root is not None else os.path.abspath(default_root())
        if db is not None:
            super().__init__(root, db=db)
            return
        path = os.path.join(root, DB_NAME)
        if not os.path.isfile(path):
            nested = os.path.join(root, "trackside", DB_NAME)
            if os.path.isfile(nested):
                root, path = os.path.dirname(nested), nested
            else:
                raise StoreNotFoundError(
                    f"no trackside store at {path}: nothing has been logged under {root}. Pass "
                    f"Api(root=...) (or set TRACKSIDE_DIR) to the run root your runs wrote: "
                    f"./trackside by default, <dir>/trackside for init(dir=<dir>)"
                )
        super().__init__(root, path, timeout=timeout)

    def runs(
        self,
        project: Optional[str] = None,
        filters: Optional[dict] = None,
        order: Optional[str] = None,
        per_page: int = 50,
    ) -> Runs:
        """The runs of ``project`` (all projects when None; ``"entity/project"`` is accepted)
        that match ``filters``, sorted by ``order`` (default ``"-created_at"``, newest first),
        as a ``Runs``: a list read ``per_page`` runs at a time (``len`` is a COUNT, a slice
        one query).

        ``filters`` are W&B's (MongoDB operators): ``{"config.lr": {"$gt": 0.01}}``,
        ``{"summary.loss": {"$lt": 0.1}}`` (or ``summary_metrics.loss``), ``{"tags": {"$in":
        ["a", "b"]}}``, ``{"state": "finished"}``, ``{"$or": [{...}, {...}]}``; ``order`` one
        field with ``-`` (descending) or ``+`` (``"-summary.acc"``, ``"+created_at"``). The
        fields and operators: ``trackside.store.query``. Raises ValueError naming a field or
        operator it does not take (before reading anything)."""
        query = compile_query(filters, order, project=_last_part(project), dialect=self.dialect)
        columns = self._run_columns("r.")

        def fetch(offset: int, limit: int) -> list:
            # the page's row ids first (a sort of narrow rows, on an index where it can), then its runs
            sql = (
                f"SELECT r.rid FROM runs r {query.join} WHERE {query.where} ORDER BY {query.order}"
                f" LIMIT {int(limit)} OFFSET {int(offset)}"
            )
            conn = self.conn
            rids = [rid for (rid,) in conn.execute(sql, (*query.join_params, *query.params))]
            rows: dict[int, tuple] = {}
            for i in range(0, len(rids), 500):  # SQLite's limit on bound parameters is 999 on old builds
                chunk = rids[i : i + 500]
                marks = ", ".join("?" * len(chunk))
                rows.update(
                    (row[0], row)
                    for row in conn.execute(f"SELECT {columns} FROM runs r WHERE r.rid IN ({marks})", chunk)
                )
            return [RunView(self, rows[rid]) for rid in rids if rid in rows]

        def count() -> int:
            return self.conn.execute(f"SELECT count(*) FROM runs r WHERE {query.where}", query.params).fetchone()[0]

        try:
            fetch(0, 0)  # the store has what the query needs (a run_values index: a store of this trackside)
        except Exception as e:
            if self.missing_table(e):
                raise StoreError(
                    f"{self.path} has no index of config and summary values yet: it is made when this "
                    f"version of trackside's daemon or server opens the store"
                ) from None
            raise
        return Runs(fetch, count, per_page)

    def _run_columns(self, prefix: str = "") -> str:
        """The columns a RunView is made of (``notes`` is NULL in a store that has no such column yet)."""
        if not self._has_notes:
            self._has_notes = self.has_column("runs", "notes")
        cols = _RUN_COLUMNS.split(", ") + ["notes" if self._has_notes else "NULL"]
        return ", ".join(f"{prefix}{c.strip()}" if c.strip() != "NULL" else c for c in cols)

    # -- edits after the run (RunView.update, .summary[...] = ..., .delete) ----------------------

    _store_writer: Optional[Store] = None
    _has_notes = False

    def _writer(self) -> Store:
        """The store's writer for edits, opened on first use (``store/edits.py``)."""
        writer = self._store_writer
        if writer is None:
            self.conn  # raises when closed
            writer = self._store_writer = Store(self.root, db=self.db) if self.db else Store(self.root)
        return writer

    def edit_run(self, run_id: str, **changes) -> None:
        """Edit a stored run (what ``RunView.update`` and summary assignments call):
        ``summary``/``config`` (keys to set), ``summary_del``/``config_del`` (keys to delete),
        ``fields`` (``name``, ``group``, ``job_type``, ``tags``, ``notes``). See
        ``Store.edit_run``."""
        self._writer().edit_run(run_id, **changes)

    def delete_run(self, run_id: str, force: bool = False) -> bool:
        """Delete a run, its rows and its files (what ``RunView.delete`` calls); see ``Store.delete_run``."""
        return self._writer().delete_run(run_id, force=force)

    def close(self) -> None:
        """Close the database connection (and the writer edits opened). Idempotent."""
        writer, self._store_writer = self._store_writer, None
        if writer is not None:
            writer.close()
        super().close()

    def run(self, path: str) -> "RunView":
        """The run with this id, or whose id starts with it when exactly one does.

        ``"entity/project/run_id"`` and ``"project/run_id"`` are accepted (the project, when
        given, must match). Raises RunNotFoundError naming the id when no run (or several)
        match."""
        parts = [p for p in str(path).split("/") if p]
        if not parts:
            raise RunNotFoundError(f"empty run id {path!r}")
        run_id = parts[-1]
        project = parts[-2] if len(parts) >= 2 else None
        conn = self.conn
        columns = self._run_columns()
        row = conn.execute(f"SELECT {columns} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            # ids sort as UTF-8 bytes; every id with this prefix lies in [prefix, prefix + U+10FFFF)
            found = conn.execute(
                f"SELECT {columns} FROM runs WHERE run_id >= ? AND run_id < ? ORDER BY run_id LIMIT 6",
                (run_id, run_id + "\U0010ffff"),
            ).fetchall()
            if len(found) > 1:
                ids = ", ".join(r[1] for r in found[:5]) + (", ..." if len(found) > 5 else "")
                raise RunNotFoundError(f"run id prefix {run_id!r} matches several runs ({ids}); give more characters")
            if not found:
                (count,) = conn.execute("SELECT count(*) FROM runs").fetchone()
                raise RunNotFoundError(
                    f"no run {run_id!r} in {self.path} ({count} run{'' if count == 1 else 's'}; "
                    f"`trackside runs` lists them)"
                )
            row = found[0]
        view = RunView(self, row)
        if project is not None and view.project != project:
            raise RunNotFoundError(f"run {view.id!r} is in project {view.project!r}, not {project!r}")
        return view

    def buckets_many(
        self,
        runs: Sequence[Union[str, "RunView"]],
        key: str,
        samples: int = 1000,
        min_step: Optional[int] = None,
        max_step: Optional[int] = None,
        *,
        x_axis: str = "_step",
    ) -> dict[str, Buckets]:
        """One key of many runs sampled as ``RunView.buckets`` does, in one call (an overlay
        chart): run id -> ``Buckets``. ``runs``: ids (exact) or run views. Raises
        RunNotFoundError naming an id no run has."""
        if samples < 1:
            raise ValueError(f"samples must be at least 1, not {samples}")
        ids = [r.id if isinstance(r, RunView) else str(r) for r in runs]
        lo, hi = _bounds(min_step, max_step)
        found: dict[str, tuple[int, float]] = {}
        conn = self.conn
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ", ".join("?" * len(part))
            for rid, run_id, created in conn.execute(
                f"SELECT rid, run_id, created_at FROM runs WHERE run_id IN ({marks})", part
            ):
                found[run_id] = (rid, created)
        missing = [i for i in ids if i not in found]
        if missing:
            raise RunNotFoundError(f"no run {missing[0]!r} in {self.path}")
        reader = SeriesReader(conn)
        out: dict[str, Buckets] = {}
        with self.snapshot():
            kids = reader.kids_of([found[i][0] for i in ids], [key, x_axis])
            if min_step is None and max_step is None:  # whole runs: the short ones read together
                runs_of = [(found[i][0], found[i][1], kids[found[i][0]]) for i in ids]
                for run_id, b in zip(ids, reader.buckets_many(runs_of, key, samples, x_axis)):
                    out[run_id] = b if b is not None else empty_buckets()
                return out
            for run_id in ids:
                rid, created = found[run_id]
                b = reader.buckets(rid, key, samples, lo, hi, x_axis, created, kids[rid])
                out[run_id] = b if b is not None else empty_buckets()
        return out

    def artifact(self, name: str, type: Optional[str] = None):
        """The artifact version ``"name:alias"`` (``latest`` when no alias; ``vN``; an alias
        of your own) as an ``Artifact`` whose ``get(entry)`` rebuilds the stored objects.
        Raises ArtifactNotFoundError (a KeyError) naming the versions and aliases that exist,
        ValueError when ``type`` is given and differs."""
        return load_artifact(self, name, type)

    def __enter__(self) -> "Api":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Api {self.root}>"


_RUN_COLUMNS = (
    "rid, run_id, project, name, group_name, job_type, tags, state, exit_code, created_at, updated_at,"
    " finished_at, root_dir, history_rows, last_step, config, summary, metadata"
)


# the fields of a run as read back (RunView attributes), in the order the CLI and the server show them
RUN_FIELDS = (
    "id",
    "project",
    "name",
    "group",
    "job_type",
    "tags",
    "state",
    "exit_code",
    "created_at",
    "updated_at",
    "finished_at",
    "history_rows",
    "last_step",
)


class RunView(RunEdits):
    """One run as the store holds it.

    Attributes are a snapshot taken when the view was made (``refresh()`` takes a new one):
    ``id``, ``project``, ``name``, ``group``, ``job_type``, ``tags`` (list), ``notes``,
    ``state`` ("running", "finished", "failed" or "crashed"), ``exit_code``, ``created_at``,
    ``updated_at`` and ``finished_at`` (seconds since the epoch, or None), ``dir`` (the run's
    files), ``history_rows``, ``last_step``. ``metadata`` is a new dict on each access.
    History, keys and console are read live.

    Edits (``RunEdits``): ``run.summary["k"] = v`` (and ``update``, ``del``) is stored at
    once; set ``name``, ``group``, ``job_type``, ``tags``, ``notes`` or change ``run.config``,
    then ``run.update()`` stores them; ``run.delete()`` deletes the run.
    """

    __slots__ = ("_api", "_rid", *RUN_FIELDS, "notes", "dir", "_config", "_summary", "_metadata", "_edits")

    def __init__(self, api: Api, row: tuple):
        self._api = api
        self._load(row)

    def _load(self, row: tuple) -> None:
        (
            self._rid,
            self.id,
            self.project,
            self.name,
            self.group,
            self.job_type,
            tags,
            self.state,
            self.exit_code,
            self.created_at,
            self.updated_at,
            self.finished_at,
            root_dir,
            self.history_rows,
            self.last_step,
            self._config,
            self._summary,
            self._metadata,
            self.notes,
        ) = row
        self.tags = json.loads(tags) if tags else []
        self.dir = os.path.join(root_dir, "runs", self.id)
        self._loaded()

    def refresh(self) -> "RunView":
        """Re-read the run's attributes from the store; returns self (edits not saved are dropped)."""
        row = self._api.conn.execute(
            f"SELECT {self._api._run_columns()} FROM runs WHERE rid = ?", (self._rid,)
        ).fetchone()
        if row is not None:
            self._load(row)
        return self

    def _stored_summary(self) -> dict:
        return json.loads(self._summary) if self._summary else {}

    def _stored_config(self) -> dict:
        return json.loads(self._config) if self._config else {}

    def _edit(self, **changes) -> None:
        self._api.edit_run(self.id, **changes)

    def _delete(self, force: bool) -> None:
        self._api.delete_run(self.id, force=force)

    @property
    def metadata(self) -> dict:
        return json.loads(self._metadata) if self._metadata else {}

    @property
    def runtime(self) -> float:
        """Seconds from creation to the end (or to the last write while running)."""
        end = self.finished_at if self.finished_at is not None else self.updated_at
        return max(0.0, end - self.created_at)

    # -- history ---------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every key the run has logged to its history, sorted."""
        return [
            k
            for (k,) in self._api.conn.execute("SELECT key FROM history_keys WHERE rid = ? ORDER BY key", (self._rid,))
        ]

    def history(
        self,
        keys: Union[str, Sequence[str], None] = None,
        min_step: Optional[int] = None,
        max_step: Optional[int] = None,
        pandas: bool = False,
        *,
        samples: Optional[int] = None,
        x_axis: str = "_step",
        objects: bool = False,
    ):
        """The run's history rows with ``min_step <= step < max_step``, in step order.

        Each row is a dict with ``_step``, ``_timestamp`` (seconds since the epoch) and the
        logged values: all of them, or only ``keys``; a row with none of ``keys`` is left out
        and a key a row lacks is absent from it. A row with opaque payloads has them as
        ``_payloads`` (list of bytes) when ``keys`` is None or names ``_payloads``.
        ``samples=N`` samples the numeric keys instead (``keys``, or all): at most N buckets
        of equal width along ``x_axis`` (see ``buckets``), one row per bucket and key at the
        bucket's last step, holding the key's last value there and the bucket's ``"<key>:min"``
        and ``"<key>:max"`` (and the x as ``x_axis`` when that is not ``_step``); a range of at
        most N points gives the points. Reads a number of rows proportional to N, not to the
        run's length.
        ``pandas=True`` returns a pandas DataFrame (raises ImportError without pandas).
        Rich values (images, histograms, lists of media ...) are their logged form, a dict
        with ``"_type"``; ``objects=True`` rebuilds them as the objects that were logged (reads
        their files; see ``media``). Loads every row at once: use ``scan_history`` for a run
        too large for memory.
        """
        if pandas:
            try:
                import pandas as pd  # optional: pandas
            except ImportError:
                raise ImportError(
                    "history(pandas=True) needs pandas, which is not installed: pip install pandas "
                    "(or call history() without pandas=True for a list of dicts)"
                ) from None
        if samples is not None:
            rows = sampled_rows(self.buckets(keys, samples, min_step, max_step, x_axis=x_axis), x_axis)
        else:
            rows = [row for page in self._pages(keys, min_step, max_step, None) for row in page]
        if objects:
            rows = [self._rebuild_row(row) for row in rows]
        if pandas:
            return pd.DataFrame.from_records(rows)
        return rows

    def series(self, key: str, min_step: Optional[int] = None, max_step: Optional[int] = None) -> Series:
        """The numeric values of ``key`` with ``min_step <= step < max_step`` as numpy arrays:
        ``Series(steps, values, timestamps)`` (int64; float64, or int64 for a key of integers;
        seconds since the epoch). Empty arrays for a key the run never logged a number to.
        Builds no dict per row: a million points in tens of milliseconds."""
        lo, hi = _bounds(min_step, max_step)
        with self._api.snapshot():
            found = SeriesReader(self._api.conn).series(self._rid, key, lo, hi)
        if found is None:
            return Series(np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float64))
        return found

    def buckets(
        self,
        keys: Union[str, Sequence[str], None] = None,
        samples: int = 1000,
        min_step: Optional[int] = None,
        max_step: Optional[int] = None,
        *,
        x_axis: str = "_step",
    ) -> dict[str, Buckets]:
        """Each numeric key (``keys``, or all) with ``min_step <= step < max_step`` sampled into
        at most ``samples`` buckets of equal width along ``x_axis``: ``"_step"``,
        ``"_timestamp"`` (seconds since the epoch), ``"_runtime"`` (seconds since the run was
        created) or another numeric key (its value at the same step). A ``Buckets`` per key:
        arrays ``x``, ``step``, ``first_step``, ``first``, ``last``, ``min``, ``max``,
        ``count``, one entry per non-empty bucket, exact over the points between its
        ``first_step`` and ``step``; ``exact`` when the range held at most ``samples`` points
        (each entry is a point). Reads statistics rows in proportion to ``samples``, not to
        the run's length (``store/sampling.py``)."""
        if samples < 1:
            raise ValueError(f"samples must be at least 1, not {samples}")
        keys = _key_list(keys)
        lo, hi = _bounds(min_step, max_step)
        reader = SeriesReader(self._api.conn)
        out: dict[str, Buckets] = {}
        with self._api.snapshot():
            kids = reader.kids(self._rid)
            for key in keys if keys is not None else [k for k in kids if k != "_timestamp"]:
                found = reader.buckets(self._rid, key, samples, lo, hi, x_axis, self.created_at, kids)
                out[key] = found if found is not None else empty_buckets()
        return out

    def tail(self, keys: Union[str, Sequence[str], None] = None, since: int = -1, limit: int = 10000) -> Tail:
        """What was stored after ``since``: ``Tail(rows, cursor)``, the history rows with a
        step above ``since`` (at most ``limit``, in step order; with ``keys``, those keys and
        rows holding one) and the cursor to pass next time (the last step returned, or
        ``since``). A live view polls it: each call reads only the new rows."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        page = next(self._pages(_key_list(keys), int(since) + 1, None, limit), [])
        return Tail(page, page[-1]["_step"] if page else int(since))

    def scan_history(
        self,
        keys: Union[str, Sequence[str], None] = None,
        min_step: Optional[int] = None,
        max_step: Optional[int] = None,
        page_size: int = 1000,
        *,
        objects: bool = False,
    ) -> Iterator[dict]:
        """Every history row with ``min_step <= step < max_step``, as ``history`` returns
        them, read ``page_size`` steps at a time: memory stays bounded however long the run.
        Rows committed while the scan runs are included if their step is still ahead.
        ``objects=True`` rebuilds rich values as in ``history``."""
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        for page in self._pages(keys, min_step, max_step, page_size):
            if objects:
                page = [self._rebuild_row(row) for row in page]
            yield from page

    def _pages(self, keys, min_step, max_step, page_size) -> Iterator[list[dict]]:
        conn = self._api.conn
        rid = self._rid
        if isinstance(keys, str):
            keys = [keys]
        want_payloads = keys is None or "_payloads" in keys
        if keys is not None:
            keys = [k for k in dict.fromkeys(keys) if k not in _META_KEYS and k != "_payloads"]
            if not keys and not want_payloads:  # every row has _step and _timestamp
                keys = None
                meta_only = True
            else:
                meta_only = False
        else:
            meta_only = False
        lo = _STEP_MIN if min_step is None else int(min_step)
        hi = _STEP_END if max_step is None else int(max_step)
        if want_payloads:
            want_payloads = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM history_payloads WHERE rid = ?)", (rid,)
            ).fetchone()[0]
        reader = SeriesReader(conn)

        def rest(first: int, last: int):
            if meta_only:
                return ()
            # each page is its own short read: a long scan never pins an old snapshot
            return conn.execute(
                "SELECT step, time_us, data FROM history WHERE rid = ? AND step >= ? AND step <= ? ORDER BY step",
                (rid, first, last),
            ).fetchall()

        while lo < hi:
            with self._api.snapshot():  # a page's series and rows agree
                if meta_only:
                    page, last = self._meta_rows(reader, lo, hi - 1, page_size)
                else:
                    payloads = self._payloads if want_payloads else None
                    page, last = build_rows(reader, rid, keys, lo, hi - 1, page_size, rest, _decode, payloads)
            if last is None:
                return
            if page:
                yield page
            if page_size is None or last >= hi - 1:
                return
            lo = last + 1

    def _meta_rows(self, reader, lo: int, hi: int, limit: Optional[int]) -> tuple[list[dict], Optional[int]]:
        steps, times = reader.points(self._rid, 0, lo, hi)
        if limit is not None:
            steps, times = steps[:limit], times[:limit]
        if not len(steps):
            return [], None
        rows = [{"_step": s, "_timestamp": t} for s, t in zip(steps.tolist(), (times / 1e6).tolist())]
        return rows, int(steps[-1])

    def _payloads(self, first: int, last: int) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for step, data in self._api.conn.execute(
            "SELECT step, data FROM history_payloads WHERE rid = ? AND step >= ? AND step <= ? ORDER BY step, idx",
            (self._rid, first, last),
        ):
            out.setdefault(step, []).append(data)
        return out

    # -- media -----------------------------------------------------------------------------------

    def media(self, key: str, step: Optional[int] = None):
        """The rich values logged at ``key`` (images, audio, histograms, charts, lists of them
        ...), rebuilt as objects equal to the ones logged.

        With ``step``: the object logged there (a list for a list of media); KeyError when
        ``key`` holds no rich value at that step. Without: ``[(step, object), ...]`` in step
        order, ``[]`` when there is none. Plain values (numbers, strings) are not media and are
        left out. Reads the files from the run folder: FileNotFoundError names a missing one,
        ValueError a damaged one (its SHA-256 differs from the one logged).
        """
        if not isinstance(key, str):
            raise TypeError(f"media() takes a key (str), not {type(key).__name__}")
        lo, hi = (None, None) if step is None else (int(step), int(step) + 1)
        steps = self._media_steps(key, lo, hi)
        found = []
        if steps is None:  # a store without the media index (schema 1): scan the key's history
            rows: Iterator = (
                (r["_step"], r[key]) for page in self._pages([key], lo, hi, 1000) for r in page if key in r
            )
        else:
            rows = self._values_at(key, steps)

        for s, value in rows:
            if type(value) is dict and "_type" in value:
                found.append((s, from_json(value, self.dir)))
        if step is None:
            return found
        if not found:
            raise KeyError(f"run {self.id} has no media at key {key!r} step {step}")
        return found[0][1]

    def media_files(self, key: Optional[str] = None) -> list[dict]:
        """The media index: one dict per file a rich value references (``step``, ``key``,
        ``path`` absolute or None for a value without a file such as a histogram (or with a
        path that would lead out of the run folder),
        ``sha256``, ``type``), for ``key`` or every key, in key and step order. Empty for a
        store without the index (written by trackside before schema 2)."""
        if not self._has_media_index():
            return []
        sql = "SELECT key, step, path, sha256, type FROM media WHERE rid = ?"
        args: tuple = (self._rid,)
        if key is not None:
            sql += " AND key = ?"
            args += (key,)
        return [
            {"step": s, "key": k, "path": _media_path(self.dir, p), "sha256": sha, "type": t}
            for k, s, p, sha, t in self._api.conn.execute(sql + " ORDER BY key, step, path", args)
        ]

    def rebuild(self, value):
        """A logged form read from this run (a history or summary value) as its object:
        ``run.rebuild(run.summary["gradients"])`` is the Histogram that was logged. Other
        values come back as they are."""
        return from_json(value, self.dir)

    def _rebuild_row(self, row: dict) -> dict:
        for k, v in row.items():
            if type(v) is dict and "_type" in v:
                row[k] = from_json(v, self.dir)
        return row

    def _has_media_index(self) -> bool:
        return self._api.has_table("media")

    def _media_steps(self, key: str, lo: Optional[int], hi: Optional[int]) -> Optional[list[int]]:
        """The steps the media index lists for ``key`` in [lo, hi), or None without an index."""
        if not self._has_media_index():
            return None
        lo = _STEP_MIN if lo is None else lo
        hi = _STEP_END if hi is None else hi
        return [
            s
            for (s,) in self._api.conn.execute(
                "SELECT DISTINCT step FROM media WHERE rid = ? AND key = ? AND step >= ? AND step < ? ORDER BY step",
                (self._rid, key, lo, hi),
            )
        ]

    def _values_at(self, key: str, steps: list[int]) -> Iterator[tuple[int, Any]]:
        pick = _picker((key,))
        conn = self._api.conn
        for i in range(0, len(steps), 500):  # SQLite's limit on bound parameters is 999 on old builds
            chunk = steps[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for s, data in conn.execute(
                f"SELECT step, data FROM history WHERE rid = ? AND step IN ({marks}) ORDER BY step",
                (self._rid, *chunk),
            ):
                (value,) = astuple(pick(data))
                if value is not UNSET:
                    yield s, value

    # -- console ---------------------------------------------------------------------------------

    def console_lines(self, stream: Optional[str] = None) -> list[ConsoleLine]:
        """The captured console lines in order, as ``(time, stream, text)``; only ``stream``'s
        ("stdout" or "stderr") when given."""
        sql = "SELECT time_us, stream, text FROM console WHERE rid = ?"
        args: tuple = (self._rid,)
        if stream is not None:
            sql += " AND stream = ?"
            args += (stream,)
        return [ConsoleLine(t / 1e6, s, text) for t, s, text in self._api.conn.execute(sql + " ORDER BY seq", args)]

    def console(self) -> str:
        """The captured console output, one line per logged line, in order."""
        return "".join(
            text + "\n"
            for (text,) in self._api.conn.execute("SELECT text FROM console WHERE rid = ? ORDER BY seq", (self._rid,))
        )

    # -- tables and artifacts --------------------------------------------------------------------

    def table(self, key: str, version: Union[int, str, None] = None):
        """The table the run logged under ``key`` (a ``Table`` equal to the one logged, or a
        ``JoinedTable``): the latest version, or version ``N`` (an int, ``"vN"``, or
        ``"latest"``). An INCREMENTAL table is the concatenation of its increments up to that
        version. Raises ArtifactNotFoundError (a KeyError) naming the run's tables, or its
        versions, when there is no such table or version."""
        return run_table(self._api, self.id, key, version)

    def table_increments(self, key: str) -> list:
        """The increments of the INCREMENTAL table logged under ``key``, in order, as
        ``TableIncrement(increment, version, step, table)`` (``table``: that increment's rows)."""
        return run_table_increments(self._api, self.id, key)

    def table_keys(self) -> list[str]:
        """The keys under which the run logged tables, sorted."""
        return run_table_keys(self._api, self.id)

    def logged_artifacts(self) -> list:
        """The artifact versions the run logged (its tables too), oldest first."""
        return run_artifacts(self._api, self.id)

    # -- system metrics ---------------------------------------------------------------------------

    def system_metrics(self, keys: Union[str, Sequence[str], None] = None, host: Optional[str] = None) -> list[dict]:
        """The run's system metrics in time order: one dict per log interval and host, with
        ``_timestamp`` (seconds since the epoch, the end of the interval), ``host`` and the
        ``system/...`` keys (a gauge's mean, and its maximum as ``<key>_max``). Only ``keys``
        when given (a row with none of them is left out), only ``host``'s rows when given.
        Empty when the daemon sampled nothing for the run (``system_metrics`` off, or a store
        written before system metrics existed)."""
        if isinstance(keys, str):
            keys = [keys]
        if keys is not None:
            keys = [k for k in dict.fromkeys(keys) if k not in ("_timestamp", "host")]
        sql = "SELECT time_us, host, data FROM system_metrics WHERE rid = ?"
        args: tuple = (self._rid,)
        if host is not None:
            sql += " AND host = ?"
            args += (host,)
        try:
            raw = self._api.conn.execute(sql + " ORDER BY time_us, host", args).fetchall()
        except Exception as e:
            if self._api.missing_table(e):  # a store from before system metrics
                return []
            raise
        out = []
        for time_us, row_host, data in raw:
            row = {"_timestamp": time_us / 1e6, "host": row_host}
            if keys is None:
                row.update(_decode(data))
            elif keys:  # (keys naming only "_timestamp" or "host": every row, with just those)
                values = _decode(data)
                picked = {k: values[k] for k in keys if k in values}
                if not picked:
                    continue
                row.update(picked)
            out.append(row)
        return out

    def __repr__(self) -> str:
        name = f" name={self.name!r}" if self.name else ""
        return f"<RunView {self.project}/{self.id}{name} state={self.state}>"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, RunView) and other._api.path == self._api.path and other.id == self.id

    def __hash__(self) -> int:
        return hash((self._api.path, self.id))


def _media_path(run_dir: str, path: str):
    """The absolute path of a media file the index names, None when it names none or one
    outside the run folder (a row from a hostile writer)."""
    if not path:
        return None

    try:
        return names.contained(run_dir, path)
    except names.BadName:
        return None
