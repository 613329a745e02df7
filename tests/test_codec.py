"""The WAL record codec: framing, parse_record, the LOG body, BatchEncoder.

Tests taking the ``codec`` fixture run on both implementations (the Cython extension and its
pure-Python twin). The ``twin``/``cython`` tests below run both on the same input and require
the same bytes, the same decoded values and the same exception classes: the twin is the
reference.
"""

from __future__ import annotations

import array
import collections
import enum
import math
import os
import struct
import threading
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import load_codec
from trackside._native import _API
from trackside._native import constants as C
from trackside._native.errors import CodecError

twin = load_codec("python")
cy = load_codec("cython")

INT64_MIN, INT64_MAX = C.INT64_MIN, C.INT64_MAX
T0 = 1_764_215_400_000_000  # 2025-11-27 03:50 UTC in microseconds: the worked example's time
PUBLIC = set(_API)  # the package's names: both implementations have each

# a longer search: TRACKSIDE_HYPOTHESIS_EXAMPLES=5000 pytest tests/test_codec.py
fast = settings(
    max_examples=int(os.environ.get("TRACKSIDE_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- helpers ------------------------------------------------------------------------------


def norm(x):
    """A comparable form that tells apart what == does not: NaN payloads, -0.0, True vs 1,
    bytes vs bytearray, dict order."""
    if isinstance(x, float):
        return ("float", struct.pack("<d", x))
    if isinstance(x, dict):
        return ("dict", [(norm(k), norm(v)) for k, v in x.items()])
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [norm(v) for v in x])
    if isinstance(x, (bytearray, memoryview)):
        return ("bytes", bytes(x))
    if isinstance(x, array.array):  # the bits of each item: NaN equals NaN
        return ("array", x.typecode, x.tobytes())
    return (type(x).__name__, x)


def expected(entries):
    """What decode_batch returns for ``entries``: 5-tuples, payloads as bytes."""
    out = []
    for e in entries:
        step, commit, t, values, payload = (tuple(e) + (None,))[:5]
        out.append((step, commit, t, dict(values), None if payload is None else bytes(payload)))
    return out


def body(record: bytes) -> bytes:
    status, rtype, start, end = twin.parse_record(record)
    assert (status, rtype) == (C.PARSE_OK, C.RECORD_LOG)
    return record[start:end]


def outcome(fn, *args):
    """("ok", normalized result) or ("raise", exception class)."""
    try:
        return ("ok", norm(fn(*args)))
    except Exception as e:  # noqa: BLE001 - the class is the result
        return ("raise", type(e))


def entry(i, values, step=None, commit=None, payload=None):
    return (step, commit, T0 + i * 1000, values, payload)


KEYS = ["train/loss", "train/accuracy", "train/lr", "val/loss", "épsilon", "日本語/キー", "", "a b"]


# -- hypothesis strategies ----------------------------------------------------------------

keys_st = st.one_of(st.sampled_from(KEYS), st.text(max_size=10))
value_st = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [0.0, -0.0, math.inf, -math.inf, math.nan, struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]]
    ),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, 0, -1, 1]),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
payload_st = st.one_of(st.none(), st.binary(max_size=16), st.binary(max_size=4).map(bytearray))


@st.composite
def batches(draw):
    """(writer, seq, entries): entries draw their keys from a few shapes, so consecutive
    entries often repeat the key set (SAME_KEYS), sometimes in another order or partly."""
    shapes = draw(st.lists(st.lists(keys_st, max_size=6, unique=True), min_size=1, max_size=3))
    n = draw(st.integers(0, 12))
    t = draw(st.integers(0, C.TIME_US_LIMIT - 1))
    entries = []
    for _ in range(n):
        shape = draw(st.sampled_from(shapes))
        if draw(st.booleans()):
            shape = draw(st.permutations(shape))
        values = {k: draw(value_st) for k in shape}
        if draw(st.integers(0, 9)) == 0:
            t = draw(st.integers(0, C.TIME_US_LIMIT - 1))  # a jump, back or forth
        else:
            t = min(t + draw(st.integers(0, 10**6)), C.TIME_US_LIMIT - 1)
        step = draw(st.one_of(st.none(), st.integers(INT64_MIN, INT64_MAX), st.integers(0, 1000)))
        commit = draw(st.sampled_from([None, True, False]))
        payload = draw(payload_st)
        entries.append((step, commit, t, values, payload))
    writer = draw(st.integers(0, 2**64 - 1))
    seq = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 300)))
    return writer, seq, entries


# -- the API ------------------------------------------------------------------------------


def test_both_implementations_have_the_same_public_names():
    for mod in (twin, cy):
        assert PUBLIC <= set(dir(mod))
    assert (twin.IMPLEMENTATION, cy.IMPLEMENTATION) == ("python", "cython")


def test_package_picks_the_extension():
    import trackside._native as native

    assert native.IMPLEMENTATION == "cython"
    assert native.encode_batch is cy.encode_batch


def test_worked_example_of_format_md(codec):
    record = codec.encode_batch(
        1,
        7,
        [
            (0, None, 1764215400000000, {"loss": 0.5, "epoch": 1}, None),
            (1, None, 1764215400001000, {"loss": 0.25, "epoch": 1}, None),
        ],
    )
    assert record.hex(" ") == (
        "d3 7e 5a a1 3c 6a a7 89 36 00 00 00 01 00 00 00 01 07 02 80 a8 cb 83 ed a2 a2 06 "
        "01 00 00 02 00 04 6c 6f 73 73 04 00 00 00 00 00 00 e0 3f 01 05 65 70 6f 63 68 03 02 "
        "11 02 d0 0f 04 00 00 00 00 00 00 d0 3f 03 02"
    )


# -- crc32 --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 0xFFFFFFFF, -1, 2**40 + 5, True])
@pytest.mark.parametrize(
    "data", [b"", b"a", b"123456789", bytes(range(256)) * 3, bytearray(b"xyz"), memoryview(b"hello world")[2:7]]
)
def test_crc32_is_zlib_crc32(codec, data, value):
    assert codec.crc32(data, value) == zlib.crc32(data, value)
    assert codec.crc32(data, value=value) == zlib.crc32(data, value)


