# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""The Cython codec: WAL record framing and the log-entry codec.

The twin of ``_twin.py`` (the reference): the same names, the same bytes, the same exception
classes. Numbers come from ``constants.py``; the record header layout is fixed in C and
checked against it at import, so a mismatched build refuses to import and the twin runs.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_Check
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_Check, PyDict_CheckExact, PyDict_Copy, PyDict_DelItem, PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact, PyFloat_FromDouble
from cpython.list cimport PyList_CheckExact, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact, PyLong_AsUnsignedLongLong, PyLong_AsUnsignedLongMask, PyLong_Check, PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.memoryview cimport PyMemoryView_Check
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8

from native._codec_defs cimport *  # compile-time only: see the note in _codec_defs.pxd

import operator as _operator
import struct as _struct

from . import constants as _c
from .errors import CodecError, RecordTooLarge

IMPLEMENTATION = "cython"

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

# -- the numbers, from constants.py ---------------------------------------------------------
# The record header layout is written field by field in C (record.pxi): these two are fixed
# here and checked below against constants.py.
cdef enum:
    RECORD_HEADER_SIZE = 16
    RECORD_CRC_START = 8

if (_c.RECORD_HEADER_SIZE != RECORD_HEADER_SIZE or _c.RECORD_CRC_START != RECORD_CRC_START
        or _c.RECORD_HEADER_STRUCT != "<4sIIBBH" or len(_c.RECORD_MAGIC) != 4
        or _c.INT64_MIN != -(1 << 63) or _c.INT64_MAX != (1 << 63) - 1
        or not 0 < _c.MAX_RECORD_SIZE <= 0xFFFFFFFF
        or not 0 < _c.TIME_US_LIMIT <= (1 << 63)  # keeps every time delta inside int64
        or not all(0 < t < 256 for t in _c.RECORD_TYPES)):
    raise ImportError("trackside._native._codec does not match native/constants.py: rebuild it "
                      "(pip install -e .) or update the C layout in _codec.pyx")

cdef uint8_t ENTRY_HAS_STEP = _c.ENTRY_HAS_STEP
cdef uint8_t ENTRY_COMMIT_SET = _c.ENTRY_COMMIT_SET
cdef uint8_t ENTRY_COMMIT = _c.ENTRY_COMMIT
cdef uint8_t ENTRY_HAS_PAYLOAD = _c.ENTRY_HAS_PAYLOAD
cdef uint8_t ENTRY_SAME_KEYS = _c.ENTRY_SAME_KEYS
cdef uint8_t ENTRY_FLAGS_KNOWN = _c.ENTRY_FLAGS_KNOWN

cdef uint8_t TAG_NONE = _c.TAG_NONE
cdef uint8_t TAG_FALSE = _c.TAG_FALSE
cdef uint8_t TAG_TRUE = _c.TAG_TRUE
cdef uint8_t TAG_INT = _c.TAG_INT
cdef uint8_t TAG_FLOAT = _c.TAG_FLOAT
cdef uint8_t TAG_STR = _c.TAG_STR

cdef uint8_t RECORD_LOG = _c.RECORD_LOG
cdef uint32_t MAX_RECORD_SIZE = _c.MAX_RECORD_SIZE
cdef uint32_t CRC_MASK_DELTA = _c.CRC_MASK_DELTA
cdef int64_t TIME_US_LIMIT = _c.TIME_US_LIMIT

cdef int PARSE_OK = _c.PARSE_OK
cdef int PARSE_INCOMPLETE = _c.PARSE_INCOMPLETE
cdef int PARSE_BAD_MAGIC = _c.PARSE_BAD_MAGIC
cdef int PARSE_BAD_LENGTH = _c.PARSE_BAD_LENGTH
cdef int PARSE_BAD_TYPE = _c.PARSE_BAD_TYPE
cdef int PARSE_BAD_CHECKSUM = _c.PARSE_BAD_CHECKSUM

cdef char RECORD_MAGIC_C[4]
memcpy(RECORD_MAGIC_C, <const char *>_c.RECORD_MAGIC, 4)
cdef bint RECORD_TYPE_OK[256]
for _t in range(256):
    RECORD_TYPE_OK[_t] = _t in _c.RECORD_TYPES
del _t

# A debug build (CFLAGS=-DTRACKSIDE_DEBUG=1 pip install -e .) checks the codec's own bounds.
_DEBUG = bool(TRACKSIDE_DEBUG)

cdef frozenset _RECORD_TYPES = _c.RECORD_TYPES
cdef object _INT64_MIN = _c.INT64_MIN
cdef object _INT64_MAX = _c.INT64_MAX
cdef object _UINT64_MAX = 0xFFFFFFFFFFFFFFFF
cdef str _TIME_LIMIT_TEXT = (f"2**{_c.TIME_US_LIMIT.bit_length() - 1}"
                             if _c.TIME_US_LIMIT & (_c.TIME_US_LIMIT - 1) == 0 else str(_c.TIME_US_LIMIT))
cdef object _index = _operator.index
cdef object _type_flags = _struct.Struct("<BB")


def _pack_type_flags(rtype, flags):
    # the twin packs type and flags as struct "B": the same conversion, the same struct.error
    return _type_flags.unpack(_type_flags.pack(rtype, flags))


include "buffer.pxi"
include "record.pxi"
include "encode.pxi"
include "decode.pxi"
include "columns.pxi"
include "merge.pxi"
