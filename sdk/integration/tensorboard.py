"""TensorBoard both ways: event files out of a run, runs out of event files (the live capture of
``SummaryWriter`` writes, ``init(sync_tensorboard=True)``, is ``trackside.hooks.tensorboard``).

    trackside export tensorboard RUN --out DIR     # scalars, histograms, images as tfevents
    trackside import tensorboard LOGDIR            # one run per folder holding event files

What crosses: scalars (``simple_value``, or the scalars plugin's tensors), histograms (the
``histo`` proto, or the histograms plugin's tensors) and images (PNG or JPEG bytes, kept as
they are). Other summaries (text, audio, graphs, hparams, embeddings) are counted as skipped.
TensorBoard keeps scalars as float32: an imported scalar is the float32 value that was
written. Event files are read and written with the ``tensorboard`` package's own modules.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import defaultdict

from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from ..hooks.tensorboard import Reader, to_histogram, to_image  # noqa: F401  (events to values, shared with the capture)
from ._importer import ImportedRun, imported

EVENT_FILE = "tfevents"  # event files are named events.out.tfevents.<time>.<host>...


def event_dirs(logdir: str) -> list[str]:
    """The folders under ``logdir`` (itself included) that hold event files, sorted."""
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"no such log directory: {logdir}")
    found = []
    for folder, dirs, files in os.walk(logdir):
        dirs.sort()
        if any(EVENT_FILE in f for f in files):
            found.append(folder)
    return found


def import_logdir(logdir: str, root: str, project: str = "tensorboard", on_run=None) -> list[dict]:
    """One run per folder of ``logdir`` holding event files, named after its path inside
    ``logdir``; rows by step, at the time of the step's last event. Importing a folder again
    imports nothing (its run id is derived from its absolute path). Returns one dict per folder:
    ``id``, ``name``, ``rows``, ``skipped`` (per kind) and ``status`` ("imported" or "exists")."""
    logdir = os.path.abspath(logdir)
    results = []
    for folder in event_dirs(logdir):
        rel = os.path.relpath(folder, logdir)
        name = os.path.basename(logdir) if rel == "." else rel
        run_id = "tb-" + hashlib.sha256(folder.encode()).hexdigest()[:12]
        result = {"id": run_id, "name": name, "source": folder, "rows": 0, "skipped": {}}
        if imported(root, run_id):
            result["status"] = "exists"
        else:
            rows, reader, started = _read_folder(folder)
            source = {"from": "tensorboard", "logdir": folder, "started_at": started}
            with ImportedRun(root, run_id=run_id, project=project, name=name, source=source) as out:
                for step in sorted(rows):
                    t, values = rows[step]
                    out.log(values, step, t)
            result.update(rows=len(rows), skipped=dict(reader.skipped), status="imported")
        results.append(result)
        if on_run is not None:
            on_run(result)
    return results


def _read_folder(folder: str):
    rows: dict[int, list] = {}
    reader = Reader()
    started = None
    for f in sorted(os.listdir(folder)):
        if EVENT_FILE not in f:
            continue
        for event in LegacyEventFileLoader(os.path.join(folder, f)).Load():
            started = event.wall_time if started is None else min(started, event.wall_time)
            if not event.HasField("summary"):
                continue
            values = reader.values(event)
            if values:
                row = rows.setdefault(int(event.step), [event.wall_time, {}])
                row[0] = max(row[0], event.wall_time)
                row[1].update(values)
    return rows, reader, started


# -- export ----------------------------------------------------------------------------------------


def export_run(run, out: str) -> dict:
    """Write ``run``'s history (a ``RunView``) as an event file in ``out``: scalars as
    ``simple_value``, histograms as ``histo``, images (lists too: ``<key>/<i>``) as encoded
    images, at each row's step and time. Returns the counts per kind, and of values skipped."""
    counts: dict[str, int] = defaultdict(int)
    writer = EventFileWriter(out)
    try:
        for row in run.scan_history():
            values = []
            for key, value in row.items():
                if not key.startswith("_"):
                    values.extend(_summary_values(run.dir, key, value, counts))
            if values:
                writer.add_event(
                    event_pb2.Event(
                        wall_time=row["_timestamp"], step=row["_step"], summary=summary_pb2.Summary(value=values)
                    )
                )
    finally:
        writer.close()
    return dict(counts)


def _summary_values(run_dir: str, key: str, value, counts) -> list:
    Value = summary_pb2.Summary.Value
    if isinstance(value, (bool, int, float)):
        counts["scalars"] += 1
        return [Value(tag=key, simple_value=float(value))]
    kind = value.get("_type") if isinstance(value, dict) else None
    if kind == "histogram":
        edges, hist = value["bins"], value["values"]
        counts["histograms"] += 1
        # min and max are the outer edges; sum and sum of squares from the bins' midpoints
        mids = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
        return [
            Value(
                tag=key,
                histo=summary_pb2.HistogramProto(
                    min=edges[0],
                    max=edges[-1],
                    num=sum(hist),
                    sum=sum(c * m for c, m in zip(hist, mids)),
                    sum_squares=sum(c * m * m for c, m in zip(hist, mids)),
                    bucket_limit=edges[1:],
                    bucket=hist,
                ),
            )
        ]
    if kind == "image-file" and value.get("format") in ("png", "jpg"):
        data = _media_bytes(run_dir, value["path"])
        counts["images"] += 1
        return [
            Value(
                tag=key,
                image=summary_pb2.Summary.Image(
                    height=value.get("height") or 0,
                    width=value.get("width") or 0,
                    colorspace={"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(value.get("mode"), 0),
                    encoded_image_string=data,
                ),
            )
        ]
    if kind == "list":
        out = []
        for i, item in enumerate(value["items"]):
            out.extend(_summary_values(run_dir, f"{key}/{i}", item, counts))
        return out
    if value is not None:
        counts[f"skipped {kind or type(value).__name__}"] += 1
    return []


def _media_bytes(run_dir: str, rel: str) -> bytes:
    path = os.path.realpath(os.path.join(run_dir, rel))
    if not path.startswith(os.path.realpath(run_dir) + os.sep):
        raise ValueError(f"media path {rel!r} leaves the run folder {run_dir}")
    with open(path, "rb") as f:
        return f.read()
