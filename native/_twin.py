"""The pure-Python twin of ``_codec.pyx``: same names, same bytes, the reference for tests.

Entries are tuples ``(step, commit, time_us, values, payload)``:

- ``step``: int or None; ``commit``: True, False or None (as given to ``log``);
- ``time_us``: int, microseconds since the epoch;
- ``values``: dict of str to int (int64), float, bool, str or None;
- ``payload``: bytes or None, opaque (rich values, already encoded by the caller).
"""

from __future__ import annotations

import array as _array
import heapq as _heapq
import struct
import zlib

from .constants import (
    ENTRY_COMMIT,
    ENTRY_COMMIT_SET,
    ENTRY_FLAGS_KNOWN,
    ENTRY_HAS_PAYLOAD,
    ENTRY_HAS_STEP,
    ENTRY_SAME_KEYS,
    INT64_MAX,
    INT64_MIN,
    TIME_US_LIMIT,
    MAX_RECORD_SIZE,
    PARSE_BAD_CHECKSUM,
    PARSE_BAD_LENGTH,
    PARSE_BAD_MAGIC,
    PARSE_BAD_TYPE,
    PARSE_INCOMPLETE,
    PARSE_OK,
    RECORD_CRC_START,
    RECORD_HEADER_SIZE,
    RECORD_LOG,
    RECORD_MAGIC,
    RECORD_TYPES,
    TAG_FALSE,
    TAG_FLOAT,
    TAG_INT,
    TAG_NONE,
    TAG_STR,
    TAG_TRUE,
    mask_crc,
)
from .errors import CodecError, RecordTooLarge

IMPLEMENTATION = "python"

_header = struct.Struct("<4sIIBBH")
_double = struct.Struct("<d")
_u32 = struct.Struct("<I")


def crc32(data, value: int = 0) -> int:
    """CRC-32 (zlib's polynomial) of ``data``, continuing from ``value``."""
    return zlib.crc32(data, value)


def _put_uvarint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _put_svarint(out: bytearray, n: int) -> None:
    _put_uvarint(out, ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)


def _check_int64(n: int, what: str) -> int:
    if not INT64_MIN <= n <= INT64_MAX:
        raise OverflowError(f"{what} is {n}, outside the int64 range a log value can hold")
    return n


def _seal(out: bytearray, rtype: int, flags: int = 0) -> bytes:
    """Fill in the header of the record that ``out`` holds (header space + body)."""
    length = len(out) - RECORD_HEADER_SIZE
    if length > MAX_RECORD_SIZE:
        raise ValueError(f"record body of {length} bytes exceeds the format's limit of {MAX_RECORD_SIZE}")
    struct.pack_into("<IBBH", out, RECORD_CRC_START, length, rtype, flags, 0)
    crc = mask_crc(zlib.crc32(memoryview(out)[RECORD_CRC_START:]))
    out[0:8] = RECORD_MAGIC + _u32.pack(crc)
    return bytes(out)


def frame(rtype: int, body, flags: int = 0) -> bytes:
    """One complete record of type ``rtype`` around ``body`` (bytes-like)."""
    if rtype not in RECORD_TYPES:
        raise ValueError(f"unknown record type {rtype}")
    out = bytearray(RECORD_HEADER_SIZE)
    out += body
    return _seal(out, rtype, flags)


def encode_batch(writer: int, seq: int, entries) -> bytes:
    """One complete LOG record holding ``entries`` (an iterable of entry tuples) of ``writer``."""
    enc = BatchEncoder()
    for entry in entries:
        enc.add(*entry)
    return enc.take(writer, seq)


