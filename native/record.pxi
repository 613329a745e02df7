# Record framing: the checksum, frame() and parse_record() (included by _codec.pyx).

cdef enum:
    CRC_CHUNK = 1 << 30         # zlib's crc32 takes an unsigned int length
    CRC_NOGIL_MIN = 16 * 1024   # below this, releasing the GIL costs more than it frees


cdef inline uint32_t crc_update_nogil(uint32_t crc, const unsigned char *p, size_t n) noexcept nogil:
    while n > CRC_CHUNK:
        crc = <uint32_t>z_crc32(crc, p, CRC_CHUNK)
        p += CRC_CHUNK
        n -= CRC_CHUNK
    return <uint32_t>z_crc32(crc, p, <unsigned int>n)


cdef uint32_t crc_update(uint32_t crc, const unsigned char *p, size_t n) noexcept:
    # Only for memory no other thread can move or free meanwhile: a held Py_buffer, or a
    # bytes object that nobody else has seen yet.
    if n >= CRC_NOGIL_MIN:
        with nogil:
            crc = crc_update_nogil(crc, p, n)
        return crc
    return crc_update_nogil(crc, p, n)


cdef inline uint32_t mask_crc32(uint32_t crc) noexcept nogil:
    return ((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA


cdef void seal(char *rec, uint32_t length, uint8_t rtype, uint8_t flags) noexcept:
    # Fill in the header of a record whose body is in place at rec + RECORD_HEADER_SIZE. The
    # checksum covers length, type, flags, reserved and the body: bytes [8, 16 + length).
    ts_store_u32le(rec + 8, length)
    rec[12] = <char>rtype
    rec[13] = <char>flags
    rec[14] = 0
    rec[15] = 0
    cdef uint32_t crc = crc_update(0, <const unsigned char *>rec + RECORD_CRC_START,
                                   <size_t>(RECORD_HEADER_SIZE - RECORD_CRC_START) + length)
    memcpy(rec, RECORD_MAGIC_C, 4)
    ts_store_u32le(rec + 4, mask_crc32(crc))


cdef int get_buffer(object obj, Py_buffer *view) except -1:
    # A contiguous byte view of obj; TypeError (or BufferError) if it has none.
    PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    return 0


def crc32(data, value=0):
    """CRC-32 (zlib's polynomial) of ``data`` (bytes-like), continuing from ``value``.

    The same number as ``zlib.crc32(data, value)``; the GIL is released for large inputs.
    """
    cdef Py_buffer view
    cdef uint32_t start
    get_buffer(data, &view)
    try:
        start = <uint32_t>PyLong_AsUnsignedLongMask(value)  # zlib's: any int, taken mod 2**32
        return crc_update(start, <const unsigned char *>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)


def frame(rtype, body, flags=0):
    """One complete record of type ``rtype`` around ``body`` (bytes-like).

    Raises ValueError for an unknown type or a body over the format's size limit.
    """
    cdef Py_buffer view
    cdef bytes out
    cdef char *rec
    cdef Py_ssize_t length
    cdef uint8_t rtype_c, flags_c
    if rtype not in _RECORD_TYPES:
        raise ValueError(f"unknown record type {rtype}")
    try:
        get_buffer(body, &view)
    except (TypeError, BufferError):
        raise TypeError(f"a record body must be bytes-like (contiguous), not {type(body).__name__}") from None
    try:
        length = view.len
        if length > MAX_RECORD_SIZE:
            raise ValueError(
                f"record body of {length} bytes exceeds the format's limit of {MAX_RECORD_SIZE}")
        if type(rtype) is int and type(flags) is int and 0 <= flags <= 0xFF:
            rtype_c = rtype
            flags_c = flags
        else:
            # the twin packs both as struct "B": the same conversion, the same struct.error
            rtype_c, flags_c = _pack_type_flags(rtype, flags)
        out = PyBytes_FromStringAndSize(NULL, RECORD_HEADER_SIZE + length)
        rec = PyBytes_AS_STRING(out)
        memcpy(rec + RECORD_HEADER_SIZE, view.buf, <size_t>length)
    finally:
        PyBuffer_Release(&view)
    seal(rec, <uint32_t>length, rtype_c, flags_c)
    return out


def parse_record(buf, Py_ssize_t pos=0, Py_ssize_t end=-1):
    """Check the record at ``buf[pos:]``: ``(status, type, body_start, body_end)``.

    Status is one of the ``PARSE_*`` constants; never raises on bad bytes (ValueError for a
    negative ``pos``). ``end`` (default: the buffer's end) bounds the bytes this call may look at.
    """
    cdef Py_buffer view
    cdef const unsigned char *p
    cdef Py_ssize_t avail, body
    cdef uint32_t crc, length
    cdef uint8_t rtype
    if pos < 0:
        raise ValueError(f"pos is {pos}; a record position is >= 0")
    get_buffer(buf, &view)
    try:
        if end < 0 or end > view.len:
            end = view.len
        avail = end - pos
        if avail <= 0:
            return PARSE_INCOMPLETE, 0, 0, 0
        p = <const unsigned char *>view.buf + pos
        if avail < RECORD_HEADER_SIZE:
            # a header cut off by the end: a torn tail if what is there starts like the magic
            if memcmp(p, RECORD_MAGIC_C, <size_t>min(avail, 4)) == 0:
                return PARSE_INCOMPLETE, 0, 0, 0
            return PARSE_BAD_MAGIC, 0, 0, 0
        if memcmp(p, RECORD_MAGIC_C, 4) != 0:
            return PARSE_BAD_MAGIC, 0, 0, 0
        length = ts_load_u32le(p + 8)
        if length > MAX_RECORD_SIZE:
            return PARSE_BAD_LENGTH, 0, 0, 0
        rtype = p[12]
        if not RECORD_TYPE_OK[rtype] or p[13] != 0 or p[14] != 0 or p[15] != 0:
            return PARSE_BAD_TYPE, 0, 0, 0
        body = pos + RECORD_HEADER_SIZE
        if <Py_ssize_t>length > end - body:
            return PARSE_INCOMPLETE, rtype, body, body + <Py_ssize_t>length
        crc = crc_update(0, p + RECORD_CRC_START,
                         <size_t>(RECORD_HEADER_SIZE - RECORD_CRC_START) + length)
        if mask_crc32(crc) != ts_load_u32le(p + 4):
            return PARSE_BAD_CHECKSUM, rtype, body, body + <Py_ssize_t>length
        return PARSE_OK, rtype, body, body + <Py_ssize_t>length
    finally:
        PyBuffer_Release(&view)
