"""The runs table's filter and sort: the page's expressions (``config.lr > 0.01 and state ==
running``) as the MongoDB-style filters ``Api.runs(project, filters=..., order=...)`` takes.

The expression language is the table query's (``trackside.tablequery``): ``and``, ``or``,
``not``, parentheses, ``== != < <= > >= contains startswith``. A field is a run attribute
(``id``, ``name``, ``state``, ``group``, ``job_type``, ``tags``, ``created_at``, ``project``)
or ``config.<key>`` / ``summary.<key>`` (nested keys joined with dots).

Where the ``Api`` in hand does not take ``filters`` (a store reader that predates run
queries), ``select`` applies the same filter and order to its runs here.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Optional

from trackside.tablequery import Builder, QueryError, parse_where

__all__ = ["QueryError", "RUN_ATTRIBUTES", "field_value", "select", "to_filters"]

# the run attributes a filter or sort may name besides config.* and summary.*
RUN_ATTRIBUTES = ("id", "name", "state", "group", "job_type", "tags", "created_at", "project", "updated_at")

_NEGATED = {"==": "$ne", "=": "$ne", "!=": "$eq", "<": "$gte", "<=": "$gt", ">": "$lte", ">=": "$lt"}
_MONGO = {"==": "$eq", "=": "$eq", "!=": "$ne", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}


def _check_field(column: str, pos: int) -> str:
    if column in RUN_ATTRIBUTES or column.startswith(("config.", "summary.")):
        return column
    raise QueryError(
        f"no field {column!r} (position {pos}): use config.<key>, summary.<key> or one of {', '.join(RUN_ATTRIBUTES)}"
    )


class _Mongo(Builder):
    """Each part as a function of ``negated`` that returns its filter (``not`` is pushed down
    to the comparisons, as the filters have no ``$not``)."""

    def column(self, column, pos):
        _check_field(column, pos)

    def condition(self, column, pos, op, value):
        field = column

        def build(negated: bool) -> dict:
            if op in ("contains", "startswith"):
                if field == "tags":  # a list: membership
                    return {field: {"$nin" if negated else "$in": [value]}}
                if negated:
                    raise QueryError(f"'not ... {op}' is not supported on {field} (position {pos})")
                pattern = re.escape(str(value))
                return {field: {"$regex": "^" + pattern if op == "startswith" else pattern}}
            return {field: {(_NEGATED if negated else _MONGO)[op]: value}}

        return build

    def any_of(self, parts):
        return lambda negated: {"$and" if negated else "$or": [p(negated) for p in parts]}

    def all_of(self, parts):
        return lambda negated: {"$or" if negated else "$and": [p(negated) for p in parts]}

    def negate(self, part):
        return lambda negated: part(not negated)


def to_filters(text: Optional[str]) -> dict:
    """The filters of a page expression (``{}`` for none). Raises QueryError saying what is
    wrong and where."""
    if not text or not text.strip():
        return {}
    return parse_where(text, _Mongo())(False)


def _takes_filters(api) -> bool:
    try:
        params = inspect.signature(api.runs).parameters
    except (TypeError, ValueError):
        return False
    return "filters" in params and "order" in params


def select(api, project: Optional[str], filters: dict, order: Optional[str], per_page: int):
    """The runs of ``project`` matching ``filters`` in ``order`` (``"-summary.loss"``: a field,
    ``-`` for descending), as a sequence whose ``len`` is the count and whose slices are
    pages: the Api's own query where it takes one, else the same applied here."""
    if _takes_filters(api):
        return api.runs(project, filters=filters or None, order=order, per_page=per_page)
    runs = [r for r in api.runs(project) if matches(r, filters)]
    if order:
        field = order.lstrip("+-")
        present = [r for r in runs if _sortable(field_value(r, field)) is not None]
        missing = [r for r in runs if _sortable(field_value(r, field)) is None]
        present.sort(key=lambda r: _sortable(field_value(r, field)), reverse=order.startswith("-"))
        runs = present + missing
    return runs


def field_value(run, field: str) -> Any:
    """The value of a field (``config.lr``, ``summary.val/acc``, ``state`` ...) of a run, None
    when it has none. A nested key is reached by its dotted path when the whole name is not
    itself a key."""
    if field.startswith(("config.", "summary.")):
        part, key = field.split(".", 1)
        doc = run.config if part == "config" else run.summary
        return _lookup(doc, key)
    if field == "duration":
        return run.runtime
    return getattr(run, field, None)


def _lookup(doc: Any, key: str) -> Any:
    if not isinstance(doc, dict):
        return None
    if key in doc:
        return doc[key]
    head, dot, rest = key.partition(".")
    while dot:
        if head in doc:
            found = _lookup(doc[head], rest)
            if found is not None:
                return found
        more, dot, rest = rest.partition(".")
        head = f"{head}.{more}"
    return None


def _sortable(v):
    if isinstance(v, bool):
        return (0, float(v), "")
    if isinstance(v, (int, float)):
        return None if isinstance(v, float) and math.isnan(v) else (0, float(v), "")
    if isinstance(v, str):
        return (1, 0.0, v)
    return None


def matches(run, filters: dict) -> bool:
    """Whether a run passes ``filters`` (the operators ``to_filters`` makes)."""
    for field, cond in filters.items():
        if field == "$and":
            if not all(matches(run, f) for f in cond):
                return False
            continue
        if field == "$or":
            if not any(matches(run, f) for f in cond):
                return False
            continue
        value = field_value(run, field)
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        for op, want in ops.items():
            if not _test(op, value, want):
                return False
    return True


def _test(op: str, value, want) -> bool:
    if op == "$eq":
        return value == want or (isinstance(value, list) and want in value)
    if op == "$ne":
        return not _test("$eq", value, want)
    if op in ("$in", "$nin"):
        found = any(_test("$eq", value, w) for w in want)
        return found if op == "$in" else not found
    if op == "$regex":
        return isinstance(value, str) and re.search(want, value) is not None
    if value is None or want is None or isinstance(value, bool) != isinstance(want, bool):
        return False
    try:
        return {"$gt": value > want, "$gte": value >= want, "$lt": value < want, "$lte": value <= want}[op]
    except TypeError:  # no order between these values
        return False
