"""The rows file of a logged table (``trackside-table``, msgpack): what the SDK writes and
reads back as a ``Table``, and what the uploader reads to find the files a table's cells name.

A document ``{"format": "trackside-table", "version": 1, "columns": [...], "types": [...],
"data": [column values ...], "nrows": N}``; a column's type is one of ``BUILTIN_KINDS``
(plain values), a data type's name (its cells are logged forms naming files), or None.
"""

from __future__ import annotations

import msgspec

from .files import load_file

FORMAT = "trackside-table"
FORMAT_VERSION = 1
# the kinds of plain-value columns; "mixed" holds plain values of several kinds
BUILTIN_KINDS = frozenset({"number", "string", "bool", "list", "dict", "bytes", "mixed"})

_decode = msgspec.msgpack.Decoder().decode


def read_columns(obj: dict, source: str) -> tuple[list, list, list, int]:
    """``(columns, types, column values, nrows)`` as stored: data-type cells as their logged form."""
    blob = load_file(obj, source)  # checked against its SHA-256
    try:
        doc = _decode(blob)
        if doc.get("format") != FORMAT:
            raise ValueError("not a trackside table file")
        if doc.get("version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"table format {doc['version']} is newer than this trackside reads "
                f"({FORMAT_VERSION}): upgrade trackside"
            )
        return list(doc["columns"]), list(doc["types"]), doc["data"], int(doc["nrows"])
    except (msgspec.DecodeError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"the table rows file {obj.get('path')} cannot be read: {e}") from None
