"""Peers side by side: the same workloads through trackside, wandb (offline), MLflow (local SQLite
store, synchronous and asynchronous logging), tensorboardX and trackio, next to the machine's
limit (the same msgpack bytes appended to a file, and sent over a Unix socket, in a tight loop).

Workloads:
  scalars  one process, --records calls of log({10 floats}); caller cost per call (median, p99)
           and sustained records/s = calls / (log loop + the peer's finish/flush/close), i.e. from
           the first log() to everything flushed (MLflow async: including the queue drain).
  anchor   10 processes x 100 steps x 100 float scalars (the anchor's published multi-process
           profile); wall seconds from spawning the processes to the last one exiting.

Peers run in subprocesses of ``--peer-python`` (a venv with ``pip install 'trackside[bench]'``;
default: this interpreter); a peer that is not installed is reported as missing, not skipped
silently. Writes the table to bench/RESULTS.md (``--out``) and prints it; ``--json`` for machines.

MLflow's file store is in maintenance mode, so MLflow logs to a SQLite tracking URI in the temp
dir; its schema is created before the clock starts (a one-time cost a user pays once, and ten
processes migrating one database at once fail).

    python bench/peers.py [--records 20000] [--peer-python PATH] [--timeout 300] [--json]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, parser, table  # noqa: E402

PEERS = ("trackside", "wandb", "mlflow", "mlflow-async", "tensorboardX", "trackio")
# untimed, once per workload before the processes start (MLflow: create the SQLite schema)
PREPARE = {
    "mlflow": "import mlflow; mlflow.set_tracking_uri('sqlite:///' + os.path.abspath('mlflow.db')); mlflow.search_experiments()",
}
PREPARE["mlflow-async"] = PREPARE["mlflow"]
DIST = {
    "trackside": "trackside",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "mlflow-async": "mlflow",
    "tensorboardX": "tensorboardX",
    "trackio": "trackio",
}

# each peer: (setup, log one dict d at step i, finish); run inside a fresh temp cwd
CODE = {
    "trackside": ("import trackside; run = trackside.init(project='peers', dir='.')", "run.log(d)", "run.finish()"),
    "wandb": ("import wandb; run = wandb.init(project='peers', mode='offline', dir='.')", "run.log(d)", "run.finish()"),
    "mlflow": (
        "import mlflow; mlflow.set_tracking_uri('sqlite:///' + os.path.abspath('mlflow.db')); run = mlflow.start_run()",
        "mlflow.log_metrics(d, step=i)",
        "mlflow.end_run()",
    ),
    "mlflow-async": (
        "import mlflow; mlflow.set_tracking_uri('sqlite:///' + os.path.abspath('mlflow.db')); run = mlflow.start_run()",
        "mlflow.log_metrics(d, step=i, synchronous=False)",
        "mlflow.flush_async_logging(); mlflow.end_run()",
    ),
    "tensorboardX": (
        "from tensorboardX import SummaryWriter; w = SummaryWriter('tb')",
        "[w.add_scalar(k, v, i) for k, v in d.items()]",
        "w.close()",
    ),
    "trackio": ("import trackio; trackio.init(project='peers')", "trackio.log(d)", "trackio.finish()"),
}

WORKER = r"""
import json, os, sys, time
os.environ.setdefault("WANDB_SILENT", "true")
n, keys, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
names = [f"m{j}" for j in range(keys)]
t_start = time.perf_counter_ns()
{setup}
t_ready = time.perf_counter_ns()
pc = time.perf_counter_ns
samples = []
for i in range(n):
    d = {k: i * 0.001 + j + seed for j, k in enumerate(names)}
    t0 = pc()
    {log}
    samples.append(pc() - t0)
