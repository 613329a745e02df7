"""Run queries: the index of config and summary values, and the compiler from W&B-style filters
(MongoDB operators) and orders to SQL, for SQLite and PostgreSQL alike.

The index, ``run_values``: one row per (run, source, key) for every value of a run's config
(``source = 'config'``), summary (``'summary'``) and tag (``'tags'``, the key is the tag). Nested
dicts are flattened with dots (``config.optimizer.lr``): a dict is a row of its own without a
value (so ``$exists`` finds it) and each of its items another. A number (a bool as 1 or 0) is
in ``num``, a string in ``text``; other values (None, lists, logged forms) are rows without
either. The store's writer rewrites a run's rows of a source in the transaction that changes
it (``index_values``), so a filter or a sort reads the index (on ``(source, key, num)`` and
``(source, key, text)``) instead of every run's JSON. A store opened by a writer before the
index existed is indexed once then (``index_all``).

The compiler (``compile_query``) takes what ``Api.runs`` takes:

- ``filters``: a dict of ``field: value`` (equality) or ``field: {"$op": value, ...}`` (all of
  them), ANDed; ``$and``, ``$or``, ``$nor`` take lists of such dicts, ``$not`` a dict of
  operators. Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $regex`` (with ``$options: "i"``)
  ``$exists``, and ``$all`` for tags. As in MongoDB, ``$ne`` and ``$nin`` match a run without
  the key, and ``{"config.x": None}`` matches a run whose ``x`` is null or missing. A number
  compares with numbers, a string with strings (a key holding a string never matches
  ``$gt: 1``).
- fields: ``config.<key>``, ``summary.<key>`` (or ``summary_metrics.<key>``, W&B's name),
  ``tags`` (a tag equals, ``$in``, ``$nin``, ``$all``, ``$regex``), and the run's own columns:
  ``id`` (or ``run_id``), ``name`` (the display name; ``display_name``, ``displayName``),
  ``project``, ``group``, ``job_type`` (``jobType``), ``state``, ``notes``, ``exit_code``,
  ``history_rows``, ``last_step``, ``created_at`` (``createdAt``), ``updated_at``,
  ``finished_at``: times take seconds since the epoch, a ``datetime`` or an ISO-8601 string.
- ``order``: one field, ``-`` for descending, ``+`` or nothing for ascending
  (``"-summary.loss"``, ``"+created_at"``); runs without the value come last either way, then
  numbers before strings; ties go by the run's row id in the same direction.

Anything else raises ValueError naming the field or operator.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any, Iterable, Mapping, Optional

__all__ = ["VALUES_SCHEMA", "compile_query", "flatten", "index_all", "index_values", "regexp"]

VALUES_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_values (
    rid     INTEGER NOT NULL,
    source  TEXT NOT NULL,
    key     TEXT NOT NULL,
    num     REAL,
    text    TEXT,
    PRIMARY KEY (rid, source, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS run_values_num ON run_values (source, key, num, rid);
CREATE INDEX IF NOT EXISTS run_values_text ON run_values (source, key, text, rid)
"""

SOURCES = ("config", "summary", "tags")
MAX_DEPTH = 8  # nested dicts indexed this deep
MAX_VALUES = 10_000  # rows per run and source: a summary of thousands of keys is indexed up to here
_TEXT_INDEXED = 1024  # characters of a string value kept in the index (longer ones compare by their start)

