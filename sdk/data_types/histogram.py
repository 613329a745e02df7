"""``Histogram``: counts over bins, logged inline in the row (no file)."""

from __future__ import annotations

import math

from .base import DataType

MAX_BINS = 512  # the seeds' limit: a row holds at most 512 counts and 513 edges
DEFAULT_BINS = 64


class Histogram(DataType):
    """A histogram of ``sequence`` in ``num_bins`` equal bins over its range, or one made
    elsewhere: ``Histogram(np_histogram=np.histogram(data))`` (counts, bin edges).

    ``histogram`` holds the counts and ``bins`` the ``len(histogram) + 1`` edges. Raises
    ValueError for more than 512 bins, an empty sequence, NaN or infinite values, or an
    ``np_histogram`` whose edges do not fit its counts. Bins a sequence with numpy when it is
    installed and in plain Python otherwise.
    """

    _type = "histogram"
    MAX_LENGTH = MAX_BINS

    def __init__(self, sequence=None, np_histogram=None, num_bins: int = DEFAULT_BINS):
        if np_histogram is not None:
            if sequence is not None:
                raise ValueError("Histogram takes a sequence or np_histogram=, not both")
            try:
                counts, edges = np_histogram
            except (TypeError, ValueError):
                raise ValueError("np_histogram must be a pair (counts, bin_edges), as np.histogram returns") from None
            counts, edges = _as_list(counts), _as_list(edges)
            if len(edges) != len(counts) + 1:
                raise ValueError(
                    f"np_histogram has {len(counts)} counts but {len(edges)} bin edges; "
                    f"a histogram needs one edge more than counts"
                )
            _check_bins(len(counts))
        elif sequence is not None:
            if isinstance(num_bins, bool) or not isinstance(num_bins, int):
                raise TypeError(f"num_bins must be an int, not {type(num_bins).__name__}")
            _check_bins(num_bins)
            counts, edges = _bin(sequence, num_bins)
        else:
            raise ValueError("Histogram needs a sequence of numbers or np_histogram=(counts, bin_edges)")
        self.histogram: list = counts
        self.bins: list = edges

    def to_json(self, run=None) -> dict:
        return {"_type": self._type, "values": self.histogram, "bins": self.bins}

    @classmethod
    def from_json(cls, obj: dict, source=None) -> "Histogram":
        return cls(np_histogram=(obj["values"], obj["bins"]))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.histogram == other.histogram and self.bins == other.bins

    __hash__ = None  # mutable lists inside

    def __repr__(self) -> str:
        lo, hi = (self.bins[0], self.bins[-1]) if self.bins else (None, None)
        return f"<Histogram {len(self.histogram)} bins [{lo}, {hi}] n={sum(self.histogram)}>"


def _check_bins(n: int) -> None:
    if n < 1:
        raise ValueError(f"a histogram needs at least 1 bin, not {n}")
    if n > MAX_BINS:
        raise ValueError(
            f"a histogram has at most {MAX_BINS} bins, not {n}: pass num_bins <= {MAX_BINS} "
            f"(or bin the data yourself with fewer bins)"
        )


def _as_list(values) -> list:
    tolist = getattr(values, "tolist", None)
    out = tolist() if tolist is not None else list(values)
    if not isinstance(out, list):
        raise ValueError("histogram counts and bin edges must be 1-D")
    return [v.item() if hasattr(v, "item") else v for v in out]


def _bin(sequence, num_bins: int) -> tuple[list, list]:
    try:
        import numpy as np  # optional: numpy (pip install 'trackside[media]')
    except ImportError:
        np = None
    if np is not None:
        arr = np.asarray(sequence)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"Histogram needs numbers, not values of type {arr.dtype}")
        arr = arr.ravel()
        if arr.size == 0:
            raise ValueError("Histogram of an empty sequence: there is nothing to bin")
        if not np.isfinite(arr).all():
            raise ValueError("Histogram values must be finite: the sequence holds NaN or infinity")
        counts, edges = np.histogram(arr, bins=num_bins)
        return counts.tolist(), edges.tolist()
    values = [float(v) for v in sequence]
    if not values:
        raise ValueError("Histogram of an empty sequence: there is nothing to bin")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("Histogram values must be finite: the sequence holds NaN or infinity")
    lo, hi = min(values), max(values)
    if lo == hi:  # numpy's rule for a single value: the range [v - 0.5, v + 0.5]
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / num_bins
    edges = [lo + i * width for i in range(num_bins)] + [hi]
    counts = [0] * num_bins
    for v in values:
        i = min(int((v - lo) / width), num_bins - 1)
        counts[i] += 1
    return counts, edges
