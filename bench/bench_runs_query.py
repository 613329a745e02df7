"""Run queries on a project of many runs: ``Api.runs`` with a config filter and a summary sort,
one page, on SQLite and on PostgreSQL.

    python bench/bench_runs_query.py [--runs 10000] [--repeat 20] [--pg URL] [--no-pg] [--json]

A store of ``--runs`` runs is written through the store's writer (each run: 20 config keys, one
nested, 20 summary keys, 1-3 tags), then each query is timed ``--repeat`` times on a fresh
``Api.runs`` (no page kept between repeats) and the median and p90 are printed in
milliseconds:

- ``filter+sort page 0``: ``runs(filters={"config.lr": {"$gt": 0.01}}, order="-summary.loss",
  per_page=100)[0:100]`` (the target: <= 100 ms);
- the same page at offset 5,000, and ``len()`` of that query (a COUNT);
- ``$or`` of a tag and a nested config value, sorted by a config value;
- the default listing (newest first), first page.

PostgreSQL is a private cluster started as the tests start one (``tests/pg.py``, fsync off),
unless ``--pg`` names a database; it is skipped when PostgreSQL is not installed.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, parser  # noqa: E402

import trackside  # noqa: E402
from trackside.store import Store  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

QUERIES = [
    (
        "filter+sort, page 0 (100)",
        lambda api: api.runs(filters={"config.lr": {"$gt": 0.01}}, order="-summary.loss", per_page=100)[0:100],
    ),
    (
        "filter+sort, page at 5,000",
        lambda api: api.runs(filters={"config.lr": {"$gt": 0.01}}, order="-summary.loss", per_page=100)[5000:5100],
    ),
    (
        "filter+sort, len()",
        lambda api: len(api.runs(filters={"config.lr": {"$gt": 0.01}}, order="-summary.loss", per_page=100)),
    ),
    (
        "$or tag/nested config, sort config",
        lambda api: api.runs(
            "bench",
            filters={"$or": [{"tags": "rare"}, {"config.opt.name": "lion"}], "state": "finished"},
            order="+config.seed",
            per_page=100,
        )[0:100],
    ),
    ("default listing, page 0", lambda api: api.runs("bench", per_page=100)[0:100]),
]


def fill(store: Store, n: int) -> float:
    rng = random.Random(7)
    t0 = time.perf_counter()
    for i in range(n):
        config = {f"c{k}": rng.random() for k in range(17)}
        config.update(lr=10 ** rng.uniform(-4, -1), seed=i, opt={"name": rng.choice(["adam", "sgd", "lion"])})
        summary = {f"s{k}": rng.random() for k in range(19)}
        summary["loss"] = rng.random()
        tags = ["bench"] + (["rare"] if i % 50 == 0 else []) + ([f"t{i % 7}"])
        run_id = f"run{i:06d}"
        store.upsert_run(run_id, project="bench", tags=tags, config=config, created_at=1.7e9 + i)
        store.apply(run_id, summary=summary, final_state=("finished", 0))
    return time.perf_counter() - t0


def measure(api, repeat: int) -> dict:
    out = {}
    for name, q in QUERIES:
        q(api)  # warm the caches once, as a UI's second page view would find them
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            q(api)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out[name] = {"median_ms": times[len(times) // 2], "p90_ms": times[min(len(times) - 1, int(len(times) * 0.9))]}
    return out


def postgres(url):
    if url:
        return url, None
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    try:
        import pg
    except ImportError:
        return None, None
    bin_dir = pg.find_bin_dir()
    if bin_dir is None:
        return None, None
    cluster = pg.Cluster(bin_dir)
    return pg.create_database(cluster.start()), cluster


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--pg", metavar="URL", help="a PostgreSQL database to use (default: start a private one)")
    p.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-runs-query-")
    figures: dict = {"runs": args.runs}
    rows = []
    cluster = None
    try:
        backends = [("sqlite", None)]
        if not args.no_pg:
            url, cluster = postgres(args.pg)
            if url:
                backends.append(("postgresql", url))
            else:
                figures["postgresql"] = None
        for name, db in backends:
            root = os.path.join(tmp, name)
            with Store(root, db=db) if db else Store(root) as store:
                fill_s = fill(store, args.runs)
            api = trackside.Api(root, db=db) if db else trackside.Api(root)
            try:
                results = measure(api, args.repeat)
            finally:
                api.close()
            figures[name] = {"fill_runs_per_s": args.runs / fill_s, "queries": results}
            for q, r in results.items():
                rows.append({"store": name, "query": q, **r})
            rows.append({"store": name, "query": f"(writing {args.runs:,} runs: {args.runs / fill_s:,.0f} runs/s)"})
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    emit(
        args,
        f"Api.runs over {args.runs:,} runs",
        figures,
        rows,
        ["store", "query", "median_ms", "p90_ms"],
        ["target: filter+sort page 0 <= 100 ms on both stores"],
    )


if __name__ == "__main__":
    main()
