"""Ingestion profiling on this machine: what ``trackside bench`` and ``bench/bench_ingest.py`` run.

A scenario is isolated: a fresh temp folder holds its own daemon folder (``TRACKSIDE_DAEMON_DIR``)
and run root (``TRACKSIDE_DIR``); writers are separate Python processes (``python -m
trackside.cli.profiler --writer-spec JSON``) and the first one's ``init()`` spawns the daemon. At the
end the daemon is stopped (SIGTERM, waited for) and the folder deleted.

Clocks: every process reads ``CLOCK_MONOTONIC`` (``time.monotonic_ns``), one clock for the host,
so times from writers, the daemon monitor and the store watcher can be compared directly.
"""

from __future__ import annotations

import array
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

import trackside
import trackside._native as native
from trackside.api import Api
from trackside.contracts import discovery
from trackside.transport import daemon_status

SCHEMA_VERSION = 1
KINDS = ("float", "histogram", "image", "table")
BASE_KEYS = (
    "train/loss",
    "train/acc",
    "train/lr",
    "train/grad_norm",
    "train/tokens_per_s",
    "train/epoch",
    "train/step_time",
    "val/loss",
    "val/acc",
    "gpu/mem_gb",
)
POOL = 16  # rich values are built before the timed loop and cycled: building them is not log()'s cost