def test_crc32_of_a_large_buffer_in_threads(codec):
    # large enough that the Cython codec releases the GIL while zlib runs
    data = bytes(range(256)) * 8192
    want = zlib.crc32(data)
    got = []
    threads = [threading.Thread(target=lambda: got.append(codec.crc32(data))) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert got == [want] * 4


@pytest.mark.parametrize(
    "args",
    [("text",), (b"x", 1.5), (b"x", None), (memoryview(b"abcd")[::2],)],
    ids=["str", "float-value", "none-value", "non-contiguous"],
)
def test_crc32_bad_arguments_raise_as_zlib(codec, args):
    with pytest.raises(Exception) as want:
        zlib.crc32(*args)
    with pytest.raises(want.type):
        codec.crc32(*args)


# -- frame and parse_record ---------------------------------------------------------------


@pytest.mark.parametrize("rtype", sorted(C.RECORD_TYPES))
@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)), bytearray(b"abc"), memoryview(b"0123456789")[3:]])
def test_frame_is_the_same_record_in_both(rtype, data):
    record = cy.frame(rtype, data)
    assert record == twin.frame(rtype, data)
    assert cy.parse_record(record) == (C.PARSE_OK, rtype, 16, 16 + len(bytes(data)))


def test_frame_of_a_large_body(codec):
    data = bytes(range(256)) * 4096  # 1 MiB: the checksum runs without the GIL
    record = codec.frame(C.RECORD_EVENT, data)
    assert record == twin.frame(C.RECORD_EVENT, data)
    assert codec.parse_record(record) == (C.PARSE_OK, C.RECORD_EVENT, 16, 16 + len(data))


@pytest.mark.parametrize(
    "args",
    [
        (0, b"x"),
        (3, b"x"),
        ("1", b"x"),
        ([1], b"x"),  # unknown or unhashable type
        (1, "text"),
        (1, None),
        (1, memoryview(b"abcd")[::2]),  # not a contiguous bytes-like body
        (1, b"x", 256),
        (1, b"x", -1),
        (1, b"x", 1.0),
        (1.0, b"x"),  # type/flags not a byte
        (True, b"x"),
    ],
    ids=lambda a: repr(a)[:30],
)
def test_frame_bad_arguments_raise_the_same_class(args):
    assert outcome(cy.frame, *args) == outcome(twin.frame, *args)
    assert outcome(cy.frame, *args)[0] == ("ok" if args[0] is True else "raise")


def test_frame_refuses_a_body_over_the_limit(codec):
    big = bytes(C.MAX_RECORD_SIZE + 1)
    with pytest.raises(ValueError, match="exceeds"):
        codec.frame(C.RECORD_EVENT, big)


def record_at(data=b"body bytes", rtype=C.RECORD_EVENT):
    return twin.frame(rtype, data)


def damaged(record: bytes, offset: int, value: int) -> bytes:
    b = bytearray(record)
    b[offset] = value
    return bytes(b)


def recrc(record: bytes) -> bytes:
    """The record with its checksum recomputed (to reach the checks after the checksum)."""
    crc = C.mask_crc(zlib.crc32(record[C.RECORD_CRC_START :]))
    return record[:4] + struct.pack("<I", crc) + record[8:]


def test_parse_ok(codec):
    rec = record_at()
    assert codec.parse_record(rec) == (C.PARSE_OK, C.RECORD_EVENT, 16, len(rec))


def test_parse_record_at_an_offset_and_bounded_by_end(codec):
    a, b = record_at(b"first"), record_at(b"second one")
    buf = bytearray(a + b + b"\xd3\x7e")
    assert codec.parse_record(buf, len(a)) == (C.PARSE_OK, C.RECORD_EVENT, len(a) + 16, len(a) + len(b))
    assert codec.parse_record(buf, 0, len(a)) == (C.PARSE_OK, C.RECORD_EVENT, 16, len(a))
    assert codec.parse_record(buf, 0, len(a) - 1)[0] == C.PARSE_INCOMPLETE
    assert codec.parse_record(buf, len(a) + len(b))[0] == C.PARSE_INCOMPLETE  # a magic prefix
    assert codec.parse_record(buf, len(buf))[0] == C.PARSE_INCOMPLETE  # the end, exactly
    assert codec.parse_record(buf, len(buf) + 5)[0] == C.PARSE_INCOMPLETE
    assert codec.parse_record(memoryview(bytes(buf)), len(a), 10**9)[0] == C.PARSE_OK


def test_parse_bad_magic(codec):
    rec = record_at()
    assert codec.parse_record(damaged(rec, 0, 0))[:1] == (C.PARSE_BAD_MAGIC,)
    assert codec.parse_record(damaged(rec, 3, 0xA2)) == (C.PARSE_BAD_MAGIC, 0, 0, 0)
    assert codec.parse_record(bytes(64)) == (C.PARSE_BAD_MAGIC, 0, 0, 0)  # zeroed blocks


def test_parse_short_garbage_is_bad_magic_not_incomplete(codec):
    assert codec.parse_record(b"\xd3\x7f") == (C.PARSE_BAD_MAGIC, 0, 0, 0)
    assert codec.parse_record(b"xyz") == (C.PARSE_BAD_MAGIC, 0, 0, 0)


@pytest.mark.parametrize("cut", [0, 1, 3, 4, 10, 15])
def test_parse_incomplete_header(codec, cut):
    assert codec.parse_record(record_at()[:cut]) == (C.PARSE_INCOMPLETE, 0, 0, 0)


def test_parse_incomplete_body(codec):
    rec = record_at(b"0123456789")
    assert codec.parse_record(rec[:-1]) == (C.PARSE_INCOMPLETE, C.RECORD_EVENT, 16, len(rec))
    assert codec.parse_record(rec[:16]) == (C.PARSE_INCOMPLETE, C.RECORD_EVENT, 16, len(rec))


def test_parse_bad_length(codec):
    rec = bytearray(record_at())
    struct.pack_into("<I", rec, 8, C.MAX_RECORD_SIZE + 1)
    assert codec.parse_record(bytes(rec)) == (C.PARSE_BAD_LENGTH, 0, 0, 0)
    struct.pack_into("<I", rec, 8, 0xFFFFFFFF)
    assert codec.parse_record(bytes(rec)) == (C.PARSE_BAD_LENGTH, 0, 0, 0)


