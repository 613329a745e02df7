"""The run summary (daemon/summary.py): one test per promise of DESIGN.md §4."""

import math

import pytest

from trackside.daemon.merger import Merger, Metrics, Row
from trackside.daemon.summary import Summary


def rows(*pairs, amend=False):
    """Rows from (step, values) pairs."""
    return [Row(step, 0, values, [], amend) for step, values in pairs]


def summary_of(values, **define):
    """The summary of key ``v`` after rows 0.. with ``values``, under ``define_metric``."""
    reg = Metrics()
    if define:
        reg.define("v", **define)
    s = Summary(reg)
    s.update(rows(*enumerate({"v": x} for x in values)))
    return s.snapshot()


def test_default_summary_is_last_value():
    s = Summary()
    s.update(rows((0, {"loss": 3.0, "acc": 0.1}), (1, {"loss": 2.0}), (2, {"loss": 1.5})))
    assert s.snapshot() == {"loss": 1.5, "acc": 0.1}


@pytest.mark.parametrize(
    "kind, expected",
    [("min", 1), ("max", 8), ("mean", 4), ("first", 1), ("last", 3)],
)
def test_summary_kind(kind, expected):
    assert summary_of([1, 8, 3], summary=kind) == {"v": {kind: expected}}


def test_summary_none_leaves_key_out():
    assert summary_of([1, 8, 3], summary="none") == {}


def test_summary_several_kinds_nest_under_the_key():
    assert summary_of([1, 8, 3], summary="min,max,mean,first,last") == {
        "v": {"min": 1, "max": 8, "mean": 4, "first": 1, "last": 3}
    }
    assert summary_of([1, 8, 3], summary=["max", "last"]) == {"v": {"max": 8, "last": 3}}


def test_summary_best_follows_goal():
    assert summary_of([3, 1, 2], summary="best", goal="minimize") == {"v": {"best": 1}}
    assert summary_of([3, 1, 2], summary="best", goal="maximize") == {"v": {"best": 3}}


def test_summary_copy_is_the_plain_last_value():
    assert summary_of([1, 8, 3], summary="copy") == {"v": 3}


def test_summary_non_numeric_only_first_and_last():
    got = summary_of([1, "oops", 3, True], summary="min,max,mean,first,last")
    assert got == {"v": {"min": 1, "max": 3, "mean": 2, "first": 1, "last": True}}
    assert summary_of(["a", "b"], summary="min,first") == {"v": {"first": "a"}}


def test_summary_nan_propagates():
    got = summary_of([2.0, float("nan"), 1.0], summary="min,mean")
    assert math.isnan(got["v"]["min"]) and math.isnan(got["v"]["mean"])


def test_summary_glob_definition():
    reg = Metrics()
    reg.define("val/*", summary="max")
    s = Summary(reg)
    s.update(rows((0, {"val/acc": 0.5, "loss": 2.0}), (1, {"val/acc": 0.4, "loss": 1.0})))
    assert s.snapshot() == {"val/acc": {"max": 0.5}, "loss": 1.0}


def test_summary_shares_registry_with_merger():
    m = Merger()
    s = Summary(m.metrics)
    m.define_metric("loss", summary="min")
    m.add(1, [(0, True, 0, {"loss": 2.0}, None), (1, True, 0, {"loss": 1.0}, None)])
    s.update(m.finalize())
    assert s.snapshot() == {"loss": {"min": 1.0}}


# -- explicit assignments ------------------------------------------------------------------------


def test_summary_assignment_wins_over_history():
    s = Summary()
    s.update(rows((0, {"acc": 0.5})))
    s.set("acc", 0.99)
    s.update(rows((1, {"acc": 0.7}), (2, {"acc": 0.8})))
    assert s.snapshot() == {"acc": 0.99}


def test_summary_update_mapping_assigns():
    reg = Metrics()
    reg.define("loss", summary="min")
    s = Summary(reg)
    s.update({"best_accuracy": 0.9, "loss": "custom"})
    s.update(rows((0, {"loss": 1.0, "best_accuracy": 0.1})))
    assert s.snapshot() == {"best_accuracy": 0.9, "loss": "custom"}


def test_summary_delete_is_for_good_until_set():
    s = Summary()
    s.update(rows((0, {"acc": 0.5, "loss": 1.0})))
    s.delete("acc")
    s.delete("never-there")
    s.update(rows((1, {"acc": 0.7})))
    assert s.snapshot() == {"loss": 1.0}
    s.set("acc", 1.0)
    assert s.snapshot() == {"loss": 1.0, "acc": 1.0}


def test_summary_update_explicit_assigns_then_deletes():
    s = Summary()
    s.update(rows((0, {"a": 1, "b": 2, "c": 3})))
    s.update_explicit({"a": 10, "b": 20}, ["b", "c"])
    assert s.snapshot() == {"a": 10}


# -- amend rows ---------------------------------------------------------------------------------


def test_amend_does_not_clobber_last():
    s = Summary()
    s.update(rows((4, {"loss": 0.4}), (5, {"loss": 0.3})))
    s.update(rows((2, {"loss": 9.0, "late_only": 1}), amend=True))
    assert s.snapshot() == {"loss": 0.3, "late_only": 1}


def test_amend_of_the_newest_step_replaces_last():
    s = Summary()
    s.update(rows((4, {"loss": 0.4}), (5, {"loss": 0.3})))
    s.update(rows((5, {"loss": 0.35}), amend=True))
    assert s.snapshot() == {"loss": 0.35}


def test_amend_of_older_step_updates_first_and_stats():
    reg = Metrics()
    reg.define("loss", summary="first,last,min")
    s = Summary(reg)
    s.update(rows((4, {"loss": 0.4}), (5, {"loss": 0.3})))
    s.update(rows((1, {"loss": 0.1}), amend=True))
    assert s.snapshot() == {"loss": {"first": 0.1, "last": 0.3, "min": 0.1}}


def test_rows_out_of_step_order_keep_last_by_step():
    s = Summary()
    s.update(rows((7, {"a": 7}), (3, {"a": 3, "b": 3}), (8, {"b": 8})))
    assert s.snapshot() == {"a": 7, "b": 8}
