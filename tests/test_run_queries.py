"""Api.runs(project, filters=, order=, per_page=): each MongoDB-style operator, sorting, server-side
paging, on SQLite, on PostgreSQL (tests/pg.py) and through a trackside server; the index of
config and summary values kept by the store's writer; clear errors for bad filters."""

import datetime
import sqlite3

import pytest

import trackside
from trackside.runs import Runs
from trackside.store import Store

N = 60


def _run(i: int) -> dict:
    """The fields of run ``r<i>``: a spread of types, nesting and missing keys."""
    config = {"lr": i / 100, "opt": {"name": ["adam", "sgd", "lion"][i % 3], "beta": 0.9}, "seed": i}
    if i % 4 == 0:
        config["flag"] = i % 8 == 0
    summary = {"loss": 1.0 / (i + 1), "acc": i / N}
    if i % 5 == 0:
        summary["best"] = "run-" + str(i)
    if i % 7 == 0:
        summary["nested"] = {"min": float(i), "max": float(i + 1)}
    return dict(
        project="p" if i % 2 else "q",
        name=f"name-{i:02d}",
        group=f"g{i % 3}",
        job_type="train" if i % 2 else "eval",
        tags=["a"] + (["b"] if i % 5 == 0 else []) + (["c"] if i % 3 == 0 else []),
        config=config,
        summary=summary,
        created_at=1_700_000_000 + i * 60,
        state="finished" if i % 6 else "failed",
    )


RUNS = {f"r{i:02d}": _run(i) for i in range(N)}


def fill(store: Store) -> None:
    for run_id, f in RUNS.items():
        store.upsert_run(
            run_id,
            project=f["project"],
            name=f["name"],
            group=f["group"],
            job_type=f["job_type"],
            tags=f["tags"],
            config=f["config"],
            created_at=f["created_at"],
        )
        store.apply(run_id, summary=f["summary"], final_state=(f["state"], 0 if f["state"] == "finished" else 1))


@pytest.fixture(params=["sqlite", "postgresql", "server"])
def api(request, tmp_path):
    root = tmp_path / "root"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        with Store(root, db=url) as store:
            fill(store)
        a = trackside.Api(root, db=url)
    else:
        with Store(root) as store:
            fill(store)
        if request.param == "server":
            server = request.getfixturevalue("servers").start(root)
            a = trackside.Api(server.url)
        else:
            a = trackside.Api(root)
    try:
        yield a
    finally:
        a.close()


def ids(runs) -> list:
    return [r.id for r in runs]


def expect(pred, order=lambda rid: -RUNS[rid]["created_at"]) -> list:
    return sorted((rid for rid, f in RUNS.items() if pred(f)), key=order)


def summary(f, key, default=None):
    return f["summary"].get(key, default)


