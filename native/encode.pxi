# Encoding log entries: value writers, BatchEncoder and encode_batch (included by _codec.pyx).
#
# The twin is the reference for every decision here, errors included: exact types take the
# fast paths, subclasses and everything else go the twin's way (its isinstance order).

cdef uint64_t step_zigzag(object o) except? 0xFFFFFFFFFFFFFFFF:
    # The zigzag form of a step: any int in int64 (bool included, as in the twin).
    cdef int overflow = 0
    cdef long long v
    if PyLong_Check(o):
        v = PyLong_AsLongLongAndOverflow_(<PyObject *>o, &overflow)
        if not overflow:
            return ts_zigzag(v)
    elif _INT64_MIN <= o <= _INT64_MAX:  # not an int: the twin's range check, then its
        # arithmetic, with the errors they raise (TypeError for a float, numpy's own for its ints)
        return PyLong_AsUnsignedLongLong(_index(((o << 1) ^ (o >> 63)) & _UINT64_MAX))
    raise OverflowError(f"step is {o}, outside the int64 range a log value can hold")


cdef uint64_t as_uint64(object o, str what) except? 0xFFFFFFFFFFFFFFFF:
    # writer, seq
    if PyLong_Check(o):
        if 0 <= o <= _UINT64_MAX:
            return PyLong_AsUnsignedLongLong(o)
    elif 0 <= o <= _UINT64_MAX:
        return as_uint64(_index(o), what)
    raise OverflowError(f"{what} is {o}, outside the uint64 range")


cdef int64_t check_time(object t) except? -1:
    cdef int overflow = 0
    cdef long long v
    if not PyLong_Check(t):
        raise TypeError(f"time_us must be int, not {type(t).__name__}")
    v = PyLong_AsLongLongAndOverflow_(<PyObject *>t, &overflow)
    if overflow or v < 0 or v >= TIME_US_LIMIT:
        raise OverflowError(f"time_us is {t}, outside [0, {_TIME_LIMIT_TEXT})")
    return v


cdef inline int put_value(WriteBuffer *b, PyObject *k, PyObject *v) except -1:
    # One tagged value. k and v are borrowed from the dict being encoded; no Python code runs
    # on the fast paths, so they stay alive. Everything else takes references (put_value_slow).
    cdef PyTypeObject *t = Py_TYPE_(v)
    cdef char *p
    cdef int overflow = 0
    cdef long long iv
    cdef const char *s
    cdef Py_ssize_t sn
    if t == &PyFloat_Type_:
        wb_reserve(b, 9)
        wb_check(b, 9)
        p = b.data + b.len
        p[0] = <char>TAG_FLOAT
        ts_store_f64le(p + 1, PyFloat_AS_DOUBLE_(v))
        b.len += 9
    elif v == Py_True_:
        wb_byte(b, TAG_TRUE)
    elif v == Py_False_:
        wb_byte(b, TAG_FALSE)
    elif t == &PyLong_Type_:
        iv = PyLong_AsLongLongAndOverflow_(v, &overflow)
        if overflow:
            raise OverflowError(f"the value for key {<object>k!r} is {<object>v}, "
                                f"outside the int64 range a log value can hold")
        wb_reserve(b, 1 + UVARINT_MAX)
        wb_check(b, 1 + UVARINT_MAX)
        p = b.data + b.len
        p[0] = <char>TAG_INT
        b.len += 1 + put_uvarint_raw(p + 1, ts_zigzag(iv))
    elif t == &PyUnicode_Type_:
        s = PyUnicode_AsUTF8AndSize_(v, &sn)  # cached in the str; UnicodeEncodeError on surrogates
        wb_byte(b, TAG_STR)
        wb_len_bytes(b, s, sn)
    elif v == Py_None_:
        wb_byte(b, TAG_NONE)
    else:
        return put_value_slow(b, <object>k, <object>v)
    return 0


