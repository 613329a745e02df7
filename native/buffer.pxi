# The growable write buffer and the varint writers (included by _codec.pyx).
#
# Writers reserve the most bytes a write can take, then store without further checks; with
# TRACKSIDE_DEBUG=1 every store is checked against the capacity.

cdef enum:
    UVARINT_MAX = 10        # bytes of the longest uvarint (64 bits, 7 per byte)
    BUFFER_MIN = 256        # first allocation of a buffer
    BUFFER_KEEP = 1 << 20   # a buffer bigger than this is freed at reset, not kept for reuse


cdef inline void wb_init(WriteBuffer *b) noexcept:
    b.data = NULL
    b.len = 0
    b.cap = 0


cdef inline void wb_free(WriteBuffer *b) noexcept:
    PyMem_Free(b.data)
    wb_init(b)


cdef int wb_grow(WriteBuffer *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap if b.cap else BUFFER_MIN
    cdef char *data
    if extra > PY_SSIZE_T_MAX - b.len:
        raise MemoryError()
    while cap < b.len + extra:
        if cap > PY_SSIZE_T_MAX // 2:
            cap = b.len + extra
            break
        cap *= 2
    data = <char *>PyMem_Realloc(b.data, <size_t>cap)
    if data == NULL:
        raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef inline int wb_reserve(WriteBuffer *b, Py_ssize_t extra) except -1:
    if b.len + extra > b.cap:
        return wb_grow(b, extra)
    return 0


cdef inline int wb_check(const WriteBuffer *b, Py_ssize_t n) except -1:
    # Debug builds only: a store of n bytes after wb_reserve stays inside the allocation.
    if TRACKSIDE_DEBUG:
        if n < 0 or b.len + n > b.cap:
            raise AssertionError(f"write buffer overrun: {b.len} + {n} > {b.cap}")
    return 0


cdef inline Py_ssize_t put_uvarint_raw(char *p, uint64_t v) noexcept nogil:
    # LEB128; the caller guarantees UVARINT_MAX bytes at p.
    cdef Py_ssize_t i = 0
    while v >= 0x80:
        p[i] = <char>((v & 0x7F) | 0x80)
        v >>= 7
        i += 1
    p[i] = <char>v
    return i + 1


cdef inline int wb_byte(WriteBuffer *b, uint8_t v) except -1:
    wb_reserve(b, 1)
    wb_check(b, 1)
    b.data[b.len] = <char>v
    b.len += 1
    return 0


cdef inline int wb_uvarint(WriteBuffer *b, uint64_t v) except -1:
    wb_reserve(b, UVARINT_MAX)
    wb_check(b, UVARINT_MAX)
    b.len += put_uvarint_raw(b.data + b.len, v)
    return 0


cdef inline int wb_svarint(WriteBuffer *b, int64_t v) except -1:
    return wb_uvarint(b, ts_zigzag(v))


cdef inline int wb_bytes(WriteBuffer *b, const char *p, Py_ssize_t n) except -1:
    wb_reserve(b, n)
    wb_check(b, n)
    memcpy(b.data + b.len, p, <size_t>n)
    b.len += n
    return 0


cdef inline int wb_len_bytes(WriteBuffer *b, const char *p, Py_ssize_t n) except -1:
    # uvarint length, then the bytes: strings, key names, payloads
    wb_reserve(b, UVARINT_MAX + n)
    wb_check(b, UVARINT_MAX + n)
    b.len += put_uvarint_raw(b.data + b.len, <uint64_t>n)
    memcpy(b.data + b.len, p, <size_t>n)
    b.len += n
    return 0
