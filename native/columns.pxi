# -- history rows into columns (store/series.py) ------------------------------------------------
# The store's series writer turns each batch of rows into one column per key. This is its per
# value loop, in C: a type check, a dict look-up and two appends per value.

from cpython.list cimport PyList_Append
from cpython.object cimport Py_SIZE
from cpython cimport array as carray
import array as _array

cdef carray.array _STEPS = _array.array("q")
cdef carray.array _FLOATS = _array.array("d")


def split_rows(rows, last, keep=()):
    """``(steps, times, floats, ints, late, rest)`` of history ``rows`` (objects with
    ``step``, ``time_us``, ``values``) whose steps must be above ``last`` to be appended:
    ``steps``/``times`` of those rows; ``floats``/``ints``: key -> ``(steps, values)`` of their
    float and int64 values, as ``array.array`` ("q" steps; "d" floats, "q" ints: numpy takes
    them without a copy); ``late``: the rows at or below ``last`` (None: no step is stored) or
    at or below a step before them); ``rest``: ``(row, values)`` of the appended rows' other
    values (bools, text, rich values, ints beyond int64, and any value of a key in ``keep``).
    The same as ``_twin.split_rows``."""
    cdef list steps = [], times = [], late = [], rest = []
    cdef dict floats = {}, ints = {}
    cdef dict values, other
    cdef object r, col, step_obj, kept
    cdef carray.array col_steps, col_values
    cdef long long ivalue
    cdef long long step
    cdef PyObject *k
    cdef PyObject *v
    cdef PyObject *found
    cdef Py_ssize_t pos
    cdef int overflow
    cdef bint bounded = last is not None
    for kept in keep:  # found as None: such a key's values stay with the row's others
        floats[kept] = None
        ints[kept] = None
    cdef long long top = last if bounded else 0
    for r in rows:
        step_obj = r.step
        step = step_obj
        if bounded and step <= top:
            late.append(r)
            continue
        top = step
        bounded = True
        PyList_Append(steps, step_obj)
        PyList_Append(times, r.time_us)
        values = r.values
        other = None
        pos = 0
        while PyDict_Next(values, &pos, &k, &v):
            if PyFloat_CheckExact(<object>v):
                found = PyDict_GetItem(floats, <object>k)
                if found == NULL:
                    col = (carray.clone(_STEPS, 0, False), carray.clone(_FLOATS, 0, False))
                    floats[<object>k] = col
                else:
                    col = <object>found
                    if col is None:  # a key of `keep`: not a column
                        if other is None:
                            other = {}
                        other[<object>k] = <object>v
                        continue
                col_steps = <carray.array>(<tuple>col)[0]
                col_values = <carray.array>(<tuple>col)[1]
                carray.resize_smart(col_values, Py_SIZE(col_values) + 1)
                col_values.data.as_doubles[Py_SIZE(col_values) - 1] = PyFloat_AS_DOUBLE(<object>v)
            elif PyLong_CheckExact(<object>v):
                ivalue = PyLong_AsLongLongAndOverflow(<object>v, &overflow)
                if overflow:
                    if other is None:
                        other = {}
                    other[<object>k] = <object>v
                    continue
                found = PyDict_GetItem(ints, <object>k)
                if found == NULL:
                    col = (carray.clone(_STEPS, 0, False), carray.clone(_STEPS, 0, False))
                    ints[<object>k] = col
                else:
                    col = <object>found
                    if col is None:  # a key of `keep`: not a column
                        if other is None:
                            other = {}
                        other[<object>k] = <object>v
                        continue
                col_steps = <carray.array>(<tuple>col)[0]
                col_values = <carray.array>(<tuple>col)[1]
                carray.resize_smart(col_values, Py_SIZE(col_values) + 1)
                col_values.data.as_longlongs[Py_SIZE(col_values) - 1] = ivalue
            else:
                if other is None:
                    other = {}
                other[<object>k] = <object>v
                continue
            carray.resize_smart(col_steps, Py_SIZE(col_steps) + 1)
            col_steps.data.as_longlongs[Py_SIZE(col_steps) - 1] = step
        if other is not None:
            rest.append((r, other))
    for kept in keep:
        del floats[kept], ints[kept]
    return steps, times, floats, ints, late, rest


# -- a LOG body straight into columns (daemon/merger.py's column path) ----------------------------
# Training code logs the same numeric keys step after step. Such a batch needs no dict per entry
# on its way to the series: decode_columns reads it into one array per key. Anything else (a
# payload, text, a bool, None, a step missing or not rising, an entry without values) returns
# None, and the caller decodes the entries as rows.

cdef carray.array _new_column(uint8_t tag, Py_ssize_t n):
    return carray.clone(_FLOATS if tag == TAG_FLOAT else _STEPS, n, False)


cdef int _read_number(Reader *r, uint8_t tag, carray.array col, Py_ssize_t i) except -1:
    """The value at ``r`` into ``col[i]``; 1 when its tag is not ``tag`` (nothing stored)."""
    cdef uint8_t got = 0
    cdef uint64_t u
    r_byte(r, &got)
    if got != tag:
        return 1
    if tag == TAG_FLOAT:
        if r.end - r.pos < 8:
            raise CodecError("body ends inside a string or payload")
        col.data.as_doubles[i] = ts_load_f64le(r.pos)
        r.pos += 8
    else:
        r_uvarint(r, &u)
        col.data.as_longlongs[i] = ts_unzigzag(u)
    return 0


