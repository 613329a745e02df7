"""The Unix-socket protocol between training processes and the daemon.

A connection carries frames: a 4-byte little-endian length, then one msgpack message (a tagged
msgspec Struct below). A writer opens with ``Hello``; the daemon answers ``Welcome`` (or
``Refused`` and closes). Then the writer sends ``Batch`` frames, each one framed WAL record
(native/FORMAT.md) with its sequence number, and the daemon answers ``Ack`` once the batches
up to that number are durable. A bad frame closes only that connection, with a ``Refused``
that says why. The gRPC service in proto/trackside/v1 carries the same messages.
"""

from __future__ import annotations

import struct

import msgspec

PROTOCOL_VERSION = 1
MAX_FRAME = (64 << 20) + 4096  # the WAL's record limit plus room for the message around it
LENGTH = struct.Struct("<I")


class Hello(msgspec.Struct, tag="hello", array_like=True):
    protocol: int
    run_id: str
    writer: int
    pid: int
    rank: int
    root: str  # absolute path of the run root (holds the store and the run folders)
    run_info: dict  # project, name, config, settings ... (the run's first writer's wins)


class StatusQuery(msgspec.Struct, tag="status", array_like=True):
    """Instead of ``Hello``: ask the daemon for its status; it answers ``StatusReply`` and closes."""


class StatusReply(msgspec.Struct, tag="status_reply", array_like=True):
    status: dict


class Welcome(msgspec.Struct, tag="welcome", array_like=True):
    protocol: int
    acked_seq: int  # highest seq of this writer already durable: resend what follows
    run_dir: str
    next_step: int  # where a resumed run's steps continue (0 for a new run)


class Batch(msgspec.Struct, tag="batch", array_like=True):
    seq: int
    record: bytes  # one framed WAL record, LOG or EVENT


class Ack(msgspec.Struct, tag="ack", array_like=True):
    seq: int


class Done(msgspec.Struct, tag="done", array_like=True):
    """Everything up to this writer's "finish" batch ``seq`` is merged and in the store."""

    seq: int


class Refused(msgspec.Struct, tag="refused", array_like=True):
    reason: str


class Event(msgspec.Struct, array_like=True, omit_defaults=True):
    """Body of an EVENT record: a run-level change from one writer, deduplicated like a batch.

    kinds: "config" (data: dict to merge), "summary" (data: {"set": dict, "del": [keys]}),
    "define_metric" (data: dict of define_metric's arguments), "console" (data: list of
    [time_us, stream, text]), "meta" (data: dict merged into the run's metadata), "finish"
    (data: {"exit_code": int}; this writer is done), "artifact" (data: an artifact version to
    index: uid, name, type, digest, manifest ...; see ``store/index.py`` ``check_artifact``)."""

    writer: int
    seq: int
    kind: str
    data: object = None


ClientMessage = Hello | Batch | StatusQuery
ServerMessage = Welcome | Ack | Done | Refused | StatusReply

_encoder = msgspec.msgpack.Encoder()
client_decoder = msgspec.msgpack.Decoder(ClientMessage)
server_decoder = msgspec.msgpack.Decoder(ServerMessage)
event_decoder = msgspec.msgpack.Decoder(Event)


def pack(msg) -> bytes:
    """One frame: length prefix + msgpack."""
    body = _encoder.encode(msg)
    return LENGTH.pack(len(body)) + body


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)
