"""Uploads to a `trackside server`: throughput, lag to readable, and syncing a big offline run.

    python bench/bench_upload.py [--records 1000000] [--pg-records 200000] [--lag-seconds 15] [--json]

1. Sync: a training process logs ``--records`` records of 10 floats with ``mode="offline"``
   (the WAL only); ``trackside sync RUN --to grpc://...`` replays it into a server with SQLite.
   Timed from the start of the sync until the server's store holds every row (polling the
   read API), so the figure is records/s stored at the server, end to end.
2. The same with a server on PostgreSQL (``--pg-records`` records), when PostgreSQL can be
   started here (a private cluster, as the tests start it: ``tests/pg.py``; note it runs
   with fsync off, like the tests') or ``--pg URL`` names one.
3. Lag: a training process logs 10 floats plus its wall-clock time at 1,000 records/s for
   ``--lag-seconds`` to a daemon uploading to the server (default upload interval, 1 s);
   another process polls the server's read API every 50 ms and takes, for each new row,
   the time it became readable minus the time ``log()`` was called. Median and p99.

Everything runs in temporary folders with its own daemon and servers, stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, parser  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

OFFLINE = """
import sys, trackside
n = int(sys.argv[1])
run = trackside.init(project="bench", mode="offline", settings={"system_metrics": False, "durability": "flush"})
log = run.log
for i in range(n):
    log({"m0": i * 1e-3, "m1": 1.0, "m2": 2.0, "m3": 3.0, "m4": 4.0, "m5": 5.0, "m6": 6.0, "m7": 7.0, "m8": 8.0,
         "m9": 9.0})
run.finish()
print(run.id)
"""

PACED = """
import sys, time, trackside
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
run = trackside.init(project="bench", settings={"system_metrics": False})
print(run.id, flush=True)
n = int(rate * seconds)
t0 = time.perf_counter()
for i in range(n):
    target = t0 + i / rate
    while time.perf_counter() < target:
        time.sleep(max(target - time.perf_counter() - 0.0002, 0))
    run.log({"t": time.time(), "m1": 1.0, "m2": 2.0, "m3": 3.0, "m4": 4.0, "m5": 5.0, "m6": 6.0, "m7": 7.0,
             "m8": 8.0, "m9": 9.0})
run.finish()
print("done", flush=True)
"""

POLL = """
import sys, time, json, trackside
url, run_id, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
api = trackside.Api(url)
lags = []
next_step = 0
deadline = time.time() + 600
while next_step < n and time.time() < deadline:
    try:
        rows = api.run(run_id).history(keys=["t"], min_step=next_step)
    except KeyError:
        rows = []
    now = time.time()
    for r in rows:
        lags.append(now - r["t"])
    if rows:
        next_step = rows[-1]["_step"] + 1
    time.sleep(0.05)
print(json.dumps(lags))
"""


class World:
    """A private daemon folder, run root and servers; everything stopped and removed at exit."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="trackside-bench-upload-")
        self.env = dict(
            os.environ,
            TRACKSIDE_DAEMON_DIR=os.path.join(self.tmp, "daemon"),
            TRACKSIDE_DIR=os.path.join(self.tmp, "root"),
            TRACKSIDE_IDLE_TIMEOUT="30",
        )
        for k in ("TRACKSIDE_SERVER", "TRACKSIDE_RUN_ID", "TRACKSIDE_MODE"):
            self.env.pop(k, None)
        self.servers = []
        self.cluster = None

    def server(self, name: str, db: str | None = None) -> str:
        info = os.path.join(self.tmp, f"{name}.json")
        cmd = [
            sys.executable,
            "-m",
            "trackside.server.team_server",
            "--root",
            os.path.join(self.tmp, name),
            "--port",
            "0",
            "--info-file",
            info,
        ]
        if db:
            cmd += ["--db", db]
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.servers.append(proc)
        deadline = time.monotonic() + 30
        while not os.path.exists(info):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {log.name}")
            time.sleep(0.02)
        with open(info) as f:
            return f"grpc://127.0.0.1:{json.load(f)['port']}"

    def python(self, code: str, *args, env=None, **kw):
        return subprocess.run(
            [sys.executable, "-c", code, *map(str, args)],
            env=env or self.env,
            capture_output=True,
            text=True,
            check=True,
            **kw,
        )

    def postgres(self, url: str | None) -> str | None:
        if url:
            return url
        sys.path.insert(0, os.path.join(HERE, "..", "tests"))
        try:
            import pg
        except ImportError:
            return None
        bin_dir = pg.find_bin_dir()
        if bin_dir is None:
            return None
        self.cluster = pg.Cluster(bin_dir)
        return pg.create_database(self.cluster.start())

    def close(self) -> None:
        subprocess.run([sys.executable, "-m", "trackside.cli", "daemon", "stop"], env=self.env, capture_output=True)
        for proc in self.servers:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.cluster is not None:
            self.cluster.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_rows(url: str, run_id: str, n: int, timeout: float = 1800) -> None:
    import trackside

    api = trackside.Api(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if api.run(run_id).history_rows >= n:
                return
        except KeyError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"run {run_id}: {n} rows not stored at {url} within {timeout} s")


