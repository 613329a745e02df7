"""What the page's JSON API answers, read through ``trackside.Api`` (a local store or a team
server alike): plain dicts and lists, numpy arrays left for orjson to write. Nothing here
reads a file or the database itself."""

from __future__ import annotations

import collections
import math
import threading
from typing import Any, Optional

from trackside.tablequery import QueryError, is_number, query

from .runquery import field_value, select, to_filters

MAX_PER_PAGE = 500
MAX_SAMPLES = 5000
TAIL_LIMIT = 10000
HISTOGRAM_BINS = 64  # the heat map's common bins
HISTOGRAM_STEPS = 200  # histograms drawn in a heat map at most


class BadRequest(ValueError):
    """A request the API cannot answer as asked (the message says why); HTTP 400."""


# -- runs ----------------------------------------------------------------------------------------


def run_fields(run) -> dict:
    return {
        "id": run.id,
        "project": run.project,
        "name": run.name,
        "state": run.state,
        "group": run.group,
        "job_type": run.job_type,
        "tags": list(run.tags or ()),
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "finished_at": run.finished_at,
        "duration": run.runtime,
        "exit_code": run.exit_code,
        "last_step": run.last_step,
        "history_rows": run.history_rows,
    }


def projects(api) -> list[dict]:
    out: dict[str, dict] = {}
    for run in api.runs():
        p = out.setdefault(run.project, {"name": run.project, "runs": 0, "running": 0, "last_created": 0.0})
        p["runs"] += 1
        p["running"] += run.state == "running"
        p["last_created"] = max(p["last_created"], run.created_at or 0.0)
    return sorted(out.values(), key=lambda p: -p["last_created"])


def flatten(doc: Any, prefix: str = "") -> dict:
    """A config or summary as ``{"a.b": value}``; rich values (a dict with ``_type``) are
    shown by their type."""
    out: dict[str, Any] = {}
    if not isinstance(doc, dict):
        return out
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and "_type" not in v:
            out.update(flatten(v, name + "."))
        else:
            out[name] = show(v)
    return out


def show(v: Any) -> Any:
    """A value as a table cell shows it: a rich value as its type."""
    if isinstance(v, dict) and "_type" in v:
        return f"<{v['_type']}>"
    return v


def runs_page(
    api,
    project: Optional[str],
    *,
    where: str = "",
    order: str = "-created_at",
    page: int = 0,
    per_page: int = 50,
    columns: tuple[str, ...] = (),
    group: str = "",
) -> dict:
    try:
        filters = to_filters(where)
    except QueryError as e:
        raise BadRequest(str(e)) from None
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise BadRequest(f"per_page must be 1 to {MAX_PER_PAGE}, not {per_page}")
    # grouped: the store orders by the group's field, the page by the chosen order within it
    runs = select(api, project, filters, group or order or None, per_page)
    total = len(runs)
    chosen = list(runs[page * per_page : (page + 1) * per_page])
    if group and order:
        field, desc = order.lstrip("+-"), order.startswith("-")
        chosen = _stable_sort(chosen, field, desc, group)
    available: dict[str, None] = {}
    rows = []
    for run in chosen:
        config, summary = flatten(run.config, "config."), flatten(run.summary, "summary.")
        for k in (*config, *summary):
            available.setdefault(k)
        values = {**config, **summary}
        row = run_fields(run)
        row["values"] = {c: values.get(c) for c in columns}
        if group:
            row["group_value"] = show(field_value(run, group))
        rows.append(row)
    return {
        "total": total,
        "page": page,
        "per_page": per_page,
        "runs": rows,
        "columns": list(columns),
        "available": sorted(available),
        "filters": filters,
    }


def _stable_sort(runs: list, field: str, desc: bool, group: str) -> list:
    def key(r):
        v = field_value(r, field)
        return (0, v) if is_number(v) else (1, str(v)) if v is not None else (2, "")

    out: list = []
    i = 0
    while i < len(runs):  # sort each run of equal group values, keeping the groups' order
        j = i
        g = field_value(runs[i], group)
        while j < len(runs) and field_value(runs[j], group) == g:
            j += 1
        out.extend(sorted(runs[i:j], key=key, reverse=desc))
        i = j
    return out


