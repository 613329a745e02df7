"""The write-ahead log: round trips, offsets, rotation, reopening, durability levels, group commit."""

import os
import stat
import threading

import pytest

from trackside._native.constants import RECORD_EVENT, RECORD_LOG, SEGMENT_HEADER_SIZE
from trackside.daemon.wal import format as walformat
from trackside.daemon.wal import reader as walreader
from trackside.daemon.wal import WAL, Record, RecordTooLarge, WALError, read_records, verify

T0 = 1_764_215_400_000_000


def batch(codec, seq, n=3, writer=1):
    entries = [(seq * 10 + i, None, T0 + seq * 1000 + i, {"loss": seq + i / 10, "epoch": seq}, None) for i in range(n)]
    return entries, codec.encode_batch(writer, seq, entries)


def seqs(codec, records):
    return [codec.decode_batch(r.body)[1] for r in records]


def segment_files(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".wal"))


def test_round_trip(codec, tmp_path):
    with WAL(tmp_path / "wal", codec=codec) as wal:
        expected = []
        for seq in range(1, 6):
            entries, record = batch(codec, seq)
            wal.append(record)
            expected.append((RECORD_LOG, (1, seq, entries)))
        wal.append_event(b"run finished")
        expected.append((RECORD_EVENT, b"run finished"))
        wal.commit()
        got = list(wal.records())
    assert [r.type for r in got] == [t for t, _ in expected]
    for rec, (rtype, value) in zip(got, expected):
        assert (codec.decode_batch(rec.body) if rtype == RECORD_LOG else rec.body) == value
    assert all(isinstance(r, Record) for r in got)


def test_offsets_are_continuous_and_append_returns_the_end(codec, tmp_path):
    with WAL(tmp_path, codec=codec, durability="none") as wal:
        ends, sizes = [], []
        for seq in range(1, 20):
            record = batch(codec, seq, n=seq)[1]
            sizes.append(len(record))
            ends.append(wal.append(record))
        assert wal.end_offset == ends[-1] == sum(sizes)
    got = list(read_records(tmp_path, codec=codec))
    assert [r.end for r in got] == ends
    assert [r.offset for r in got] == [0] + ends[:-1]
    assert [r.end - r.offset for r in got] == sizes


def test_records_from_an_offset(codec, tmp_path):
    with WAL(tmp_path, codec=codec, segment_size=512) as wal:
        for seq in range(1, 40):
            wal.append_batch(1, seq, batch(codec, seq)[0])
        wal.commit()
        all_records = list(wal.records())
        for k in (0, 1, 17, 38):
            assert list(wal.records(all_records[k].end)) == all_records[k + 1 :]
        assert list(wal.records(wal.end_offset)) == []
        assert list(wal.records(all_records[5].offset, stop=all_records[9].offset)) == all_records[5:9]


def test_rotation_by_size(codec, tmp_path):
    size = 600
    with WAL(tmp_path, codec=codec, segment_size=size) as wal:
        for seq in range(1, 101):
            wal.append_batch(1, seq, batch(codec, seq)[0])
            if seq % 7 == 0:
                wal.commit()
        wal.commit()
        end = wal.end_offset
    names = segment_files(tmp_path)
    assert len(names) > 10
    bases = []
    for name in names:
        path = tmp_path / name
        assert path.stat().st_size <= size
        bases.append(int(name[:-4]))
    got = list(read_records(tmp_path, codec=codec))
    assert seqs(codec, got) == list(range(1, 101))
    assert got[-1].end == end
    # every segment starts where the previous one ended, and no record spans two
    starts = {r.offset for r in got}
    assert set(bases) <= starts
    assert verify(tmp_path, codec=codec).segments == len(names)


def test_record_larger_than_a_segment_gets_its_own(codec, tmp_path):
    with WAL(tmp_path, codec=codec, segment_size=256) as wal:
        wal.append_event(b"a" * 10)
        wal.append_event(b"b" * 1000)
        wal.append_event(b"c" * 10)
        wal.commit()
        assert [r.body for r in wal.records()] == [b"a" * 10, b"b" * 1000, b"c" * 10]
    assert len(segment_files(tmp_path)) == 3


def test_reopen_continues_appending_at_the_end(codec, tmp_path):
    with WAL(tmp_path, codec=codec, segment_size=1000) as wal:
        for seq in range(1, 30):
            wal.append_batch(1, seq, batch(codec, seq)[0])
        end, ident = wal.end_offset, wal.ident
    with WAL(tmp_path, codec=codec, segment_size=1000) as wal:
        assert wal.end_offset == wal.durable_offset == end
        assert wal.ident == ident
        assert wal.recovery.bytes_truncated == wal.recovery.bytes_damaged == 0
        assert wal.recovery.segments == len(segment_files(tmp_path))
        for seq in range(30, 60):
            wal.append_batch(1, seq, batch(codec, seq)[0])
        wal.commit()
        assert seqs(codec, wal.records()) == list(range(1, 60))


