"""One test per kind of damage: what is reported (offset, bytes dropped, reason) and which
records survive. Damage is reported, never raised; only a bad segment header raises."""

import os
import re
import struct
import zlib

import pytest

from trackside._native.constants import (
    MAX_RECORD_SIZE,
    PARSE_REASONS,
    PARSE_BAD_CHECKSUM,
    PARSE_BAD_LENGTH,
    PARSE_BAD_MAGIC,
    RECORD_EVENT,
    SEGMENT_HEADER_SIZE as H,
    mask_crc,
)
from trackside.daemon import wal as walmod
from trackside.daemon.wal import format as walformat
from trackside.daemon.wal import reader as walreader
from trackside.daemon.wal import WAL, WALFormatError, read_records, verify

CHECKSUM = PARSE_REASONS[PARSE_BAD_CHECKSUM]
BAD_LENGTH = PARSE_REASONS[PARSE_BAD_LENGTH]
NO_MARKER = PARSE_REASONS[PARSE_BAD_MAGIC]


class Damage:
    """A WAL of five EVENT records ``record 0`` .. ``record 4`` in one segment, and tools to
    flip, shrink and zero its bytes (leveldb's log_test fixture)."""

    def __init__(self, codec, directory, count=5):
        self.codec = codec
        self.dir = directory
        self.bodies = [b"record %d " % i + bytes(range(i * 10, i * 10 + 40)) for i in range(count)]
        with WAL(directory, codec=codec) as wal:
            self.offsets = []
            for body in self.bodies:
                self.offsets.append(wal.end_offset)
                wal.append_event(body)
            self.end = wal.end_offset
        self.path = os.path.join(directory, sorted(os.listdir(directory))[0])
        self.reports = []

    def size(self, i):
        return (self.offsets[i + 1] if i + 1 < len(self.offsets) else self.end) - self.offsets[i]

    def pos(self, i):
        """File position of record ``i``."""
        return H + self.offsets[i]

    def patch(self, pos, data):
        with open(self.path, "r+b") as f:
            f.seek(pos)
            f.write(data)

    def flip(self, pos):
        with open(self.path, "r+b") as f:
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0x40]))

    def shrink(self, nbytes):
        os.truncate(self.path, os.path.getsize(self.path) - nbytes)

    def report(self, *args):
        self.reports.append(args)

    def read(self):
        return [r.body for r in read_records(self.dir, reporter=self.report, codec=self.codec)]

    def open(self, **kw):
        return WAL(self.dir, codec=self.codec, reporter=self.report, **kw)

    def without(self, *dropped):
        return [b for i, b in enumerate(self.bodies) if i not in dropped]


@pytest.fixture
def damage(codec, tmp_path):
    return Damage(codec, tmp_path / "wal")


def test_checksum_mismatch(damage):
    damage.flip(damage.pos(2) + 20)  # a body byte of record 2
    assert damage.read() == damage.without(2)
    assert damage.reports == [(damage.path, damage.offsets[2], damage.size(2), CHECKSUM)]
    # recovery reports it too, leaves it in place and keeps what follows
    damage.reports.clear()
    with damage.open() as wal:
        assert wal.recovery.bytes_damaged == damage.size(2)
        assert wal.recovery.bytes_truncated == 0
        assert wal.end_offset == damage.end
    assert damage.reports == [(damage.path, damage.offsets[2], damage.size(2), CHECKSUM)]


def test_checksum_mismatch_in_the_last_record_is_a_torn_tail(damage):
    damage.flip(damage.pos(4) + 30)
    assert damage.read() == damage.without(4)
    assert damage.reports == []
    with damage.open() as wal:
        assert wal.recovery.bytes_truncated == damage.size(4)
        assert wal.end_offset == damage.offsets[4]
    assert os.path.getsize(damage.path) == damage.pos(4)


def test_truncated_header(damage, tmp_path):
    # a record header cut off at the end of the file: the clean end
    damage.shrink(damage.size(4) - 7)
    assert damage.read() == damage.without(4)
    assert damage.reports == []
    with damage.open() as wal:
        assert wal.recovery.bytes_truncated == 7
        wal.append_event(b"after")
    assert damage.read() == damage.without(4) + [b"after"]
    assert damage.reports == []


def test_truncated_header_of_a_segment(codec, tmp_path):
    # The last segment shorter than its header (a crash while rotating): re-initialized.
    with WAL(tmp_path, codec=codec, segment_size=200) as wal:
        for i in range(10):
            wal.append_event(b"%d" % i * 30)
        end, ident = wal.end_offset, wal.ident
    next_segment = tmp_path / f"{end:020d}.wal"
    next_segment.write_bytes(walformat.pack_header(ident, end)[:20])
    with WAL(tmp_path, codec=codec, segment_size=200) as wal:
        assert wal.end_offset == end
        assert next_segment.stat().st_size == H
        wal.append_event(b"after")
    bodies = [r.body for r in read_records(tmp_path, codec=codec)]
    assert bodies == [b"%d" % i * 30 for i in range(10)] + [b"after"]
    # An earlier segment shorter than its header is not a crash: it is an error.
    first = sorted(tmp_path.iterdir())[0]
    first.write_bytes(first.read_bytes()[:10])
    with pytest.raises(WALFormatError, match=re.escape(f"{first}: 10 bytes, shorter than the 48-byte")):
        WAL(tmp_path, codec=codec)
    with pytest.raises(WALFormatError, match=re.escape(str(first))):
        list(read_records(tmp_path, codec=codec))


