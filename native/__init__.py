"""trackside's hot path: WAL framing and the log-entry codec.

Two implementations share one API: the Cython extension ``_codec`` and the pure-Python twin
``_twin``. The extension is picked when it imports; ``TRACKSIDE_NO_EXTENSIONS=1`` forces the
twin. ``IMPLEMENTATION`` says which one runs ("cython" or "python").
"""

import os as _os

_API = (
    "IMPLEMENTATION",
    "crc32",
    "frame",
    "encode_batch",
    "BatchEncoder",
    "decode_batch",
    "decode_columns",
    "parse_record",
    "split_rows",
    "PendingRow",
    "merge_entries",
    "pop_rows",
)

from . import constants
from .errors import CodecError, RecordTooLarge

if _os.environ.get("TRACKSIDE_NO_EXTENSIONS", "") not in ("", "0"):
    from . import _twin as _impl
else:
    try:
        from . import _codec as _impl
    except ImportError:  # not compiled (a source checkout without a build): the twin runs
        from . import _twin as _impl
    else:
        if not all(hasattr(_impl, name) for name in _API):  # a stale build of older sources
            from . import _twin as _impl

IMPLEMENTATION: str = _impl.IMPLEMENTATION
crc32 = _impl.crc32
frame = _impl.frame
encode_batch = _impl.encode_batch
BatchEncoder = _impl.BatchEncoder
decode_batch = _impl.decode_batch
decode_columns = _impl.decode_columns
parse_record = _impl.parse_record
split_rows = _impl.split_rows
PendingRow = _impl.PendingRow
merge_entries = _impl.merge_entries
pop_rows = _impl.pop_rows

__all__ = [
    "IMPLEMENTATION",
    "BatchEncoder",
    "PendingRow",
    "CodecError",
    "RecordTooLarge",
    "constants",
    "crc32",
    "decode_batch",
    "decode_columns",
    "encode_batch",
    "frame",
    "merge_entries",
    "parse_record",
    "pop_rows",
    "split_rows",
]
