"""The writer side of the series layout: every numeric value of a history row goes into its key's
series, in chunks of up to ``CHUNK_POINTS`` points with statistics at every level
(``store/chunks.py``); what is not a number (text, rich values) stays in the row table.

Tables (schema 4, ``store/schema.py``):

- ``series_keys (rid, kid, key)``: a small integer per key of a run. Key 0 is ``_timestamp``:
  the time (us since the epoch) of every stored step. It is the run's row index: a step is
  stored when it has a ``_timestamp`` point, whichever keys it logged.
- ``series_chunks (rid, kid, idx, steps, vals)``: chunk ``idx`` (0, 1, ... in step order) of a
  key; the last one is open and rewritten by each transaction that adds to it.
- ``series_stats (rid, kid, level, idx, first_step, last_step, count, vmin, vmax, vfirst,
  vlast, t_first, t_last)``: level 0 describes chunk ``idx``; level L > 0 describes the unit
  of chunks ``[idx * FANOUT**L, (idx + 1) * FANOUT**L)``. A reader asking for N buckets of any
  step range reads O(N) of these rows (``store/sampling.py``), however long the run.

The common case costs little: a batch of new steps (each above the run's last stored step)
becomes, per key, a few list appends per value, and per transaction one chunk blob and
``LEVELS`` statistics rows per key written. A step at or below the last stored one (an amend,
a late writer, a replay) takes the slow path: the chunk holding it is read, changed and
rewritten with its ancestors' statistics. Either way the new value of a (key, step) replaces the
old one, and a step keeps its first timestamp, as the row upsert did.

The writer keeps each key's open chunk and open units in memory; it checks at every call that
no other writer changed the run meanwhile (``runs.history_rows``) and re-reads them if one did.
"""

from __future__ import annotations

import array
import bisect
from typing import Any, Optional

import numpy as np

from trackside._native import split_rows

from .chunks import (
    CHUNK_POINTS,
    FANOUT,
    I8,
    LEVELS,
    Stats,
    combine,
    decode_steps,
    decode_values,
    encode_chunks,
    encode_plain,
    encode_steps,
    encode_values,
    stats_of,
    value_array,
    value_kind,
)

TIME_KEY = "_timestamp"  # key 0 of every run: the time of each stored step
# a value logged under the clock's name is no series (it would overwrite the row index): it
# stays in the row table with the step's other values, and the row view shows it as logged
_KEEP = (TIME_KEY,)
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_SHIFT = FANOUT.bit_length() - 1  # log2(FANOUT)
FLOAT, INT = "f", "i"


_UPSERT_CHUNK = (
    "INSERT INTO series_chunks (rid, kid, idx, steps, vals) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (rid, kid, idx) DO UPDATE SET steps = excluded.steps, vals = excluded.vals"
)
_UPSERT_STATS = (
    "INSERT INTO series_stats (rid, kid, level, idx, first_step, last_step, count, vmin, vmax, vfirst, vlast,"
    " t_first, t_last) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (rid, kid, level, idx) DO UPDATE SET first_step = excluded.first_step,"
    " last_step = excluded.last_step, count = excluded.count, vmin = excluded.vmin, vmax = excluded.vmax,"
    " vfirst = excluded.vfirst, vlast = excluded.vlast, t_first = excluded.t_first, t_last = excluded.t_last"
)
STATS_COLUMNS = "first_step, last_step, count, vmin, vmax, vfirst, vlast, t_first, t_last"


_NAN = float("nan")


def stats_row(row) -> Stats:
    """A ``Stats`` from its columns (``STATS_COLUMNS``); SQLite keeps a NaN as NULL."""
    return Stats(*row[:3], *(_NAN if v is None else v for v in row[3:7]), row[7], row[8])


class _Key:
    """One key of one run as the writer holds it: the open chunk's points and the statistics of
    the open unit of every level (``units[L]``), made of its completed children (``base[L]``)
    and its open child (``units[L - 1]``)."""

    __slots__ = ("kid", "idx", "steps", "vals", "kind", "t_first", "t_last", "units", "base", "dirty", "last")

    def __init__(self, kid: int):
        self.kid = kid
        self.idx = 0
        self.steps: list[int] = []
        self.vals: list[Any] = []
        self.kind: Optional[str] = None
        self.t_first = self.t_last = 0
        self.units: list[Optional[Stats]] = [None] * LEVELS
        self.base: list[Optional[Stats]] = [None] * LEVELS
        self.dirty = False
        self.last: Optional[int] = None  # the key's last stored step


