"""The series layout's columns: how a chunk's steps and values become bytes, and the
statistics (count, min, max, first, last) that every chunk and every coarser unit carries.

A chunk holds up to ``CHUNK_POINTS`` points of one key of one run, in step order, as two
blobs:

- ``steps``: ``b"\\x00"`` + first step, stride and count (int64, int64, uint32) when the steps
  are evenly spaced (a training loop's usual case: 21 bytes for the whole chunk), else
  ``b"\\x01"`` + first step + the zstd-compressed, byte-shuffled int64 deltas.
- ``vals``: one kind byte and the zstd-compressed, byte-shuffled values: ``F4`` when every value
  of the chunk survives float32 unchanged (what ``tensor.item()`` of a float32 tensor gives:
  4 bytes before compression, and exact), ``F8`` for other floats, ``I8`` for integers (read
  back as Python ints).

Byte shuffling (the first byte of every value, then every second byte, ...) puts the slowly
changing sign, exponent and high mantissa bytes together, where zstd finds them; the noisy low
bytes cost what they cost. Time-series databases (Gorilla's XOR encoding, Prometheus chunks)
use the same idea bit-wise; at this chunk size byte-wise compresses as well (measured on loss
curves) and runs in numpy and zstd's C.

The open chunk of a key (the last, rewritten by every transaction that adds to it) keeps its
values plain (``PLAIN | F8`` or ``PLAIN | I8``: the raw array): a rewrite then costs a copy, not
a compression; the chunk is encoded as above once it is full.

Statistics are ``Stats`` rows: they aggregate by ``combine`` (min and max ignore NaN, as a chart
does; a unit of NaNs alone has NaN for both).
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional

import numpy as np
import zstandard

CHUNK_POINTS = 512  # points per chunk: the finest statistics, and what one point's change rewrites
FANOUT = 16  # children per unit of the next coarser level
LEVELS = 4  # level 0: chunks; level L: units of FANOUT**L chunks (level 3: 2M points of a key)

F4, F8, I8 = 0, 1, 2
PLAIN = 0x80  # kind bit of an open chunk's values: raw little-endian float64/int64, no shuffle or zstd
_DTYPES = {F4: np.dtype("<f4"), F8: np.dtype("<f8"), I8: np.dtype("<i8")}
_EVEN = struct.Struct("<qqI")
_FIRST = struct.Struct("<q")
_compress = zstandard.ZstdCompressor(level=1).compress
_decompress = zstandard.ZstdDecompressor().decompress


class Stats(NamedTuple):
    """What a chunk or a coarser unit knows of its points without reading them."""

    first_step: int
    last_step: int
    count: int
    vmin: float
    vmax: float
    vfirst: float
    vlast: float
    t_first: int  # time (us since the epoch) of the first and the last point
    t_last: int


def _shuffle(a: np.ndarray) -> bytes:
    return a.view(np.uint8).reshape(-1, a.itemsize).T.tobytes()


def _unshuffle(raw: bytes, dtype: np.dtype, n: int) -> np.ndarray:
    return np.frombuffer(raw, np.uint8).reshape(dtype.itemsize, n).T.copy().view(dtype).reshape(n)


def encode_steps(steps) -> bytes:
    """The ``steps`` blob of increasing steps (a list or an int64 array)."""
    n = len(steps)
    first = int(steps[0])
    if n == 1 or int(steps[-1]) - first == n - 1:  # consecutive steps (increasing: no gap fits)
        return b"\x00" + _EVEN.pack(first, 1, n)
    deltas = np.diff(np.asarray(steps, dtype=np.int64))
    stride = int(deltas[0])
    if (deltas == stride).all():
        return b"\x00" + _EVEN.pack(first, stride, n)
    return b"\x01" + _FIRST.pack(first) + _compress(_shuffle(deltas.astype("<i8")))


def decode_steps(blob: bytes) -> np.ndarray:
    """The int64 steps of a ``steps`` blob."""
    blob = bytes(blob)
    if blob[0] == 0:
        first, stride, n = _EVEN.unpack_from(blob, 1)
        return np.arange(n, dtype=np.int64) * stride + first
    (first,) = _FIRST.unpack_from(blob, 1)
    raw = _decompress(blob[1 + _FIRST.size :])
    deltas = _unshuffle(raw, _DTYPES[I8], len(raw) // 8)
    out = np.empty(len(deltas) + 1, np.int64)
    out[0] = first
    np.cumsum(deltas, out=out[1:])
    out[1:] += first
    return out


def value_array(values, kind: int) -> tuple[np.ndarray, int]:
    """``(array, kind)`` of a chunk's values (a list or a float64/int64 array): floats become
    F4 when float32 holds every one of them bit for bit (NaN included)."""
    if kind == I8:
        return np.asarray(values, dtype=np.int64), I8
    a = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        a32 = a.astype(np.float32)
    if (a32.astype(np.float64).view(np.int64) == a.view(np.int64)).all():
        return a32, F4
    return a, F8


def encode_plain(a: np.ndarray) -> bytes:
    """The ``vals`` blob of an open chunk: its float64 or int64 array as it is."""
    return bytes((PLAIN | (I8 if a.dtype.kind == "i" else F8),)) + a.tobytes()


def encode_values(a: np.ndarray, kind: int) -> bytes:
    """The ``vals`` blob of an array made by ``value_array``."""
    return bytes((kind,)) + _compress(_shuffle(a.astype(_DTYPES[kind], copy=False)))


def decode_values(blob: bytes) -> np.ndarray:
    """The values of a ``vals`` blob: float64 for F4/F8 chunks, int64 for I8 ones."""
    blob = bytes(blob)
    if blob[0] & PLAIN:
        return np.frombuffer(blob, _DTYPES[blob[0] & ~PLAIN], offset=1).copy()
    dtype = _DTYPES[blob[0]]
    raw = _decompress(blob[1:])
    a = _unshuffle(raw, dtype, len(raw) // dtype.itemsize)
    return a.astype(np.float64) if blob[0] == F4 else a


def encode_chunks(steps: np.ndarray, values: np.ndarray, t_first: list, t_last: list) -> tuple[list, list, list]:
    """``(steps blobs, vals blobs, stats)`` of ``m`` whole chunks at once: ``steps`` and
    ``values`` are (m, CHUNK_POINTS) int64 and float64/int64 arrays (each row one chunk's points),
    ``t_first``/``t_last`` each chunk's first and last time. The same bytes as
    ``encode_steps``/``value_array``/``encode_values`` chunk by chunk, with the checks, shuffles
    and statistics done in a few numpy passes over all of them."""
    m, n = values.shape
    first, last = steps[:, 0].tolist(), steps[:, -1].tolist()
    step_blobs = [
        b"\x00" + _EVEN.pack(f, 1, n) if l - f == n - 1 else encode_steps(steps[i])
        for i, (f, l) in enumerate(zip(first, last))
    ]
    if values.dtype.kind == "i":
        shuffled = values.view(np.uint8).reshape(m, n, 8).transpose(0, 2, 1)
        val_blobs = [bytes((I8,)) + _compress(shuffled[i].tobytes()) for i in range(m)]
        lo, hi = values.min(axis=1).astype(np.float64), values.max(axis=1).astype(np.float64)
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            v32 = values.astype(np.float32)
            lo, hi = np.fmin.reduce(values, axis=1), np.fmax.reduce(values, axis=1)
        f4 = (v32.astype(np.float64).view(np.int64) == values.view(np.int64)).all(axis=1).tolist()
        sh32 = v32.view(np.uint8).reshape(m, n, 4).transpose(0, 2, 1)
        sh64 = values.view(np.uint8).reshape(m, n, 8).transpose(0, 2, 1)
        val_blobs = [
            bytes((F4,)) + _compress(sh32[i].tobytes()) if f4[i] else bytes((F8,)) + _compress(sh64[i].tobytes())
            for i in range(m)
        ]
    vfirst = values[:, 0].astype(np.float64).tolist()
    vlast = values[:, -1].astype(np.float64).tolist()
    stats = [Stats(*row) for row in zip(first, last, [n] * m, lo.tolist(), hi.tolist(), vfirst, vlast, t_first, t_last)]
    return step_blobs, val_blobs, stats


def decode_many(rows: list) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of consecutive chunks (``(steps, vals)`` blob pairs), concatenated:
    the chunks of one kind and size (every full chunk of a key) are unshuffled in one numpy
    pass, not one per chunk. Values are float64, or int64 when every chunk holds integers."""
    even: list[tuple[int, int, int]] = []  # (first, stride, n) of evenly spaced chunks' steps
    steps = []
    groups: list[tuple[int, int, list]] = []  # (kind, n, raw values) of consecutive chunks
    unpack = _EVEN.unpack_from
    for step_blob, val_blob in rows:
        if step_blob[0] == 0 and not steps:
            even.append(unpack(step_blob, 1))
        else:
            if even:  # the evenly spaced ones so far, then chunk by chunk
                steps.extend(np.arange(n, dtype=np.int64) * stride + first for first, stride, n in even)
                even = []
            steps.append(decode_steps(step_blob))
        kind = val_blob[0]
        val_blob = memoryview(val_blob)
        if kind & PLAIN:  # an open chunk: a group of its own, already in order
            groups.append((kind, 0, [bytes(val_blob[1:])]))
            continue
        raw = _decompress(val_blob[1:])
        n = len(raw) // _DTYPES[kind].itemsize
        if groups and groups[-1][0] == kind and groups[-1][1] == n:
            groups[-1][2].append(raw)
        else:
            groups.append((kind, n, [raw]))
    parts = []
    for kind, n, raws in groups:
        if kind & PLAIN:
            parts.append(np.frombuffer(raws[0], _DTYPES[kind & ~PLAIN]))
            continue
        dtype = _DTYPES[kind]
        a = np.frombuffer(b"".join(raws), np.uint8).reshape(len(raws), dtype.itemsize, n)
        parts.append(a.transpose(0, 2, 1).copy().view(dtype).reshape(-1))
    if even:  # every chunk evenly spaced (the usual case): all their steps in one numpy pass
        first_a, stride_a, n_a = (np.array(c, dtype=np.int64) for c in zip(*even))
        total = int(n_a.sum())
        if (stride_a == 1).all() and (first_a[1:] == first_a[:-1] + n_a[:-1]).all():  # one run of steps
            steps.append(np.arange(int(first_a[0]), int(first_a[0]) + total, dtype=np.int64))
        else:
            offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n_a) - n_a, n_a)
            steps.append(np.repeat(first_a, n_a) + np.repeat(stride_a, n_a) * offset)
    ints = all(kind & ~PLAIN == I8 for kind, _, _ in groups)
    parts = [p if ints or p.dtype == np.float64 else p.astype(np.float64) for p in parts]
    return (
        np.concatenate(steps) if len(steps) > 1 else steps[0],
        np.concatenate(parts) if len(parts) > 1 else parts[0],
    )


def value_kind(blob: bytes) -> int:
    return bytes(blob[:1])[0] & ~PLAIN


def stats_of(steps, values: np.ndarray, t_first: int, t_last: int) -> Stats:
    """The statistics of one chunk's points (at least one; ``steps`` a list or an array)."""
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            lo, hi = float(np.fmin.reduce(values)), float(np.fmax.reduce(values))
    else:
        lo, hi = float(values.min()), float(values.max())
    return Stats(
        int(steps[0]), int(steps[-1]), len(steps), lo, hi, float(values[0]), float(values[-1]), t_first, t_last
    )


def _fmin(a: float, b: float) -> float:
    return b if a != a or b < a else a  # NaN-ignoring min (a != a: a is NaN)


def _fmax(a: float, b: float) -> float:
    return b if a != a or b > a else a


def combine(a: Optional[Stats], b: Stats) -> Stats:
    """The statistics of ``a``'s points followed by ``b``'s (``a`` may be None)."""
    if a is None:
        return b
    return Stats(
        a.first_step,
        b.last_step,
        a.count + b.count,
        _fmin(a.vmin, b.vmin),
        _fmax(a.vmax, b.vmax),
        a.vfirst,
        b.vlast,
        a.t_first,
        b.t_last,
    )
