"""The reader side of the series layout (``store/series.py``): a key's points as numpy arrays,
sampled buckets of any step range, and history rows rebuilt from the series.

``buckets`` reads a number of statistics rows proportional to the buckets asked for, not to the
run's length: it takes the coarsest level that still has at least ``samples`` units in the
range, replaces the units that stick out of the range by finer ones (down to the points of at
most two chunks), and gathers the units into ``samples`` equal-width buckets of the x axis. A
bucket is made of whole units, so its count, min, max, first and last are exact: they are
those of the points whose steps lie between its ``first_step`` and its ``step`` (property-tested
against a brute-force computation). A range holding at most ``samples`` points returns the
points themselves (``exact``); one holding a few chunks is bucketed from its points.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from . import series as _series
from .chunks import FANOUT, LEVELS, Stats, decode_many
from .series import STATS_COLUMNS, TIME_KEY, stats_row

STEP_MIN = -(2**63)
STEP_MAX = 2**63 - 1
X_AXES = ("_step", "_timestamp", "_runtime")
# a range of up to max(_RAW_POINTS, _RAW_PER_SAMPLE * samples) points is bucketed from its points
_RAW_POINTS = 1 << 16
_RAW_PER_SAMPLE = 16
_SHIFT = FANOUT.bit_length() - 1


class Series(NamedTuple):
    """A key's points: ``steps`` (int64), ``values`` (float64, or int64 for an integer key) and
    ``timestamps`` (float64, seconds since the epoch), equal-length numpy arrays."""

    steps: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray


class Buckets(NamedTuple):
    """A key sampled into buckets, equal-length numpy arrays, one entry per non-empty bucket:
    ``x`` (the x of the bucket's last point), ``step`` and ``first_step`` (its last and first
    point's steps), ``first``, ``last``, ``min``, ``max`` (float64; min and max ignore NaN) and
    ``count`` (int64). ``exact``: the range held at most the samples asked for, and each entry
    is one point."""

    x: np.ndarray
    step: np.ndarray
    first_step: np.ndarray
    first: np.ndarray
    last: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray
    exact: bool


class Tail(NamedTuple):
    """What ``RunView.tail`` found: the new ``rows`` and the ``cursor`` to ask from next."""

    rows: list
    cursor: int


def to_wire(value) -> dict:
    """A ``Series`` or ``Buckets`` as msgpack-ready data (each array as its dtype and bytes),
    for the team server's read calls; ``from_wire`` rebuilds it."""
    out: dict[str, Any] = {}
    for name, a in zip(value._fields, value):
        out[name] = [a.dtype.str, a.tobytes()] if isinstance(a, np.ndarray) else a
    return out


def from_wire(cls, data: dict):
    return cls(
        *(
            np.frombuffer(v[1], np.dtype(v[0])).copy() if isinstance(v, list) else v
            for v in (data[f] for f in cls._fields)
        )
    )


def empty_buckets() -> Buckets:
    f, i = np.empty(0, np.float64), np.empty(0, np.int64)
    return Buckets(f, i, i, f, f, f, f, i, True)


class SeriesReader:
    """Reads the series tables on a reader's connection (``conn``)."""

    def __init__(self, conn):
        self.conn = conn

    def kids(self, rid: int) -> dict[str, int]:
        """key -> kid of every series of the run (``_timestamp`` included)."""
        return {
            key: kid
            for kid, key in self.conn.execute("SELECT kid, key FROM series_keys WHERE rid = ? ORDER BY kid", (rid,))
        }

    def kids_of(self, rids: Sequence[int], keys: Sequence[str]) -> dict[int, dict[str, int]]:
        """rid -> {key: kid} of ``keys`` in each of the runs ``rids``, in one statement per 500 runs."""
        out: dict[int, dict[str, int]] = {rid: {} for rid in rids}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(rids), 500):
            part = list(rids[i : i + 500])
            sql = (
                f"SELECT rid, key, kid FROM series_keys WHERE rid IN ({', '.join('?' * len(part))})"
                f" AND key IN ({', '.join('?' * len(keys))})"
            )
            for rid, key, kid in self.conn.execute(sql, (*part, *keys)):
                out[rid][key] = kid
        return out

    def _units(self, rid: int, kid: int, level: int, lo: int, hi: int) -> list[tuple[int, Stats]]:
        """``(idx, stats)`` of the units of ``level`` holding points with steps in [lo, hi]."""
        where = "rid = ? AND kid = ? AND level = ?"
        first = f"SELECT idx FROM series_stats WHERE {where} AND last_step >= ? ORDER BY last_step LIMIT 1"
        rows = self.conn.execute(
            f"SELECT idx, {STATS_COLUMNS} FROM series_stats WHERE {where}"
            f" AND idx >= ({first}) AND idx <= coalesce(({first}), {STEP_MAX}) AND first_step <= ? ORDER BY idx",
            (rid, kid, level, rid, kid, level, lo, rid, kid, level, hi, hi),
        ).fetchall()
        return [(row[0], stats_row(row[1:])) for row in rows]

    def points(self, rid: int, kid: int, lo: int = STEP_MIN, hi: int = STEP_MAX) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of the key's points with steps in [lo, hi]."""
        return self.points_many(rid, [kid], lo, hi)[kid]

    def points_many(
        self, rid: int, kids: Sequence[int], lo: int = STEP_MIN, hi: int = STEP_MAX
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """kid -> ``(steps, values)`` of each key's points with steps in [lo, hi], in one
        statement per 50 keys (a round trip per key is what PostgreSQL charges most for)."""
        # per key: the chunks from the one holding lo to the one holding hi (or its last)
        where = "rid = ? AND kid = ? AND level = 0"
        first = f"SELECT idx FROM series_stats WHERE {where} AND last_step >= ? ORDER BY last_step LIMIT 1"
        one = (
            "SELECT kid, idx, steps, vals FROM series_chunks WHERE rid = ? AND kid = ?"
            f" AND idx >= ({first}) AND idx <= coalesce(({first}), (SELECT max(idx) FROM series_stats WHERE {where}))"
        )
        found: dict[int, list] = {kid: [] for kid in kids}
        kids = list(found)
        for i in range(0, len(kids), 50):
            part = kids[i : i + 50]
            sql = " UNION ALL ".join(f"SELECT * FROM ({one}) AS k{j}" for j in range(len(part)))
            args = [a for kid in part for a in (rid, kid, rid, kid, lo, rid, kid, hi, rid, kid)]
            for kid, idx, steps, vals in self.conn.execute(sql, args):
                found[kid].append((idx, steps, vals))
        out = {}
        for kid, rows in found.items():
            if not rows:
                out[kid] = (np.empty(0, np.int64), np.empty(0, np.float64))
                continue
            rows.sort(key=lambda r: r[0])
            s, v = decode_many([(r[1], r[2]) for r in rows])
            if (lo > STEP_MIN and s[0] < lo) or (hi < STEP_MAX and s[-1] > hi):
                keep = (s >= lo) & (s <= hi)
                s, v = s[keep], v[keep]
            out[kid] = (s, v)
        return out

    def times_at(self, rid: int, steps: np.ndarray) -> np.ndarray:
        """The timestamps (us since the epoch) of ``steps`` (sorted, each a stored step)."""
        if not len(steps):
            return np.empty(0, np.int64)
        clock_steps, clock = self.points(rid, 0, int(steps[0]), int(steps[-1]))
        at = np.searchsorted(clock_steps, steps).clip(0, max(len(clock_steps) - 1, 0))
        return clock[at] if len(clock) else np.zeros(len(steps), np.int64)

    def series(self, rid: int, key: str, lo: int = STEP_MIN, hi: int = STEP_MAX) -> Optional[Series]:
        """The key's points in [lo, hi], or None when the run has no series of that key."""
        kid = self.kids(rid).get(key)
        if kid is None or key == TIME_KEY:
            return None
        steps, values = self.points(rid, kid, lo, hi)
        return Series(steps, values, self.times_at(rid, steps) / 1e6)

    # -- buckets ---------------------------------------------------------------------------------

    def buckets(
        self,
        rid: int,
        key: str,
        samples: int,
        lo: int = STEP_MIN,
        hi: int = STEP_MAX,
        x_axis: str = "_step",
        created_at: float = 0.0,
        kids: Optional[dict] = None,
    ) -> Optional[Buckets]:
        """``samples`` buckets (at most) of the key's points in [lo, hi] along ``x_axis``; None
        when the run has no series of that key."""
        if samples < 1:
            raise ValueError(f"samples must be at least 1, not {samples}")
        kids = self.kids(rid) if kids is None else kids
        kid = kids.get(key)
        if kid is None or key == TIME_KEY:
            return None
        if x_axis not in X_AXES:
            xkid = kids.get(x_axis)
            if xkid is None:
                return empty_buckets()
            return self._buckets_by_key(rid, kid, xkid, samples, lo, hi)
        units = self._cover(rid, kid, samples, lo, hi)
        if units is None:  # few points: bucket them one by one
            steps, values = self.points(rid, kid, lo, hi)
            return self._point_buckets(rid, steps, values, samples, x_axis, created_at)
        if not units:
            return empty_buckets()
        cols = list(zip(*units))
        first_step, step = np.array(cols[0], np.int64), np.array(cols[1], np.int64)
        count = np.array(cols[2], np.int64)
        vmin, vmax, vfirst, vlast = (np.array(c, np.float64) for c in cols[3:7])
        if x_axis == "_step":
            x_first, x_last = first_step.astype(np.float64), step.astype(np.float64)
        else:
            x_first = _seconds(np.array(cols[7], np.int64), x_axis, created_at)
            x_last = _seconds(np.array(cols[8], np.int64), x_axis, created_at)
        return _gather(x_first, x_last, (first_step, step, vfirst, vlast, vmin, vmax, count), samples)

    def _point_buckets(
        self, rid: int, steps: np.ndarray, values: np.ndarray, samples: int, x_axis: str, created_at: float
    ) -> Buckets:
        """Buckets of points read one by one (the exact points when they are few enough)."""
        if not len(steps):
            return empty_buckets()
        values = values.astype(np.float64)
        times = self.times_at(rid, steps) if x_axis != "_step" else None
        x = steps.astype(np.float64) if times is None else _seconds(times, x_axis, created_at)
        ones = np.ones(len(steps), np.int64)
        if len(steps) <= samples:
            return Buckets(x, steps, steps, values, values, values, values, ones, True)
        return _gather(x, x, (steps, steps, values, values, values, values, ones), samples)

    def buckets_many(
        self, runs: list[tuple[int, float, dict]], key: str, samples: int, x_axis: str = "_step"
    ) -> list[Optional[Buckets]]:
        """``buckets`` of one key over the whole of each run (``(rid, created_at, kids)``),
        in as few statements as the runs allow: their sizes in one, and the chunks of every run
        too short for its statistics to serve (fewer chunks than buckets) in one more."""
        out: list[Optional[Buckets]] = [None] * len(runs)
        pairs = [(i, rid, kids[key]) for i, (rid, _, kids) in enumerate(runs) if key in kids and key != TIME_KEY]
        if not pairs or x_axis not in X_AXES:
            return [self.buckets(rid, key, samples, x_axis=x_axis, created_at=c, kids=k) for rid, c, k in runs]
        where = " OR ".join(["(rid = ? AND kid = ?)"] * len(pairs))
        args = [x for _, rid, kid in pairs for x in (rid, kid)]
        totals: dict[tuple[int, int], int] = {}
        for rid, kid, count in self.conn.execute(
            f"SELECT rid, kid, sum(count) FROM series_stats WHERE level = {LEVELS - 1} AND ({where}) GROUP BY rid, kid",
            args,
        ):
            totals[(rid, kid)] = int(count)
        raw = max(_RAW_POINTS, _RAW_PER_SAMPLE * samples)
        short = [
            (i, rid, kid)
            for i, rid, kid in pairs
            if totals.get((rid, kid), 0) <= raw or totals[(rid, kid)] // _series.CHUNK_POINTS < samples
        ]
        if short:
            where = " OR ".join(["(rid = ? AND kid = ?)"] * len(short))
            chunks: dict[tuple[int, int], list] = {}
            # no ORDER BY: a sort would copy every blob; each run's chunks are put in order here
            for rid, kid, idx, steps, vals in self.conn.execute(
                f"SELECT rid, kid, idx, steps, vals FROM series_chunks WHERE {where}",
                [x for _, rid, kid in short for x in (rid, kid)],
            ):
                chunks.setdefault((rid, kid), []).append((idx, steps, vals))
            for i, rid, kid in short:
                found = chunks.get((rid, kid))
                if found:
                    found.sort(key=lambda c: c[0])
                    steps, values = decode_many([(c[1], c[2]) for c in found])
                    out[i] = self._point_buckets(rid, steps, values, samples, x_axis, runs[i][1])
                else:
                    out[i] = empty_buckets()
        done = {i for i, _, _ in short}
        for i, (rid, created, kids) in enumerate(runs):
            if i not in done:
                out[i] = self.buckets(rid, key, samples, x_axis=x_axis, created_at=created, kids=kids)
        return out

    def _cover(self, rid: int, kid: int, samples: int, lo: int, hi: int) -> Optional[list[Stats]]:
        """Units holding exactly the key's points in [lo, hi], in step order, from the coarsest
        level with at least ``samples`` of them; None when the range holds few enough points to
        bucket them one by one."""
        raw = max(_RAW_POINTS, _RAW_PER_SAMPLE * samples)
        level = LEVELS - 1
        units = self._units(rid, kid, level, lo, hi)
        while True:
            if not units:
                return []
            total = sum(u.count for _, u in units)
            if total <= raw:  # (at most: the edge units may stick out)
                return None
            if len(units) >= samples or level == 0:
                break
            if total // _series.CHUNK_POINTS < samples:  # fewer chunks than buckets: the points
                return None
            # down to the coarsest level that should have at least `samples` units here (by the
            # points' count, a full chunk holding CHUNK_POINTS), or the chunks
            level -= 1
            while level > 0 and total // (_series.CHUNK_POINTS << (_SHIFT * level)) < samples:
                level -= 1
            units = self._units(rid, kid, level, lo, hi)
            if level == 0:
                if not units:
                    return []
                break
        if len(units) < samples:  # the chunks are too few for the buckets asked
            return None
        return self._clip(rid, kid, level, units, lo, hi)

    def _clip(self, rid: int, kid: int, level: int, units: list, lo: int, hi: int) -> list[Stats]:
        out: list[Stats] = []
        for _idx, u in units:
            if u.first_step >= lo and u.last_step <= hi:
                out.append(u)
            elif level > 0:  # sticks out: its children inside the range instead
                sub_lo, sub_hi = max(lo, u.first_step), min(hi, u.last_step)
                out.extend(self._clip(rid, kid, level - 1, self._units(rid, kid, level - 1, sub_lo, sub_hi), lo, hi))
            else:  # a chunk that sticks out: its points inside the range
                part = self._part(rid, kid, max(lo, u.first_step), min(hi, u.last_step))
                if part is not None:
                    out.append(part)
        return out

    def _part(self, rid: int, kid: int, lo: int, hi: int) -> Optional[Stats]:
        steps, values = self.points(rid, kid, lo, hi)
        if not len(steps):
            return None
        values = values.astype(np.float64)
        times = self.times_at(rid, steps[[0, -1]])
        with np.errstate(invalid="ignore"):
            vmin, vmax = float(np.fmin.reduce(values)), float(np.fmax.reduce(values))
        return Stats(
            int(steps[0]),
            int(steps[-1]),
            len(steps),
            vmin,
            vmax,
            float(values[0]),
            float(values[-1]),
            int(times[0]),
            int(times[-1]),
        )

    def _buckets_by_key(self, rid: int, kid: int, xkid: int, samples: int, lo: int, hi: int) -> Buckets:
        """Buckets along another key's values (read point by point: its pairs are not pre-aggregated)."""
        steps, values = self.points(rid, kid, lo, hi)
        xsteps, xvalues = self.points(rid, xkid, lo, hi)
        both, i, j = np.intersect1d(steps, xsteps, assume_unique=True, return_indices=True)
        if not len(both):
            return empty_buckets()
        v = values[i].astype(np.float64)
        x = xvalues[j].astype(np.float64)
        if len(both) <= samples:
            order = np.argsort(x, kind="stable")
            x, both, v = x[order], both[order], v[order]
            return Buckets(x, both, both, v, v, v, v, np.ones(len(both), np.int64), True)
        ones = np.ones(len(both), np.int64)
        return _gather(x, x, (both, both, v, v, v, v, ones), samples)


def _seconds(times_us: np.ndarray, x_axis: str, created_at: float) -> np.ndarray:
    seconds = times_us / 1e6
    return seconds - created_at if x_axis == "_runtime" else seconds


def _gather(x_first: np.ndarray, x_last: np.ndarray, units: tuple, samples: int) -> Buckets:
    """Gather units (``first_step, step, first, last, min, max, count`` arrays, in step order)
    into at most ``samples`` equal-width buckets of x (each unit by its last x)."""
    first_step, step, vfirst, vlast, vmin, vmax, count = units
    n = len(x_last)
    finite = np.isfinite(x_last)
    everywhere = bool(finite.all())
    lo = float(np.min(x_first[finite])) if finite.any() else 0.0
    hi = float(np.max(x_last[finite])) if finite.any() else 0.0
    width = (hi - lo) / samples if hi > lo else 1.0
    if everywhere and not (x_last[1:] < x_last[:-1]).any():
        # x in order (steps always): each bucket's first unit by binary search, not a pass per unit
        cuts = np.searchsorted(x_last, lo + width * np.arange(1, samples), side="left")
        starts = np.unique(np.r_[0, cuts])
        starts = starts[starts < n]
    else:
        bucket = np.where(finite, np.floor((x_last - lo) / width), 0).astype(np.int64).clip(0, samples - 1)
        if (bucket[1:] < bucket[:-1]).any():  # x goes back somewhere: by bucket, then step order
            order = np.lexsort((np.arange(n), bucket))
            first_step, step, vfirst, vlast, vmin, vmax, count, x_last, bucket = (
                a[order] for a in (first_step, step, vfirst, vlast, vmin, vmax, count, x_last, bucket)
            )
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], n] - 1
    with np.errstate(invalid="ignore"):
        bmin = np.fmin.reduceat(vmin, starts)
        bmax = np.fmax.reduceat(vmax, starts)
    return Buckets(
        x_last[ends],
        step[ends],
        first_step[starts],
        vfirst[starts],
        vlast[ends],
        bmin,
        bmax,
        np.add.reduceat(count, starts),
        False,
    )