def run_detail(run) -> dict:
    out = run_fields(run)
    out["config"] = run.config
    out["summary"] = {k: show(v) for k, v in run.summary.items()}
    out["metadata"] = run.metadata
    out.update(run_keys(run))
    return out


def run_keys(run) -> dict:
    """The run's keys by what the page draws of them: ``scalars`` (charts), ``histograms``,
    ``media`` (key -> type) and ``tables``."""
    tables = list(run.table_keys())
    media: dict[str, str] = {}
    for f in run.media_files():
        if f["type"] != "mask":  # an image's mask is part of the image
            media.setdefault(f["key"], f["type"])
    skip = set(media) | set(tables)
    scalars = [k for k in run.keys() if k not in skip and not k.startswith("_")]
    histograms = [k for k, t in media.items() if t == "histogram"]
    return {
        "scalars": scalars,
        "histograms": histograms,
        "media": {k: t for k, t in media.items() if t != "histogram" and k not in tables},
        "tables": tables,
    }


def compare(api, run_ids: list[str]) -> dict:
    """The runs of a comparison and the numeric keys any of them logged."""
    if not run_ids:
        raise BadRequest("name at least one run (runs=ID,ID...)")
    runs, keys = [], {}
    for rid in run_ids:
        run = api.run(rid)
        runs.append(run_fields(run))
        for k in run_keys(run)["scalars"]:
            keys.setdefault(k)
    return {"runs": runs, "scalars": sorted(keys)}


# -- charts --------------------------------------------------------------------------------------


def _buckets_json(b) -> dict:
    out: dict[str, Any] = {"x": b.x, "last": b.last, "exact": bool(b.exact)}
    if not b.exact:  # exact: one point per entry, min == max == last
        out["min"], out["max"] = b.min, b.max
    out["step"] = b.step
    return out


def buckets(
    api,
    run_ids: list[str],
    key: str,
    *,
    samples: int = 1000,
    min_step: Optional[int] = None,
    max_step: Optional[int] = None,
    x_axis: str = "_step",
) -> dict:
    if not 1 <= samples <= MAX_SAMPLES:
        raise BadRequest(f"samples must be 1 to {MAX_SAMPLES}, not {samples}")
    if not run_ids:
        raise BadRequest("name at least one run (runs=ID,ID...)")
    found = api.buckets_many(run_ids, key, samples=samples, min_step=min_step, max_step=max_step, x_axis=x_axis)
    out = {}
    for run_id, b in found.items():
        rid = getattr(run_id, "id", run_id)
        j = _buckets_json(b)
        if x_axis == "_step":
            del j["step"]  # the same as x
        out[rid] = j
    return {"key": key, "x_axis": x_axis, "runs": out}


def tail(run, keys: list[str], since: int, limit: int = TAIL_LIMIT) -> dict:
    """The rows stored after step ``since`` as columns: ``_step``, ``_timestamp`` and each
    key (None where a row lacks it); ``cursor`` is where the next call starts."""
    t = run.tail(keys=keys or None, since=since, limit=min(limit, TAIL_LIMIT))
    cols: dict[str, list] = {"_step": [], "_timestamp": []}
    for k in keys:
        cols[k] = []
    for row in t.rows:
        cols["_step"].append(row.get("_step"))
        cols["_timestamp"].append(row.get("_timestamp"))
        for k in keys:
            v = row.get(k)
            cols[k].append(v if is_number(v) else None)
    return {"cursor": t.cursor, "state": run.state, "rows": cols, "count": len(t.rows)}


def system(run, since: Optional[float] = None) -> dict:
    """System metrics per host as columns, only rows after ``since`` (seconds) when given."""
    hosts: dict[str, dict] = {}
    cursor = since
    for row in run.system_metrics():
        t = row["_timestamp"]
        if since is not None and t <= since:
            continue
        h = hosts.setdefault(row.get("host") or "", {"t": [], "keys": {}})
        n = len(h["t"])
        h["t"].append(t)
        for k, v in row.items():
            if k.startswith("system/") and is_number(v):
                h["keys"].setdefault(k, [None] * n).append(v)
        for col in h["keys"].values():
            if len(col) < n + 1:
                col.append(None)
        cursor = t if cursor is None else max(cursor, t)
    return {"hosts": hosts, "cursor": cursor, "state": run.state}


