"""Merge-stage throughput: entries/s through ``Merger.add`` + ``finalize`` on one core.

Entries carry 10 float values and arrive in batches (as the run stream hands them over after a
WAL append); ``finalize`` runs after every batch. Scenarios: one writer (the common case), four
writers on the same steps with their own keys, four writers on the same steps with the same keys
(every key collides, reduced by ``mean``), and one writer with the summary updated from the rows.

The daemon's target is 120,000 entries/s of 10 floats alongside its other work.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, median, parser  # noqa: E402

from trackside.daemon.merger import Merger  # noqa: E402
from trackside.daemon.summary import Summary  # noqa: E402

KEYS = 10


def _batches(writers: int, steps: int, batch: int, shared_keys: bool) -> list[tuple[int, list]]:
    """(writer, entries) batches, round-robin over writers, prebuilt so decoding is not timed."""
    per_writer = []
    for w in range(writers):
        names = [f"k{i}" if shared_keys else f"w{w}/k{i}" for i in range(KEYS)]
        entries = [(s, True, s * 1000, {n: s + i * 0.5 for i, n in enumerate(names)}, None) for s in range(steps)]
        per_writer.append([entries[i : i + batch] for i in range(0, steps, batch)])
    out = []
    for chunk in range(len(per_writer[0])):
        for w in range(writers):
            out.append((w, per_writer[w][chunk]))
    return out


def _run(batches, with_summary: bool = False, reduce: str | None = None) -> tuple[float, Merger]:
    m = Merger()
    if reduce:
        m.define_metric("*", reduce=reduce)
    summary = Summary(m.metrics) if with_summary else None
    now = 0.0
    t0 = time.perf_counter()
    for w, entries in batches:
        m.add(w, entries, now=now)
        out = m.finalize(now=now)
        if summary is not None:
            summary.update(out)
        now += 0.001
    out = m.finalize(everything=True)
    if summary is not None:
        summary.update(out)
    return time.perf_counter() - t0, m


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=200_000, help="entries per scenario (all writers)")
    p.add_argument("--batch", type=int, default=256, help="entries per add() call")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    scenarios = [
        ("1 writer", 1, False, False, None),
        ("4 writers, own keys", 4, False, False, None),
        ("4 writers, same keys (mean)", 4, True, False, "mean"),
        ("1 writer + summary", 1, False, True, None),
    ]
    table_rows = []
    figures = {}
    for name, writers, shared, with_summary, reduce in scenarios:
        steps = args.entries // writers
        batches = _batches(writers, steps, args.batch, shared)
        n = steps * writers
        times = []
        for _ in range(args.repeat):
            dt, m = _run(batches, with_summary, reduce)
            assert m.stats["rows_emitted"] - m.stats["amends"] == steps, m.stats
            times.append(dt)
        dt = median(times)
        r = {
            "scenario": name,
            "entries/s": n / dt,
            "us/entry": dt / n * 1e6,
            "rows/s": steps / dt,
            "x target": n / dt / 120_000,
            "amend rows": m.stats["amends"],
        }
        table_rows.append(r)
        figures[name] = {k: v for k, v in r.items() if k != "scenario"}
    emit(
        args,
        "merge stage: Merger.add + finalize (10 floats per entry)",
        {"entries": args.entries, "batch": args.batch, "repeat": args.repeat, "results": figures},
        table_rows,
        ["scenario", "entries/s", "us/entry", "rows/s", "x target", "amend rows"],
        notes=[
            "",
            f"median of {args.repeat} runs; {args.entries:,} entries per scenario, {args.batch} per add().",
            "Caveats: entries are prebuilt (decoding and the WAL are not timed); one process, no other",
            "load; the 'x target' column compares with 120,000 entries/s on one core.",
            "Amend rows with several writers: the first batch of writer 0 closes its steps before",
            "the other writers have logged anything (a writer that has not logged holds nothing",
            "back), so their first batch comes out as amends.",
        ],
    )


if __name__ == "__main__":
    main()
