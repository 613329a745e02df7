"""How the CLI prints runs, history and summaries: ``table``, ``json`` or ``csv``.

- ``json``: one JSON document (orjson), for programs.
- ``csv``: a header line and one line per item (the csv module), for spreadsheets.
- ``table``: for people: a rich table when the output is a terminal, plain aligned text when
  it is not (a pipe or a file), so ``| grep`` and ``| less`` get no escape codes.

Each function writes to ``file`` (default: ``sys.stdout`` at call time).
"""

from __future__ import annotations

import base64
import csv
import math
import sys
import time
from typing import Any, Iterable, Optional, Sequence, TextIO

import orjson

__all__ = ["FORMATS", "print_history", "print_runs", "print_summary", "print_system_metrics"]

FORMATS = ("table", "json", "csv")

_RUN_TABLE = ("id", "project", "name", "state", "created", "runtime", "rows")


def print_runs(runs: Sequence, fmt: str = "table", file: Optional[TextIO] = None) -> None:
    """Print runs (``RunView``s). json: a list of objects with the run's fields; csv: the same
    fields as columns; table: id, project, name, state, created, runtime, history rows."""
    from trackside.api import RUN_FIELDS  # here: `trackside` commands that print no run stay light

    # the fields a run is read back with, less its last write time, and its folder
    fields = (*(f for f in RUN_FIELDS if f != "updated_at"), "dir")
    file = _out(file, fmt)
    if fmt == "json":
        _write_json([{f: getattr(r, f) for f in fields} for r in runs], file)
    elif fmt == "csv":
        w = csv.writer(file, lineterminator="\n")
        w.writerow(fields)
        for r in runs:
            w.writerow([_csv_cell(getattr(r, f)) for f in fields])
    else:
        rows = [
            [
                r.id,
                r.project,
                r.name or "",
                r.state,
                _when(r.created_at),
                _duration(r.runtime),
                str(r.history_rows),
            ]
            for r in runs
        ]
        _table(list(_RUN_TABLE), rows, file, title="runs", right={"runtime", "rows"})


def print_history(
    rows: Iterable[dict], keys: Optional[Sequence[str]] = None, fmt: str = "table", file: Optional[TextIO] = None
) -> None:
    """Print history rows (dicts as ``RunView.history`` returns them).

    Columns: ``_step``, ``_timestamp`` (json and csv only) and ``keys``; when ``keys`` is None,
    every key of the rows in first-seen order. A key a row lacks is left out (json) or empty
    (csv, table). json: a list of objects; bytes appear as base64 text, NaN as null."""
    file = _out(file, fmt)
    rows = list(rows)
    if keys is None:
        keys = list(dict.fromkeys(k for row in rows for k in row if not k.startswith("_")))
    else:
        keys = [k for k in keys if k not in ("_step", "_timestamp")]
    if fmt == "json":
        columns = ["_step", "_timestamp", *keys]
        _write_json([{k: row[k] for k in columns if k in row} for row in rows], file)
    elif fmt == "csv":
        columns = ["_step", "_timestamp", *keys]
        w = csv.writer(file, lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            w.writerow([_csv_cell(row.get(k)) for k in columns])
    else:
        columns = ["_step", *keys]
        body = [[_cell(row.get(k)) for k in columns] for row in rows]
        _table(columns, body, file, title="history", right=set(columns))


def print_summary(run, fmt: str = "table", file: Optional[TextIO] = None) -> None:
    """Print a run's summary. json: the summary object as stored; csv and table: one
    ``key, value`` line per entry, nested objects flattened to dotted keys, sorted."""
    file = _out(file, fmt)
    summary = run.summary
    if fmt == "json":
        _write_json(summary, file)
        return
    items = sorted(_flatten(summary))
    if fmt == "csv":
        w = csv.writer(file, lineterminator="\n")
        w.writerow(["key", "value"])
        for k, v in items:
            w.writerow([k, _csv_cell(v)])
    else:
        _table(["key", "value"], [[k, _cell(v)] for k, v in items], file, title=f"summary of {run.id}", right={"value"})


def print_system_metrics(
    rows: Iterable[dict], keys: Optional[Sequence[str]] = None, fmt: str = "table", file: Optional[TextIO] = None
) -> None:
    """Print system-metrics rows (dicts as ``RunView.system_metrics`` returns them).

    Columns: ``_timestamp`` (table: local time to the millisecond), ``host`` and ``keys``; when
    ``keys`` is None, every key of the rows in first-seen order. json: a list of objects; csv:
    a header line and one line per row, a key a row lacks left empty."""
    file = _out(file, fmt)
    rows = list(rows)
    meta = ("_timestamp", "host")
    if keys is None:
        keys = list(dict.fromkeys(k for row in rows for k in row if k not in meta))
    else:
        keys = [k for k in keys if k not in meta]
    columns = [*meta, *keys]
    if fmt == "json":
        _write_json([{k: row[k] for k in columns if k in row} for row in rows], file)
    elif fmt == "csv":
        w = csv.writer(file, lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            w.writerow([_csv_cell(row.get(k)) for k in columns])
    else:
        body = [
            [_when_ms(row.get("_timestamp")), str(row.get("host", "")), *(_cell(row.get(k)) for k in keys)]
            for row in rows
        ]
        _table(["time", "host", *keys], body, file, title="system metrics", right=set(keys))


# -- helpers -------------------------------------------------------------------------------------


def _out(file: Optional[TextIO], fmt: str) -> TextIO:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
    return sys.stdout if file is None else file


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def _write_json(obj: Any, file: TextIO) -> None:
    data = orjson.dumps(
        obj,
        default=_json_default,
        option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY,
    )
    file.write(data.decode())
    file.write("\n")


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # shortest text that reads back to the same float
    if isinstance(v, (int, str)):
        return str(v)
    return orjson.dumps(v, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def _cell(v: Any) -> str:
    """A value as a person reads it in a table."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.6g}"
    if isinstance(v, (int, str)):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, list) and v and all(isinstance(x, (bytes, bytearray)) for x in v):
        return f"<{len(v)} payloads>"
    return orjson.dumps(v, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def _flatten(d: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _when(t: Optional[float]) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _when_ms(t: Optional[float]) -> str:
    return "" if t is None else _when(t) + f".{int(t * 1000) % 1000:03d}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def _isatty(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


def _table(columns: list[str], rows: list[list[str]], file: TextIO, *, title: str, right: set) -> None:
    if _isatty(file):
        # lazy: rich only for a table on a terminal; keeps the CLI's start quick
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=title, title_justify="left")
        for c in columns:
            table.add_column(c, justify="right" if c in right else "left", no_wrap=c in right)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # values are data, not rich markup
        Console(file=file).print(table)
        return
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]

    def line(cells):
        return "  ".join(
            cell.rjust(w) if c in right else cell.ljust(w) for c, cell, w in zip(columns, cells, widths)
        ).rstrip()

    file.write(line(columns) + "\n")
    for row in rows:
        file.write(line(row) + "\n")