cdef int put_value_slow(WriteBuffer *b, object key_, object v_) except -1:
    # Subclasses of float, int and str, and the error for anything else, in the twin's order.
    # Python code runs here (__int__, encode()): hold our own references to key and value.
    cdef object key = key_
    cdef object v = v_
    cdef Py_buffer view
    cdef char *p
    if isinstance(v, float):
        wb_reserve(b, 9)
        wb_check(b, 9)
        p = b.data + b.len
        p[0] = <char>TAG_FLOAT
        ts_store_f64le(p + 1, PyFloat_AS_DOUBLE(v))
        b.len += 9
    elif isinstance(v, int):
        iv = int(v)
        if not _INT64_MIN <= iv <= _INT64_MAX:
            raise OverflowError(f"the value for key {key!r} is {iv}, "
                                f"outside the int64 range a log value can hold")
        wb_byte(b, TAG_INT)
        wb_svarint(b, <int64_t>iv)
    elif isinstance(v, str):
        data = v.encode()  # the subclass's own encode(), as the twin calls it
        get_buffer(data, &view)
        try:
            wb_byte(b, TAG_STR)
            wb_len_bytes(b, <const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
    else:
        raise TypeError(
            f"cannot log {type(v).__name__} for key {key!r}: values must be int, float, bool, str "
            f"or None (richer objects travel as the entry's payload)")
    return 0


cdef int put_payload(WriteBuffer *b, object payload) except -1:
    cdef Py_buffer view
    if PyBytes_CheckExact(payload):
        return wb_len_bytes(b, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
    try:
        get_buffer(payload, &view)
    except (TypeError, BufferError):
        raise TypeError(f"payload must be contiguous bytes, not a non-contiguous {type(payload).__name__}") from None
    try:
        # the length in bytes, also for a memoryview of wider items (len() would count items)
        wb_len_bytes(b, <const char *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef class BatchEncoder:
    """Builds one LOG record an entry at a time: what a training process calls on ``log()``.

    ``add`` validates and encodes the entry at once, so a bad value raises in the caller and
    leaves the batch as it was; ``take`` frames everything added since the last ``take`` as one
    record (the same bytes ``encode_batch`` gives for those entries) and starts a new batch.
    One encoder is for one thread: a call that overlaps another raises RuntimeError.
    """

    cdef WriteBuffer body          # the entries encoded so far (no framing, no batch header)
    cdef dict keys                 # key str -> index, the keys defined in this batch
    cdef list names                # index -> the key object that defined it (keys' own object)
    cdef Py_ssize_t *prev_idx      # key indices, in order, of the last entry without SAME_KEYS
    cdef Py_ssize_t *cur_idx       # scratch for the entry being encoded; swapped in on success
    cdef Py_ssize_t prev_n
    cdef Py_ssize_t idx_cap        # capacity of prev_idx and cur_idx
    cdef Py_ssize_t count
    cdef int64_t t0
    cdef int64_t prev_time
    cdef bint busy                 # a call is running: re-entry (another thread) is refused

    def __cinit__(self):
        wb_init(&self.body)
        self.prev_idx = NULL
        self.cur_idx = NULL
        self.idx_cap = 0
        self.busy = False
        self._reset()

    def __dealloc__(self):
        wb_free(&self.body)
        PyMem_Free(self.prev_idx)
        PyMem_Free(self.cur_idx)

    def __len__(self):
        """Entries added since the last ``take``."""
        return self.count

    @property
    def nbytes(self):
        """Encoded size of the entries added since the last ``take`` (without the framing)."""
        return self.body.len

    def add(self, step, commit, time_us, values, payload=None):
        """Encode one entry; returns the number of entries now in the batch.

        A bad entry raises (TypeError, OverflowError, UnicodeEncodeError) and leaves the batch
        exactly as it was.
        """
        self._add(step, commit, time_us, values, payload)
        return self.count

    def take(self, writer, seq):
        """The framed LOG record of the entries added so far (possibly none); resets the batch.

        OverflowError for a writer or seq outside uint64, ValueError for a record over the
        format's size limit: the batch is kept then.
        """
        return self._take(writer, seq)

    cdef int _add(self, object step, object commit, object time_us, object values,
                  object payload) except -1:
        cdef int64_t t
        cdef Py_ssize_t mark, nkeys
        if self.busy:
            raise RuntimeError("this BatchEncoder is in use by another call; use one per thread")
        self.busy = True  # before any Python code can run (a __bool__, an __index__ ...)
        mark = self.body.len
        nkeys = PyList_GET_SIZE(self.names)
        try:
            if not PyDict_Check(values):
                raise TypeError(f"log values must be a dict, not {type(values).__name__}")
            t = check_time(time_us)
            if payload is not None and not (PyBytes_Check(payload) or PyByteArray_Check(payload)
                                            or PyMemoryView_Check(payload)):
                raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
            if not PyDict_CheckExact(values):
                values = dict(values.items())  # a subclass, in its own order (OrderedDict)
            self._put_entry(step, commit, t, <dict>values, payload)
        except BaseException:
            self._rollback(mark, nkeys)  # the batch stays exactly as it was before this call
            self.busy = False
            raise
        self.busy = False
        if self.count == 0:
            self.t0 = t
        self.prev_time = t
        self.count += 1
        return 0

    cdef int _put_entry(self, object step, object commit, int64_t t, dict values,
                        object payload) except -1:
        cdef WriteBuffer *b = &self.body
        cdef uint8_t flags = 0
        cdef Py_ssize_t n, i, pos = 0, j = 0
        cdef Py_ssize_t *swap
        cdef PyObject *k
        cdef PyObject *v
        cdef bint same
        if step is not None:
            flags |= ENTRY_HAS_STEP
        if commit is not None:
            flags |= ENTRY_COMMIT_SET
            if commit:
                flags |= ENTRY_COMMIT
        if payload is not None:
            flags |= ENTRY_HAS_PAYLOAD
        n = PyDict_Size(values)
        same = self._same_keys(values, n)
        if same:
            flags |= ENTRY_SAME_KEYS
        else:
            self._reserve_idx(n)
        wb_byte(b, flags)
        if step is not None:
            wb_uvarint(b, step_zigzag(step))
        # the first entry's delta is 0: t0 in the batch header is its time
        wb_svarint(b, t - self.prev_time if self.count else 0)
        if not same:
            wb_uvarint(b, <uint64_t>n)
        while PyDict_Next(values, &pos, &k, &v):
            if j >= n:  # a value's __int__ or __index__ grew the dict: never overrun cur_idx
                raise RuntimeError("dictionary changed size during iteration")
            if not same:
                if Py_TYPE_(k) != &PyUnicode_Type_:
                    raise TypeError(f"log keys must be str, not {type(<object>k).__name__} ({<object>k!r})")
                if j < self.prev_n and k == PyList_GET_ITEM_(self.names, self.prev_idx[j]):
                    i = self.prev_idx[j]  # the same key object as last time: no lookup
                    wb_uvarint(b, <uint64_t>i)
                else:
                    i = self._key_index(k)
                if TRACKSIDE_DEBUG and not j < self.idx_cap:
                    raise AssertionError(f"key index array overrun: {j} >= {self.idx_cap}")
                self.cur_idx[j] = i
            put_value(b, k, v)
            j += 1
        if j != n:
            raise RuntimeError("dictionary changed size during iteration")
        if payload is not None:
            put_payload(b, payload)
        if b.len > MAX_RECORD_SIZE - 4 * UVARINT_MAX:  # take() could not frame it; before the swap below
            raise RecordTooLarge(
                f"log entry too large: its batch of {b.len} bytes exceeds the record "
                f"limit of {MAX_RECORD_SIZE}; log big values as files (trackside.Artifact, Html, Image)")
        if not same:
            swap = self.prev_idx
            self.prev_idx = self.cur_idx
            self.cur_idx = swap
            self.prev_n = n
        return 0

    cdef bint _same_keys(self, dict values, Py_ssize_t n) except -1:
        # True if the keys of values, in order, are those of the last entry without SAME_KEYS.
        # No Python code runs here (exact str keys only), so the dict cannot change meanwhile.
        cdef Py_ssize_t pos = 0, j = 0, idx
        cdef PyObject *k
        cdef PyObject *o
        if n != self.prev_n:
            return False
        while PyDict_Next(values, &pos, &k, NULL):
            if TRACKSIDE_DEBUG and not j < self.prev_n:
                raise AssertionError(f"key index array overrun: {j} >= {self.prev_n}")
            idx = self.prev_idx[j]
            if k != PyList_GET_ITEM_(self.names, idx):
                # an equal string in another object: the dict lookup decides (its hash is cached)
                if Py_TYPE_(k) != &PyUnicode_Type_:
                    return False
                o = PyDict_GetItemWithError_(self.keys, k)
                if o == NULL or PyLong_AsSsize_t_(o) != idx:
                    return False
            j += 1
        return True

    cdef Py_ssize_t _key_index(self, PyObject *k) except -1:
        # Write the reference to key k (an exact str), defining it on first use in this batch.
        cdef PyObject *o = PyDict_GetItemWithError_(self.keys, k)
        cdef Py_ssize_t i, sn
        cdef const char *s
        if o != NULL:
            i = PyLong_AsSsize_t_(o)
            wb_uvarint(&self.body, <uint64_t>i)
            return i
        key = <object>k
        i = PyList_GET_SIZE(self.names)
        PyDict_SetItem(self.keys, key, i)
        self.names.append(key)
        wb_uvarint(&self.body, <uint64_t>i)
        s = PyUnicode_AsUTF8AndSize_(k, &sn)
        wb_len_bytes(&self.body, s, sn)
        return i

    cdef int _reserve_idx(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef Py_ssize_t *p
        if n <= self.idx_cap:
            return 0
        cap = max(n, 2 * self.idx_cap, 16)
        p = <Py_ssize_t *>PyMem_Realloc(self.prev_idx, <size_t>cap * sizeof(Py_ssize_t))
        if p == NULL:
            raise MemoryError()
        self.prev_idx = p
        p = <Py_ssize_t *>PyMem_Realloc(self.cur_idx, <size_t>cap * sizeof(Py_ssize_t))
        if p == NULL:
            raise MemoryError()
        self.cur_idx = p
        self.idx_cap = cap
        return 0

    cdef int _rollback(self, Py_ssize_t mark, Py_ssize_t nkeys) except -1:
        # Forget a failed add: its bytes and the keys it defined. prev_idx was not touched.
        cdef Py_ssize_t i
        self.body.len = mark
        for i in range(nkeys, PyList_GET_SIZE(self.names)):
            PyDict_DelItem(self.keys, self.names[i])
        del self.names[nkeys:]
        return 0

    cdef bytes _take(self, object writer, object seq):
        cdef uint64_t w, s
        cdef char head[4 * UVARINT_MAX]
        cdef Py_ssize_t hlen, length
        cdef bytes out
        cdef char *rec
        if self.busy:
            raise RuntimeError("this BatchEncoder is in use by another call; use one per thread")
        w = as_uint64(writer, "writer")
        s = as_uint64(seq, "seq")
        hlen = put_uvarint_raw(head, w)
        hlen += put_uvarint_raw(head + hlen, s)
        hlen += put_uvarint_raw(head + hlen, <uint64_t>self.count)
        hlen += put_uvarint_raw(head + hlen, ts_zigzag(self.t0))
        length = hlen + self.body.len
        if length > MAX_RECORD_SIZE:
            raise ValueError(
                f"record body of {length} bytes exceeds the format's limit of {MAX_RECORD_SIZE}")
        out = PyBytes_FromStringAndSize(NULL, RECORD_HEADER_SIZE + length)
        rec = PyBytes_AS_STRING(out)
        memcpy(rec + RECORD_HEADER_SIZE, head, <size_t>hlen)
        if self.body.len:
            memcpy(rec + RECORD_HEADER_SIZE + hlen, self.body.data, <size_t>self.body.len)
        self._reset()
        # the checksum runs on `out`, which nobody else has yet: safe without the GIL
        seal(rec, <uint32_t>length, RECORD_LOG, 0)
        return out

    cdef int _reset(self) except -1:
        self.body.len = 0
        if self.body.cap > BUFFER_KEEP:
            wb_free(&self.body)
        self.keys = {}
        self.names = []
        self.prev_n = 0
        self.count = 0
        self.t0 = 0
        self.prev_time = 0
        return 0


def encode_batch(writer, seq, entries):
    """One complete LOG record holding ``entries`` (an iterable of entry tuples) of ``writer``.

    Raises TypeError or OverflowError for a bad entry (nothing is returned), ValueError if the
    record would exceed the format's size limit.
    """
    cdef BatchEncoder enc = BatchEncoder.__new__(BatchEncoder)
    cdef tuple e
    if PyList_CheckExact(entries) or PyTuple_CheckExact(entries):
        # a first guess at the size, enough for a few small values an entry
        wb_reserve(&enc.body, min(len(entries) * 64, BUFFER_KEEP))
    for entry in entries:
        if PyTuple_CheckExact(entry):
            e = <tuple>entry
            if PyTuple_GET_SIZE(e) == 5:
                enc._add(e[0], e[1], e[2], e[3], e[4])
                continue
            if PyTuple_GET_SIZE(e) == 4:
                enc._add(e[0], e[1], e[2], e[3], None)
                continue
        enc.add(*entry)  # anything else: the twin's call, with its TypeErrors
    return enc._take(writer, seq)
