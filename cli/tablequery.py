"""Print a table's rows after the query of ``trackside.tablequery`` (``trackside table``)."""

from __future__ import annotations

import csv

from trackside.tablequery import QueryError, is_number, compile_where, group_rows, query, sort_rows

from .display import _cell, _csv_cell, _out, _table, _write_json

__all__ = ["QueryError", "compile_where", "group_rows", "print_rows", "query", "sort_rows"]


def print_rows(columns: list[str], rows: list[list], fmt: str = "table", file=None, *, title: str = "table") -> None:
    """Print rows: ``json`` (a list of objects), ``csv`` (a header line, then one line per
    row) or ``table`` (aligned text; a rich table on a terminal). Data-type cells (images
    ...) print as their short description; numpy arrays as lists."""
    file = _out(file, fmt)
    rows = [[_printable(v) for v in r] for r in rows]
    if fmt == "json":
        _write_json([dict(zip(columns, r)) for r in rows], file)
    elif fmt == "csv":
        w = csv.writer(file, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_csv_cell(v) for v in r])
    else:
        right = {
            c for i, c in enumerate(columns) if rows and all(v is None or is_number(v) for v in (r[i] for r in rows))
        }
        _table(list(columns), [[_cell(v) for v in r] for r in rows], file, title=title, right=right)


def _printable(v):
    if type(v).__name__ == "ndarray":
        return v.tolist()
    if hasattr(v, "to_json") and hasattr(v, "_type"):  # a data type: its description
        return repr(v)
    return v
