"""Filter, group and sort a table's rows: what ``trackside table`` does with ``--where``,
``--group-by``, ``--sort`` and ``--limit``.

The ``--where`` language is small and never evaluates code::

    expr  := and ("or" and)*
    and   := atom ("and" atom)*
    atom  := "not" atom | "(" expr ")" | COLUMN OP VALUE
    OP    := == | = | != | < | <= | > | >= | contains | startswith
    VALUE := a number, 'text' or "text", true, false, null, or a bare word (text)

A column is a bare name (letters, digits, ``_ . / -``) or quoted with backticks
(`` `my column` ``). A comparison between values that have no order (a string and a number, or
None) is false, never an error. ``contains`` is substring for text and membership for lists.
"""

from __future__ import annotations

import csv
import math
import operator
import re
from typing import Any, Callable, Optional

from .display import _cell, _csv_cell, _out, _table, _write_json

__all__ = ["QueryError", "compile_where", "group_rows", "query", "sort_rows"]


class QueryError(ValueError):
    """A ``--where`` expression (or a column name) the query cannot use; says where and why."""


_TOKEN = re.compile(
    r"""
    \s*(?:
      (?P<op>==|!=|<=|>=|=|<|>)
    | (?P<paren>[()])
    | `(?P<col>[^`]*)`
    | '(?P<sq>(?:[^'\\]|\\.)*)'
    | "(?P<dq>(?:[^"\\]|\\.)*)"
    | (?P<word>[^\s()=!<>'"`]+)
    )""",
    re.VERBOSE,
)

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_WORD_OPS = ("contains", "startswith")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise QueryError(f"cannot read the expression at position {pos}: {text[pos : pos + 20]!r}")
        kind = m.lastgroup
        value = m.group(kind)
        start = m.start(kind)
        if kind in ("sq", "dq"):
            value = re.sub(r"\\(.)", r"\1", value)
            kind = "str"
        out.append((kind, value, start))
        pos = m.end()
    return out


def _literal(kind: str, value: str):
    if kind == "str":
        return value
    low = value.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if low in ("null", "none"):
        return None
    if _NUMBER.match(value):
        n = float(value)
        return int(value) if n.is_integer() and re.match(r"^[+-]?\d+$", value) else n
    return value


class _Parser:
    def __init__(self, text: str, columns: list[str]):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.columns = columns

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self):
        tok = self.peek()
        if tok is None:
            raise QueryError(f"the expression {self.text!r} ends too early: expected a column, an operator or a value")
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "word" and tok[1].lower() == word

    def parse(self):
        if not self.toks:
            raise QueryError("the expression is empty")
        node = self.expr()
        tok = self.peek()
        if tok is not None:
            raise QueryError(f"unexpected {tok[1]!r} at position {tok[2]} (join conditions with 'and' / 'or')")
        return node

    def expr(self):
        parts = [self.conj()]
        while self.is_word("or"):
            self.i += 1
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else (lambda row, ps=parts: any(p(row) for p in ps))

    def conj(self):
        parts = [self.atom()]
        while self.is_word("and"):
            self.i += 1
            parts.append(self.atom())
        return parts[0] if len(parts) == 1 else (lambda row, ps=parts: all(p(row) for p in ps))

    def atom(self):
        if self.is_word("not"):
            self.i += 1
            inner = self.atom()
            return lambda row: not inner(row)
        kind, value, pos = self.take()
        if kind == "paren" and value == "(":
            node = self.expr()
            close = self.take()
            if close[:2] != ("paren", ")"):
                raise QueryError(f"expected ')' at position {close[2]}, found {close[1]!r}")
            return node
        if kind not in ("word", "col", "str"):
            raise QueryError(f"expected a column name at position {pos}, found {value!r}")
        if value not in self.columns:
            raise QueryError(f"no column {value!r} (position {pos}); the columns: {', '.join(self.columns)}")
        j = self.columns.index(value)
        okind, op, opos = self.take()
        if okind == "word" and op.lower() in _WORD_OPS:
            op = op.lower()
        elif okind != "op":
            raise QueryError(
                f"expected an operator (== != < <= > >= contains startswith) at position {opos}, found {op!r}"
            )
        vkind, raw, vpos = self.take()
        if vkind not in ("word", "str"):
            raise QueryError(f"expected a value at position {vpos}, found {raw!r}")
        return _condition(j, op, _literal(vkind, raw))