t_loop = pc()
{finish}
t_end = pc()
samples.sort()
os.write(1, ("RESULT " + json.dumps({"median_us": samples[len(samples) // 2] / 1e3,
    "p99_us": samples[min(len(samples) - 1, int(0.99 * len(samples)))] / 1e3, "init_s": (t_ready - t_start) / 1e9,
    "loop_s": (t_loop - t_ready) / 1e9, "finish_s": (t_end - t_loop) / 1e9}) + "\n").encode())
"""


def _env(tmp):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSIDE_")}
    env.update(
        {
            "TRACKSIDE_DAEMON_DIR": os.path.join(tmp, "daemon"),
            "TRACKSIDE_DIR": os.path.join(tmp, "trackside"),
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "TRACKIO_DIR": os.path.join(tmp, "trackio"),
            "HF_HOME": os.path.join(tmp, "hf"),
            "MLFLOW_TRACKING_URI": "sqlite:///" + os.path.join(tmp, "mlflow.db"),
        }
    )
    os.makedirs(env["TRACKSIDE_DAEMON_DIR"], mode=0o700)
    return env


def _stop_daemon(tmp):
    try:
        with open(os.path.join(tmp, "daemon", "daemon.json")) as f:
            pid = json.load(f)["pid"]
        os.kill(pid, 15)
        for _ in range(500):
            os.kill(pid, 0)
            time.sleep(0.02)
    except (OSError, ValueError, KeyError):
        pass


def run_peer(peer, python, n, keys, procs, timeout):
    setup, log, finish = CODE[peer]
    code = WORKER.replace("{setup}", setup).replace("{log}", log).replace("{finish}", finish)
    tmp = tempfile.mkdtemp(prefix=f"peers-{peer}-")
    env = _env(tmp)
    try:
        if peer in PREPARE:
            r = subprocess.run(
                [python, "-c", "import os\n" + PREPARE[peer]],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if r.returncode != 0:
                return {"error": "prepare: " + _short_error(r.stderr, r.returncode)}
        t0 = time.perf_counter()
        ps = [
            subprocess.Popen(
                [python, "-c", code, str(n), str(keys), str(r)],
                cwd=tmp,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(procs)
        ]
        outs = []
        for p in ps:
            out, err = p.communicate(timeout=timeout)
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            if p.returncode != 0 or line is None:
                return {"error": _short_error(err or out, p.returncode)}
            outs.append(json.loads(line[7:]))
        wall = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        for p in ps:
            p.kill()
        return {"error": f"timed out after {timeout} s"}
    finally:
        _stop_daemon(tmp)
        subprocess.run(["rm", "-rf", tmp])
    o = outs[0]
    return {
        "median_us": o["median_us"],
        "p99_us": o["p99_us"],
        "init_s": o["init_s"],
        "loop_s": o["loop_s"],
        "finish_s": o["finish_s"],
        "records_per_s": n / (o["loop_s"] + o["finish_s"]),
        "wall_s": wall,
        "ranks": outs,
    }


def _short_error(text, rc) -> str:
    """The last line of a traceback, without the module path, cut to 50 characters."""
    lines = [x.strip() for x in (text or "").strip().splitlines() if x.strip()]
    exc = next((x for x in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Exit)\b", x)), None)
    msg = (exc or (lines[-1] if lines else f"rc {rc}")).split(":", 1)
    name = msg[0].rsplit(".", 1)[-1]
    msg = name + (":" + msg[1] if len(msg) > 1 else "")
    return msg if len(msg) <= 50 else msg[:49] + "…"


def limits(n, keys):
    """records/s of the machine's limit for the same bytes: file appends, Unix-socket sends."""
    import socket
    import threading

    import msgspec

    rec = msgspec.msgpack.encode({f"m{j}": j * 0.5 for j in range(keys)})
    n = max(n, 200_000)
    with tempfile.NamedTemporaryFile() as f:
        w = f.write
        t0 = time.perf_counter()
        for _ in range(n):
            w(rec)
        f.flush()
        file_rate = n / (time.perf_counter() - t0)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    total = n * len(rec)

    def drain():
        got = 0
        while got < total:
            got += len(b.recv(1 << 20))

    t = threading.Thread(target=drain)
    t.start()
    send = a.sendall
    t0 = time.perf_counter()
    for _ in range(n):
        send(rec)
    t.join()
    sock_rate = n / (time.perf_counter() - t0)
    a.close()
    b.close()
    return {"file_append_records_per_s": file_rate, "unix_socket_records_per_s": sock_rate, "record_bytes": len(rec)}


def versions(python):
    code = (
        "import importlib.metadata as m, json\nout = {}\nfor d in %r:\n    try: out[d] = m.version(d)\n"
        "    except Exception: out[d] = None\nprint(json.dumps(out))" % sorted(set(DIST.values()) | {"msgpack"})
    )
    v = json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True).stdout)
    import trackside

    v["trackside"] = trackside.__version__
    return v


