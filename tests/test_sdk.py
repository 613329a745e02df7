"""The training-side API in one process: the seeds' step semantics, config, summary, console,
metadata, bad input and the disabled mode, read back through the store."""

import os
import subprocess
import sys
import warnings

import pytest

import trackside
from trackside._run import UsageError

from conftest import run_script


def history(run):
    return trackside.Api(run.root).run(run.id).history()


def test_log_without_step_commits_one_row_per_call(ts):
    run = trackside.init(project="p")
    for i in range(5):
        run.log({"loss": 1.0 / (i + 1)})
    assert run.step == 5
    run.finish()
    rows = history(run)
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [1.0, 0.5, 1 / 3, 0.25, 0.2]


def test_commit_false_merges_into_the_same_row(ts):
    run = trackside.init(project="p")
    run.log({"a": 1}, commit=False)
    run.log({"b": 2}, commit=False)
    run.log({"c": 3})
    run.log({"a": 4})
    run.finish()
    rows = history(run)
    assert [(r["_step"], {k: v for k, v in r.items() if not k.startswith("_")}) for r in rows] == [
        (0, {"a": 1, "b": 2, "c": 3}),
        (1, {"a": 4}),
    ]


def test_explicit_step_merges_same_step_and_jumps_forward(ts):
    run = trackside.init(project="p")
    run.log({"x": 1}, step=0)
    run.log({"y": 2}, step=0)  # same step: merged
    run.log({"x": 3}, step=10)  # jump: step 0 committed
    assert run.step == 10
    run.log({"y": 4})  # no step: goes to the open step 10 and commits it
    assert run.step == 11
    run.finish()
    rows = history(run)
    assert [(r["_step"], r.get("x"), r.get("y")) for r in rows] == [(0, 1, 2), (10, 3, 4)]


def test_same_key_later_value_wins_within_a_step(ts):
    run = trackside.init(project="p")
    run.log({"loss": 1.0}, commit=False)
    run.log({"loss": 2.0})
    run.finish()
    assert history(run)[0]["loss"] == 2.0


def test_late_step_amend_is_the_default(ts):
    run = trackside.init(project="p")
    run.log({"a": 1}, step=5, commit=True)
    run.log({"b": 2}, step=3)
    run.log({"a": 7}, step=5)
    run.finish()
    rows = {r["_step"]: r for r in history(run)}
    assert rows[3]["b"] == 2
    assert rows[5]["a"] == 7


