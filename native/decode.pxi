# Decoding a LOG body (included by _codec.pyx).
#
# The bytes may be anything (a body that passed its checksum can still come from a buggy
# writer): every read is checked against the end, and every failure is a CodecError with the
# twin's message.

cdef int r_byte(Reader *r, uint8_t *out) except -1:
    if r.pos >= r.end:
        raise CodecError("body ends inside an entry")
    out[0] = r.pos[0]
    r.pos += 1
    return 0


cdef int r_uvarint_slow(Reader *r, uint64_t *out) except -1:
    cdef uint64_t n = 0
    cdef unsigned int shift = 0
    cdef uint8_t b
    while True:
        if r.pos >= r.end:
            raise CodecError("body ends inside an entry")
        b = r.pos[0]
        r.pos += 1
        if shift == 63:  # the tenth byte holds the 64th bit only
            if b >= 0x80:
                raise CodecError("varint longer than 10 bytes")
            if b > 1:
                raise CodecError("varint overflows 64 bits")
        n |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = n
            return 0
        shift += 7


cdef inline int r_uvarint(Reader *r, uint64_t *out) except -1:
    if r.pos < r.end and r.pos[0] < 0x80:  # one byte: most counts, indices, deltas, ints
        out[0] = r.pos[0]
        r.pos += 1
        return 0
    return r_uvarint_slow(r, out)


cdef inline const unsigned char *r_take(Reader *r, uint64_t n) except NULL:
    cdef const unsigned char *p = r.pos
    if n > <uint64_t>(r.end - r.pos):
        raise CodecError("body ends inside a string or payload")
    r.pos += n
    return p


cdef str r_utf8(Reader *r, str what):
    cdef uint64_t n
    cdef const unsigned char *p
    r_uvarint(r, &n)
    p = r_take(r, n)
    try:
        return PyUnicode_DecodeUTF8(<char *>p, <Py_ssize_t>n, NULL)
    except UnicodeDecodeError as e:
        raise CodecError(f"{what} is not UTF-8: {e}") from None


cdef Py_ssize_t r_key(Reader *r, list names) except -1:
    """The index in ``names`` of the key at ``r``, appended to them where the batch defines it."""
    cdef uint64_t ki
    r_uvarint(r, &ki)
    if ki == <uint64_t>PyList_GET_SIZE(names):
        names.append(r_utf8(r, "key"))
    elif ki > <uint64_t>PyList_GET_SIZE(names):
        raise CodecError(f"key index {ki} before its definition")
    return <Py_ssize_t>ki


cdef object r_value(Reader *r):
    cdef uint8_t tag = 0
    cdef uint64_t u
    cdef double x
    r_byte(r, &tag)
    if tag == TAG_FLOAT:
        if r.end - r.pos < 8:
            raise CodecError("body ends inside a string or payload")
        x = ts_load_f64le(r.pos)
        r.pos += 8
        return PyFloat_FromDouble(x)
    if tag == TAG_INT:
        r_uvarint(r, &u)
        return PyLong_FromLongLong(ts_unzigzag(u))
    if tag == TAG_TRUE:
        return True
    if tag == TAG_FALSE:
        return False
    if tag == TAG_STR:
        return r_utf8(r, "string value")
    if tag == TAG_NONE:
        return None
    raise CodecError(f"unknown value tag {tag}")