def test_close_and_reopen(codec, tmp_path):
    wal = WAL(tmp_path, codec=codec)
    wal.append_event(b"x")
    wal.close()
    wal.close()  # idempotent
    assert wal.closed
    with pytest.raises(WALError, match="closed"):
        wal.append_event(b"y")
    assert [r.body for r in WAL(tmp_path, codec=codec).records()] == [b"x"]


@pytest.mark.parametrize("durability", ["fsync", "flush", "none"])
def test_durability_levels(codec, tmp_path, durability):
    wal = WAL(tmp_path, codec=codec, durability=durability)
    segment = tmp_path / segment_files(tmp_path)[0]
    base = wal.stats.fsyncs  # creating the first segment
    end = wal.append_event(b"payload")
    assert wal.commit() == end == wal.durable_offset
    if durability == "none":
        assert segment.stat().st_size == SEGMENT_HEADER_SIZE  # still in memory
        assert wal.stats.writes == 0 and wal.written_offset == 0
    else:
        assert segment.stat().st_size == SEGMENT_HEADER_SIZE + end
        assert wal.stats.writes == 1 and wal.written_offset == end
    assert wal.stats.fsyncs - base == (1 if durability == "fsync" else 0)
    wal.close()
    assert segment.stat().st_size == SEGMENT_HEADER_SIZE + end
    assert wal.stats.fsyncs - base == (1 if durability != "none" else 0)