@pytest.mark.parametrize(
    "offset,value",
    [(12, 0), (12, 3), (12, 255), (13, 1), (14, 1), (15, 0x80)],
    ids=["type0", "type3", "type255", "flags", "reserved-lo", "reserved-hi"],
)
def test_parse_bad_type_or_flags(codec, offset, value):
    rec = recrc(damaged(record_at(), offset, value))
    assert codec.parse_record(rec) == (C.PARSE_BAD_TYPE, 0, 0, 0)


def test_parse_checksum_mismatch_on_any_flipped_bit(codec):
    rec = record_at(b"some body")
    for offset in [4, 5, 6, 7] + list(range(16, len(rec))):
        for bit in (0x01, 0x80):
            bad = damaged(rec, offset, rec[offset] ^ bit)
            assert codec.parse_record(bad) == (C.PARSE_BAD_CHECKSUM, C.RECORD_EVENT, 16, len(rec)), offset


def test_parse_checksum_covers_the_length(codec):
    a = record_at(b"0123456789")
    shorter = damaged(a, 8, 9)  # length 10 -> 9: still in range, the crc catches it
    assert codec.parse_record(shorter)[0] == C.PARSE_BAD_CHECKSUM


def test_parse_record_frame_with_flags_is_bad_type(codec):
    # frame() lets a caller set flags, but version 1 requires 0: such a record never reads
    assert codec.parse_record(codec.frame(C.RECORD_EVENT, b"x", 1))[0] == C.PARSE_BAD_TYPE


def test_parse_record_refuses_a_negative_pos(codec):
    with pytest.raises(ValueError):
        codec.parse_record(record_at() * 2, -len(record_at()))


@fast
@given(st.binary(max_size=64), st.integers(0, 70), st.integers(-1, 80))
def test_parse_record_agrees_on_any_bytes(data, pos, end):
    assert cy.parse_record(data, pos, end) == twin.parse_record(data, pos, end)


@fast
@given(st.binary(max_size=40), st.integers(0, 60), st.integers(0, 255))
def test_parse_record_agrees_on_damaged_records(data, offset, value):
    rec = bytearray(twin.frame(C.RECORD_LOG, data) + twin.frame(C.RECORD_EVENT, data[::-1]))
    rec[offset % len(rec)] = value
    for cut in (len(rec), len(rec) - 3, 20):
        assert cy.parse_record(rec[:cut]) == twin.parse_record(rec[:cut])
        assert cy.parse_record(rec, 17, cut) == twin.parse_record(rec, 17, cut)


# -- the LOG body: round trips ------------------------------------------------------------


ALL_KINDS = {
    "float": 0.5,
    "neg-zero": -0.0,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "int": 7,
    "int-min": INT64_MIN,
    "int-max": INT64_MAX,
    "neg": -12345678901,
    "true": True,
    "false": False,
    "none": None,
    "str": "héllo wörld ✓",
    "empty-str": "",
    "emoji 🚀": "🚀" * 3,
}


def test_round_trip_of_every_value_kind(codec):
    entries = [
        entry(0, ALL_KINDS, step=0, commit=None, payload=None),
        entry(1, ALL_KINDS, step=INT64_MAX, commit=True, payload=b"\x00rich"),
        entry(2, {}, step=INT64_MIN, commit=False, payload=b""),
        entry(3, {"x": 1.0}),
        (None, None, 0, {"t": 0}, None),
        (None, None, C.TIME_US_LIMIT - 1, {"t": 1}, None),
    ]
    record = codec.encode_batch(3, 99, entries)
    assert record == twin.encode_batch(3, 99, entries)
    writer, seq, got = codec.decode_batch(body(record))
    assert (writer, seq) == (3, 99)
    assert norm(got) == norm(expected(entries))


def test_round_trip_of_an_empty_batch(codec):
    record = codec.encode_batch(0, 0, [])
    assert record == twin.encode_batch(0, 0, [])
    assert codec.decode_batch(body(record)) == (0, 0, [])
    assert codec.decode_batch(body(codec.encode_batch(2**64 - 1, 2**64 - 1, []))) == (2**64 - 1, 2**64 - 1, [])


def test_round_trip_of_empty_dicts(codec):
    entries = [entry(0, {}), entry(1, {}), entry(2, {"a": 1}), entry(3, {}), entry(4, {})]
    record = codec.encode_batch(1, 1, entries)
    assert record == twin.encode_batch(1, 1, entries)
    assert norm(codec.decode_batch(body(record))[2]) == norm(expected(entries))


def test_round_trip_of_wide_entries(codec):
    keys = [f"layer{i}/grad_norm" for i in range(300)]
    entries = [entry(i, {k: i + j / 7 for j, k in enumerate(keys)}, step=i) for i in range(20)]
    record = codec.encode_batch(1, 2, entries)
    assert record == twin.encode_batch(1, 2, entries)
    assert norm(codec.decode_batch(body(record))[2]) == norm(expected(entries))


def test_entries_as_lists_generators_and_four_tuples(codec):
    entries = [entry(0, {"a": 1}), entry(1, {"a": 2}, payload=b"p")]
    want = twin.encode_batch(5, 6, entries)
    assert codec.encode_batch(5, 6, iter(entries)) == want
    assert codec.encode_batch(5, 6, tuple(list(e) for e in entries)) == want
    assert codec.encode_batch(5, 6, [entries[0][:4], entries[1]]) == want


def test_payload_types(codec):
    entries = [
        entry(0, {}, payload=b"abc"),
        entry(1, {}, payload=bytearray(b"de")),
        entry(2, {}, payload=memoryview(b"xfgx")[1:3]),
    ]
    record = codec.encode_batch(1, 1, entries)
    assert record == twin.encode_batch(1, 1, entries)
    assert [e[4] for e in codec.decode_batch(body(record))[2]] == [b"abc", b"de", b"fg"]