# -- media ---------------------------------------------------------------------------------------

MEDIA_KINDS = {
    "image-file": "image",
    "audio-file": "audio",
    "video-file": "video",
    "html-file": "html",
    "object3D-file": "object3D",
    "molecule-file": "molecule",
    "plotly-file": "plotly",
    "chart": "chart",
    "histogram": "histogram",
}


def media_steps(run, key: str) -> dict:
    steps = sorted({f["step"] for f in run.media_files(key)})
    types = sorted({f["type"] for f in run.media_files(key)})
    return {"key": key, "steps": steps, "types": types}


def _logged_form(run, key: str, step: int):
    rows = run.history(keys=[key], min_step=step, max_step=step + 1)
    if not rows or key not in rows[0]:
        raise KeyError(f"run {run.id} has no value at key {key!r} step {step}")
    return rows[0][key]


def media_at(run, key: str, step: int, file_url) -> dict:
    """The items logged at ``key`` and ``step``, each described for the page; ``file_url(item,
    mask=None)`` makes the URL of an item's file (or of one of its masks)."""
    form = _logged_form(run, key, step)
    forms = form["items"] if isinstance(form, dict) and form.get("_type") == "list" else [form]
    items = []
    for i, f in enumerate(forms):
        if not isinstance(f, dict) or "_type" not in f:
            items.append({"kind": "value", "value": f})
            continue
        kind = MEDIA_KINDS.get(f["_type"], f["_type"])
        item: dict[str, Any] = {"kind": kind, "caption": f.get("caption"), "format": f.get("format")}
        if "path" in f:
            item["url"] = file_url(i)
            item["size"] = f.get("size")
        if kind == "image":
            item["width"], item["height"] = f.get("width"), f.get("height")
            item["masks"] = {
                name: {"url": file_url(i, name), "class_labels": m.get("class_labels") or {}}
                for name, m in (f.get("masks") or {}).items()
            }
            item["boxes"] = f.get("boxes") or {}
            item["classes"] = (f.get("classes") or {}).get("class_set")
        elif kind == "histogram":
            item["bins"], item["values"] = f.get("bins"), f.get("values")
        elif kind == "chart":
            item["spec"] = {k: v for k, v in f.items() if k != "_type"}
        items.append(item)
    return {"key": key, "step": step, "items": items}


def media_file(run, key: str, step: int, item: int, mask: Optional[str] = None) -> tuple[bytes, str, str]:
    """``(bytes, format, kind)`` of an item's file (or its mask's), through ``run.media``."""
    obj = run.media(key, step)
    objs = obj if isinstance(obj, list) else [obj]
    if not 0 <= item < len(objs):
        raise KeyError(f"run {run.id} has {len(objs)} item(s) at key {key!r} step {step}, not {item + 1}")
    o = objs[item]
    if mask is not None:
        masks = getattr(o, "masks", None) or {}
        if mask not in masks:
            raise KeyError(f"the image at key {key!r} step {step} has no mask {mask!r}")
        o = masks[mask]
    if not hasattr(o, "content"):
        raise KeyError(f"the value at key {key!r} step {step} has no file")
    kind = MEDIA_KINDS.get(getattr(o, "_type", ""), "file")
    return o.content, o.format, kind


