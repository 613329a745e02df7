"""Edits after the run: run.summary[k] = v on a run read back (kept at once, seed 003), run.update()
of name, tags, notes, group, job type and config, run.delete(); locally, in PostgreSQL and on a
trackside server; edits survive a replay of the run's WAL (a killed daemon, a restarted server)
and give way to a later change by the live run."""

import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import trackside
from trackside.contracts.errors import RunNotFoundError
from trackside.daemon import registry
from trackside.remote import UploadClient
from trackside.store import Store

from conftest import daemon_pid, wait_until
from test_server import upload_run


def test_a_summary_assignment_on_a_run_read_back_is_kept(ts):
    run = trackside.init(project="p", config={"lr": 0.1})
    for i in range(5):
        run.log({"loss": 1.0 / (i + 1)})
    run.finish()
    api = trackside.Api()
    r = api.run(f"someone/p/{run.id}")
    r.summary["tensor"] = np.arange(4.0)  # as in the seed: no update() needed
    r.summary.update({"best": 7, "note": "ok"})
    del r.summary["note"]
    assert r.summary == {"loss": 0.2, "tensor": [0.0, 1.0, 2.0, 3.0], "best": 7}
    again = trackside.Api().run(run.id)
    assert again.summary == {"loss": 0.2, "tensor": [0.0, 1.0, 2.0, 3.0], "best": 7}
    with pytest.raises(TypeError, match="cannot be stored"):
        again.summary["bad"] = object()
    assert "bad" not in again.summary and "bad" not in trackside.Api().run(run.id).summary
    assert [x.id for x in api.runs(filters={"summary.best": 7})] == [run.id]


def _edit_fields(api, run_id):
    r = api.run(run_id)
    r.name, r.tags, r.notes, r.group, r.job_type = "edited", ["x", "y"], "a note", "grp", "eval"
    r.config["lr"] = 0.5
    r.config["new"] = {"a": 1}
    del r.config["drop"]
    assert r.update() is r
    return r


def _check_fields(api, run_id):
    r = api.run(run_id)
    assert (r.name, r.tags, r.notes, r.group, r.job_type) == ("edited", ["x", "y"], "a note", "grp", "eval")
    assert r.config == {"lr": 0.5, "new": {"a": 1}}
    assert [x.id for x in api.runs(filters={"config.new.a": 1, "tags": "y", "notes": {"$regex": "note"}})] == [run_id]


def _stored_run(store):
    store.upsert_run("r1", project="p", name="orig", tags=["t"], config={"lr": 0.1, "drop": 1})
    store.apply("r1", summary={"loss": 0.3}, final_state=("finished", 0))


def test_update_saves_name_tags_notes_group_job_type_and_config(tmp_path):
    with Store(tmp_path) as store:
        _stored_run(store)
    with trackside.Api(tmp_path) as api:
        _edit_fields(api, "r1")
        _check_fields(api, "r1")
        r = api.run("r1")
        r.tags = "not-a-list"
        with pytest.raises(ValueError, match="list of strings"):
            r.update()
        assert api.run("r1").tags == ["x", "y"]


def test_edits_in_postgresql(tmp_path, postgres_url):
    with Store(tmp_path, db=postgres_url) as store:
        _stored_run(store)
    with trackside.Api(tmp_path, db=postgres_url) as api:
        _edit_fields(api, "r1")
        api.run("r1").summary["loss"] = 0.1
        _check_fields(api, "r1")
        assert api.run("r1").summary == {"loss": 0.1}
        # what the run's writers store again (a replay) does not undo the edits
        with Store(tmp_path, db=postgres_url) as store:
            _stored_run(store)
        _check_fields(api, "r1")
        assert api.run("r1").summary == {"loss": 0.1}
        api.run("r1").delete()
        assert len(api.runs()) == 0


def test_a_writer_storing_the_same_values_again_keeps_the_edits_and_a_new_value_wins(tmp_path):
    with Store(tmp_path) as store:
        _stored_run(store)
        with trackside.Api(tmp_path) as api:
            _edit_fields(api, "r1")
            api.run("r1").summary["loss"] = 0.05
            _stored_run(store)  # a replay: the same fields, config and summary as before the edits
            _check_fields(api, "r1")
            assert api.run("r1").summary == {"loss": 0.05}
            # later changes by the writers: they win over the edits of those keys only
            store.apply("r1", summary={"loss": 0.01}, config={"lr": 0.9})
            store.upsert_run("r1", project="p", name="renamed", tags=["t"])
            r = api.run("r1")
            assert r.summary == {"loss": 0.01} and r.config["lr"] == 0.9 and r.name == "renamed"
            assert (r.tags, r.notes, r.config["new"]) == (["x", "y"], "a note", {"a": 1})


_LIVE = r"""
import sys, time, trackside
run = trackside.init(project="p", name="orig", tags=["t"], config={"lr": 0.1, "drop": 1},
                     settings={"durability": "fsync"})
for i in range(50):
    run.log({"x": float(i)})
run.summary["best"] = 7
run.flush()
print("RUN", run.id, flush=True)
time.sleep(600)
"""