cdef tuple _block(carray.array steps, carray.array times, list keys, list cols, Py_ssize_t n, bint commit):
    cdef carray.array col
    carray.resize(steps, n)
    carray.resize(times, n)
    for col in cols:
        carray.resize(col, n)
    return (steps, times, tuple(keys), cols, commit)


cdef object decode_columns_body(const unsigned char *data, Py_ssize_t size):
    cdef Reader r
    cdef uint64_t writer, seq, count, u, nvalues, e
    cdef int64_t t, d, step = 0
    cdef uint8_t flags = 0, tag = 0
    cdef Py_ssize_t j, n = 0, nkeys = 0, cap = 0
    cdef bint commit = False
    cdef list names = []
    cdef list blocks = []
    cdef list keys = None
    cdef list cols = None
    cdef carray.array steps = None, times = None
    cdef bytearray tags = None  # the value tag of each key of the open block
    cdef const unsigned char *mark
    r.pos = data
    r.end = data + size
    r_uvarint(&r, &writer)
    r_uvarint(&r, &seq)
    r_uvarint(&r, &count)
    if count == 0 or count > <uint64_t>size:
        return None
    r_uvarint(&r, &u)
    t = ts_unzigzag(u)
    for e in range(count):
        r_byte(&r, &flags)
        if flags & ~ENTRY_FLAGS_KNOWN or not flags & ENTRY_HAS_STEP or flags & ENTRY_HAS_PAYLOAD:
            return None
        r_uvarint(&r, &u)
        if e and ts_unzigzag(u) <= step:
            return None
        step = ts_unzigzag(u)
        commit = (flags & ENTRY_COMMIT_SET) != 0 and (flags & ENTRY_COMMIT) != 0
        r_uvarint(&r, &u)
        if ts_add_overflows(t, ts_unzigzag(u), &d):
            return None
        t = d
        if not flags & ENTRY_SAME_KEYS or keys is None:
            if flags & ENTRY_SAME_KEYS:  # the same keys as no entry before: none
                return None
            if keys is not None:
                blocks.append(_block(steps, times, keys, cols, n, True))
            r_uvarint(&r, &nvalues)
            if nvalues == 0 or nvalues > <uint64_t>(r.end - r.pos) // 2:
                return None
            # room for every entry the rest of the body can hold: each one after this takes a
            # flags byte, a step, a time and a tag and a byte per key at least (a bound on what a
            # bad count or key count could make this allocate: ~8x the body)
            cap = <Py_ssize_t>min(count - e, <uint64_t>((r.end - r.pos) // (3 + 2 * nvalues) + 1))
            keys, cols, tags = [], [], bytearray(<Py_ssize_t>nvalues)
            steps = carray.clone(_STEPS, cap, False)
            times = carray.clone(_STEPS, cap, False)
            n = 0
            for j in range(<Py_ssize_t>nvalues):
                keys.append(names[r_key(&r, names)])
                if r.pos >= r.end:
                    return None
                tag = r.pos[0]  # the key's kind for the whole block
                if tag != TAG_FLOAT and tag != TAG_INT:
                    return None
                tags[j] = tag
                cols.append(_new_column(tag, cap))
                if _read_number(&r, tag, <carray.array>cols[j], 0):
                    return None
            if len(set(keys)) != len(keys):
                return None
            nkeys = len(keys)
        else:
            if n >= cap:  # cannot happen (see cap): refused rather than written past the end
                return None
            for j in range(nkeys):
                if _read_number(&r, tags[j], <carray.array>cols[j], n):
                    return None
        steps.data.as_longlongs[n] = step
        times.data.as_longlongs[n] = t
        n += 1
    if r.pos != r.end:
        return None
    blocks.append(_block(steps, times, keys, cols, n, commit))
    if len(blocks) > max(4, <Py_ssize_t>(count >> 6)):  # keys changing all the time: rows pay less
        return None
    return PyLong_FromUnsignedLongLong(writer), PyLong_FromUnsignedLongLong(seq), blocks


def decode_columns(body):
    """``(writer, seq, blocks)`` of a LOG body whose entries are plain numbers, None otherwise
    (decode it with ``decode_batch``, which also says what is wrong with a malformed one).

    Plain: every entry has a step, above the one before it, no payload, and at least one
    value; every value is a float or an int, each key keeping its kind. A block is a run of
    entries with the same keys: ``(steps, times, keys, columns, commit)``, ``steps`` and
    ``times`` as ``array("q")``, ``keys`` a tuple, ``columns`` one array per key ("d" for
    floats, "q" for ints) and ``commit`` whether the block's last entry committed its step
    (always True but for the batch's last block)."""
    cdef Py_buffer view
    try:
        get_buffer(body, &view)
    except BufferError:
        body = memoryview(body).tobytes()
        get_buffer(body, &view)
    try:
        return decode_columns_body(<const unsigned char *>view.buf if view.buf != NULL else ts_empty, view.len)
    except CodecError:
        return None
    finally:
        PyBuffer_Release(&view)
