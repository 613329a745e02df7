"""The merge stage's column path: plain batches as blocks of columns, final rows as columns.

Training code logs the same numeric keys step after step, and writers of one run log disjoint
keys (``rank1/loss``) or reduce them. For such a batch the codec gives blocks of columns
(``_native.decode_columns``); while no row needs merging key by key, the merger keeps them
as they are (``Merger.add_blocks``) and lets them go as :class:`ColumnRows`, which the
summary and the store take whole: no dict, float object or row per entry on the way. Anything
else turns the blocks into rows first (``Merger._spill_blocks``), and the rules of the row path
apply as they always did.
"""

from __future__ import annotations

import array
from bisect import bisect_left
from typing import Optional

import numpy as np


class Block:
    """A run of one writer's entries with the same keys, as columns: ``steps`` (rising) and
    ``times`` as ``array("q")``, ``keys``, one array per key in ``cols``, ``commit`` (whether
    the last entry committed its step), ``touched`` (when it arrived, for the merge window)
    and ``arrival`` (its place among all writers' blocks: they become rows in that order)."""

    __slots__ = ("steps", "times", "keys", "cols", "commit", "touched", "arrival", "keyset")

    def __init__(self, steps, times, keys: tuple, cols: list, commit: bool, touched: Optional[float], arrival: int):
        self.steps = steps
        self.times = times
        self.keys = keys
        self.cols = cols
        self.commit = commit
        self.touched = touched
        self.arrival = arrival
        self.keyset = frozenset(keys)

    def holds(self, step: int) -> bool:
        """Whether one of the entries is at ``step``."""
        i = bisect_left(self.steps, step)
        return i < len(self.steps) and self.steps[i] == step

    def split(self, below) -> tuple[Optional["Block"], Optional["Block"]]:
        """The entries with steps below ``below`` and the others (None: none)."""
        steps = self.steps
        i = bisect_left(steps, below)
        if i == 0:
            return None, self
        if i == len(steps):
            return self, None
        cols = self.cols
        head = Block(steps[:i], self.times[:i], self.keys, [c[:i] for c in cols], True, self.touched, self.arrival)
        tail = Block(
            steps[i:], self.times[i:], self.keys, [c[i:] for c in cols], self.commit, self.touched, self.arrival
        )
        return head, tail

    def entries(self) -> list:
        """The block as the row path's entries ``(step, commit, time_us, values, None)``."""
        keys = self.keys
        last = len(self.steps) - 1
        return [
            (step, True if i < last else self.commit, t, dict(zip(keys, values)), None)
            for i, (step, t, values) in enumerate(zip(self.steps, self.times, zip(*self.cols)))
        ]


_NO_PAYLOADS: list = []


class ColumnRows:
    """Final rows held as columns: what ``Merger.finalize`` returns for blocks.

    ``steps``/``times``: each row's step (rising) and time (the latest of its entries), as
    ``array("q")``; ``floats``/``ints``: key -> ``(steps, values)`` of its float and int
    values; ``keys``: every key, in the order the rows first have them. A sequence of rows as
    well (``len``, iteration, ``[i]``: ``row_type(step, time_us, values, payloads, amend)``),
    made on demand for readers that want rows: the summary and the store take the columns as
    they are (``as_columns``)."""

    __slots__ = ("steps", "times", "floats", "ints", "keys", "row_type")

    def __init__(self, blocks: list, row_type):
        self.row_type = row_type
        floats: dict = {}
        ints: dict = {}
        pieces: dict = {}
        for b in blocks:
            for k, col in zip(b.keys, b.cols):
                got = pieces.get(k)
                if got is None:
                    pieces[k] = [(b.steps, col)]
                else:
                    got.append((b.steps, col))
        for k, parts in pieces.items():
            if len(parts) > 1:
                parts.sort(key=lambda p: p[0][0])  # blocks of one key never overlap in steps
            for steps, col in _by_kind(parts):
                (floats if col.typecode == "d" else ints)[k] = (steps, col)
        self.floats = floats
        self.ints = ints
        # by the first step of each key's first piece; the sort is stable: arrival order among ties
        self.keys = sorted(pieces, key=lambda k: pieces[k][0][0][0])
        if len(blocks) == 1:
            self.steps, self.times = blocks[0].steps, blocks[0].times
        else:
            self.steps, self.times = _union(blocks)

    def as_columns(self) -> tuple:
        """``(steps, times, floats, ints)``, the dicts new (a caller may change them)."""
        return self.steps, self.times, dict(self.floats), dict(self.ints)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int):
        step = self.steps[i]
        values = {}
        for k in self.keys:
            for steps, col in _columns_of(self, k):
                j = bisect_left(steps, step)
                if j < len(steps) and steps[j] == step:
                    values[k] = col[j]
        return self.row_type(step, self.times[i], values, _NO_PAYLOADS, False)

    def __iter__(self):
        rows: dict = {step: {} for step in self.steps}
        for k in self.keys:
            for steps, col in _columns_of(self, k):
                for step, v in zip(steps, col):
                    rows[step][k] = v
        for step, t in zip(self.steps, self.times):
            yield self.row_type(step, t, rows[step], _NO_PAYLOADS, False)

    def __repr__(self) -> str:
        return f"ColumnRows({len(self)} rows, {len(self.keys)} keys)"


def _columns_of(rows: ColumnRows, k: str):
    for kind in (rows.floats, rows.ints):
        col = kind.get(k)
        if col is not None:
            yield col


def _by_kind(parts: list) -> list:
    """The pieces of one key joined into one column per kind (floats, ints)."""
    if len(parts) == 1:
        return parts
    out = []
    for code in ("d", "q"):
        mine = [p for p in parts if p[1].typecode == code]
        if not mine:
            continue
        steps, col = array.array("q"), array.array(code)
        for s, c in mine:
            steps.extend(s)
            col.extend(c)
        out.append((steps, col))
    return out


def _union(blocks: list) -> tuple:
    """The rising steps of all blocks, each once, with the latest time of its entries."""
    s = np.concatenate([np.frombuffer(b.steps, dtype=np.int64) for b in blocks])
    t = np.concatenate([np.frombuffer(b.times, dtype=np.int64) for b in blocks])
    order = np.lexsort((t, s))
    s, t = s[order], t[order]
    last = np.empty(len(s), dtype=bool)
    last[:-1] = s[1:] != s[:-1]
    last[-1] = True
    steps, times = array.array("q"), array.array("q")
    steps.frombytes(s[last].tobytes())
    times.frombytes(t[last].tobytes())
    return steps, times
