"""The write-ahead log: sustained append throughput at each durability level, and recovery time.

Throughput: each thread appends one pre-encoded LOG record (64 entries of 10 floats, as a client
batch) and commits it, again and again, to a WAL in a real directory; several threads share
commits (group commit). Encoding is left out: ``bench_codec`` measures it. A case stops after ``--seconds`` or 1 GiB.

Recovery: a WAL of ``--recovery-gb`` (whole 64 MiB segments) is built, flushed and evicted from
the page cache, then opened (which checks every header and scans only the last segment, here a
full one) and verified (a full scan of every record's checksum), cold and then warm.

    python bench/bench_wal.py [--json] [--seconds 2] [--recovery-gb 1] [--dir /tmp]
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time

from _common import emit, parser

import trackside._native as native
from trackside._native import _twin
from trackside._native.constants import SEGMENT_HEADER_SIZE
from trackside.daemon.wal import WAL, verify

ENTRIES_PER_RECORD = 64
FLOATS_PER_ENTRY = 10
# A throughput case stops early at this size, so the page-cache-speed levels do not fill the disk.
MAX_BYTES = 1 << 30
SEGMENT_SIZE = 64 << 20  # the WAL's default


def make_record(codec, writer: int) -> bytes:
    rng = random.Random(writer)
    t0 = 1_764_215_400_000_000
    entries = [
        (step, None, t0 + step * 1000, {f"metric/{k}": rng.random() for k in range(FLOATS_PER_ENTRY)}, None)
        for step in range(ENTRIES_PER_RECORD)
    ]
    return codec.encode_batch(writer, 1, entries)


def throughput(codec, root: str, durability: str, threads: int, seconds: float) -> dict:
    directory = tempfile.mkdtemp(prefix="wal-", dir=root)
    try:
        wal = WAL(directory, durability=durability, codec=codec)
        base = wal.stats.fsyncs, wal.stats.writes
        counts = [0] * threads
        start = threading.Barrier(threads + 1)
        deadline = [0.0]

        def work(k: int) -> None:
            record = make_record(codec, k + 1)
            append, commit = wal.append, wal.commit
            start.wait()
            n = 0
            while True:
                for _ in range(16):
                    commit(append(record))
                n += 16
                if time.perf_counter() >= deadline[0] or wal.end_offset >= MAX_BYTES:
                    break
            counts[k] = n

        pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        t0 = time.perf_counter()
        deadline[0] = t0 + seconds
        start.wait()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        fsyncs, writes = wal.stats.fsyncs - base[0], wal.stats.writes - base[1]
        nbytes = wal.end_offset
        wal.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    records = sum(counts)
    return {
        "durability": durability,
        "threads": threads,
        "records/s": records / elapsed,
        "entries/s": records * ENTRIES_PER_RECORD / elapsed,
        "MB/s": nbytes / elapsed / 1e6,
        "writes/s": writes / elapsed,
        "fsyncs/s": fsyncs / elapsed,
        "commits/fsync": records / fsyncs if fsyncs else None,
    }


def evict(directory: str) -> None:
    """Drop the WAL's files from the page cache (they are clean: fsynced), for a cold read."""
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def recovery(codec, root: str, gib: float) -> dict:
    directory = tempfile.mkdtemp(prefix="wal-recovery-", dir=root)
    try:
        record = make_record(codec, 1)
        size = int(gib * (1 << 30))
        # Whole segments, so that the last one is full: opening then scans the most it ever does.
        per_segment = (SEGMENT_SIZE - SEGMENT_HEADER_SIZE) // len(record)
        count = -(-size // (per_segment * len(record))) * per_segment
        t0 = time.perf_counter()
        with WAL(directory, durability="none", segment_size=SEGMENT_SIZE, codec=codec) as wal:
            append = wal.append
            for _ in range(count):
                append(record)
        evict(directory)  # fsyncs: the build time includes reaching the disk
        build = time.perf_counter() - t0
        nbytes = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))
        out = {"recovery_bytes": nbytes, "segments": len(os.listdir(directory)), "build_s": build}
        for state in ("cold", "warm"):
            if state == "cold":
                evict(directory)
            t0 = time.perf_counter()
            wal = WAL(directory, segment_size=SEGMENT_SIZE, codec=codec)
            out[f"open_{state}_s"] = time.perf_counter() - t0
            out["open_scanned_records"] = wal.recovery.records
            wal.close()
            if state == "cold":
                evict(directory)
            t0 = time.perf_counter()
            result = verify(directory, codec=codec)
            seconds = time.perf_counter() - t0
            assert result.damaged_bytes == 0 and result.record_bytes >= size
            out[f"verify_{state}_s"] = seconds
            out[f"verify_{state}_GBps"] = nbytes / seconds / 1e9
        out["records"] = result.records
        return out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.0, help="per throughput case (default 2)")
    p.add_argument("--threads", default="1,4", help="thread counts, comma-separated (default 1,4)")
    p.add_argument("--recovery-gb", type=float, default=1.0, help="size of the recovery WAL in GiB (0: skip)")
    p.add_argument("--dir", default=None, help="where the temporary WALs go (default: the system temp dir)")
    p.add_argument(
        "--codec",
        choices=["default", "python"],
        default="default",
        help="parse/encode with the default codec or the pure-Python twin",
    )
    args = p.parse_args()
    codec = _twin if args.codec == "python" else native

    rows = []
    for durability in ("none", "flush", "fsync"):
        for threads in (int(t) for t in args.threads.split(",")):
            rows.append(throughput(codec, args.dir, durability, threads, args.seconds))
    figures = {
        "codec": codec.IMPLEMENTATION,
        "record_bytes": len(make_record(codec, 1)),
        "entries_per_record": ENTRIES_PER_RECORD,
        "throughput": rows,
    }
    notes = [
        "",
        f"record: {ENTRIES_PER_RECORD} entries of {FLOATS_PER_ENTRY} floats, {figures['record_bytes']:,} bytes, "
        f"pre-encoded; each thread appends and commits one record at a time; codec {codec.IMPLEMENTATION}.",
    ]
    if args.recovery_gb > 0:
        rec = recovery(codec, args.dir, args.recovery_gb)
        figures["recovery"] = rec
        notes += [
            "",
            f"recovery of a {rec['recovery_bytes'] / 2**30:.2f} GiB WAL ({rec['segments']} segments, "
            f"{rec['records']:,} records; built in {rec['build_s']:.1f} s incl. fsync):",
            f"  open (checks every header, scans the last segment: {rec['open_scanned_records']:,} records): "
            f"cold {rec['open_cold_s'] * 1e3:.0f} ms, warm {rec['open_warm_s'] * 1e3:.0f} ms",
            f"  verify (every record's checksum): cold {rec['verify_cold_s']:.2f} s = "
            f"{rec['verify_cold_GBps']:.2f} GB/s, warm {rec['verify_warm_s']:.2f} s = {rec['verify_warm_GBps']:.2f} GB/s",
        ]
    notes += [
        "",
        "caveats: one small VM disk; 'cold' evicts the files with posix_fadvise(DONTNEED), which the",
        "device's own cache ignores; 'none' and 'flush' measure the page cache, not the disk; with",
        "several threads the GIL, not the disk, bounds 'none'.",
    ]
    emit(
        args,
        "WAL append throughput and recovery",
        figures,
        rows,
        ["durability", "threads", "records/s", "entries/s", "MB/s", "writes/s", "fsyncs/s", "commits/fsync"],
        notes,
    )


if __name__ == "__main__":
    main()