def test_payload_memoryview_of_wide_items_keeps_its_bytes(codec):
    mv = memoryview(array.array("i", [1, 2, 3]))
    record = codec.encode_batch(1, 1, [entry(0, {}, payload=mv)])
    assert codec.decode_batch(body(record))[2][0][4] == mv.tobytes()


# -- SAME_KEYS and key interning ----------------------------------------------------------


def entry_flags(record: bytes, entries) -> list[int]:
    """The flags byte of each entry of ``record`` (the encoding of ``entries``), located
    with the twin's BatchEncoder.nbytes."""
    enc = twin.BatchEncoder()
    starts = []
    for e in entries:
        starts.append(enc.nbytes)
        enc.add(*e)
    b = body(record)
    head = len(b) - enc.nbytes  # writer, seq, count, t0
    return [b[head + s] for s in starts]


def test_same_keys_flag_for_a_repeated_key_set(codec):
    entries = [
        entry(0, {"a": 1, "b": 2.0}),
        entry(1, {"a": 3, "b": 4.0}),
        entry(2, {"b": 5.0, "a": 6}),  # another order: keys written again
        entry(3, {"b": 1.0, "a": 2}),
        entry(4, {"a": 1}),
        entry(5, {"a": 1, "c": 2}),
    ]
    record = codec.encode_batch(1, 1, entries)
    assert record == twin.encode_batch(1, 1, entries)
    same = [bool(f & C.ENTRY_SAME_KEYS) for f in entry_flags(record, entries)]
    assert same == [False, True, False, True, False, False]


def test_same_keys_with_equal_strings_in_other_objects(codec):
    a1, a2 = "".join(["tr", "ain/loss"]), "".join(["train/", "loss"])
    assert a1 == a2 and a1 is not a2
    entries = [entry(0, {a1: 1.0}), entry(1, {a2: 2.0}), entry(2, {"train/loss": 3.0})]
    record = codec.encode_batch(1, 1, entries)
    assert record == twin.encode_batch(1, 1, entries)
    assert [bool(f & C.ENTRY_SAME_KEYS) for f in entry_flags(record, entries)] == [False, True, True]


def test_first_empty_dict_is_same_keys(codec):
    # the previous key list starts empty, so an empty first entry matches it
    entries = [entry(0, {}), entry(1, {})]
    record = codec.encode_batch(1, 1, entries)
    assert record == twin.encode_batch(1, 1, entries)
    assert [bool(f & C.ENTRY_SAME_KEYS) for f in entry_flags(record, entries)] == [True, True]


def test_decoded_key_strings_are_shared_across_entries(codec):
    entries = [entry(i, {"train/loss": float(i), "lr": 0.1}) for i in range(3)]
    _, _, got = codec.decode_batch(body(codec.encode_batch(1, 1, entries)))
    k0 = [list(e[3]) for e in got]
    assert all(a is b for a, b in zip(k0[0], k0[2]))


# -- value types: subclasses follow the twin ----------------------------------------------


class Color(enum.IntEnum):
    RED = 3


class MyFloat(float):
    pass


class MyInt(int):
    pass


class MyStr(str):
    pass


class LoudStr(str):
    def encode(self, *a, **k):  # the twin calls the subclass's own encode()
        return b"LOUD"


def test_subclasses_of_value_types(codec):
    values = {
        "f": MyFloat(1.5),
        "i": MyInt(-3),
        "e": Color.RED,
        "s": MyStr("x"),
        "loud": LoudStr("q"),
        "huge-sub": MyInt(5),
    }
    record = codec.encode_batch(1, 1, [entry(0, values)])
    assert record == twin.encode_batch(1, 1, [entry(0, values)])
    assert codec.decode_batch(body(record))[2][0][3] == {
        "f": 1.5,
        "i": -3,
        "e": 3,
        "s": "x",
        "loud": "LOUD",
        "huge-sub": 5,
    }


def test_dict_subclasses_encode_in_their_own_order(codec):
    od = collections.OrderedDict([("a", 1), ("b", 2), ("c", 3)])
    od.move_to_end("a")
    dd = collections.defaultdict(int, {"x": 1.0})
    entries = [entry(0, od), entry(1, dd), entry(2, {"b": 0, "c": 0, "a": 0})]
    record = codec.encode_batch(1, 1, entries)
    assert record == twin.encode_batch(1, 1, entries)
    assert list(codec.decode_batch(body(record))[2][0][3]) == ["b", "c", "a"]


def test_bool_and_int_like_steps_and_writer(codec):
    entries = [(True, 1, T0, {"a": 1}, None), (MyInt(4), 0, T0 + 1, {"a": 1}, None), (Color.RED, "", T0, {}, None)]
    record = codec.encode_batch(True, MyInt(3), entries)
    assert record == twin.encode_batch(True, MyInt(3), entries)
    got = codec.decode_batch(body(record))
    assert got[:2] == (1, 3)
    assert [(e[0], e[1]) for e in got[2]] == [(1, True), (4, False), (3, False)]


# -- bad input: the same exception class from both ----------------------------------------


class Weird:
    pass


class BadBool:
    def __bool__(self):
        raise ZeroDivisionError("no truth")


BAD_ENTRIES = {
    "non-str key": [entry(0, {1: 1.0})],
    "str-subclass key": [entry(0, {MyStr("k"): 1.0})],
    "non-str key after good keys": [entry(0, {"a": 1.0}), entry(1, {"a": 1.0, None: 2})],
    "list value": [entry(0, {"a": [1, 2]})],
    "object value": [entry(0, {"a": Weird()})],
    "bytes value": [entry(0, {"a": b"x"})],
    "dict value": [entry(0, {"a": {}})],
    "int over int64": [entry(0, {"a": INT64_MAX + 1})],
    "int under int64": [entry(0, {"a": INT64_MIN - 1})],
    "huge int": [entry(0, {"a": 10**40})],
    "int-subclass over int64": [entry(0, {"a": MyInt(2**64)})],
    "surrogate value": [entry(0, {"a": "\ud800"})],
    "surrogate key": [entry(0, {"\udfff": 1})],
    "values a list": [entry(0, [("a", 1)])],
    "values None": [entry(0, None)],
    "payload str": [entry(0, {}, payload="text")],
    "payload int": [entry(0, {}, payload=5)],
    "payload non-contiguous": [entry(0, {}, payload=memoryview(b"abcdef")[::2])],
    "time float": [(None, None, 1.5, {}, None)],
    "time None": [(None, None, None, {}, None)],
    "time negative": [(None, None, -1, {}, None)],
    "time at limit": [(None, None, C.TIME_US_LIMIT, {}, None)],
    "time huge": [(None, None, 2**70, {}, None)],
    "time in 2nd entry": [entry(0, {}), (None, None, "soon", {}, None)],
    "step float": [entry(0, {}, step=1.5)],
    "step nan": [entry(0, {}, step=math.nan)],
    "step huge float": [entry(0, {}, step=1e30)],
    "step str": [entry(0, {}, step="1")],
    "step over int64": [entry(0, {}, step=INT64_MAX + 1)],
    "step under int64": [entry(0, {}, step=INT64_MIN - 1)],
    "commit raises": [entry(0, {}, commit=BadBool())],
    "entry too short": [(None, None, T0)],
    "entry too long": [(None, None, T0, {}, None, None)],
    "entry not iterable": [5],
    "entries not iterable": 5,
}