cdef tuple decode_body(const unsigned char *data, Py_ssize_t size):
    cdef Reader r
    cdef uint64_t writer, seq, count, u, nvalues, e
    cdef int64_t t, d, t2
    cdef uint8_t flags = 0
    cdef Py_ssize_t j, prev_n = 0, cap = 0
    cdef Py_ssize_t *prev_idx = NULL
    cdef Py_ssize_t *cur_idx = NULL
    cdef Py_ssize_t *swap
    cdef list names = []   # index -> key str, each made once per batch and shared by the dicts
    cdef list entries = []
    cdef dict values
    cdef dict prev_values = None
    cdef object big = None  # the time once it has left int64 (only bad bytes get there)
    cdef object step, commit, time_o, payload
    r.pos = data
    r.end = data + size
    r_uvarint(&r, &writer)
    r_uvarint(&r, &seq)
    r_uvarint(&r, &count)
    if count > <uint64_t>size:  # every entry takes at least two bytes: a bound on silly counts
        raise CodecError(f"entry count {count} exceeds the body size")
    r_uvarint(&r, &u)
    t = ts_unzigzag(u)
    try:
        for e in range(count):
            r_byte(&r, &flags)
            if flags & ~ENTRY_FLAGS_KNOWN:
                raise CodecError(f"unknown entry flags {flags:#x}")
            if flags & ENTRY_HAS_STEP:
                r_uvarint(&r, &u)
                step = PyLong_FromLongLong(ts_unzigzag(u))
            else:
                step = None
            if flags & ENTRY_COMMIT_SET:
                commit = True if flags & ENTRY_COMMIT else False
            else:
                commit = None
            r_uvarint(&r, &u)
            d = ts_unzigzag(u)
            if big is None and not ts_add_overflows(t, d, &t2):
                t = t2
                time_o = PyLong_FromLongLong(t)
            else:  # the twin's time is a Python int: follow it past int64
                if big is None:
                    big = PyLong_FromLongLong(t)
                big = big + d
                time_o = big
            if flags & ENTRY_SAME_KEYS:
                if prev_n == 0:
                    values = {}
                else:
                    # the previous entry's dict has these keys in this order: copying it skips
                    # the inserts and resizes, then each value is replaced in place
                    values = PyDict_Copy(prev_values)
                    for j in range(prev_n):
                        if TRACKSIDE_DEBUG and not prev_idx[j] < PyList_GET_SIZE(names):
                            raise AssertionError(f"key index {prev_idx[j]} out of range")
                        PyDict_SetItem(values, <object>PyList_GET_ITEM_(names, prev_idx[j]), r_value(&r))
            else:
                r_uvarint(&r, &nvalues)
                if nvalues > <uint64_t>(r.end - r.pos) // 2:  # each takes a key byte and a tag
                    raise CodecError("body ends inside an entry")
                if <Py_ssize_t>nvalues > cap:
                    cap = max(<Py_ssize_t>nvalues, 2 * cap, 16)
                    swap = <Py_ssize_t *>PyMem_Realloc(prev_idx, <size_t>cap * sizeof(Py_ssize_t))
                    if swap == NULL:
                        raise MemoryError()
                    prev_idx = swap
                    swap = <Py_ssize_t *>PyMem_Realloc(cur_idx, <size_t>cap * sizeof(Py_ssize_t))
                    if swap == NULL:
                        raise MemoryError()
                    cur_idx = swap
                values = {}
                for j in range(<Py_ssize_t>nvalues):
                    cur_idx[j] = r_key(&r, names)
                    PyDict_SetItem(values, <object>PyList_GET_ITEM_(names, cur_idx[j]), r_value(&r))
                swap = prev_idx
                prev_idx = cur_idx
                cur_idx = swap
                prev_n = <Py_ssize_t>nvalues
            if flags & ENTRY_HAS_PAYLOAD:
                r_uvarint(&r, &u)
                payload = PyBytes_FromStringAndSize(<char *>r_take(&r, u), <Py_ssize_t>u)
            else:
                payload = None
            entries.append((step, commit, time_o, values, payload))
            prev_values = values
    finally:
        PyMem_Free(prev_idx)
        PyMem_Free(cur_idx)
    if r.pos != r.end:
        raise CodecError(f"{r.end - r.pos} bytes left after the last entry")
    return PyLong_FromUnsignedLongLong(writer), PyLong_FromUnsignedLongLong(seq), entries


def decode_batch(body):
    """``(writer, seq, entries)`` from the body of a LOG record (bytes-like).

    Raises CodecError if the body is malformed, whatever its bytes; never reads past its end.
    """
    cdef Py_buffer view
    try:
        get_buffer(body, &view)
    except BufferError:  # a non-contiguous view: decode a contiguous copy
        body = memoryview(body).tobytes()
        get_buffer(body, &view)
    try:
        return decode_body(<const unsigned char *>view.buf if view.buf != NULL else ts_empty,
                           view.len)
    finally:
        PyBuffer_Release(&view)