# run columns a filter or an order may name -> (column, kind); kind "time" takes datetimes too
COLUMNS = {
    "id": ("run_id", "text"),
    "run_id": ("run_id", "text"),
    "name": ("name", "text"),
    "display_name": ("name", "text"),
    "displayName": ("name", "text"),
    "project": ("project", "text"),
    "group": ("group_name", "text"),
    "job_type": ("job_type", "text"),
    "jobType": ("job_type", "text"),
    "state": ("state", "text"),
    "notes": ("notes", "text"),
    "exit_code": ("exit_code", "num"),
    "history_rows": ("history_rows", "num"),
    "last_step": ("last_step", "num"),
    "created_at": ("created_at", "time"),
    "createdAt": ("created_at", "time"),
    "updated_at": ("updated_at", "time"),
    "updatedAt": ("updated_at", "time"),
    "finished_at": ("finished_at", "time"),
}
_NOT_NULL = ("run_id", "project", "state", "created_at", "updated_at", "history_rows")
_PREFIXES = {"config": "config", "summary": "summary", "summary_metrics": "summary"}
_COMPARE = {"$eq": "=", "$ne": "<>", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_OPERATORS = (*_COMPARE, "$in", "$nin", "$regex", "$options", "$exists", "$not", "$all")


# -- the index ---------------------------------------------------------------------------------------


def flatten(obj: Mapping, prefix: str = "", depth: int = 0, out: Optional[list] = None) -> list:
    """``[(key, num, text), ...]`` of a config or summary dict, nested keys joined by dots."""
    if out is None:
        out = []
    for k, v in obj.items():
        if len(out) >= MAX_VALUES:
            break
        key = f"{prefix}{k}"
        t = type(v)
        if t is bool:
            out.append((key, 1.0 if v else 0.0, None))
        elif t is int or t is float or isinstance(v, (int, float)):
            try:
                num = float(v)
            except OverflowError:  # an int beyond a double: ordered as the largest double
                num = math.copysign(math.inf, v)
            out.append((key, None if num != num else num, None))  # NaN: no value (SQLite stores it so)
        elif isinstance(v, str):
            out.append((key, None, v[:_TEXT_INDEXED]))
        else:
            out.append((key, None, None))
            # a logged form (an image, a histogram ...) is one value, not a dict of settings
            if isinstance(v, Mapping) and "_type" not in v and depth < MAX_DEPTH:
                flatten(v, f"{key}.", depth + 1, out)
    return out


def index_values(conn, rid: int, source: str, obj) -> None:
    """Rewrite the index rows of one run's ``source`` (``"config"``, ``"summary"``: a dict;
    ``"tags"``: a list of tags) inside the caller's transaction."""
    conn.execute("DELETE FROM run_values WHERE rid = ? AND source = ?", (rid, source))
    if source == "tags":
        rows = [(rid, source, str(tag), None, str(tag)) for tag in dict.fromkeys(obj or ())]
    else:
        rows = [(rid, source, key, num, text) for key, num, text in flatten(obj or {})]
    if rows:
        conn.executemany(
            "INSERT INTO run_values (rid, source, key, num, text) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows,
        )


def index_all(conn, loads) -> None:
    """Index every run of the store (inside the caller's transaction); ``loads`` parses the
    runs' JSON columns."""
    for rid, config, summary, tags in conn.execute("SELECT rid, config, summary, tags FROM runs").fetchall():
        for source, raw in (("config", config), ("summary", summary), ("tags", tags)):
            try:
                value = loads(raw) if raw else None
            except ValueError:
                continue
            index_values(conn, rid, source, value)


def regexp(pattern: str, value) -> bool:
    """SQLite's ``ts_regexp(pattern, value)`` (a reader registers it): Python's ``re.search``."""
    return value is not None and _regex(pattern).search(str(value)) is not None


_REGEX_CACHE: dict = {}


def _regex(pattern: str):
    r = _REGEX_CACHE.get(pattern)
    if r is None:
        if len(_REGEX_CACHE) > 256:
            _REGEX_CACHE.clear()
        r = _REGEX_CACHE[pattern] = re.compile(pattern)
    return r


# -- the compiler ------------------------------------------------------------------------------------


class Query:
    """A compiled query: ``where`` (a condition on the runs table, aliased ``r``), ``join`` and
    ``order`` (the ORDER BY list), each with its parameters."""

    __slots__ = ("where", "params", "join", "join_params", "order")

    def __init__(self, where: str, params: list, join: str, join_params: list, order: str):
        self.where, self.params, self.join, self.join_params, self.order = where, params, join, join_params, order


def compile_query(
    filters: Optional[Mapping] = None,
    order: Optional[str] = None,
    *,
    project: Optional[str] = None,
    dialect: str = "sqlite",
) -> Query:
    """Compile ``filters`` and ``order`` (see the module docstring) for ``dialect``
    (``"sqlite"`` or ``"postgresql"``). Raises ValueError naming what it does not take."""
    c = _Compiler(dialect)
    conds = []
    if project:
        conds.append("r.project = ?")
        c.params.append(project)
    if filters is not None:
        if not isinstance(filters, Mapping):
            raise ValueError(f"filters must be a dict (MongoDB style), not {type(filters).__name__}")
        cond = c.document(filters)
        if cond != "1 = 1":
            conds.append(cond)
    join, join_params, order_sql = _order(order)
    return Query(" AND ".join(conds) if conds else "1 = 1", c.params, join, join_params, order_sql)


def _order(order: Optional[str]) -> tuple[str, list, str]:
    if order is None or order == "":
        order = "-created_at"
    if not isinstance(order, str):
        raise ValueError(f"order must be a string such as '-created_at' or '+summary.loss', not {order!r}")
    desc = order.startswith("-")
    field = order[1:] if order[:1] in "+-" else order
    direction = "DESC" if desc else "ASC"
    source, key = _value_field(field)
    if source is not None:
        join = "LEFT JOIN run_values o ON o.rid = r.rid AND o.source = ? AND o.key = ?"
        return (
            join,
            [source, key],
            f"(o.num IS NULL AND o.text IS NULL), (o.num IS NULL), o.num {direction}, o.text {direction},"
            f" r.rid {direction}",
        )
    column = COLUMNS.get(field)
    if column is None or field == "tags":
        raise ValueError(f"cannot order runs by {field!r}: {_fields_hint()}")
    col = f"r.{column[0]}"
    if column[0] in _NOT_NULL:  # no NULLs to put last: an index on the column can serve the order
        return "", [], f"{col} {direction}, r.rid {direction}"
    return "", [], f"({col} IS NULL), {col} {direction}, r.rid {direction}"


def _fields_hint() -> str:
    return "use config.<key>, summary.<key>, tags or one of " + ", ".join(sorted(set(COLUMNS)))


def _value_field(field: str) -> tuple[Optional[str], str]:
    """``("config" | "summary", key)`` for a field naming a config or summary value, else ``(None, field)``."""
    head, dot, rest = field.partition(".")
    if dot and head in _PREFIXES:
        if not rest:
            raise ValueError(f"filter field {field!r} names no key: use {head}.<key>")
        return _PREFIXES[head], rest
    return None, field


class _Compiler:
    def __init__(self, dialect: str):
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unknown SQL dialect {dialect!r}")
        self.dialect = dialect
        self.params: list = []

    # a document: {field: spec, "$and": [...], ...}
    def document(self, doc) -> str:
        if not isinstance(doc, Mapping):
            raise ValueError(f"a filter must be a dict, not {type(doc).__name__}: {doc!r}")
        conds = []
        for field, spec in doc.items():
            if not isinstance(field, str):
                raise ValueError(f"filter field {field!r} is not a string")
            if field in ("$and", "$or", "$nor"):
                if not isinstance(spec, (list, tuple)) or not spec:
                    raise ValueError(f"{field} takes a non-empty list of filters, not {spec!r}")
                parts = [self.document(d) for d in spec]
                if field == "$and":
                    conds.append("(" + " AND ".join(parts) + ")")
                elif field == "$or":
                    conds.append("(" + " OR ".join(parts) + ")")
                else:
                    conds.append("NOT (" + " OR ".join(parts) + ")")
            elif field.startswith("$"):
                raise ValueError(f"unknown top-level filter operator {field!r}: use $and, $or, $nor or a field")
            else:
                conds.append(self.field(field, spec))
        return " AND ".join(conds) if conds else "1 = 1"

    def field(self, field: str, spec) -> str:
        ops = _operators(field, spec)
        source, key = _value_field(field)
        if source is not None:
            return self._all(self._value(source, key, field, op, v, ops) for op, v in ops.items() if op != "$options")
        if field == "tags":
            return self._all(self._tags(op, v, ops) for op, v in ops.items() if op != "$options")
        column = COLUMNS.get(field)
        if column is None:
            raise ValueError(f"unknown filter field {field!r}: {_fields_hint()}")
        return self._all(
            self._column(f"r.{column[0]}", column[1], field, op, v, ops) for op, v in ops.items() if op != "$options"
        )

    def _all(self, conds: Iterable[str]) -> str:
        conds = list(conds)
        return conds[0] if len(conds) == 1 else "(" + " AND ".join(conds) + ")"

    # -- a column of runs
    def _column(self, col: str, kind: str, field: str, op: str, v, ops: Mapping) -> str:
        if op == "$not":
            inner = _operators(field, v)
            conds = (self._column(col, kind, field, o, x, inner) for o, x in inner.items() if o != "$options")
            # a missing value makes the inner condition NULL: $not matches it, as in MongoDB
            return f"NOT coalesce({self._all(conds)}, {'false' if self.dialect == 'postgresql' else '0'})"
        if op == "$exists":
            return f"{col} IS {'NOT ' if _flag(v, field) else ''}NULL"
        if op == "$regex":
            return self._regex(col, field, v, ops)
        if op == "$all":
            raise ValueError(f"$all applies to tags, not to {field!r}")
        if op in ("$in", "$nin"):
            values = [self._scalar(kind, field, op, x) for x in _list(field, op, v)]
            if not values:
                return "1 = 0" if op == "$in" else "1 = 1"
            self.params.extend(values)
            marks = ", ".join("?" * len(values))
            return f"{col} IN ({marks})" if op == "$in" else f"({col} IS NULL OR {col} NOT IN ({marks}))"
        if v is None:
            if op == "$eq":
                return f"{col} IS NULL"
            if op == "$ne":
                return f"{col} IS NOT NULL"
            raise ValueError(f"{op} on {field!r} needs a value, not None")
        self.params.append(self._scalar(kind, field, op, v))
        if op == "$ne":
            return f"({col} IS NULL OR {col} <> ?)"
        return f"{col} {_COMPARE[op]} ?"

    def _scalar(self, kind: str, field: str, op: str, v):
        if kind == "time":
            return _seconds(field, op, v)
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError(f"{op} on {field!r} takes a string or a number, not {v!r}")
        if kind == "num" and isinstance(v, str):
            raise ValueError(f"{op} on {field!r} takes a number, not {v!r}")
        return v

    def _regex(self, col: str, field: str, v, ops: Mapping) -> str:
        if not isinstance(v, str):
            raise ValueError(f"$regex on {field!r} takes a pattern string, not {v!r}")
        options = ops.get("$options", "")
        if not isinstance(options, str) or set(options) - {"i"}:
            raise ValueError(f"$options on {field!r}: only 'i' (ignore case) is supported, not {options!r}")
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"$regex on {field!r}: bad pattern {v!r}: {e}") from None
        if "i" in options:
            v = "(?i)" + v if self.dialect == "sqlite" else v
        self.params.append(v)
        if self.dialect == "sqlite":
            return f"ts_regexp(?, {col})"
        return f"{col} {'~*' if 'i' in options else '~'} ?"

    # -- a config or summary value, through the index
    def _value(self, source: str, key: str, field: str, op: str, v, ops: Mapping) -> str:
        def having(cond: str, params: list) -> str:
            self.params.extend([source, key, *params])
            return f"r.rid IN (SELECT rid FROM run_values WHERE source = ? AND key = ?{' AND ' + cond if cond else ''})"

        def lacking(cond: str, params: list) -> str:
            return "NOT " + having(cond, params)

        if op == "$not":
            inner = _operators(field, v)
            cond = self._all(self._value(source, key, field, o, x, inner) for o, x in inner.items() if o != "$options")
            return f"NOT ({cond})"
        if op == "$exists":
            return having("", []) if _flag(v, field) else lacking("", [])
        if op == "$all":
            raise ValueError(f"$all applies to tags, not to {field!r}")
        if op == "$regex":
            cond = self._regex_cond(field, v, ops)
            return having(cond[0], cond[1])
        if op in ("$in", "$nin"):
            values = _list(field, op, v)
            cond, params = self._in_cond(field, op, values)
            if op == "$in":
                return having(cond, params) if cond else "1 = 0"
            return lacking(cond, params) if cond else "1 = 1"
        if v is None:
            # MongoDB: null matches a null or missing value; $ne null, a value that is there and not null
            if op == "$eq":
                return lacking("(num IS NOT NULL OR text IS NOT NULL)", [])
            if op == "$ne":
                return having("(num IS NOT NULL OR text IS NOT NULL)", [])
            raise ValueError(f"{op} on {field!r} needs a value, not None")
        column, value = _typed(field, op, v)
        if op == "$ne":
            return lacking(f"{column} = ?", [value])
        return having(f"{column} {_COMPARE[op]} ?", [value])

    def _in_cond(self, field: str, op: str, values: list) -> tuple[str, list]:
        nums, texts = [], []
        for x in values:
            column, value = _typed(field, op, x)
            (nums if column == "num" else texts).append(value)
        parts, params = [], []
        if nums:
            parts.append(f"num IN ({', '.join('?' * len(nums))})")
            params += nums
        if texts:
            parts.append(f"text IN ({', '.join('?' * len(texts))})")
            params += texts
        return ("(" + " OR ".join(parts) + ")" if parts else ""), params

    def _regex_cond(self, field: str, v, ops: Mapping) -> tuple[str, list]:
        mark = len(self.params)
        cond = self._regex("text", field, v, ops)
        params = self.params[mark:]
        del self.params[mark:]
        return cond, params

    # -- tags, through the index (the key is the tag)
    def _tags(self, op: str, v, ops: Mapping) -> str:
        def having(cond: str, params: list) -> str:
            self.params.extend(["tags", *params])
            return f"r.rid IN (SELECT rid FROM run_values WHERE source = ? AND {cond})"

        if op == "$not":
            inner = _operators("tags", v)
            return "NOT (" + self._all(self._tags(o, x, inner) for o, x in inner.items() if o != "$options") + ")"
        if op == "$regex":
            cond, params = self._regex_cond("tags", v, ops)
            return having(cond, params)
        if op in ("$in", "$nin", "$all"):
            tags = [_tag(op, x) for x in _list("tags", op, v)]
            if not tags:
                return "1 = 0" if op == "$in" else "1 = 1"
            if op == "$all":
                return self._all(having("key = ?", [t]) for t in tags)
            cond = having(f"key IN ({', '.join('?' * len(tags))})", tags)
            return cond if op == "$in" else "NOT " + cond
        if op == "$exists":
            return having("1 = 1", []) if _flag(v, "tags") else "NOT " + having("1 = 1", [])
        if op == "$eq":
            return having("key = ?", [_tag(op, v)])
        if op == "$ne":
            return "NOT " + having("key = ?", [_tag(op, v)])
        raise ValueError(f"tags take a tag, $in, $nin, $all, $ne, $regex or $exists, not {op}")