@pytest.mark.parametrize("entries", list(BAD_ENTRIES.values()), ids=list(BAD_ENTRIES))
def test_bad_entries_raise_the_same_class(entries):
    want = outcome(twin.encode_batch, 1, 1, entries)
    assert want[0] == "raise"
    assert outcome(cy.encode_batch, 1, 1, entries) == want


NUMPY_CASES = {
    "int64 step": lambda np: [(np.int64(5), None, T0, {}, None)],
    "int64 time": lambda np: [(None, None, np.int64(T0), {}, None)],
    "float64 value": lambda np: [entry(0, {"a": np.float64(1.5)})],
    "float32 value": lambda np: [entry(0, {"a": np.float32(1.5)})],
    "int64 value": lambda np: [entry(0, {"a": np.int64(3)})],
    "bool_ value": lambda np: [entry(0, {"a": np.bool_(True)})],
    "bool_ commit": lambda np: [entry(0, {}, commit=np.bool_(True))],
    "str_ value": lambda np: [entry(0, {"a": np.str_("x")})],
    "str_ key": lambda np: [entry(0, {np.str_("k"): 1})],
    "array payload": lambda np: [entry(0, {}, payload=np.frombuffer(b"abcd", dtype=np.uint8))],
}


@pytest.mark.parametrize("make", list(NUMPY_CASES.values()), ids=list(NUMPY_CASES))
def test_numpy_scalars_follow_the_twin(make):
    np = pytest.importorskip("numpy")
    entries = make(np)
    assert outcome(cy.encode_batch, np.uint64(3), np.int64(2), entries) == outcome(
        twin.encode_batch, np.uint64(3), np.int64(2), entries
    )


@pytest.mark.parametrize(
    "writer,seq",
    [(-1, 0), (0, -1), (2**64, 0), (0, 2**64), (1.0, 0), (0, 2.5), ("1", 0), (None, 0), (0, math.inf), (1e30, 0)],
)
def test_bad_writer_or_seq_raise_the_same_class(writer, seq):
    want = outcome(twin.encode_batch, writer, seq, [entry(0, {"a": 1})])
    assert want[0] == "raise"
    assert outcome(cy.encode_batch, writer, seq, [entry(0, {"a": 1})]) == want


def test_error_messages_name_the_key_and_the_value(codec):
    with pytest.raises(TypeError, match=r"cannot log list for key 'train/loss'"):
        codec.encode_batch(1, 1, [entry(0, {"train/loss": [1]})])
    with pytest.raises(OverflowError, match=r"key 'big' is 9223372036854775808"):
        codec.encode_batch(1, 1, [entry(0, {"big": 2**63})])
    with pytest.raises(TypeError, match=r"log keys must be str, not int \(3\)"):
        codec.encode_batch(1, 1, [entry(0, {3: 1})])
    with pytest.raises(TypeError, match="log values must be a dict, not list"):
        codec.encode_batch(1, 1, [entry(0, [])])
    with pytest.raises(TypeError, match="payload must be bytes, not str"):
        codec.encode_batch(1, 1, [entry(0, {}, payload="x")])
    with pytest.raises(OverflowError, match="writer is -1"):
        codec.encode_batch(-1, 1, [])
    with pytest.raises(TypeError, match="time_us must be int, not float"):
        codec.encode_batch(1, 1, [(None, None, 1.0, {}, None)])


def test_record_over_the_size_limit_is_refused(codec):
    # a payload just under the limit plus the batch header goes over it
    with pytest.raises(ValueError, match="exceeds"):
        codec.encode_batch(1, 1, [entry(0, {}, payload=bytes(C.MAX_RECORD_SIZE - 8))])


# -- BatchEncoder -------------------------------------------------------------------------


def test_batch_encoder_gives_the_bytes_of_encode_batch(codec):
    entries = [entry(i, {"loss": 1 / (i + 1), "step": i}, step=i, commit=i % 2 == 0) for i in range(10)]
    enc = codec.BatchEncoder()
    assert (len(enc), enc.nbytes) == (0, 0)
    for i, e in enumerate(entries):
        assert enc.add(*e) == i + 1
    assert len(enc) == 10 and enc.nbytes > 0
    assert enc.take(4, 5) == twin.encode_batch(4, 5, entries)
    assert (len(enc), enc.nbytes) == (0, 0)
    # the next batch is independent: its keys are defined again
    assert enc.take(4, 6) == twin.encode_batch(4, 6, [])
    enc.add(*entries[3])
    assert enc.take(4, 7) == twin.encode_batch(4, 7, [entries[3]])


def test_batch_encoder_failed_add_leaves_the_batch_as_it_was(codec):
    good = [entry(0, {"a": 1.0, "b": 2}), entry(1, {"a": 1.5, "b": 3})]
    enc = codec.BatchEncoder()
    enc.add(*good[0])
    size = enc.nbytes
    bad = [
        entry(1, {"a": 1.0, "new-key": 2, "b": [1]}),  # a key defined, then a bad value
        entry(1, {"a": 1.0, "b": 2**64}),  # SAME_KEYS, then a value overflows
        entry(1, {"zz": 1, 7: 1}),  # a new key, then a non-str key
        entry(1, {"a": 1.0}, payload="x"),
        (1.5, None, T0, {"a": 1.0}, None),
    ]
    for b in bad:
        with pytest.raises((TypeError, OverflowError)):
            enc.add(*b)
        assert (len(enc), enc.nbytes) == (1, size)
    enc.add(*good[1])
    assert enc.take(1, 1) == twin.encode_batch(1, 1, good)