def test_late_step_drop_counts_and_warns_once(ts):
    run = trackside.init(project="p", settings={"late_steps": "drop"})
    run.log({"a": 1}, step=5, commit=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.log({"b": 2}, step=3)
        run.log({"b": 3}, step=4)
    assert run.late_dropped == 2
    assert len([w for w in caught if "late_steps='drop'" in str(w.message)]) == 1
    run.finish()
    assert [r["_step"] for r in history(run)] == [5]


def test_late_step_error_raises_and_keeps_earlier_data(ts):
    run = trackside.init(project="p", settings={"late_steps": "error"})
    run.log({"a": 1}, step=5, commit=True)
    with pytest.raises(UsageError, match="step 3 is lower than the current step 6"):
        run.log({"b": 2}, step=3)
    run.log({"a": 2})
    run.finish()
    assert [(r["_step"], r["a"]) for r in history(run)] == [(5, 1), (6, 2)]


def test_unloggable_value_names_the_key_and_loses_nothing(ts):
    run = trackside.init(project="p")
    run.log({"ok": 1.0})
    with pytest.raises(TypeError, match="'bad'"):
        run.log({"fine": 2.0, "bad": object()})
    with pytest.raises(TypeError, match="keys must be str"):
        run.log({3: 1.0})
    with pytest.raises(TypeError, match="dict"):
        run.log([1, 2])
    run.log({"ok": 3.0})
    run.finish()
    rows = history(run)
    assert [(r["_step"], r["ok"]) for r in rows] == [(0, 1.0), (1, 3.0)]
    assert all("fine" not in r for r in rows)


def test_array_scalars_are_logged_as_numbers(ts):
    np = pytest.importorskip("numpy")
    run = trackside.init(project="p")
    run.log({"f32": np.float32(0.5), "i64": np.int64(7), "f64": np.float64(0.25)})
    run.finish()
    row = history(run)[0]
    assert (row["f32"], row["i64"], row["f64"]) == (0.5, 7, 0.25)


def test_bad_key_names_are_accepted_and_warned_once(ts):
    run = trackside.init(project="p")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.log({"my metric!": 1})
        run.log({"my metric!": 2})
    assert len([w for w in caught if "naming rules" in str(w.message)]) == 1
    run.finish()
    assert [r["my metric!"] for r in history(run)] == [1, 2]


def test_log_after_finish_is_an_error(ts):
    run = trackside.init(project="p")
    run.log({"a": 1})
    run.finish()
    with pytest.raises(UsageError, match="finish"):
        run.log({"a": 2})
    assert len(history(run)) == 1


def test_config_summary_and_define_metric(ts):
    run = trackside.init(project="p", config={"lr": 0.1, "layers": [64, 64]})
    run.config.update({"batch": 32})
    run.config.dropout = 0.2
    run.define_metric("val/*", summary="min,max")
    for i, v in enumerate([0.5, 0.2, 0.9]):
        run.log({"val/loss": v, "train/loss": v * 2})
    run.summary["best_epoch"] = 3
    run.summary["train/loss"] = -1.0  # an assignment wins over the computed value
    run.finish()
    r = trackside.Api(run.root).run(run.id)
    assert r.config == {"lr": 0.1, "layers": [64, 64], "batch": 32, "dropout": 0.2}
    assert r.summary["val/loss"] == {"min": 0.2, "max": 0.9}
    assert r.summary["best_epoch"] == 3
    assert r.summary["train/loss"] == -1.0


def test_module_level_functions_act_on_the_current_run(ts):
    run = trackside.init(project="p")
    assert trackside.run is run
    trackside.log({"a": 1})
    trackside.config.update({"k": 1})
    trackside.summary["s"] = 2
    trackside.finish()
    assert trackside.run is None
    r = trackside.Api(ts.root).run(run.id)
    assert r.history()[0]["a"] == 1 and r.config["k"] == 1 and r.summary["s"] == 2


def test_context_manager_finishes_and_records_failure(ts):
    with pytest.raises(RuntimeError):
        with trackside.init(project="p") as run:
            run.log({"a": 1})
            raise RuntimeError("boom")
    r = trackside.Api(ts.root).run(run.id)
    assert r.state == "failed" and r.exit_code == 1
    assert r.history()[0]["a"] == 1


def test_console_output_and_metadata_are_recorded(ts, tmp_path):
    code = (
        "import trackside, sys\n"
        "run = trackside.init(project='p')\n"
        "print('epoch 1 done')\n"
        "print('warning: something', file=sys.stderr)\n"
        "run.log({'a': 1})\n"
        "run.finish()\n"
        "print(run.id)\n"
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    (repo / "train.py").write_text(code)
    subprocess.run(git + ["add", "train.py"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=repo, check=True)
    (repo / "train.py").write_text(code + "# changed\n")
    p = subprocess.run(
        [sys.executable, "train.py", "--lr", "3"], cwd=repo, env=ts.env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    run_id = p.stdout.strip().splitlines()[-1]
    r = trackside.Api(ts.root).run(run_id)
    console = r.console()
    assert "epoch 1 done" in console and "warning: something" in console
    meta = r.metadata
    assert meta["args"] == ["--lr", "3"]
    assert meta["python"].count(".") == 2
    assert meta["git"]["commit"] and "# changed" in meta["git"]["diff"]
    assert "trackside" in {k.lower() for k in meta["packages"]}


def test_init_dir_puts_the_root_under_it(ts, tmp_path):
    run = trackside.init(project="p", dir=tmp_path / "elsewhere")
    run.log({"a": 1})
    run.finish()
    assert run.root == str(tmp_path / "elsewhere" / "trackside")
    assert trackside.Api(str(tmp_path / "elsewhere" / "trackside")).run(run.id).history()[0]["a"] == 1


def test_resume_continues_steps_of_the_same_run(ts):
    run = trackside.init(project="p", id="resumable")
    run.log({"a": 1})
    run.log({"a": 2})
    run.finish()
    os.environ.pop("TRACKSIDE_RUN_ID", None)
    run = trackside.init(project="p", id="resumable", resume="must")
    assert run.step == 2
    run.log({"a": 3})
    run.finish()
    assert [(r["_step"], r["a"]) for r in history(run)] == [(0, 1), (1, 2), (2, 3)]
    os.environ.pop("TRACKSIDE_RUN_ID", None)
    with pytest.raises(UsageError, match="does not exist"):
        trackside.init(project="p", id="missing", resume="must")


def test_bad_init_arguments_are_clear(ts):
    with pytest.raises(UsageError, match="mode"):
        trackside.init(mode="sometimes")
    with pytest.raises(UsageError, match="late_steps"):
        trackside.init(settings={"late_steps": "maybe"})
    with pytest.raises(UsageError, match="unknown setting"):
        trackside.init(settings={"nope": 1})
    with pytest.raises(UsageError, match="run id"):
        trackside.init(id="../etc")


def test_disabled_mode_does_nothing(ts):
    run = trackside.init(mode="disabled")
    run.log({"a": 1})
    run.config.update({"x": 1})
    run.summary["y"] = 2
    run.finish()
    assert not os.path.exists(ts.daemon_dir + "/daemon.sock")
    assert not os.path.exists(ts.root)


def test_forked_child_joins_the_run_as_another_writer(ts):
    run = trackside.init(project="p")
    run.log({"parent": 1}, step=0)
    pid = os.fork()
    if pid == 0:  # the child: a new writer of the same run
        code = 1
        try:
            run.log({"child": 2}, step=0)
            run.finish()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run.log({"parent": 3}, step=1)
    run.finish()
    rows = history(run)
    assert rows[0]["parent"] == 1 and rows[0]["child"] == 2
    assert rows[1]["parent"] == 3


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


def test_full_buffer_blocks_log_until_the_daemon_catches_up(ts):
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
    blocked = not done.wait(1.0)
    resume()
    t.join(60)
    assert blocked, "log() should wait while the buffer is full"
    run.finish()
    assert [r["a"] for r in history(run)] == list(range(500))


def test_rich_values_travel_as_payload_and_land_in_the_row(ts):
    class Point:
        def __init__(self, x):
            self.x = x

        def _trackside_log(self, run, key, step):
            return {"_type": "point", "x": self.x, "key": key, "step": step}

    run = trackside.init(project="p")
    run.log({"loss": 0.5, "pt": Point(3)})
    run.log({"loss": 0.25})
    run.finish()
    rows = history(run)
    assert rows[0]["pt"] == {"_type": "point", "x": 3, "key": "pt", "step": 0}
    assert rows[0]["loss"] == 0.5 and "pt" not in rows[1]
    assert trackside.Api(run.root).run(run.id).summary["pt"]["x"] == 3


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


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_finish_returns_when_console_lines_ride_behind_the_finish_event(ts, mode):
    """Output printed just before finish() is framed after the finish event; the daemon must
    report the writer done through those records too, or finish() waits for its timeout."""
    code = f"""
import time, trackside
run = trackside.init(project="p", mode={mode!r}, settings={{"finish_timeout": 20}})
for i in range(40):
    run.log({{"i": i}})
    time.sleep(0.02)
print("last words")
t = time.monotonic()
run.finish()
print("finish took", time.monotonic() - t)
"""
    out = run_script(code, ts.env, timeout=60).stdout
    took = float(out.split("finish took")[1])
    assert took < 10, out


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
