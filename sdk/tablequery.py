"""Filter, group and sort a table's rows: what ``trackside table`` does with ``--where``,
``--group-by``, ``--sort`` and ``--limit``, and the tables of ``trackside ui``.

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

import math
import operator
import re
from typing import Any, Callable, Optional


__all__ = ["Builder", "QueryError", "compile_where", "group_rows", "is_number", "parse_where", "query", "sort_rows"]


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
    def __init__(self, text: str, build: "Builder"):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.build = build

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
        return parts[0] if len(parts) == 1 else self.build.any_of(parts)

    def conj(self):
        parts = [self.atom()]
        while self.is_word("and"):
            self.i += 1
            parts.append(self.atom())
        return parts[0] if len(parts) == 1 else self.build.all_of(parts)

    def atom(self):
        if self.is_word("not"):
            self.i += 1
            return self.build.negate(self.atom())
        kind, value, pos = self.take()
        if kind == "paren" and value == "(":
            node = self.expr()
            close = self.take()
            if close[:2] != ("paren", ")"):
                raise QueryError(f"expected ')' at position {close[2]}, found {close[1]!r}")
            return node
        if kind not in ("word", "col", "str"):
            raise QueryError(f"expected a column name at position {pos}, found {value!r}")
        column = value
        self.build.column(column, pos)  # an unknown column is named before anything after it
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
        return self.build.condition(column, pos, op, _literal(vkind, raw))


class Builder:
    """What ``parse_where`` makes of an expression's parts; subclasses build predicates,
    database filters ... ``condition`` gets the column, its position in the text (for
    messages), the operator (``==`` ``=`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` ``contains``
    ``startswith``) and the value (int, float, str, bool or None)."""

    def column(self, column: str, pos: int) -> None:
        """Check a column as soon as it is read (raise QueryError for one that does not exist)."""

    def condition(self, column: str, pos: int, op: str, value):
        raise NotImplementedError

    def any_of(self, parts: list):
        raise NotImplementedError

    def all_of(self, parts: list):
        raise NotImplementedError

    def negate(self, part):
        raise NotImplementedError


def parse_where(text: str, build: Builder):
    """Parse a ``--where`` expression, building its parts with ``build``. Raises QueryError
    saying what is wrong and where."""
    return _Parser(text, build).parse()


class _Predicate(Builder):
    """Predicates over rows given as lists in ``columns`` order."""

    def __init__(self, columns: list[str]):
        self.columns = columns

    def column(self, column, pos):
        if column not in self.columns:
            raise QueryError(f"no column {column!r} (position {pos}); the columns: {', '.join(self.columns)}")

    def condition(self, column, pos, op, value):
        return _condition(self.columns.index(column), op, value)

    def any_of(self, parts):
        return lambda row: any(p(row) for p in parts)

    def all_of(self, parts):
        return lambda row: all(p(row) for p in parts)

    def negate(self, part):
        return lambda row: not part(row)


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
    return parse_where(text, _Predicate(list(columns)))


def _column(columns: list[str], name: str, what: str) -> int:
    if name not in columns:
        raise QueryError(f"{what}: no column {name!r}; the columns: {', '.join(columns)}")
    return columns.index(name)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def group_rows(columns: list[str], rows: list[list], by: str) -> tuple[list[str], list[list]]:
    """One row per value of column ``by`` (in first-seen order): the value, ``count``, and
    ``mean(<col>)`` of each column that holds numbers (None values skipped)."""
    j = _column(columns, by, "--group-by")
    numeric = [
        i
        for i in range(len(columns))
        if i != j and any(is_number(r[i]) for r in rows) and all(r[i] is None or is_number(r[i]) for r in rows)
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
        if is_number(v):
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
