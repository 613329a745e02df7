"""The write-ahead log: every record the daemon receives is appended here before anything else.

A WAL is a directory of segment files in the format of ``native/FORMAT.md``. One process writes
(``WAL``, which holds a lock on the directory); any number read (``read_records``,
``read_record``, ``verify``), also while it writes.

Contracts:

- ``WAL.append`` buffers a framed record in memory and returns its end offset; nothing is on
  disk yet.
- ``WAL.commit`` returns once everything appended up to an offset is durable at the WAL's level:
  ``"fsync"`` (written and fdatasync'ed), ``"flush"`` (written to the OS: survives a crash of the
  process, not of the machine) or ``"none"`` (returns at once: the buffer is written when it
  passes 1 MiB and on close, and a crash loses what is still buffered). Concurrent commits share
  one write and one fsync (group commit).
- Damage is reported to a callback ``reporter(path, offset, nbytes, reason)`` and skipped, never
  raised. Only a bad segment header raises (``WALFormatError``): that is the wrong file or an
  unknown version, not damage.
"""

from .format import (
    Record,
    RecordTooLarge,
    Recovery,
    Reporter,
    Verification,
    WALError,
    WALFormatError,
    WALStats,
)
from .reader import read_record, read_records, verify
from .writer import WAL

__all__ = [
    "WAL",
    "Record",
    "Recovery",
    "RecordTooLarge",
    "Reporter",
    "Verification",
    "WALError",
    "WALFormatError",
    "WALStats",
    "read_record",
    "read_records",
    "verify",
]
