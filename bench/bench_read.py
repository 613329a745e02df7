"""Reading at chart speed: sampled history, whole series, tails and many runs, on SQLite and
PostgreSQL.

    python bench/bench_read.py [--steps 1000000] [--runs 100] [--run-steps 100000]
                               [--backends sqlite,postgresql] [--repeat 5] [--json]

One run of ``--steps`` steps of 10 float keys (values as float32 training metrics give them,
``loss.item()``, and, for the size line, a second run of noisy float64 values) is written
through ``Store.write_rows`` in batches of 5,000 rows, as the daemon's store stage writes
them; then ``--runs`` runs of ``--run-steps`` steps of one key. Each read is timed
``--repeat`` times on a fresh reader with the writer still open; the median is printed.
PostgreSQL runs on a private cluster started here (Debian's binaries, as the tests do).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from _common import emit, median, parser  # noqa: E402

from trackside.api import Api  # noqa: E402
from trackside.store import Store  # noqa: E402

KEYS = [f"m{i}" for i in range(10)]
T0 = 1_700_000_000_000_000
BATCH = 5000


class Row(NamedTuple):
    step: int
    time_us: int
    values: dict
    payloads: list
    amend: bool


def metric_values(n: int, keys: int, float32: bool, seed: int = 0) -> np.ndarray:
    """Loss-like curves: a decay plus noise, as float32 metrics (exact in float32) or float64."""
    rng = np.random.default_rng(seed)
    decay = np.exp(-np.arange(n) / (n / 3))[:, None] * (1 + np.arange(keys))[None, :]
    v = decay + rng.normal(0, 0.01, (n, keys))
    return v.astype(np.float32).astype(np.float64) if float32 else v


def write_run(store: Store, run_id: str, values: np.ndarray, keys: list[str], step_us: int = 1000) -> float:
    """Seconds to write ``values`` (steps x keys) as history rows, BATCH rows per transaction."""
    store.upsert_run(run_id, project="bench")
    n = len(values)
    elapsed = 0.0
    for i in range(0, n, BATCH):
        block = values[i : i + BATCH].tolist()
        rows = [Row(i + j, T0 + (i + j) * step_us, dict(zip(keys, v)), [], False) for j, v in enumerate(block)]
        t0 = time.perf_counter()
        store.write_rows(run_id, rows)
        elapsed += time.perf_counter() - t0
    return elapsed


def timed(fn, repeat: int) -> float:
    """Median milliseconds of ``fn()``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return median(times)


def store_bytes(root: str, api: Api, db) -> int:
    if db is None:
        return os.path.getsize(os.path.join(root, "trackside.db"))
    size = 0
    for table in ("runs", "history", "history_keys", "series_keys", "series_chunks", "series_stats"):
        (s,) = api.conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()
        size += s
    return size


