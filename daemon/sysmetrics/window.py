"""A run's window of samples, aggregated into one row of system metrics per log interval."""

from __future__ import annotations


from .host import Parts


class Window:
    """One run's samples since its last stored row."""

    __slots__ = ("start", "samples", "sums", "counts", "maxes", "last", "time")

    def __init__(self, start: float):
        self.start = start  # monotonic
        self.samples = 0
        self.sums: dict = {}
        self.counts: dict = {}
        self.maxes: dict = {}
        self.last: dict = {}
        self.time = 0.0  # wall time of the last sample

    def add(self, parts: Parts, base: dict) -> None:
        sums, counts, maxes = self.sums, self.counts, self.maxes
        for k, v in parts.avg.items():
            if k in sums:
                sums[k] += v
                counts[k] += 1
                if v > maxes[k]:
                    maxes[k] = v
            else:
                sums[k] = v
                counts[k] = 1
                maxes[k] = v
        for k, v in parts.mean.items():
            if k in sums:
                sums[k] += v
                counts[k] += 1
            else:
                sums[k] = v
                counts[k] = 1
        self.last.update(parts.last)
        for k, v in parts.since.items():
            b = base.get(k)
            if b is None or v < b:  # first value, or the counter was reset
                base[k] = b = v
            self.last[k] = v - b

    def result(self) -> dict:
        counts = self.counts
        out = {k: s / counts[k] for k, s in self.sums.items()}
        for k, m in self.maxes.items():
            out[k + "_max"] = m
        out.update(self.last)
        return out