class BatchEncoder:
    """Builds one LOG record an entry at a time: what a training process calls on ``log()``.

    ``add`` validates and encodes the entry at once, so a bad value raises in the caller and
    leaves the batch as it was; ``take`` frames everything added since the last ``take`` as one
    record (the same bytes ``encode_batch`` gives for those entries) and starts a new batch.
    """

    __slots__ = ("_body", "_keys", "_prev_keys", "_count", "_t0", "_prev_time", "_busy")

    def __init__(self):
        self._busy = False
        self._reset()

    def _reset(self) -> None:
        self._body = bytearray()
        self._keys: dict[str, int] = {}
        self._prev_keys: list[int] = []
        self._count = 0
        self._t0 = 0
        self._prev_time = 0

    def __len__(self) -> int:
        """Entries added since the last ``take``."""
        return self._count

    @property
    def nbytes(self) -> int:
        """Encoded size of the entries added since the last ``take`` (without the framing)."""
        return len(self._body)

    def add(self, step, commit, time_us: int, values, payload=None) -> int:
        """Encode one entry; returns the number of entries now in the batch."""
        if not isinstance(values, dict):
            raise TypeError(f"log values must be a dict, not {type(values).__name__}")
        _check_time(time_us)
        if payload is not None:
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
            if isinstance(payload, memoryview) and not payload.c_contiguous:
                raise TypeError("payload must be contiguous bytes, not a non-contiguous memoryview")
            payload = bytes(payload)  # a view of wider items counts bytes, not items
        if self._busy:
            raise RuntimeError("BatchEncoder.add called while another add is running on the same encoder")
        keys = self._keys
        out = self._body
        mark = len(out)
        nkeys = len(keys)
        self._busy = True
        try:
            self._put_entry(out, keys, step, commit, time_us, values, payload)
        except BaseException:
            del out[mark:]  # the batch stays exactly as it was before this call
            for k in [k for k, i in keys.items() if i >= nkeys]:
                del keys[k]
            raise
        finally:
            self._busy = False
        if self._count == 0:
            self._t0 = time_us
        self._prev_time = time_us
        self._count += 1
        return self._count

    def _put_entry(self, out, keys, step, commit, time_us, values, payload) -> None:
        flags = 0
        if step is not None:
            flags |= ENTRY_HAS_STEP
        if commit is not None:
            flags |= ENTRY_COMMIT_SET | (ENTRY_COMMIT if commit else 0)
        if payload is not None:
            flags |= ENTRY_HAS_PAYLOAD
        idx = [keys.get(k, -1) if type(k) is str else -2 for k in values]
        same = idx == self._prev_keys and -1 not in idx
        if same:
            flags |= ENTRY_SAME_KEYS
        out.append(flags)
        if step is not None:
            _put_svarint(out, _check_int64(step, "step"))
        # the first entry's delta is 0: t0 in the batch header is its time
        _put_svarint(out, time_us - self._prev_time if self._count else 0)
        if not same:
            _put_uvarint(out, len(values))
        cur = []
        for k, v in values.items():
            if not same:
                if type(k) is not str:
                    raise TypeError(f"log keys must be str, not {type(k).__name__} ({k!r})")
                i = keys.get(k)
                if i is None:
                    i = keys[k] = len(keys)
                    _put_uvarint(out, i)
                    name = k.encode()
                    _put_uvarint(out, len(name))
                    out += name
                else:
                    _put_uvarint(out, i)
                cur.append(i)
            _put_value(out, k, v)
        if payload is not None:
            _put_uvarint(out, len(payload))
            out += payload
        if len(out) > MAX_RECORD_SIZE - 4 * 10:  # take() could not frame it (4 uvarints of <= 10 bytes)
            raise RecordTooLarge(
                f"log entry too large: its batch of {len(out)} bytes exceeds the record "
                f"limit of {MAX_RECORD_SIZE}; log big values as files (trackside.Artifact, Html, Image)"
            )
        if not same:
            self._prev_keys = cur

    def take(self, writer: int, seq: int) -> bytes:
        """The framed LOG record of the entries added so far (possibly none); resets the batch."""
        out = bytearray(RECORD_HEADER_SIZE)
        _put_uvarint(out, _check_uint(writer, "writer"))
        _put_uvarint(out, _check_uint(seq, "seq"))
        _put_uvarint(out, self._count)
        _put_svarint(out, self._t0)
        out += self._body
        record = _seal(out, RECORD_LOG)
        self._reset()
        return record