def test_edits_of_a_live_run_survive_a_replay_of_its_wal_by_the_next_daemon(ts):
    p = subprocess.Popen([sys.executable, "-c", _LIVE], env=ts.env, stdout=subprocess.PIPE, text=True)
    try:
        run_id = p.stdout.readline().split()[1]
        api = trackside.Api(ts.root)
        wait_until(lambda: api.run(run_id).history_rows == 50 and api.run(run_id).summary.get("best") == 7)
        _edit_fields(api, run_id)
        r = api.run(run_id)
        r.summary["best"] = 100
        r.summary["added"] = "later"
        os.kill(daemon_pid(ts), signal.SIGKILL)  # the daemon dies with the run live ...
        p.kill()  # ... and its writer too
        p.wait()
    finally:
        p.kill()
    api.close()
    # the store lost its cursor (as after a power cut under synchronous=NORMAL): the next daemon
    # replays the whole WAL, the run event (name, tags, config) and the summary assignment included
    with sqlite3.connect(os.path.join(ts.root, "trackside.db")) as db:
        db.execute("UPDATE runs SET wal_cursor = 0 WHERE run_id = ?", (run_id,))
    assert registry.entries(ts.daemon_dir) == [(run_id, ts.root)]
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "daemon", "start"],
        env=dict(ts.env, TRACKSIDE_IDLE_TIMEOUT="3"),
        check=True,
        capture_output=True,
        timeout=60,
    )
    wait_until(lambda: registry.entries(ts.daemon_dir) == [], timeout=60)  # replayed, stored, let go
    with trackside.Api(ts.root) as api:
        cursor = api.conn.execute("SELECT wal_cursor FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
        assert cursor > 0  # the WAL was stored again
        _check_fields(api, run_id)
        r = api.run(run_id)
        assert r.summary["best"] == 100 and r.summary["added"] == "later" and r.summary["x"] == 49.0
        assert r.history_rows == 50


def test_a_later_assignment_by_the_live_run_wins_over_an_edit(ts):
    run = trackside.init(project="p")
    run.summary["best"] = 7
    run.log({"x": 1.0})
    run.flush()
    api = trackside.Api()
    wait_until(lambda: api.run(run.id).summary.get("best") == 7)
    api.run(run.id).summary.update({"best": 100, "mine": 1})
    run.log({"x": 2.0})  # the run goes on storing: the edits stand
    wait_until(lambda: api.run(run.id).summary.get("x") == 2.0)
    assert api.run(run.id).summary["best"] == 100
    run.summary["best"] = 8  # a change after the edit
    run.finish()
    assert api.run(run.id).summary == {"best": 8, "x": 2.0, "mine": 1}


def _tables_with_rid(db_path):
    with sqlite3.connect(db_path) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: db.execute(f"SELECT count(*) FROM {t} WHERE rid = 1").fetchone()[0]
            for t in tables
            if any(c[1] == "rid" for c in db.execute(f"PRAGMA table_info({t})"))
        }


def test_delete_removes_the_runs_rows_and_files(ts):
    run = trackside.init(project="p")
    run.log({"img": trackside.Image(np.zeros((4, 4, 3), dtype=np.uint8)), "x": 1.0})
    run.log({"t": trackside.Table(columns=["a"], data=[[1]])})
    print("a console line")
    keep = trackside.init(project="p", id="other")  # a second run stays as it was
    keep.log({"x": 1.0})
    keep.finish()
    api = trackside.Api()
    with pytest.raises(ValueError, match="still running"):
        api.run(run.id).delete()
    run.finish()
    folder = os.path.join(ts.root, "runs", run.id)
    assert os.path.isdir(folder)
    rid = api.conn.execute("SELECT rid FROM runs WHERE run_id = ?", (run.id,)).fetchone()[0]
    assert rid == 1
    api.run(run.id).delete()
    with pytest.raises(RunNotFoundError):
        api.run(run.id)
    assert not os.path.exists(folder)
    assert set(_tables_with_rid(os.path.join(ts.root, "trackside.db")).values()) == {0}
    assert [r.id for r in api.runs()] == ["other"] and api.run("other").history()[0]["x"] == 1.0
    assert api.delete_run(run.id) is False


def test_edits_and_delete_on_a_server_survive_its_replay(ts, servers, tmp_path):
    run = trackside.init(project="team", name="orig", tags=["t"], config={"lr": 0.1, "drop": 1})
    for i in range(20):
        run.log({"x": float(i)})
    run.summary["best"] = 7
    run.finish()
    root = tmp_path / "server"
    server = servers.start(root)
    with UploadClient(server.url) as client:
        upload_run(client, ts.root, run.id)
    api = trackside.Api(server.url)
    wait_until(lambda: api.run(run.id).state == "finished")
    _edit_fields(api, run.id)
    api.run(run.id).summary["best"] = 100
    _check_fields(api, run.id)
    with pytest.raises(ValueError, match="cannot edit a run's 'state'"):
        api.edit_run(run.id, fields={"state": "failed"})
    api.close()
    os.kill(server.pid, signal.SIGTERM)
    server.proc.wait()
    with sqlite3.connect(root / "trackside.db") as db:  # the server replays the run's WAL when it starts
        db.execute("UPDATE runs SET wal_cursor = 0")
    server = servers.start(root)
    api = trackside.Api(server.url)
    with sqlite3.connect(root / "trackside.db") as db:
        assert db.execute("SELECT wal_cursor FROM runs").fetchone()[0] > 0
    _check_fields(api, run.id)
    assert api.run(run.id).summary["best"] == 100
    api.run(run.id).delete()
    with pytest.raises(RunNotFoundError):
        api.run(run.id)
    assert not (root / "runs" / run.id).exists() and len(api.runs()) == 0
    api.close()
