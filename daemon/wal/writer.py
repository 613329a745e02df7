"""The WAL's one writer (leveldb's ``log_writer``): appends framed records, makes them durable
by group commit at the chosen level, rolls segments, recovers a torn tail at open."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import Iterator, Optional

from trackside import _native
from trackside._native.constants import (
    MAX_RECORD_SIZE,
    RECORD_EVENT,
    RECORD_HEADER_SIZE,
    RECORD_MAGIC,
)

from trackside.contracts.constants import DURABILITY

from .format import (
    check_header,
    fsync_dir,
    HEADER,
    list_segments,
    log,
    pack_header,
    Record,
    RecordTooLarge,
    Recovery,
    Reporter,
    segment_path,
    U32,
    Verification,
    WALError,
    WALFormatError,
    WALStats,
    WRITE_THRESHOLD,
)
from .reader import SegmentScan, iter_records, log_damage, verify


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
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}, not {durability!r}")
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
        self.reporter = reporter or log_damage
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
            fsync_dir(os.path.dirname(self.directory))  # or the new directory may vanish in a crash
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
        segments = list_segments(self.directory)
        self.ident = None
        reinit = False
        for k, (base, path) in enumerate(segments):
            with open(path, "rb") as f:
                head = f.read(HEADER)
            if len(head) < HEADER and k == len(segments) - 1:
                reinit = True  # a crash while the segment was being created: it holds nothing
                break
            ident = check_header(path, head, base)
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

        scan = SegmentScan(self.codec.parse_record, fd, path, base, HEADER, report, False, lambda: False)
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
        path = segment_path(self.directory, base)
        # O_TRUNC, not O_EXCL: a file of that name can only be left by a failed creation (we
        # hold the directory lock, and re-initialization replaces a short one).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            header = pack_header(self.ident, base)
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
            or U32.unpack_from(record, 8)[0] != n - RECORD_HEADER_SIZE
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
                        n = RECORD_HEADER_SIZE + U32.unpack_from(view, done + 8)[0]
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
            size = RECORD_HEADER_SIZE + U32.unpack_from(view, pos + n + 8)[0]
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
        return iter_records(self.directory, start, reporter or self.reporter, self.codec.parse_record, stop)

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