def sampled_rows(buckets: dict[str, Buckets], x_axis: str = "_step") -> list[dict]:
    """Rows of sampled keys (``history(samples=N)``): one per bucket's last step, holding each
    key's last value there and its bucket's ``"<key>:min"`` and ``"<key>:max"``."""
    rows: dict[int, dict] = {}
    for key, b in buckets.items():
        for x, step, last, lo, hi in zip(
            b.x.tolist(), b.step.tolist(), b.last.tolist(), b.min.tolist(), b.max.tolist()
        ):
            row = rows.get(step)
            if row is None:
                row = rows[step] = {"_step": step}
                if x_axis != "_step":
                    row[x_axis] = x
            row[key] = last
            row[f"{key}:min"] = lo
            row[f"{key}:max"] = hi
    return [rows[s] for s in sorted(rows)]


def build_rows(
    reader: SeriesReader,
    rid: int,
    keys: Optional[Sequence[str]],
    lo: int,
    hi: int,
    limit: Optional[int],
    rest_rows,
    decode,
    payloads=None,
) -> tuple[list[dict], Optional[int]]:
    """History rows of the steps in [lo, hi] (the first ``limit`` of them), rebuilt from the
    series and the row table's other values (``rest_rows(first, last)``: ``(step, time_us,
    data)``, decoded with ``decode``), and the last step looked at (None: no step in range).
    ``keys``: only those keys, and only rows holding one of them (``[]``: rows of payloads
    only). ``payloads(first, last)``: step -> opaque payloads, set as a row's ``_payloads``
    (such a row is kept whatever ``keys`` says)."""
    clock_steps, clock = reader.points(rid, 0, lo, hi)
    if limit is not None and len(clock_steps) > limit:
        clock_steps, clock = clock_steps[:limit], clock[:limit]
    if not len(clock_steps):
        return [], None
    first, last = int(clock_steps[0]), int(clock_steps[-1])
    times = (clock / 1e6).tolist()
    rows: list[dict[str, Any]] = [{"_step": s, "_timestamp": t} for s, t in zip(clock_steps.tolist(), times)]
    kids = reader.kids(rid)
    wanted = [k for k in kids if k != TIME_KEY] if keys is None else [k for k in keys if k in kids and k != TIME_KEY]
    hit = None if keys is None else np.zeros(len(rows), bool)
    points = reader.points_many(rid, [kids[key] for key in wanted], first, last)
    for key in wanted:
        steps, values = points[kids[key]]
        if not len(steps):
            continue
        at = np.searchsorted(clock_steps, steps)
        if hit is not None:
            hit[at] = True
        for i, v in zip(at.tolist(), values.tolist()):
            rows[i][key] = v
    picked = None if keys is None else set(keys)
    if picked is None or picked:
        for step, _time_us, data in rest_rows(first, last):
            i = int(np.searchsorted(clock_steps, step))
            if i >= len(rows) or rows[i]["_step"] != step:
                continue
            values = decode(data)
            if picked is not None:
                values = {k: v for k, v in values.items() if k in picked}
                if not values:
                    continue
                assert hit is not None
                hit[i] = True
            rows[i].update(values)
    if payloads is not None:
        for step, blobs in payloads(first, last).items():
            i = int(np.searchsorted(clock_steps, step))
            if i < len(rows) and rows[i]["_step"] == step:
                rows[i]["_payloads"] = blobs
                if hit is not None:
                    hit[i] = True
    if hit is not None:
        rows = [row for row, h in zip(rows, hit.tolist()) if h]
    return rows, last
