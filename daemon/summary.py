"""The run summary: one value (or a few statistics) per key, kept from the final history rows.

Shape of :meth:`Summary.snapshot`, matching what the seeds' users read back:

* a key with no ``define_metric`` summary (the default, or ``summary="copy"``) holds its last
  value: ``summary["loss"] == 0.12``;
* a key defined with ``summary="min,max"`` (any kinds) holds a dict with one entry per kind, even
  for a single kind: ``summary["loss"] == {"min": 0.1, "max": 2.3}``; ``"last"`` is one of the
  kinds in that case (``{"last": ...}``); ``"best"`` is the min or max by the metric's ``goal``;
* ``summary="none"`` leaves the key out;
* an explicit assignment (``run.summary[k] = v``, ``update({...})``, ``del``) replaces the key's
  computed value for the rest of the run: history keeps updating the statistics underneath, but
  the snapshot shows the assignment (or, after a delete, no key). The seeds put it this way: the
  summary follows the last history row unless you set it yourself.

"Last" is the value at the highest step, not the latest arrival: an amend row for an older step
does not replace the last value of a key that a newer step already set. "First" is likewise the
value at the lowest step. Min, max and mean take numbers only (bools and strings are skipped, as
they have no order or average that users mean); a NaN propagates into them as in IEEE arithmetic
(a run whose loss went NaN shows it). Mean is over every value received, so a value that an amend
replaced in the store still counts in it. Statistics other than "last" start when the key's
definition asks for them: call ``define_metric`` before logging, as with the seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Iterable, Optional

from .columns import ColumnRows
from .merger import Metrics, Row

__all__ = ["Summary"]

_NO_STEP = float("-inf")


class _Stats:
    """Statistics of one key whose definition asks for more than the last value."""

    __slots__ = ("first", "first_step", "min", "max", "total", "count")

    def __init__(self) -> None:
        self.first_step = None
        self.first = None
        self.min = None
        self.max = None
        self.total = 0
        self.count = 0

    def add(self, step: int, v) -> None:
        if self.first_step is None or step <= self.first_step:
            # equal step: an amend replaced the stored value, so it is the value at that step
            self.first_step = step
            self.first = v
        t = type(v)
        if t is not float and t is not int:
            return
        if self.count == 0:
            self.min = self.max = v
        else:
            # v != v: a NaN enters min/max, and nothing compares below it afterwards
            if v < self.min or v != v:
                self.min = v
            if v > self.max or v != v:
                self.max = v
        self.total += v
        self.count += 1

    def value(self, kind: str, goal: Optional[str]):
        """The statistic, or ``_MISSING`` when no value of the right type arrived."""
        if kind == "first":
            return self.first if self.first_step is not None else _MISSING
        if self.count == 0:
            return _MISSING
        if kind == "min" or (kind == "best" and goal == "minimize"):
            return self.min
        if kind == "max" or kind == "best":
            return self.max
        return self.total / self.count  # mean


_MISSING = object()


class Summary:
    """Keeps the summary of one run from its final rows and the user's explicit assignments.

    Not thread-safe (one per run stream, like the merger). ``metrics`` is the run's registry,
    shared with the :class:`~trackside.daemon.merger.Merger`, so later ``define_metric`` calls
    apply here too.
    """

    def __init__(self, metrics: Optional[Metrics] = None) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self._last: dict = {}
        self._last_step: dict = {}
        self._max_step = _NO_STEP
        self._stats: dict[str, _Stats] = {}
        self._assigned: dict = {}
        self._deleted: set = set()
        self._base: dict = {}  # the stored summary a resumed run goes on from (see restore)

    def restore(self, stored: Mapping) -> None:
        """Go on from a summary stored before (a resumed run, a daemon restarted after a crash):
        its keys stay unless rows or assignments from now on change them; a nested min, max or
        first combines with the stored one (a mean restarts from the rows seen from now on)."""
        self._base = dict(stored)

    def update(self, rows_or_mapping) -> None:
        """Fold final rows into the summary, or, given a mapping, assign its items (as
        ``run.summary.update({...})``: each key then keeps the assigned value)."""
        if isinstance(rows_or_mapping, Mapping):
            for k, v in rows_or_mapping.items():
                self.set(k, v)
        elif isinstance(rows_or_mapping, Row):
            self._add_rows((rows_or_mapping,))
        elif isinstance(rows_or_mapping, ColumnRows):
            self._add_columns(rows_or_mapping)
        else:
            self._add_rows(rows_or_mapping)

    def _add_rows(self, rows: Iterable[Row]) -> None:
        if not isinstance(rows, (list, tuple)):
            rows = list(rows)
        if not rows:
            return
        steps = [row.step for row in rows]
        if steps[0] >= self._max_step and steps == sorted(steps):
            # rows nearly always come in step order: no per-key comparison needed
            self._fold_in_order(rows)
            self._max_step = steps[-1]
        else:
            last = self._last
            last_step = self._last_step
            for row in rows:
                step = row.step
                values = row.values
                if step >= self._max_step:
                    self._max_step = step
                    last.update(values)
                    for k in values:
                        last_step[k] = step
                else:
                    for k, v in values.items():
                        if step >= last_step.get(k, _NO_STEP):
                            last[k] = v
                            last_step[k] = step
        if self.metrics.has_summary_rules:
            for row in rows:
                self._add_stats(row.step, row.values)

    def _add_columns(self, rows: ColumnRows) -> None:
        """Rows as columns: each key's last value is its column's last, and a key with a summary
        rule adds its column's values to its statistics. Row by row when the rows do not all
        come after the steps folded in, or a key with a rule has ints and floats in them."""
        rules = self.metrics.has_summary_rules
        if not rows or rows.steps[0] < self._max_step or (rules and not rows.floats.keys().isdisjoint(rows.ints)):
            self._add_rows(list(rows))
            return
        last = self._last
        last_step = self._last_step
        for k in rows.keys:  # new keys enter in the order the rows first have them
            if k not in last:
                last[k] = None
        fresh: dict = {}  # key -> its last step in these rows (ints and floats of one key: the later)
        for kind in (rows.floats, rows.ints):
            for k, (steps, col) in kind.items():
                if steps[-1] >= fresh.get(k, _NO_STEP):
                    fresh[k] = steps[-1]
                    last[k] = col[-1]
        last_step.update(fresh)
        self._max_step = rows.steps[-1]
        if rules:
            for kind in (rows.floats, rows.ints):
                for k, (steps, col) in kind.items():
                    s = self._stats_of(k)
                    if s is not None:
                        for step, v in zip(steps, col):
                            s.add(step, v)

    def _fold_in_order(self, rows: list) -> None:
        """Fold rows in step order into the last values: each key takes its value and step from
        the last row that has it. Scanning backwards, a row whose keys were all seen (nearly
        every row: a run logs the same keys step after step) costs one set comparison."""
        seen: set = set()
        values_of: dict = {}
        steps_of: dict = {}
        for row in reversed(rows):
            values = row.values
            if seen.issuperset(values):
                continue
            step = row.step
            for k, v in values.items():
                if k not in seen:
                    seen.add(k)
                    values_of[k] = v
                    steps_of[k] = step
        last = self._last
        new = seen.difference(last)
        if new:
            # keys new to the summary enter in the order they were logged (the snapshot's order)
            for row in rows:
                for k in row.values:
                    if k in new:
                        last[k] = None
                        new.discard(k)
                if not new:
                    break
        last.update(values_of)
        self._last_step.update(steps_of)

    def _add_stats(self, step: int, values: dict) -> None:
        for k, v in values.items():
            s = self._stats_of(k)
            if s is not None:
                s.add(step, v)

    def _stats_of(self, k: str) -> Optional[_Stats]:
        """The statistics of ``k``, None when its definition asks for its last value only."""
        d = self.metrics.lookup(k)
        if d is None or not d.summary or d.summary == ("last",):
            return None
        s = self._stats.get(k)
        if s is None:
            s = self._stats[k] = _Stats()
        return s

    def set(self, key: str, value) -> None:
        """Assign ``key``; it keeps this value whatever history logs later."""
        self._assigned[key] = value
        self._deleted.discard(key)

    def delete(self, key: str) -> None:
        """Remove ``key`` from the summary for good (until assigned again). Deleting a key that
        is not there is not an error."""
        self._assigned.pop(key, None)
        self._deleted.add(key)

    def update_explicit(self, assign: Mapping = (), delete: Iterable[str] = ()) -> None:
        """Apply one ``run.summary`` change from the SDK: assignments, then deletions."""
        for k, v in dict(assign).items():
            self.set(k, v)
        for k in delete:
            self.delete(k)

    def snapshot(self) -> dict:
        """The current summary as a new dict (see the module docstring for its shape)."""
        out = {}
        lookup = self.metrics.lookup
        stats = self._stats
        for k, v in self._last.items():
            d = lookup(k)
            if d is None or d.summary is None:
                out[k] = v
                continue
            if not d.summary:  # "none"
                continue
            s = stats.get(k)
            nested = {}
            for kind in d.summary:
                if kind == "last":
                    nested["last"] = v
                elif s is not None:
                    x = s.value(kind, d.goal)
                    if x is not _MISSING:
                        nested[kind] = x
            if nested:
                out[k] = nested
        if self._base:
            out = _on_top_of(self._base, out)
        out.update(self._assigned)
        for k in self._deleted:
            out.pop(k, None)
        return out


def _on_top_of(base: Mapping, new: dict) -> dict:
    """``new`` over ``base``: a nested summary's min, max and first combine with the base's."""
    out = dict(base)
    for k, v in new.items():
        old = base.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            merged = {**old, **v}
            for kind, pick in (("min", min), ("max", max)):
                if kind in old and kind in v:
                    try:
                        merged[kind] = pick(old[kind], v[kind])
                    except TypeError:
                        pass
            if "first" in old:
                merged["first"] = old["first"]
            out[k] = merged
        else:
            out[k] = v
    return out
