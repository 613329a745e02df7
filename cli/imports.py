"""``trackside import tensorboard|wandb|mlflow`` and ``trackside export tensorboard``.

Only argparse here: each command imports its library when it runs, and a missing one is an
error naming the extra that installs it.
"""

from __future__ import annotations

import importlib
import sys

from trackside.contracts.discovery import run_root

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def add_parsers(sub) -> dict:
    """Add the ``import`` and ``export`` commands to ``sub``; returns their handlers by name."""
    imp = sub.add_parser(
        "import",
        help="turn runs of TensorBoard, W&B or MLflow into trackside runs",
        description="Each source run becomes a run of the run root (history at its original "
        "steps and times, config, summary); importing a run again imports nothing.",
    )
    src = imp.add_subparsers(dest="source", metavar="SOURCE", required=True)
    tb = src.add_parser("tensorboard", help="event files (TensorBoard, tensorboardX, torch SummaryWriter)")
    tb.add_argument("logdir", help="a log directory: every folder inside holding event files is one run")
    wb = src.add_parser("wandb", help="W&B offline or local run folders (wandb/offline-run-*, wandb/run-*)")
    wb.add_argument("paths", nargs="+", metavar="PATH", help="run folders, or folders holding them (such as ./wandb)")
    ml = src.add_parser("mlflow", help="runs of an MLflow tracking store")
    ml.add_argument(
        "--tracking-uri",
        required=True,
        metavar="URI",
        help="the MLflow tracking URI (a folder, file:///..., sqlite:///..., http://...)",
    )
    ml.add_argument("--experiment", metavar="NAME", help="only this experiment (default: all of them)")
    for p in (tb, wb, ml):
        p.add_argument("--root", help="run root to import into (default: $TRACKSIDE_DIR or ./trackside)")
        p.add_argument("--project", help="project of the imported runs (default: the source's own, or its name)")

    exp = sub.add_parser("export", help="write a run in another tool's format")
    dst = exp.add_subparsers(dest="target", metavar="TARGET", required=True)
    et = dst.add_parser("tensorboard", help="TensorBoard event files: scalars, histograms, images")
    et.add_argument("run", help="run id (or a unique prefix)")
    et.add_argument("--out", required=True, metavar="DIR", help="folder for the event file (created if missing)")
    et.add_argument("--root", help="run root (default: $TRACKSIDE_DIR or ./trackside)")
    return {"import": _import, "export": _export}


def _need(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(f"trackside: this needs {extra} ({e}); install it: pip install 'trackside[{extra}]'") from None


def _root(args) -> str:
    return args.root or run_root()


def _report(result: dict) -> None:
    skipped = ", ".join(f"{n} {k}" for k, n in sorted(result.get("skipped", {}).items()))
    if result["status"] == "exists":
        print(f"{result['source']}: run {result['id']} exists already, not imported again")
    else:
        print(
            f"{result['source']} -> run {result['id']} ({result['name']}): {result['rows']} rows"
            + (f"; skipped: {skipped}" if skipped else "")
        )


def _import(args) -> int:
    try:
        return _import_source(args)
    except ValueError as e:  # UsageError, a file of the wrong format: the message says what to do
        print(f"trackside import {args.source}: {e}", file=sys.stderr)
        return 1


def _import_source(args) -> int:
    root = _root(args)
    project = args.project
    if args.source == "tensorboard":
        tb = _need("trackside.integration.tensorboard", "tensorboard")
        results = tb.import_logdir(args.logdir, root, project=project or "tensorboard", on_run=_report)
    elif args.source == "wandb":
        wb = _need("trackside.integration.wandb", "wandb")
        results = wb.import_paths(args.paths, root, project=project, on_run=_report)
    else:
        ml = _need("trackside.integration.mlflow", "mlflow")
        results = ml.import_runs(args.tracking_uri, root, experiment=args.experiment, project=project, on_run=_report)
    if not results:
        print(f"trackside import {args.source}: found no runs to import", file=sys.stderr)
        return 1
    return 0


def _export(args) -> int:
    from trackside.api import Api  # lazy: the store's reader only for `export`; keeps the CLI's start quick

    tb = _need("trackside.integration.tensorboard", "tensorboard")
    run = Api(args.root).run(args.run)
    counts = tb.export_run(run, args.out)
    print(f"run {run.id} -> {args.out}: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"))
    return 0
