# -- the merge stage's per-entry loops (daemon/merger.py) -----------------------------------------
# Merger.add's loop over the entries that go into pending rows, and finalize's pop of the rows
# the watermark let go. In Python each entry paid the interpreter for a dict probe, a row
# object, a copy and an update: half of the daemon's merge time with several writers on a run.
# The rules are the merger's; the twin (_twin.merge_entries, _twin.pop_rows) is the reference.

from cpython.dict cimport PyDict_Update
from heapq import heappop as _heappop, heappush as _heappush


cdef class PendingRow:
    """A row still open to entries. ``values`` holds the last-arrived value per key: the
    entry's own dict while one entry made the row (never changed: ``owned`` is False), a copy
    once a second one came. ``writer`` is the only writer that touched the row, or None once a
    second one did; from then on ``parts`` keeps ``writer, values`` of each entry after the
    first writer's (those first: a copy of what it had), which ``by_writer`` merges per writer
    for the reduce rule."""

    cdef public object time_us
    cdef public dict values
    cdef public list payloads
    cdef public object touched
    cdef public object writer
    cdef public list parts
    cdef public bint amend
    cdef public bint owned

    def __init__(self, time_us, dict values, list payloads, touched, writer, bint amend):
        self.time_us = time_us
        self.values = values
        self.payloads = payloads
        self.touched = touched
        self.writer = writer
        self.parts = None
        self.amend = amend
        self.owned = True

    @property
    def by_writer(self):
        """writer -> its latest value per key (new dicts), None while one writer touched the row."""
        if self.parts is None:
            return None
        return _by_writer(self.parts)


cdef dict _by_writer(list parts):
    cdef dict by = {}
    cdef Py_ssize_t i
    cdef object found
    for i in range(0, len(parts), 2):
        found = by.get(parts[i])
        if found is None:
            by[parts[i]] = PyDict_Copy(parts[i + 1])
        else:
            PyDict_Update(found, parts[i + 1])
    return by


cdef Py_ssize_t _by_writer_sizes(list parts) except -1:
    """The sum over writers of how many keys each set (what ``by_writer``'s dicts would hold)."""
    cdef Py_ssize_t i, j, total = 0
    cdef bint repeated = False
    for i in range(0, len(parts), 2):
        for j in range(0, i, 2):
            if parts[j] == parts[i]:
                repeated = True
                break
        total += len(<dict>parts[i + 1])
    if not repeated:  # one entry per writer: its keys are its dict's
        return total
    total = 0
    for v in _by_writer(parts).values():
        total += len(v)
    return total


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
    An entry's values are never changed (a row may hold them). Rows without payloads share
    ``no_payloads``. Returns ``(cur_step, cur_commit, dropped)``: the writer's cursor after the
    entries and the steps of the dropped entries (None: none)."""
    cdef Py_ssize_t i, n = len(entries)
    cdef PendingRow row
    cdef object entry, step, commit, time_us, values, payload, found
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
            row.owned = not PyDict_CheckExact(values)
            row.values = dict(values) if row.owned else <dict>values
            row.payloads = no_payloads if payload is None else [payload]
            row.touched = now
            row.writer = writer
            row.parts = None
            row.amend = amend
            pending[step] = row
            _heappush(heap, step)
            continue

        row = <PendingRow?>found
        if row.writer is None or row.writer != writer:
            if row.parts is None:  # second writer in this step: keep each writer's values
                row.parts = [row.writer, row.values if not row.owned else PyDict_Copy(row.values)]
                row.writer = None
            row.parts.append(writer)
            row.parts.append(values if PyDict_CheckExact(values) else dict(values))
        if not row.owned:
            row.values = PyDict_Copy(row.values)
            row.owned = True
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
    cdef object step, found
    while heap and heap[0] < limit:
        step = _heappop(heap)
        found = pending.pop(step, None)
        if found is None:  # the merge window emitted it already
            continue
        row = <PendingRow?>found
        if row.parts is not None:
            total = _by_writer_sizes(row.parts)
            if total != len(row.values):  # a key set by c writers: c - 1 collisions
                collisions += total - len(row.values)
        if row.amend:
            amends += 1
        out.append(tuple.__new__(row_type, (step, row.time_us, row.values, row.payloads, row.amend)))
    return out, collisions, amends
