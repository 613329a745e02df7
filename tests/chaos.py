"""The chaos engine of ``tests/test_chaos.py`` and ``bench/chaos.py``: real daemons, trainers and
servers, killed with SIGKILL at random moments, WALs damaged, garbage on the socket, then every
run read back and checked.

A trainer logs step ``i`` (``x = i``) with an explicit step, prints a console line every few
steps, sets the summary and calls ``run.flush()`` every ``flush_every`` steps; after each flush
it prints ``ACK <i>`` on stdout: everything up to step ``i`` is acknowledged (durable at the
daemon). A round's checks: every acknowledged step is stored exactly once with its value,
every acknowledged console line exactly once and no line twice, every acknowledged table
version (one per flush) exactly once, the summary at least the last acknowledged value, no file outside the round's folders, and the daemon never died
except when the round killed it.

Round kinds: ``kill_daemon`` (the daemon, mid-run; the trainer reconnects and goes on),
``kill_trainer`` (the trainer, mid-run; what it flushed stays), ``kill_both``, ``wal_tail``
(a torn, garbage tail after a crash), ``wal_middle`` (bytes flipped inside the WAL of a
finished run, which is then resumed), ``garbage`` (malformed frames flooding the socket while
a trainer logs), ``kill_server`` (the team server a run uploads to, mid-upload).
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import types

import msgspec

KINDS = ("kill_daemon", "kill_trainer", "kill_both", "wal_tail", "wal_middle", "garbage", "kill_server")
# how often each kind is drawn: the server round costs a server start, the others a trainer or two
WEIGHTS = (4, 3, 2, 2, 2, 2, 1)

TRAINER = r"""
import os, sys, trackside
run_id, start, steps, flush_every, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
settings = {"durability": "fsync", "reconnect_timeout": 60.0, "system_metrics": False, "merge_window": 2.0}
if os.environ.get("CHAOS_SERVER"):
    settings.update(server=os.environ["CHAOS_SERVER"], upload_interval=0.1)
run = trackside.init(id=run_id, project="chaos", resume=resume, settings=settings)
print(f"READY {start}", flush=True)
for i in range(start, start + steps):
    run.log({"x": float(i)}, step=i)
    if i % 5 == 0:
        print(f"line {i}", flush=True)
    if i % flush_every == flush_every - 1:
        run.summary["last"] = i
        run.log({"tbl": trackside.Table(columns=["i"], data=[[i]])}, step=i)  # a table version per flush
        run.flush()
        sys.stdout.write(f"ACK {i}\n")
        sys.stdout.flush()
