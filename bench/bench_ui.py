"""The web page in a real browser: what a person waits for, measured with Playwright driving
Chromium against ``trackside ui`` on this machine.

    python bench/bench_ui.py [--steps 1000000] [--metrics 20] [--runs 100] [--run-steps 100000]
                             [--project-runs 10000] [--live-seconds 15] [--json]

The long run (``--steps`` steps of ``--metrics`` float keys), the ``--runs`` runs of
``--run-steps`` steps and the project of ``--project-runs`` runs are written through
``Store.write_rows`` / ``Store.upsert_run``, as the daemon's store stage writes them (logging
them through the SDK would only make the set-up slower); the live run is logged by the SDK
(``trackside.init`` / ``run.log`` at 1,000 steps/s) through a private daemon. Pages are opened
as a person's browser opens them on a later visit: a new tab of a browser profile on disk that
has been to the page once (plotly.js in its HTTP cache and, compiled, in V8's code cache; a
private-mode context has no code cache and compiles plotly.js's 4.6 MB again on every page).
"First visit" repeats the charts figure in a private context with nothing cached. Times are
from navigation (or the zoom) to the moment the panels report drawn (``data-points``), medians
of ``--repeat``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, median, parser  # noqa: E402
from bench_read import metric_values, write_run  # noqa: E402

from trackside.contracts.version import __version__  # noqa: E402
from trackside.store import Store  # noqa: E402

LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}

LIVE = textwrap.dedent(
    """
    import sys, time, trackside
    run = trackside.init(project="live", name="live", settings={"system_metrics": False})
    print(run.id, flush=True)
    end = time.time() + float(sys.argv[1])
    step = 0
    t0 = time.perf_counter()
    while time.time() < end:
        run.log({"live/t": time.time(), "live/loss": 1.0 / (1 + step)})
        step += 1
        ahead = step / 1000.0 - (time.perf_counter() - t0)  # 1,000 steps per second
        if ahead > 0:
            time.sleep(ahead)
    run.finish()
    print(step, flush=True)
    """
)


def build(root: str, args) -> list[str]:
    store = Store(root)
    keys = [f"train/m{i:02d}" if i < args.metrics // 2 else f"val/m{i:02d}" for i in range(args.metrics)]
    write_run(store, "long", metric_values(args.steps, args.metrics, True), keys)
    store.upsert_run("long", project="bench", name="long", config={"lr": 0.01}, state="finished")
    for i in range(args.runs):
        write_run(store, f"many{i:03d}", metric_values(args.run_steps, 1, True, seed=i + 2), ["loss"])
        store.upsert_run(f"many{i:03d}", project="overlay", config={"seed": i}, state="finished")
    rng = np.random.default_rng(0)
    for i in range(args.project_runs):
        store.upsert_run(
            f"p{i:05d}",
            project="big",
            name=f"run-{i}",
            config={"lr": float(10 ** rng.uniform(-4, -1)), "layers": int(rng.integers(2, 12)), "opt": "adam"},
            tags=["sweep"],
            state="finished",
        )
    store.close()
    return keys


class UI:
    def __init__(self, root: str, env: dict):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trackside.cli", "ui", root, "--port", "0"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 60
        while True:
            with open(self.log.name) as f:
                line = f.readline()
            if line.startswith("trackside ui: http"):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"trackside ui did not start: {open(self.log.name).read()}")
            time.sleep(0.05)
        self.url = line.split()[2].rstrip("/")

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(20)
        os.unlink(self.log.name)


VISIBLE_DRAWN = """() => {
    const panels = [...document.querySelectorAll('.panel')].filter(p => {
        const r = p.getBoundingClientRect();
        return r.bottom > 0 && r.top < innerHeight && p.offsetParent !== null;
    });
    return panels.length > 0 && panels.every(p => p.dataset.points !== undefined);
}"""


def warm_context(pw, chromium: str, profile: str, url: str):
    """A browser on a profile kept in ``profile`` that has opened the page once, as a person's
    browser on a later visit; each measurement opens a new tab in it."""
    ctx = pw.chromium.launch_persistent_context(profile, executable_path=chromium, args=LAUNCH_ARGS, viewport=VIEWPORT)
    page = ctx.new_page()
    page.goto(url + "/runs/long/charts")
    page.wait_for_function(VISIBLE_DRAWN, timeout=60000, polling=10)
    page.close()
    return ctx


def open_charts(browser, url: str, fresh_cache: bool) -> tuple[float, int]:
    ctx = browser.new_context(viewport=VIEWPORT) if fresh_cache else browser.warm
    page = ctx.new_page()
    t0 = time.perf_counter()
    page.goto(url + "/runs/long/charts")
    page.wait_for_function(VISIBLE_DRAWN, timeout=60000, polling=10)
    ms = (time.perf_counter() - t0) * 1e3
    drawn = page.evaluate("() => document.querySelectorAll('.panel[data-points]').length")
    page.close()
    if fresh_cache:
        ctx.close()
    return ms, drawn


def zoom(browser, url: str, steps: int) -> tuple[float, int]:
    page = browser.warm.new_page()
    page.goto(url + "/runs/long/charts")
    sel = ".panel[data-key='train/m00']"
    page.wait_for_selector(sel + "[data-points]", timeout=60000)
    lo = steps // 2
    hi = lo + steps // 100
    ms = page.evaluate(
        """async ([sel, lo, hi]) => {
            const box = document.querySelector(sel);
            const t0 = performance.now();
            Plotly.relayout(box.querySelector('.plot'), {'xaxis.range': [lo, hi]});
            while (!box.dataset.zoomedAt) await new Promise(r => setTimeout(r, 2));
            return Number(box.dataset.zoomedAt) - t0;
        }""",
        [sel, lo, hi],
    )
    points = int(page.get_attribute(sel, "data-points"))
    page.close()
    return ms, points


def runs_table(browser, url: str) -> tuple[float, int]:
    page = browser.warm.new_page()
    t0 = time.perf_counter()
    page.goto(url + "/projects/big?q=config.lr%20%3E%200.001&order=-config.lr&columns=config.lr,config.layers")
    page.wait_for_selector("#runs tbody tr[data-run]", timeout=60000)
    ms = (time.perf_counter() - t0) * 1e3
    rows = page.locator("#runs tbody tr[data-run]").count()
    page.close()
    return ms, rows


def overlay(browser, url: str, runs: int) -> tuple[float, int]:
    page = browser.warm.new_page()
    ids = ",".join(f"many{i:03d}" for i in range(runs))
    t0 = time.perf_counter()
    page.goto(url + f"/projects/overlay/compare?runs={ids}")
    page.wait_for_selector(".panel[data-key='loss'][data-points]", timeout=60000)
    ms = (time.perf_counter() - t0) * 1e3
    traces = page.evaluate(
        "() => document.querySelector('.panel[data-key=\"loss\"] .plot').data.filter(t => t.meta).length"
    )
    page.close()
    return ms, traces


def chart_bytes(browser, url: str) -> dict:
    """The bytes of one 1,000,000-step panel's data as the page asks for it, gzip (as sent to a
    browser) and plain."""
    ctx = browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    asked = []
    page.on("request", lambda r: asked.append(r.url) if "/api/buckets" in r.url and "m00" in r.url else None)
    page.goto(url + "/runs/long/charts")
    page.wait_for_selector(".panel[data-key='train/m00'][data-points]", timeout=60000)
    ctx.close()
    req = urllib.request.Request(asked[0], headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req) as res:
        body = res.read()
        encoding = res.headers.get("content-encoding")
    plain = gzip.decompress(body) if encoding == "gzip" else body
    return {"sent": len(body), "plain": len(plain), "buckets": len(json.loads(plain)["runs"]["long"]["x"])}


def chromium_processes(browser_pid_parent: int) -> list:
    me = psutil.Process(browser_pid_parent)
    return [p for p in me.children(recursive=True) if "chrom" in p.name().lower()]


def live(browser, url: str, env: dict, seconds: float) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", LIVE, str(seconds + 12)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        run_id = proc.stdout.readline().strip()
        time.sleep(2)  # the run is stored and has rows
        ctx = browser.new_context(viewport=VIEWPORT)
        page = ctx.new_page()
        page.goto(url + f"/runs/{run_id}/charts")
        sel = ".panel[data-key='live/t']"
        page.wait_for_selector(sel + "[data-points]", timeout=60000)
        page.evaluate(
            """sel => {
                // per redraw: how long ago the oldest point it brought was logged (the value
                // logged is the time of its log() call), and the newest
                window.delays = [];
                window.freshest = [];
                const gd = document.querySelector(sel + ' .plot');
                let shown = null;
                gd.on('plotly_afterplot', () => {
                    const t = gd.data.filter(t => t.meta)[0];
                    if (!t || !t.y.length) return;
                    const last = t.y[t.y.length - 1];
                    const now = Date.now() / 1000;
                    if (shown !== null && last > shown) {
                        window.delays.push(now - shown - 0.001);
                        window.freshest.push(now - last);
                    }
                    shown = last;
                });
            }""",
            sel,
        )
        cdp = ctx.new_cdp_session(page)
        cdp.send("Performance.enable")

        def task_seconds() -> float:
            return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}["TaskDuration"]

        procs = chromium_processes(os.getpid())
        cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        task0, wall0 = task_seconds(), time.perf_counter()
        page.wait_for_timeout(seconds * 1000)
        wall = time.perf_counter() - wall0
        task = task_seconds() - task0
        cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs if p.is_running()) - cpu0
        delays = page.evaluate("() => window.delays")
        freshest = page.evaluate("() => window.freshest")
        points = int(page.get_attribute(sel, "data-points"))
        ctx.close()
    finally:
        proc.wait(120)
        steps = int(proc.stdout.readline() or 0)
        proc.stdout.close()
    return {
        "delay_median_s": median(delays),
        "delay_max_s": max(delays),
        "delay_newest_point_median_s": median(freshest),
        "redraws": len(delays),
        "page_main_thread_pct": 100 * task / wall,
        "chromium_all_processes_pct": 100 * cpu / wall,
        "steps_logged": steps,
        "points_on_screen": points,
    }


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--metrics", type=int, default=20)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--run-steps", type=int, default=100_000)
    p.add_argument("--project-runs", type=int, default=10_000)
    p.add_argument("--live-seconds", type=float, default=15)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    import plotly
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("bench_ui needs Chromium: apt-get install chromium")
    base = tempfile.mkdtemp(prefix="bench-ui-")
    root = os.path.join(base, "trackside")
    env = dict(os.environ, TRACKSIDE_DIR=root, TRACKSIDE_DAEMON_DIR=os.path.join(base, "daemon"))
    env.pop("TRACKSIDE_RUN_ID", None)
    ui = None
    try:
        t0 = time.perf_counter()
        build(root, args)
        setup_s = time.perf_counter() - t0
        ui = UI(root, env)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
            version = browser.version
            r = args.repeat
            first_visit, _ = open_charts(browser, ui.url, fresh_cache=True)
            browser.warm = warm_context(pw, chromium, os.path.join(base, "profile"), ui.url)
            charts = [open_charts(browser, ui.url, fresh_cache=False) for _ in range(r)]
            zooms = [zoom(browser, ui.url, args.steps) for _ in range(r)]
            tables = [runs_table(browser, ui.url) for _ in range(r)]
            overlays = [overlay(browser, ui.url, args.runs) for _ in range(r)]
            browser.warm.close()
            size = chart_bytes(browser, ui.url)
            lv = live(browser, ui.url, env, args.live_seconds)
            browser.close()
    finally:
        if ui is not None:
            ui.stop()
        subprocess.run([sys.executable, "-m", "trackside.cli", "daemon", "stop"], env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)

    figures = {
        "versions": {"trackside": __version__, "chromium": version, "plotly.js": plotly.__version__},
        "setup_s": setup_s,
        "charts_open_ms": median([c[0] for c in charts]),
        "charts_panels_drawn": charts[0][1],
        "charts_first_visit_ms": first_visit,
        "zoom_1pct_ms": median([z[0] for z in zooms]),
        "zoom_points": zooms[0][1],
        "runs_table_ms": median([t[0] for t in tables]),
        "runs_table_rows": tables[0][1],
        "overlay_ms": median([o[0] for o in overlays]),
        "overlay_runs": overlays[0][1],
        "chart_bytes_sent": size["sent"],
        "chart_bytes_plain": size["plain"],
        "chart_buckets": size["buckets"],
        **{f"live_{k}": v for k, v in lv.items()},
    }
    rows = [
        {
            "what a person does": f"open the charts of a {args.steps:,}-step run with {args.metrics} metrics: visible panels drawn",
            "measured": f"{figures['charts_open_ms']:.0f} ms ({charts[0][1]} panels; first visit {first_visit:.0f} ms)",
            "target": "<= 1.5 s",
        },
        {
            "what a person does": "zoom into 1% of that run: the panel redrawn at full resolution",
            "measured": f"{figures['zoom_1pct_ms']:.0f} ms ({zooms[0][1]:,} points)",
            "target": "<= 300 ms",
        },
        {
            "what a person does": f"open a project of {args.project_runs:,} runs (config filter, sort): first page",
            "measured": f"{figures['runs_table_ms']:.0f} ms ({tables[0][1]} rows)",
            "target": "<= 1 s",
        },
        {
            "what a person does": f"overlay one metric of {args.runs} runs of {args.run_steps:,} steps",
            "measured": f"{figures['overlay_ms']:.0f} ms ({overlays[0][1]} runs)",
            "target": "<= 2 s",
        },
        {
            "what a person does": "a live run logging 1,000 steps/s: log() to the point on screen",
            "measured": f"every point within {lv['delay_median_s']:.2f} s (median redraw; max {lv['delay_max_s']:.2f} s; "
            f"newest point {lv['delay_newest_point_median_s']:.2f} s); page main thread "
            f"{lv['page_main_thread_pct']:.1f}% of a core (all Chromium processes {lv['chromium_all_processes_pct']:.1f}%)",
            "target": "<= 2 s, < 20% of a core",
        },
        {
            "what a person does": f"bytes sent for one {args.steps:,}-step chart",
            "measured": f"{size['sent'] / 1024:.0f} KB gzip ({size['plain'] / 1024:.0f} KB plain, {size['buckets']} buckets)",
            "target": "<= 200 KB",
        },
    ]
    notes = [
        "",
        f"versions: trackside {__version__}, Chromium {version}, plotly.js {plotly.__version__} (from the plotly wheel)",
        f"load average at the end (2-core machine shared with other work): {os.getloadavg()[0]:.1f}",
        f"set-up (writing the runs): {setup_s:.0f} s; medians of {args.repeat}; the live run logged "
        f"{lv['steps_logged']:,} steps, {lv['redraws']} redraws measured over {args.live_seconds:.0f} s",
        "plotly.js itself (4.6 MB, 1.4 MB gzip) is sent once and then cached (immutable, versioned URL);",
        "'first visit' includes fetching and compiling it (a private-mode window compiles it on every page).",
        "No GPU here: panels of up to 60,000 points are SVG; WebGL (software-rendered here) above that.",
    ]
    emit(args, "trackside ui in Chromium", figures, rows, ["what a person does", "measured", "target"], notes)


if __name__ == "__main__":
    main()
