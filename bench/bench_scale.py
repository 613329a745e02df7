"""Scale: one daemon under overload, many writers on one daemon, closing, a server tier.

    python bench/bench_scale.py [--seconds 8] [--writers 64] [--rate 200] [--skip-overload] [--json]
        [--cases overload,many,closing,tier] [--hosts 100] [--servers 3] [--hosts-per-run 4]
        [--host-rate 500] [--tier-seconds 60] [--pg URL]

1. Overload: ``trackside bench`` with 2 and then 4 writer processes logging 10 floats flat out
   into one run for ``--seconds``: records/s from the first ``log()`` to stored, the writers'
   ``finish()`` time after they stop, the daemon's peak RSS (VmHWM). Each runs twice: first
   with every entry merged as a row (``TRACKSIDE_NO_COLUMNS=1``, the daemon before the merge
   stage's column path), then as the daemon runs by default.
2. Many writers: ``--writers`` processes (one run each) on one daemon, each logging 10 floats
   (one of them its wall-clock time) at ``--rate`` records/s for ``--seconds``, all starting
   together once every one of them has started. A poller
   reads every run's new rows from the store every 100 ms: lag from ``log()`` to readable,
   median and p99 (the polling period is part of it). Then: every run holds every step exactly
   once, how many writers were refused (non-zero exit), the daemon's peak RSS.

3. Closing: two daemons (two hosts' worth: own folders and run roots) x two ranks, one run
   uploading to one ``trackside server``, system metrics every 0.5 s and the default upload
   interval (1 s): seconds from the last rank's ``finish()`` until the server stored the run's
   end and let it go and neither daemon holds it (polled every 50 ms); every step's summed
   value checked against the four ranks'.

4. A server tier: ``--hosts`` simulated hosts (100) upload through ``--servers`` (3)
   ``trackside server --shared`` processes on one PostgreSQL database (a private cluster started
   as the tests start it, ``tests/pg.py``, fsync off; or ``--pg URL``) for ``--tier-seconds``
   (60). Each host is a thread with a distinct writer id and its own ``UploadClient`` (the
   daemon's upload client) listing every server, its own first; ``--hosts-per-run`` (4) hosts
   share a run, as the ranks of a multi-node job do: each logs 10 floats per step at
   ``--host-rate`` steps/s (500), in records of 20 ms (a daemon's client batches) sent once per
   second (the daemon's upload interval); ``n`` is summed across hosts (``reduce="sum"``) and
   ``t`` (the log time) kept as the maximum. Halfway, one server is ``kill -9``'d; its hosts move
   on to the next server of their list, and other servers take its runs over. A poller reads
   every run's new rows through ``trackside.Api`` every 200 ms: lag from ``log()`` of the step's
   last host to readable, p50 and p99. Afterwards, reading the store: every record each host
   sent is held exactly once (``run_records``: seqs 1..n per writer), every step of every run is
   one row whose ``n`` equals the hosts per run, and every run finished. Records/s stored: all
   entries (host-steps) over the time from the first ``log()`` to the last row stored.

Everything runs in temporary folders with its own daemon, stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, parser  # noqa: E402

PACED = """
import os, sys, time, trackside
rate, seconds, go = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
run = trackside.init(project="scale", settings={"system_metrics": False})
if getattr(run, "_meta_thread", None) is not None:
    run._meta_thread.join()  # start-up ends once the run's environment (git, packages) is recorded
print(run.id, flush=True)
while not os.path.exists(go):  # every writer started: their start-up is not part of the figures
    time.sleep(0.01)
n = int(rate * seconds)
t0 = time.perf_counter()
for i in range(n):
    target = t0 + i / rate
    delay = target - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    run.log({"t": time.time(), "m1": 1.0, "m2": 2.0, "m3": 3.0, "m4": 4.0, "m5": 5.0, "m6": 6.0, "m7": 7.0,
             "m8": 8.0, "m9": float(i)})