def test_batch_encoder_take_with_bad_writer_keeps_the_batch(codec):
    enc = codec.BatchEncoder()
    enc.add(*entry(0, {"a": 1}))
    with pytest.raises(OverflowError):
        enc.take(-1, 0)
    assert len(enc) == 1
    assert enc.take(1, 0) == twin.encode_batch(1, 0, [entry(0, {"a": 1})])


def test_reentrant_add_is_refused(codec):
    enc = codec.BatchEncoder()

    class Sneaky(int):
        def __int__(self):
            enc.add(*entry(9, {"x": 1}))
            return 5

    with pytest.raises(RuntimeError):
        enc.add(*entry(0, {"a": Sneaky(5)}))
    assert len(enc) == 0


# -- hypothesis: both implementations, the same bytes -------------------------------------


@fast
@given(batches())
def test_random_batches_give_identical_bytes_and_round_trip(batch):
    writer, seq, entries = batch
    a = twin.encode_batch(writer, seq, entries)
    b = cy.encode_batch(writer, seq, entries)
    assert a == b
    want = norm((writer, seq, expected(entries)))
    for decoder in (twin, cy):
        assert norm(decoder.decode_batch(body(a))) == want


@fast
@given(batches())
def test_each_decodes_the_others_output_and_reencodes_it(batch):
    writer, seq, entries = batch
    for enc, dec in ((twin, cy), (cy, twin)):
        record = enc.encode_batch(writer, seq, entries)
        w, s, got = dec.decode_batch(body(record))
        assert dec.encode_batch(w, s, got) == record  # NaN payloads and -0.0 included


# -- decoding bad bytes: CodecError, never a crash ----------------------------------------


def log_body(entries, writer=1, seq=1):
    return body(twin.encode_batch(writer, seq, entries))


def uv(n):
    out = bytearray()
    twin._put_uvarint(out, n)
    return bytes(out)


def sv(n):
    out = bytearray()
    twin._put_svarint(out, n)
    return bytes(out)


GOOD = log_body([entry(0, {"loss": 0.5, "name": "x"}, step=1, payload=b"pp"), entry(1, {"loss": 0.25, "name": "y"})])
HEAD = uv(1) + uv(1) + uv(1) + sv(T0)  # writer, seq, one entry, t0

BAD_BODIES = {
    "empty": b"",
    "unknown entry flags": HEAD + b"\x20\x00\x00",
    "unknown value tag": HEAD + b"\x00\x00\x01\x00\x01a\x09",
    "key index before definition": HEAD + b"\x00\x00\x01\x05\x01a\x00",
    "key not utf-8": HEAD + b"\x00\x00\x01\x00\x02\xc3\x28\x00",
    "key surrogate utf-8": HEAD + b"\x00\x00\x01\x00\x03\xed\xa0\x80\x00",
    "string value not utf-8": HEAD + b"\x00\x00\x01\x00\x01a\x05\x01\xff",
    "float cut": HEAD + b"\x00\x00\x01\x00\x01a\x04\x00\x00\x00",
    "string runs past the end": HEAD + b"\x00\x00\x01\x00\x01a\x05\x7f",
    "payload runs past the end": HEAD + b"\x08\x00\x00\x05ab",
    "bytes left over": GOOD + b"\x00",
    "count over body size": uv(1) + uv(1) + uv(10**6) + sv(0),
    "count over what is there": uv(1) + uv(1) + uv(3) + sv(0) + b"\x00\x00\x00",
    "many values, few bytes": HEAD + b"\x00\x00" + uv(10**9),
    "varint longer than 10 bytes": b"\x80" * 10 + b"\x01",
    "varint overflows 64 bits": b"\xff" * 9 + b"\x02",
    "varint cut": b"\x80\x80",
    "same keys step cut": HEAD + b"\x11",
}


