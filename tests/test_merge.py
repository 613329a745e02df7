"""The merge stage (daemon/merger.py): one test per promise of DESIGN.md §4."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackside.daemon.merger import Merger, Metrics, Row


def e(step, values, commit=True, t=0, payload=None):
    """One resolved entry as the SDK sends it."""
    return (step, commit, t, values, payload)


def steps(rows):
    return [r.step for r in rows]


# -- one writer: the seeds' semantics ----------------------------------------------------------


def test_single_writer_commit_false_merges_without_committing():
    m = Merger()
    m.add(1, [e(0, {"loss": 0.5}, commit=False)])
    assert m.finalize() == []  # step 0 is still open
    m.add(1, [e(0, {"acc": 0.9})])
    assert m.finalize() == [Row(0, 0, {"loss": 0.5, "acc": 0.9}, [], False)]


def test_single_writer_step_jump_commits_pending_row():
    m = Merger()
    m.add(1, [e(0, {"a": 1}, commit=False), e(5, {"b": 2}, commit=False)])
    rows = m.finalize()
    assert rows == [Row(0, 0, {"a": 1}, [], False)]  # 5 is open until committed or passed
    m.add(1, [e(6, {"c": 3})])
    assert steps(m.finalize()) == [5, 6]


def test_single_writer_same_step_merges():
    m = Merger()
    m.add(1, [e(3, {"a": 1}, commit=False), e(3, {"b": 2}, commit=False), e(3, {"c": 3})])
    assert m.finalize() == [Row(3, 0, {"a": 1, "b": 2, "c": 3}, [], False)]


def test_single_writer_later_value_wins():
    m = Merger()
    m.add(1, [e(0, {"a": 1}, commit=False), e(0, {"a": 2})])
    assert m.finalize()[0].values == {"a": 2}
    assert m.stats["collisions"] == 0  # the same writer overwriting itself is not a collision


def test_payloads_kept_in_arrival_order_and_time_is_latest():
    m = Merger()
    m.add(1, [e(0, {"a": 1}, commit=False, t=5, payload=b"img1"), e(0, {}, t=9, payload=b"img2")])
    m.add(2, [e(0, {"b": 1}, t=7, payload=b"img3")])
    (row,) = m.finalize(everything=True)
    assert row.payloads == [b"img1", b"img2", b"img3"]
    assert row.time_us == 9


def test_values_are_never_changed():
    # a row may hold an entry's own values (add's contract: the caller leaves them alone), but
    # what merges into the row later never changes them
    m = Merger()
    v, w = {"a": 1}, {"a": 3}
    m.add(1, [e(0, v, commit=False)])
    m.add(1, [e(0, {"b": 2})])
    m.add(2, [e(1, w, commit=False)])
    m.add(3, [e(1, {"a": 4}, commit=False)])
    assert m.finalize(everything=True) == [Row(0, 0, {"a": 1, "b": 2}, [], False), Row(1, 0, {"a": 4}, [], False)]
    assert v == {"a": 1} and w == {"a": 3}


def test_single_writer_same_step_again_merges_into_its_row():
    # a committed step is final at once for a writer logging alone, until the same step comes again
    m = Merger()
    m.add(1, [e(0, {"a": 1}), e(1, {"a": 2})])
    m.add(1, [e(1, {"b": 3})])
    assert m.finalize() == [Row(0, 0, {"a": 1}, [], False), Row(1, 0, {"a": 2, "b": 3}, [], False)]
    assert m.stats["amends"] == 0


# -- several writers -----------------------------------------------------------------------------


def test_four_writers_same_steps_different_keys_make_one_row():
    m = Merger()
    for w in range(4):  # every rank has logged once: from here on each one holds rows back
        m.add(w, [e(0, {f"rank{w}/loss": w / 10})])
    emitted = m.finalize()
    for s in range(1, 3):
        for w in range(4):
            m.add(w, [e(s, {f"rank{w}/loss": s + w / 10})])
            emitted += m.finalize()
    assert steps(emitted) == [0, 1, 2]
    for row in emitted:
        assert row.values == {f"rank{w}/loss": row.step + w / 10 for w in range(4)}
        assert row.amend is False
    assert m.stats["collisions"] == 0


@pytest.mark.parametrize(
    "rule, expected",
    [("last", 2.0), ("mean", 8.0 / 3), ("sum", 8.0), ("min", 1.0), ("max", 5.0)],
)
def test_colliding_keys_follow_reduce_rule(rule, expected):
    m = Merger()
    if rule != "last":
        m.define_metric("x", reduce=rule)
    for w, v in ((1, 1.0), (2, 5.0), (3, 2.0)):
        m.add(w, [e(0, {"x": v, f"only{w}": w})])
    (row,) = m.finalize()
    assert row.values["x"] == pytest.approx(expected)
    assert {k: v for k, v in row.values.items() if k != "x"} == {"only1": 1, "only2": 2, "only3": 3}
    assert m.stats["collisions"] == 2  # two writers' values met the first one's


def test_reduce_uses_each_writers_latest_value():
    m = Merger()
    m.define_metric("x", reduce="sum")
    m.add(1, [e(0, {"x": 1}, commit=False), e(0, {"x": 10})])
    m.add(2, [e(0, {"x": 5})])
    assert m.finalize()[0].values["x"] == 15


def test_reduce_of_non_numeric_falls_back_to_last_and_counts():
    m = Merger()
    m.define_metric("tag", reduce="mean")
    m.define_metric("flag", reduce="sum")
    m.add(1, [e(0, {"tag": "a", "flag": True})])
    m.add(2, [e(0, {"tag": "b", "flag": True})])
    (row,) = m.finalize()
    assert row.values == {"tag": "b", "flag": True}
    assert m.stats["reduce_fallbacks"] == 2
    assert m.stats["collisions"] == 2


# -- finalization ----------------------------------------------------------------------------------


def test_row_not_final_until_all_live_writers_passed_it():
    m = Merger()
    m.join(1)
    m.join(2)
    m.add(1, [e(0, {"a": 0}), e(1, {"a": 1}), e(2, {"a": 2})])
    m.add(2, [e(0, {"b": 0})])
    assert steps(m.finalize()) == [0]
    m.add(2, [e(1, {"b": 1}, commit=False)])
    assert m.finalize() == []  # writer 2 is still in step 1
    m.add(2, [e(1, {"c": 1})])
    (row,) = m.finalize()
    assert row == Row(1, 0, {"a": 1, "b": 1, "c": 1}, [], False)


def test_fresh_writer_does_not_block_rows():
    m = Merger()
    m.join(1)
    m.join(2)  # never logs
    m.add(1, [e(0, {"a": 0}), e(1, {"a": 1})])
    assert steps(m.finalize()) == [0, 1]


def test_writer_joining_before_finalize_holds_a_lone_writers_rows():
    m = Merger(merge_window=10.0)
    m.add(1, [e(0, {"a": 0}), e(1, {"a": 1})], now=0.0)
    m.join(2, now=0.0)  # connected after writer 1's entries arrived, before they were final
    assert m.finalize(now=1.0) == [] and m.pending() == 2
    m.add(2, [e(0, {"b": 0})], now=1.0)
    assert [(r.step, r.values) for r in m.finalize(now=1.0)] == [(0, {"a": 0, "b": 0})]


def test_writer_logging_first_time_after_steps_closed_amends_them():
    # the price of the fresh-writer rule: a rank that starts after others closed steps 0..1
    m = Merger()
    m.join(1)
    m.join(2)
    m.add(1, [e(0, {"a": 0}), e(1, {"a": 1})])
    assert steps(m.finalize()) == [0, 1]
    m.add(2, [e(0, {"b": 0}), e(1, {"b": 1}), e(2, {"b": 2})])
    m.add(1, [e(2, {"a": 2})])
    rows = m.finalize()
    assert [(r.step, r.amend, r.values) for r in rows] == [
        (0, True, {"b": 0}),
        (1, True, {"b": 1}),
        (2, False, {"b": 2, "a": 2}),
    ]


def test_writer_leaving_releases_rows():
    m = Merger()
    m.add(1, [e(s, {"a": s}) for s in range(6)])
    m.add(2, [e(0, {"b": 0}), e(1, {"b": 1}, commit=False)])
    assert steps(m.finalize()) == [0]
    m.leave(2)
    assert steps(m.finalize()) == [1, 2, 3, 4, 5]


def test_leaving_writers_pending_rows_finalize_by_usual_rule():
    m = Merger()
    m.add(1, [e(s, {"a": s}) for s in range(3)])  # writer 1 done with 0..2
    m.add(2, [e(s, {"b": s}) for s in range(5)] + [e(5, {"b": 5}, commit=False)])
    assert steps(m.finalize()) == [0, 1, 2]
    m.leave(2)
    assert m.finalize() == []  # writer 1 has not passed 3..5 yet
    m.add(1, [e(4, {"a": 4})])
    assert steps(m.finalize()) == [3, 4]
    m.leave(1)
    assert steps(m.finalize()) == [5]


def test_all_writers_left_finalizes_everything():
    m = Merger()
    m.add(1, [e(0, {"a": 0}, commit=False)])
    m.leave(1)
    assert steps(m.finalize()) == [0]


def test_merge_window_finalizes_stuck_row():
    m = Merger(merge_window=10.0)
    m.add(1, [e(0, {"a": 0}), e(1, {"a": 1})], now=100.0)
    m.add(2, [e(0, {"b": 0}, commit=False)], now=100.0)  # writer 2 stalls inside step 0
    assert m.finalize(now=105.0) == []
    m.add(1, [e(2, {"a": 2})], now=108.0)
    assert m.finalize() == []  # no now: the window is not applied
    assert steps(m.finalize(now=110.5)) == [0, 1]  # 2 was touched 2.5 s ago
    assert steps(m.finalize(now=118.5)) == [2]


def test_merge_window_counts_from_last_touch():
    m = Merger(merge_window=10.0)
    m.add(1, [e(0, {"a": 0}, commit=False)], now=0.0)
    m.add(1, [e(0, {"b": 0}, commit=False)], now=8.0)
    assert m.finalize(now=12.0) == []
    assert m.finalize(now=18.5)[0].values == {"a": 0, "b": 0}


def test_add_without_now_is_stamped_by_the_next_finalize():
    m = Merger(merge_window=1.0)
    m.add(1, [e(0, {"a": 0}, commit=False)])
    assert m.finalize(now=50.0) == []
    assert steps(m.finalize(now=51.5)) == [0]


def test_merge_window_none_disables_it():
    m = Merger(merge_window=None)
    m.add(1, [e(0, {"a": 0}, commit=False)], now=0.0)
    assert m.finalize(now=1e9) == []
    assert steps(m.finalize(everything=True)) == [0]


def test_finalize_everything_returns_all_pending_in_step_order():
    m = Merger()
    m.add(1, [e(5, {"a": 5}, commit=False)])
    m.add(2, [e(2, {"b": 2}, commit=False), e(3, {"b": 3}, commit=False)])
    assert steps(m.finalize(everything=True)) == [2, 3, 5]
    assert m.finalize(everything=True) == []
    assert m.stats["pending"] == 0


def test_lead_is_how_far_a_writer_is_ahead_of_the_slowest_one_that_logged():
    m = Merger()
    m.join(3)  # has not logged: counts for nobody's lead
    m.add(1, [e(s, {"a": s}) for s in range(10)])
    m.add(2, [e(0, {"b": 0}), e(1, {"b": 1}, commit=False)])
    assert m.lead(1) == 8 and m.lead(2) == 0
    assert m.lead(3) == float("-inf") and m.lead(4) == float("-inf")  # not logged; not live
    m.leave(2)
    assert m.lead(1) == 0


def test_is_pending_tells_rows_added_and_not_emitted():
    m = Merger()
    m.add(1, [e(0, {"a": 0}), e(1, {"a": 1})])  # a lone writer's ready rows
    assert m.is_pending(0) and m.is_pending(1) and not m.is_pending(2)
    m.finalize()
    assert not m.is_pending(0)
    m.add(2, [e(5, {"b": 5}, commit=False)])
    assert m.is_pending(5) and not m.is_pending(4)


def test_writer_and_pending_counts():
    m = Merger()
    m.join(1)
    m.add(2, [e(0, {"a": 0}, commit=False)])  # add joins an unknown writer
    assert set(m.writers) == {1, 2} and m.live_writers() == 2 and m.pending() == 1
    m.leave(1)
    assert set(m.writers) == {2} and m.live_writers() == 1


def test_add_does_not_emit():
    m = Merger()
    assert m.add(1, [e(0, {"a": 0})]) is None
    assert m.stats["pending"] == 1


# -- late steps --------------------------------------------------------------------------------------


def _closed_through_2(**kw):
    m = Merger(**kw)
    m.add(1, [e(s, {"a": s}) for s in range(3)])
    assert steps(m.finalize()) == [0, 1, 2]
    return m


def test_late_step_amend_keeps_values():
    m = _closed_through_2()
    m.add(2, [e(1, {"b": 1}, commit=False)])  # a writer that joined after step 1 closed
    assert m.finalize() == []  # an amend row is merged like any row until it is final
    m.add(2, [e(1, {"c": 1})])
    assert m.finalize() == [Row(1, 0, {"b": 1, "c": 1}, [], True)]
    assert m.stats["amends"] == 1


def test_late_step_drop_counts_and_warns_once():
    seen = []
    m = _closed_through_2(late_steps="drop", on_warning=seen.append)
    m.add(2, [e(0, {"b": 0}), e(1, {"b": 1})])
    m.add(3, [e(2, {"c": 2})])
    assert m.finalize() == []
    assert m.stats["late_dropped"] == 3
    assert len(seen) == 1 and m.warnings == seen
    assert "late_steps='drop'" in seen[0] and "step 0" in seen[0]


def test_late_step_error_policy_amends_in_the_daemon():
    m = _closed_through_2(late_steps="error")
    m.add(2, [e(0, {"b": 0})])
    assert m.finalize() == [Row(0, 0, {"b": 0}, [], True)]


def test_lower_step_of_pending_row_is_not_late():
    m = Merger()
    m.add(2, [e(0, {"b": 0})])
    m.add(1, [e(s, {"a": s}) for s in range(4)])
    assert steps(m.finalize()) == [0]
    m.add(1, [e(2, {"a2": 2})])  # below writer 1's cursor, but row 2 waits for writer 2
    m.leave(2)
    rows = m.finalize()
    assert [(r.step, r.amend) for r in rows] == [(1, False), (2, False), (3, False)]
    assert rows[1].values == {"a": 2, "a2": 2}
    assert m.stats["amends"] == 0


def test_bad_constructor_arguments_are_rejected():
    with pytest.raises(ValueError, match="late_steps='later'"):
        Merger(late_steps="later")
    with pytest.raises(ValueError, match="merge_window"):
        Merger(merge_window=0)


# -- define_metric ---------------------------------------------------------------------------------


def test_define_metric_globs_and_precedence():
    reg = Metrics()
    reg.define("*", reduce="sum")
    reg.define("val/*", reduce="max")
    reg.define("val/loss", reduce="min")
    assert reg.reduce_of("val/loss") == "min"  # exact beats globs
    assert reg.reduce_of("val/acc") == "max"  # longer glob beats "*"
    assert reg.reduce_of("train/loss") == "sum"
    reg.define("*", reduce="mean")  # defined later, still less specific
    assert reg.reduce_of("val/acc") == "max"
    assert reg.reduce_of("train/loss") == "mean"


def test_define_metric_redefinition_replaces():
    reg = Metrics()
    reg.define("loss", reduce="max", summary="min")
    assert reg.lookup("loss").summary == ("min",)
    reg.define("loss", reduce="sum")
    d = reg.lookup("loss")
    assert (d.reduce, d.summary) == ("sum", None)  # replaced whole, not merged


def test_define_metric_equal_length_globs_later_wins():
    reg = Metrics()
    reg.define("a*", reduce="max")
    reg.define("*b", reduce="min")
    assert reg.reduce_of("ab") == "min"


def test_metric_lookup_is_cached():
    reg = Metrics()
    reg.define("val/*", reduce="mean")
    d = reg.lookup("val/x")
    reg._globs.clear()  # a cached key no longer needs the globs
    assert reg.lookup("val/x") is d
    reg.define("other", reduce="sum")  # a new definition invalidates the cache
    assert reg.lookup("val/x") is None


def test_define_metric_rejects_bad_values():
    reg = Metrics()
    with pytest.raises(ValueError, match="reduce='median'"):
        reg.define("x", reduce="median")
    with pytest.raises(ValueError, match="'avg'"):
        reg.define("x", summary="min,avg")
    with pytest.raises(ValueError, match="goal"):
        reg.define("x", summary="best")
    with pytest.raises(ValueError, match="none"):
        reg.define("x", summary="none,min")
    assert reg.lookup("x") is None  # nothing half-defined


def test_merger_reduce_rule_follows_glob_definition():
    m = Merger()
    m.define_metric("grad/*", reduce="max")
    for w, v in ((1, 3.0), (2, 7.0), (3, 1.0)):
        m.add(w, [e(0, {"grad/norm": v, "lr": v})])
    (row,) = m.finalize()
    assert row.values == {"grad/norm": 7.0, "lr": 1.0}


# -- stats ---------------------------------------------------------------------------------------


def test_stats_counts():
    m = Merger()
    m.add(1, [e(0, {"x": 1}), e(1, {"x": 1}), e(2, {"x": 1}, commit=False)])
    m.add(2, [e(0, {"x": 2})])
    assert m.stats["entries"] == 4
    assert m.stats["pending"] == 3
    m.finalize()
    m.add(3, [e(0, {"y": 1})])
    m.finalize(everything=True)
    assert m.stats == {
        "entries": 5,
        "rows_emitted": 4,  # steps 0, 1, 2 and the amend of 0
        "amends": 1,
        "collisions": 1,
        "reduce_fallbacks": 0,
        "late_dropped": 0,
        "late_reduced": 0,
        "pending": 0,
    }


# -- late entries of another writer still follow the reduce rule ----------------------------------


@pytest.mark.parametrize("rule, expected", [("sum", 6.0), ("mean", 2.0), ("min", 1.0), ("max", 3.0)])
def test_a_writer_first_seen_after_its_steps_were_final_is_reduced_into_them(rule, expected):
    """Ranks on another host reach a server only with that host's first upload, after the
    server made the steps final: their amend rows carry the value reduced over all writers."""
    m = Merger()
    m.define_metric("t", reduce=rule)
    m.add(1, [e(0, {"t": 1.0, "a": 0}), e(1, {"t": 1.0})])
    m.add(2, [e(0, {"t": 2.0}), e(1, {"t": 2.0})])
    assert steps(m.finalize(everything=True)) == [0, 1]
    m.add(3, [e(0, {"t": 3.0, "b": 1})])
    rows = m.finalize(everything=True)
    assert [(r.step, r.amend, r.values) for r in rows] == [(0, True, {"t": expected, "b": 1})]
    assert m.stats["late_reduced"] == 1


def test_a_lone_writers_rows_are_reduced_with_a_late_second_writer():
    m = Merger()
    m.define_metric("t", reduce="sum")
    m.add(1, [e(s, {"t": 1.0}) for s in range(3)])  # alone: the fast path makes the rows
    assert steps(m.finalize()) == [0, 1, 2]
    m.add(2, [e(s, {"t": 1.0}) for s in range(3)])
    assert [(r.step, r.amend, r.values) for r in m.finalize(everything=True)] == [
        (s, True, {"t": 2.0}) for s in range(3)
    ]


def test_a_writers_late_value_replaces_its_own_kept_one():
    m = Merger()
    m.define_metric("t", reduce="sum")
    m.add(1, [e(0, {"t": 1.0}), e(1, {"t": 1.0})])
    m.add(2, [e(0, {"t": 10.0}), e(1, {"t": 10.0})])
    m.finalize(everything=True)
    m.add(2, [e(0, {"t": 20.0})])  # writer 2 amends its own step 0
    assert [r.values for r in m.finalize(everything=True)] == [{"t": 21.0}]


def test_late_values_beyond_the_kept_steps_fall_back_to_the_last_value(monkeypatch):
    from trackside.daemon import merger

    monkeypatch.setattr(merger, "KEEP_STEPS", 2)
    m = Merger()
    m.define_metric("t", reduce="sum")
    m.add(1, [e(s, {"t": 1.0}) for s in range(4)])
    m.finalize(everything=True)
    m.add(2, [e(0, {"t": 1.0}), e(3, {"t": 1.0})])
    assert [(r.step, r.values) for r in m.finalize(everything=True)] == [(0, {"t": 1.0}), (3, {"t": 2.0})]


# -- property: nothing lost, nothing duplicated -----------------------------------------------


_ops = st.lists(
    st.tuples(
        st.sampled_from(["log", "log", "log", "log", "finalize", "leave"]),
        st.integers(0, 3),  # writer
        st.integers(-3, 2),  # step delta from the writer's last step
        st.booleans(),  # commit
        st.integers(0, 3),  # number of keys
        st.integers(0, 4),  # seconds the clock moves
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=_ops, window=st.sampled_from([None, 2.0, 5.0]))
def test_property_every_value_in_exactly_one_row(ops, window):
    m = Merger(merge_window=window)
    last_step = {}
    logged = set()
    rows = []
    now = 0.0
    n = 0
    for op, w, delta, commit, nkeys, dt in ops:
        now += dt
        if op == "finalize":
            got = m.finalize(now=now)
            assert steps(got) == sorted(steps(got))
            rows += got
        elif op == "leave":
            m.leave(w)
        else:
            step = max(0, last_step.get(w, 0) + delta)
            last_step[w] = max(step, last_step.get(w, 0))
            values = {}
            for _ in range(nkeys):
                n += 1
                values[f"w{w}k{n}"] = float(n)  # distinct keys: no value may replace another
                logged.add((step, f"w{w}k{n}", float(n)))
            m.add(w, [e(step, values, commit)], now=now)
    rows += m.finalize(now=now, everything=True)

    seen = Counter((r.step, k, v) for r in rows for k, v in r.values.items())
    assert set(seen) == logged
    assert all(c == 1 for c in seen.values())
    first_emits = Counter(r.step for r in rows if not r.amend)
    assert all(c == 1 for c in first_emits.values())
    assert m.stats["collisions"] == 0 and m.stats["pending"] == 0
    assert m.stats["rows_emitted"] == len(rows)


def test_recalled_entries_count_as_emitted_and_reduce_late_ones():
    """A server's stream started again re-reads stored entries: nothing is emitted for them,
    and another writer's entries for their steps amend them by the reduce rule."""
    m = Merger()
    m.define_metric("t", reduce="sum")
    m.recall(1, [e(0, {"t": 1.0}), e(1, {"t": 1.0})])
    m.recall(2, [e(0, {"t": 1.0}), e(1, {"t": 1.0})])
    assert m.finalize(everything=True) == [] and m.pending() == 0
    m.add(3, [e(0, {"t": 1.0}), e(1, {"t": 1.0}), e(2, {"t": 1.0})])
    assert [(r.step, r.amend, r.values) for r in m.finalize(everything=True)] == [
        (0, True, {"t": 3.0}),
        (1, True, {"t": 3.0}),
        (2, False, {"t": 1.0}),
    ]
