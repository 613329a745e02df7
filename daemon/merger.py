"""The merge stage: log entries from every writer of one run in, final history rows out.

Pure logic (no IO, no threads, no clock of its own): the run stream feeds it the entries it has
made durable in the WAL, calls :meth:`Merger.finalize` after each batch and hands the rows to the
summary and the uploader. Because the WAL holds the raw entries, the merger may keep rows pending
in memory for as long as it likes; a crash loses nothing, the entries are replayed.

Entries arrive already resolved by the SDK with the single-writer rules of the seeds: ``step`` is
an int and ``commit`` says whether the writer closed that step. What is left to decide here is
how several writers (processes, ranks) share a step, when a step is final, and what a late entry
means. The rules, in one place:

* Within one step, a key logged twice by the same writer keeps the later value; the same key
  from different writers follows the metric's reduce rule (``define_metric(reduce=)``).
* A row for step ``s`` is final when every live writer has moved past ``s`` (its highest step is
  above ``s``, or equals ``s`` and is committed), when no live writer has logged anything, or
  when the row was last touched more than ``merge_window`` seconds ago.
* An entry for a step that is not pending and not above the highest step already emitted is
  late: it is amended into the stored row, or dropped and counted (``late_steps=``).
* A late entry still follows the reduce rule: for the last ``KEEP_STEPS`` emitted steps the
  merger keeps each writer's values of the keys whose rule is not ``"last"``, and an amend row
  carries the value reduced over every writer's, old and new (a rank on another host, whose
  first upload reached the server after the other ranks' rows were final, is summed in, not
  written over them).

Plain batches (numbers only, steps rising) may be kept as columns instead of rows (``add_blocks``,
``columns.py``) while that changes nothing of the above; final rows then come as ``ColumnRows``.
"""

from __future__ import annotations

import fnmatch
import re
from heapq import heappop, heappush
from typing import Callable, Iterable, NamedTuple, Optional
from trackside import _native as codec
from trackside.contracts.constants import LATE_STEPS, REDUCE_RULES, SUMMARY_KINDS

from .columns import Block, ColumnRows

__all__ = ["Merger", "MetricDef", "Metrics", "Row", "REDUCE_RULES", "SUMMARY_KINDS", "LATE_STEPS"]

_GOALS = ("minimize", "maximize")
_GLOB_CHARS = frozenset("*?[")
# emitted steps whose per-writer values of reduced keys are kept for late entries: a host whose
# uploads lag the others' by seconds is thousands of steps behind at most; ~0.25 KB per writer
# and step (two reduced keys), 8 MB for 4 writers
KEEP_STEPS = 8192

# (step: int, commit: bool, time_us: int, values: dict[str, int|float|bool|str|None],
#  payload: bytes | None); rich values arrive already encoded in the payload
Entry = tuple


class Row(NamedTuple):
    """One final history row.

    ``amend=True``: the step may already be stored (it was emitted before, or declared final);
    the store merges ``values`` into the stored row, creating it when there is none, and appends
    ``payloads``. ``time_us`` is the latest time of the entries merged into the row. Rows are
    read-only: ``values`` may be an entry's own dict, and rows without payloads may share one
    empty list.
    """

    step: int
    time_us: int
    values: dict
    payloads: list
    amend: bool = False


# ---------------------------------------------------------------------------------------------
# metric definitions


class MetricDef(NamedTuple):
    """One ``define_metric`` call, validated. ``summary`` is ``None`` when the call did not ask
    for a summary or asked for ``"copy"`` (the default: the plain last value), ``()`` for
    ``"none"``, else the kinds in the order given."""

    name: str
    step_metric: Optional[str] = None
    summary: Optional[tuple] = None
    reduce: str = "last"
    hidden: bool = False
    goal: Optional[str] = None
    step_sync: Optional[bool] = None