def histograms(run, key: str) -> dict:
    """A key's histograms over time on common bins (for a heat map), and each as logged."""
    rows = run.history(keys=[key])
    if len(rows) > HISTOGRAM_STEPS:  # evenly spaced, the first and the last kept
        last = len(rows) - 1
        rows = [rows[round(i * last / (HISTOGRAM_STEPS - 1))] for i in range(HISTOGRAM_STEPS)]
    found = []
    for row in rows:
        v = row.get(key)
        if isinstance(v, dict) and v.get("_type") == "histogram" and v.get("bins") and v.get("values"):
            found.append((row["_step"], v["bins"], v["values"]))
    if not found:
        return {"key": key, "steps": [], "edges": [], "z": [], "raw": []}
    lo = min(b[0] for _, b, _ in found)
    hi = max(b[-1] for _, b, _ in found)
    if not hi > lo:
        hi = lo + 1.0
    n = HISTOGRAM_BINS
    width = (hi - lo) / n
    edges = [lo + i * width for i in range(n + 1)]
    z = []
    for _, bins, values in found:
        z.append(_rebin(bins, values, lo, width, n))
    return {
        "key": key,
        "steps": [s for s, _, _ in found],
        "edges": edges,
        "z": z,
        "raw": [{"step": s, "bins": b, "values": v} for s, b, v in found],
    }


def _rebin(bins: list, values: list, lo: float, width: float, n: int) -> list[float]:
    """Counts of one histogram spread onto ``n`` equal bins from ``lo`` (by overlap)."""
    out = [0.0] * n
    for i, count in enumerate(values):
        a, b = bins[i], bins[i + 1]
        if not count:
            continue
        if b <= a:  # a bin of no width: all at one point
            j = min(n - 1, max(0, int((a - lo) / width)))
            out[j] += count
            continue
        j0 = max(0, int((a - lo) / width))
        j1 = min(n - 1, int(math.ceil((b - lo) / width)) - 1)
        for j in range(j0, j1 + 1):
            left, right = lo + j * width, lo + (j + 1) * width
            overlap = min(b, right) - max(a, left)
            if overlap > 0:
                out[j] += count * overlap / (b - a)
    return out


# -- tables --------------------------------------------------------------------------------------


def table_versions(run) -> dict:
    """Each table key's logged versions, oldest first: ``version``, ``step``, ``increment``."""
    out: dict[str, list] = {k: [] for k in run.table_keys()}
    for a in run.logged_artifacts():
        if a.run_key is not None and a.run_key in out:
            out[a.run_key].append({"version": a.version, "step": a.step, "increment": a.increment})
    return out


class TableCache:
    """The last few tables read (a table is read whole; paging and sorting reuse it). Keyed by
    run, key and the version read, so a live run's new version is a new entry."""

    def __init__(self, size: int = 8):
        self.size = size
        self._tables: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, run, key: str, version: Optional[str], increment: Optional[int]):
        versions = table_versions(run).get(key)
        if not versions:
            raise KeyError(f"run {run.id} logged no table {key!r}")
        if version in (None, "", "latest"):
            version = versions[-1]["version"]
        cache_key = (run.id, key, version, increment)
        with self._lock:
            if cache_key in self._tables:
                self._tables.move_to_end(cache_key)
                return self._tables[cache_key], version, versions
        if increment is not None:
            incs = run.table_increments(key)
            match = [i for i in incs if i.increment == increment]
            if not match:
                raise KeyError(f"table {key!r} of run {run.id} has no increment {increment}")
            table = match[0].table
        else:
            table = run.table(key, version=version)
        if hasattr(table, "joined"):  # a JoinedTable: its joined rows
            table = table.joined()
        with self._lock:
            self._tables[cache_key] = table
            while len(self._tables) > self.size:
                self._tables.popitem(last=False)
        return table, version, versions


ROW_ID = "\x00row"  # the column that carries each row's index through the query


def table_page(
    cache: TableCache,
    run,
    key: str,
    *,
    version: Optional[str] = None,
    increment: Optional[int] = None,
    where: str = "",
    group_by: str = "",
    sort: str = "",
    desc: bool = False,
    page: int = 0,
    per_page: int = 50,
    cell_url=None,
) -> dict:
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise BadRequest(f"per_page must be 1 to {MAX_PER_PAGE}, not {per_page}")
    table, version, versions = cache.get(run, key, version, increment)
    columns = list(table.columns)
    rows = [[*r, i] for i, r in enumerate(table.data)]
    try:
        cols, rows = query(
            [*columns, ROW_ID], rows, where=where or None, group_by=group_by or None, sort=sort or None, descending=desc
        )
    except QueryError as e:
        raise BadRequest(str(e)) from None
    grouped = ROW_ID not in cols
    total = len(rows)
    chosen = rows[page * per_page : (page + 1) * per_page]
    out_rows = []
    for r in chosen:
        if grouped:
            out_rows.append({"row": None, "cells": [_cell(v, None, None, cell_url) for v in r]})
        else:
            idx = r[-1]
            url = (lambda row, col: cell_url(version, row, col)) if cell_url is not None else None
            out_rows.append({"row": idx, "cells": [_cell(v, idx, j, url) for j, v in enumerate(r[:-1])]})
    return {
        "key": key,
        "version": version,
        "increment": increment,
        "versions": versions,
        "log_mode": getattr(table, "log_mode", None),
        "columns": cols if grouped else columns,
        "total": total,
        "page": page,
        "per_page": per_page,
        "rows": out_rows,
    }