def test_none_durability_writes_when_the_buffer_is_full(codec, tmp_path):
    with WAL(tmp_path, codec=codec, durability="none") as wal:
        record = codec.frame(RECORD_EVENT, b"z" * 1000)
        for _ in range(walformat.WRITE_THRESHOLD // len(record) + 1):
            wal.append(record)
        assert wal.stats.writes == 1
        assert 0 < wal.written_offset <= wal.end_offset
        assert wal.stats.fsyncs == 1  # the segment's creation only


def test_commit_of_a_durable_offset_returns_at_once(codec, tmp_path):
    with WAL(tmp_path, codec=codec) as wal:
        first = wal.append_event(b"one")
        wal.commit()
        wal.append_event(b"two")
        fsyncs = wal.stats.fsyncs
        assert wal.commit(first) >= first
        assert wal.stats.fsyncs == fsyncs
        with pytest.raises(ValueError, match="past the end"):
            wal.commit(wal.end_offset + 1)


def test_group_commit_from_several_threads(codec, tmp_path):
    threads, per_thread = 8, 150
    wal = WAL(tmp_path, codec=codec, durability="fsync", segment_size=64 << 10)
    commits = []
    errors = []

    def work(writer):
        try:
            for seq in range(1, per_thread + 1):
                end = wal.append_batch(writer, seq, batch(codec, seq, n=2, writer=writer)[0])
                assert wal.commit(end) >= end
                assert wal.durable_offset >= end
                commits.append(end)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(1, threads + 1)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wal.close()
    assert not errors
    assert len(commits) == threads * per_thread
    # several commits shared each fsync
    assert wal.stats.fsyncs < len(commits)
    assert wal.stats.writes < len(commits)
    by_writer = {}
    for rec in read_records(tmp_path, codec=codec):
        writer, seq, _ = codec.decode_batch(rec.body)
        by_writer.setdefault(writer, []).append(seq)
    assert by_writer == {w: list(range(1, per_thread + 1)) for w in range(1, threads + 1)}


def test_appends_continue_while_a_commit_runs(codec, tmp_path):
    wal = WAL(tmp_path, codec=codec)
    stop = threading.Event()
    appended = []

    def appender():
        seq = 0
        while not stop.is_set():
            seq += 1
            appended.append(wal.append_event(b"%d" % seq))

    t = threading.Thread(target=appender)
    t.start()
    for _ in range(20):
        wal.commit()
    stop.set()
    t.join()
    wal.close()
    got = [int(r.body) for r in read_records(tmp_path, codec=codec)]
    assert got == list(range(1, len(appended) + 1))


def test_small_read_chunks(codec, tmp_path, monkeypatch):
    """Records that span the reader's chunk boundaries read back the same."""
    with WAL(tmp_path, codec=codec, durability="none") as wal:
        for seq in range(1, 50):
            wal.append_batch(1, seq, batch(codec, seq, n=seq % 5 + 1)[0])
    whole = list(read_records(tmp_path, codec=codec))
    for chunk in (1, 7, 64):
        monkeypatch.setattr(walreader, "READ_CHUNK", chunk)
        assert list(read_records(tmp_path, codec=codec)) == whole


def test_read_records_while_writing(codec, tmp_path):
    with WAL(tmp_path, codec=codec, segment_size=400) as wal:
        cursor, got = 0, []
        for seq in range(1, 60):
            wal.append_batch(1, seq, batch(codec, seq)[0])
            if seq % 5 == 0:
                wal.commit()
                for rec in read_records(tmp_path, cursor, codec=codec):
                    got.append(rec)
                    cursor = rec.end
        assert seqs(codec, got) == list(range(1, 56))
        assert cursor == wal.durable_offset


def test_verify_counts(codec, tmp_path):
    with WAL(tmp_path, codec=codec, segment_size=500) as wal:
        for seq in range(1, 30):
            wal.append_batch(1, seq, batch(codec, seq)[0])
        wal.commit()
        result = wal.verify()
        assert result.records == 29
        assert result.record_bytes == wal.end_offset
        assert result.segments == len(segment_files(tmp_path))
        assert result.damaged_bytes == result.damage_reports == result.tail_bytes == 0


def test_append_rejects_unframed_bytes(codec, tmp_path):
    with WAL(tmp_path, codec=codec) as wal:
        with pytest.raises(ValueError, match="framed record"):
            wal.append(b"not a record at all")
        record = codec.frame(RECORD_EVENT, b"abc")
        with pytest.raises(ValueError, match="framed record"):
            wal.append(record + record)  # two records are not one
        assert wal.end_offset == 0


def test_record_too_large_is_a_value_error(codec, tmp_path):
    with WAL(tmp_path, codec=codec, max_record_size=100) as wal:
        with pytest.raises(ValueError):
            wal.append_event(b"x" * 200)
        with pytest.raises(RecordTooLarge):
            wal.append_event(b"x" * 200)


def test_directory_is_private_and_locked(codec, tmp_path):
    directory = tmp_path / "wal"
    with WAL(directory, codec=codec) as wal:
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
        assert wal.directory == str(directory)
        with pytest.raises(WALError, match="open for writing elsewhere"):
            WAL(directory, codec=codec)
        assert repr(wal).startswith(f"<WAL {str(directory)!r} open durability=fsync")
    WAL(directory, codec=codec).close()  # the lock went with the close


def test_bad_arguments():
    with pytest.raises(ValueError, match="durability"):
        WAL("/nonexistent/never", durability="sometimes")
    with pytest.raises(ValueError, match="segment_size"):
        WAL("/nonexistent/never", segment_size=10)
    with pytest.raises(ValueError, match="max_record_size"):
        WAL("/nonexistent/never", max_record_size=1 << 40)


def test_a_failed_write_leaves_no_partial_record(codec, tmp_path, monkeypatch):
    """A full disk: the half-written bytes are cut off, the records stay buffered, and the next
    commit writes them once."""
    import errno

    wal = WAL(tmp_path, codec=codec)
    real_write = os.write
    calls = []

    def full_disk(fd, data):
        if fd != wal._fd:
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # a short write, then no space
        raise OSError(errno.ENOSPC, "No space left on device")

    wal.append_event(b"first")
    wal.commit()
    for i in range(5):
        wal.append_event(b"pending %d" % i)
    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(WALError, match="No space left"):
        wal.commit()
    monkeypatch.setattr(os, "write", real_write)
    assert len(calls) == 2
    segment = tmp_path / segment_files(tmp_path)[0]
    assert segment.stat().st_size == SEGMENT_HEADER_SIZE + 21  # only "first"
    wal.commit()
    wal.close()
    reports = []
    bodies = [r.body for r in read_records(tmp_path, reporter=lambda *a: reports.append(a), codec=codec)]
    assert bodies == [b"first"] + [b"pending %d" % i for i in range(5)]
    assert reports == []


def test_a_failed_fsync_fails_the_wal(codec, tmp_path, monkeypatch):
    """After a failed fsync the kernel may have dropped the pages: the WAL refuses to go on."""
    import errno

    wal = WAL(tmp_path, codec=codec)
    wal.append_event(b"x")

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(WALError, match="fsync failed"):
        wal.commit()
    monkeypatch.undo()
    with pytest.raises(WALError, match="must be reopened"):
        wal.append_event(b"y")
    with pytest.raises(WALError, match="must be reopened"):
        wal.commit()
    assert "failed" in repr(wal)
    wal.close()
    with WAL(tmp_path, codec=codec) as wal:  # reopening recovers what reached the file
        assert [r.body for r in wal.records()] == [b"x"]
