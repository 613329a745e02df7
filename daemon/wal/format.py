"""The WAL's format on disk, shared by its writer and its readers (leveldb's ``log_format``):
segment files named by their base offset, each opening with a checked header, then framed
records (``native/FORMAT.md``); the errors, the record and report types, and the few file
operations both sides need."""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, NamedTuple

from trackside._native.constants import (
    FORMAT_VERSION,
    SEGMENT_CRC_OFFSET,
    SEGMENT_HEADER_SIZE,
    SEGMENT_HEADER_STRUCT,
    SEGMENT_MAGIC,
    SEGMENT_NAME_DIGITS,
    SEGMENT_SUFFIX,
    mask_crc,
)

log = logging.getLogger(__name__)

Reporter = Callable[[str, int, int, str], None]
"""``reporter(path, offset, nbytes, reason)``: ``nbytes`` bytes starting at logical ``offset`` of
segment file ``path`` were dropped because of ``reason``."""

HEADER = SEGMENT_HEADER_SIZE

# Big enough that a write costs little per byte, small enough to bound memory between commits.
WRITE_THRESHOLD = 1 << 20
# Reads of this size keep a scan near disk speed with bounded memory (a record longer than a
# chunk is read whole: at most the format's 64 MiB).
READ_CHUNK = 4 << 20

SEGMENT_HEADER = struct.Struct(SEGMENT_HEADER_STRUCT)
U32 = struct.Struct("<I")
SEGMENT_NAME = re.compile(r"^(\d{%d})%s$" % (SEGMENT_NAME_DIGITS, re.escape(SEGMENT_SUFFIX)))
CUT_OFF = "record cut off by the end of the segment"
# An incomplete record with valid records after it: its length field is wrong.
RUNS_PAST = "record length runs past the end of the segment"


class WALError(Exception):
    """The WAL cannot do what was asked (closed, I/O failed, locked by another process)."""


class WALFormatError(WALError):
    """A segment header is invalid: the message names the file and what is wrong."""


class RecordTooLarge(WALError, ValueError):
    """A record is larger than the WAL's ``max_record_size``; nothing was written."""


class Record(NamedTuple):
    """One record: its header starts at logical ``offset``, ``body`` follows the header, and
    ``end`` is where the next record starts (a handle to resume reading from)."""

    offset: int
    type: int
    body: bytes
    end: int


@dataclass(frozen=True)
class Recovery:
    """What opening the WAL found. Only the last segment is scanned: earlier ones were fsynced
    whole when the writer moved past them."""

    segments: int
    records: int  # valid records in the last segment
    bytes_truncated: int  # the torn tail cut off the last segment
    bytes_damaged: int  # reported and skipped, left in place
    seconds: float


@dataclass(frozen=True)
class Verification:
    """The result of a full scan (``verify``)."""

    segments: int
    records: int
    record_bytes: int  # headers included
    damaged_bytes: int
    damage_reports: int
    tail_bytes: int  # an incomplete tail of the last segment (a write in progress, or a crash)


@dataclass
class WALStats:
    """Counters of the writer's system calls, for tests and benchmarks."""

    writes: int = 0
    bytes_written: int = 0
    fsyncs: int = 0  # of segment files, rotations and segment creation included
    segments_created: int = 0


def segment_path(directory: str, base: int) -> str:
    return os.path.join(directory, f"{base:0{SEGMENT_NAME_DIGITS}d}{SEGMENT_SUFFIX}")


def list_segments(directory: str) -> list[tuple[int, str]]:
    """``(base, path)`` of every segment file, in log order; other files are ignored."""
    found = []
    for name in os.listdir(directory):
        m = SEGMENT_NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    found.sort()
    return found


def pack_header(ident: bytes, base: int) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, HEADER, 0, ident, base, 0, 0)
    crc = mask_crc(zlib.crc32(head[:SEGMENT_CRC_OFFSET]))
    return head[:SEGMENT_CRC_OFFSET] + U32.pack(crc)


def check_header(path: str, data: bytes, base: int) -> bytes:
    """The ident of a segment whose first bytes are ``data``; WALFormatError if invalid."""
    if len(data) < HEADER:
        raise WALFormatError(
            f"{path}: {len(data)} bytes, shorter than the {HEADER}-byte segment header "
            f"(a segment that is not the last one must be complete)"
        )
    magic, version, size, flags, ident, hbase, _reserved, crc = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise WALFormatError(f"{path}: not a trackside WAL segment (bad magic {magic!r})")
    # The version is checked before the checksum: a newer version may lay its header out differently.
    if version != FORMAT_VERSION:
        raise WALFormatError(
            f"{path}: unsupported WAL format version {version}; this trackside reads version "
            f"{FORMAT_VERSION} (upgrade trackside to read it)"
        )
    if size != HEADER:
        raise WALFormatError(f"{path}: segment header size {size}, version {FORMAT_VERSION} uses {HEADER}")
    if mask_crc(zlib.crc32(data[:SEGMENT_CRC_OFFSET])) != crc:
        raise WALFormatError(f"{path}: segment header checksum mismatch (the header is damaged)")
    if flags:
        raise WALFormatError(f"{path}: unknown segment flags {flags:#x}")
    if hbase != base:
        raise WALFormatError(
            f"{path}: the header says base offset {hbase} but the file name says {base} "
            f"(a renamed or misplaced segment)"
        )
    return ident


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