class _Run:
    __slots__ = ("keys", "kids", "rows", "next_kid")

    def __init__(self, rows: int):
        self.keys: dict[str, _Key] = {}
        self.kids: dict[str, int] = {}
        self.rows = rows  # runs.history_rows as this writer left it
        self.next_kid = 1


class SeriesWriter:
    """Keeps the series tables of a store; called by ``writer.Store`` inside its transactions."""

    def __init__(self, conn):
        self._conn = conn
        self._runs: dict[int, _Run] = {}

    def forget(self) -> None:
        """Drop everything held in memory (after a rollback): it is read again when needed."""
        self._runs.clear()

    # -- state -----------------------------------------------------------------------------------

    def _run(self, rid: int) -> _Run:
        conn = self._conn
        (rows,) = conn.execute("SELECT history_rows FROM runs WHERE rid = ?", (rid,)).fetchone()
        run = self._runs.get(rid)
        if run is None or run.rows != rows:  # new to us, or another writer changed it
            run = self._runs[rid] = _Run(rows)
            for kid, key in conn.execute("SELECT kid, key FROM series_keys WHERE rid = ?", (rid,)):
                run.kids[key] = kid
                run.next_kid = max(run.next_kid, kid + 1)
        return run

    def _key(self, rid: int, run: _Run, key: str) -> _Key:
        ks = run.keys.get(key)
        if ks is not None:
            return ks
        kid = run.kids.get(key)
        if kid is None:
            kid = 0 if key == TIME_KEY else run.next_kid
            if kid:
                run.next_kid += 1
            run.kids[key] = kid
            self._conn.execute("INSERT INTO series_keys (rid, kid, key) VALUES (?, ?, ?)", (rid, kid, key))
            ks = run.keys[key] = _Key(kid)
            return ks
        ks = run.keys[key] = self._load_key(rid, kid)
        return ks

    def _load_key(self, rid: int, kid: int) -> _Key:
        conn = self._conn
        ks = _Key(kid)
        row = conn.execute(
            f"SELECT idx, {STATS_COLUMNS} FROM series_stats WHERE rid = ? AND kid = ? AND level = 0"
            " ORDER BY idx DESC LIMIT 1",
            (rid, kid),
        ).fetchone()
        if row is None:
            return ks
        idx, last = row[0], stats_row(row[1:])
        ks.last = last.last_step
        if last.count < CHUNK_POINTS:  # the open chunk: its points back into memory
            ks.idx = idx
            steps_blob, vals_blob = conn.execute(
                "SELECT steps, vals FROM series_chunks WHERE rid = ? AND kid = ? AND idx = ?", (rid, kid, idx)
            ).fetchone()
            ks.steps = decode_steps(steps_blob).tolist()
            ks.vals = decode_values(vals_blob).tolist()
            ks.kind = INT if value_kind(vals_blob) == I8 else FLOAT
            ks.t_first, ks.t_last = last.t_first, last.t_last
        else:
            ks.idx = idx + 1
        for level in range(1, LEVELS):
            ks.base[level] = self._children(
                rid, kid, level, ks.idx >> (_SHIFT * level), ks.idx >> (_SHIFT * (level - 1))
            )
        return ks

    def _children(self, rid: int, kid: int, level: int, unit: int, upto: int) -> Optional[Stats]:
        """The statistics of unit ``unit`` of ``level`` from its children below index ``upto``."""
        agg = None
        for row in self._conn.execute(
            f"SELECT {STATS_COLUMNS} FROM series_stats WHERE rid = ? AND kid = ? AND level = ?"
            " AND idx >= ? AND idx < ? ORDER BY idx",
            (rid, kid, level - 1, unit << _SHIFT, upto),
        ):
            agg = combine(agg, stats_row(row))
        return agg

    # -- writing ---------------------------------------------------------------------------------

    def write(self, rid: int, rows) -> tuple[int, list, set]:
        """Put the numeric values of ``rows`` (objects with ``step``, ``time_us``, ``values``)
        into their series; returns ``(new_steps, rest, keys)``: how many of the rows' steps
        were not stored before, ``(row, values)`` for each row with values that are not numbers
        (booleans, text, rich values, integers beyond int64), for the row table, and every key
        the rows hold."""
        run = self._run(rid)
        clock = self._key(rid, run, TIME_KEY)
        as_columns = getattr(rows, "as_columns", None)  # rows kept as columns (the daemon's merge)
        if as_columns is not None and (clock.last is None or rows.steps[0] > clock.last) and TIME_KEY not in rows.keys:
            steps, times, floats, ints = as_columns()
            late, rest = [], []
        else:
            steps, times, floats, ints, late, rest = split_rows(rows, clock.last, _KEEP)
        new = len(steps)
        seen = set(floats) | set(ints)
        if steps:

            def when(step: int, _steps=steps, _times=times) -> int:  # the time of an appended step
                return _times[bisect.bisect_left(_steps, step)]

            self._append(rid, clock, steps, times, INT, when)
            for k, (s, v) in floats.items():
                if k in ints:
                    s, v = _merge_columns(s, v, *ints.pop(k))
                self._append(rid, self._key(rid, run, k), s, v, FLOAT, when)
            for k, (s, v) in ints.items():
                self._append(rid, self._key(rid, run, k), s, v, INT, when)
        if late:
            new += self._upsert(rid, clock, [(r.step, r.time_us, r.time_us) for r in late])
            points: dict[str, list] = {}
            for r in late:
                other = None
                seen.update(r.values)
                for k, v in r.values.items():
                    t = type(v)
                    if (t is float or (t is int and _INT_MIN <= v <= _INT_MAX)) and k not in _KEEP:
                        pts = points.get(k)
                        if pts is None:
                            pts = points[k] = []
                        pts.append((r.step, v, r.time_us))
                    else:
                        if other is None:
                            other = {}
                        other[k] = v
                if other:
                    rest.append((r, other))
            for k, pts in points.items():
                self._upsert(rid, self._key(rid, run, k), pts)
        for ks in run.keys.values():
            if ks.dirty:
                self._flush(rid, ks)
        run.rows += new
        for _r, other in rest:
            seen.update(other)
        return new, rest, seen

    def _append(self, rid: int, ks: _Key, steps, vals, kind: str, when) -> None:
        """Append points whose steps are above every stored step of the key: the open chunk
        takes what it has room for, whole chunks of the rest are encoded together, and what
        remains opens the next chunk."""
        if kind is INT and ks.kind is FLOAT:
            vals = array.array("d", vals)
            kind = FLOAT
        n, start = len(steps), 0
        if ks.steps:
            if ks.kind is INT and kind is FLOAT:  # a float after integers: the chunk holds floats
                ks.vals = [float(v) for v in ks.vals]
                ks.kind = FLOAT
            start = min(n, CHUNK_POINTS - len(ks.steps))
            ks.steps.extend(steps[:start])
            ks.vals.extend(vals[:start])
            if len(ks.steps) >= CHUNK_POINTS and start < n:
                self._flush(rid, ks, full=True)
                self._close(ks)
        whole = (n - start) // CHUNK_POINTS
        if whole and not ks.steps:
            end = start + whole * CHUNK_POINTS
            self._seal_many(rid, ks, steps[start:end], vals[start:end], kind, when)
            start = end
        if start < n:
            if not ks.steps:
                ks.kind = kind
                ks.t_first = when(steps[start])
            ks.steps.extend(steps[start:])
            ks.vals.extend(vals[start:])
        ks.last = steps[-1]
        ks.t_last = when(ks.last)
        ks.dirty = True

    def _seal_many(self, rid: int, ks: _Key, steps, vals, kind: str, when) -> None:
        """Write whole chunks (a multiple of CHUNK_POINTS points) after the key's last one, the
        open chunk being empty: encoded together, with the units they complete."""
        m = len(steps) // CHUNK_POINTS
        s = np.asarray(steps, dtype=np.int64).reshape(m, CHUNK_POINTS)
        v = np.asarray(vals, dtype=np.int64 if kind is INT else np.float64).reshape(m, CHUNK_POINTS)
        t_first = [when(x) for x in s[:, 0].tolist()]
        t_last = [when(x) for x in s[:, -1].tolist()]
        step_blobs, val_blobs, stats = encode_chunks(s, v, t_first, t_last)
        kid, idx = ks.kid, ks.idx
        self._conn.executemany(
            _UPSERT_CHUNK, [(rid, kid, idx + i, sb, vb) for i, (sb, vb) in enumerate(zip(step_blobs, val_blobs))]
        )
        rows = []
        for st in stats:
            rows.append((rid, kid, 0, ks.idx, *st))
            rows.extend((rid, kid, level, unit, *u) for level, unit, u in self._complete(ks, st))
        self._conn.executemany(_UPSERT_STATS, rows)
        ks.units = [None] * LEVELS
        ks.kind = None

    def _complete(self, ks: _Key, done: Stats) -> list:
        """Chunk ``ks.idx`` (``done``) is complete: move to the next; returns ``(level, unit,
        stats)`` of each coarser unit it completes (to write)."""
        out = []
        old, new = ks.idx, ks.idx + 1
        for level in range(1, LEVELS):
            shift = _SHIFT * level
            unit = combine(ks.base[level], done)
            if old >> shift == new >> shift:  # this level's open unit goes on
                ks.base[level] = unit
                break
            out.append((level, old >> shift, unit))
            ks.base[level] = None
            done = unit
        ks.idx = new
        return out

    def seal(self, rid: int) -> None:
        """The run ended: encode its open chunks (kept plain while they grew)."""
        run = self._runs.get(rid)
        if run is not None:
            for ks in run.keys.values():
                if ks.steps:
                    self._flush(rid, ks, full=True)

    def _flush(self, rid: int, ks: _Key, full: bool = False) -> None:
        """Write the open chunk (plain; encoded when ``full``) and the open unit of every level."""
        conn = self._conn
        if not ks.steps:  # whole chunks only: the open units hold completed children alone
            rows, unit = [], None
            for level in range(1, LEVELS):
                base = ks.base[level]
                unit = base if unit is None else combine(base, unit) if base is not None else unit
                ks.units[level] = unit
                if unit is not None:
                    rows.append((rid, ks.kid, level, ks.idx >> (_SHIFT * level), *unit))
            conn.executemany(_UPSERT_STATS, rows)
            ks.dirty = False
            return
        steps = ks.steps
        values = np.array(ks.vals, dtype=np.int64 if ks.kind is INT else np.float64)
        if full:
            blob = encode_values(*value_array(values, I8 if ks.kind is INT else 0))
        else:
            blob = encode_plain(values)
        conn.execute(_UPSERT_CHUNK, (rid, ks.kid, ks.idx, encode_steps(steps), blob))
        unit = ks.units[0] = stats_of(steps, values, ks.t_first, ks.t_last)
        rows = [(rid, ks.kid, 0, ks.idx, *unit)]
        for level in range(1, LEVELS):
            unit = ks.units[level] = combine(ks.base[level], unit)
            rows.append((rid, ks.kid, level, ks.idx >> (_SHIFT * level), *unit))
        conn.executemany(_UPSERT_STATS, rows)
        ks.dirty = False

    def _close(self, ks: _Key) -> None:
        """The open chunk is full (and written): the next point starts chunk ``idx + 1``."""
        old, new = ks.idx, ks.idx + 1
        done = ks.units[0]
        for level in range(1, LEVELS):
            shift = _SHIFT * level
            if old >> shift == new >> shift:  # this level's open unit goes on: one more child complete
                ks.base[level] = combine(ks.base[level], done)
                break
            done = ks.units[level]  # complete too
            ks.base[level] = None
        ks.idx = new
        ks.steps, ks.vals, ks.kind = [], [], None
        ks.units = [None] * LEVELS

    # -- the slow path: steps at or below the key's last one -----------------------------------

    def _upsert(self, rid: int, ks: _Key, points: list) -> int:
        """Put ``(step, value, time_us)`` points in any order (replacing the key's value at a
        stored step; the clock keeps a step's earliest time). Returns how many steps were new
        to the key. Points in the open chunk's range change it in memory; the others are
        grouped by the completed chunk that takes them, each read and rewritten once."""
        is_clock = ks.kid == 0
        new = 0
        stored = []
        for step, value, time_us in points:
            if ks.last is not None and step <= ks.last and ks.idx > 0 and (not ks.steps or step < ks.steps[0]):
                stored.append((step, value, time_us))
                continue
            # the open chunk takes it: at or after its first point, after the key's last, or the
            # key has no completed chunk
            if not ks.steps:
                ks.t_first = ks.t_last = time_us
                ks.kind = FLOAT if type(value) is float else INT
            elif type(value) is float and ks.kind is INT:
                ks.vals = [float(v) for v in ks.vals]
                ks.kind = FLOAT
            new += _put(ks.steps, ks.vals, step, value, is_clock)
            if ks.steps[0] == step:
                ks.t_first = time_us
            if ks.steps[-1] == step:
                ks.t_last = time_us
            if ks.last is None or step > ks.last:
                ks.last = step
            ks.dirty = True
            if len(ks.steps) > CHUNK_POINTS:  # a chunk holds what it must; the next starts fresh
                self._flush(rid, ks, full=True)
                self._close(ks)
        if stored:
            new += self._upsert_stored(rid, ks, stored, is_clock)
        return new

    def _upsert_stored(self, rid: int, ks: _Key, points: list, is_clock: bool) -> int:
        conn = self._conn
        kid = ks.kid
        lo = min(p[0] for p in points)
        hi = max(p[0] for p in points)
        where = "rid = ? AND kid = ? AND level = 0"
        first = f"SELECT idx FROM series_stats WHERE {where} AND last_step >= ? ORDER BY last_step LIMIT 1"
        chunks = conn.execute(
            f"SELECT idx, first_step, last_step FROM series_stats WHERE {where} AND idx < ?"
            f" AND idx >= coalesce(({first}), ?) AND idx <= coalesce(({first}), ?) ORDER BY idx",
            (rid, kid, ks.idx, rid, kid, lo, ks.idx, rid, kid, hi, ks.idx),
        ).fetchall()
        lasts = [c[2] for c in chunks]
        groups: dict[int, list] = {}
        for point in points:
            j = bisect.bisect_left(lasts, point[0])
            if j == len(chunks):  # after every completed chunk, before the open one
                idx = ks.idx - 1
            elif chunks[j][1] <= point[0] or chunks[j][0] == 0:  # inside it, or before the first chunk
                idx = chunks[j][0]
            else:  # in the gap before it: the chunk before takes the point
                idx = chunks[j][0] - 1
            groups.setdefault(idx, []).append(point)
        new = 0
        for idx, group in groups.items():
            blobs = conn.execute(
                "SELECT steps, vals FROM series_chunks WHERE rid = ? AND kid = ? AND idx = ?", (rid, kid, idx)
            ).fetchone()
            (t_first, t_last) = conn.execute(
                "SELECT t_first, t_last FROM series_stats WHERE rid = ? AND kid = ? AND level = 0 AND idx = ?",
                (rid, kid, idx),
            ).fetchone()
            steps = decode_steps(blobs[0]).tolist()
            vals = decode_values(blobs[1]).tolist()
            kind = I8 if value_kind(blobs[1]) == I8 else 0
            for step, value, time_us in group:
                if type(value) is float:
                    kind = 0
                new += _put(steps, vals, step, value, is_clock)
                if steps[0] == step:
                    t_first = time_us
                if steps[-1] == step:
                    t_last = time_us
            a = np.array(steps, dtype=np.int64)
            v, kind = value_array(vals, kind)
            conn.execute(_UPSERT_CHUNK, (rid, kid, idx, encode_steps(a), encode_values(v, kind)))
            conn.execute(_UPSERT_STATS, (rid, kid, 0, idx, *stats_of(a, v, t_first, t_last)))
        changed = set(groups)
        open_changed = False
        for level in range(1, LEVELS):  # the ancestors, from their children, level by level
            shift = _SHIFT * level
            changed = {idx >> _SHIFT for idx in changed}
            for unit in sorted(changed):
                if unit == ks.idx >> shift:  # the open unit: its completed part changed
                    ks.base[level] = self._children(rid, kid, level, unit, ks.idx >> (shift - _SHIFT))
                    open_changed = True
                else:
                    agg = self._children(rid, kid, level, unit, (unit + 1) << _SHIFT)
                    assert agg is not None
                    conn.execute(_UPSERT_STATS, (rid, kid, level, unit, *agg))
        if open_changed:
            if ks.steps:  # the flush writes the open units again from their parts
                ks.dirty = True
            else:
                for level in range(1, LEVELS):
                    unit = ks.idx >> (_SHIFT * level)
                    agg = self._children(rid, kid, level, unit, (unit + 1) << _SHIFT)
                    if agg is not None:
                        conn.execute(_UPSERT_STATS, (rid, kid, level, unit, *agg))
        return new


def _put(steps: list, vals: list, step: int, value, keep_first: bool) -> bool:
    """Insert or replace ``step``'s value in sorted ``steps``; returns whether it was new."""
    i = bisect.bisect_left(steps, step)
    if i < len(steps) and steps[i] == step:
        if keep_first:  # the clock: a step keeps its first timestamp
            vals[i] = min(vals[i], value)
        else:
            vals[i] = value
        return False
    steps.insert(i, step)
    vals.insert(i, value)
    return True


def _merge_columns(s1, v1, s2, v2) -> tuple[list, list]:
    """One column from a key's float and int points (both in step order): all floats."""
    pairs = sorted(zip([*s1, *s2], [float(v) for v in (*v1, *v2)]))
    return [p[0] for p in pairs], [p[1] for p in pairs]
