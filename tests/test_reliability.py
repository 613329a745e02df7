"""Promises under attack: nothing acknowledged is lost, nothing is stored twice, a bad input
costs one error and never the run. Real daemons and trainers, killed with SIGKILL at the
moments that once broke these promises (or the trainer stopped by SIGTERM, the disk full);
each test is named after the failure it guards."""

import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import trackside
from trackside.contracts import discovery
from trackside._native import constants as C
from trackside._native import frame
from trackside.contracts.protocol import LENGTH, PROTOCOL_VERSION, Batch, Hello, Refused, Welcome, pack, server_decoder

from conftest import daemon_pid, run_script, stop_daemon, wait_until


def _read_frame(sock):
    head = _recv(sock, 4)
    (n,) = LENGTH.unpack(head)
    return server_decoder.decode(_recv(sock, n))


def _recv(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed")
        buf += chunk
    return buf


def _raw_writer(ts, run_id, writer, run_info=None):
    """A hand-made writer connection that says hello for ``run_id``; returns the socket and the
    daemon's answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(discovery.socket_path(ts.daemon_dir))
    info = {"project": "p", "dest": "local"} if run_info is None else run_info
    sock.sendall(pack(Hello(PROTOCOL_VERSION, run_id, writer, os.getpid(), 1, ts.root, info)))
    return sock, _read_frame(sock)


def _kill_daemon(ts) -> None:
    pid = daemon_pid(ts)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not discovery.pid_alive(pid))


# -- 1. a daemon that dies between hello and welcome ------------------------------------------------


def test_daemon_dying_after_hello_is_retried_and_loses_nothing(ts):
    """A listener that reads the hello and closes (a daemon killed at that moment) once killed
    the flusher thread: log() went on, nothing arrived anywhere. Now the writer retries until a
    daemon answers, and every row is stored."""
    run = trackside.init(project="p", settings={"durability": "fsync"})
    for i in range(100):
        run.log({"x": float(i)})
    run.flush()
    path = discovery.socket_path(ts.daemon_dir)
    # a false daemon takes over the socket's path while the real one still runs, then the real
    # one dies: the writer's reconnects meet the false one first
    os.unlink(path)
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fake.bind(path)
    fake.listen(8)
    hellos = []

    def serve():
        for _ in range(3):
            conn, _ = fake.accept()
            try:
                conn.settimeout(10)
                (n,) = LENGTH.unpack(_recv(conn, 4))
                hellos.append(_recv(conn, n))
            finally:
                conn.close()  # after the hello, before any answer
        os.unlink(path)  # gone: the next reconnect starts a real daemon
        fake.close()

    t = threading.Thread(target=serve)
    t.start()
    _kill_daemon(ts)
    for i in range(100, 300):
        run.log({"x": float(i)})
        if i % 50 == 0:
            time.sleep(0.1)
    t.join(30)
    assert not t.is_alive() and len(hellos) == 3
    run.finish()
    rows = trackside.Api().run(run.id).history(keys=["x"])
    assert [r["x"] for r in rows] == [float(i) for i in range(300)]


def test_a_flusher_that_cannot_go_on_fails_the_next_log_and_finish(ts):
    """When retrying cannot help (the daemon refuses the run), the writer says so on the next
    log() and on finish(), instead of a dead thread behind a live API."""
    run = trackside.init(project="p", settings={"reconnect_timeout": 2.0})
    run.log({"x": 1.0})
    run.flush()
    # the socket's path now leads to a listener that answers every hello with a refusal
    path = discovery.socket_path(ts.daemon_dir)
    os.unlink(path)
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fake.bind(path)
    fake.listen(8)
    _kill_daemon(ts)
    stop = threading.Event()

    def serve():
        fake.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = fake.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                (n,) = LENGTH.unpack(_recv(conn, 4))
                _recv(conn, n)
                conn.sendall(pack(Refused("this host takes no runs today")))

    t = threading.Thread(target=serve)
    t.start()
    try:
        with pytest.raises(trackside.TransportError, match="no runs today"):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                run.log({"x": 2.0})
                time.sleep(0.01)
        with pytest.raises(trackside.TransportError, match="no runs today"):
            run.finish()
    finally:
        stop.set()
        t.join(10)
        fake.close()
        os.unlink(path)


# -- 2. console lines and WAL replay ---------------------------------------------------------------

_CONSOLE_SCRIPT = r"""
import os, signal, sys, time
import trackside
from trackside.contracts import discovery
run = trackside.init(project="p", settings={"durability": "fsync"})
for i in range(20):
    run.log({"x": float(i)}, step=i)
    print(f"line {i}", flush=True)
run.flush()
api = trackside.Api()
deadline = time.monotonic() + 20
while len(api.run(run.id).console().splitlines()) < 20:  # stored by the first daemon
    assert time.monotonic() < deadline, "the first 20 lines were not stored"
    time.sleep(0.05)
pid = discovery.read_info()["pid"]
os.kill(pid, signal.SIGKILL)
while discovery.pid_alive(pid):
    time.sleep(0.01)
for i in range(20, 40):
    run.log({"x": float(i)}, step=i)
    print(f"line {i}", flush=True)
run.finish()
print("RUN", run.id, file=sys.stderr)
"""


def test_console_lines_are_stored_once_across_a_replay(ts):
    p = run_script(_CONSOLE_SCRIPT, ts.env)
    run_id = p.stderr.split("RUN ")[1].split()[0]
    r = trackside.Api().run(run_id)
    assert [x for x in r.console().splitlines() if x.startswith("line")] == [f"line {i}" for i in range(40)]
    assert [row["x"] for row in r.history(keys=["x"])] == [float(i) for i in range(40)]


# -- 3. a WAL damaged in the middle ------------------------------------------------------------------


def _damage_middle(run_dir: str) -> None:
    segments = sorted(glob.glob(os.path.join(run_dir, "wal", "*.wal")))
    assert segments, os.listdir(os.path.join(run_dir, "wal"))
    path = segments[0]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        chunk = f.read(64)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_a_run_with_a_damaged_wal_resumes_and_reports_the_damage(ts):
    run = trackside.init(project="p")
    for i in range(2000):
        run.log({"x": float(i)})
        if i % 100 == 99:
            run.flush()  # a record each: the damage lands between records that stay whole
    run.finish()
    stop_daemon_now(ts)
    _damage_middle(run.dir)
    again = trackside.init(id=run.id, resume="must")
    for i in range(10):
        again.log({"y": float(i)})
    # while the run is live, `trackside status` shows the damage its stream found
    out = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "status"], env=ts.env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert f"run {run.id}" in out.stdout and "WAL damage in" in out.stdout, out.stdout
    again.finish()
    r = trackside.Api().run(run.id)
    assert [row["y"] for row in r.history(keys=["y"])] == [float(i) for i in range(10)]
    assert len(r.history(keys=["x"])) == 2000  # stored before the damage happened
    damage = r.metadata.get("wal_damage")
    assert damage and damage[0]["bytes"] > 0 and damage[0]["reason"], r.metadata


def stop_daemon_now(ts) -> None:
    from conftest import stop_daemon

    stop_daemon(ts.daemon_dir)


# -- 4. one oversized value ----------------------------------------------------------------------------


def test_an_oversized_value_is_refused_and_leaves_nothing_behind(ts):
    run = trackside.init(project="p")
    run.log({"x": 1.0})
    with pytest.raises(ValueError, match="limit"):
        run.log({"huge": "y" * (70 << 20)})
    run.log({"x": 2.0})
    run.log({"note": "small"})
    run.flush()
    run.finish()
    rows = trackside.Api().run(run.id).history()
    assert [r.get("x") for r in rows] == [1.0, 2.0, None]
    assert all("huge" not in r for r in rows)


def test_an_oversized_config_is_refused_and_leaves_nothing_behind(ts):
    run = trackside.init(project="p")
    run.log({"x": 1.0})
    with pytest.raises(ValueError, match="limit"):
        run.config["blob"] = "z" * (70 << 20)
    run.config["lr"] = 0.1
    run.log({"x": 2.0})
    run.finish()
    r = trackside.Api().run(run.id)
    assert [row["x"] for row in r.history(keys=["x"])] == [1.0, 2.0]
    assert r.config.get("lr") == 0.1


# -- 6. finish() of the last live writer ----------------------------------------------------------------

_RANK_SCRIPT = r"""
import os, sys, time
import trackside
run = trackside.init(id=sys.argv[1], project="p")
run.log({"r1": 1.0}, step=0)
run.flush()
print("LOGGED", flush=True)
time.sleep(600)
"""


def test_finish_waits_for_rows_when_another_writer_was_killed(ts):
    run = trackside.init(project="p")
    run.log({"x": 0.0}, step=0)
    run.flush()
    env = dict(ts.env, TRACKSIDE_RUN_ID=run.id)
    rank = subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, run.id], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert rank.stdout.readline().strip() == "LOGGED"
        rank.kill()
        rank.wait(10)
        for i in range(1, 200):
            run.log({"x": float(i)}, step=i)
        run.finish()
        rows = trackside.Api().run(run.id).history(keys=["x"])  # right after finish: all of them
        assert len(rows) == 200
    finally:
        if rank.poll() is None:
            rank.kill()
        rank.stdout.close()
        rank.wait()


def test_an_undecodable_batch_never_holds_back_other_writers(ts):
    run = trackside.init(project="p")
    run.log({"x": 0.0})
    run.flush()
    sock, answer = _raw_writer(ts, run.id, writer=12345)
    try:
        assert isinstance(answer, Welcome)
        # a LOG record with a valid checksum, its writer and seq right, and garbage after them
        body = bytes([0xB9, 0x60, 1]) + b"\xff" * 64
        sock.sendall(pack(Batch(1, frame(C.RECORD_LOG, body))))
        for i in range(1, 2000):
            run.log({"x": float(i)})
        run.finish()
        rows = trackside.Api().run(run.id).history(keys=["x"])
        assert len(rows) == 2000
    finally:
        sock.close()
    status = trackside.transport.daemon_status(discovery.read_info(ts.daemon_dir))
    assert discovery.pid_alive(status["pid"])


# -- malformed hellos ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_info",
    [
        {"settings": 5},
        {"settings": {"merge_window": "soon"}},
        {"settings": {"durability": "always"}},
        {"dest": 7},
        {"project": ["a"]},
    ],
)
def test_a_malformed_hello_gets_a_reason(ts, run_info):
    run = trackside.init(project="p")  # a daemon that runs
    sock, answer = _raw_writer(ts, "rogue-run", writer=99, run_info=run_info)
    sock.close()
    assert isinstance(answer, Refused), answer
    assert "rogue-run" in answer.reason
    run.log({"x": 1.0})  # the daemon goes on
    run.finish()
    assert trackside.Api().run(run.id).history(keys=["x"])[0]["x"] == 1.0


# -- run.flush -----------------------------------------------------------------------------------------

_FLUSH_SCRIPT = r"""
import os, signal, sys
import trackside
from trackside.contracts import discovery
run = trackside.init(project="p", settings={"durability": "fsync"})
for i in range(500):
    run.log({"x": float(i)})
run.flush()
print("RUN", run.id, flush=True)
os.kill(discovery.read_info()["pid"], signal.SIGKILL)  # the daemon, then this process
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_flush_returns_once_everything_is_durable(ts):
    p = run_script(_FLUSH_SCRIPT, ts.env, check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr
    run_id = p.stdout.split("RUN ")[1].split()[0]
    # the next daemon resumes the run from its WAL: every row flushed is there
    subprocess.run([sys.executable, "-m", "trackside.cli", "daemon", "start"], env=ts.env, check=True, timeout=60)
    wait_until(lambda: len(trackside.Api().run(run_id).history(keys=["x"])) == 500, timeout=30)


def test_flush_with_a_timeout_raises_when_nothing_answers(ts):
    run = trackside.init(project="p", settings={"reconnect_timeout": 30.0})
    run.log({"x": 1.0})
    run.flush()
    os.kill(daemon_pid(ts), signal.SIGSTOP)  # alive, but answers nothing
    try:
        run.log({"x": 2.0})
        with pytest.raises(TimeoutError):
            run.flush(timeout=0.5)
    finally:
        os.kill(daemon_pid(ts), signal.SIGCONT)
    run.flush()
    run.finish()


# -- the summary across a crash -------------------------------------------------------------------------

_SUMMARY_SCRIPT = r"""
import os, signal, sys
import trackside
from trackside.contracts import discovery
run = trackside.init(project="p", settings={"durability": "fsync"})
run.define_metric("loss", summary="min")
for i in range(300):
    run.log({"x": float(i), "loss": 10.0 - i / 100})
    if i == 100:
        run.summary["best"] = 7
        run.flush()
run.flush()
print("RUN", run.id, flush=True)
os.kill(discovery.read_info()["pid"], signal.SIGKILL)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_acknowledged_summary_survives_a_daemon_crash_and_a_resume(ts):
    p = run_script(_SUMMARY_SCRIPT, ts.env, check=False)
    run_id = p.stdout.split("RUN ")[1].split()[0]
    subprocess.run([sys.executable, "-m", "trackside.cli", "daemon", "start"], env=ts.env, check=True, timeout=60)
    api = trackside.Api()
    wait_until(lambda: len(api.run(run_id).history(keys=["x"])) == 300, timeout=30)
    wait_until(lambda: api.run(run_id).summary.get("x") == 299.0, timeout=30)
    summary = api.run(run_id).summary
    assert summary["best"] == 7 and summary["loss"]["min"] == 10.0 - 299 / 100
    # resumed: the summary goes on from the stored one
    again = trackside.init(id=run_id, resume="must")
    again.log({"y": 1.0})
    again.finish()
    summary = api.run(run_id).summary
    assert summary["best"] == 7 and summary["x"] == 299.0 and summary["y"] == 1.0
    assert summary["loss"]["min"] == 10.0 - 299 / 100


# -- a finish stored while its writer was away ----------------------------------------------------------


def test_a_writer_reconnecting_after_its_finish_was_stored_hears_done(ts):
    """The daemon died after storing (or making durable) a writer's finish and before telling
    it: the next daemon stores it from the WAL, with no connection to answer. The writer's
    reconnect must then hear Done, or its finish() waits for ever (seen in the chaos test)."""
    from trackside.contracts.protocol import Done

    run = trackside.init(project="p")
    for i in range(50):
        run.log({"x": float(i)})
    client = run._client
    run.finish()
    writer = client.writer
    stop_daemon_now(ts)  # the next daemon opens the run again when the writer says hello
    subprocess.run([sys.executable, "-m", "trackside.cli", "daemon", "start"], env=ts.env, check=True, timeout=60)
    sock, answer = _raw_writer(ts, run.id, writer=writer)
    try:
        assert isinstance(answer, Welcome) and answer.acked_seq > 0
        assert _read_frame(sock) == Done(answer.acked_seq)
    finally:
        sock.close()


def test_daemon_killed_mid_run_loses_nothing_and_duplicates_nothing(ts):
    """kill -9 of the daemon while a writer logs with durability fsync: the SDK reconnects to a
    new daemon and resends what was not acknowledged; every logged step is stored exactly once."""
    code = """
import sys, time, trackside
run = trackside.init(project="p", settings={"durability": "fsync"})
print(run.id, flush=True)
for step in range(3000):
    run.log({"x": step, "y": step * 0.5})
    if step % 100 == 0:
        print(step, flush=True)
    time.sleep(0.0005)
run.finish()
print("done", flush=True)
"""
    p = subprocess.Popen(
        [sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run_id = p.stdout.readline().strip()
    for kill_at in (500, 1500):
        while True:
            line = p.stdout.readline()
            assert line, p.stderr.read()
            if line.strip().isdigit() and int(line) >= kill_at:
                break
        os.kill(daemon_pid(ts), signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "done" in out
    rows = trackside.Api(ts.root).run(run_id).history()
    assert [r["_step"] for r in rows] == list(range(3000))
    assert all(r["x"] == r["_step"] and r["y"] == r["_step"] * 0.5 for r in rows)


def test_writer_killed_leaves_the_run_readable(ts):
    code = """
import time, trackside
run = trackside.init(project="p")
print(run.id, flush=True)
for step in range(100):
    run.log({"x": step})
assert run._client.flush()
print("flushed", flush=True)
time.sleep(60)
"""
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE, text=True)
    run_id = p.stdout.readline().strip()
    assert p.stdout.readline().strip() == "flushed"
    p.kill()
    p.wait()
    api = trackside.Api(ts.root)

    def stored():
        try:
            return len(api.run(run_id).history()) >= 99
        except KeyError:  # flushed means durable in the WAL; the store may not hold the run yet
            return False

    wait_until(stored, timeout=20)
    rows = api.run(run_id).history()
    assert [r["x"] for r in rows][:99] == list(range(99))


def test_full_disk_holds_acks_and_loses_nothing(ts, tmp_path):
    """A run root on a small filesystem that fills up: the daemon stops acknowledging (log()
    waits once the buffer is full), reports the error, and once space is back everything
    logged is stored, exactly once; the WAL is never corrupt."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root): no filesystem to fill")
    try:
        import threading

        from trackside.transport import daemon_status

        filler = mnt / "filler"
        run = trackside.init(project="p", dir=mnt, settings={"max_buffer": 200_000})
        run.log({"a": -1})
        assert run._client.flush()
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # leave ~100 KB; the daemon's store may still be writing meanwhile and take some
            left = free - 100_000
            while left > 0:
                try:
                    left -= os.write(fd, b"\0" * min(left, 1 << 20))
                except OSError:  # the daemon took the rest: full, as wanted
                    break
        finally:
            os.close(fd)
        done = threading.Event()

        def logger():
            for i in range(20000):
                run.log({"a": i, "b": i * 0.5, "pad": "p" * 64})
            done.set()

        t = threading.Thread(target=logger)
        t.start()
        info = discovery.read_info(ts.daemon_dir)
        wait_until(lambda: any(r.get("error") for r in daemon_status(info)["runs"]), timeout=30)
        assert not done.is_set()  # backpressure: log() waits while nothing is acknowledged
        filler.unlink()
        t.join(120)
        assert done.is_set()
        run.finish()
        rows = trackside.Api(run.root).run(run.id).history()
        assert [r["a"] for r in rows] == list(range(-1, 20000))
    finally:
        stop_daemon(ts.daemon_dir)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_sigterm_flushes_what_was_logged(ts):
    code = (
        "import time, trackside\n"
        "run = trackside.init(project='p')\n"
        "print(run.id, flush=True)\n"
        "for i in range(500):\n"
        "    run.log({'i': i})\n"
        "print('logged', flush=True)\n"
        "for _ in range(600):\n"  # training keeps running Python code; a signal that lands while
        "    time.sleep(0.1)\n"  # the main thread waits for the GIL is handled at the next bytecode
    )
    p = subprocess.Popen([sys.executable, "-c", code], env=ts.env, stdout=subprocess.PIPE, text=True)
    run_id = p.stdout.readline().strip()
    assert p.stdout.readline().strip() == "logged"
    p.terminate()
    assert p.wait(30) == 128 + 15  # SystemExit(143) after the runs are finished
    r = trackside.Api(ts.root).run(run_id)
    assert [row["i"] for row in r.history()] == list(range(500))
    assert r.state == "failed" and r.exit_code == 128 + 15
