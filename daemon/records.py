"""What the daemon reads of a record before it decodes it: the ``(writer, seq)`` a LOG or EVENT
record carries, and the error a client's unacceptable record raises."""

from __future__ import annotations

import msgspec

from trackside._native.constants import RECORD_EVENT, RECORD_LOG
from trackside.contracts.protocol import event_decoder


class BadRecord(ValueError):
    """A client sent a record the daemon will not store; its connection is closed."""


def read_writer_seq(body) -> tuple[int, int]:
    """``(writer, seq)`` from the start of a LOG body without decoding the entries."""
    out = []
    pos = 0
    for _ in range(2):
        n = shift = 0
        while True:
            if pos >= len(body) or shift > 63:
                raise BadRecord("LOG body too short for its writer and seq")
            b = body[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        out.append(n)
    return out[0], out[1]


def record_writer_seq(rtype: int, body) -> tuple[int, int]:
    """``(writer, seq)`` of a LOG or EVENT record's body; BadRecord for anything else."""
    if rtype == RECORD_LOG:
        return read_writer_seq(body)
    if rtype != RECORD_EVENT:
        raise BadRecord(f"record type {rtype} is not a LOG or EVENT record")
    try:
        ev = event_decoder.decode(body)
    except msgspec.DecodeError as e:
        raise BadRecord(f"malformed event: {e}") from None
    return ev.writer, ev.seq
