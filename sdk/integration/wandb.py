"""``trackside import wandb PATH...``: W&B offline or local run folders into trackside runs.

A W&B run folder (``wandb/offline-run-<time>-<id>`` or ``wandb/run-<time>-<id>``) holds the
run's records in ``run-<id>.wandb`` (W&B's transaction log: LevelDB-style blocks of protobuf
``Record`` messages, parsed here with the ``wandb`` package's own protobuf classes) and its
media under ``files/``. What is imported:

- the run: id (when it is a valid trackside id), project, name, tags, group, job type, notes;
  its config (the ``_wandb`` entry left out);
- history rows at their ``_step`` and ``_timestamp``: numbers, strings, booleans; nested dicts
  as ``a/b``; images, histograms, tables, audio, video and HTML as trackside data types;
- the summary values set apart from the history (``run.summary[...] = ...``);
- console output, the exit code, and artifacts whose files are still on this machine (each
  file checked against the MD5 of W&B's manifest).

Skipped, and counted in the report: system metrics, lists of numbers, other media types, and
artifact files that are gone. A file named by a record is read only from inside the run's
``files/`` folder, and an artifact's file only when its content has the manifest's digest.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import importlib
import json
import os
import struct
import zlib
from collections import defaultdict

from wandb.proto import wandb_internal_pb2 as pb

from ..artifacts import Artifact
from ..data_types.histogram import Histogram
from ..data_types.table import Table
from ._importer import ImportedRun, check_run_id, imported

HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1 (little-endian), version 0
BLOCK = 32768
RECORD_HEADER = 7  # crc32 (of type byte + data), length (u16), type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFormatError(ValueError):
    """A .wandb file that is not W&B's transaction log."""


def records(path: str):
    """The ``Record`` messages of a ``.wandb`` file, in order. A record cut short at the end
    (a run still writing, or killed) ends the scan; a checksum mismatch skips that record."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(HEADER):
        raise WandbFormatError(f"{path} is not a W&B run file (it does not start with {HEADER!r})")
    pos, parts = len(HEADER), None
    while pos + RECORD_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        if kind == 0 or len(chunk) < length:
            break
        pos += RECORD_HEADER + length
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            parts = None
            continue
        if kind in (FULL, FIRST):
            parts = [chunk]
        elif parts is not None:
            parts.append(chunk)
        if kind in (FULL, LAST) and parts is not None:
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = None
            yield record


def run_folders(paths) -> list[str]:
    """Run folders named by ``paths``: run folders themselves, or folders holding them."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no such folder: {path}")
        if glob.glob(os.path.join(glob.escape(path), "run-*.wandb")):
            found.append(os.path.abspath(path))
            continue
        inner = sorted(glob.glob(os.path.join(glob.escape(path), "*run-*", "run-*.wandb")))
        inner += sorted(glob.glob(os.path.join(glob.escape(path), "wandb", "*run-*", "run-*.wandb")))
        found.extend(os.path.dirname(os.path.abspath(f)) for f in inner)
    return list(dict.fromkeys(found))


def _set(target: dict, item) -> None:
    """Apply one config/history/summary item (``key`` or ``nested_key`` path, ``value_json``)."""
    path = list(item.nested_key) or [item.key]
    value = json.loads(item.value_json)
    for k in path[:-1]:
        target = target.setdefault(k, {})
        if not isinstance(target, dict):
            return
    target[path[-1]] = value


def _remove(target: dict, item) -> None:
    path = list(item.nested_key) or [item.key]
    for k in path[:-1]:
        target = target.get(k)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


class _Folder:
    """What one W&B run folder holds, read from its records."""

    def __init__(self, folder: str):
        self.folder = folder
        self.files = os.path.join(folder, "files")
        (path,) = glob.glob(os.path.join(glob.escape(folder), "run-*.wandb"))[:1] or [None]
        if path is None:
            raise FileNotFoundError(f"{folder} holds no run-*.wandb file")
        self.run = None
        self.config: dict = {}
        self.history: list[dict] = []
        self.summary: dict = {}
        self.console: list = []
        self.artifacts: list = []
        self.exit_code = 0
        self.skipped: dict[str, int] = defaultdict(int)
        partial = {"stdout": "", "stderr": ""}
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                self.run = r.run
                for item in r.run.config.update:
                    _set(self.config, item)
            elif kind == "config":
                for item in r.config.update:
                    _set(self.config, item)
                for item in r.config.remove:
                    _remove(self.config, item)
            elif kind == "history":
                row: dict = {}
                for item in r.history.item:
                    _set(row, item)
                self.history.append(row)
            elif kind == "summary":
                for item in r.summary.update:
                    _set(self.summary, item)
                for item in r.summary.remove:
                    _remove(self.summary, item)
            elif kind in ("output_raw", "output"):
                out = getattr(r, kind)
                stream = "stderr" if out.output_type == 0 else "stdout"  # OutputType: STDERR = 0, STDOUT = 1
                t = out.timestamp.seconds + out.timestamp.nanos / 1e9
                text = partial[stream] + out.line
                *lines, partial[stream] = text.split("\n")
                self.console.extend((t, stream, line) for line in lines)
            elif kind == "artifact":
                self.artifacts.append(r.artifact)
            elif kind == "exit":
                self.exit_code = r.exit.exit_code
            elif kind == "stats":
                self.skipped["system metrics"] += 1
        self.console.extend((0.0, s, text) for s, text in partial.items() if text)
        if self.run is None:
            raise WandbFormatError(f"{path} holds no run record")
        self.config.pop("_wandb", None)

    def file(self, rel) -> str | None:
        """A path inside ``files/`` named by a record, or None when it leaves the folder or is missing."""
        if not isinstance(rel, str):
            return None
        base = os.path.realpath(self.files)
        path = os.path.realpath(os.path.join(base, rel))
        return path if path.startswith(base + os.sep) and os.path.isfile(path) else None