def test_truncated_payload_at_end_is_clean_end(damage):
    damage.shrink(5)
    assert damage.read() == damage.without(4)
    assert damage.reports == []
    result = verify(damage.dir, damage.report, codec=damage.codec)
    assert (result.records, result.tail_bytes, result.damaged_bytes) == (4, damage.size(4) - 5, 0)
    with damage.open() as wal:
        assert wal.recovery.bytes_truncated == damage.size(4) - 5
        assert wal.recovery.records == 4
        assert wal.end_offset == damage.offsets[4]
        wal.append_event(b"after")
    assert damage.read() == damage.without(4) + [b"after"]
    assert damage.reports == []


def test_bad_length_in_middle_skips_and_reports(damage):
    damage.patch(damage.pos(1) + 8, struct.pack("<I", MAX_RECORD_SIZE + 1))
    assert damage.read() == damage.without(1)
    assert damage.reports == [(damage.path, damage.offsets[1], damage.size(1), BAD_LENGTH)]


def test_bad_length_running_past_the_end_in_middle_skips_and_reports(damage):
    damage.patch(damage.pos(1) + 8, struct.pack("<I", 100_000))
    assert damage.read() == damage.without(1)
    assert damage.reports == [(damage.path, damage.offsets[1], damage.size(1), walformat.RUNS_PAST)]
    damage.reports.clear()
    with damage.open() as wal:  # not mistaken for a torn tail
        assert wal.end_offset == damage.end
        assert wal.recovery.bytes_truncated == 0
    assert len(damage.reports) == 1


def test_bad_length_too_short_is_a_checksum_mismatch(damage):
    damage.patch(damage.pos(1) + 8, struct.pack("<I", 3))
    assert damage.read() == damage.without(1)
    assert damage.reports == [(damage.path, damage.offsets[1], damage.size(1), CHECKSUM)]


def test_zeroed_block(damage):
    # from the middle of record 1 to the middle of record 2: both are lost, 3 and 4 survive
    start, stop = damage.pos(1) + 30, damage.pos(2) + 30
    damage.patch(start, bytes(stop - start))
    assert damage.read() == damage.without(1, 2)
    assert damage.reports == [(damage.path, damage.offsets[1], damage.size(1) + damage.size(2), CHECKSUM)]


def test_zeroed_block_at_record_start(damage):
    damage.patch(damage.pos(2), bytes(damage.size(2)))
    assert damage.read() == damage.without(2)
    assert damage.reports == [(damage.path, damage.offsets[2], damage.size(2), NO_MARKER)]


def test_zeroed_tail_is_truncated(damage):
    with open(damage.path, "ab") as f:
        f.write(bytes(4096))  # a filesystem that extended the file but lost the data
    assert damage.read() == damage.bodies
    assert damage.reports == []
    with damage.open() as wal:
        assert wal.recovery.bytes_truncated == 4096
        wal.append_event(b"after")
    assert damage.read() == damage.bodies + [b"after"]
    assert damage.reports == []


def test_garbage_between_records(damage, monkeypatch):
    with open(damage.path, "r+b") as f:
        data = f.read()
        cut = damage.pos(3)
        f.seek(0)
        f.write(data[:cut] + b"\xd3\x7e\x5a" + b"junk" * 10 + data[cut:])
    for chunk in (walformat.READ_CHUNK, 5):  # also with the marker search crossing chunk boundaries
        monkeypatch.setattr(walreader, "READ_CHUNK", chunk)
        damage.reports.clear()
        assert damage.read() == damage.bodies
        assert damage.reports == [(damage.path, damage.offsets[3], 43, NO_MARKER)]


def test_cut_record_in_an_earlier_segment_is_damage(codec, tmp_path):
    with WAL(tmp_path, codec=codec, segment_size=200) as wal:
        for i in range(6):
            wal.append_event(b"%d" % i * 60)
    first = str(sorted(tmp_path.iterdir())[0])
    os.truncate(first, os.path.getsize(first) - 10)
    reports = []
    bodies = [r.body for r in read_records(tmp_path, reporter=lambda *a: reports.append(a), codec=codec)]
    assert len(bodies) == 5 and b"1" * 60 not in bodies
    ((path, offset, nbytes, reason),) = reports
    assert (path, nbytes, reason) == (first, 60 + 16 - 10, walformat.CUT_OFF)


