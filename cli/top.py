"""``trackside top``: a live view of this host's daemon, from two status polls."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from trackside.contracts.discovery import pid_alive, read_info
from trackside.transport import daemon_status

COLUMNS = ("run / writer", "rec/s", "MB/s", "batches", "WAL MB", "backlog", "pending", "late", "dups", "upload lag")


def _rate(now, before, key, dt):
    if before is None or dt <= 0 or now.get(key) is None or before.get(key) is None:
        return None
    return max(0, now[key] - before[key]) / dt


def snapshot_rows(now: dict, before: dict | None, dt: float) -> list[tuple]:
    """Table rows (one per run, then one per connected writer) from two status replies ``dt``
    seconds apart. Rates are None before a second poll; upload lag is None for a run stored
    locally or kept offline.
    records/s counts log() entries for a run and batches for a writer (the daemon counts a
    writer's batches on its connection, the run's entries when it merges them)."""
    prev_runs = {r["run_id"]: r for r in (before or {}).get("runs", [])}
    rows = []
    for run in now.get("runs", []):
        b = prev_runs.get(run["run_id"])
        rows.append(
            (
                run["run_id"] + (f"  ERROR: {run['error']}" if run.get("error") else ""),
                _rate(run, b, "entries", dt),
                _mb(_rate(run, b, "bytes", dt)),
                run.get("records"),
                _mb(run.get("wal_bytes")),
                run.get("merge_backlog"),
                run.get("pending_rows"),
                run.get("merge_late_dropped", 0),
                run.get("duplicates", 0),
                upload_lag(run.get("upload")),
            )
        )
        prev_w = {w["writer"]: w for w in (b or {}).get("writer_stats", [])}
        for w in sorted(run.get("writer_stats", []), key=lambda w: (w["rank"] is None, w["rank"] or 0, w["pid"])):
            pw = prev_w.get(w["writer"])
            rows.append(
                (
                    f"  rank {w['rank']} pid {w['pid']}",
                    _rate(w, pw, "records", dt),
                    _mb(_rate(w, pw, "bytes", dt)),
                    w["records"],
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                )
            )
    return rows


def upload_lag(up: dict | None) -> str | None:
    """ "records / seconds" behind the run's server, and why uploads stop or retry."""
    if not up:
        return None
    lag = f"{up['lag_records']:,} rec / {up['lag_seconds']:.1f} s"
    if up.get("error"):
        return f"{lag} STOPPED: {up['error']}"
    if up.get("retrying"):
        return f"{lag} retrying"
    return lag


def _mb(v):
    return None if v is None else v / 2**20


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render(now: dict, before: dict | None, dt: float, info: dict):
    t = Table(
        title=f"trackside daemon {now.get('version')} pid {now.get('pid')}: {now.get('connections', 0)} "
        f"connection(s), {len(now.get('runs', []))} run(s)"
        + ("" if before is not None else "  (rates after the next poll)"),
        title_justify="left",
    )
    for c in COLUMNS:
        t.add_column(c, justify="left" if c == "run / writer" else "right")
    rows = snapshot_rows(now, before, dt)
    for r in rows:
        t.add_row(*map(_cell, r))
    if not rows:
        t.add_row("(no live runs)", *[""] * (len(COLUMNS) - 1))
    t.caption = "records/s: entries per run, batches per writer; upload lag: records and seconds behind the server"
    return t


def run_top(folder: str, *, once: bool = False, interval: float = 1.0) -> int:
    info = read_info(folder)
    if info is None or not pid_alive(info.get("pid")):
        print(f"no trackside daemon is running for {folder}", file=sys.stderr)
        return 1
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))

    def poll():
        return daemon_status(info), time.monotonic()

    first, t1 = poll()
    if once or not console.is_terminal:
        # two polls ``interval`` apart, so the rates are real; then one snapshot
        time.sleep(min(interval, 1.0))
        now, t2 = poll()
        console.print(render(now, first, t2 - t1, info))
        return 0

    before, tb = first, t1
    try:
        with Live(render(first, None, 0, info), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                try:
                    now, tn = poll()
                except OSError:
                    live.update(f"the trackside daemon (pid {info['pid']}) is gone")
                    return 0
                live.update(render(now, before, tn - tb, info))
                before, tb = now, tn
    except KeyboardInterrupt:
        return 0