# filters -> the runs they match (newest first, the default order)
CASES = [
    ({"config.lr": {"$gt": 0.3}}, lambda f: f["config"]["lr"] > 0.3),
    ({"config.lr": {"$gte": 0.3}}, lambda f: f["config"]["lr"] >= 0.3),
    ({"config.lr": {"$lt": 0.1}}, lambda f: f["config"]["lr"] < 0.1),
    ({"config.lr": {"$lte": 0.1}}, lambda f: f["config"]["lr"] <= 0.1),
    ({"config.lr": {"$gt": 0.1, "$lt": 0.2}}, lambda f: 0.1 < f["config"]["lr"] < 0.2),
    ({"config.seed": 7}, lambda f: f["config"]["seed"] == 7),
    ({"config.seed": {"$eq": 7}}, lambda f: f["config"]["seed"] == 7),
    ({"config.seed": {"$ne": 7}}, lambda f: f["config"]["seed"] != 7),
    ({"config.opt.name": "sgd"}, lambda f: f["config"]["opt"]["name"] == "sgd"),
    ({"config.opt.name": {"$in": ["sgd", "lion"]}}, lambda f: f["config"]["opt"]["name"] in ("sgd", "lion")),
    ({"config.opt.name": {"$nin": ["sgd", "lion"]}}, lambda f: f["config"]["opt"]["name"] not in ("sgd", "lion")),
    ({"config.seed": {"$in": [1, 2, 3]}}, lambda f: f["config"]["seed"] in (1, 2, 3)),
    ({"config.opt.name": {"$regex": "^(s|l)"}}, lambda f: f["config"]["opt"]["name"][0] in "sl"),
    ({"config.opt.name": {"$regex": "ADAM", "$options": "i"}}, lambda f: f["config"]["opt"]["name"] == "adam"),
    ({"config.flag": {"$exists": True}}, lambda f: "flag" in f["config"]),
    ({"config.flag": {"$exists": False}}, lambda f: "flag" not in f["config"]),
    ({"config.flag": True}, lambda f: f["config"].get("flag") is True),
    ({"config.flag": {"$ne": True}}, lambda f: f["config"].get("flag") is not True),
    ({"config.opt": {"$exists": True}}, lambda f: True),
    ({"summary.loss": {"$lt": 0.05}}, lambda f: f["summary"]["loss"] < 0.05),
    ({"summary_metrics.loss": {"$lt": 0.05}}, lambda f: f["summary"]["loss"] < 0.05),
    ({"summary.best": {"$exists": True}}, lambda f: "best" in f["summary"]),
    ({"summary.best": None}, lambda f: summary(f, "best") is None),
    ({"summary.best": {"$ne": None}}, lambda f: summary(f, "best") is not None),
    ({"summary.best": {"$gt": "run-3"}}, lambda f: summary(f, "best", "") > "run-3"),
    ({"summary.nested.min": {"$gte": 14}}, lambda f: summary(f, "nested", {"min": -1})["min"] >= 14),
    ({"summary.acc": {"$not": {"$gt": 0.5}}}, lambda f: not f["summary"]["acc"] > 0.5),
    ({"tags": "b"}, lambda f: "b" in f["tags"]),
    ({"tags": {"$in": ["b", "c"]}}, lambda f: {"b", "c"} & set(f["tags"])),
    ({"tags": {"$nin": ["b", "c"]}}, lambda f: not {"b", "c"} & set(f["tags"])),
    ({"tags": {"$all": ["b", "c"]}}, lambda f: {"b", "c"} <= set(f["tags"])),
    ({"tags": {"$ne": "a"}}, lambda f: "a" not in f["tags"]),
    ({"tags": {"$regex": "^[bc]$"}}, lambda f: {"b", "c"} & set(f["tags"])),
    ({"state": "failed"}, lambda f: f["state"] == "failed"),
    ({"state": {"$in": ["failed", "crashed"]}}, lambda f: f["state"] == "failed"),
    ({"group": "g1"}, lambda f: f["group"] == "g1"),
    ({"job_type": "eval"}, lambda f: f["job_type"] == "eval"),
    ({"jobType": {"$ne": "eval"}}, lambda f: f["job_type"] != "eval"),
    ({"name": {"$regex": "-1[0-4]$"}}, lambda f: f["name"][-2:] in ("10", "11", "12", "13", "14")),
    ({"display_name": "name-03"}, lambda f: f["name"] == "name-03"),
    ({"id": {"$in": ["r01", "r02"]}}, lambda f: f["name"] in ("name-01", "name-02")),
    ({"created_at": {"$gt": 1_700_000_000 + 50 * 60}}, lambda f: f["created_at"] > 1_700_000_000 + 50 * 60),
    (
        {
            "createdAt": {
                "$lt": datetime.datetime.fromtimestamp(1_700_000_000 + 5 * 60, datetime.timezone.utc).isoformat()
            }
        },
        lambda f: f["created_at"] < 1_700_000_000 + 5 * 60,
    ),
    (
        {"$or": [{"config.lr": {"$lt": 0.05}}, {"tags": "b"}]},
        lambda f: f["config"]["lr"] < 0.05 or "b" in f["tags"],
    ),
    (
        {"$and": [{"config.lr": {"$gt": 0.2}}, {"summary.acc": {"$lt": 0.6}}], "state": "finished"},
        lambda f: f["config"]["lr"] > 0.2 and f["summary"]["acc"] < 0.6 and f["state"] == "finished",
    ),
    ({"$nor": [{"tags": "b"}, {"tags": "c"}]}, lambda f: not {"b", "c"} & set(f["tags"])),
]


@pytest.mark.parametrize("filters,pred", CASES, ids=[str(c[0]) for c in CASES])
def test_each_operator_filters_as_mongodb_does(api, filters, pred):
    runs = api.runs(filters=filters, per_page=7)
    assert ids(runs) == expect(pred)
    assert len(runs) == len(expect(pred))


def test_project_and_filters_combine_and_entity_project_is_accepted(api):
    got = api.runs("someone/p", filters={"config.lr": {"$gt": 0.3}})
    assert ids(got) == expect(lambda f: f["project"] == "p" and f["config"]["lr"] > 0.3)


@pytest.mark.parametrize(
    "order,key",
    [
        ("-created_at", lambda rid: -RUNS[rid]["created_at"]),
        ("+created_at", lambda rid: RUNS[rid]["created_at"]),
        ("created_at", lambda rid: RUNS[rid]["created_at"]),
        ("+summary.loss", lambda rid: RUNS[rid]["summary"]["loss"]),
        ("-summary_metrics.loss", lambda rid: -RUNS[rid]["summary"]["loss"]),
        ("-config.lr", lambda rid: -RUNS[rid]["config"]["lr"]),
        ("+name", lambda rid: RUNS[rid]["name"]),
        ("-name", lambda rid: tuple(-ord(c) for c in RUNS[rid]["name"])),
    ],
)
def test_sorting_by_a_column_a_config_or_a_summary_value(api, order, key):
    assert ids(api.runs(order=order, per_page=9)) == sorted(RUNS, key=key)