def rewrite_header(path, **fields):
    with open(path, "r+b") as f:
        head = bytearray(f.read(H))
        if "version" in fields:
            struct.pack_into("<H", head, 8, fields["version"])
        if "magic" in fields:
            head[0:8] = fields["magic"]
        if "base" in fields:
            struct.pack_into("<Q", head, 32, fields["base"])
        if fields.get("fix_crc", True):
            struct.pack_into("<I", head, 44, mask_crc(zlib.crc32(head[:44])))
        f.seek(0)
        f.write(head)


def test_bad_segment_magic_names_file(damage):
    rewrite_header(damage.path, magic=b"GIF89a\0\0")
    with pytest.raises(WALFormatError, match=re.escape(f"{damage.path}: not a trackside WAL segment (bad magic")):
        damage.open()
    with pytest.raises(WALFormatError, match="bad magic"):
        damage.read()


def test_bad_segment_version_names_file(damage):
    rewrite_header(damage.path, version=2)
    with pytest.raises(WALFormatError, match=re.escape(f"{damage.path}: unsupported WAL format version 2")):
        damage.open()
    with pytest.raises(WALFormatError, match="version 2"):
        damage.read()


def test_bad_segment_header_checksum_names_file(damage):
    damage.flip(20)  # an ident byte
    with pytest.raises(WALFormatError, match=re.escape(f"{damage.path}: segment header checksum mismatch")):
        damage.open()


def test_segment_base_offset_disagrees_with_file_name(damage):
    rewrite_header(damage.path, base=4096)
    with pytest.raises(
        WALFormatError, match=re.escape(f"{damage.path}: the header says base offset 4096 but the file name says 0")
    ):
        damage.open()


def test_segment_from_another_wal(codec, tmp_path):
    with WAL(tmp_path / "a", codec=codec, segment_size=100) as a:
        a.append_event(b"a" * 50)
        a.append_event(b"a" * 50)
    with WAL(tmp_path / "b", codec=codec, segment_size=100) as b:
        b.append_event(b"b" * 50)
        b.append_event(b"b" * 50)
    second = sorted(os.listdir(tmp_path / "a"))[1]
    os.replace(tmp_path / "b" / second, tmp_path / "a" / second)
    with pytest.raises(
        WALFormatError, match=re.escape(f"{tmp_path / 'a' / second}: the segment belongs to another WAL")
    ):
        WAL(tmp_path / "a", codec=codec)
    with pytest.raises(WALFormatError, match="another WAL"):
        list(read_records(tmp_path / "a", codec=codec))


def test_empty_segment(codec, tmp_path):
    # A segment holding only its header reads as nothing, and appending continues in it.
    WAL(tmp_path, codec=codec).close()
    assert list(read_records(tmp_path, codec=codec)) == []
    assert verify(tmp_path, codec=codec).segments == 1
    # A zero-byte last segment (created, then the crash): re-initialized with the WAL's ident.
    with WAL(tmp_path, codec=codec, segment_size=100) as wal:
        wal.append_event(b"x" * 60)
        wal.append_event(b"y" * 60)
        end, ident = wal.end_offset, wal.ident
    last = tmp_path / f"{end:020d}.wal"
    last.write_bytes(b"")
    reports = []
    with WAL(tmp_path, codec=codec, reporter=lambda *a: reports.append(a)) as wal:
        assert (wal.end_offset, wal.ident) == (end, ident)
        assert wal.recovery.records == 0
        wal.append_event(b"z")
    assert [r.body for r in read_records(tmp_path, codec=codec)] == [b"x" * 60, b"y" * 60, b"z"]
    assert last.stat().st_size == H + 17
    assert reports == []


def test_record_larger_than_limit_writes_nothing(codec, tmp_path):
    with WAL(tmp_path, codec=codec, max_record_size=1024) as wal:
        wal.append_event(b"small")
        before = (wal.end_offset, wal.stats.writes)
        with pytest.raises(walmod.RecordTooLarge) as info:
            wal.append(codec.frame(RECORD_EVENT, b"x" * 2000))
        assert "2016 bytes" in str(info.value) and "1024" in str(info.value)
        assert (wal.end_offset, wal.stats.writes) == before
        wal.commit()
        assert [r.body for r in wal.records()] == [b"small"]


def test_recovery_truncates_a_torn_tail_and_appending_works(damage):
    with open(damage.path, "ab") as f:
        f.write(damage.codec.frame(RECORD_EVENT, b"torn away")[:20])
    with damage.open() as wal:
        assert wal.recovery.bytes_truncated == 20
        assert wal.end_offset == damage.end
        wal.append_event(b"next")
        wal.commit()
        assert [r.body for r in wal.records()] == damage.bodies + [b"next"]
    with damage.open() as wal:
        assert wal.recovery.bytes_truncated == 0
    assert damage.reports == []