run.finish()
print("done", flush=True)
"""


def _env(tmp: str) -> dict:
    env = dict(
        os.environ,
        TRACKSIDE_DAEMON_DIR=os.path.join(tmp, "daemon"),
        TRACKSIDE_DIR=os.path.join(tmp, "root"),
        TRACKSIDE_IDLE_TIMEOUT="30",
    )
    for k in ("TRACKSIDE_SERVER", "TRACKSIDE_RUN_ID", "TRACKSIDE_MODE", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(k, None)
    return env


def _stop_daemon(env: dict) -> None:
    subprocess.run([sys.executable, "-m", "trackside.cli", "daemon", "stop"], env=env, capture_output=True, timeout=60)


def overload(writers: int, seconds: float, columns: bool = True) -> dict:
    tmp = tempfile.mkdtemp(prefix="trackside-bench-scale-")
    env = _env(tmp)
    if not columns:  # every entry merged as a row: the daemon before the column path
        env["TRACKSIDE_NO_COLUMNS"] = "1"
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "trackside.cli",
                "bench",
                "--writers",
                str(writers),
                "--seconds",
                str(seconds),
                "--json",
            ],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if p.returncode:
            raise SystemExit(f"trackside bench failed:\n{p.stderr}")
        r = json.loads(p.stdout)
        return {
            "case": f"overload, {writers} writers x {seconds:g} s" + ("" if columns else ", rows only (before)"),
            "records_per_s": r["records_per_s"],
            "finish_max_s": r["finish_ms"]["max_ms"] / 1e3,
            "daemon_peak_rss_mb": r["daemon"]["peak_rss_mb"],
            "rows_ok": r["rows_stored"] == r["rows_expected"],
        }
    finally:
        _stop_daemon(env)
        shutil.rmtree(tmp, ignore_errors=True)


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _stored_marks(api, project, wanted: set, marks: dict) -> dict:
    """One look at how far each run of ``wanted`` is stored (its last step, committed with its
    rows): appends ``(last step, now)`` to ``marks[run]`` when it moved; returns run -> last step.
    One query per look: reading each run's new rows instead made the figures include the
    measuring process's own reading, which on a saturated 2-core machine was the larger part."""
    now = time.time()
    top = {r.id: r.last_step for r in api.runs(project, per_page=1000) if r.id in wanted}
    for run_id, last in top.items():
        seen = marks.setdefault(run_id, [])
        if last is not None and (not seen or last > seen[-1][0]):
            seen.append((last, now))
    return top


def _lags(rows: list, marks: list) -> list:
    """Seconds from each row's logged time ``t`` to the first look that saw its step stored."""
    out, k = [], 0
    for r in rows:  # in step order
        while k < len(marks) and marks[k][0] < r["_step"]:
            k += 1
        if k < len(marks) and r.get("t") is not None:
            out.append(marks[k][1] - r["t"])
    return out