class Metrics:
    """The run's ``define_metric`` registry, shared by the merger (reduce rules) and the summary.

    Names may be ``fnmatch`` globs (``"val/*"``, ``"*"``). For a key, an exact definition beats
    every glob; among matching globs the longest pattern wins (it is the more specific one), and
    between patterns of equal length the later definition. Defining a name again replaces the
    earlier definition whole. :meth:`lookup` is a dict hit after the first call for a key.
    """

    def __init__(self) -> None:
        self._exact: dict[str, MetricDef] = {}
        self._globs: dict[str, tuple] = {}  # pattern -> (compiled, MetricDef, order)
        self._order = 0
        self._cache: dict[str, Optional[MetricDef]] = {}
        self.rules: dict[str, str] = {}  # key -> its reduce rule, for the keys looked up since the last define
        self.has_summary_rules = False  # lets the summary skip per-key lookups when False
        self.has_reduce_rules = False  # lets the merger skip keeping per-writer values when False

    def define(
        self,
        name: str,
        step_metric: Optional[str] = None,
        summary=None,
        reduce: Optional[str] = None,
        hidden: bool = False,
        goal: Optional[str] = None,
        step_sync: Optional[bool] = None,
    ) -> MetricDef:
        """Validate and record a definition; returns it. Raises ``ValueError`` (naming the bad
        value and the accepted ones) without changing the registry."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"define_metric: name must be a non-empty string, got {name!r}")
        if reduce is None:
            reduce = "last"
        if reduce not in REDUCE_RULES:
            raise ValueError(f"define_metric({name!r}): reduce={reduce!r} is not one of {', '.join(REDUCE_RULES)}")
        if goal is not None and goal not in _GOALS:
            raise ValueError(f"define_metric({name!r}): goal={goal!r} is not one of {', '.join(_GOALS)}")
        kinds = _parse_summary(name, summary, goal)
        d = MetricDef(name, step_metric, kinds, reduce, bool(hidden), goal, step_sync)
        self._order += 1
        if _GLOB_CHARS.isdisjoint(name):
            self._exact[name] = d
        else:
            self._globs.pop(name, None)  # a redefinition counts as the later one
            self._globs[name] = (re.compile(fnmatch.translate(name)).match, d, self._order)
        self._cache.clear()
        self.rules.clear()
        self.has_summary_rules = any(x.summary is not None for x in self.definitions())
        self.has_reduce_rules = any(x.reduce != "last" for x in self.definitions())
        return d

    def lookup(self, key: str) -> Optional[MetricDef]:
        """The definition that applies to ``key``, or ``None``."""
        try:
            return self._cache[key]
        except KeyError:
            pass
        d = self._exact.get(key)
        if d is None:
            best = None
            for pattern, (match, gd, order) in self._globs.items():
                if match(key) is not None:
                    rank = (len(pattern), order)
                    if best is None or rank > best[0]:
                        best = (rank, gd)
            d = best[1] if best is not None else None
        self._cache[key] = d
        return d

    def reduce_of(self, key: str) -> str:
        """The cross-writer reduce rule of ``key`` (``"last"`` unless defined). Hot loops read
        ``rules.get(key) or reduce_of(key)``: a dict hit for a key seen before."""
        d = self.lookup(key)
        rule = self.rules[key] = "last" if d is None else d.reduce
        return rule

    def definitions(self) -> list[MetricDef]:
        """Every current definition, exact names first, each in definition order."""
        return list(self._exact.values()) + [gd for (_, gd, _) in self._globs.values()]


def _parse_summary(name: str, summary, goal: Optional[str]) -> Optional[tuple]:
    if summary is None:
        return None
    if isinstance(summary, str):
        parts = summary.split(",")
    else:
        parts = list(summary)
    kinds = []
    for p in parts:
        k = p.strip().lower() if isinstance(p, str) else p
        if k not in SUMMARY_KINDS:
            raise ValueError(f"define_metric({name!r}): summary kind {p!r} is not one of {', '.join(SUMMARY_KINDS)}")
        if k not in kinds:
            kinds.append(k)
    for alone in ("none", "copy"):
        if alone in kinds and len(kinds) > 1:
            raise ValueError(f"define_metric({name!r}): summary={summary!r} mixes {alone!r} with other kinds")
    if kinds == ["none"]:
        return ()
    if kinds == ["copy"]:
        return None  # "copy" (the SDK accepts it): the plain last value, as without a summary
    if "best" in kinds and goal is None:
        raise ValueError(f"define_metric({name!r}): summary 'best' needs goal='minimize' or goal='maximize'")
    if not kinds:
        raise ValueError(f"define_metric({name!r}): summary={summary!r} names no kind; use 'none' for no summary")
    return tuple(kinds)


# ---------------------------------------------------------------------------------------------
# the merger


def _is_number(v) -> bool:
    # bool is an int subclass, but averaging flags is not what a user means by "mean"
    t = type(v)
    return t is float or t is int


def _mean(vs):
    return sum(vs) / len(vs)


_REDUCERS = {"mean": _mean, "sum": sum, "min": min, "max": max}


_NO_STEP = float("-inf")
_NO_PAYLOADS: list = []  # rows without payloads share it: one object less per row for the GC to track


class Merger:
    """Merges the entries of all writers of ONE run into final rows (:class:`Row`).

    Guarantees:

    * no value is lost without a count: each (step, key) a writer logged ends up in exactly one
      emitted row with that writer's latest value for it (the seeds' same-step rule), or is
      counted in ``stats``: ``collisions`` when another writer's value for the same key and step
      replaced it or was reduced with it, ``late_dropped`` under ``late_steps="drop"``;
    * :meth:`add` never emits; :meth:`finalize` returns each final row once, in step order;
    * a row is emitted as ``amend=False`` at most once per step; later values for that step come
      out as ``amend=True`` rows.

    ``late_steps``: ``"amend"`` keeps late values as amend rows; ``"drop"`` counts them in
    ``stats["late_dropped"]`` and reports the first drop once (``warnings`` and ``on_warning``);
    ``"error"`` behaves like ``"amend"`` here, because the SDK raises in the caller before such an
    entry is sent: what still reaches the daemon is late only across writers (another writer's
    progress closed the step), which the caller could not have known about.

    Writers: ``add`` joins an unknown writer. A joined writer that has not logged yet holds
    nothing back: otherwise a rank that never logs would stall every row for ``merge_window``.
    The price: steps closed before its first entry are late for it (amended, by default).

    ``now`` is a float in seconds from one monotonic clock (``time.monotonic()``). ``add`` without
    ``now`` stamps rows with the latest ``now`` seen; before any, at the next ``finalize(now=)``.
    ``finalize`` without ``now`` does not apply ``merge_window``.
    """

    def __init__(
        self,
        late_steps: str = "amend",
        merge_window: Optional[float] = 10.0,
        metrics: Optional[Metrics] = None,
        on_warning: Optional[Callable[[str], None]] = None,
    ) -> None:
        if late_steps not in LATE_STEPS:
            raise ValueError(f"late_steps={late_steps!r} is not one of {', '.join(LATE_STEPS)}")
        if merge_window is not None and not merge_window > 0:
            raise ValueError(f"merge_window={merge_window!r} must be a positive number of seconds, or None")
        self.late_steps = late_steps
        self.merge_window = merge_window
        self.metrics = metrics if metrics is not None else Metrics()
        self.on_warning = on_warning
        self.warnings: list[str] = []
        self.stats = {
            "entries": 0,
            "rows_emitted": 0,  # amend rows included
            "amends": 0,
            "collisions": 0,
            "reduce_fallbacks": 0,  # collisions of non-numeric values under mean/sum/min/max
            "late_dropped": 0,
            "late_reduced": 0,  # amend rows whose reduced keys were reduced with the kept values
            "pending": 0,
        }
        # step -> {writer: {key: value}} of the keys with a reduce rule, for the emitted steps
        # (the last KEEP_STEPS of them): late entries are reduced with them
        self._kept: dict[int, dict] = {}
        # live writer -> [highest step, committed] or None before its first entry
        self._cursors: dict[int, Optional[list]] = {}
        self._pending: dict[int, codec.PendingRow] = {}
        # steps of pending rows; may hold steps already emitted by the window (skipped on pop)
        self._heap: list[int] = []
        self._emitted_max = _NO_STEP
        self._now: Optional[float] = None
        self._next_window_check = float("inf")
        self._joined: dict[int, float] = {}  # writer -> join time, until its first entry
        # Rows of a writer logging alone, committed step after step, are final once added: they
        # skip _Pending and the heap (see _add_alone). Not emitted yet, so they count as pending.
        # Never both these and _pending: anything that could reopen them spills them back there.
        self._ready: list[Row] = []
        self._ready_marks: list[tuple] = []  # (index in _ready, now) of each add that extended it
        self._ready_writer: Optional[int] = None
        # The column path (see columns.py): writer -> its plain blocks not emitted yet, in step
        # order. Like _ready, never both these and _pending: _spill_blocks makes them rows.
        self._blocks: dict[int, list[Block]] = {}
        self._arrivals = 0  # blocks taken so far: their order of arrival across writers

    # -- writers ----------------------------------------------------------------------------

    def join(self, writer: int, now: Optional[float] = None) -> None:
        """Register a live writer. Joining again keeps its cursor.

        With ``now`` (the writer connected at that time), a writer that has not logged yet
        holds every row back for up to ``merge_window`` seconds: ranks start a little apart,
        and a rank's first steps should merge by the reduce rule, not arrive as amendments.
        Without ``now``, or once the window has passed, it holds nothing back."""
        if writer not in self._cursors:
            self._spill()  # the new writer may hold the ready rows back
            self._cursors[writer] = None
            if now is not None:
                self._joined[writer] = now

    def leave(self, writer: int) -> None:
        """The writer is done: it no longer holds rows back. Its pending rows stay and finalize
        by the usual rule. Adding entries afterwards joins it again, as a fresh writer."""
        self._cursors.pop(writer, None)
        self._joined.pop(writer, None)

    @property
    def writers(self):
        """The live writers' ids (a read-only view)."""
        return self._cursors.keys()

    def live_writers(self) -> int:
        """How many writers are live (joined, not left)."""
        return len(self._cursors)

    def pending(self) -> int:
        """How many rows are pending (not emitted yet); entries kept as columns count one each
        (two writers' entries at one step will make one row)."""
        return len(self._pending) + len(self._ready) + self._block_entries()

    def _block_entries(self) -> int:
        # entries rather than rows: writers' blocks at the same steps make one row per step
        return sum(len(b.steps) for blocks in self._blocks.values() for b in blocks) if self._blocks else 0

    def lowest_pending(self) -> Optional[int]:
        """The lowest step of a pending row, None when no row is pending."""
        low = min(self._pending) if self._pending else None
        if self._ready and (low is None or self._ready[0].step < low):
            low = self._ready[0].step
        for blocks in self._blocks.values():
            if low is None or blocks[0].steps[0] < low:
                low = blocks[0].steps[0]
        return low

    def is_pending(self, step: int) -> bool:
        """Whether the row of ``step`` is pending (added, not emitted yet)."""
        if step in self._pending:
            return True
        for blocks in self._blocks.values():
            for b in blocks:
                if b.holds(step):
                    return True
        ready = self._ready
        return bool(ready) and ready[0].step <= step <= ready[-1].step and any(r.step == step for r in ready)

    def lead(self, writer: int) -> float:
        """How many steps ``writer`` is ahead of the slowest live writer that has logged: the
        difference of their highest steps (``-inf`` for a writer that is not live or has not
        logged yet). Entries of a writer with a low lead close rows; those of a writer far
        ahead only add pending ones. Writers that have not logged do not count: they hold rows
        back for a merge window at most (see :meth:`join`)."""
        cursor = self._cursors.get(writer)
        if cursor is None:
            return float("-inf")
        slowest = cursor[0]
        for c in self._cursors.values():
            if c is not None and c[0] < slowest:
                slowest = c[0]
        return cursor[0] - slowest

    # -- entries ----------------------------------------------------------------------------

    def define_metric(
        self,
        name: str,
        step_metric: Optional[str] = None,
        summary=None,
        reduce: Optional[str] = None,
        hidden: bool = False,
        goal: Optional[str] = None,
        step_sync: Optional[bool] = None,
    ) -> MetricDef:
        """Record a definition in the shared registry; see :meth:`Metrics.define`. A new reduce
        rule applies to rows emitted from now on, pending ones included."""
        return self.metrics.define(name, step_metric, summary, reduce, hidden, goal, step_sync)

    def add(self, writer: int, entries: Iterable[Entry], now: Optional[float] = None) -> None:
        """Apply ``entries`` of one writer, in order. Emits nothing: call :meth:`finalize`.

        Each entry is ``(step, commit, time_us, values, payload)``. ``values`` is never changed,
        and an entry that makes a row alone may become that row's ``values`` without a copy: do
        not change it after the call. ``payload`` (bytes or None) is kept as is, in arrival
        order, without decoding. A late entry dropped under ``late_steps="drop"`` still moves
        the writer's cursor: the writer did reach that step.
        """
        if self._blocks:
            self._spill_blocks()
        now = self._stamp(now)
        cursors = self._cursors
        cursor = cursors.get(writer)
        if cursor is None:
            cur_step, cur_commit = None, False
        else:
            cur_step, cur_commit = cursor
        pending = self._pending
        if not isinstance(entries, (list, tuple)):
            entries = list(entries)
        n = 0
        if (
            not pending
            and (not cursors or (len(cursors) == 1 and writer in cursors))
            and (not self._ready or self._ready_writer == writer)
        ):
            n = self._add_alone(writer, entries, cur_step, now)
            if n:
                cur_step, cur_commit = entries[n - 1][0], True
        if n < len(entries):
            self._spill()
        # the usual path, in the codec's loop: a dict probe, a row or an update per entry
        if n < len(entries):
            cur_step, cur_commit, dropped = codec.merge_entries(
                pending,
                self._heap,
                entries,
                n,
                writer,
                now,
                self._emitted_max,
                self.late_steps == "drop",
                cur_step,
                cur_commit,
                _NO_PAYLOADS,
            )
            if dropped:
                for step in dropped:
                    self._drop(writer, step)
            n = len(entries)
        cursors[writer] = [cur_step, cur_commit] if cur_step is not None else None
        self.stats["entries"] += n
        self.stats["pending"] = len(pending) + len(self._ready)

    def _stamp(self, now: Optional[float]) -> Optional[float]:
        """The time of an add (the latest seen when None); schedules the merge window's scan."""
        if now is None:
            now = self._now
        else:
            self._now = now
        if self.merge_window is not None:
            if now is None:
                self._next_window_check = _NO_STEP  # unstamped rows: stamp them at the next scan
            elif now + self.merge_window < self._next_window_check:
                self._next_window_check = now + self.merge_window
        return now

    def add_plain(self, writer: int, body, now: Optional[float] = None) -> Optional[tuple[int, int]]:
        """Merge a LOG body as columns when it is plain (``decode_columns``) and ``add_blocks``
        takes it, joining its writer: ``(entries, highest step)``. None: it goes the row way
        (``decode_batch`` it and ``add`` its entries)."""
        if self._pending or self._ready:  # add_blocks would refuse it: spare the decoding
            return None
        plain = codec.decode_columns(body)
        if plain is None:
            return None
        blocks = plain[2]
        self.join(writer)  # joining again keeps the writer's cursor
        if not self.add_blocks(writer, blocks, now):
            return None
        return sum(len(b[0]) for b in blocks), blocks[-1][0][-1]

    def add_blocks(self, writer: int, blocks: list, now: Optional[float] = None) -> bool:
        """Take ``writer``'s plain entries as columns (the blocks of ``decode_columns``), when
        no row needs them merged key by key: nothing pending as rows, every step above those
        emitted and the writer's own, no key with a reduce rule, and no key that another
        writer's pending block has at the same steps. Returns False, taking nothing, otherwise:
        add the entries (``Block.entries``) then."""
        if self._pending or self._ready:
            return False
        cursor = self._cursors.get(writer)
        floor = self._emitted_max if cursor is None or cursor[0] < self._emitted_max else cursor[0]
        mine = self._blocks.get(writer)
        if mine and mine[-1].steps[-1] > floor:  # a writer that left and came back: past those too
            floor = mine[-1].steps[-1]
        first, top = blocks[0][0][0], blocks[-1][0][-1]
        if first <= floor:
            return False
        reduced = self.metrics.has_reduce_rules
        for _, _, keys, _, _ in blocks:
            if reduced and self._reduced_keys(keys):
                return False
            for other, theirs in self._blocks.items():
                if other != writer:
                    for b in theirs:
                        if b.steps[0] <= top and first <= b.steps[-1] and not b.keyset.isdisjoint(keys):
                            return False
        now = self._stamp(now)
        if mine is None:
            mine = self._blocks[writer] = []
        n = 0
        for steps, times, keys, cols, commit in blocks:
            self._arrivals += 1
            mine.append(Block(steps, times, keys, cols, commit, now, self._arrivals))
            n += len(steps)
        self._cursors[writer] = [top, blocks[-1][4]]
        self.stats["entries"] += n
        self.stats["pending"] = self._block_entries()
        return True

    def _spill_blocks(self) -> None:
        """Turn the blocks into pending rows, as the row path would have left them (the blocks
        in the order they came: a row is last touched by its last one), before anything that
        needs rows (an entry that is not plain, a reduce rule, the merge window)."""
        blocks = sorted(((b.arrival, w, b) for w, mine in self._blocks.items() for b in mine), key=lambda x: x[0])
        self._blocks = {}
        for _, writer, b in blocks:
            codec.merge_entries(
                self._pending,
                self._heap,
                b.entries(),
                0,
                writer,
                b.touched,
                self._emitted_max,
                False,
                None,
                False,
                _NO_PAYLOADS,
            )

    def _emit_blocks(self, everything: bool) -> list:
        """The blocks' rows that are final (every one with ``everything``), as ColumnRows."""
        w = float("inf") if everything else self.watermark()
        out = []
        for writer in list(self._blocks):
            mine = self._blocks[writer]
            i = 0
            while i < len(mine) and mine[i].steps[-1] < w:
                i += 1
            out.extend(mine[:i])
            del mine[:i]
            if mine:
                head, tail = mine[0].split(w)
                if head is not None:
                    out.append(head)
                    mine[0] = tail
            else:
                del self._blocks[writer]
        self.stats["pending"] = self._block_entries()
        if self.merge_window is not None:  # the next look at the window: the oldest block's
            touched = [b.touched for bs in self._blocks.values() for b in bs if b.touched is not None]
            self._next_window_check = min(touched) + self.merge_window if touched else float("inf")
        if not out:
            return []
        rows = ColumnRows(out, Row)
        self._emitted_max = max(self._emitted_max, rows.steps[-1])
        self.stats["rows_emitted"] += len(rows)
        return rows

    def _add_alone(self, writer: int, entries, cur_step, now) -> int:
        """The fast path of :meth:`add` for ``writer`` logging alone (no other live writer,
        nothing pending): the leading entries that commit a step above every step seen become
        final rows at once. Returns how many entries it took; the rest go the usual way."""
        ready = self._ready
        start = len(ready)
        floor = self._emitted_max  # the highest step emitted, logged or ready: an entry must pass it
        if cur_step is not None and cur_step > floor:
            floor = cur_step
        if start:
            floor = max(floor, ready[-1].step)
        new_row = tuple.__new__  # Row(...) costs twice as much: its __new__ is Python code
        for step, commit, time_us, values, payload in entries:
            if not commit or step <= floor:
                break
            ready.append(new_row(Row, (step, time_us, values, _NO_PAYLOADS if payload is None else [payload], False)))
            floor = step
        taken = len(ready) - start
        if taken:
            self._ready_marks.append((start, now))
            self._ready_writer = writer
        return taken

    def _spill(self) -> None:
        """Move the ready rows (see ``_add_alone``) into ``_pending``, as the usual path would
        have left them, before anything that could hold them back or add to them."""
        ready = self._ready
        if not ready:
            return
        marks = self._ready_marks
        pending = self._pending
        writer = self._ready_writer
        ends = [start for start, _ in marks[1:]] + [len(ready)]
        for (start, touched), end in zip(marks, ends):
            for row in ready[start:end]:
                pending[row.step] = codec.PendingRow(
                    row.time_us, dict(row.values), row.payloads, touched, writer, False
                )
                heappush(self._heap, row.step)
        self._ready = []
        marks.clear()

    def _drop(self, writer: int, step: int) -> None:
        self.stats["late_dropped"] += 1
        if self.stats["late_dropped"] == 1:
            msg = (
                f"trackside: dropped a late entry from writer {writer} for step {step}: steps up to "
                f"{self._emitted_max} were already written and late_steps='drop'. Further drops are "
                f"only counted (stats['late_dropped']); use late_steps='amend' to keep late values."
            )
            self.warnings.append(msg)
            if self.on_warning is not None:
                self.on_warning(msg)

    # -- finalization -----------------------------------------------------------------------

    def watermark(self) -> float:
        """Rows with a step below this are final by the writers' progress (``inf`` when no live
        writer has logged anything)."""
        w = float("inf")
        for writer, cursor in self._cursors.items():
            if cursor is not None:
                b = cursor[0] + 1 if cursor[1] else cursor[0]
                if b < w:
                    w = b
            elif writer in self._joined:
                joined = self._joined[writer]
                if self.merge_window is None or self._now is None or self._now - joined < self.merge_window:
                    return float("-inf")  # a writer that just connected: wait for its first entry
                del self._joined[writer]
        return w

    def finalize(self, now: Optional[float] = None, everything: bool = False) -> list[Row]:
        """The rows that became final since the last call, in step order, each exactly once.

        ``everything=True`` (run finish, daemon drain) returns every pending row.
        """
        pending = self._pending
        if now is not None:
            self._now = now
        if self._blocks:
            if not self._blocks_stale(now):
                return self._emit_blocks(everything)
            self._spill_blocks()
        if self._ready:  # final by construction, and nothing else is pending
            out, self._ready = self._ready, []
            self._ready_marks.clear()
            if self.metrics.has_reduce_rules:
                for row in out:
                    self._keep(row.step, {self._ready_writer: row.values})
            self._emitted_max = max(self._emitted_max, out[-1].step)
            self.stats["rows_emitted"] += len(out)
            self.stats["pending"] = 0
            return out
        if not pending:
            return []
        out: list[Row] = []
        if everything:
            for step in sorted(pending):
                out.append(self._emit(step, pending[step]))
            pending.clear()
            self._heap.clear()
            self._next_window_check = float("inf")
        else:
            heap = self._heap
            w = self.watermark()
            if not self.metrics.has_reduce_rules:  # every key "last": the codec's loop makes the rows
                out, collisions, amends = codec.pop_rows(pending, heap, w, Row)
                if out:
                    self._emitted_max = max(self._emitted_max, out[-1].step)
                    stats = self.stats
                    stats["rows_emitted"] += len(out)
                    stats["amends"] += amends
                    stats["collisions"] += collisions
            else:
                while heap and heap[0] < w:
                    step = heappop(heap)
                    row = pending.pop(step, None)
                    if row is not None:  # None: the window emitted it already
                        out.append(self._emit(step, row))
            if now is not None and self.merge_window is not None and pending and now >= self._next_window_check:
                stale = self._scan_window(now)
                if stale:
                    out.extend(self._emit(step, pending.pop(step)) for step in stale)
                    out.sort(key=lambda r: r.step)
                    if len(heap) > 2 * len(pending) + 64:
                        # steps the window emitted linger in the heap while a writer holds the
                        # watermark back; rebuild so a stuck writer cannot grow it without bound
                        self._heap = sorted(pending)
        self.stats["pending"] = len(pending)
        return out

    def _blocks_stale(self, now: Optional[float]) -> bool:
        """Whether the blocks must become rows: a block waited past the merge window (the row
        path's scan lets it go), or a key of one got a reduce rule since it came."""
        if now is not None and self.merge_window is not None and now >= self._next_window_check:
            cutoff = now - self.merge_window
            if any(b.touched is None or b.touched < cutoff for bs in self._blocks.values() for b in bs):
                return True
        if self.metrics.has_reduce_rules:
            return any(self._reduced_keys(b.keys) for bs in self._blocks.values() for b in bs)
        return False

    def _scan_window(self, now: float) -> list[int]:
        """Steps of rows last touched more than ``merge_window`` ago; also schedules the next
        scan for when the oldest remaining row can go stale, so most calls skip the scan."""
        cutoff = now - self.merge_window
        stale = []
        oldest = float("inf")
        for step, row in self._pending.items():
            t = row.touched
            if t is None:
                row.touched = t = now
            if t < cutoff:
                stale.append(step)
            elif t < oldest:
                oldest = t
        self._next_window_check = oldest + self.merge_window
        return stale

    def _emit(self, step: int, row) -> Row:
        by = row.by_writer  # made anew: the merger's own
        reduced = self._reduced_keys(row.values) if self.metrics.has_reduce_rules else None
        if by is not None:
            self._reduce(row, by, reduced)
        if reduced is not None:
            if by is not None:
                kept = self._keep(step, by, union=row.values, reduced=reduced)
            else:
                kept = self._keep(step, {row.writer: row.values}, reduced=reduced)
            if row.amend and kept is not None:
                self._reduce_late(row, kept)
        if step > self._emitted_max:
            self._emitted_max = step
        stats = self.stats
        stats["rows_emitted"] += 1
        if row.amend:
            stats["amends"] += 1
        return Row(step, row.time_us, row.values, row.payloads, row.amend)

    def recall(self, writer: int, entries: Iterable[Entry]) -> None:
        """Entries stored before this merger existed (a server's stream started again on its
        WAL): nothing is emitted; their steps count as emitted (later entries for them amend),
        and their reduced keys' values are kept for the reduce rule of late entries."""
        if self._blocks:
            self._spill_blocks()
        keep = self.metrics.has_reduce_rules
        for step, _, _, values, _ in entries:
            if step > self._emitted_max:
                self._emitted_max = step
            if keep:
                self._keep(step, {writer: values})

    def _reduced_keys(self, values) -> list:
        """The keys of ``values`` (a dict or the keys) whose reduce rule is not "last"."""
        rules, reduce_of = self.metrics.rules, self.metrics.reduce_of
        return [k for k in values if (rules.get(k) or reduce_of(k)) != "last"]

    def _keep(
        self, step: int, by_writer: dict, union: Optional[dict] = None, reduced: Optional[list] = None
    ) -> Optional[dict]:
        """Keep the writers' values of reduced keys for ``step`` (merged into those kept
        already); returns what is kept for the step, None when nothing is. ``union``: the keys
        of all of ``by_writer``, which is then the merger's own (a row's): kept as it is, without
        a copy, when nothing is kept for the step yet and every key is reduced. ``reduced``: the
        reduced keys among them, when the caller knows them (``union``'s, or the one writer's)."""
        if reduced is None:
            if len(by_writer) == 1:
                reduced = self._reduced_keys(next(iter(by_writer.values())))
            else:
                reduced = self._reduced_keys({k: None for values in by_writer.values() for k in values})
        kept = self._kept.get(step)
        if kept is None and union is not None and len(reduced) == len(union):
            kept = self._kept[step] = by_writer
            if len(self._kept) > KEEP_STEPS:
                del self._kept[next(iter(self._kept))]
            return kept
        for writer, values in by_writer.items():
            mine = {k: values[k] for k in reduced if k in values}
            if not mine:
                continue
            if kept is None:
                kept = self._kept[step] = {}
                if len(self._kept) > KEEP_STEPS:
                    del self._kept[next(iter(self._kept))]  # the oldest emitted step
            old = kept.get(writer)
            if old is None:
                kept[writer] = mine
            else:
                old.update(mine)
        return kept

    def _reduce_late(self, row, kept: dict) -> None:
        """An amend row: its reduced keys get the value reduced over every writer's kept one."""
        rules, reduce_of = self.metrics.rules, self.metrics.reduce_of
        reduced = False
        if not row.owned:  # an entry's own values: never changed
            row.values = dict(row.values)
            row.owned = True
        for k in list(row.values):
            rule = rules.get(k) or reduce_of(k)
            if rule == "last":
                continue
            vs = [vals[k] for vals in kept.values() if k in vals]
            if len(vs) > 1 and all(map(_is_number, vs)):
                row.values[k] = _REDUCERS[rule](vs)
                reduced = True
        if reduced:
            self.stats["late_reduced"] += 1

    def _reduce(self, row, by: dict, reduced: Optional[list]) -> None:
        """Apply the reduce rules to keys that several writers set (``by``: the row's values per
        writer; ``reduced``: the row's keys whose rule is not "last"); count the collisions."""
        total = sum(map(len, by.values()))
        if total == len(row.values):
            return  # the writers' keys are disjoint (``values`` holds their union): no collision
        stats = self.stats
        stats["collisions"] += total - len(row.values)  # a key set by c writers: c - 1 collisions
        if not reduced:
            return  # every key "last": row.values already holds the last-arrived values
        rules = self.metrics.rules  # the reduced keys' rules were looked up: all in it
        writers = list(by.values())
        values = row.values
        for k in reduced:
            rule = rules[k]
            vs = [vals[k] for vals in writers if k in vals]
            if len(vs) < 2:
                continue
            if all(map(_is_number, vs)):
                values[k] = _REDUCERS[rule](vs)
            else:
                stats["reduce_fallbacks"] += 1