def _operators(field: str, spec) -> dict:
    """The operators of a field's spec: a plain value is ``{"$eq": value}``."""
    if isinstance(spec, Mapping) and spec and all(isinstance(k, str) and k.startswith("$") for k in spec):
        for op in spec:
            if op not in _OPERATORS:
                raise ValueError(f"unknown filter operator {op!r} on {field!r}: use one of {', '.join(_OPERATORS)}")
        if "$options" in spec and "$regex" not in spec:
            raise ValueError(f"$options on {field!r} goes with $regex")
        return dict(spec)
    if isinstance(spec, Mapping):
        raise ValueError(
            f"filter on {field!r}: a dict value must hold operators ($gt, $in ...); name nested keys "
            f"with dots ({field}.<key>) instead"
        )
    return {"$eq": spec}


def _list(field: str, op: str, v) -> list:
    if not isinstance(v, (list, tuple, set, frozenset)):
        raise ValueError(f"{op} on {field!r} takes a list, not {v!r}")
    return list(v)


def _flag(v, field: str) -> bool:
    if not isinstance(v, (bool, int)):
        raise ValueError(f"$exists on {field!r} takes true or false, not {v!r}")
    return bool(v)


def _tag(op: str, v) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{op} on tags takes tags (strings), not {v!r}")
    return v


def _typed(field: str, op: str, v) -> tuple[str, Any]:
    """The index column a value compares with, and the value as stored there."""
    if isinstance(v, bool):
        return "num", 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        if v != v:
            raise ValueError(f"{op} on {field!r}: NaN equals nothing; use $exists or None")
        return "num", float(v)
    if isinstance(v, str):
        return "text", v[:_TEXT_INDEXED]
    raise ValueError(f"{op} on {field!r} takes a number, a string, a bool or None, not {v!r}")


def _seconds(field: str, op: str, v) -> float:
    """A time filter's value as seconds since the epoch: a number, a datetime or an ISO string."""
    if isinstance(v, bool):
        raise ValueError(f"{op} on {field!r} takes a time, not {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            v = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{op} on {field!r}: {v!r} is not an ISO-8601 time (e.g. 2024-05-01T12:00:00Z)") from None
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:  # W&B's times are UTC
            v = v.replace(tzinfo=datetime.timezone.utc)
        return v.timestamp()
    if isinstance(v, datetime.date):
        return datetime.datetime(v.year, v.month, v.day, tzinfo=datetime.timezone.utc).timestamp()
    raise ValueError(f"{op} on {field!r} takes seconds since the epoch, a datetime or an ISO string, not {v!r}")