def machine() -> dict:
    """The machine and software versions, printed with every result."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
    }
    info["trackside"] = trackside.__version__
    info["codec"] = native.IMPLEMENTATION
    for mod in ("msgspec", "Cython"):
        try:
            info[mod.lower()] = __import__(mod).__version__
        except ImportError:
            pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- figures ----------------------------------------------------------------------------------------


def pct(sorted_xs, q: float):
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


def stats_us(samples_ns) -> dict:
    xs = sorted(samples_ns)
    return {
        "median_us": pct(xs, 0.5) / 1e3,
        "p99_us": pct(xs, 0.99) / 1e3,
        "p999_us": pct(xs, 0.999) / 1e3,
        "max_us": xs[-1] / 1e3,
        "mean_us": sum(xs) / len(xs) / 1e3,
    }


def stats_ms(xs) -> dict:
    """median / p99 / max / count of ``xs`` (milliseconds); None figures when there are none."""
    if not xs:
        return {"median_ms": None, "p99_ms": None, "max_ms": None, "samples": 0}
    xs = sorted(xs)
    return {"median_ms": pct(xs, 0.5), "p99_ms": pct(xs, 0.99), "max_ms": xs[-1], "samples": len(xs)}


def keys_for(n: int, rank: int, own: bool) -> tuple:
    keys = BASE_KEYS[:n] if n <= len(BASE_KEYS) else BASE_KEYS + tuple(f"train/m{j}" for j in range(len(BASE_KEYS), n))
    return tuple(f"rank{rank}/{k}" for k in keys) if own else keys


def row_maker(keys):
    """A function of ``a`` returning a fresh dict of the keys, every value depending on ``a``:
    as cheap as a dict literal, so the loop measures log() and not the dict building."""
    body = ", ".join(f"{k!r}: a * {j + 1}.0 + {j}.5" for j, k in enumerate(keys))
    return eval(f"lambda a: {{{body}}}")


def check_kinds(kinds) -> None:
    """Raise ValueError for an unknown kind, or one whose libraries are missing (with the extra)."""
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"value kind {k!r} is not one of {', '.join(KINDS)}")
    if "image" in kinds:
        try:
            # optional: numpy and pillow for the image kind (pip install 'trackside[media]')
            import numpy  # noqa: F401
            import PIL  # noqa: F401
        except ImportError as e:
            raise ValueError(
                f"value kind 'image' needs numpy and pillow ({e}): pip install 'trackside[media]'"
            ) from None


def _rich_pool(kinds, rank: int) -> list[dict]:
    """POOL dicts of the rich values of one record: one key per kind besides floats."""
    pool = []
    for j in range(POOL):
        d = {}
        if "histogram" in kinds:
            d[f"rank{rank}/hist"] = trackside.Histogram([((i * 7919 + j * 31) % 1000) / 10.0 for i in range(1000)])
        if "image" in kinds:
            import numpy as np  # optional: numpy (pip install 'trackside[media]')

            rng = np.random.default_rng(rank * POOL + j)
            d[f"rank{rank}/image"] = trackside.Image(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        if "table" in kinds:
            d[f"rank{rank}/table"] = trackside.Table(
                columns=["id", "label", "score"],
                data=[[i, f"c{(i + j) % 5}", i / 10 + j] for i in range(10)],
                log_mode="MUTABLE",
            )  # each log stores a version
        pool.append(d)
    return pool


# -- the writer process -----------------------------------------------------------------------------


def _say(obj) -> None:
    # straight to fd 1: sys.stdout is teed into the run's console log once init() has run
    os.write(1, (json.dumps(obj) + "\n").encode())


def _wait_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"writer: expected 'go', got {line!r}")


class _Probes:
    """In a writer: every 20 ms the count of records logged so far; every 100 ms the time from a
    moment to the daemon's ack of everything logged before it (lag to durable). Reads the client's
    sequence numbers; never frames or sends anything itself, so batching is as in training."""

    def __init__(self, run, progress: list):
        self.client = run._client
        self.progress = progress
        self.timeline: list = []
        self.durable: list = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._count, daemon=True)]
        if self.client is not None:
            self._threads.append(threading.Thread(target=self._ack, daemon=True))

    def start(self):
        for t in self._threads:
            t.start()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.timeline.append((time.monotonic_ns(), self.progress[0]))

    def _count(self):
        while not self._stop.wait(0.02):
            self.timeline.append((time.monotonic_ns(), self.progress[0]))

    def _ack(self):
        c = self.client
        while not self._stop.wait(0.1):
            t = time.monotonic_ns()
            target = c.logged_seq()  # what is logged so far: in the batch being built, or framed
            if target == 0:
                continue
            if c.wait_acked(target, self._stop):
                self.durable.append((t, (time.monotonic_ns() - t) / 1e6))


def writer_main(spec: dict) -> None:
    """One writer: init (rank 0 creates the run, the others join it), wait for 'go', log, finish;
    one JSON line of figures on stdout."""
    rank = spec["rank"]
    kwargs = {
        "project": "bench",
        "settings": {"durability": spec["durability"], "transport": spec.get("transport", "unix")},
    }
    dest = spec.get("dest", "store")
    if dest == "none":
        kwargs["mode"] = "offline"  # the WAL only
    elif dest != "store":
        kwargs["settings"]["server"] = dest  # the daemon uploads to this trackside server
    if rank == 0:
        kwargs["id"] = spec["run_id"]  # the others join it through TRACKSIDE_RUN_ID
    run = trackside.init(**kwargs)
    # git/package metadata is collected by a thread once per run: let it end before timing
    meta = getattr(run, "_meta_thread", None)
    if meta is not None:
        meta.join(30)
    keys = keys_for(spec.get("keys_per_record", 10), rank, spec.get("keys", "own") != "same")
    make = row_maker(keys)
    kinds = [k for k in spec.get("kinds", ["float"]) if k != "float"]
    pool = _rich_pool(kinds, rank) if kinds else None
    n = spec.get("records") or (1 << 62)
    seconds = spec.get("seconds")
    rate = spec.get("rate") or 0
    timed = spec.get("time_calls", True)
    log = run.log
    mono = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process on the host
    pc = time.perf_counter_ns
    out = {"rank": rank, "pid": os.getpid()}
    progress = [0]
    probes = _Probes(run, progress) if spec.get("probes", True) else None
    _say({"ready": True, "pid": os.getpid()})
    _wait_go()

    empty = None
    if spec.get("empty_loop"):  # the cost of the timing itself, for comparison
        m = min(n, 1_000_000)
        empty = array.array("q", bytes(8 * m))
        for i in range(m):
            d = make(i * 1e-6)
            t0 = pc()
            t1 = pc()
            empty[i] = t1 - t0
    samples = array.array("q")
    add = samples.append
    if probes is not None:
        probes.start()
    out["first_log"] = t_start = mono()
    deadline = t_start + int(seconds * 1e9) if seconds else None
    per_ns = 1e9 / rate if rate else 0
    i = 0
    while i < n:
        if i & 63 == 0:  # every 64 calls: the clock, for the duration and the pace
            if deadline is not None or per_ns:
                now = mono()
                if deadline is not None and now >= deadline:
                    break
                if per_ns:
                    ahead = t_start + i * per_ns - now
                    if ahead > 0:
                        time.sleep(ahead / 1e9)
        d = make(i * 1e-6)
        if pool is not None:
            d.update(pool[i % POOL])
        if timed:
            t0 = pc()
            log(d)
            add(pc() - t0)
        else:
            log(d)
        i += 1
        progress[0] = i
    out["last_log"] = mono()
    out["records"] = i
    if probes is not None:
        probes.stop()
    client = run._client
    run.finish()
    out["finished"] = mono()
    out["late_dropped"] = run.late_dropped
    out["dropped"] = getattr(client, "dropped", 0) if client is not None else 0
    if timed and samples:
        out["log_cost"] = stats_us(samples)
        out["log_samples_ns"] = _subsample(samples, 20_000)
    if empty is not None:
        out["empty_loop"] = stats_us(empty)
    if probes is not None:
        out["timeline"] = probes.timeline
        out["durable_lags"] = probes.durable
    _say(out)


def _subsample(xs, k: int) -> list:
    """At most ``k`` values of ``xs``, evenly spaced, the maximum always kept (for pooled figures)."""
    if len(xs) <= k:
        return list(xs)
    step = len(xs) / k
    out = [xs[int(j * step)] for j in range(k)]
    out[-1] = max(xs)
    return out


# -- the parent: one isolated scenario --------------------------------------------------------------


class DaemonMonitor:
    """CPU seconds (user + sys) between start() and stop(), RSS sampled every 50 ms, VmHWM."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        c = self.proc.cpu_times()
        self.cpu0 = c.user + c.system
        self.peak_rss = self.proc.memory_info().rss
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            except Exception:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        c = self.proc.cpu_times()
        self.cpu1 = c.user + c.system
        self.rss_end = self.proc.memory_info().rss
        self.hwm = None
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.hwm = int(line.split()[1]) * 1024
        except OSError:
            pass

    def figures(self) -> dict:
        return {
            "daemon_cpu_s": self.cpu1 - self.cpu0,
            "daemon_peak_rss_mb": self.peak_rss / 2**20,
            "daemon_vmhwm_mb": self.hwm / 2**20 if self.hwm is not None else None,
            "daemon_rss_end_mb": self.rss_end / 2**20,
        }


