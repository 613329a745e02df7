"""The write-ahead log: every record the daemon receives is appended here before anything else.

A WAL is a directory of segment files in the format of ``native/FORMAT.md``. One process writes
(``WAL``, which holds a lock on the directory); any number read (``read_records``,
``read_record``, ``verify``), also while it writes.

Contracts:

- ``WAL.append`` buffers a framed record in memory and returns its end offset; nothing is on
  disk yet.
- ``WAL.commit`` returns once everything appended up to an offset is durable at the WAL's level:
  ``"fsync"`` (written and fdatasync'ed), ``"flush"`` (written to the OS: survives a crash of the
  process, not of the machine) or ``"none"`` (returns at once: the buffer is written when it
  passes 1 MiB and on close, and a crash loses what is still buffered). Concurrent commits share
  one write and one fsync (group commit).
- Damage is reported to a callback ``reporter(path, offset, nbytes, reason)`` and skipped, never
  raised. Only a bad segment header raises (``WALFormatError``): that is the wrong file or an
  unknown version, not damage.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional

from trackside import _native
from trackside._native.constants import (
    FORMAT_VERSION,
    MAX_RECORD_SIZE,
    PARSE_INCOMPLETE,
    PARSE_OK,
    PARSE_REASONS,
    RECORD_EVENT,
    RECORD_HEADER_SIZE,
    RECORD_MAGIC,
    SEGMENT_CRC_OFFSET,
    SEGMENT_HEADER_SIZE,
    SEGMENT_HEADER_STRUCT,
    SEGMENT_MAGIC,
    SEGMENT_NAME_DIGITS,
    SEGMENT_SUFFIX,
    mask_crc,
)

__all__ = [
    "WAL",
    "Record",
    "Recovery",
    "RecordTooLarge",
    "Reporter",
    "Verification",
    "WALError",
    "WALFormatError",
    "WALStats",
    "read_record",
    "read_records",
    "verify",
]

log = logging.getLogger(__name__)

Reporter = Callable[[str, int, int, str], None]
"""``reporter(path, offset, nbytes, reason)``: ``nbytes`` bytes starting at logical ``offset`` of
segment file ``path`` were dropped because of ``reason``."""

DURABILITY_LEVELS = ("fsync", "flush", "none")
HEADER = SEGMENT_HEADER_SIZE

# Big enough that a write costs little per byte, small enough to bound memory between commits.
WRITE_THRESHOLD = 1 << 20
# Reads of this size keep a scan near disk speed with bounded memory (a record longer than a
# chunk is read whole: at most the format's 64 MiB).
READ_CHUNK = 4 << 20

_segment_header = struct.Struct(SEGMENT_HEADER_STRUCT)
_u32 = struct.Struct("<I")
_segment_name = re.compile(r"^(\d{%d})%s$" % (SEGMENT_NAME_DIGITS, re.escape(SEGMENT_SUFFIX)))
_CUT_OFF = "record cut off by the end of the segment"
# An incomplete record with valid records after it: its length field is wrong.
_RUNS_PAST = "record length runs past the end of the segment"


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


def _segment_path(directory: str, base: int) -> str:
    return os.path.join(directory, f"{base:0{SEGMENT_NAME_DIGITS}d}{SEGMENT_SUFFIX}")


def _list_segments(directory: str) -> list[tuple[int, str]]:
    """``(base, path)`` of every segment file, in log order; other files are ignored."""
    found = []
    for name in os.listdir(directory):
        m = _segment_name.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    found.sort()
    return found


def _pack_header(ident: bytes, base: int) -> bytes:
    head = _segment_header.pack(SEGMENT_MAGIC, FORMAT_VERSION, HEADER, 0, ident, base, 0, 0)
    crc = mask_crc(zlib.crc32(head[:SEGMENT_CRC_OFFSET]))
    return head[:SEGMENT_CRC_OFFSET] + _u32.pack(crc)


def _check_header(path: str, data: bytes, base: int) -> bytes:
    """The ident of a segment whose first bytes are ``data``; WALFormatError if invalid."""
    if len(data) < HEADER:
        raise WALFormatError(
            f"{path}: {len(data)} bytes, shorter than the {HEADER}-byte segment header "
            f"(a segment that is not the last one must be complete)"
        )
    magic, version, size, flags, ident, hbase, _reserved, crc = _segment_header.unpack_from(data)
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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _log_damage(path: str, offset: int, nbytes: int, reason: str) -> None:
    log.warning("WAL damage in %s: %d bytes dropped at offset %d: %s", path, nbytes, offset, reason)


class _SegmentScan:
    """The records of one open segment file from file position ``pos``, read chunk by chunk
    into one reused buffer.

    After iterating: ``valid_end`` is the file position after the last valid record and ``tail``
    the number of bytes after it that no valid record follows (clean end or torn tail).
    """

    def __init__(
        self,
        parse,
        fd: int,
        path: str,
        base: int,
        pos: int,
        report: Reporter,
        final: bool,
        later_exists: Callable[[], bool],
        buf: Optional[bytearray] = None,
    ):
        self.parse = parse
        self.fd = fd
        self.path = path
        self.base = base
        self.report = report
        self.final = final  # a later segment exists, so this one is complete
        self.later_exists = later_exists
        self.buf = bytearray() if buf is None else buf  # reused from segment to segment
        self.n = 0  # buf[:n] holds file bytes; the rest is room for the next read
        self.at = pos  # file position of buf[0]
        self.eof = False
        self.valid_end = pos
        self.tail = 0

    def _offset(self, i: int) -> int:
        return self.base + self.at + i - HEADER

    def _read(self) -> int:
        # Sized by the file, so that a small segment does not cost a whole chunk of buffer.
        want = min(READ_CHUNK, os.fstat(self.fd).st_size - self.at - self.n)
        if want <= 0:
            return 0
        if len(self.buf) < self.n + want:
            self.buf.extend(bytes(self.n + want - len(self.buf)))
        with memoryview(self.buf) as view:
            got = os.preadv(self.fd, [view[self.n : self.n + want]], self.at + self.n)
        self.n += got
        return got

    def _more(self, keep_from: int) -> bool:
        """Drop ``buf[:keep_from]`` and read the next chunk; False at the end of the file."""
        if keep_from:
            rest = self.n - keep_from
            self.buf[:rest] = self.buf[keep_from : self.n]
            self.at += keep_from
            self.n = rest
        if self._read():
            return True
        if not self.final and self.later_exists():
            # The writer has moved to a new segment, so this one is finished: read its rest
            # before deciding that an incomplete tail is the end.
            self.final = True
            if self._read():
                return True
        self.eof = True
        return False

    def __iter__(self) -> Iterator[Record]:
        parse = self.parse
        i = 0
        while True:
            status, rtype, body_start, body_end = parse(self.buf, i, self.n)
            if status == PARSE_OK:
                yield Record(
                    self._offset(i), rtype, bytes(memoryview(self.buf)[body_start:body_end]), self._offset(body_end)
                )
                i = body_end
                self.valid_end = self.at + i
                continue
            if status == PARSE_INCOMPLETE and not self.eof:
                self._more(i)
                i = 0
                continue
            if status == PARSE_INCOMPLETE and i == self.n:
                return  # the end, exactly at a record boundary
            start = self.at + i
            i = self._resync(i)
            if i is None:
                self.tail = self.at + self.n - start
                if self.final:
                    self.report(self.path, self.base + start - HEADER, self.tail, PARSE_REASONS.get(status, _CUT_OFF))
                return
            self.report(
                self.path, self.base + start - HEADER, self.at + i - start, PARSE_REASONS.get(status, _RUNS_PAST)
            )

    def _resync(self, i: int) -> Optional[int]:
        """The index in ``buf`` of the next valid record after the bad byte ``buf[i]``, or None
        if the file holds none (``buf[:n]`` then ends at the end of the file)."""
        parse = self.parse
        j = i + 1
        while True:
            k = self.buf.find(RECORD_MAGIC, j, self.n)
            if k < 0:
                if self.eof:
                    return None
                # A marker may straddle the chunk boundary: keep its possible first bytes.
                keep = max(j, self.n - len(RECORD_MAGIC) + 1)
                self._more(keep)
                j = 0
                continue
            status = parse(self.buf, k, self.n)[0]
            if status == PARSE_OK:
                return k
            if status == PARSE_INCOMPLETE and not self.eof:
                self._more(k)
                j = 0
                continue
            j = k + 1


class _Tally:
    __slots__ = ("segments", "tail", "damaged", "reports")

    def __init__(self):
        self.segments = self.tail = self.damaged = self.reports = 0


def _iter_records(
    directory: str, start: int, report: Reporter, parse, stop: Optional[int] = None, tally: Optional[_Tally] = None
) -> Iterator[Record]:
    segments = _list_segments(directory)
    if not segments:
        return
    k = max(bisect.bisect_right([b for b, _ in segments], start) - 1, 0)
    base, path = segments[k]
    pos = HEADER + max(start - base, 0)
    ident = None
    buf = bytearray()
    while True:
        final = k < len(segments) - 1
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # deleted by a retention policy while we read
            fd = -1
        if fd >= 0:
            try:
                head = os.pread(fd, HEADER, 0)
                # A short last segment is one being created (or a crash during rotation): empty.
                if len(head) == HEADER or final:
                    seg_ident = _check_header(path, head, base)
                    if ident is None:
                        ident = seg_ident
                    elif seg_ident != ident:
                        raise WALFormatError(f"{path}: the segment belongs to another WAL (ident differs)")
                    scan = _SegmentScan(
                        parse,
                        fd,
                        path,
                        base,
                        pos,
                        report,
                        final,
                        lambda b=base: any(o > b for o, _ in _list_segments(directory)),
                        buf,
                    )
                    for rec in scan:
                        if stop is not None and rec.offset >= stop:
                            return
                        yield rec
                    if tally is not None:
                        tally.segments += 1
                        if not scan.final:
                            tally.tail += scan.tail
            finally:
                os.close(fd)
        k += 1
        if k >= len(segments):
            # Listed again only at the end of the listing: the writer may have rotated meanwhile.
            segments = _list_segments(directory)
            k = bisect.bisect_right([b for b, _ in segments], base)
            if k >= len(segments):
                return
        base, path = segments[k]
        pos = HEADER


def read_records(
    directory: str, start: int = 0, reporter: Optional[Reporter] = None, *, stop: Optional[int] = None, codec=None
) -> Iterator[Record]:
    """The records of the WAL in ``directory`` from logical offset ``start`` (0 or a
    ``Record.end``), in order, without opening it for writing (another process may be writing).

    Only what is in the files is read. Damage is reported to ``reporter`` (default: a logged
    warning) and skipped; an incomplete record at the end is the end. ``stop``: no record that
    starts at or after it. Raises WALFormatError on a bad segment header.
    """
    parse = (codec or _native).parse_record
    yield from _iter_records(os.fspath(directory), start, reporter or _log_damage, parse, stop)


def read_record(
    directory: str, offset: int, end: int, reporter: Optional[Reporter] = None, *, codec=None
) -> Optional[Record]:
    """The one record from logical ``offset`` to ``end`` (a ``Record``'s, or an append's start
    and end), read with a single ``pread`` once it is in the files (``written_offset``): the
    way back to a record whose bytes were let go from memory. None, with the damage reported
    to ``reporter``, when the bytes there are not that record."""
    directory = os.fspath(directory)
    report = reporter or _log_damage
    segments = _list_segments(directory)
    k = bisect.bisect_right([b for b, _ in segments], offset) - 1
    if k < 0:
        report(directory, offset, end - offset, "no segment holds the record")
        return None
    base, path = segments[k]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # deleted by a retention policy
        report(path, offset, end - offset, "the segment is gone")
        return None
    try:
        data = os.pread(fd, end - offset, HEADER + offset - base)
    finally:
        os.close(fd)
    status, rtype, body_start, body_end = (codec or _native).parse_record(data)
    if status != PARSE_OK or body_end != len(data):
        report(path, offset, end - offset, PARSE_REASONS.get(status, _CUT_OFF))
        return None
    return Record(offset, rtype, data[body_start:body_end], end)


def verify(directory: str, reporter: Optional[Reporter] = None, *, codec=None) -> Verification:
    """Scan every segment of the WAL in ``directory``; damage goes to ``reporter`` as it is found.
    Raises WALFormatError on a bad segment header."""
    tally = _Tally()
    inner = reporter or _log_damage

    def count(path, offset, nbytes, reason):
        tally.damaged += nbytes
        tally.reports += 1
        inner(path, offset, nbytes, reason)

    records = nbytes = 0
    for rec in _iter_records(os.fspath(directory), 0, count, (codec or _native).parse_record, tally=tally):
        records += 1
        nbytes += rec.end - rec.offset
    return Verification(tally.segments, records, nbytes, tally.damaged, tally.reports, tally.tail)


class WAL:
    """The writer of one WAL directory (one per directory: a second opener gets WALError).

    Opening creates the directory (mode 0700) and the first segment, or recovers: checks every
    segment header (WALFormatError on a bad one), scans the last segment, truncates a torn tail
    and reports damage before it. ``recovery`` says what was found. Thread-safe.
    """

    def __init__(
        self,
        directory,
        *,
        durability: str = "fsync",
        segment_size: int = 64 << 20,
        max_record_size: int = 16 << 20,
        reporter: Optional[Reporter] = None,
        codec=None,
    ):
        if durability not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY_LEVELS)}, not {durability!r}")
        if segment_size < HEADER + RECORD_HEADER_SIZE:
            raise ValueError(f"segment_size {segment_size} is too small: a segment holds a {HEADER}-byte header")
        if not RECORD_HEADER_SIZE < max_record_size <= RECORD_HEADER_SIZE + MAX_RECORD_SIZE:
            raise ValueError(
                f"max_record_size {max_record_size} must be between {RECORD_HEADER_SIZE + 1} and "
                f"{RECORD_HEADER_SIZE + MAX_RECORD_SIZE} (the format's limit)"
            )
        self.directory = os.path.abspath(os.fspath(directory))
        self.durability = durability
        self.segment_size = segment_size
        self.max_record_size = max_record_size
        self.reporter = reporter or _log_damage
        self.codec = codec or _native
        self.stats = WALStats()

        self._lock = threading.Lock()  # the append buffer and offsets
        self._io_lock = threading.Lock()  # the files: held across a write and its fsync
        self._buf = bytearray()
        self._closed = False
        self._failed: Optional[BaseException] = None
        self._fd = self._dir_fd = -1

        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            _fsync_dir(os.path.dirname(self.directory))  # or the new directory may vanish in a crash
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WALError(f"{self.directory}: the WAL is open for writing elsewhere") from None
            self.recovery = self._recover()
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._dir_fd)
            raise
        # Invariants: _written + len(_buf) == _end; _synced <= _written; _durable <= _written.
        self._end = self._written = self._synced = self._durable = self._seg_base + self._seg_size - HEADER

    # -- opening ---------------------------------------------------------------------------

    def _recover(self) -> Recovery:
        t0 = time.perf_counter()
        segments = _list_segments(self.directory)
        self.ident = None
        reinit = False
        for k, (base, path) in enumerate(segments):
            with open(path, "rb") as f:
                head = f.read(HEADER)
            if len(head) < HEADER and k == len(segments) - 1:
                reinit = True  # a crash while the segment was being created: it holds nothing
                break
            ident = _check_header(path, head, base)
            if self.ident is None:
                self.ident = ident
            elif ident != self.ident:
                raise WALFormatError(
                    f"{path}: the segment belongs to another WAL (ident {ident.hex()}, "
                    f"the other segments have {self.ident.hex()})"
                )
        if self.ident is None:
            self.ident = os.urandom(16)
        if not segments or reinit:
            base = segments[-1][0] if segments else 0
            self._create_segment(base)
            return Recovery(len(segments) or 1, 0, 0, 0, time.perf_counter() - t0)

        base, path = segments[-1]
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self._fd, self._seg_base, self._seg_path = fd, base, path
        damaged = 0

        def report(path, offset, nbytes, reason):
            nonlocal damaged
            damaged += nbytes
            self.reporter(path, offset, nbytes, reason)

        scan = _SegmentScan(self.codec.parse_record, fd, path, base, HEADER, report, False, lambda: False)
        records = sum(1 for _ in scan)
        if scan.tail:
            log.info(
                "WAL %s: truncated a torn tail of %d bytes at offset %d",
                path,
                scan.tail,
                base + scan.valid_end - HEADER,
            )
            os.ftruncate(fd, scan.valid_end)
        # The previous writer may have left unsynced data (durability "flush" or "none"): make
        # everything we keep durable, so durable_offset starts true.
        os.fsync(fd)
        self.stats.fsyncs += 1
        self._seg_size = scan.valid_end
        return Recovery(len(segments), records, scan.tail, damaged, time.perf_counter() - t0)

    def _create_segment(self, base: int) -> None:
        """Make the segment starting at logical ``base`` the active one: header written, file
        and directory fsynced before any record goes in."""
        path = _segment_path(self.directory, base)
        # O_TRUNC, not O_EXCL: a file of that name can only be left by a failed creation (we
        # hold the directory lock, and re-initialization replaces a short one).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            header = _pack_header(self.ident, base)
            if os.write(fd, header) != len(header):
                raise OSError(f"short write of the segment header of {path}")
            os.fsync(fd)
            os.fsync(self._dir_fd)
        except BaseException:
            os.close(fd)
            raise
        old = self._fd
        self._fd, self._seg_base, self._seg_path, self._seg_size = fd, base, path, HEADER
        if old >= 0:
            os.close(old)
        self.stats.fsyncs += 1
        self.stats.segments_created += 1

    # -- writing ---------------------------------------------------------------------------

    def append(self, record) -> int:
        """Buffer one complete framed record (from ``codec.frame`` or ``codec.encode_batch``)
        and return its end offset. Not durable until ``commit``. Raises RecordTooLarge above
        ``max_record_size`` (nothing is written), ValueError if ``record`` is not one record,
        WALError if the WAL is closed or failed."""
        n = len(record)
        if n > self.max_record_size:
            raise RecordTooLarge(
                f"record of {n} bytes exceeds this WAL's max_record_size of {self.max_record_size} "
                f"bytes; split the batch"
            )
        # A cheap check that keeps raw bytes out: they would read back as damage.
        if (
            n < RECORD_HEADER_SIZE
            or record[:4] != RECORD_MAGIC
            or _u32.unpack_from(record, 8)[0] != n - RECORD_HEADER_SIZE
        ):
            raise ValueError("append takes one complete framed record (from codec.frame or codec.encode_batch)")
        with self._lock:
            self._check_usable()
            self._buf += record
            self._end += n
            end = self._end
            full = len(self._buf) >= WRITE_THRESHOLD
        # Write a large buffer out early, unless a commit is writing right now (an append must
        # never wait for someone else's fsync). The record is buffered already: a failed write
        # here keeps it buffered, and the next commit retries and reports the error.
        if full and self._io_lock.acquire(blocking=False):
            try:
                if len(self._buf) >= WRITE_THRESHOLD:
                    self._write_out()
            except WALError:
                pass
            finally:
                self._io_lock.release()
        return end

    def append_batch(self, writer: int, seq: int, entries) -> int:
        """Encode a LOG record of ``entries`` from ``writer`` and append it; see ``append``."""
        return self.append(self.codec.encode_batch(writer, seq, entries))

    def append_event(self, body: bytes) -> int:
        """Frame ``body`` as an EVENT record and append it; see ``append``."""
        return self.append(self.codec.frame(RECORD_EVENT, body))

    def commit(self, offset: Optional[int] = None) -> int:
        """Block until everything appended up to ``offset`` (default: all so far) is durable at
        the WAL's level, and return the durable offset (>= ``offset``). With ``"none"`` it
        returns at once. Concurrent callers share one write and fsync. Raises WALError when the
        write or fsync fails."""
        end = self._end
        target = end if offset is None else offset
        if target > end:
            raise ValueError(f"offset {target} is past the end of the WAL ({end})")
        if self.durability == "none":
            return end
        if target <= self._durable:
            return self._durable
        with self._io_lock:
            # Whoever held the lock before us may have made our records durable already.
            if target <= self._durable:
                return self._durable
            if self._failed is not None or self._fd < 0:
                self._check_usable()
            self._write_out()
            if self.durability == "fsync":
                self._sync()
            return self._durable

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise WALError(f"{self.directory}: the WAL failed earlier and must be reopened: {self._failed}")
        if self._closed or self._fd < 0:
            raise WALError(f"{self.directory}: the WAL is closed")

    def _write_out(self) -> None:
        """Write the buffer to the segment files: one write per segment it lands in, rotating
        where a record would pass ``segment_size``. The caller holds the IO lock."""
        with self._lock:
            buf = self._buf
            self._buf = bytearray()
        if not buf:
            return
        view = memoryview(buf)
        done = 0
        try:
            while done < len(buf):
                n = len(buf) - done
                room = self.segment_size - self._seg_size
                if n > room:
                    n = self._whole_records(view, done, room)
                    if n == 0:
                        if self._seg_size > HEADER:
                            self._rotate()
                            continue
                        # A record bigger than a segment gets a segment of its own.
                        n = RECORD_HEADER_SIZE + _u32.unpack_from(view, done + 8)[0]
                self._write(view[done : done + n])
                done += n
        except BaseException as e:
            # Keep what was not written, in front of newer appends, so a later commit retries.
            with self._lock:
                self._buf = buf[done:] + self._buf
            if isinstance(e, OSError):
                raise WALError(f"{self._seg_path}: writing the WAL failed: {e}") from e
            raise
        finally:
            view.release()
        if self.durability == "flush":
            self._durable = self._written

    @staticmethod
    def _whole_records(view, pos: int, room: int) -> int:
        """How many bytes of whole records from ``view[pos:]`` fit in ``room``."""
        n = 0
        while pos + n < len(view):
            size = RECORD_HEADER_SIZE + _u32.unpack_from(view, pos + n + 8)[0]
            if n + size > room:
                break
            n += size
        return n

    def _write(self, data) -> None:
        size = self._seg_size
        try:
            while data:
                k = os.write(self._fd, data)
                self.stats.writes += 1
                data = data[k:]
                self._seg_size += k
        except OSError:
            # No half record may stay behind: later records would follow garbage.
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            self._seg_size = size
            raise
        self.stats.bytes_written += self._seg_size - size
        self._written += self._seg_size - size

    def _sync(self) -> None:
        if self._synced == self._written:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            # After a failed fsync the kernel may have dropped the dirty pages and reports the
            # error only once: nothing written since the last good fsync can be trusted again.
            self._failed = e
            raise WALError(f"{self._seg_path}: fsync failed; the WAL must be reopened: {e}") from e
        self.stats.fsyncs += 1
        self._synced = self._durable = self._written

    def _rotate(self) -> None:
        # Earlier segments are always complete on disk, at every durability level: recovery
        # scans only the last one, and readers treat bad bytes at the end of others as damage.
        self._sync()
        self._create_segment(self._written)

    def close(self) -> None:
        """Write what is buffered (and fsync it, unless durability is ``"none"``), then close.
        Idempotent."""
        with self._lock:
            self._closed = True
        with self._io_lock:
            if self._fd < 0:
                return
            try:
                if self._failed is None:
                    self._write_out()
                    if self.durability != "none":
                        self._sync()
            finally:
                os.close(self._fd)
                os.close(self._dir_fd)  # releases the directory lock
                self._fd = self._dir_fd = -1

    def __enter__(self) -> "WAL":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def records(
        self, start: int = 0, *, reporter: Optional[Reporter] = None, stop: Optional[int] = None
    ) -> Iterator[Record]:
        """Records from logical offset ``start`` (0 or a ``Record.end``), across segments, from
        what has been written to the files (not the append buffer: ``commit`` first). Damage is
        reported to ``reporter`` (default: the WAL's) and skipped. ``stop``: no record that
        starts at or after it (e.g. ``durable_offset``)."""
        return _iter_records(self.directory, start, reporter or self.reporter, self.codec.parse_record, stop)

    def verify(self, reporter: Optional[Reporter] = None) -> Verification:
        """Scan every segment (what is in the files); see the module-level ``verify``."""
        return verify(self.directory, reporter or self.reporter, codec=self.codec)

    @property
    def end_offset(self) -> int:
        """The end of everything appended (buffered included)."""
        return self._end

    @property
    def durable_offset(self) -> int:
        """Everything before it is durable at the WAL's level (for ``"none"``: everything
        appended, which a crash may lose)."""
        return self._end if self.durability == "none" else self._durable

    @property
    def written_offset(self) -> int:
        """Everything before it is in the segment files (visible to readers)."""
        return self._written

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "failed" if self._failed else "open"
        return (
            f"<WAL {self.directory!r} {state} durability={self.durability} end={self._end} "
            f"durable={self.durable_offset} segment={os.path.basename(self._seg_path)}>"
        )
