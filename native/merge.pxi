# -- the merge stage's per-entry loops (daemon/merger.py) -----------------------------------------
# Merger.add's loop over the entries that go into pending rows, and finalize's pop of the rows
# the watermark let go. In Python each entry paid the interpreter for a dict probe, a row
# object, a copy and an update: half of the daemon's merge time with several writers on a run.
# The rules are the merger's; the twin (_twin.merge_entries, _twin.pop_rows) is the reference.

from cpython.dict cimport PyDict_Update
from heapq import heappop as _heappop, heappush as _heappush


cdef class PendingRow:
    """A row still open to entries. ``writer`` is the only writer that touched it, or None
    once a second one did; from then on ``by_writer`` keeps each writer's own values so the
    reduce rule can see them all. ``values`` always holds the last-arrived value per key."""

    cdef public object time_us
    cdef public dict values
    cdef public list payloads
    cdef public object touched
    cdef public object writer
    cdef public dict by_writer
    cdef public bint amend

    def __init__(self, time_us, dict values, list payloads, touched, writer, bint amend):
        self.time_us = time_us
        self.values = values
        self.payloads = payloads
        self.touched = touched
        self.writer = writer
        self.by_writer = None
        self.amend = amend


cdef inline dict _copy(object values):
    return PyDict_Copy(values) if PyDict_CheckExact(values) else dict(values)


cdef inline void _update(dict target, object values) except *:
    if PyDict_CheckExact(values):
        PyDict_Update(target, values)
    else:
        target.update(values)


def merge_entries(dict pending, list heap, entries, Py_ssize_t start, writer, now, emitted_max,
                  bint drop_late, cur_step, cur_commit, list no_payloads):
    """Merge ``entries[start:]`` of ``writer`` into the pending rows (``pending``: step ->
    PendingRow, ``heap``: their steps), as ``Merger.add`` does: a new step opens a row (an amend
    row at or below ``emitted_max``, or, with ``drop_late``, none: the entry is dropped), a
    known one takes the values, keeping each writer's own once a second writer touched it.
    Rows without payloads share ``no_payloads``. Returns ``(cur_step, cur_commit, dropped)``:
    the writer's cursor after the entries and the steps of the dropped entries (None: none)."""
    cdef Py_ssize_t i, n = len(entries)
    cdef PendingRow row
    cdef object entry, step, commit, time_us, values, payload, found
    cdef dict by, mine
    cdef list dropped = None
    cdef bint amend
    for i in range(start, n):
        entry = entries[i]
        step, commit, time_us, values, payload = entry
        if cur_step is None or step > cur_step:
            cur_step = step
            cur_commit = commit
        elif commit and step == cur_step:
            cur_commit = True

        found = pending.get(step)
        if found is None:
            amend = False
            if step <= emitted_max:
                if drop_late:
                    if dropped is None:
                        dropped = []
                    dropped.append(step)
                    continue
                amend = True
            row = PendingRow.__new__(PendingRow)
            row.time_us = time_us
            row.values = _copy(values)
            row.payloads = no_payloads if payload is None else [payload]
            row.touched = now
            row.writer = writer
            row.by_writer = None
            row.amend = amend
            pending[step] = row
            _heappush(heap, step)
            continue

        row = <PendingRow?>found
        if row.writer is None or row.writer != writer:
            by = row.by_writer
            if by is None:  # second writer in this step: start keeping values per writer
                by = row.by_writer = {row.writer: PyDict_Copy(row.values)}
                row.writer = None
            found = by.get(writer)
            if found is None:
                by[writer] = _copy(values)
            else:
                mine = <dict?>found
                _update(mine, values)
        _update(row.values, values)
        if payload is not None:
            if row.payloads is no_payloads:
                row.payloads = [payload]
            else:
                row.payloads.append(payload)
        if time_us > row.time_us:
            row.time_us = time_us
        row.touched = now
    return cur_step, cur_commit, dropped


def pop_rows(dict pending, list heap, limit, row_type):
    """Pop the pending rows whose steps are below ``limit``, in step order, for a merger whose
    keys all reduce by "last" (``values`` holds the last-arrived values already): ``(rows,
    collisions, amends)``, the rows as ``row_type(step, time_us, values, payloads, amend)``
    tuples, the collisions counted as ``Merger._reduce`` counts them."""
    cdef list out = []
    cdef Py_ssize_t collisions = 0, amends = 0, total
    cdef PendingRow row
    cdef object step, found, v
    while heap and heap[0] < limit:
        step = _heappop(heap)
        found = pending.pop(step, None)
        if found is None:  # the merge window emitted it already
            continue
        row = <PendingRow?>found
        if row.by_writer is not None:
            total = 0
            for v in row.by_writer.values():
                total += len(v)
            if total != len(row.values):  # a key set by c writers: c - 1 collisions
                collisions += total - len(row.values)
        if row.amend:
            amends += 1
        out.append(tuple.__new__(row_type, (step, row.time_us, row.values, row.payloads, row.amend)))
    return out, collisions, amends
