"""Several ``trackside server --shared`` processes on one PostgreSQL database (docs/multiserver.md):
any server takes any upload, every record is stored once whichever servers got it and however
often, steps are reduced across hosts, and a run goes on when its server is SIGKILLed: the
daemons fail over to the next server of their list, and another server takes the run over.

Real PostgreSQL (tests/pg.py), real server processes, real daemons."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from conftest import wait_until

pytest.importorskip("psycopg")

from trackside import _native as codec  # noqa: E402
from trackside._native.constants import RECORD_EVENT  # noqa: E402
from trackside.contracts.protocol import Event, encode_event  # noqa: E402
from trackside.contracts.upload import TransientUploadError, UploadClient, server_urls  # noqa: E402


def _event(writer: int, seq: int, kind: str, data) -> bytes:
    return codec.frame(RECORD_EVENT, encode_event(Event(writer, seq, kind, data)))


def host_records(writer: int, rank: int, world: int, steps: int, per_record: int = 10) -> list[bytes]:
    """What a host's daemon would upload for one rank logging ``{"n": 1, "h<rank>": step}``
    at steps 0..steps-1, ``n`` summed across ranks: join, define_metric, LOG records, finish."""
    records = [
        _event(writer, 1, "join", {"rank": rank, "world_size": world}),
        _event(writer, 2, "define_metric", {"name": "n", "reduce": "sum"}),
    ]
    seq = 3
    for first in range(0, steps, per_record):
        entries = [
            (s, True, 1_000_000 * s, {"n": 1.0, f"h{rank}": float(s)}, None) for s in range(first, first + per_record)
        ]
        records.append(codec.encode_batch(writer, seq, entries))
        seq += 1
    records.append(_event(writer, seq, "finish", {"exit_code": 0}))
    return records


def start_tier(servers, tmp_path, db: str, n: int) -> list:
    return [servers.start(tmp_path / "root", "--db", db, "--shared") for _ in range(n)]


def stored(root, db: str, run_id: str):
    import trackside

    return trackside.Api(str(root), db=db).run(run_id)


def raw_records(db: str) -> dict:
    """(run, writer) -> the sorted seqs the tier's database holds."""
    import psycopg

    out: dict = {}
    with psycopg.connect(db) as conn:
        for run_id, writer, seq in conn.execute("SELECT run_id, writer, seq FROM run_records ORDER BY 1, 2, 3"):
            out.setdefault((run_id, writer), []).append(seq)
    return out


def test_shared_needs_postgresql(servers, tmp_path):
    s = servers.start(tmp_path / "root", "--shared", expect_start=False)
    assert s.proc.wait(20) == 2
    assert "--shared needs a PostgreSQL database" in s.output


def test_upload_client_moves_to_the_next_server(servers, tmp_path):
    """A list of servers: a call that finds its server away goes to the next one, which stays in
    use; with every server away the call raises TransientUploadError."""
    live = servers.start(tmp_path / "root")
    dead = "grpc://127.0.0.1:1"
    assert server_urls(f"{dead}, {live.url}") == [dead, live.url]
    with pytest.raises(ValueError):
        server_urls("grpc://a:1,,grpc://b:2")
    records = host_records(7, 0, 1, 20)
    with UploadClient(f"{dead},{live.url}", timeout=5) as client:
        assert client.append("fo", {"project": "p"}, records[:3]) == (3, 0)
        assert client.server == live.url and client.failovers == 1
        assert client.append("fo", {"project": "p"}, records) == (len(records) - 3, 3)
        assert client.failovers == 1
    with UploadClient(dead, timeout=5) as client, pytest.raises(TransientUploadError):
        client.append("fo", {}, records[:1])


def test_three_servers_store_every_record_once_and_reduce_across_hosts(servers, tmp_path, postgres_url):
    """Four hosts upload one run's records through three servers at once, each batch sent to
    two servers (a resend after a lost reply): every record is held once, every step is one row
    holding the sum over the four hosts and each host's own value, and the run finishes."""
    tier = start_tier(servers, tmp_path, postgres_url, 3)
    steps, world = 300, 4
    errors = []

    def host(rank: int) -> None:
        try:
            records = host_records(1000 + rank, rank, world, steps)
            a = UploadClient(tier[rank % 3].url)
            b = UploadClient(tier[(rank + 1) % 3].url)
            for i in range(0, len(records), 5):
                batch = records[i : i + 5]
                first = a.append("shared", {"project": "p"}, batch)
                again = b.append("shared", {"project": "p"}, batch)
                assert first == (len(batch), 0) and again == (0, len(batch))
            a.close()
            b.close()
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=host, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors

    root = tmp_path / "root"
    wait_until(lambda: stored(root, postgres_url, "shared").state == "finished", timeout=30)
    run = stored(root, postgres_url, "shared")
    rows = run.history()
    assert [r["_step"] for r in rows] == list(range(steps))
    assert all(r["n"] == float(world) for r in rows), [r for r in rows if r["n"] != world][:3]
    assert all(r[f"h{k}"] == r["_step"] for r in rows for k in range(world))
    held = raw_records(postgres_url)
    n_records = len(host_records(1, 0, world, steps))
    assert held == {("shared", 1000 + k): list(range(1, n_records + 1)) for k in range(world)}


