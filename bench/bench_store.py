"""The local store: how fast the daemon writes history rows and how fast ``Api`` reads them.

    python bench/bench_store.py [--rows 200000] [--batch 1000] [--repeat 3] [--json]

Write: ``Store.write_rows`` with rows of 10 float keys in batches (one transaction each), into
a fresh store; then the same rows again (a replay: every row merges into its stored step).
Read: ``RunView.history()`` for all keys and for 2 of the 10, ``scan_history``, and one
1,000-step range from the middle. Peer: the same rows as one SQL row per (run, step, key,
value), the other schema DESIGN §7 allows, written the same way.
"""

from __future__ import annotations

import gc
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, median, parser  # noqa: E402

from trackside.api import Api  # noqa: E402
from trackside.store import Store  # noqa: E402

KEYS = [f"train/metric_{i}" for i in range(10)]
T0 = 1_700_000_000_000_000


class Row(NamedTuple):
    step: int
    time_us: int
    values: dict
    payloads: list
    amend: bool


def make_rows(n: int) -> list[Row]:
    return [Row(s, T0 + s * 1000, {k: s * 1e-3 + i for i, k in enumerate(KEYS)}, [], False) for s in range(n)]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_all(store: Store, rows: list[Row], batch: int) -> None:
    for i in range(0, len(rows), batch):
        store.write_rows("bench", rows[i : i + batch])


def long_format(path: str, rows: list[Row], batch: int) -> float:
    """Seconds to write ``rows`` as (run, step, key, value) SQL rows, same pragmas and batching."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    con.execute(
        "CREATE TABLE h (rid INTEGER, step INTEGER, key TEXT, value, PRIMARY KEY (rid, step, key)) WITHOUT ROWID"
    )
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO h VALUES (1, ?, ?, ?)",
            [(r.step, k, v) for r in rows[i : i + batch] for k, v in r.values.items()],
        )
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return dt


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="history rows (steps) to write")
    p.add_argument("--batch", type=int, default=1000, help="rows per write_rows call")
    p.add_argument("--repeat", type=int, default=3, help="runs of each measure; the median is reported")
    p.add_argument("--peer-rows", type=int, default=50_000, help="steps for the long-format peer")
    p.add_argument("--dir", default=None, help="where to create the stores (default: a temp folder)")
    args = p.parse_args()

    rows = make_rows(args.rows)
    base = tempfile.mkdtemp(prefix="trackside-bench-", dir=args.dir)
    try:
        write, replay, sizes = [], [], []
        for i in range(args.repeat):
            root = os.path.join(base, f"w{i}")
            store = Store(root)
            store.upsert_run("bench", project="bench")
            write.append(timed(lambda: write_all(store, rows, args.batch)))
            replay.append(timed(lambda: write_all(store, rows[: args.rows // 10], args.batch)))
            store.close()
            sizes.append(os.path.getsize(os.path.join(root, "trackside.db")))

        peer_rows = rows[: args.peer_rows]
        peer = [long_format(os.path.join(base, f"long{i}.db"), peer_rows, args.batch) for i in range(args.repeat)]

        # a reader holds no rows of its own: free the written ones, or the garbage collector's
        # passes over them would be charged to the reads
        rows = peer_rows = None  # let the memory go before the next measures
        gc.collect()

        # reads: from the first store, while a writer has it open (as during a run)
        root = os.path.join(base, "w0")
        writer = Store(root)
        api = Api(root)
        run = api.run("bench")
        two = KEYS[:2]
        mid = args.rows // 2
        r_all, r_two, r_scan, r_range = [], [], [], []
        for _ in range(args.repeat):
            r_all.append(timed(run.history))
            r_two.append(timed(lambda: run.history(keys=two)))
            r_scan.append(timed(lambda: sum(1 for _ in run.scan_history(page_size=1000))))
            r_range.append(timed(lambda: run.history(keys=two, min_step=mid, max_step=mid + 1000)))
        assert len(run.history(keys=two)) == args.rows
        api.close()
        writer.close()

    finally:
        shutil.rmtree(base, ignore_errors=True)

    n = args.rows
    figures = {
        "rows": n,
        "batch": args.batch,
        "keys_per_row": len(KEYS),
        "write_rows_per_s": n / median(write),
        "replay_rows_per_s": (n // 10) / median(replay),
        "read_all_keys_rows_per_s": n / median(r_all),
        "read_2_keys_rows_per_s": n / median(r_two),
        "scan_history_rows_per_s": n / median(r_scan),
        "range_1000_steps_2_keys_ms": median(r_range) * 1e3,
        "db_bytes_per_row": median(sizes) / n,
        "peer_long_format_rows_per_s": args.peer_rows / median(peer),
        "peer_long_format_values_per_s": args.peer_rows * len(KEYS) / median(peer),
    }
    best_write = max(figures["write_rows_per_s"], figures["peer_long_format_rows_per_s"])
    table_rows = [
        {
            "measure": "write_rows (one msgpack row per step)",
            "rows/s": figures["write_rows_per_s"],
            "vs best": figures["write_rows_per_s"] / best_write,
        },
        {
            "measure": "peer: one SQL row per (step, key)",
            "rows/s": figures["peer_long_format_rows_per_s"],
            "vs best": figures["peer_long_format_rows_per_s"] / best_write,
        },
        {"measure": "write_rows replay (every row merges)", "rows/s": figures["replay_rows_per_s"]},
        {"measure": "history(), all 10 keys", "rows/s": figures["read_all_keys_rows_per_s"]},
        {"measure": "history(keys=2 of 10)", "rows/s": figures["read_2_keys_rows_per_s"]},
        {"measure": "scan_history(page_size=1000)", "rows/s": figures["scan_history_rows_per_s"]},
        {"measure": "history(2 keys, 1,000-step range)", "ms": figures["range_1000_steps_2_keys_ms"]},
    ]
    notes = [
        "",
        f"{n:,} rows of {len(KEYS)} float keys, {args.batch} rows per transaction, median of {args.repeat}; "
        f"store size {figures['db_bytes_per_row']:.0f} bytes per row. Peer: {args.peer_rows:,} steps, its rows/s",
        f"counts steps ({len(KEYS)} SQL rows each) so that both lines measure the same work.",
        "Caveats: synchronous=NORMAL (WAL): commits are not fsynced, checkpoints are (the daemon's own WAL",
        "is the durable copy). Rows are built before timing; the daemon's merger and codec are not included.",
        "Reads run with the writer's connection open; the OS page cache holds the database (warm reads).",
    ]
    emit(
        args,
        "trackside local store (SQLite, WAL mode)",
        figures,
        table_rows,
        ["measure", "rows/s", "ms", "vs best"],
        notes,
    )


if __name__ == "__main__":
    main()
