"""System metrics: the daemon's CPU cost of sampling, and the cost of one sample.

One daemon (started here, in a fresh temp folder, with its default flags) serves one run whose
training process is this benchmark, idle, for ``--seconds`` per scenario:

- ``off``: the run sets ``system_metrics=False``: what the daemon costs with a live run and no
  sampling (its idle watch, the run's ticker, gRPC);
- ``1 s`` and ``0.1 s``: ``system_sample_interval`` 1 s and 0.1 s, ``system_log_interval`` 10 s
  (the default), so the daemon samples, aggregates and stores one row every 10 s.

The daemon's CPU time (user + system of its process, from /proc) over the span, as a percent
of one core, is its cost; the sampler's own cost is that minus ``off``. The daemon also reports
how long its samples took in its worker thread (its status: ``mean_sample_us``). Then one sample
in this process: the sampler's ``Reader.read`` of the host, this process and the run root,
timed ``--samples`` times after a warm-up (median and p90). NVML is read when a driver is
present; without one the GPU part costs nothing.

    python bench/bench_sysmetrics.py [--seconds 60] [--samples 500] [--json]

Caveats: the daemon's CPU time includes everything it did in the span, so background work on
a busy machine does not count, but a daemon that is also ingesting would; on a host with many
processes the scan for a training process's children (every 2 s) reads every /proc/<pid>/stat
and costs more; a multi-GPU host adds about a dozen NVML calls per GPU per sample.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, median, parser  # noqa: E402

TARGET_PERCENT = 1.0  # of one core, sampling every second


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def scenario(name: str, settings: dict, seconds: float, daemon_pid: int, daemon_dir: str) -> dict:
    import trackside
    from trackside.contracts import discovery
    from trackside.transport import daemon_status

    run = trackside.init(project="bench-sysmetrics", name=name, settings={**settings, "console": False})
    time.sleep(1.5)  # the first samples (NVML start, imports) are not the steady state
    before = daemon_status(discovery.read_info(daemon_dir))["system_metrics"]
    c0, t0 = cpu_seconds(daemon_pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(daemon_pid), time.monotonic()
    after = daemon_status(discovery.read_info(daemon_dir))["system_metrics"]
    run.finish()
    samples = after["samples"] - before["samples"]
    sample_us = None
    if samples > 0:
        total = after["mean_sample_us"] * after["samples"] - (before["mean_sample_us"] or 0) * before["samples"]
        sample_us = total / samples
    return {
        "scenario": name,
        "seconds": round(t1 - t0, 2),
        "daemon_cpu_percent": 100.0 * (c1 - c0) / (t1 - t0),
        "samples": samples,
        "daemon_sample_us": sample_us,
        "gpu": after["gpu"],
    }


def one_sample(root: str, n: int) -> dict:
    from trackside.daemon.sysmetrics import Reader

    reader = Reader()
    pids, roots = {os.getpid()}, {root}
    for _ in range(20):  # NVML start, process baselines, the children scan's first run
        reader.read(pids, roots)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        reader.read(pids, roots)
        times.append((time.perf_counter() - t) * 1e6)
    reader.close()
    times.sort()
    return {
        "median_us": median(times),
        "p90_us": times[int(0.9 * (len(times) - 1))],
        "samples": n,
        "gpu": reader.gpu_status,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of each scenario (default 60)")
    p.add_argument("--samples", type=int, default=500, help="samples timed in this process (default 500)")
    args = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-sysmetrics-")
    daemon_dir, root = os.path.join(tmp, "daemon"), os.path.join(tmp, "trackside")
    os.makedirs(daemon_dir, mode=0o700)
    for k in ("TRACKSIDE_RUN_ID", "TRACKSIDE_MODE", "RANK", "LOCAL_RANK"):
        os.environ.pop(k, None)
    os.environ.update(TRACKSIDE_DAEMON_DIR=daemon_dir, TRACKSIDE_DIR=root)
    from trackside.contracts import discovery

    subprocess.run(
        [
            sys.executable,
            "-m",
            "trackside.daemon",
            "--dir",
            daemon_dir,
            "--detach",
            "--idle-timeout",
            "0",
            "--log-level",
            "WARNING",
        ],
        check=True,
        timeout=30,
    )
    deadline = time.monotonic() + 15
    while (info := discovery.read_info(daemon_dir)) is None:
        if time.monotonic() > deadline:
            sys.exit("bench: the daemon did not start")
        time.sleep(0.02)
    daemon_pid = info["pid"]
    results = []
    try:
        for name, settings in (
            ("off", {"system_metrics": False}),
            ("1 s", {"system_sample_interval": 1.0}),
            ("0.1 s", {"system_sample_interval": 0.1}),
        ):
            if not args.json:
                print(f"  {name}: {args.seconds:.0f} s ...", file=sys.stderr)
            results.append(scenario(name, settings, args.seconds, daemon_pid, daemon_dir))
            os.environ.pop("TRACKSIDE_RUN_ID", None)  # init exported it: the next run is a new one
        single = one_sample(root, args.samples)
    finally:
        from trackside.cli import main as cli

        with open(os.devnull, "w") as devnull:
            saved, sys.stdout = sys.stdout, devnull
            try:
                cli(["daemon", "stop"])
            finally:
                sys.stdout = saved
        shutil.rmtree(tmp, ignore_errors=True)

    off = results[0]["daemon_cpu_percent"]
    for r in results:
        r["sampler_cpu_percent"] = max(0.0, r["daemon_cpu_percent"] - off) if r["scenario"] != "off" else 0.0
    at_1s = next(r for r in results if r["scenario"] == "1 s")
    met = at_1s["daemon_cpu_percent"] - off < TARGET_PERCENT
    rows = [
        {
            "sampling": r["scenario"],
            "seconds": r["seconds"],
            "daemon CPU %": r["daemon_cpu_percent"],
            "sampler CPU %": r["sampler_cpu_percent"],
            "samples": r["samples"],
            "us/sample (daemon)": r["daemon_sample_us"] if r["daemon_sample_us"] is not None else "",
        }
        for r in results
    ]
    figures = {
        "scenarios": results,
        "one_sample": single,
        "target": f"sampler below {TARGET_PERCENT:g}% of one core at 1 s",
        "target_met": met,
    }
    notes = [
        "",
        f"one sample in this process (host + 1 training process + run root), back to back: median "
        f"{single['median_us']:.0f} us, p90 {single['p90_us']:.0f} us over {single['samples']} samples; the "
        f"daemon's us/sample is wall time of spaced samples (cold caches, the children scan every 2 s)",
        f"GPUs: {single['gpu']}",
        f"target: sampler below {TARGET_PERCENT:g}% of one core at 1 s: {'met' if met else 'NOT MET'} "
        f"({at_1s['daemon_cpu_percent'] - off:.3f}%)",
        "CPU % is of one core, measured from the daemon's /proc/<pid>/stat; 'sampler' = daemon minus 'off'.",
    ]
    emit(
        args,
        "system metrics: the daemon's cost of sampling",
        figures,
        rows,
        ["sampling", "seconds", "daemon CPU %", "sampler CPU %", "samples", "us/sample (daemon)"],
        notes,
    )


if __name__ == "__main__":
    main()