class StoreWatch:
    """Polls the store's row count of the run every ``interval`` seconds: (monotonic ns, rows).
    ``root`` is a run root or a server URL (rows readable at the server)."""

    def __init__(self, root: str, run_id: str, interval: float = 0.05):
        self.root, self.run_id, self.interval = root, run_id, interval
        self.samples: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    @property
    def rows(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def _poll(self):
        while not self._stop.is_set():
            try:
                with Api(self.root) as api:
                    view = api.run(self.run_id)
                    while not self._stop.wait(self.interval):
                        self.samples.append((time.monotonic_ns(), view.refresh().history_rows))
            except (OSError, KeyError, LookupError):  # no store or no run yet
                self._stop.wait(0.1)
            except Exception:  # a locked or half-written store: try again
                self._stop.wait(0.1)


class Scenario:
    """A temp folder with a daemon dir and a run root; writers started in it; cleaned up after."""

    def __init__(self, spec: dict, writer_cmd: list | None = None):
        self.tmp = tempfile.mkdtemp(prefix="trackside-bench-", dir="/tmp")
        self.daemon_dir = os.path.join(self.tmp, "daemon")
        self.root = os.path.join(self.tmp, "root")
        os.makedirs(self.daemon_dir, mode=0o700)
        self.env = dict(os.environ)
        for k in ("TRACKSIDE_RUN_ID", "TRACKSIDE_NO_EXTENSIONS", "TRACKSIDE_MODE", "RANK", "LOCAL_RANK"):
            self.env.pop(k, None)
        self.env.update(
            {"TRACKSIDE_DAEMON_DIR": self.daemon_dir, "TRACKSIDE_DIR": self.root, "TRACKSIDE_IDLE_TIMEOUT": "120"}
        )
        self.run_id = "bench" + os.urandom(4).hex()
        self.dest = spec.get("dest", "store")  # "store", "none" (offline: nothing is stored) or a server URL
        self.spec = dict(spec, run_id=self.run_id)
        self.writer_cmd = writer_cmd or [sys.executable, "-m", "trackside.cli.profiler"]
        self.procs: list[subprocess.Popen] = []
        self._errs: list = []
        self.daemon_pid = None

    def start_writer(self, rank: int, **extra) -> subprocess.Popen:
        env = dict(self.env)
        if rank > 0:
            env["TRACKSIDE_RUN_ID"] = self.run_id
        env["RANK"] = str(rank)
        spec = dict(self.spec, rank=rank, **extra)
        err = open(os.path.join(self.tmp, f"writer{rank}.err"), "wb")
        self._errs.append(err)
        p = subprocess.Popen(
            [*self.writer_cmd, "--writer-spec", json.dumps(spec)],
            env=env,
            cwd=self.tmp,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        self.procs.append(p)
        return p

    def read(self, p: subprocess.Popen) -> dict:
        line = p.stdout.readline()
        if not line:
            p.wait()
            with open(os.path.join(self.tmp, f"writer{self.procs.index(p)}.err")) as f:
                err = f.read()[-3000:]
            raise RuntimeError(f"writer exited with {p.returncode}:\n{err}")
        return json.loads(line)

    def daemon_info(self) -> dict | None:
        return discovery.read_info(self.daemon_dir)

    def run(self, writers: int, on_tick=None, **extra) -> dict:
        """Start ``writers`` writers, let them go together, wait for their figures and the store.
        ``on_tick(scenario, store_watch)`` is called about every 0.5 s while the writers run."""
        first = self.start_writer(0, **extra)
        self.read(first)  # init() returned: the daemon runs and the run exists
        others = [self.start_writer(r, **extra) for r in range(1, writers)]
        for p in others:
            self.read(p)
        info = self.daemon_info()
        self.daemon_pid = info["pid"]
        mon = DaemonMonitor(self.daemon_pid)
        watch = StoreWatch(self.root if self.dest == "store" else self.dest, self.run_id)
        if self.dest != "none":
            watch.start()
        mon.start()
        t_go = time.monotonic_ns()
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results: list = [None] * len(self.procs)
        readers = [
            threading.Thread(target=lambda j=j, p=p: results.__setitem__(j, self._read_safe(p)), daemon=True)
            for j, p in enumerate(self.procs)
        ]
        for t in readers:
            t.start()
        while True:
            alive = [t for t in readers if t.is_alive()]
            if not alive:
                break
            alive[0].join(0.5)
            if on_tick is not None and alive[0].is_alive():
                on_tick(self, watch, t_go)
        mon.stop()
        for r in results:
            if isinstance(r, BaseException):
                watch.stop()
                raise r
        for p in self.procs:
            p.wait(30)
        for f in self._errs:
            f.flush()
        warnings = []
        for r in range(writers):
            with open(os.path.join(self.tmp, f"writer{r}.err"), errors="replace") as f:
                warnings += [f"writer {r}: {line.strip()}" for line in f if line.startswith("trackside:")]
        expected = max(r["records"] for r in results)  # one row per step; writers log steps 0..n-1
        deadline = time.monotonic() + (30.0 if not warnings else 2.0)
        while self.dest != "none" and watch.rows < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.dest != "none":
            watch.stop()
        rows = watch.rows
        stored_at = watch.samples[-1][0] if watch.samples else time.monotonic_ns()
        t0 = min(r["first_log"] for r in results)
        t_fin = max(r["finished"] for r in results)
        t_end = max(t_fin, stored_at) if rows >= expected else t_fin
        total = sum(r["records"] for r in results)
        return {
            "writers": writers,
            "records": total,
            "rows_stored": rows,
            "rows_expected": expected,
            "t0": t0,
            "seconds": (t_end - t0) / 1e9,
            "records_per_s": total / ((t_end - t0) / 1e9),
            "log_loop_s": max((r["last_log"] - r["first_log"]) / 1e9 for r in results),
            "finish_after_last_log_ms": max((r["finished"] - r["last_log"]) / 1e6 for r in results),
            "finish_after_all_logs_ms": (t_fin - max(r["last_log"] for r in results)) / 1e6,
            **mon.figures(),
            "store_samples": watch.samples,
            "writer_warnings": warnings,
            "writer_results": results,
        }

    def _read_safe(self, p):
        try:
            return self.read(p)
        except BaseException as e:  # handed to the main thread
            return e

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
        for f in self._errs:
            f.close()
        info = discovery.read_info(self.daemon_dir)
        pid = (info or {}).get("pid") or self.daemon_pid
        if pid and discovery.pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while discovery.pid_alive(pid):
                if time.monotonic() > deadline:
                    print(f"bench: daemon {pid} did not stop within 60 s of SIGTERM: killing it", file=sys.stderr)
                    os.kill(pid, signal.SIGKILL)
                    deadline = float("inf")
                time.sleep(0.02)
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- trackside bench ----------------------------------------------------------------------------------


def _logged_at(timeline: list, count: int):
    """The monotonic ns at which a writer's count of logged records reached ``count``
    (linear between its 20 ms samples); None if it never did."""
    prev = None
    for t, c in timeline:
        if c >= count:
            if prev is None or c == prev[1]:
                return t
            pt, pc_ = prev
            return pt + (t - pt) * (count - pc_) / (c - pc_)
        prev = (t, c)
    return None


def stored_lags(results: list, store_samples: list) -> list:
    """(monotonic ns, ms) pairs: for each store poll that saw new rows, the time from the moment
    every writer had logged the newest stored step to that poll (an upper bound by the poll
    interval, 50 ms)."""
    out = []
    prev_rows = 0
    for t, rows in store_samples:
        if rows > prev_rows:
            s = rows - 1  # the newest stored step; a row is stored once every writer moved past it
            times = [_logged_at(r.get("timeline", ()), s + 1) for r in results if r["records"] > s]
            times = [x for x in times if x is not None]
            if times:
                out.append((t, max(0.0, (t - max(times)) / 1e6)))
            prev_rows = rows
    return out


def run_bench(opts: dict, progress=None) -> dict:
    """Run one ``trackside bench`` scenario; the result follows docs/bench.schema.json.

    ``opts``: writers, keys_per_record, kinds, records or seconds, durability, rate, keys.
    ``progress(line)`` is called about every 0.5 s with a one-line summary while writers run."""
    spec = {
        "durability": opts["durability"],
        "records": opts.get("records"),
        "seconds": opts.get("seconds"),
        "keys_per_record": opts["keys_per_record"],
        "kinds": list(opts["kinds"]),
        "keys": opts.get("keys", "own"),
        "rate": opts.get("rate") or 0,
        "time_calls": True,
        "probes": True,
        "dest": opts.get("dest", "store"),
        "transport": opts.get("transport", "unix"),
    }
    values_per_record = opts["keys_per_record"] + len([k for k in opts["kinds"] if k != "float"])

    def tick(sc, watch, t_go):
        if progress is None:
            return
        el = (time.monotonic_ns() - t_go) / 1e9
        received = None
        try:
            st = daemon_status(sc.daemon_info(), timeout=1.0)
            received = sum(r.get("entries", 0) for r in st.get("runs", []))
        except Exception:
            pass
        rows = watch.rows
        line = (
            f"{el:6.1f} s  daemon has {received if received is not None else '?':>10,} records"
            if received is not None
            else f"{el:6.1f} s"
        )
        progress(f"{line}  stored {rows:,} rows  ({rows * opts['writers'] / max(el, 1e-9):,.0f} records/s stored)")

    sc = Scenario(spec)
    try:
        r = sc.run(opts["writers"], on_tick=tick)
    finally:
        sc.close()
    results = r["writer_results"]
    t0 = r["t0"]
    samples = [x for w in results for x in w.get("log_samples_ns", ())]
    calls = stats_us(samples) if samples else None
    durable = [(t, ms) for w in results for t, ms in w.get("durable_lags", ())]
    stored = stored_lags(results, r["store_samples"])
    finish_ms = [(w["finished"] - w["last_log"]) / 1e6 for w in results]
    logged_tl = _sum_timelines([w.get("timeline", []) for w in results])
    out = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "trackside bench",
        "machine": machine(),
        "options": {
            "writers": opts["writers"],
            "keys_per_record": opts["keys_per_record"],
            "kinds": list(opts["kinds"]),
            "records": opts.get("records"),
            "seconds": opts.get("seconds"),
            "durability": opts["durability"],
            "transport": opts.get("transport", "unix"),
            "dest": opts.get("dest", "store"),
            "rate": opts.get("rate") or None,
            "keys": opts.get("keys", "own"),
        },
        "codec": native.IMPLEMENTATION,
        "records": r["records"],
        "values": r["records"] * values_per_record,
        "rows_stored": r["rows_stored"],
        "rows_expected": r["rows_expected"],
        "seconds": r["seconds"],
        "records_per_s": r["records_per_s"],
        "values_per_s": r["records_per_s"] * values_per_record,
        "log_loop_s": r["log_loop_s"],
        "log_call_us": None if calls is None else {k: calls[k] for k in ("median_us", "p99_us", "max_us", "mean_us")},
        "lag_durable_ms": stats_ms([ms for _, ms in durable]),
        "lag_stored_ms": stats_ms([ms for _, ms in stored]),
        "finish_ms": {"median_ms": statistics.median(finish_ms), "max_ms": max(finish_ms)},
        "daemon": {
            "cpu_s": r["daemon_cpu_s"],
            "peak_rss_mb": r["daemon_peak_rss_mb"],
            "vmhwm_mb": r["daemon_vmhwm_mb"],
        },
        "late_dropped": sum(w.get("late_dropped", 0) for w in results),
        "dropped": sum(w.get("dropped", 0) for w in results),
        "warnings": r["writer_warnings"],
        "timeline": {
            "logged": [[(t - t0) / 1e9, n] for t, n in logged_tl],
            "stored_rows": [[(t - t0) / 1e9, n] for t, n in r["store_samples"]],
            "lag_durable_ms": sorted([(t - t0) / 1e9, ms] for t, ms in durable),
            "lag_stored_ms": [[(t - t0) / 1e9, ms] for t, ms in stored],
        },
    }
    return out


def _sum_timelines(timelines: list) -> list:
    """The total count logged by all writers at each 20 ms sample time of the first writer
    (each writer's count taken at its latest sample before that time)."""
    if not timelines or not timelines[0]:
        return []
    out = []
    idx = [0] * len(timelines)
    for t, _ in timelines[0]:
        total = 0
        for j, tl in enumerate(timelines):
            while idx[j] + 1 < len(tl) and tl[idx[j] + 1][0] <= t:
                idx[j] += 1
            total += tl[idx[j]][1] if tl and tl[idx[j]][0] <= t else 0
        out.append((t, total))
    return out


def report_lines(res: dict) -> list[str]:
    """The human-readable report of a ``run_bench`` result."""
    o = res["options"]
    dur = f"{o['records']:,} records per writer" if o.get("records") else f"{o['seconds']:g} s"
    m = res["machine"]
    lines = [
        f"trackside bench: {o['writers']} writer(s) x {dur}, {o['keys_per_record']} keys per record"
        f" ({', '.join(o['kinds'])}), durability={o['durability']}, transport={o['transport']}, dest={o['dest']}",
        "machine: " + ", ".join(f"{k}={v}" for k, v in m.items()),
        "",
    ]

    def f(v, unit="", spec=",.0f"):
        return "n/a" if v is None else f"{v:{spec}}{unit}"

    c = res["log_call_us"] or {}
    ld, ls = res["lag_durable_ms"], res["lag_stored_ms"]
    rows = [
        (
            "records logged / rows stored",
            f"{res['records']:,} / {res['rows_stored']:,} (expected {res['rows_expected']:,})",
        ),
        (
            "throughput, first log() to stored",
            f"{f(res['records_per_s'])} records/s, {f(res['values_per_s'])} values/s",
        ),
        (
            "log() cost median / p99 / max",
            f"{f(c.get('median_us'), '', '.2f')} / {f(c.get('p99_us'), '', '.2f')} / "
            f"{f(c.get('max_us'), ' us', ',.0f')}",
        ),
        (
            "lag to durable median / p99 / max",
            f"{f(ld['median_ms'], '', '.1f')} / {f(ld['p99_ms'], '', '.1f')} / "
            f"{f(ld['max_ms'], ' ms', '.1f')} ({ld['samples']} probes)",
        ),
        (
            "lag to stored median / p99 / max",
            f"{f(ls['median_ms'], '', '.1f')} / {f(ls['p99_ms'], '', '.1f')} / "
            f"{f(ls['max_ms'], ' ms', '.1f')} ({ls['samples']} polls)",
        ),
        (
            "finish() median / max",
            f"{f(res['finish_ms']['median_ms'], '', '.1f')} / {f(res['finish_ms']['max_ms'], ' ms', '.1f')}",
        ),
        ("daemon CPU / peak RSS", f"{res['daemon']['cpu_s']:.2f} s / {res['daemon']['peak_rss_mb']:.0f} MB"),
        ("late dropped / buffer dropped", f"{res['late_dropped']} / {res['dropped']}"),
    ]
    w = max(len(a) for a, _ in rows)
    lines += [f"  {a.ljust(w)}  {b}" for a, b in rows]
    if res["warnings"]:
        lines += ["", "WRITERS REPORTED (data not confirmed stored):", *res["warnings"][:10]]
    return lines


def plot(res: dict, path: str) -> None:
    """Throughput and lag over time into ``path`` (PNG); needs matplotlib."""
    try:
        import matplotlib  # optional: matplotlib (pip install 'trackside[bench]')

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'trackside[bench]' (or matplotlib)") from None
    tl = res["timeline"]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)

    def rate(pairs, scale=1):
        xs, ys = [], []
        for (t0, n0), (t1, n1) in zip(pairs, pairs[1:]):
            if t1 > t0:
                xs.append(t1)
                ys.append((n1 - n0) * scale / (t1 - t0))
        return xs, ys

    a1.plot(*rate(tl["logged"]), label="logged (all writers), records/s")
    a1.plot(*rate(tl["stored_rows"], res["options"]["writers"]), label="stored, rows/s x writers")
    a1.set_ylabel("records/s")
    a1.legend(loc="best")
    a1.set_title(f"trackside bench: {res['options']['writers']} writer(s), durability={res['options']['durability']}")
    for key, label in (("lag_durable_ms", "lag to durable (client ack)"), ("lag_stored_ms", "lag to stored")):
        pts = tl[key]
        a2.plot([p[0] for p in pts], [p[1] for p in pts], ".-", label=label)
    a2.set_ylabel("ms")
    a2.set_xlabel("seconds since the first log()")
    a2.set_yscale("symlog", linthresh=1)
    a2.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--writer-spec":
        writer_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m trackside.cli.profiler --writer-spec JSON (started by trackside bench)")