def many_writers(writers: int, rate: float, seconds: float) -> dict:
    import trackside
    from trackside.contracts import discovery

    tmp = tempfile.mkdtemp(prefix="trackside-bench-scale-")
    env = _env(tmp)
    procs = []
    try:
        subprocess.run(
            [sys.executable, "-m", "trackside.cli", "daemon", "start"],
            env=env,
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=60,
        )
        pid = discovery.read_info(env["TRACKSIDE_DAEMON_DIR"])["pid"]
        go = os.path.join(tmp, "go")
        for _ in range(writers):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", PACED, str(rate), str(seconds), go],
                    env=env,
                    cwd=tmp,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        run_ids = [p.stdout.readline().strip() for p in procs]
        open(go, "w").close()
        n = int(rate * seconds)
        api = trackside.Api(env["TRACKSIDE_DIR"])
        wanted = {r for r in run_ids if r}
        seen_at: dict = {r: [] for r in wanted}  # run -> [(last step, time first seen)]
        deadline = time.time() + seconds + 120
        while time.time() < deadline:
            top = _stored_marks(api, "scale", wanted, seen_at)
            if len(top) == len(wanted) and all(v is not None and v >= n - 1 for v in top.values()):
                break
            time.sleep(0.1)
        refused = 0
        for p in procs:
            p.communicate(timeout=120)
            refused += p.returncode != 0
        complete = 0
        lags = []
        for run_id in wanted:
            rows = api.run(run_id).history(keys=["t", "m9"])
            complete += [r["_step"] for r in rows] == list(range(n))
            lags += _lags(rows, seen_at[run_id])
        rss = _peak_rss_mb(pid)
        lags.sort()
        return {
            "case": f"{writers} writers x {rate:g} records/s x {seconds:g} s",
            "records_per_s": writers * rate,
            "runs_complete": f"{complete}/{writers}",
            "refused": refused,
            "lag_p50_s": statistics.median(lags) if lags else float("nan"),
            "lag_p99_s": lags[int(len(lags) * 0.99) - 1] if lags else float("nan"),
            "daemon_peak_rss_mb": rss,
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait()
        _stop_daemon(env)
        shutil.rmtree(tmp, ignore_errors=True)


RANK = """
import json, os, sys, time, trackside
run = trackside.init(project="scale", id=sys.argv[1], settings={"system_sample_interval": 0.1,
                                                               "system_log_interval": 0.5})
run.define_metric("t", reduce="sum")
for i in range(int(sys.argv[2])):
    run.log({"t": 1.0}, step=i)
    time.sleep(0.005)
run.finish()
print(time.time(), flush=True)
"""


def closing(steps: int = 300) -> dict:
    import trackside
    from trackside.contracts import discovery
    from trackside.remote import UploadClient
    from trackside.transport import daemon_status

    tmp = tempfile.mkdtemp(prefix="trackside-bench-scale-")
    procs, hosts = [], []
    server = None
    try:
        info = os.path.join(tmp, "server.json")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trackside.server.team_server",
                "--root",
                os.path.join(tmp, "server"),
                "--port",
                "0",
                "--info-file",
                info,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not os.path.exists(info):
            time.sleep(0.02)
        with open(info) as f:
            url = f"grpc://127.0.0.1:{json.load(f)['port']}"
        for name in ("a", "b"):
            env = _env(os.path.join(tmp, name))
            env["TRACKSIDE_SERVER"] = url
            hosts.append(env)
        for k in range(4):
            env = dict(hosts[k // 2], RANK=str(k), LOCAL_RANK=str(k % 2), WORLD_SIZE="4")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", RANK, "close-run", str(steps)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        last_finish = max(float(p.communicate(timeout=300)[0].split()[-1]) for p in procs)
        client = UploadClient(url)

        def closed():
            if any(r["run_id"] == "close-run" for r in client.status()["runs"]):
                return False
            for env in hosts:
                d = discovery.read_info(env["TRACKSIDE_DAEMON_DIR"])
                if d and any(r["run_id"] == "close-run" for r in daemon_status(d).get("runs", [])):
                    return False
            return trackside.Api(url).run("close-run").state == "finished"

        deadline = time.time() + 120
        while not closed() and time.time() < deadline:
            time.sleep(0.05)
        closed_after = time.time() - last_finish
        client.close()
        rows = trackside.Api(url).run("close-run").history()
        right = len(rows) == steps and all(r["t"] == 4.0 for r in rows)
        return {
            "case": "2 daemons x 2 ranks, one server: close after the last finish()",
            "close_s": closed_after,
            "runs_complete": "1/1" if right else "0/1",
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for env in hosts:
            _stop_daemon(env)
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


HOSTS = r"""
import json, random, sys, threading, time
from trackside import _native as codec
from trackside._native.constants import RECORD_EVENT
from trackside.contracts.protocol import Event, encode_event
from trackside.contracts.upload import TransientUploadError, UploadClient

urls, first, count, per_run, rate, seconds, go = sys.argv[1].split(","), *map(float, sys.argv[2:7]), sys.argv[7]
first, count, per_run = int(first), int(count), int(per_run)
BATCH, INTERVAL = 0.02, 1.0  # a daemon's client batch, its upload interval
steps = int(rate * seconds)
results = []


def event(writer, seq, kind, data):
    return codec.frame(RECORD_EVENT, encode_event(Event(writer, seq, kind, data)))


def host(k):
    writer = random.getrandbits(62) + 1
    run_id, rank = f"tier-{k // per_run}", k % per_run
    mine = urls[k % len(urls):] + urls[:k % len(urls)]
    client = UploadClient(",".join(mine), timeout=30)
    pending = [event(writer, 1, "join", {"rank": rank, "world_size": per_run}),
               event(writer, 2, "define_metric", {"name": "n", "reduce": "sum"}),
               event(writer, 3, "define_metric", {"name": "t", "reduce": "max"})]
    seq, step, sent, retries, calls = 3, 0, 0, 0, []
    info = {"project": "tier"}

    def upload():
        nonlocal pending, sent, retries
        if not pending:
            return
        t = time.perf_counter()
        try:
            client.append(run_id, info, pending)
        except TransientUploadError:
            retries += 1
            return
        calls.append(time.perf_counter() - t)
        sent += len(pending)
        pending = []

    while not __import__("os").path.exists(go):
        time.sleep(0.01)
    t0 = time.time()
    next_upload = t0 + random.random() * INTERVAL  # hosts upload out of phase, as real ones do
    while step < steps:
        now = time.time()
        due = min(int((now - t0) * rate) + 1, steps)
        if due > step:
            seq += 1
            entries = []
            for s in range(step, due):
                entries.append((s, True, int(now * 1e6), {"n": 1.0, "t": now, "m0": 0.5, "m1": 1.5, "m2": 2.5,
                                "m3": 3.5, "m4": 4.5, "m5": 5.5, "m6": 6.5, "m7": float(s)}, None))
            pending.append(codec.encode_batch(writer, seq, entries))
            step = due
        if now >= next_upload:
            upload()
            next_upload += INTERVAL
        time.sleep(max(0.0, min(BATCH, next_upload - time.time())))
    seq += 1
    pending.append(event(writer, seq, "finish", {"exit_code": 0}))
    while pending:
        upload()
        if pending:
            time.sleep(0.5)
    results.append({"run": run_id, "writer": writer, "records": seq, "steps": steps, "retries": retries,
                    "failovers": client.failovers, "append_s": calls})
    client.close()


threads = [threading.Thread(target=host, args=(k,)) for k in range(first, first + count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""


def _postgres(url):
    """A database URL and the private cluster holding it (None when ``url`` is given)."""
    if url:
        return url, None
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import pg

    bin_dir = pg.find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed here (no initdb): pass --pg URL")
    cluster = pg.Cluster(bin_dir)
    return pg.create_database(cluster.start()), cluster


def tier(hosts: int, servers: int, per_run: int, rate: float, seconds: float, pg_url=None, procs_n: int = 2) -> dict:
    import psycopg

    import trackside

    tmp = tempfile.mkdtemp(prefix="trackside-bench-tier-")
    db, cluster = _postgres(pg_url)
    server_procs, host_procs = [], []
    try:
        urls = []
        for i in range(servers):
            info = os.path.join(tmp, f"server{i}.json")
            log = open(os.path.join(tmp, f"server{i}.log"), "w")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "trackside.server.team_server",
                    "--root",
                    os.path.join(tmp, "root"),
                    "--db",
                    db,
                    "--shared",
                    "--port",
                    "0",
                    "--info-file",
                    info,
                    "--log-level",
                    "WARNING",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            server_procs.append(proc)
            while not os.path.exists(info):
                if proc.poll() is not None:
                    raise SystemExit(f"server {i} did not start; see {log.name}")
                time.sleep(0.05)
            with open(info) as f:
                urls.append(json.load(f)["url"])
        go = os.path.join(tmp, "go")
        share = -(-hosts // procs_n)
        for first in range(0, hosts, share):
            count = min(share, hosts - first)
            host_procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        HOSTS,
                        ",".join(urls),
                        str(first),
                        str(count),
                        str(per_run),
                        str(rate),
                        str(seconds),
                        go,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        time.sleep(2.0)  # the host processes import and start their threads
        runs = [f"tier-{r}" for r in range(-(-hosts // per_run))]
        steps = int(rate * seconds)
        api = trackside.Api(os.path.join(tmp, "root"), db=db)
        seen_at: dict = {}  # run -> [(last step, time first seen)]
        killed = None
        t0 = time.time()
        open(go, "w").close()
        deadline = t0 + seconds + 300
        while time.time() < deadline:
            if killed is None and time.time() - t0 >= seconds / 2:
                os.kill(server_procs[0].pid, signal.SIGKILL)  # the first server, mid-run
                server_procs[0].wait()
                killed = time.time() - t0
            top = _stored_marks(api, None, set(runs), seen_at)
            if len(top) == len(runs) and all(v is not None and v >= steps - 1 for v in top.values()):
                break
            time.sleep(0.2)
        last_row = max((m[-1][1] for m in seen_at.values() if m), default=t0)
        sent = []
        for p in host_procs:
            out, err = p.communicate(timeout=600)
            if p.returncode:
                raise SystemExit(f"a host process failed:\n{err}")
            sent += json.loads(out)
        stored_s = last_row - t0
        # exactly once, read from the store: the raw records, then every run's rows
        finished = time.time() + 120
        while time.time() < finished and not all(api.run(r).state == "finished" for r in runs):
            time.sleep(0.2)
        with psycopg.connect(db) as conn:
            held = {}
            for run_id, writer, n, low, high in conn.execute(
                "SELECT run_id, writer, count(*), min(seq), max(seq) FROM run_records GROUP BY run_id, writer"
            ):
                held[(run_id, writer)] = (n, low, high)
        records_once = all(held.get((h["run"], h["writer"])) == (h["records"], 1, h["records"]) for h in sent)
        records_once = records_once and len(held) == len(sent)
        complete = 0
        lags = []
        for run_id in runs:
            r = api.run(run_id)
            rows = r.history(keys=["n", "t"])
            lags += _lags(rows, seen_at.get(run_id, []))
            writers = sum(1 for h in sent if h["run"] == run_id)
            complete += (
                r.state == "finished"
                and [x["_step"] for x in rows] == list(range(steps))
                and all(x["n"] == float(writers) for x in rows)
            )
        statuses = []
        for proc, url in zip(server_procs[1:], urls[1:]):
            from trackside.contracts.upload import UploadClient

            with UploadClient(url, timeout=10) as c:
                statuses.append(c.status())
        calls = sorted(x for h in sent for x in h["append_s"])
        lags.sort()
        entries = hosts * steps
        return {
            "case": f"{hosts} hosts ({per_run} per run) x {rate:g} steps/s x {seconds:g} s through {servers} servers "
            f"on PostgreSQL, one kill -9'd at {killed:.0f} s",
            "records_per_s": entries / stored_s,
            "offered_records_per_s": hosts * rate,
            "rows_per_s": len(runs) * steps / stored_s,
            "lag_p50_s": statistics.median(lags) if lags else float("nan"),
            "lag_p99_s": lags[int(len(lags) * 0.99) - 1] if lags else float("nan"),
            "append_p99_s": calls[int(len(calls) * 0.99) - 1] if calls else float("nan"),
            "runs_complete": f"{complete}/{len(runs)}",
            "records_once": records_once,
            "failovers": sum(h["failovers"] for h in sent),
            "taken_over": sum(s["taken_over"] for s in statuses),
        }
    finally:
        for p in host_procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for p in server_procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = parser("trackside scale: overload, many writers, closing, a server tier")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--writers", type=int, default=64)
    p.add_argument("--rate", type=float, default=200.0, help="records/s per writer in the many-writers case")
    p.add_argument("--skip-overload", action="store_true")
    p.add_argument("--cases", default="overload,many,closing,tier", help="which cases to run (default: all of them)")
    p.add_argument("--hosts", type=int, default=100, help="simulated hosts in the tier case")
    p.add_argument("--servers", type=int, default=3, help="trackside server processes in the tier case")
    p.add_argument("--hosts-per-run", type=int, default=4, help="hosts sharing one run in the tier case")
    p.add_argument("--host-rate", type=float, default=500.0, help="steps/s each host logs in the tier case")
    p.add_argument("--tier-seconds", type=float, default=60.0, help="seconds the hosts log in the tier case")
    p.add_argument("--pg", metavar="URL", help="a PostgreSQL database for the tier case (default: a private one)")
    args = p.parse_args()
    cases = set(args.cases.split(","))
    rows = []
    if "overload" in cases and not args.skip_overload:
        for writers in (2, 4):
            rows += [overload(writers, args.seconds, columns=False), overload(writers, args.seconds)]
    if "many" in cases:
        rows.append(many_writers(args.writers, args.rate, args.seconds))
    if "closing" in cases:
        rows.append(closing())
    if "tier" in cases:
        rows.append(tier(args.hosts, args.servers, args.hosts_per_run, args.host_rate, args.tier_seconds, args.pg))
    notes = [
        "",
        "Targets (issue 16): overload finish() <= ~2 s, RSS <= 150 MB, records/s >= 1.5x the rows-only "
        "daemon's; many writers: every run complete, "
        "lag p99 <= 2 s, RSS <= 150 MB, none refused; closing within 2 s of the last finish().",
        "Tier (docs/multiserver.md): target >= 50,000 records/s of 10 floats stored in all; records_once: every "
        "record each host sent is in run_records exactly once; runs_complete: every step one row reduced over "
        "the run's hosts, the run finished.",
        "Caveats: a 2-core machine shared with other work gives noisy figures; a lag includes up to one look's "
        "interval (100 ms; 200 ms in the tier): each look asks every run's last stored step in one query.",
    ]
    emit(
        args,
        "trackside scale",
        {"cases": rows},
        rows,
        [
            "case",
            "records_per_s",
            "finish_max_s",
            "runs_complete",
            "refused",
            "lag_p50_s",
            "lag_p99_s",
            "daemon_peak_rss_mb",
            "close_s",
            "offered_records_per_s",
            "rows_per_s",
            "append_p99_s",
            "records_once",
            "failovers",
            "taken_over",
        ],
        notes,
    )


if __name__ == "__main__":
    main()