def _check_time(time_us) -> None:
    if type(time_us) is not int and not isinstance(time_us, int):
        raise TypeError(f"time_us must be int, not {type(time_us).__name__}")
    if not 0 <= time_us < TIME_US_LIMIT:
        raise OverflowError(f"time_us is {time_us}, outside [0, 2**62)")


def _check_uint(n: int, what: str) -> int:
    if not 0 <= n <= 0xFFFFFFFFFFFFFFFF:
        raise OverflowError(f"{what} is {n}, outside the uint64 range")
    return n


def _put_value(out: bytearray, key: str, v) -> None:
    t = type(v)
    if t is float or (t is not bool and isinstance(v, float)):
        out.append(TAG_FLOAT)
        out += _double.pack(v)
    elif t is bool:
        out.append(TAG_TRUE if v else TAG_FALSE)
    elif t is int or isinstance(v, int):
        out.append(TAG_INT)
        _put_svarint(out, _check_int64(int(v), f"the value for key {key!r}"))
    elif t is str or isinstance(v, str):
        b = v.encode()
        out.append(TAG_STR)
        _put_uvarint(out, len(b))
        out += b
    elif v is None:
        out.append(TAG_NONE)
    else:
        raise TypeError(
            f"cannot log {t.__name__} for key {key!r}: values must be int, float, bool, str "
            f"or None (richer objects travel as the entry's payload)"
        )


