"""``trackside.init`` and the run it returns: ``dir=``, bad arguments, the disabled mode, the
module-level functions acting on the current run, and the run as a context manager."""

import os

import pytest

import trackside
from trackside._run import UsageError


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


def test_init_dir_puts_the_root_under_it(ts, tmp_path):
    run = trackside.init(project="p", dir=tmp_path / "elsewhere")
    run.log({"a": 1})
    run.finish()
    assert run.root == str(tmp_path / "elsewhere" / "trackside")
    assert trackside.Api(str(tmp_path / "elsewhere" / "trackside")).run(run.id).history()[0]["a"] == 1


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