def test_runs_without_the_sort_key_come_last_either_way(api):
    have = [rid for rid, f in RUNS.items() if "nested" in f["summary"]]
    for order, sign in (("+summary.nested.min", 1), ("-summary.nested.min", -1)):
        got = ids(api.runs(order=order))
        assert got[: len(have)] == sorted(have, key=lambda rid: sign * RUNS[rid]["summary"]["nested"]["min"])
        assert set(got[len(have) :]) == set(RUNS) - set(have)


def test_pages_are_read_on_demand_and_behave_as_a_list(api):
    runs = api.runs(order="+summary.loss", per_page=8)
    assert isinstance(runs, Runs)
    everything = sorted(RUNS, key=lambda rid: RUNS[rid]["summary"]["loss"])
    assert len(runs) == N
    assert ids(runs[10:30]) == everything[10:30]
    assert runs[0].id == everything[0] and runs[-1].id == everything[-1] and runs[17].id == everything[17]
    assert ids(runs[::7]) == everything[::7]
    assert ids(runs[55:100]) == everything[55:]
    assert runs[5:5] == []
    with pytest.raises(IndexError):
        runs[N]
    assert ids(runs) == everything
    assert runs == list(runs) and list(runs) == runs[0:N]
    assert bool(api.runs(filters={"config.lr": {"$gt": 100}})) is False
    assert api.runs(filters={"config.lr": {"$gt": 100}}) == []


def test_runs_of_a_project_compare_equal_to_a_list(api):
    runs = api.runs("p")
    assert runs == [api.run(rid) for rid in expect(lambda f: f["project"] == "p")]


@pytest.mark.parametrize(
    "filters,message",
    [
        ({"config.lr": {"$foo": 1}}, r"\$foo.*config\.lr"),
        ({"loss": 1}, r"unknown filter field 'loss'"),
        ({"$xor": []}, r"\$xor"),
        ({"config.lr": {"$in": 1}}, r"\$in on 'config\.lr' takes a list"),
        ({"config.lr": {"$gt": [1]}}, r"\$gt on 'config\.lr'"),
        ({"config.x": {"$regex": "("}}, r"bad pattern"),
        ({"config.x": {"a": 1}}, r"nested keys"),
        ({"created_at": {"$gt": "yesterday"}}, r"ISO-8601"),
        ({"$or": {"a": 1}}, r"\$or takes a non-empty list"),
        ({"config.": 1}, r"names no key"),
    ],
)
def test_a_bad_filter_is_a_value_error_naming_it(api, filters, message):
    with pytest.raises(ValueError, match=message):
        api.runs(filters=filters)


def test_a_bad_order_is_a_value_error_naming_it(api):
    with pytest.raises(ValueError, match="cannot order runs by 'tags'"):
        api.runs(order="-tags")
    with pytest.raises(ValueError, match="cannot order runs by 'loss'"):
        api.runs(order="loss")


def test_the_index_follows_what_the_writer_stores(tmp_path):
    with Store(tmp_path) as store:
        store.upsert_run("a", project="p", config={"lr": 0.1}, tags=["x"])
        store.apply("a", summary={"loss": 1.0})
        api = trackside.Api(tmp_path)
        assert ids(api.runs(filters={"summary.loss": {"$lt": 0.5}})) == []
        store.apply("a", summary={"loss": 0.2}, config={"lr": 0.5})
        assert ids(api.runs(filters={"summary.loss": {"$lt": 0.5}, "config.lr": 0.5})) == ["a"]
        store.upsert_run("a", project="p", tags=["y"])
        assert ids(api.runs(filters={"tags": "y"})) == ["a"] and ids(api.runs(filters={"tags": "x"})) == []
        api.close()


def test_a_store_made_before_the_index_is_indexed_when_a_writer_opens_it(tmp_path):
    with Store(tmp_path) as store:
        fill(store)
    conn = sqlite3.connect(tmp_path / "trackside.db")  # as a store of the previous trackside: no index
    conn.execute("DROP TABLE run_values")
    conn.commit()
    conn.close()
    api = trackside.Api(tmp_path)
    with pytest.raises(trackside.api.StoreError, match="no index"):
        api.runs(filters={"config.lr": {"$gt": 0.3}})
    Store(tmp_path).close()
    assert ids(api.runs(filters={"config.lr": {"$gt": 0.3}})) == expect(lambda f: f["config"]["lr"] > 0.3)
    api.close()