def commit() -> str:
    """The trackside commit measured, and the files outside bench/ and docs/ changed since it."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        r = subprocess.run(["git", "log", "-1", "--format=%h"], capture_output=True, text=True, cwd=here)
        st = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here
        ).stdout.splitlines()
    except OSError:
        return "unknown"
    if r.returncode != 0:
        return "unknown"
    dirty = sorted(x[3:] for x in st if not x[3:].startswith(("bench/", "docs/")))
    return r.stdout.strip() + (" plus uncommitted changes to " + ", ".join(dirty) if dirty else "")


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=20_000, help="log() calls in the scalars workload (default 20000)")
    p.add_argument("--peer-python", default=sys.executable, help="interpreter with the peers installed")
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    p.add_argument("--timeout", type=float, default=300, help="seconds per peer and workload")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    args = p.parse_args()
    vers = versions(args.peer_python)
    res = {"scalars": {}, "anchor": {}}
    for peer in args.peers:
        python = sys.executable if peer == "trackside" else args.peer_python
        if vers.get(DIST[peer]) is None:
            res["scalars"][peer] = res["anchor"][peer] = {"error": "not installed"}
            continue
        print(f"peers: {peer} ...", file=sys.stderr, flush=True)
        res["scalars"][peer] = run_peer(peer, python, args.records, 10, 1, args.timeout)
        res["anchor"][peer] = run_peer(peer, python, 100, 100, 10, args.timeout)
    lim = limits(args.records, 10)
    out = {"machine": machine(), "versions": vers, "commit": commit(), "records": args.records, "limits": lim, **res}
    text = render(out)
    with open(args.out, "w") as f:
        f.write(text)
    if args.json:
        json.dump(out, sys.stdout, indent=2)
    else:
        print(text)


def _best_peer(rows: dict, key, pick):
    """(name, value) of the best peer other than trackside by ``key``; (None, None) if none ran."""
    ok = [(k, v[key]) for k, v in rows.items() if k != "trackside" and "error" not in v]
    return pick(ok, key=lambda kv: kv[1]) if ok else (None, None)


def render(out) -> str:
    sc = out["scalars"]
    lim = out["limits"]
    cost_peer, best_cost = _best_peer(sc, "median_us", min)
    rate_peer, best_rate = _best_peer(sc, "records_per_s", max)
    rows = []
    for peer, v in sc.items():
        if "error" in v:
            rows.append({"peer": peer, "log() median us": v["error"]})
            continue
        rows.append(
            {
                "peer": peer,
                "log() median us": v["median_us"],
                "p99 us": v["p99_us"],
                "cost / best peer": v["median_us"] / best_cost if best_cost else "",
                "records/s": v["records_per_s"],
                "rate / best peer": v["records_per_s"] / best_rate if best_rate else "",
                "file limit / rate": lim["file_append_records_per_s"] / v["records_per_s"],
                "socket limit / rate": lim["unix_socket_records_per_s"] / v["records_per_s"],
                "finish/drain s": v["finish_s"],
                "init s": v["init_s"],
            }
        )
    an = out["anchor"]
    wall_peer, best_wall = _best_peer(an, "wall_s", min)
    arows = []
    for peer, v in an.items():
        if "error" in v:
            arows.append({"peer": peer, "wall s": v["error"]})
            continue
        ranks = v.get("ranks") or [v]
        arows.append(
            {
                "peer": peer,
                "wall s": v["wall_s"],
                "wall / best peer": v["wall_s"] / best_wall if best_wall else "",
                "values/s": 10 * 100 * 100 / v["wall_s"],
                "log() median us": sorted(r["median_us"] for r in ranks)[len(ranks) // 2],
                "p99 us (worst rank)": max(r["p99_us"] for r in ranks),
                "finish s (slowest)": max(r["finish_s"] for r in ranks),
            }
        )
    verdict = []
    ts = sc.get("trackside", {})
    if "error" not in ts and best_cost and best_rate:
        c = best_cost / ts["median_us"]
        r = ts["records_per_s"] / best_rate
        verdict = [
            "## Against the issue's bar (scalars workload)",
            "",
            f"- caller-side cost: {c:.1f}x lower than the cheapest peer ({cost_peer}); bar 20x: "
            + ("met." if c >= 20 else "NOT met."),
            f"- sustained throughput: {r:.2f}x the fastest peer ({rate_peer}); bar 10x: "
            + ("met." if r >= 10 else "NOT met (reason, from a profile: docs/benchmarks.md, Caveats)."),
        ]
        ta = an.get("trackside", {})
        if "error" not in ta and best_wall:
            verdict.append(
                f"- anchor profile: wall {best_wall / ta['wall_s']:.2f}x shorter than the fastest peer ({wall_peer})."
            )
        verdict.append("")
    m = out["machine"]
    lines = [
        "# Peers side by side",
        "",
        "Written by `bench/peers.py`; do not edit by hand. Caveats: docs/benchmarks.md.",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in m.items()),
        "",
        "Versions: " + ", ".join(f"{k}={v}" for k, v in sorted(out["versions"].items())),
        "",
        f"Measured at trackside commit {out.get('commit', 'unknown')}.",
        "",
        f"## One process, {out['records']:,} calls of log({{10 floats}})",
        "",
        "records/s = calls / (log loop + the peer's finish/flush/close), from the first log() to everything"
        " flushed (trackside: fsynced and in its local store; MLflow async: queue drained). Ratios: to the"
        " best peer other than trackside (cost: lowest median; rate: highest records/s), and the machine's"
        " limits over the peer's rate.",
        "",
        "```",
        table(
            rows,
            [
                "peer",
                "log() median us",
                "p99 us",
                "cost / best peer",
                "records/s",
                "rate / best peer",
                "file limit / rate",
                "socket limit / rate",
                "finish/drain s",
                "init s",
            ],
        ),
        "```",
        "",
        f"Machine's limit for the same {lim['record_bytes']}-byte msgpack record, in the same run: file appends "
        f"{lim['file_append_records_per_s']:,.0f} records/s; Unix-socket sends {lim['unix_socket_records_per_s']:,.0f} records/s.",
        "",
        *verdict,
        "## Anchor profile: 10 processes x 100 steps x 100 float scalars",
        "",
        "Wall seconds from spawning the 10 processes to the last one exiting (imports, init and finish included);"
        " log() cost: median over ranks of each rank's median, and the worst rank's p99.",
        "",
        "```",
        table(
            arows,
            [
                "peer",
                "wall s",
                "wall / best peer",
                "values/s",
                "log() median us",
                "p99 us (worst rank)",
                "finish s (slowest)",
            ],
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