def _condition(j: int, op: str, want):
    if op == "contains":

        def test(row):
            v = row[j]
            if isinstance(v, str):
                return isinstance(want, str) and want in v
            if isinstance(v, (list, tuple, dict)):
                return want in v
            return False
    elif op == "startswith":

        def test(row):
            v = row[j]
            return isinstance(v, str) and isinstance(want, str) and v.startswith(want)
    else:
        fn = _OPS[op]
        equality = op in ("==", "=", "!=")

        def test(row):
            v = row[j]
            if equality:
                return fn(v, want)
            if v is None or want is None or isinstance(v, bool) != isinstance(want, bool):
                return False
            try:
                return bool(fn(v, want))
            except TypeError:  # no order between these values
                return False

    return test


def compile_where(text: str, columns: list[str]) -> Callable[[list], bool]:
    """A predicate over rows (lists in ``columns`` order) from a ``--where`` expression.
    Raises QueryError saying what is wrong and where."""
    return _Parser(text, list(columns)).parse()


def _column(columns: list[str], name: str, what: str) -> int:
    if name not in columns:
        raise QueryError(f"{what}: no column {name!r}; the columns: {', '.join(columns)}")
    return columns.index(name)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def group_rows(columns: list[str], rows: list[list], by: str) -> tuple[list[str], list[list]]:
    """One row per value of column ``by`` (in first-seen order): the value, ``count``, and
    ``mean(<col>)`` of each column that holds numbers (None values skipped)."""
    j = _column(columns, by, "--group-by")
    numeric = [
        i
        for i in range(len(columns))
        if i != j and any(_is_number(r[i]) for r in rows) and all(r[i] is None or _is_number(r[i]) for r in rows)
    ]
    groups: dict = {}
    for r in rows:
        key = r[j]
        try:
            hash(key)
        except TypeError:
            key = repr(key)
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        line = [key, len(members)]
        for i in numeric:
            vals = [r[i] for r in members if r[i] is not None]
            line.append(math.fsum(vals) / len(vals) if vals else None)
        out.append(line)
    return [by, "count", *(f"mean({columns[i]})" for i in numeric)], out


def sort_rows(columns: list[str], rows: list[list], by: str, descending: bool = False) -> list[list]:
    """Rows sorted by column ``by``: numbers before text before other values, None last
    (in either direction); stable."""
    j = _column(columns, by, "--sort")

    def key(r):
        v = r[j]
        if _is_number(v):
            return (0, v if v == v else math.inf, "")
        if isinstance(v, bool):
            return (0, int(v), "")
        if isinstance(v, str):
            return (1, 0, v)
        return (2, 0, repr(v))

    present = [r for r in rows if r[j] is not None]
    missing = [r for r in rows if r[j] is None]
    return sorted(present, key=key, reverse=descending) + missing


def query(
    columns: list[str],
    rows: list[list],
    *,
    where: Optional[str] = None,
    group_by: Optional[str] = None,
    sort: Optional[str] = None,
    descending: bool = False,
    limit: Optional[int] = None,
):
    """``(columns, rows)`` after filtering, grouping, sorting and limiting, in that order."""
    columns = list(columns)
    if where:
        test = compile_where(where, columns)
        rows = [r for r in rows if test(r)]
    if group_by:
        columns, rows = group_rows(columns, rows, group_by)
    if sort:
        rows = sort_rows(columns, rows, sort, descending)
    if limit is not None:
        if limit < 0:
            raise QueryError(f"--limit must be 0 or more, not {limit}")
        rows = rows[:limit]
    return columns, rows


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
            c for i, c in enumerate(columns) if rows and all(v is None or _is_number(v) for v in (r[i] for r in rows))
        }
        _table(list(columns), [[_cell(v) for v in r] for r in rows], file, title=title, right=right)


def _printable(v):
    if type(v).__name__ == "ndarray":
        return v.tolist()
    if hasattr(v, "to_json") and hasattr(v, "_type"):  # a data type: its description
        return repr(v)
    return v