@pytest.mark.parametrize("data", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_decode_malformed_body_raises_codec_error(codec, data):
    with pytest.raises(CodecError):
        codec.decode_batch(data)


def test_decode_accepts_a_ten_byte_varint_with_the_top_bit(codec):
    body_ = b"\xff" * 9 + b"\x01" + uv(0) + uv(0) + sv(0)
    assert codec.decode_batch(body_) == (2**64 - 1, 0, [])


def test_decode_of_a_time_past_int64_follows_the_twin(codec):
    # no encoder writes this (times are < 2**62), but the bytes decode the same in both
    data = uv(1) + uv(1) + uv(2) + sv(INT64_MAX) + b"\x00" + sv(0) + b"\x00" + b"\x00" + sv(5) + b"\x00"
    got = codec.decode_batch(data)
    assert got == twin.decode_batch(data)
    assert [e[2] for e in got[2]] == [INT64_MAX, INT64_MAX + 5]


def test_decode_of_other_buffers(codec):
    assert norm(codec.decode_batch(bytearray(GOOD))) == norm(twin.decode_batch(GOOD))
    assert norm(codec.decode_batch(memoryview(b"xx" + GOOD)[2:])) == norm(twin.decode_batch(GOOD))
    with pytest.raises(TypeError):
        codec.decode_batch("text")


def test_decode_of_a_non_contiguous_view(codec):
    spread = bytes(b for pair in zip(GOOD, b"\xee" * len(GOOD)) for b in pair)
    assert norm(codec.decode_batch(memoryview(spread)[::2])) == norm(twin.decode_batch(GOOD))


@pytest.mark.parametrize("cut", range(len(GOOD)))
def test_decode_truncated_body_raises_codec_error(codec, cut):
    with pytest.raises(CodecError):
        codec.decode_batch(GOOD[:cut])


@fast
@given(st.binary(max_size=80))
def test_decode_random_bytes_agrees_and_raises_only_codec_error(data):
    assert outcome(cy.decode_batch, data) == outcome(twin.decode_batch, data)
    for codec in (twin, cy):
        try:
            codec.decode_batch(data)
        except CodecError:
            pass


def scribbled(batch, data) -> tuple[bytes, bytes]:
    """The body of ``batch`` with one to three bytes overwritten, and a cut of it."""
    b = bytearray(body(twin.encode_batch(*batch)))
    for _ in range(data.draw(st.integers(1, 3))):
        if not b:
            break
        b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
    return bytes(b), bytes(b[: data.draw(st.integers(0, len(b)))])


@fast
@given(batches(), st.data())
def test_decode_damaged_bodies_agrees(batch, data):
    for chunk in scribbled(batch, data):
        got = outcome(cy.decode_batch, chunk)
        assert got == outcome(twin.decode_batch, chunk)
        assert got[0] == "ok" or got[1] is CodecError


# -- decode_columns: plain batches as columns (the merge stage's column path) ---------------------


def is_number(v) -> bool:
    return type(v) is float or type(v) is int


def plain_blocks(entries):
    """What decode_columns must give for ``entries`` (None where they are not plain): runs of
    entries with the same keys in the same order (the encoder's SAME_KEYS), as 5-tuples of
    steps, times, keys, columns and the last entry's commit."""
    if not entries or len(entries) > 10_000:
        return None
    blocks, keys = [], None
    for i, (step, commit, t, values, payload) in enumerate(entries):
        if step is None or payload is not None or not values or not all(map(is_number, values.values())):
            return None
        if i and step <= entries[i - 1][0]:
            return None
        if tuple(values) != keys:
            keys = tuple(values)
            blocks.append(
                (
                    array.array("q"),
                    array.array("q"),
                    keys,
                    [array.array("d" if type(v) is float else "q") for v in values.values()],
                    True,
                )
            )
        steps, times, _, cols, _ = blocks[-1]
        for col, v in zip(cols, values.values()):
            if (type(v) is float) != (col.typecode == "d"):
                return None
            col.append(v)
        steps.append(step)
        times.append(t)
    last = blocks[-1]
    blocks[-1] = last[:4] + (bool(entries[-1][1]),)
    if len(blocks) > max(4, len(entries) >> 6):
        return None
    return blocks


@fast
@given(batches())
def test_decode_columns_is_the_rows_of_decode_batch_as_columns(batch):
    writer, seq, entries = batch
    b = body(twin.encode_batch(writer, seq, entries))
    got = cy.decode_columns(b)
    assert norm(got) == norm(twin.decode_columns(b))
    want = plain_blocks(twin.decode_batch(b)[2])
    if want is None:
        assert got is None
    else:
        assert got is not None and got[:2] == (writer, seq)
        assert norm(got[2]) == norm(want)


@st.composite
def plain_batches(draw):
    """Batches that are mostly plain: rising steps, numbers only, a few key sets whose keys
    keep their kind; now and then a value that is not (a kind changing, a bool)."""
    shapes = draw(st.lists(st.lists(keys_st, min_size=1, max_size=5, unique=True), min_size=1, max_size=3))
    kinds = {k: draw(st.sampled_from(["d", "q"])) for shape in shapes for k in shape}
    step = draw(st.integers(INT64_MIN, INT64_MAX - 10**6))
    t = draw(st.integers(0, C.TIME_US_LIMIT - 10**8))
    entries = []
    for _ in range(draw(st.integers(1, 150))):
        shape = draw(st.sampled_from(shapes)) if draw(st.integers(0, 60)) == 0 or not entries else list(entries[-1][3])
        values = {}
        for k in shape:
            if draw(st.integers(0, 3000)) == 0:
                values[k] = draw(value_st)
            elif kinds[k] == "d":
                values[k] = draw(st.floats(allow_nan=True, allow_infinity=True))
            else:
                values[k] = draw(st.integers(INT64_MIN, INT64_MAX))
        step += draw(st.integers(1, 3))
        t += draw(st.integers(0, 10**6))
        entries.append((step, draw(st.sampled_from([None, True, False])), t, values, None))
    return draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 300)), entries


@fast
@given(plain_batches())
def test_decode_columns_of_plain_batches(batch):
    writer, seq, entries = batch
    b = body(twin.encode_batch(writer, seq, entries))
    got = cy.decode_columns(b)
    assert norm(got) == norm(twin.decode_columns(b))
    want = plain_blocks(entries)
    assert norm(None if got is None else got[2]) == norm(want)


def plain(n, step0=0, keys=("loss", "lr"), value=lambda i, j: i + j / 8):
    return [(step0 + i, True, T0 + i, {k: value(i, j) for j, k in enumerate(keys)}, None) for i in range(n)]


def test_decode_columns_of_a_training_loop(codec):
    entries = plain(300) + [(300 + i, True, T0 + 300 + i, {"loss": 1.5, "epoch": i}, None) for i in range(200)]
    entries[-1] = entries[-1][:1] + (False,) + entries[-1][2:]
    writer, seq, blocks = codec.decode_columns(body(codec.encode_batch(7, 3, entries)))
    assert (writer, seq, len(blocks)) == (7, 3, 2)
    steps, times, keys, cols, commit = blocks[0]
    assert (list(steps), list(times), keys, commit) == (
        list(range(300)),
        [T0 + i for i in range(300)],
        ("loss", "lr"),
        True,
    )
    assert [c.typecode for c in cols] == ["d", "d"] and cols[1][3] == 3.125
    steps, _, keys, cols, commit = blocks[1]
    assert (steps[0], keys, [c.typecode for c in cols], list(cols[1][:3]), commit) == (
        300,
        ("loss", "epoch"),
        ["d", "q"],
        [0, 1, 2],
        False,
    )