run.finish()
sys.stdout.write("DONE\n")
sys.stdout.flush()
"""


# names a garbage round says hello with: none may become a path (checked by check_no_escapes)
HOSTILE_RUN_IDS = ("../../escape", "a/b", "x" * 300)
HOSTILE_ROOT = "relative/root"


class ChaosFailure(AssertionError):
    pass


class Chaos:
    """One chaos session in ``base`` (a temporary folder the caller removes)."""

    def __init__(self, base: str, seed: int, python: str = sys.executable):
        self.base = base
        self.rng = random.Random(seed)
        self.seed = seed
        self.python = python
        self.daemon_dir = os.path.join(base, "daemon")
        self.root = os.path.join(base, "trackside")
        self.server_root = os.path.join(base, "server")
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TRACKSIDE_") and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")
        }
        self.env.update(TRACKSIDE_DAEMON_DIR=self.daemon_dir, TRACKSIDE_DIR=self.root, TRACKSIDE_IDLE_TIMEOUT="300")
        self.procs: list[subprocess.Popen] = []
        self.server = None
        self.stats = dict(
            rounds=0,
            records_checked=0,
            lost=0,
            duplicated=0,
            escapes=0,
            damage_recovered=0,
            malformed_inputs=0,
            daemon_kills=0,
            trainer_kills=0,
            server_kills=0,
            unexpected_daemon_deaths=0,
        )
        self.kinds: dict[str, int] = {}
        self.flush_every = 1
        self.failures: list[str] = []
        self._known_daemon: int | None = None  # the daemon pid this session saw last, alive

    # -- processes -------------------------------------------------------------------------------

    def _trainer(self, run_id: str, start: int, steps: int, flush_every: int, resume: str = "allow", env=None):
        p = subprocess.Popen(
            [self.python, "-c", TRAINER, run_id, str(start), str(steps), str(flush_every), resume],
            env=env or self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        return p

    def _daemon_pid(self) -> int | None:
        try:
            with open(os.path.join(self.daemon_dir, "daemon.json")) as f:
                pid = json.load(f)["pid"]
        except (OSError, ValueError, KeyError):
            return None
        return pid if _alive(pid) else None

    def _check_daemon(self) -> None:
        """The daemon seen last must still run unless this session killed it."""
        if self._known_daemon is not None and not _alive(self._known_daemon):
            self.stats["unexpected_daemon_deaths"] += 1
            self.failures.append(f"daemon pid {self._known_daemon} died without being killed")
        self._known_daemon = self._daemon_pid()

    def _kill_the_daemon(self) -> None:
        pid = self._daemon_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not _alive(pid), 10)
        self._known_daemon = None
        self.stats["daemon_kills"] += 1

    def _ensure_daemon(self) -> None:
        p = subprocess.run(
            [self.python, "-m", "trackside.cli", "daemon", "start"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if p.returncode != 0:
            raise ChaosFailure(f"trackside daemon start failed ({p.returncode}): {p.stdout}{p.stderr}")
        self._known_daemon = self._daemon_pid()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        self._stop_server()
        pid = self._daemon_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not _wait(lambda: not _alive(pid), 20):
                os.kill(pid, signal.SIGKILL)

    # -- a round ---------------------------------------------------------------------------------

    def run(self, rounds: int, progress=None, kinds_allowed=None) -> dict:
        allowed = [k for k in KINDS if kinds_allowed is None or k in kinds_allowed]
        kinds = self.rng.choices(allowed, [WEIGHTS[KINDS.index(k)] for k in allowed], k=rounds)
        # every kind at least once when there are rounds enough for that
        if kinds_allowed is None and rounds >= len(KINDS):
            kinds[: len(KINDS)] = KINDS
            self.rng.shuffle(kinds)
        for n, kind in enumerate(kinds):
            self.round(kind, n)
            if progress is not None:
                progress(n + 1, rounds, kind, self.stats)
        self.check_no_escapes()
        return self.stats

    def round(self, kind: str, n: int) -> None:
        self._check_daemon()
        run_id = f"chaos-{n}-{kind.replace('_', '-')}"
        steps = self.rng.randint(100, 600)
        flush_every = self.rng.choice((10, 25, 50))
        self.flush_every = flush_every
        try:
            getattr(self, "_round_" + kind)(run_id, steps, flush_every)
        except ChaosFailure as e:  # one round's failure, with what the daemon said of the run
            self._fail(run_id, f"{e}\n{self._daemon_log(run_id)}")
        self.stats["rounds"] += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self._check_daemon()

    def _round_kill_daemon(self, run_id, steps, flush_every, kill_trainer: bool = False):
        p = self._trainer(run_id, 0, steps, flush_every)
        acked = self._read_until(p, self.rng.randint(0, steps // flush_every))
        time.sleep(self.rng.uniform(0, 0.05))
        if kill_trainer:
            if self.rng.random() < 0.5:
                self._kill_the_daemon()
                acked = max(acked, self._kill(p))
            else:
                acked = max(acked, self._kill(p))
                self._kill_the_daemon()
            self._ensure_daemon()  # resumes the run from the registry: its WAL is stored
            self._check_run(run_id, acked, complete=False)
        else:
            self._kill_the_daemon()
            self._finish(p)
            self._check_run(run_id, steps - 1, complete=True)

    def _round_kill_both(self, run_id, steps, flush_every):
        self._round_kill_daemon(run_id, steps, flush_every, kill_trainer=True)

    def _round_kill_trainer(self, run_id, steps, flush_every):
        p = self._trainer(run_id, 0, steps, flush_every)
        acked = self._read_until(p, self.rng.randint(0, steps // flush_every))
        time.sleep(self.rng.uniform(0, 0.05))
        acked = max(acked, self._kill(p))
        self._check_run(run_id, acked, complete=False)

    def _round_wal_tail(self, run_id, steps, flush_every):
        """A crash tears the WAL's tail: garbage after the last whole record."""
        p = self._trainer(run_id, 0, steps, flush_every)
        acked = self._read_until(p, self.rng.randint(1, max(1, steps // flush_every)))
        acked = max(acked, self._kill(p))
        self._kill_the_daemon()
        segment = self._last_segment(run_id)
        with open(segment, "ab") as f:
            f.write(bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 300))))
        self._ensure_daemon()
        self._check_run(run_id, acked, complete=False)
        self._check_damage(run_id, reported=False)

    def _round_wal_middle(self, run_id, steps, flush_every):
        """Bytes flipped inside the WAL of a stored run; resuming it goes on and reports it."""
        p = self._trainer(run_id, 0, steps, flush_every)
        self._finish(p)
        self._check_run(run_id, steps - 1, complete=True)
        self._kill_the_daemon()
        segment = self._last_segment(run_id)
        size = os.path.getsize(segment)
        # in the first half: whole records follow the damage, so it is damage in the middle (a
        # damaged last record is a torn tail, cut without a report)
        at = self.rng.randint(64, max(65, size // 2))
        with open(segment, "r+b") as f:
            f.seek(at)
            chunk = f.read(32)
            f.seek(at)
            f.write(bytes(b ^ 0x5A for b in chunk))
        more = self.rng.randint(10, 100)
        q = self._trainer(run_id, steps, more, flush_every, resume="must")
        self._finish(q)
        self._check_run(run_id, steps + more - 1, complete=True)
        self._check_damage(run_id, reported=True)

    def _round_garbage(self, run_id, steps, flush_every):
        """Malformed frames on the daemon's socket while a trainer logs: one error each, never
        the daemon, never the run."""
        p = self._trainer(run_id, 0, steps, flush_every)
        self._read_line(p, "READY")
        self._known_daemon = self._daemon_pid()
        path = os.path.join(self.daemon_dir, "daemon.sock")
        for _ in range(self.rng.randint(20, 60)):
            self._send_garbage(path, run_id)
        self._finish(p)
        self._check_run(run_id, steps - 1, complete=True)

    def _round_kill_server(self, run_id, steps, flush_every):
        """The team server dies mid-upload and comes back on the same port."""
        port = self._start_server()
        env = dict(self.env, CHAOS_SERVER=f"grpc://127.0.0.1:{port}")
        p = self._trainer(run_id, 0, steps, flush_every, env=env)
        self._read_until(p, self.rng.randint(0, steps // flush_every))
        time.sleep(self.rng.uniform(0, 0.2))
        self._stop_server(kill=True)
        self.stats["server_kills"] += 1
        self._start_server(port)
        self._finish(p)
        self._check_run(run_id, steps - 1, complete=True, root=self.server_root, timeout=60)
        self._stop_server()

    # -- helpers of the rounds ------------------------------------------------------------------------

    def _read_line(self, p, want: str) -> None:
        for line in p.stdout:
            if line.split()[:1] == [want]:
                return
        raise ChaosFailure(f"the trainer ended before {want!r}: {p.stderr.read()[-2000:]}")

    def _read_until(self, p, acks: int) -> int:
        """Read ``acks`` ACK lines (fewer if the trainer ends); the last acknowledged step."""
        last = -1
        seen = 0
        while seen < acks:
            line = p.stdout.readline()
            if not line:
                break
            if line.startswith("ACK "):
                last = int(line.split()[1])
                seen += 1
        return last

    def _kill(self, p) -> int:
        """SIGKILL a trainer; the last step it acknowledged before dying."""
        p.kill()
        p.wait()
        self.stats["trainer_kills"] += 1
        last = -1
        for line in p.stdout.read().splitlines():  # what it printed before it died
            if line.startswith("ACK "):
                last = int(line.split()[1])
        return last

    def _finish(self, p, timeout: float = 120) -> None:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise ChaosFailure(f"a trainer did not finish within {timeout} s: {err[-3000:]}")
        if p.returncode != 0 or "DONE" not in out:
            raise ChaosFailure(f"a trainer failed ({p.returncode}): {err[-3000:]}")

    def _last_segment(self, run_id: str) -> str:
        segments = sorted(glob.glob(os.path.join(self.root, "runs", run_id, "wal", "*.wal")))
        if not segments:
            raise ChaosFailure(f"run {run_id} has no WAL segment")
        return segments[-1]

    def _send_garbage(self, path: str, run_id: str) -> None:
        from trackside._native import constants as C
        from trackside._native import frame
        from trackside.contracts.protocol import PROTOCOL_VERSION, Batch, Hello, pack

        rng = self.rng
        choice = rng.randrange(6)
        if choice == 0:  # random bytes
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
        elif choice == 1:  # a frame announcing more than the limit
            data = (0xFFFFFFF0).to_bytes(4, "little") + b"x" * 16
        elif choice == 2:  # a frame of random msgpack
            body = msgspec.msgpack.encode([rng.random(), "hello", {"a": [1, 2]}])
            data = len(body).to_bytes(4, "little") + body
        else:  # a hello (sometimes a hostile one), then broken batches
            info = rng.choice([{"project": "x"}, {"settings": 5}, {"dest": "file:///etc"}, {"tags": [1]}, []])
            rid = rng.choice([run_id, *HOSTILE_RUN_IDS, run_id])
            root = rng.choice([self.root, HOSTILE_ROOT, self.root])
            writer = rng.getrandbits(62) + 1
            try:
                hello = pack(Hello(PROTOCOL_VERSION, rid, writer, os.getpid(), 7, root, info))
            except TypeError:
                hello = pack(Hello(PROTOCOL_VERSION, rid, writer, os.getpid(), 7, root, {}))
            kind = rng.randrange(3)
            if kind == 0:  # a valid checksum, garbage inside
                body = bytes([writer & 0x7F, 1]) + bytes(rng.getrandbits(8) for _ in range(40))
                batch = pack(Batch(1, frame(C.RECORD_LOG, body)))
            elif kind == 1:  # a bad checksum
                rec = bytearray(frame(C.RECORD_LOG, b"\x01\x01\x01\x00"))
                rec[-1] ^= 0xFF
                batch = pack(Batch(1, bytes(rec)))
            else:  # a record cut short
                batch = pack(Batch(1, frame(C.RECORD_LOG, b"\x01\x01")[:-1]))
            data = hello + batch
        self.stats["malformed_inputs"] += 1
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(path)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):  # until the daemon closes it
                pass
        except OSError:
            pass
        finally:
            s.close()

    def _start_server(self, port: int = 0) -> int:
        info = os.path.join(self.base, "server.json")
        if os.path.exists(info):
            os.unlink(info)
        log = open(os.path.join(self.base, "server.log"), "ab")
        proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "trackside.server.team_server",
                "--root",
                self.server_root,
                "--port",
                str(port),
                "--info-file",
                info,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        self.server = proc
        if not _wait(lambda: os.path.exists(info) or proc.poll() is not None, 30) or proc.poll() is not None:
            raise ChaosFailure(f"the server did not start (see {self.base}/server.log)")
        with open(info) as f:
            return json.load(f)["port"]

    def _stop_server(self, kill: bool = False) -> None:
        proc, self.server = self.server, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- checks ----------------------------------------------------------------------------------------

    def _check_run(
        self, run_id: str, last_acked: int, *, complete: bool, root: str | None = None, timeout: float = 30
    ) -> None:
        """Every step up to ``last_acked`` stored once with its value (``complete``: and nothing
        after it); console lines of those steps once, and no line twice; the summary."""
        import trackside

        api_root = root or self.root
        want = last_acked + 1

        def stored():
            try:
                r = trackside.Api(api_root).run(run_id)
                rows = r.history(keys=["x"])
            except (KeyError, LookupError, ValueError):
                return None
            return r, rows

        # summary["last"] is set before each flush: at least the last acknowledged step
        last_set = last_acked - (last_acked + 1) % self.flush_every if last_acked >= self.flush_every - 1 else None

        def summary_ok(r):
            summary = r.summary.get("last")
            return last_set is None or (summary is not None and summary >= last_set)

        deadline = time.monotonic() + timeout
        while True:
            got = stored()
            if (
                got is not None
                and sum(1 for row in got[1] if row["_step"] <= last_acked) >= want
                and summary_ok(got[0])
            ):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if got is None:
            if want > 0:
                self._fail(run_id, f"the run is not in {api_root} ({want} steps acknowledged)")
                self.stats["lost"] += want
            return
        r, rows = got
        steps = [row["_step"] for row in rows]
        have = set(steps)
        lost = [s for s in range(want) if s not in have]
        dups = len(steps) - len(have)
        wrong = [row["_step"] for row in rows if row.get("x") != float(row["_step"])]
        if complete:
            extra = [s for s in have if s > last_acked]
            if extra:
                self._fail(run_id, f"steps after the last one logged: {extra[:5]}")
        lines = r.console().splitlines()
        seen: dict[str, int] = {}
        for line in lines:
            seen[line] = seen.get(line, 0) + 1
        dup_lines = [line for line, c in seen.items() if c > 1]
        lost_lines = [f"line {i}" for i in range(0, want, 5) if f"line {i}" not in seen]
        if not summary_ok(r):
            self._fail(
                run_id, f"summary['last'] is {r.summary.get('last')!r}, but it was set to {last_set} and acknowledged"
            )
        # a table version per flush, each stored once: their steps are the flushes' steps
        tables = [a.step for a in r.logged_artifacts() if a.name.endswith("-tbl")]
        flushed = [i for i in range(want) if i % self.flush_every == self.flush_every - 1]
        lost_tables = sorted(set(flushed) - set(tables))
        dup_tables = len(tables) - len(set(tables))
        self.stats["records_checked"] += want + len(range(0, want, 5)) + len(flushed)
        self.stats["lost"] += len(lost_tables)
        self.stats["duplicated"] += dup_tables
        if lost_tables or dup_tables:
            self._fail(
                run_id,
                f"tables: {len(lost_tables)} acknowledged versions lost (steps {lost_tables[:5]}), "
                f"{dup_tables} stored twice",
            )
        self.stats["lost"] += len(lost) + len(lost_lines)
        self.stats["duplicated"] += dups + sum(seen[line] - 1 for line in dup_lines)
        if lost:
            self._fail(run_id, f"{len(lost)} acknowledged steps lost, e.g. {lost[:5]}")
        if lost_lines:
            self._fail(run_id, f"{len(lost_lines)} acknowledged console lines lost, e.g. {lost_lines[:3]}")
        if dups or dup_lines:
            self._fail(run_id, f"duplicates: {dups} rows, lines {dup_lines[:3]}")
        if wrong:
            self._fail(run_id, f"wrong values at steps {wrong[:5]}")

    def _check_damage(self, run_id: str, reported: bool) -> None:
        """The run is readable after its WAL was damaged; damage in the middle of the WAL is in
        its metadata (``wal_damage``), a torn tail is cut without a report."""
        import trackside

        damage = trackside.Api(self.root).run(run_id).metadata.get("wal_damage")
        if reported and not damage:
            self._fail(run_id, "bytes flipped in the middle of the WAL were not reported in metadata['wal_damage']")
            return
        self.stats["damage_recovered"] += 1

    def check_no_escapes(self) -> None:
        """Nothing but the session's own folders in its base, and nothing where the garbage
        rounds' hostile run ids and root would have put a run had the daemon taken them."""
        allowed = {"daemon", "trackside", "server", "server.json", "server.log"}
        stray = [name for name in os.listdir(self.base) if name not in allowed]
        landing = [os.path.join(self.root, "runs", run_id) for run_id in HOSTILE_RUN_IDS]
        landing.append(os.path.join("/", HOSTILE_ROOT))  # the daemon's working folder is /
        stray += [path for path in landing if os.path.lexists(path)]
        if stray:
            self.stats["escapes"] += len(stray)
            self.failures.append(f"files outside the run roots: {stray}")

    def _daemon_log(self, run_id: str, lines: int = 40) -> str:
        try:
            with open(os.path.join(self.daemon_dir, "daemon.log"), errors="replace") as f:
                found = [line.rstrip() for line in f if run_id in line or "Traceback" in line or "Error" in line]
        except OSError:
            return "(no daemon.log)"
        return "daemon.log:\n  " + "\n  ".join(found[-lines:])

    def _fail(self, run_id: str, message: str) -> None:
        self.failures.append(f"seed {self.seed}, run {run_id}: {message}")


def _alive(pid: int) -> bool:
    from trackside.contracts.discovery import pid_alive

    return pid_alive(pid)


def _wait(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def session(base: str, rounds: int, seed: int, progress=None, kinds=None) -> types.SimpleNamespace:
    """Run ``rounds`` rounds in ``base`` (of ``kinds`` only, when given); the stats, the kinds
    drawn and the failures."""
    chaos = Chaos(base, seed)
    try:
        stats = chaos.run(rounds, progress, kinds)
    finally:
        chaos.close()
    return types.SimpleNamespace(stats=stats, kinds=chaos.kinds, failures=chaos.failures, seed=seed)
