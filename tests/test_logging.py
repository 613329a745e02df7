"""``run.log``'s steps, read back through the store: one row per call, ``commit=False``, explicit
steps, the later value of a key within a step, late steps (amend, drop, error), and bad input
(values that cannot be logged, array scalars, key names, logging after finish)."""

import warnings

import pytest

import trackside
from trackside._run import UsageError

from conftest import history


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
