"""What every benchmark shares: the machine and versions it ran on, a readable table, and
``--json`` output (one JSON object of the figures)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from trackside.cli.profiler import machine  # the same machine line as `trackside bench`


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object of the figures")
    return p


def median(xs):
    return statistics.median(xs)


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table of ``rows`` (dicts) with ``columns`` in that order."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)))
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _numeric(s: str) -> bool:
    return s.replace(",", "").replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit()


def emit(args, title: str, figures: dict, rows: list[dict], columns: list[str], notes: list[str] = ()) -> None:
    """Print the result: JSON (one object: machine + figures) or a titled table."""
    if args.json:
        json.dump({"benchmark": title, "machine": machine(), **figures}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(title)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()))
    print()
    print(table(rows, columns))
    for n in notes:
        print(n)