@pytest.mark.parametrize(
    "why, entries",
    [
        ("a payload", plain(3)[:2] + [(2, True, T0, {"loss": 1.0, "lr": 2.0}, b"media")]),
        ("a bool", plain(2) + [(2, True, T0, {"loss": True, "lr": 2.0}, None)]),
        ("text", plain(2) + [(2, True, T0, {"loss": "nan", "lr": 2.0}, None)]),
        ("None", plain(2) + [(2, True, T0, {"loss": None, "lr": 2.0}, None)]),
        ("no step", plain(2) + [(None, True, T0, {"loss": 1.0, "lr": 2.0}, None)]),
        ("the same step again", plain(2) + [(1, True, T0, {"loss": 1.0, "lr": 2.0}, None)]),
        ("a lower step", plain(2) + [(0, True, T0, {"loss": 1.0, "lr": 2.0}, None)]),
        ("no values", plain(2) + [(2, True, T0, {}, None)]),
        ("a float key turned int", plain(2) + [(2, True, T0, {"loss": 1, "lr": 2.0}, None)]),
        ("keys changing all the time", [(i, True, T0, {f"k{i % 2}": 1.0}, None) for i in range(10)]),
        ("nothing", []),
    ],
)
def test_decode_columns_leaves_to_rows_what_is_not_plain(codec, why, entries):
    assert codec.decode_columns(body(codec.encode_batch(1, 1, entries))) is None, why


def test_decode_columns_of_a_body_that_lies_about_its_size_allocates_little(codec):
    """A count and a key count that the bytes cannot hold must not size the columns: 30,000
    keys in one entry, and a count of entries as large as the body."""
    keys = {f"k{i}": 0 for i in range(30_000)}
    b = bytearray(body(codec.encode_batch(1, 1, [(0, True, T0, keys, None)])))
    assert b[2] == 1  # writer, seq, count: one byte each here
    count, varint = len(b) // 2, bytearray()
    while count >= 0x80:
        varint.append(0x80 | (count & 0x7F))
        count >>= 7
    fat = b[:2] + varint + bytes([count]) + b[3:]
    tracemalloc.start()
    try:
        assert codec.decode_columns(bytes(fat)) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * len(fat), peak  # unbounded: 30,000 columns x a count of ~100,000 x 8 bytes


@fast
@given(batches(), st.data())
def test_decode_columns_of_damaged_bodies_agrees_and_never_raises(batch, data):
    for chunk in (*scribbled(batch, data), data.draw(st.binary(max_size=60))):
        got = cy.decode_columns(chunk)
        assert norm(got) == norm(twin.decode_columns(chunk))
        if got is not None:  # what decodes as columns decodes as the same rows
            assert norm(got[2]) == norm(plain_blocks(twin.decode_batch(chunk)[2]))


def test_split_rows_puts_each_value_in_its_column(codec):
    """The series writer's per-value split (store/series.py), the same in both codecs."""
    from collections import namedtuple

    Row = namedtuple("Row", "step time_us values")
    rows = [
        Row(3, 30, {"f": 1.5, "i": 7, "b": True, "s": "x", "big": 2**63, "neg": -(2**63)}),
        Row(2, 20, {"f": 9.0}),  # at or below a step before it: late
        Row(5, 50, {"f": float("nan"), "i": 8}),
    ]
    steps, times, floats, ints, late, rest = codec.split_rows(rows, 1)
    assert steps == [3, 5] and times == [30, 50]
    assert {k: (list(s), [repr(x) for x in v]) for k, (s, v) in floats.items()} == {"f": ([3, 5], ["1.5", "nan"])}
    assert {k: (list(s), list(v)) for k, (s, v) in ints.items()} == {"i": ([3, 5], [7, 8]), "neg": ([3], [-(2**63)])}
    assert late == [rows[1]]
    assert rest == [(rows[0], {"b": True, "s": "x", "big": 2**63})]
    assert codec.split_rows(rows, None)[0] == [3, 5]  # nothing stored: only the late row is late
    assert codec.split_rows(rows, 5)[4] == rows
    # a key of `keep` is no column, whatever its values: it stays with the row's other values
    _, _, floats, ints, _, rest = codec.split_rows(rows, 1, ("f", "i"))
    assert set(floats) == set() and set(ints) == {"neg"}
    assert rest == [
        (rows[0], {"f": 1.5, "i": 7, "b": True, "s": "x", "big": 2**63}),
        (rows[2], {"f": rest[1][1]["f"], "i": 8}),
    ]


_merge_batches = st.lists(
    st.tuples(
        st.integers(1, 3),  # writer
        st.lists(
            st.tuples(
                st.integers(0, 12),  # step
                st.sampled_from([True, False, None]),
                st.integers(0, 50),  # time_us
                st.dictionaries(st.sampled_from("abcd"), st.integers(-3, 3) | st.floats(allow_nan=False), max_size=3),
                st.none() | st.binary(max_size=3),
            ),
            max_size=8,
        ),
        st.integers(-1, 14),  # the watermark of the finalize after the batch
    ),
    max_size=10,
)


def _pending_state(pending, heap) -> tuple:
    rows = {
        step: (r.time_us, r.values, r.payloads, r.touched, r.writer, r.by_writer, r.amend)
        for step, r in pending.items()
    }
    return rows, sorted(heap)


@fast
@given(batches=_merge_batches, drop=st.booleans())
def test_merge_entries_and_pop_rows_agree(batches, drop):
    """The merger's per-entry loops (daemon/merger.py): pending rows, cursors, drops, emitted
    rows and collision counts are the same in both codecs."""
    from trackside.daemon.merger import Row

    states = []
    for impl in (twin, cy):
        pending, heap, none = {}, [], []
        cursor, emitted, trace = (None, False), float("-inf"), []
        for i, (writer, entries, limit) in enumerate(batches):
            before = [dict(e[3]) for e in entries]
            got = impl.merge_entries(pending, heap, entries, i % 2, writer, float(i), emitted, drop, *cursor, none)
            assert [e[3] for e in entries] == before  # the entries' values are never changed
            cursor = got[:2]
            rows, collisions, amends = impl.pop_rows(pending, heap, limit, Row)
            assert all(type(r) is Row for r in rows) and [r.step for r in rows] == sorted(r.step for r in rows)
            if rows:
                emitted = max(emitted, rows[-1].step)
            trace.append((got, rows, collisions, amends, _pending_state(pending, heap)))
        assert none == []  # rows without payloads share it; nothing is appended to it
        states.append(trace)
    assert states[0] == states[1]
