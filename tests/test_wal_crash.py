"""A writer killed with SIGKILL at random moments loses nothing it acknowledged.

The child appends LOG batches to a WAL (durability "fsync", small segments so that kills also
land in rotations) and prints each seq once ``commit()`` has returned. The parent kills it after
a random delay (sometimes during the child's own recovery), reopens the WAL and checks: every
acknowledged seq is there, every seq at most once and in order, every record decodes and nothing
was reported as damage. The next child continues the same WAL, so recoveries pile up.
"""

import inspect
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import trackside._native as codec
from trackside._native.constants import RECORD_EVENT
from trackside.daemon.wal import WAL, verify

ROUNDS = 25


def entries(seq):
    """The entries of batch ``seq``: their number and size vary, so records straddle writes
    and segments. The child writes them with this function and the parent checks them."""
    return [
        (seq, None, 1_764_215_400_000_000 + seq * 1000 + i, {"loss": seq / 7, "i": i, "tag": "t" * (seq % 11)}, None)
        for i in range(1 + seq % 40)
    ]


CHILD = (
    inspect.getsource(entries)
    + r"""
import sys
import trackside._native as codec
from trackside.daemon.wal import WAL

wal = WAL(sys.argv[1], durability="fsync", segment_size=48 << 10)
last = None
for rec in wal.records():
    if rec.type == 1:  # LOG
        last = rec
seq = codec.decode_batch(last.body)[1] if last else 0
out = sys.stdout
out.write("ready\n")
out.flush()
while True:
    first = seq + 1
    for _ in range(1 + seq % 3):  # one to three batches per commit
        seq += 1
        wal.append(codec.encode_batch(7, seq, entries(seq)))
    if seq % 16 == 0:
        # a big write, which a kill can cut short: a torn tail for the recovery to truncate
        wal.append_event(b"%d" % seq * (1 << 16))
    wal.commit()
    out.write("".join("%d\n" % s for s in range(first, seq + 1)))
    out.flush()
"""
)


@pytest.mark.timeout(180)
def test_sigkill_loses_nothing_acknowledged(tmp_path):
    seed = int(os.environ.get("WAL_CRASH_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    where = f"(seed {seed}; rerun with WAL_CRASH_SEED={seed})"
    directory = tmp_path / "wal"
    acknowledged: list[int] = []
    found: list[int] = []  # the seqs in the WAL, in order
    checked = 0  # the offset up to which the records were checked
    truncated = 0
    for round_ in range(ROUNDS):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory)], stdout=subprocess.PIPE)
        lines: list[bytes] = []
        ready = threading.Event()

        def read(stdout=child.stdout, lines=lines, ready=ready):
            for line in stdout:
                lines.append(line)
                ready.set()

        reader = threading.Thread(target=read)
        reader.start()
        if rng.random() < 0.8:  # kill while it appends and commits
            while not ready.wait(0.05):
                assert child.poll() is None, f"round {round_}: the child died on its own {where}"
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # kill while it starts, opens the WAL and recovers
            time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
        assert child.returncode == -signal.SIGKILL, f"round {round_}: the child died on its own {where}"
        # a line cut by the kill was never an acknowledgement
        acknowledged += [int(line) for line in lines[1:] if line.endswith(b"\n")]

        damage = []
        with WAL(directory, reporter=lambda *a: damage.append(a)) as wal:
            truncated += wal.recovery.bytes_truncated
            assert wal.end_offset >= checked, f"round {round_}: recovery cut into checked records {where}"
            # what earlier rounds checked stays as it was: only the new records need decoding
            records = list(wal.records(checked))
        assert damage == [], f"round {round_}: damage reported after a kill {where}"
        for rec in records:
            checked = rec.end
            if rec.type == RECORD_EVENT:
                assert rec.body == rec.body[: len(rec.body) >> 16] * (1 << 16)
                continue
            writer, seq, got = codec.decode_batch(rec.body)
            assert (writer, got) == (7, entries(seq)), f"round {round_}: batch {seq} decodes wrong {where}"
            found.append(seq)
        # in order, each at most once, and nothing lost: the child continues after the last seq
        assert found == list(range(1, len(found) + 1)), f"round {round_}: seqs out of order {where}"
        # an acknowledged seq is never written twice (a lost one would be reused by the next child)
        assert all(a < b for a, b in zip(acknowledged, acknowledged[1:])), f"round {round_}: seq reused {where}"
        if acknowledged:
            assert acknowledged[-1] <= len(found), (
                f"round {round_}: seq {acknowledged[-1]} was acknowledged but the WAL ends at {len(found)} {where}"
            )
    if os.environ.get("WAL_CRASH_VERBOSE"):
        print(f"{where}: {len(acknowledged)} acknowledged, {len(found)} in the WAL, {truncated} bytes of torn tails")
    assert len(acknowledged) > ROUNDS, f"the children acknowledged too little to test {where}"
    result = verify(directory)
    assert result.damaged_bytes == 0 and result.segments > 1
