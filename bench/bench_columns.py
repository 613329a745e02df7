"""The merge stage's column path against the row path: CPU per record of each stage a run stream
runs on a LOG record after it is durable (decode, merge, summary, store), in one process.

Batches are what ``trackside bench``'s writers send: ``--writers`` writers (2) on the same steps,
each with its own 10 float keys, 4,096 entries per batch, encoded by the SDK's encoder. Both
paths get the same bodies, finalize after the same batches (``--group`` of them: about a store
group of the daemon) and write into a store of their own; the stores must end up holding the
same series (checked, table by table). The row path: ``decode_batch``, ``Merger.add``,
``finalize``, ``Summary.update`` of rows, ``Store.apply``. The column path: ``decode_columns``,
``Merger.add_blocks``, the rest the same but on ``ColumnRows``. Each figure is the median of
``--repeat`` runs, in us of CPU per record (``time.process_time``); the garbage collector runs
with the daemon's threshold.

    python bench/bench_columns.py [--writers 2] [--batches 40] [--group 4] [--repeat 3] [--json]
"""

from __future__ import annotations

import gc
import os
import shutil
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, median, parser  # noqa: E402

from trackside import _native as codec  # noqa: E402
from trackside.cli.profiler import keys_for, row_maker  # noqa: E402
from trackside.daemon.merger import Merger  # noqa: E402
from trackside.daemon.sink import GC_THRESHOLD  # noqa: E402
from trackside.daemon.summary import Summary  # noqa: E402
from trackside.store import DB_NAME, Store  # noqa: E402

ENTRIES = 4096  # per batch: the SDK's batch_entries
T0 = 1_700_000_000_000_000


def bodies(writers: int, batches: int) -> list[tuple[int, bytes]]:
    """(writer, LOG body) in arrival order: the writers' batches of the same steps in turn."""
    per_writer = []
    for rank in range(writers):
        make = row_maker(keys_for(10, rank, own=True))
        enc = codec.BatchEncoder()
        out = []
        for b in range(batches):
            for i in range(b * ENTRIES, (b + 1) * ENTRIES):
                enc.add(i, True, T0 + i, make(i * 1e-6))
            record = enc.take(rank + 1, b + 1)
            _, _, start, end = codec.parse_record(record)
            out.append((rank + 1, record[start:end]))
        per_writer.append(out)
    return [x for turn in zip(*per_writer) for x in turn]


def run(batches: list, group: int, columns: bool, root: str) -> dict:
    """One pass of every batch through the stages: CPU seconds of each."""
    spent = dict.fromkeys(("decode", "merge", "summary", "store"), 0.0)
    merger = Merger()
    summary = Summary(merger.metrics)
    store = Store(root)
    store.upsert_run("r", project="bench")
    clock = time.process_time
    now = time.monotonic()

    def finalize(everything: bool = False) -> None:
        t0 = clock()
        rows = merger.finalize(now, everything=everything)
        t1 = clock()
        summary.update(rows)
        t2 = clock()
        store.apply("r", rows=rows, summary=summary.snapshot(), typed_steps=set())
        t3 = clock()
        spent["merge"] += t1 - t0
        spent["summary"] += t2 - t1
        spent["store"] += t3 - t2

    gc.collect()
    for n, (writer, body) in enumerate(batches, 1):
        # Merger.add_plain's two steps, timed one by one
        t0 = clock()
        plain = codec.decode_columns(body) if columns else None
        entries = codec.decode_batch(body)[2] if plain is None else None
        t1 = clock()
        merger.join(writer)
        if plain is None or not merger.add_blocks(writer, plain[2], now):
            merger.add(writer, entries if entries is not None else codec.decode_batch(body)[2], now)
        spent["decode"] += t1 - t0
        spent["merge"] += clock() - t1
        if n % group == 0:
            finalize()
    finalize(everything=True)
    store.close()
    return spent


def stored(root: str) -> dict:
    """What a store holds of its series, table by table."""
    with sqlite3.connect(os.path.join(root, DB_NAME)) as c:
        return {t: sorted(c.execute(f"SELECT * FROM {t}")) for t in ("series_chunks", "series_stats", "history")}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--batches", type=int, default=40, help="batches of 4,096 entries per writer")
    p.add_argument("--group", type=int, default=4, help="batches merged between two finalize calls")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    gc.set_threshold(*GC_THRESHOLD)
    batches = bodies(args.writers, args.batches)
    records = len(batches) * ENTRIES
    rows, figures = [], {}
    held = {}
    for name, columns in (("rows (before)", False), ("columns", True)):
        passes = []
        for _ in range(args.repeat):
            root = tempfile.mkdtemp(prefix="trackside-bench-columns-")
            try:
                passes.append(run(batches, args.group, columns, root))
                held[name] = stored(root)
            finally:
                shutil.rmtree(root, ignore_errors=True)
        us = {stage: median([x[stage] for x in passes]) / records * 1e6 for stage in passes[0]}
        us["total"] = sum(us.values())
        figures[name] = us
        rows.append({"path": name, **{f"{k} us/record": v for k, v in us.items()}})
    same = held["rows (before)"] == held["columns"]
    ratio = figures["rows (before)"]["total"] / figures["columns"]["total"]
    emit(
        args,
        "trackside merge stage: rows vs columns",
        {"records": records, "us_per_record": figures, "same_series": same, "speedup": ratio},
        rows,
        ["path"] + [f"{k} us/record" for k in ("decode", "merge", "summary", "store", "total")],
        [
            "",
            f"{records:,} records of 10 floats ({args.writers} writers x {args.batches} batches of {ENTRIES:,}); "
            f"both stores hold the same series: {same}; the column path takes {1 / ratio:.0%} of the row path's CPU.",
        ],
    )
    if not same:
        raise SystemExit("the two paths stored different series")


if __name__ == "__main__":
    main()
