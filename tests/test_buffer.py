"""The send buffer and its batches: bounded by ``max_buffer``, a full buffer makes ``log()`` drop
and count (``buffer_policy="drop"``) or wait (``"block"``), and the batches ``log()`` frames
itself stay bounded while the daemon does not read (here: paused with SIGSTOP)."""

import os
import sys
import warnings

import trackside

from conftest import history, wait_until


def _pause_daemon(ts):
    import signal

    from trackside.contracts import discovery

    pid = discovery.read_info(ts.daemon_dir)["pid"]
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


def test_full_buffer_drops_and_counts_under_drop_policy(ts):
    run = trackside.init(project="p", settings={"max_buffer": 2000, "buffer_policy": "drop", "flush_interval": 0.001})
    run.log({"a": 0})
    assert run._client.flush()
    resume = _pause_daemon(ts)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(1, 2000):
                run.log({"a": i, "pad": "x" * 50})
                if i % 100 == 0:
                    import time

                    time.sleep(0.01)  # let the flusher frame batches that stay unacknowledged
        assert run.dropped > 0
        assert len([w for w in caught if "dropping entries" in str(w.message)]) == 1
    finally:
        resume()
    run.finish()
    stored = len(history(run))
    assert stored + run.dropped == 2000


def _waiting_for_room(thread) -> bool:
    """Whether ``thread`` is inside the send buffer's wait for room (``Client._wait_for_room``)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "_wait_for_room":
            return True
        frame = frame.f_back
    return False


def test_full_buffer_blocks_log_until_the_daemon_catches_up(ts):
    """Proves that log() waits while the buffer is full: with the daemon paused (it acknowledges
    nothing) the logging thread is seen parked in the buffer's wait for room, short of its last
    entry; once the daemon reads again it goes on, and every entry is stored."""
    import threading
    import time

    run = trackside.init(project="p", settings={"max_buffer": 2000, "flush_interval": 0.001})
    run.log({"a": 0})
    assert run._client.flush()
    resume = _pause_daemon(ts)
    done = threading.Event()

    def logger():
        for i in range(1, 500):
            run.log({"a": i, "pad": "x" * 50})
            if i % 50 == 0:
                time.sleep(0.01)
        done.set()

    t = threading.Thread(target=logger)
    t.start()
    try:
        wait_until(lambda: _waiting_for_room(t), timeout=30)
        assert not done.is_set(), "log() should wait while the buffer is full"
    finally:
        resume()
        t.join(60)
    assert done.is_set()
    run.finish()
    assert [r["a"] for r in history(run)] == list(range(500))


def test_batches_stay_bounded_while_the_daemon_is_paused(ts):
    """While the daemon does not read, log() frames batches itself: none outgrows the WAL's
    record limit, and all of them are stored once the daemon reads again."""
    run = trackside.init(project="p")
    run.log({"a": -1})
    assert run._client.flush()
    resume = _pause_daemon(ts)
    try:
        for i in range(200_000):
            run.log({"a": i, "b": i * 0.5, "c": "x" * 40})
        biggest = max(len(r) for r in run._client._unacked.values())
        assert biggest < 16 << 20
    finally:
        resume()
    run.finish()
    rows = history(run)
    assert len(rows) == 200_001 and rows[-1]["a"] == 199_999


def test_log_frames_each_full_batch_itself(ts):
    """A batch is framed by the log() call that fills it, not when the flusher gets round to
    it (a thread that logs flat out keeps the flusher from the GIL): no batch holds more than
    batch_entries entries, so the daemon merges and stores in steps of a bounded size."""
    from trackside import _native as codec
    from trackside._native.constants import RECORD_LOG

    run = trackside.init(project="p")
    run.log({"a": -1})
    assert run._client.flush()
    resume = _pause_daemon(ts)
    try:
        for i in range(30_000):
            run.log({"a": i, "b": i * 0.5})
        sizes = []
        for record in list(run._client._unacked.values()):
            _, rtype, start, end = codec.parse_record(record)
            if rtype == RECORD_LOG:
                sizes.append(len(codec.decode_batch(memoryview(record)[start:end])[2]))
        assert sum(sizes) >= 30_000 - run._client.batch_entries  # what is not framed yet is in the encoder
        assert max(sizes) <= run._client.batch_entries
    finally:
        resume()
    run.finish()
    assert len(history(run)) == 30_001
