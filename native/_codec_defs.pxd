# C-level declarations of the codec extension (_codec.pyx cimports them): the zlib and C
# helpers it calls and the write buffer and reader structs. Only declarations and C inlines,
# nothing that exists at run time: the module itself is built from _codec.pyx and the .pxi
# files it includes; the numbers come from constants.py at import.
#
# Why not _codec.pxd: Cython looks up a module's own .pxd by its import name
# (trackside/_native/_codec.pxd), which the native/ -> trackside._native folder mapping never
# matches, so it would be silently ignored. It is cimported as native._codec_defs, a name
# that exists only at compile time, found from the source tree's root.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from cpython.object cimport PyObject, PyTypeObject


# The C-API calls of the hot loops, taking borrowed PyObject* (from PyDict_Next) so that no
# reference is taken where none is needed. Renamed so they don't clash with cpython.* cimports.
cdef extern from "Python.h":
    PyTypeObject PyFloat_Type_ "PyFloat_Type"
    PyTypeObject PyLong_Type_ "PyLong_Type"
    PyTypeObject PyUnicode_Type_ "PyUnicode_Type"
    PyObject *Py_True_ "Py_True"
    PyObject *Py_False_ "Py_False"
    PyObject *Py_None_ "Py_None"
    PyTypeObject *Py_TYPE_ "Py_TYPE"(PyObject *o)
    double PyFloat_AS_DOUBLE_ "PyFloat_AS_DOUBLE"(PyObject *o)
    long long PyLong_AsLongLongAndOverflow_ "PyLong_AsLongLongAndOverflow"(PyObject *o, int *overflow) except? -1
    Py_ssize_t PyLong_AsSsize_t_ "PyLong_AsSsize_t"(PyObject *o) except? -1
    const char *PyUnicode_AsUTF8AndSize_ "PyUnicode_AsUTF8AndSize"(PyObject *o, Py_ssize_t *size) except NULL
    PyObject *PyDict_GetItemWithError_ "PyDict_GetItemWithError"(object d, PyObject *key) except? NULL
    PyObject *PyList_GET_ITEM_ "PyList_GET_ITEM"(object l, Py_ssize_t i)


cdef extern from "zlib.h":
    # named z_crc32 here: the module's own crc32() is the Python-level function
    unsigned long z_crc32 "crc32"(unsigned long crc, const unsigned char *buf, unsigned int len) nogil


cdef extern from *:
    """
    /* Internal consistency checks (write buffer and index bounds) compile away unless the
       extension is built with CFLAGS=-DTRACKSIDE_DEBUG=1. Checks on input bytes are never
       debug-only: decoding untrusted bytes always checks its bounds. */
    #ifndef TRACKSIDE_DEBUG
    #define TRACKSIDE_DEBUG 0
    #endif

    #include <string.h>
    #include <stdint.h>

    #if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define TS_BIG_ENDIAN 1
    #else
    #define TS_BIG_ENDIAN 0
    #endif

    static inline uint64_t ts_bswap64(uint64_t x) {
    #if defined(__GNUC__) || defined(__clang__)
        return __builtin_bswap64(x);
    #else
        x = ((x & 0x00000000FFFFFFFFULL) << 32) | ((x & 0xFFFFFFFF00000000ULL) >> 32);
        x = ((x & 0x0000FFFF0000FFFFULL) << 16) | ((x & 0xFFFF0000FFFF0000ULL) >> 16);
        return ((x & 0x00FF00FF00FF00FFULL) << 8) | ((x & 0xFF00FF00FF00FF00ULL) >> 8);
    #endif
    }

    /* binary64, little endian, whatever the host order (the format's float tag) */
    static inline void ts_store_f64le(char *p, double v) {
        uint64_t u;
        memcpy(&u, &v, 8);
    #if TS_BIG_ENDIAN
        u = ts_bswap64(u);
    #endif
        memcpy(p, &u, 8);
    }

    static inline double ts_load_f64le(const unsigned char *p) {
        uint64_t u;
        double v;
        memcpy(&u, p, 8);
    #if TS_BIG_ENDIAN
        u = ts_bswap64(u);
    #endif
        memcpy(&v, &u, 8);
        return v;
    }

    static inline void ts_store_u32le(char *p, uint32_t v) {
        p[0] = (char)(v & 0xFF);
        p[1] = (char)((v >> 8) & 0xFF);
        p[2] = (char)((v >> 16) & 0xFF);
        p[3] = (char)((v >> 24) & 0xFF);
    }

    static inline uint32_t ts_load_u32le(const unsigned char *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }

    /* what an empty buffer points at when its exporter gives NULL */
    static const unsigned char ts_empty[1] = {0};

    /* zigzag: small magnitudes of either sign become small unsigned numbers */
    static inline uint64_t ts_zigzag(int64_t n) {
        return ((uint64_t)n << 1) ^ (0 - ((uint64_t)n >> 63));
    }

    static inline int64_t ts_unzigzag(uint64_t u) {
        return (int64_t)((u >> 1) ^ (0 - (u & 1)));
    }

    /* 1 if a + b leaves int64 (then *r is unset) */
    static inline int ts_add_overflows(int64_t a, int64_t b, int64_t *r) {
    #if defined(__GNUC__) || defined(__clang__)
        return __builtin_add_overflow(a, b, r);
    #else
        if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b)) return 1;
        *r = a + b;
        return 0;
    #endif
    }
    """
    const int TRACKSIDE_DEBUG
    const unsigned char ts_empty[1]
    uint64_t ts_bswap64(uint64_t x) nogil
    void ts_store_f64le(char *p, double v) nogil
    double ts_load_f64le(const unsigned char *p) nogil
    void ts_store_u32le(char *p, uint32_t v) nogil
    uint32_t ts_load_u32le(const unsigned char *p) nogil
    uint64_t ts_zigzag(int64_t n) nogil
    int64_t ts_unzigzag(uint64_t u) nogil
    bint ts_add_overflows(int64_t a, int64_t b, int64_t *r) nogil


# A growable byte buffer in C memory (buffer.pxi).
cdef struct WriteBuffer:
    char *data
    Py_ssize_t len
    Py_ssize_t cap


# A cursor over bytes that may be anything: every read checks against `end` (decode.pxi).
cdef struct Reader:
    const unsigned char *pos
    const unsigned char *end