def _cell(v: Any, row: Optional[int], col: Optional[int], cell_url) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)
    if hasattr(v, "tolist"):  # numpy
        return {"kind": "array", "value": v.tolist() if getattr(v, "size", 0) <= 64 else f"array {v.shape}"}
    if hasattr(v, "content") and row is not None and cell_url is not None:
        kind = MEDIA_KINDS.get(getattr(v, "_type", ""), "file")
        return {"kind": kind, "url": cell_url(row, col), "caption": getattr(v, "caption", None)}
    if hasattr(v, "to_json"):
        return {"kind": "value", "value": repr(v)}
    if isinstance(v, (list, dict)):
        return {"kind": "value", "value": v}
    return {"kind": "value", "value": repr(v)}


def table_cell(cache: TableCache, run, key: str, version, increment, row: int, col: int) -> tuple[bytes, str, str]:
    table, _, _ = cache.get(run, key, version, increment)
    try:
        v = table.data[row][col]
    except IndexError:
        raise KeyError(f"table {key!r} of run {run.id} has no cell ({row}, {col})") from None
    if not hasattr(v, "content"):
        raise KeyError(f"cell ({row}, {col}) of table {key!r} holds no file")
    return v.content, v.format, MEDIA_KINDS.get(getattr(v, "_type", ""), "file")


# -- console and artifacts -----------------------------------------------------------------------


def console(
    run,
    *,
    q: str = "",
    stream: Optional[str] = None,
    page: Optional[int] = None,
    per_page: int = 200,
    since: Optional[int] = None,
) -> dict:
    """Console lines, searched (case-insensitive substring) and paged; the last page unless
    ``page`` is given. ``since``: only lines after that many (a live view's cursor)."""
    if not 1 <= per_page <= 5000:
        raise BadRequest(f"per_page must be 1 to 5000, not {per_page}")
    lines = run.console_lines(stream)
    if since is not None:
        new = lines[since:]
        return {"total": len(lines), "cursor": len(lines), "lines": [[ln.time, ln.stream, ln.text] for ln in new]}
    numbered = list(enumerate(lines))
    if q:
        needle = q.lower()
        numbered = [(i, ln) for i, ln in numbered if needle in ln.text.lower()]
    total = len(numbered)
    pages = max(1, math.ceil(total / per_page))
    if page is None or page >= pages:
        page = pages - 1
    chosen = numbered[page * per_page : (page + 1) * per_page]
    return {
        "total": total,
        "all": len(lines),
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "cursor": len(lines),
        "lines": [[i, ln.time, ln.stream, ln.text] for i, ln in chosen],
    }


def artifacts(run) -> list[dict]:
    out = []
    for a in run.logged_artifacts():
        entries = []
        for name, e in (a.manifest or {}).items():
            entries.append(
                {
                    "name": name,
                    "kind": e.get("kind"),
                    "size": e.get("size"),
                    "sha256": e.get("sha256"),
                    "type": (e.get("obj") or {}).get("_type") if e.get("kind") == "object" else None,
                }
            )
        out.append(
            {
                "name": a.name,
                "type": a.type,
                "version": a.version,
                "aliases": list(a.aliases),
                "digest": a.digest,
                "description": a.description,
                "metadata": a.metadata,
                "run_key": a.run_key,
                "step": a.step,
                "entries": entries,
            }
        )
    return out
