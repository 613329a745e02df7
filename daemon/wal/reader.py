"""Reading a WAL (leveldb's ``log_reader``): records in order from any offset, one record at a
known place, a full verification; any number of readers, also while the writer appends. Damage
is reported to a ``Reporter`` and skipped, never raised."""

from __future__ import annotations

import bisect
import os
from typing import Callable, Iterator, Optional

from trackside import _native
from trackside._native.constants import (
    PARSE_INCOMPLETE,
    PARSE_OK,
    PARSE_REASONS,
    RECORD_MAGIC,
)

from .format import (
    check_header,
    CUT_OFF,
    HEADER,
    list_segments,
    log,
    READ_CHUNK,
    Record,
    Reporter,
    RUNS_PAST,
    Verification,
    WALFormatError,
)


def log_damage(path: str, offset: int, nbytes: int, reason: str) -> None:
    log.warning("WAL damage in %s: %d bytes dropped at offset %d: %s", path, nbytes, offset, reason)


class SegmentScan:
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
                    self.report(self.path, self.base + start - HEADER, self.tail, PARSE_REASONS.get(status, CUT_OFF))
                return
            self.report(
                self.path, self.base + start - HEADER, self.at + i - start, PARSE_REASONS.get(status, RUNS_PAST)
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


class Tally:
    __slots__ = ("segments", "tail", "damaged", "reports")

    def __init__(self):
        self.segments = self.tail = self.damaged = self.reports = 0


def iter_records(
    directory: str, start: int, report: Reporter, parse, stop: Optional[int] = None, tally: Optional[Tally] = None
) -> Iterator[Record]:
    segments = list_segments(directory)
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
                    seg_ident = check_header(path, head, base)
                    if ident is None:
                        ident = seg_ident
                    elif seg_ident != ident:
                        raise WALFormatError(f"{path}: the segment belongs to another WAL (ident differs)")
                    scan = SegmentScan(
                        parse,
                        fd,
                        path,
                        base,
                        pos,
                        report,
                        final,
                        lambda b=base: any(o > b for o, _ in list_segments(directory)),
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
            segments = list_segments(directory)
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
    yield from iter_records(os.fspath(directory), start, reporter or log_damage, parse, stop)


def read_record(
    directory: str, offset: int, end: int, reporter: Optional[Reporter] = None, *, codec=None
) -> Optional[Record]:
    """The one record from logical ``offset`` to ``end`` (a ``Record``'s, or an append's start
    and end), read with a single ``pread`` once it is in the files (``written_offset``): the
    way back to a record whose bytes were let go from memory. None, with the damage reported
    to ``reporter``, when the bytes there are not that record."""
    directory = os.fspath(directory)
    report = reporter or log_damage
    segments = list_segments(directory)
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
        report(path, offset, end - offset, PARSE_REASONS.get(status, CUT_OFF))
        return None
    return Record(offset, rtype, data[body_start:body_end], end)


def verify(directory: str, reporter: Optional[Reporter] = None, *, codec=None) -> Verification:
    """Scan every segment of the WAL in ``directory``; damage goes to ``reporter`` as it is found.
    Raises WALFormatError on a bad segment header."""
    tally = Tally()
    inner = reporter or log_damage

    def count(path, offset, nbytes, reason):
        tally.damaged += nbytes
        tally.reports += 1
        inner(path, offset, nbytes, reason)

    records = nbytes = 0
    for rec in iter_records(os.fspath(directory), 0, count, (codec or _native).parse_record, tally=tally):
        records += 1
        nbytes += rec.end - rec.offset
    return Verification(tally.segments, records, nbytes, tally.damaged, tally.reports, tally.tail)