def _value(folder: _Folder, value, skipped):
    """A W&B logged value as a trackside value, or None (counted in ``skipped``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not isinstance(value, dict):
        skipped[f"{type(value).__name__} values"] += 1
        return None
    kind = value.get("_type")
    if kind == "histogram":
        return Histogram(np_histogram=(value["values"], value["bins"]))
    media = {
        "image-file": ("image", "Image"),
        "audio-file": ("audio", "Audio"),
        "video-file": ("video", "Video"),
        "html-file": ("html", "Html"),
    }
    if kind in media or kind == "table-file":
        path = folder.file(value.get("path"))
        if path is None:
            skipped[f"{kind} (file missing)"] += 1
            return None
        if kind == "table-file":
            return _table(folder, path, skipped)

        module, name = media[kind]
        cls = getattr(importlib.import_module(f"..data_types.{module}", __package__), name)
        kw = {"caption": value["caption"]} if value.get("caption") and kind != "html-file" else {}
        if kind == "audio-file" and value.get("sample_rate"):
            kw["sample_rate"] = value["sample_rate"]
        return cls(path, **kw)
    skipped[kind or "dict without _type"] += 1
    return None


def _table(folder: _Folder, path: str, skipped):
    with open(path) as f:
        doc = json.load(f)
    data = [[_value(folder, cell, skipped) if isinstance(cell, dict) else cell for cell in row] for row in doc["data"]]
    return Table(columns=list(doc["columns"]), data=data)


def _flatten(row: dict, prefix: str = "") -> dict:
    """Nested dicts without a ``_type`` as ``a/b`` keys; logged values (with ``_type``) as they are."""
    out = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "_type" not in v:
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _md5_ok(path: str, digest: str) -> bool:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode() == digest


def import_folder(folder: str, root: str, project: str | None = None) -> dict:
    """Import one W&B run folder into ``root``; returns a report (see ``import_paths``)."""
    src = _Folder(folder)
    info = src.run
    run_id = check_run_id(info.run_id) or "wandb-" + hashlib.sha256(info.run_id.encode()).hexdigest()[:12]
    result = {"id": run_id, "name": info.display_name or run_id, "source": folder, "rows": 0, "skipped": {}}
    if imported(root, run_id):
        result["status"] = "exists"
        return result
    skipped = src.skipped
    started = info.start_time.seconds + info.start_time.nanos / 1e9 if info.HasField("start_time") else None
    source = {
        "from": "wandb",
        "folder": folder,
        "run_id": info.run_id,
        "entity": info.entity or None,
        "started_at": started,
    }
    with ImportedRun(
        root,
        run_id=run_id,
        project=project or info.project or "wandb",
        name=info.display_name or None,
        config=src.config,
        tags=list(info.tags),
        group=info.run_group or None,
        job_type=info.job_type or None,
        source=source,
    ) as out:
        if info.notes:
            out.run._client.event("meta", {"notes": info.notes})
        last: dict = {}
        step = -1
        for row in src.history:
            step = max(int(row.pop("_step", step + 1)), step + 1)
            t = row.pop("_timestamp", None)
            row.pop("_runtime", None)
            values = {}
            for k, v in _flatten(row).items():
                value = _value(src, v, skipped)
                if value is not None or v is None:
                    values[k] = value
                    last[k] = v
            out.log(values, step, t)
            result["rows"] += 1
        explicit = {}
        for k, v in _flatten({k: v for k, v in src.summary.items() if not k.startswith("_")}).items():
            if k in last and last[k] == v:
                continue  # the history's last value: the run's summary computes it
            value = _value(src, v, skipped)
            if value is not None:
                explicit[k] = value
        if explicit:
            out.summary.update(explicit)
        out.console(src.console)
        for art in src.artifacts:
            if art.type == "run_table":
                continue  # the tables of the history, imported with it
            _artifact(out, art, skipped)
        out.exit_code = src.exit_code
    result.update(skipped=dict(skipped), status="imported")
    return result


def _artifact(out: ImportedRun, art, skipped) -> None:
    entries = []
    for entry in art.manifest.contents:
        path = entry.local_path
        if path and os.path.isfile(path) and _md5_ok(path, entry.digest):
            entries.append((entry.path, path))
        else:
            skipped["artifact files (gone, or not their digest)"] += 1
    if not entries:
        return
    new = Artifact(
        art.name,
        type=art.type,
        description=art.description or None,
        metadata=json.loads(art.metadata) if art.metadata else None,
    )
    for name, path in entries:
        new.add_file(path, name=name)
    out.run.log_artifact(new, aliases=[a for a in art.aliases if a != "latest"])


def import_paths(paths, root: str, project: str | None = None, on_run=None) -> list[dict]:
    """Import every W&B run folder named by ``paths`` (run folders, or folders holding them, such
    as ``./wandb``) into ``root``. A run keeps its W&B id; one imported already is not imported
    again. Returns one dict per folder: ``id``, ``name``, ``source``, ``rows``, ``skipped`` (per
    kind) and ``status`` ("imported" or "exists")."""
    results = []
    for folder in run_folders(paths):
        result = import_folder(folder, root, project)
        results.append(result)
        if on_run is not None:
            on_run(result)
    return results