def bench_backend(name: str, db, base: str, args) -> dict:
    root = os.path.join(base, name)
    out: dict = {}
    store = Store(root, db=db)
    out["write_1m_rows_per_s"] = args.steps / write_run(store, "long", metric_values(args.steps, 10, True), KEYS)
    store.close()  # SQLite: checkpointed into the file, whose size is measured
    api = Api(root, db=db)
    size_f32 = store_bytes(root, api, db)
    api.close()
    store = Store(root, db=db)
    # the float64 run in a store of its own, for its size
    root64 = os.path.join(base, name + "-f64")
    db64 = None
    if db is not None:
        import pg

        db64 = pg.create_database(args.pg_server)
    with Store(root64, db=db64) as s64:
        write_run(s64, "long64", metric_values(args.steps, 10, False, seed=1), KEYS)
    with Api(root64, db=db64) as a64:
        size_f64 = store_bytes(root64, a64, db64)
    out["bytes_per_value_float32_metrics"] = size_f32 / (args.steps * 10)
    out["bytes_per_value_float64_noise"] = size_f64 / (args.steps * 10)

    for i in range(args.runs):
        write_run(store, f"many{i:03d}", metric_values(args.run_steps, 1, True, seed=i + 2), ["loss"])

    api = Api(root, db=db)
    run = api.run("long")
    n = args.steps
    mid = n // 2
    r = args.repeat
    b = run.buckets("m0", 1000)["m0"]
    assert b.count.sum() == n, "the buckets miss points"
    out["history_samples_1000_ms"] = timed(lambda: run.history(keys=["m0"], samples=1000), r)
    out["buckets_1000_ms"] = timed(lambda: run.buckets("m0", 1000), r)
    out["zoom_10000_steps_ms"] = timed(lambda: run.buckets("m0", 1000, min_step=mid, max_step=mid + 10_000), r)
    out["zoom_buckets"] = len(run.buckets("m0", 1000, min_step=mid, max_step=mid + 10_000)["m0"].x)
    out["series_1m_ms"] = timed(lambda: run.series("m0"), r)
    assert len(run.series("m0").values) == n
    out["tail_1000_rows_ms"] = timed(lambda: run.tail(since=n - 1001), r)
    ids = [f"many{i:03d}" for i in range(args.runs)]
    out["many_runs_ms"] = timed(lambda: api.buckets_many(ids, "loss", 1000), r)
    out["history_1_key_all_rows_ms"] = timed(lambda: run.history(keys=["m0"]), 1)
    out["history_all_keys_all_rows_ms"] = timed(lambda: run.history(), 1)
    api.close()
    store.close()
    return out


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1_000_000, help="steps of the long run (10 float keys)")
    p.add_argument("--runs", type=int, default=100, help="runs read together by buckets_many")
    p.add_argument("--run-steps", type=int, default=100_000, help="steps of each of those runs (one key)")
    p.add_argument("--backends", default="sqlite,postgresql", help="sqlite, postgresql or both")
    p.add_argument("--repeat", type=int, default=5, help="timings per read; the median is printed")
    args = p.parse_args()
    base = tempfile.mkdtemp(prefix="trackside-bench-read-")
    results = {}
    cluster = None
    try:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                results["sqlite"] = bench_backend("sqlite", None, base, args)
            elif backend == "postgresql":
                import pg

                bin_dir = pg.find_bin_dir()
                if bin_dir is None:
                    print("PostgreSQL is not installed: its column is left out", file=sys.stderr)
                    continue
                cluster = pg.Cluster(bin_dir)
                args.pg_server = cluster.start()
                results["postgresql"] = bench_backend("postgresql", pg.create_database(args.pg_server), base, args)
            else:
                raise SystemExit(f"unknown backend {backend!r}: use sqlite, postgresql")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)

    lines = [
        ("history(keys=[k], samples=1000), whole run", "history_samples_1000_ms", "<= 20 ms"),
        ("buckets(k, 1000), whole run (numpy)", "buckets_1000_ms", "<= 20 ms"),
        ("same, zoomed to 10,000 steps", "zoom_10000_steps_ms", "<= 20 ms"),
        (f"series(k), all {args.steps:,} points", "series_1m_ms", "<= 100 ms"),
        (f"one key, 1,000 samples, {args.runs} runs of {args.run_steps:,} steps", "many_runs_ms", "<= 300 ms"),
        ("tail of the last 1,000 rows (1 s at 1k steps/s)", "tail_1000_rows_ms", "<= 5 ms"),
        ("history(keys=[k]), every row (dicts)", "history_1_key_all_rows_ms", ""),
        ("history(), every row, 10 keys (dicts)", "history_all_keys_all_rows_ms", ""),
        ("bytes per float value, float32 metrics", "bytes_per_value_float32_metrics", "<= 6"),
        ("bytes per float value, float64 noise", "bytes_per_value_float64_noise", ""),
        ("write, rows/s (10 keys, 5,000 per transaction)", "write_1m_rows_per_s", ""),
    ]
    rows = []
    for label, key, target in lines:
        row = {"read": label, "target": target}
        for backend, figures in results.items():
            row[backend] = figures[key]
        rows.append(row)
    notes = [
        "",
        f"ms: median of {args.repeat}; the 'every row' lines once. The zoom returned "
        + ", ".join(f"{b}: {f['zoom_buckets']} buckets" for b, f in results.items())
        + ".",
        "Bytes: the database (SQLite file, or PostgreSQL's tables with indexes and TOAST) over the values;",
        "the run's WAL is not in it. float64 noise: 44 bits of noise per value do not compress.",
    ]
    emit(
        args,
        "trackside reads: sampled history, series, tails, many runs",
        results,
        rows,
        ["read", *results, "target"],
        notes,
    )


if __name__ == "__main__":
    main()
