"""The ``trackside`` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from trackside.contracts import discovery
from trackside.contracts.discovery import pid_alive, run_root
from trackside.contracts.version import __version__

from .display import print_history, print_runs, print_summary, print_system_metrics
from trackside.server.options import add_server_arguments

from .imports import add_parsers  # import tensorboard|wandb|mlflow, export tensorboard
from .tablequery import QueryError, print_rows, query


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trackside", description="log and read machine-learning training runs")
    p.add_argument("--version", action="version", version=f"trackside {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("daemon", help="start, stop or inspect this host's daemon")
    d.add_argument(
        "action",
        choices=["start", "stop", "status", "run"],
        help="start: in the background; run: in the foreground; stop; status",
    )
    d.add_argument("--idle-timeout", type=float, default=None, help="seconds without runs before it exits (0: never)")
    d.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="N",
        help="start/run: serve Prometheus metrics on 127.0.0.1:N (needs prometheus-client)",
    )
    d.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics endpoint (default: loopback)")

    b = sub.add_parser(
        "bench",
        help="profile logging on this machine: throughput, log() cost, lag, daemon cost",
        description="Writer processes log into a private daemon and run root (deleted afterwards) "
        "and the figures are printed: records/s and values/s, log() cost, lag to "
        "durable and to stored, finish() time, the daemon's CPU and peak RSS.",
    )
    b.add_argument("--writers", type=int, default=1, help="writer processes, logging the same steps (default 1)")
    b.add_argument(
        "--keys", type=int, default=10, dest="keys_per_record", metavar="N", help="float keys per record (default 10)"
    )
    b.add_argument(
        "--kinds",
        default="float",
        metavar="K[,K]",
        help="value kinds per record: float (always), histogram, image, table (default: float)",
    )
    g = b.add_mutually_exclusive_group()
    g.add_argument("--records", type=int, help="records per writer")
    g.add_argument("--seconds", type=float, help="log for this many seconds (default 10, unless --records)")
    b.add_argument("--rate", type=float, default=0, help="records/s per writer (default 0: as fast as possible)")
    b.add_argument("--durability", choices=["fsync", "flush", "none"], default="fsync")
    b.add_argument(
        "--transport",
        default="unix",
        choices=["unix", "grpc"],
        help="how writers reach the daemon: its Unix socket (default) or its gRPC listener",
    )
    b.add_argument(
        "--dest",
        default="store",
        metavar="store|none|URL",
        help="store: the local store (default); none: the WAL only (offline); "
        "grpc://HOST:PORT: upload to a trackside server, lag measured to readable there",
    )
    b.add_argument("--json", action="store_true", help="print one JSON object (schema: docs/bench.schema.json)")
    b.add_argument("--plot", metavar="FILE.png", help="draw throughput and lag over time (needs matplotlib)")

    st = sub.add_parser("status", help="this host's daemon: its runs, where each goes and how far its upload lags")
    st.set_defaults(action="status", idle_timeout=None, metrics_port=None, metrics_host="127.0.0.1")

    sy = sub.add_parser(
        "sync",
        help="replay runs' WALs (offline runs) into a store or a trackside server",
        description="Replays each run folder's WAL into the destination: a server URL "
        "(grpc://host:port, grpcs://...), another run root, or by default the run's "
        "own root. Idempotent: running it again sends only what is new.",
    )
    sy.add_argument(
        "run_dirs",
        nargs="*",
        metavar="RUN_DIR",
        help="run folders (<root>/runs/<id>); default: every offline run under the run root",
    )
    sy.add_argument("--to", metavar="URL|PATH", help="destination (default: each run's own root)")
    sy.add_argument("--root", help="run root whose offline runs to sync when no RUN_DIR is given")
    sy.add_argument("--follow", action="store_true", help="keep syncing runs still being written, until they finish")
    sy.add_argument("--token", help="server token (default: $TRACKSIDE_TOKEN)")
    sy.add_argument("--ca", help="CA certificate of a grpcs:// server (default: $TRACKSIDE_TLS_CA, else system roots)")
    sy.add_argument("--quiet", action="store_true", help="no progress bar")
    sy.add_argument(
        "--batch-records",
        type=int,
        default=4096,
        metavar="N",
        help="WAL records per upload (default 4096; fewer for a slow link)",
    )

    tp = sub.add_parser("top", help="live view of this host's daemon: per run and writer rates, WAL, backlog")
    tp.add_argument("--once", action="store_true", help="print one snapshot and exit")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")

    sv = sub.add_parser(
        "server",
        help="serve a team's runs: daemons and `trackside sync` upload to it, "
        "trackside.Api('grpc://HOST:PORT') reads from it",
    )
    add_server_arguments(sv)

    u = sub.add_parser(
        "ui",
        help="serve the web page of a run root's runs (or a team server's) on http://127.0.0.1:8080",
        description="Serves the page (charts, runs table, media, tables, console, artifacts) and its "
        "JSON API (docs/ui-api.md). Needs pip install 'trackside[ui]'.",
    )
    u.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        help="a run root (default: $TRACKSIDE_DIR, else ./trackside) or a team server (grpc://HOST:PORT)",
    )
    u.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: loopback; any other needs --token)"
    )
    u.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    u.add_argument(
        "--token",
        help="the page asks for this token (and a grpc:// SOURCE is read with it); default $TRACKSIDE_TOKEN",
    )
    u.add_argument("--ca", help="CA certificate of a grpcs:// SOURCE (default: $TRACKSIDE_TLS_CA, else system roots)")

    r = sub.add_parser("runs", help="list the runs of a run root")
    r.add_argument("--root", help="run root (default: $TRACKSIDE_DIR or ./trackside)")
    r.add_argument("--project")
    r.add_argument("--format", choices=["table", "json", "csv"], default="table")

    h = sub.add_parser("history", help="print a run's history")
    h.add_argument("run", help="run id (or a unique prefix)")
    h.add_argument("--root")
    h.add_argument("--keys", nargs="+", help="only these keys")
    h.add_argument("--min-step", type=int)
    h.add_argument("--max-step", type=int)
    h.add_argument(
        "--system",
        action="store_true",
        help="the run's system metrics (CPU, memory, disk, network, GPUs) by time and host, not its steps",
    )
    h.add_argument("--format", choices=["table", "json", "csv"], default="table")

    s = sub.add_parser("summary", help="print a run's summary")
    s.add_argument("run")
    s.add_argument("--root")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")

    t = sub.add_parser("table", help="print a table a run logged, filtered, grouped and sorted")
    t.add_argument("run", help="run id (or a unique prefix)")
    t.add_argument("key", help="the key the table was logged under")
    t.add_argument("--root")
    t.add_argument("--version", help="N, vN or an alias (default: latest)")
    t.add_argument(
        "--where",
        metavar="EXPR",
        help="keep rows where EXPR holds: COL OP VALUE joined by and/or (OP: == != < <= > >= "
        'contains startswith), e.g. "label == cat and score > 0.5"',
    )
    t.add_argument("--group-by", metavar="COL", help="one row per value of COL: count and means of number columns")
    t.add_argument("--sort", metavar="COL", help="sort by COL (after grouping: any output column)")
    t.add_argument("--desc", action="store_true", help="sort in descending order")
    t.add_argument("--limit", type=int, metavar="N", help="at most N rows")
    t.add_argument("--format", choices=["table", "json", "csv"], default="table")

    _COMMANDS.update(add_parsers(sub))
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        return _COMMANDS[args.command](args)
    except (KeyError, FileNotFoundError, LookupError) as e:
        print(f"trackside: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except Exception as e:
        # lazy: a store or server that cannot be read (StoreError; a RemoteError is one),
        # imported here: the command line starts without the store's modules
        from trackside.store.dialect import StoreError

        if not isinstance(e, StoreError):
            raise
        print(f"trackside: {e}", file=sys.stderr)
        return 1


def _daemon(args) -> int:
    folder = discovery.daemon_dir()
    if args.action == "run":
        from trackside.daemon.server import main as daemon_main  # lazy: only `trackside daemon run` loads the daemon

        extra = [] if args.idle_timeout is None else ["--idle-timeout", str(args.idle_timeout)]
        if args.metrics_port is not None:
            extra += ["--metrics-port", str(args.metrics_port), "--metrics-host", args.metrics_host]
        return daemon_main(["--dir", folder, *extra])
    info = discovery.read_info(folder)
    alive = info is not None and _alive(info.get("pid"))
    if args.action == "status":
        if not alive:
            print(f"no trackside daemon is running for {folder}")
            return 1
        # lazy: the transport (msgspec, sockets) only for daemon commands; keeps the CLI's start quick
        from trackside.transport import daemon_status

        print(
            f"trackside daemon {info.get('version')} pid {info['pid']}, socket {info['socket']}, gRPC {info.get('grpc')}"
        )
        status = daemon_status(info)
        for run in status.get("runs", []):
            print(
                f"  run {run['run_id']}: {run['writers']} writer(s), {run['records']} batches, {run['entries']} entries, "
                f"WAL {run['wal_bytes']} bytes, merge backlog {run['merge_backlog']}, to {run.get('dest', 'local')}"
            )
            for d in run.get("damage") or ():
                print(
                    f"    WAL damage in {d['path']} at offset {d['offset']}: {d['bytes']} bytes skipped ({d['reason']})"
                )
            up = run.get("upload")
            if up:
                state = (
                    f"stopped: {up['error']}"
                    if up["error"]
                    else f"retrying: {up['retrying']}"
                    if up["retrying"]
                    else "ok"
                )
                print(
                    f"    upload lag {up['lag_records']} records, {up['lag_seconds']:.1f} s "
                    f"({up['lag_bytes']} bytes); {up['uploaded']} records uploaded; {state}"
                )
        sm = status.get("system_metrics")
        if sm:
            print(
                f"  system metrics: {'on' if sm['enabled'] else 'off'}, every {sm['sample_interval']} s, "
                f"stored every {sm['log_interval']} s by default; {sm['samples']} samples"
                f"{'' if sm['mean_sample_us'] is None else ' of %.0f us' % sm['mean_sample_us']}; "
                f"GPUs: {sm['gpu'] or 'not looked at yet (no run so far)'}"
            )
        return 0
    if args.action == "stop":
        if not alive:
            print(f"no trackside daemon is running for {folder}")
            return 0
        os.kill(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(info["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(info["pid"]):
            print(f"trackside daemon pid {info['pid']} did not stop within 30 s", file=sys.stderr)
            return 1
        print(f"stopped trackside daemon pid {info['pid']}")
        return 0
    # start
    if alive:
        print(f"trackside daemon already running: pid {info['pid']}")
        return 0
    # lazy: the transport (msgspec, sockets) only for daemon commands; keeps the CLI's start quick
    from trackside.transport import ensure_daemon

    daemon_args = []
    if args.metrics_port is not None:
        try:
            import prometheus_client  # noqa: F401  (optional: pip install 'trackside[metrics]')
        except ImportError:
            print(
                "trackside: --metrics-port needs prometheus-client: pip install 'trackside[metrics]'", file=sys.stderr
            )
            return 2
        daemon_args += ["--metrics-port", str(args.metrics_port), "--metrics-host", args.metrics_host]
    ensure_daemon(folder, daemon_args=daemon_args).close()
    deadline = time.monotonic() + 5  # the socket answers a moment before daemon.json is written
    while not (discovery.read_info(folder) or {}).get("pid") and time.monotonic() < deadline:
        time.sleep(0.02)
    info = discovery.read_info(folder) or {}
    print(f"started trackside daemon pid {info.get('pid')} on {info.get('socket')}")
    return 0


def _sync(args) -> int:
    # lazy: asyncio and the daemon's sync only for `trackside sync`; keeps the CLI's start quick
    import asyncio

    from trackside.daemon.sync import SyncError, find_runs, sync_runs

    run_dirs = args.run_dirs or find_runs(run_root(args.root) if args.root else run_root())
    if not run_dirs:
        print("trackside sync: no offline runs to sync (pass run folders: <root>/runs/<id>)")
        return 0
    show = None
    bar = None
    if not args.quiet and sys.stderr.isatty():
        # lazy: rich's progress bar only for `trackside sync` on a terminal; keeps the CLI's start quick
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        # on stderr, like the check above: stdout keeps only the summary lines
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        tasks = {}

        def show(p):
            if p.run_id not in tasks:
                tasks[p.run_id] = bar.add_task(f"run {p.run_id}", total=p.total_bytes)
            bar.update(tasks[p.run_id], completed=p.done_bytes, total=max(p.total_bytes, p.done_bytes))

        bar.start()
    try:
        results = asyncio.run(
            sync_runs(
                run_dirs,
                args.to,
                follow=args.follow,
                token=args.token,
                ca=args.ca,
                on_progress=show,
                max_records=max(args.batch_records, 1),
            )
        )
    except SyncError as e:
        print(f"trackside sync: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("trackside sync: interrupted; run it again to go on where it stopped", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.stop()
    for p in results:
        print(
            f"run {p.run_id} -> {p.dest}: {p.records} new records, {p.duplicates} already there, "
            f"{p.files} files, {p.seconds:.1f} s"
        )
    return 0


def _alive(pid) -> bool:
    return pid_alive(pid)


def _runs(args) -> int:
    from trackside.api import Api  # lazy: the store's reader (sqlite3, msgspec); keeps the CLI's start quick

    print_runs(Api(args.root).runs(project=args.project), args.format)
    return 0


def _history(args) -> int:
    from trackside.api import Api  # lazy: the store's reader (sqlite3, msgspec); keeps the CLI's start quick

    run = Api(args.root).run(args.run)
    if args.system:
        if args.min_step is not None or args.max_step is not None:
            print(
                "trackside: --min-step and --max-step select steps; system metrics have a time axis "
                "(leave them out with --system)",
                file=sys.stderr,
            )
            return 2

        print_system_metrics(run.system_metrics(keys=args.keys), args.keys, args.format)
        return 0
    rows = run.history(keys=args.keys, min_step=args.min_step, max_step=args.max_step)
    print_history(rows, args.keys, args.format)
    return 0


def _summary(args) -> int:
    from trackside.api import Api  # lazy: the store's reader (sqlite3, msgspec); keeps the CLI's start quick

    print_summary(Api(args.root).run(args.run), args.format)
    return 0


def _table(args) -> int:
    from trackside.api import Api  # lazy: the store's reader (sqlite3, msgspec); keeps the CLI's start quick

    run = Api(args.root).run(args.run)
    version = args.version
    if version is not None and version.isdigit():
        version = int(version)
    table = run.table(args.key, version=version)
    if hasattr(table, "joined"):  # a JoinedTable: its joined rows
        table = table.joined()
    try:
        columns, rows = query(
            table.columns,
            table.data,
            where=args.where,
            group_by=args.group_by,
            sort=args.sort,
            descending=args.desc,
            limit=args.limit,
        )
    except QueryError as e:
        print(f"trackside: {e}", file=sys.stderr)
        return 2
    print_rows(columns, rows, args.format, title=f"{args.key} of {run.id}")
    return 0


_COMMANDS = {"daemon": _daemon, "runs": _runs, "history": _history, "summary": _summary}
_COMMANDS["table"] = _table


def _bench(args) -> int:
    from . import profiler  # lazy: only `trackside bench` loads the profiler

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if "float" not in kinds:
        kinds.insert(0, "float")
    problems = []
    if args.writers < 1:
        problems.append(f"--writers must be at least 1, not {args.writers}")
    if args.keys_per_record < 1:
        problems.append(f"--keys must be at least 1, not {args.keys_per_record}")
    if args.records is not None and args.records < 1:
        problems.append(f"--records must be at least 1, not {args.records}")
    if args.seconds is not None and not args.seconds > 0:
        problems.append(f"--seconds must be positive, not {args.seconds}")
    if args.rate < 0:
        problems.append(f"--rate must be 0 (flat out) or positive, not {args.rate}")
    if args.dest not in ("store", "none") and not args.dest.startswith(("grpc://", "grpcs://")):
        problems.append(f"--dest {args.dest!r}: use store, none or a server URL (grpc://HOST:PORT)")
    try:
        profiler.check_kinds(kinds)
    except ValueError as e:
        problems.append(str(e))
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (optional: pip install 'trackside[bench]')
        except ImportError:
            problems.append("--plot needs matplotlib: pip install 'trackside[bench]'")
    if problems:
        for p in problems:
            print(f"trackside bench: {p}", file=sys.stderr)
        return 2
    opts = {
        "writers": args.writers,
        "keys_per_record": args.keys_per_record,
        "kinds": kinds,
        "records": args.records,
        "seconds": None if args.records else (args.seconds or 10.0),
        "durability": args.durability,
        "rate": args.rate,
        "transport": args.transport,
        "dest": args.dest,
    }
    live = sys.stderr.isatty()

    def progress(line):
        sys.stderr.write("\r\x1b[2K" + line)
        sys.stderr.flush()

    res = profiler.run_bench(opts, progress=progress if live else None)
    if live:
        sys.stderr.write("\r\x1b[2K")
    if args.plot:
        profiler.plot(res, args.plot)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print("\n".join(profiler.report_lines(res)))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0 if args.dest == "none" or res["rows_stored"] >= res["rows_expected"] else 1


def _top(args) -> int:
    from .top import run_top  # lazy: rich and the transport only for `trackside top`

    return run_top(discovery.daemon_dir(), once=args.once, interval=args.interval)


_COMMANDS["bench"] = _bench
_COMMANDS["top"] = _top


def _server(args) -> int:
    # lazy: grpc and the team server only for `trackside server`
    from trackside.server.team_server import serve

    return serve(args)


_COMMANDS["server"] = _server


def _ui(args) -> int:
    if not 0 <= args.port <= 65535:
        print(f"trackside ui: --port must be 0 to 65535, not {args.port}", file=sys.stderr)
        return 2
    try:
        from trackside.ui import serve  # lazy: starlette, uvicorn and the store only for `trackside ui`
    except ImportError as e:
        print(f"trackside ui: needs {e.name or e}: pip install 'trackside[ui]'", file=sys.stderr)
        return 2
    return serve(args.source, args.host, args.port, args.token, args.ca)


_COMMANDS["ui"] = _ui
_COMMANDS["status"] = _daemon
_COMMANDS["sync"] = _sync


if __name__ == "__main__":
    sys.exit(main())
