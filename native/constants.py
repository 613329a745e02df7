"""The WAL byte format in numbers. ``FORMAT.md`` beside this file is the prose; the two agree.

Every other module (the Cython codec, its Python twin, the WAL reader and writer) takes its
numbers from here, so a format change is one edit in one place.
"""

FORMAT_VERSION = 1

# -- segment header ------------------------------------------------------------------------
# The first eight bytes are PNG-style: a high-bit byte (catches 7-bit transfers), the name,
# CR LF (catches newline translation), ^Z (stops `type` on DOS) and LF.
SEGMENT_MAGIC = b"\x89TSW\r\n\x1a\n"
SEGMENT_HEADER_SIZE = 48
# magic, version, header size, flags, stream ident, base offset, reserved, masked crc32
SEGMENT_HEADER_STRUCT = "<8sHHI16sQII"
SEGMENT_CRC_OFFSET = 44  # the checksum covers bytes [0, 44)
SEGMENT_SUFFIX = ".wal"
SEGMENT_NAME_DIGITS = 20  # a segment is named by its base offset, zero-padded: sorts by offset

# -- record header -------------------------------------------------------------------------
RECORD_MAGIC = b"\xd3\x7e\x5a\xa1"  # resynchronization marker; never all zeros
RECORD_HEADER_SIZE = 16
# magic, masked crc32, body length, type, flags, reserved
RECORD_HEADER_STRUCT = "<4sIIBBH"
RECORD_CRC_START = 8  # the checksum covers bytes [8, 16 + length): length, type, flags, body
MAX_RECORD_SIZE = 64 << 20  # hard ceiling of the format; a writer may configure a lower limit

# record types; 0 is never valid so that zeroed blocks never parse as a record
RECORD_LOG = 1  # a batch of log entries from one writer (see "LOG body")
RECORD_EVENT = 2  # an opaque control event (run start, config, summary, finish ...)
RECORD_TYPES = frozenset({RECORD_LOG, RECORD_EVENT})

# -- checksum masking ----------------------------------------------------------------------
# A CRC of bytes that themselves contain CRCs is weak; rotating and adding a constant keeps a
# record that embeds another record (a replayed WAL, a nested frame) from checking by accident.
CRC_MASK_DELTA = 0xA282EAD8


def mask_crc(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# -- LOG body: entries ----------------------------------------------------------------------
ENTRY_HAS_STEP = 0x01
ENTRY_COMMIT_SET = 0x02  # commit was given (True or False), not None
ENTRY_COMMIT = 0x04  # its value, meaningful only with ENTRY_COMMIT_SET
ENTRY_HAS_PAYLOAD = 0x08
ENTRY_SAME_KEYS = 0x10  # the keys, in order, are those of the previous entry of the batch
ENTRY_FLAGS_KNOWN = 0x1F

# value tags
TAG_NONE = 0
TAG_FALSE = 1
TAG_TRUE = 2
TAG_INT = 3  # zigzag varint, int64 range
TAG_FLOAT = 4  # IEEE 754 binary64, little endian
TAG_STR = 5  # uvarint length, UTF-8 bytes

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# entry times are microseconds since the epoch, non-negative; the bound keeps every delta
# between two entry times inside int64
TIME_US_LIMIT = 1 << 62

# -- parse_record results ---------------------------------------------------------------------
PARSE_OK = 0
PARSE_INCOMPLETE = 1  # the buffer ends before the record does (a torn tail, or read more)
PARSE_BAD_MAGIC = 2
PARSE_BAD_LENGTH = 3
PARSE_BAD_TYPE = 4
PARSE_BAD_CHECKSUM = 5
PARSE_REASONS = {
    PARSE_BAD_MAGIC: "no record marker",
    PARSE_BAD_LENGTH: "record length out of range",
    PARSE_BAD_TYPE: "unknown record type or flags",
    PARSE_BAD_CHECKSUM: "checksum mismatch",
}
