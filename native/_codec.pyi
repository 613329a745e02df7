"""Type stubs of the Cython codec; the pure-Python twin ``_twin`` has the same API."""

from array import array
from collections.abc import Iterable
from typing import Any, Final, Optional, Tuple, Union

_Bytes = Union[bytes, bytearray, memoryview]
_Scalar = Union[int, float, bool, str, None]
# (step, commit, time_us, values, payload); the payload may be left out
_Entry = Union[
    Tuple[Optional[int], Optional[bool], int, dict[str, _Scalar], Optional[_Bytes]],
    Tuple[Optional[int], Optional[bool], int, dict[str, _Scalar]],
]
_Decoded = Tuple[Optional[int], Optional[bool], int, dict[str, _Scalar], Optional[bytes]]

IMPLEMENTATION: Final[str]

def crc32(data: _Bytes, value: int = 0) -> int: ...
def frame(rtype: int, body: _Bytes, flags: int = 0) -> bytes: ...
def encode_batch(writer: int, seq: int, entries: Iterable[_Entry]) -> bytes: ...
def decode_batch(body: _Bytes) -> tuple[int, int, list[_Decoded]]: ...

# (steps, times, keys, columns, commit): a run of entries with the same keys, as columns
_Block = Tuple["array[int]", "array[int]", Tuple[str, ...], list["array[Any]"], bool]

def decode_columns(body: _Bytes) -> Optional[tuple[int, int, list[_Block]]]: ...
def parse_record(buf: _Bytes, pos: int = 0, end: int = -1) -> tuple[int, int, int, int]: ...

class BatchEncoder:
    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def add(
        self,
        step: Optional[int],
        commit: Optional[bool],
        time_us: int,
        values: dict[str, _Scalar],
        payload: Optional[_Bytes] = None,
    ) -> int: ...
    def take(self, writer: int, seq: int) -> bytes: ...

def split_rows(rows, last, keep=()) -> tuple: ...

class PendingRow:
    time_us: int
    values: dict
    payloads: list
    touched: Optional[float]
    writer: Optional[int]
    by_writer: Optional[dict]
    amend: bool
    def __init__(self, time_us: int, values: dict, payloads: list, touched, writer, amend: bool) -> None: ...

def merge_entries(
    pending: dict,
    heap: list,
    entries,
    start: int,
    writer,
    now,
    emitted_max,
    drop_late: bool,
    cur_step,
    cur_commit,
    no_payloads: list,
) -> tuple: ...
def pop_rows(pending: dict, heap: list, limit, row_type) -> tuple[list, int, int]: ...