RANK = """
import sys, time, trackside
run = trackside.init(project="tier", id=sys.argv[1], settings={"system_metrics": False, "upload_interval": 0.1})
run.define_metric("n", reduce="sum")
for i in range(int(sys.argv[2])):
    run.log({"n": 1.0, "k": float(i)}, step=i)
    time.sleep(0.004)
run.finish()
"""


def _daemon_env(tmp_path, name: str, urls: list[str], rank: int, world: int) -> dict:
    env = dict(
        os.environ,
        TRACKSIDE_DAEMON_DIR=str(tmp_path / name / "daemon"),
        TRACKSIDE_DIR=str(tmp_path / name / "runs"),
        TRACKSIDE_SERVER=",".join(urls),
        RANK=str(rank),
        LOCAL_RANK="0",
        WORLD_SIZE=str(world),
    )
    env.pop("TRACKSIDE_RUN_ID", None)
    return env


def test_daemons_fail_over_when_the_owning_server_is_killed(servers, tmp_path, postgres_url):
    """Two hosts (two daemons) x one rank each, uploading to a tier of two servers, each host
    listing the other server first. Mid-run the server that stores the run is SIGKILLed: the
    host uploading to it moves to the other server, which takes the run over from the store's
    cursor. Afterwards every step is stored once with both ranks summed, every record once."""
    import subprocess

    import psycopg

    tier = start_tier(servers, tmp_path, postgres_url, 2)
    urls = [s.url for s in tier]
    steps = 600
    procs = []
    envs = []
    try:
        for rank in range(2):
            env = _daemon_env(tmp_path, f"host{rank}", urls[rank:] + urls[:rank], rank, 2)
            envs.append(env)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", RANK, "failover", str(steps)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        root = tmp_path / "root"

        def owner():
            for s in tier:
                with UploadClient(s.url, timeout=5) as c:
                    if any(r["run_id"] == "failover" for r in c.status()["runs"]):
                        return s
            return None

        def cursor() -> int:
            with psycopg.connect(postgres_url) as conn:
                row = conn.execute("SELECT wal_cursor FROM runs WHERE run_id = 'failover'").fetchone()
            return row[0] if row else 0

        # some rows stored, the cursor moved (while both hosts' steps are pending: it passes the
        # records whose steps are all stored), and a server owns the run: kill that one
        wait_until(
            lambda: len(stored(root, postgres_url, "failover").history(keys=["n"])) > 50 and cursor() > 0 and owner(),
            30,
        )
        victim = owner()
        survivor = next(s for s in tier if s is not victim)
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait(10)
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        wait_until(lambda: stored(root, postgres_url, "failover").state == "finished", timeout=30)
        run = stored(root, postgres_url, "failover")
        rows = run.history()
        assert [r["_step"] for r in rows] == list(range(steps))
        assert all(r["n"] == 2.0 for r in rows), [r for r in rows if r["n"] != 2.0][:3]
        assert all(r["k"] == r["_step"] for r in rows)
        # every record once: each writer's seqs are 1..n without a gap or a repeat
        held = raw_records(postgres_url)
        assert len(held) >= 2
        for seqs in held.values():
            assert seqs == list(range(1, len(seqs) + 1))
        with UploadClient(survivor.url, timeout=5) as c:
            assert c.status()["taken_over"] >= 1
        with psycopg.connect(postgres_url) as conn:
            (rows_stored,) = conn.execute("SELECT history_rows FROM runs WHERE run_id = 'failover'").fetchone()
        assert rows_stored == steps
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for env in envs:
            subprocess.run(
                [sys.executable, "-m", "trackside.cli", "daemon", "stop"], env=env, capture_output=True, timeout=60
            )