def sync_throughput(world: World, url: str, n: int) -> dict:
    t0 = time.perf_counter()
    run_id = world.python(OFFLINE, n).stdout.split()[-1]
    logged = time.perf_counter() - t0
    subprocess.run([sys.executable, "-m", "trackside.cli", "daemon", "stop"], env=world.env, capture_output=True)
    run_dir = os.path.join(world.env["TRACKSIDE_DIR"], "runs", run_id)
    wal_bytes = sum(e.stat().st_size for e in os.scandir(os.path.join(run_dir, "wal")))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "sync", run_dir, "--to", url, "--quiet"],
        env=world.env,
        check=True,
        capture_output=True,
    )
    sent = time.perf_counter() - t0
    wait_rows(url, run_id, n)
    stored = time.perf_counter() - t0
    return {
        "records": n,
        "wal_mb": round(wal_bytes / 1e6, 1),
        "log_seconds": round(logged, 2),
        "sync_seconds": round(sent, 2),
        "stored_seconds": round(stored, 2),
        "records_per_s": round(n / stored),
    }


def lag(world: World, url: str, seconds: float, rate: float = 1000.0) -> dict:
    env = dict(world.env, TRACKSIDE_SERVER=url)
    trainer = subprocess.Popen(
        [sys.executable, "-c", PACED, str(rate), str(seconds)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = trainer.stdout.readline().strip()
    n = int(rate * seconds)
    poller = subprocess.Popen(
        [sys.executable, "-c", POLL, url, run_id, str(n)],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = poller.communicate(timeout=seconds + 600)
    trainer.communicate(timeout=120)
    lags = sorted(json.loads(out))
    if len(lags) < n:
        raise SystemExit(f"only {len(lags)} of {n} rows became readable: {err}")
    return {
        "rate": rate,
        "records": n,
        "lag_median_s": round(lags[len(lags) // 2], 3),
        "lag_p99_s": round(lags[int(len(lags) * 0.99)], 3),
        "lag_max_s": round(lags[-1], 3),
    }


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000, help="records of the offline run synced to SQLite")
    p.add_argument("--pg-records", type=int, default=200_000, help="records synced to PostgreSQL (0: skip)")
    p.add_argument("--pg", metavar="URL", help="a PostgreSQL database to use (default: start a private one)")
    p.add_argument("--lag-seconds", type=float, default=15.0, help="seconds of logging at 1,000 records/s")
    args = p.parse_args()
    world = World()
    rows = []
    figures = {}
    try:
        url = world.server("sqlite")
        figures["sync_sqlite"] = sync_throughput(world, url, args.records)
        rows.append({"figure": "sync offline run -> server (SQLite)", **figures["sync_sqlite"]})
        figures["lag"] = lag(world, url, args.lag_seconds)
        rows.append({"figure": "lag log() -> readable at server", **figures["lag"]})
        if args.pg_records:
            db = world.postgres(args.pg)
            if db is None:
                figures["sync_postgres"] = None
                rows.append({"figure": "sync -> server (PostgreSQL): skipped, no PostgreSQL here"})
            else:
                pg_url = world.server("postgres", db)
                figures["sync_postgres"] = sync_throughput(world, pg_url, args.pg_records)
                rows.append({"figure": "sync offline run -> server (PostgreSQL)", **figures["sync_postgres"]})
    finally:
        world.close()
    emit(
        args,
        "trackside uploads: server throughput, lag to readable, offline sync",
        figures,
        rows,
        [
            "figure",
            "records",
            "wal_mb",
            "log_seconds",
            "sync_seconds",
            "stored_seconds",
            "records_per_s",
            "lag_median_s",
            "lag_p99_s",
            "lag_max_s",
        ],
        notes=[
            "records: log() calls of 10 floats; records_per_s: rows stored at the server / seconds from "
            "the start of `trackside sync` until all are readable",
            "lag: time a row became readable through trackside.Api(url) (polled every 50 ms) minus its "
            "log() time, at 1,000 records/s, default upload interval (1 s)",
            "targets: >= 50,000 records/s into the server with SQLite; median lag < 2 s",
        ],
    )


if __name__ == "__main__":
    main()