class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, start: int, end: int):
        self.buf = buf
        self.pos = start
        self.end = end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise CodecError("body ends inside an entry")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def uvarint(self) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if b < 0x80:
                if n > 0xFFFFFFFFFFFFFFFF:
                    raise CodecError("varint overflows 64 bits")
                return n
            shift += 7
            if shift > 63:
                raise CodecError("varint longer than 10 bytes")

    def svarint(self) -> int:
        n = self.uvarint()
        return (n >> 1) ^ -(n & 1)

    def take(self, n: int):
        if n > self.end - self.pos:
            raise CodecError("body ends inside a string or payload")
        chunk = self.buf[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def key(self, names: list) -> str:
        """The key at the reader, appended to ``names`` where the batch defines it."""
        i = self.uvarint()
        if i == len(names):
            try:
                names.append(str(self.take(self.uvarint()), "utf-8"))
            except UnicodeDecodeError as e:
                raise CodecError(f"key is not UTF-8: {e}") from None
        elif i > len(names):
            raise CodecError(f"key index {i} before its definition")
        return names[i]


def decode_batch(body) -> tuple[int, int, list]:
    """``(writer, seq, entries)`` from the body of a LOG record; CodecError if malformed."""
    mv = memoryview(body)
    if not mv.c_contiguous or mv.itemsize != 1:
        mv = memoryview(mv.tobytes())  # read bytes, whatever view of them was given
    r = _Reader(mv, 0, len(mv))
    writer = r.uvarint()
    seq = r.uvarint()
    count = r.uvarint()
    if count > len(mv):  # every entry takes at least two bytes: a bound that stops silly counts
        raise CodecError(f"entry count {count} exceeds the body size")
    prev_time = r.svarint()
    names: list[str] = []
    prev_keys: list[str] = []
    entries = []
    for _ in range(count):
        flags = r.byte()
        if flags & ~ENTRY_FLAGS_KNOWN:
            raise CodecError(f"unknown entry flags {flags:#x}")
        step = r.svarint() if flags & ENTRY_HAS_STEP else None
        commit = bool(flags & ENTRY_COMMIT) if flags & ENTRY_COMMIT_SET else None
        prev_time += r.svarint()
        values = {}
        if flags & ENTRY_SAME_KEYS:
            for k in prev_keys:
                values[k] = _get_value(r)
        else:
            n = r.uvarint()
            cur = []
            for _ in range(n):
                k = r.key(names)
                cur.append(k)
                values[k] = _get_value(r)
            prev_keys = cur
        payload = bytes(r.take(r.uvarint())) if flags & ENTRY_HAS_PAYLOAD else None
        entries.append((step, commit, prev_time, values, payload))
    if r.pos != r.end:
        raise CodecError(f"{r.end - r.pos} bytes left after the last entry")
    return writer, seq, entries


def decode_columns(body):
    """``(writer, seq, blocks)`` of a LOG body whose entries are plain numbers, None otherwise;
    see ``_codec.decode_columns``."""
    mv = memoryview(body)
    if not mv.c_contiguous or mv.itemsize != 1:
        mv = memoryview(mv.tobytes())
    try:
        return _decode_columns(_Reader(mv, 0, len(mv)))
    except CodecError:
        return None


def _decode_columns(r: _Reader):
    writer = r.uvarint()
    seq = r.uvarint()
    count = r.uvarint()
    if count == 0 or count > r.end:
        return None
    t = r.svarint()
    names: list[str] = []
    blocks: list = []
    keys: list | None = None
    steps = times = _array.array("q")
    cols: list = []
    tags: list = []
    step = commit = None
    for e in range(count):
        flags = r.byte()
        if flags & ~ENTRY_FLAGS_KNOWN or not flags & ENTRY_HAS_STEP or flags & ENTRY_HAS_PAYLOAD:
            return None
        s = r.svarint()
        if e and s <= step:
            return None
        step = s
        commit = bool(flags & ENTRY_COMMIT_SET and flags & ENTRY_COMMIT)
        t += r.svarint()
        if not INT64_MIN <= t <= INT64_MAX:
            return None
        if not flags & ENTRY_SAME_KEYS or keys is None:
            if flags & ENTRY_SAME_KEYS:
                return None
            if keys is not None:
                blocks.append((steps, times, tuple(keys), cols, True))
            n = r.uvarint()
            if n == 0 or n > (r.end - r.pos) // 2:
                return None
            keys, cols, tags = [], [], []
            steps, times = _array.array("q"), _array.array("q")
            for _ in range(n):
                keys.append(r.key(names))
                if r.pos >= r.end or r.buf[r.pos] not in (TAG_FLOAT, TAG_INT):
                    return None
                tags.append(r.buf[r.pos])
                cols.append(_array.array("d" if tags[-1] == TAG_FLOAT else "q"))
                if not _read_number(r, tags[-1], cols[-1]):
                    return None
            if len(set(keys)) != len(keys):
                return None
        else:
            for tag, col in zip(tags, cols):
                if not _read_number(r, tag, col):
                    return None
        steps.append(step)
        times.append(t)
    if r.pos != r.end:
        return None
    blocks.append((steps, times, tuple(keys), cols, commit))
    if len(blocks) > max(4, count >> 6):
        return None
    return writer, seq, blocks


def _read_number(r: _Reader, tag: int, col) -> bool:
    if r.byte() != tag:
        return False
    col.append(_double.unpack(r.take(8))[0] if tag == TAG_FLOAT else r.svarint())
    return True


def _get_value(r: _Reader):
    tag = r.byte()
    if tag == TAG_FLOAT:
        return _double.unpack(r.take(8))[0]
    if tag == TAG_INT:
        return r.svarint()
    if tag == TAG_TRUE:
        return True
    if tag == TAG_FALSE:
        return False
    if tag == TAG_STR:
        try:
            return str(r.take(r.uvarint()), "utf-8")
        except UnicodeDecodeError as e:
            raise CodecError(f"string value is not UTF-8: {e}") from None
    if tag == TAG_NONE:
        return None
    raise CodecError(f"unknown value tag {tag}")


def parse_record(buf, pos: int = 0, end: int = -1) -> tuple[int, int, int, int]:
    """Check the record at ``buf[pos:]``: ``(status, type, body_start, body_end)``.

    Status is one of the ``PARSE_*`` constants; never raises on bad bytes. ``end`` (default: the
    buffer's end) bounds the bytes this call may look at.
    """
    if pos < 0:
        raise ValueError(f"pos must be >= 0, not {pos}")
    if end < 0 or end > len(buf):
        end = len(buf)
    if end - pos < RECORD_HEADER_SIZE:
        if RECORD_MAGIC.startswith(bytes(buf[pos : min(end, pos + 4)])):
            return PARSE_INCOMPLETE, 0, 0, 0
        return PARSE_BAD_MAGIC, 0, 0, 0
    magic, crc, length, rtype, flags, reserved = _header.unpack_from(buf, pos)
    if magic != RECORD_MAGIC:
        return PARSE_BAD_MAGIC, 0, 0, 0
    if length > MAX_RECORD_SIZE:
        return PARSE_BAD_LENGTH, 0, 0, 0
    if rtype not in RECORD_TYPES or flags or reserved:
        return PARSE_BAD_TYPE, 0, 0, 0
    body = pos + RECORD_HEADER_SIZE
    if end - body < length:
        return PARSE_INCOMPLETE, rtype, body, body + length
    if mask_crc(zlib.crc32(memoryview(buf)[pos + RECORD_CRC_START : body + length])) != crc:
        return PARSE_BAD_CHECKSUM, rtype, body, body + length
    return PARSE_OK, rtype, body, body + length


# -- history rows into columns (store/series.py) ------------------------------------------------

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def split_rows(rows, last, keep=()):
    """``(steps, times, floats, ints, late, rest)`` of history ``rows`` (objects with
    ``step``, ``time_us``, ``values``) whose steps must be above ``last`` to be appended:
    ``steps``/``times`` of those rows; ``floats``/``ints``: key -> ``(steps, values)`` of their
    float and int64 values, as ``array.array`` ("q" steps; "d" floats, "q" ints); ``late``:
    the rows at or below ``last`` (None: no step is stored) or at or below a step before them); ``rest``: ``(row, values)`` of the appended rows' other values (bools, text, rich
    values, ints beyond int64, and any value of a key in ``keep``)."""
    steps, times, late, rest = [], [], [], []
    floats, ints = {}, {}
    for r in rows:
        step = r.step
        if last is not None and step <= last:
            late.append(r)
            continue
        last = step
        steps.append(step)
        times.append(r.time_us)
        other = None
        for k, v in r.values.items():
            t = type(v)
            if k in keep:
                t = None  # not a column: with the row's other values
            if t is float:
                col = floats.get(k)
                if col is None:
                    col = floats[k] = (_array.array("q"), _array.array("d"))
            elif t is int and _INT64_MIN <= v <= _INT64_MAX:
                col = ints.get(k)
                if col is None:
                    col = ints[k] = (_array.array("q"), _array.array("q"))
            else:
                if other is None:
                    other = {}
                other[k] = v
                continue
            col[0].append(step)
            col[1].append(v)
        if other:
            rest.append((r, other))
    return steps, times, floats, ints, late, rest


# -- the merge stage's per-entry loops (daemon/merger.py) -----------------------------------------


class PendingRow:
    """A row still open to entries. ``values`` holds the last-arrived value per key: the
    entry's own dict while one entry made the row (never changed: ``owned`` is False), a copy
    once a second one came. ``writer`` is the only writer that touched the row, or None once a
    second one did; from then on ``parts`` keeps ``writer, values`` of each entry after the
    first writer's (those first: a copy of what it had), which ``by_writer`` merges per writer
    for the reduce rule."""

    __slots__ = ("time_us", "values", "payloads", "touched", "writer", "parts", "amend", "owned")

    def __init__(self, time_us, values, payloads, touched, writer, amend):
        self.time_us = time_us
        self.values = values
        self.payloads = payloads
        self.touched = touched
        self.writer = writer
        self.parts = None
        self.amend = bool(amend)
        self.owned = True

    @property
    def by_writer(self):
        """writer -> its latest value per key (new dicts), None while one writer touched the row."""
        if self.parts is None:
            return None
        return _by_writer(self.parts)


def _by_writer(parts) -> dict:
    by: dict = {}
    for i in range(0, len(parts), 2):
        mine = by.get(parts[i])
        if mine is None:
            by[parts[i]] = dict(parts[i + 1])
        else:
            mine.update(parts[i + 1])
    return by


def merge_entries(
    pending, heap, entries, start, writer, now, emitted_max, drop_late, cur_step, cur_commit, no_payloads
):
    """Merge ``entries[start:]`` of ``writer`` into the pending rows (``pending``: step ->
    PendingRow, ``heap``: their steps), as ``Merger.add`` does: a new step opens a row (an amend
    row at or below ``emitted_max``, or, with ``drop_late``, none: the entry is dropped), a
    known one takes the values, keeping each writer's own once a second writer touched it.
    An entry's values are never changed (a row may hold them). Rows without payloads share
    ``no_payloads``. Returns ``(cur_step, cur_commit, dropped)``: the writer's cursor after the
    entries and the steps of the dropped entries (None: none)."""
    dropped = None
    for step, commit, time_us, values, payload in entries[start:] if start else entries:
        if cur_step is None or step > cur_step:
            cur_step = step
            cur_commit = commit
        elif commit and step == cur_step:
            cur_commit = True

        row = pending.get(step)
        if row is None:
            amend = False
            if step <= emitted_max:
                if drop_late:
                    if dropped is None:
                        dropped = []
                    dropped.append(step)
                    continue
                amend = True
            payloads = no_payloads if payload is None else [payload]
            own = type(values) is not dict
            row = pending[step] = PendingRow(time_us, dict(values) if own else values, payloads, now, writer, amend)
            row.owned = own
            _heapq.heappush(heap, step)
            continue

        if row.writer is None or row.writer != writer:
            if row.parts is None:  # second writer in this step: keep each writer's values
                row.parts = [row.writer, row.values if not row.owned else dict(row.values)]
                row.writer = None
            row.parts += (writer, values if type(values) is dict else dict(values))
        if not row.owned:
            row.values = dict(row.values)
            row.owned = True
        row.values.update(values)
        if payload is not None:
            if row.payloads is no_payloads:
                row.payloads = [payload]
            else:
                row.payloads.append(payload)
        if time_us > row.time_us:
            row.time_us = time_us
        row.touched = now
    return cur_step, cur_commit, dropped


def pop_rows(pending, heap, limit, row_type):
    """Pop the pending rows whose steps are below ``limit``, in step order, for a merger whose
    keys all reduce by "last" (``values`` holds the last-arrived values already): ``(rows,
    collisions, amends)``, the rows as ``row_type(step, time_us, values, payloads, amend)``
    tuples, the collisions counted as ``Merger._reduce`` counts them."""
    out = []
    collisions = amends = 0
    while heap and heap[0] < limit:
        step = _heapq.heappop(heap)
        row = pending.pop(step, None)
        if row is None:  # the merge window emitted it already
            continue
        if row.parts is not None:
            total = sum(map(len, _by_writer(row.parts).values()))
            if total != len(row.values):  # a key set by c writers: c - 1 collisions
                collisions += total - len(row.values)
        if row.amend:
            amends += 1
        out.append(tuple.__new__(row_type, (step, row.time_us, row.values, row.payloads, row.amend)))
    return out, collisions, amends