def test_a_new_owner_reduces_late_entries_with_what_was_stored(servers, tmp_path, postgres_url):
    """Host A's steps are stored by one server, which is then killed; host B's entries for the
    same steps arrive later through the other server: the new owner sums them into the stored
    rows (it recalls A's values from the records before the cursor), it does not overwrite them."""
    tier = start_tier(servers, tmp_path, postgres_url, 2)
    root = tmp_path / "root"
    steps = 100
    a = host_records(1, 0, 2, steps)
    b = host_records(2, 1, 2, steps)
    with UploadClient(tier[0].url) as c:
        c.append("late", {"project": "p"}, a[:-1])  # all of A but its finish

    def rows_of_a():
        rows = stored(root, postgres_url, "late").history()
        return len(rows) == steps and all(r["n"] == 1.0 for r in rows)

    wait_until(rows_of_a, timeout=20)
    owners = []
    for s in tier:  # whichever server owns the run (the other one never did), asked before any
        with UploadClient(s.url, timeout=5) as c:  # kill: the other may take it over at once
            if c.status()["runs"]:
                owners.append(s)
    for s in owners:
        os.kill(s.pid, signal.SIGKILL)
        s.proc.wait(10)
    survivor = next(s for s in tier if s.proc.poll() is None)
    with UploadClient(survivor.url) as c:
        c.append("late", {"project": "p"}, b)
        c.append("late", {"project": "p"}, a)  # A again (a resend), its finish with it
    wait_until(lambda: stored(root, postgres_url, "late").state == "finished", timeout=20)
    rows = stored(root, postgres_url, "late").history()
    assert [r["_step"] for r in rows] == list(range(steps))
    assert all(r["n"] == 2.0 for r in rows), [r for r in rows if r["n"] != 2.0][:3]
    assert all(r["h0"] == r["h1"] == r["_step"] for r in rows)


def test_a_new_owner_goes_on_after_the_write_a_lost_owner_had_in_flight(servers, tmp_path, postgres_url):
    """A server stalls (SIGSTOP) with a write of its run in flight and its coordination session
    ends: the other server takes the run. Its claim waits for that write to end before it reads
    the run's cursor, so it goes on from there: every step and every console line is stored once
    (reading the cursor first, it would store the stalled write's console lines a second time)."""
    import psycopg

    from trackside.server.shared import OWN_LOCK

    root, run_id, writer = tmp_path / "root", "fenced", 4242
    seq = iter(range(1, 1000))

    def group(first: int, label: str) -> list[bytes]:
        entries = [(s, True, 1_000_000 * (s + 1), {"x": float(s)}, None) for s in range(first, first + 50)]
        lines = [[1_000_000 * (first + i + 1), "stdout", f"{label} line {i}"] for i in range(5)]
        return [codec.encode_batch(writer, next(seq), entries), _event(writer, next(seq), "console", lines)]

    def waiting() -> int:  # how many backends of the database wait for a lock
        with psycopg.connect(postgres_url, autocommit=True) as c:
            return c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()[0]

    tier = start_tier(servers, tmp_path, postgres_url, 2)
    with UploadClient(",".join(s.url for s in tier)) as client:
        client.append(run_id, {"project": "p"}, group(0, "first"))
        wait_until(lambda: stored(root, postgres_url, run_id).history_rows == 50, timeout=30)
        owner = None
        for s in tier:
            with UploadClient(s.url, timeout=5) as c:
                if c.status()["runs"]:
                    owner = s
        assert owner is not None
        with psycopg.connect(postgres_url) as blocker:
            # hold the run's row: the owner's next write of the run begins, then waits for it
            blocker.execute("SELECT 1 FROM runs WHERE run_id = %s FOR UPDATE", (run_id,))
            client.append(run_id, {"project": "p"}, group(50, "second"))
            wait_until(lambda: waiting() == 1, timeout=30)
            # the owner stalls, and its coordination session ends (its run lock goes with it)
            os.kill(owner.pid, signal.SIGSTOP)
            try:
                with psycopg.connect(postgres_url, autocommit=True) as c:
                    (pid,) = c.execute(
                        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted",
                        (OWN_LOCK,),
                    ).fetchone()
                    c.execute("SELECT pg_terminate_backend(%s)", (pid,))
                # the other server takes the run and waits: for the stalled write (its claim);
                # reading the cursor first, its own first write would wait behind it instead
                wait_until(lambda: waiting() == 2, timeout=15)
                blocker.commit()
            finally:
                os.kill(owner.pid, signal.SIGCONT)  # the stalled write commits; the new owner goes on
        client.append(run_id, {"project": "p"}, [*group(100, "third"), _event(writer, next(seq), "finish", {})])
    wait_until(lambda: stored(root, postgres_url, run_id).state == "finished", timeout=30)
    run = stored(root, postgres_url, run_id)
    assert [r["_step"] for r in run.history()] == list(range(150))
    assert [line.text for line in run.console_lines()] == [
        f"{label} line {i}" for label in ("first", "second", "third") for i in range(5)
    ]
