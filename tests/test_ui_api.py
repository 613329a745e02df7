"""The web page's JSON API (docs/ui-api.md), served by a real ``trackside ui`` process (uvicorn)
over runs logged by the SDK: what a script (and the page) reads back equals what
``trackside.Api`` reads."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("plotly")
pytest.importorskip("numpy")
pytest.importorskip("PIL")

import trackside  # noqa: E402
from ui_world import STEPS, DemoWorld, UIProcess, loss_at  # noqa: E402

from trackside.ui.runquery import QueryError, matches, to_filters  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = DemoWorld(tmp_path_factory.mktemp("ui-api"))
    try:
        yield w
    finally:
        w.close()


def q(path: str, **params) -> str:
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


# -- projects and the runs table -----------------------------------------------------------------


def test_projects_count_their_runs(world):
    (p,) = world.ui.get("/api/projects")["projects"]
    assert (p["name"], p["runs"], p["running"]) == ("vision", 3, 0)


def test_runs_filter_expression_keeps_the_matching_runs(world):
    res = world.ui.get(q("/api/runs", project="vision", q="config.lr > 0.01", order="config.lr"))
    assert [r["name"] for r in res["runs"]] == ["mid-lr", "high-lr"]
    assert res["total"] == 2
    assert res["filters"] == {"config.lr": {"$gt": 0.01}}
    res = world.ui.get(
        q("/api/runs", project="vision", q="tags contains best or config.optimizer == adam and not config.lr >= 0.01")
    )
    assert sorted(r["name"] for r in res["runs"]) == ["baseline", "high-lr"]


def test_runs_sort_page_and_columns(world):
    res = world.ui.get(
        q(
            "/api/runs",
            project="vision",
            order="-summary.best_acc",
            per_page=2,
            page=0,
            columns="config.lr,summary.best_acc",
        )
    )
    api = trackside.Api(world.root)
    want = sorted(api.runs("vision"), key=lambda r: -r.summary["best_acc"])
    assert [r["id"] for r in res["runs"]] == [r.id for r in want[:2]]
    assert res["total"] == 3
    assert res["runs"][0]["values"] == {
        "config.lr": want[0].config["lr"],
        "summary.best_acc": want[0].summary["best_acc"],
    }
    assert "config.optimizer" in res["available"] and "summary.train/loss" in res["available"]
    page2 = world.ui.get(q("/api/runs", project="vision", order="-summary.best_acc", per_page=2, page=1))
    assert [r["id"] for r in page2["runs"]] == [want[2].id]


def test_runs_group_by_a_config_value(world):
    res = world.ui.get(q("/api/runs", project="vision", group="config.optimizer", order="config.lr"))
    assert [(r["group_value"], r["name"]) for r in res["runs"]] == [
        ("adam", "baseline"),
        ("adam", "mid-lr"),
        ("sgd", "high-lr"),
    ]


def test_a_bad_filter_is_a_400_that_says_where(world):
    with pytest.raises(urllib.error.HTTPError) as e:
        world.ui.get(q("/api/runs", project="vision", q="config.lr >"))
    assert e.value.code == 400
    assert "ends too early" in json.loads(e.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as e:
        world.ui.get(q("/api/runs", project="vision", q="speed > 3"))
    assert "no field 'speed'" in json.loads(e.value.read())["error"]


def test_filter_expressions_become_mongo_filters():
    assert to_filters("config.lr > 0.01 and state == running") == {
        "$and": [{"config.lr": {"$gt": 0.01}}, {"state": {"$eq": "running"}}]
    }
    assert to_filters("not (config.lr < 1 or tags contains x)") == {
        "$and": [{"config.lr": {"$gte": 1}}, {"tags": {"$nin": ["x"]}}]
    }
    assert to_filters("name startswith bert") == {"name": {"$regex": "^bert"}}
    assert to_filters("") == {}
    with pytest.raises(QueryError):
        to_filters("config.lr ~ 3")

    class Run:
        config = {"lr": 0.1, "opt": {"name": "sgd"}}
        summary = {"loss": 0.5}
        state, name, tags = "running", "bert-base", ["x"]

    assert matches(Run, to_filters("config.lr > 0.01 and name startswith bert"))
    assert matches(Run, to_filters("config.opt.name == sgd"))
    assert not matches(Run, to_filters("not tags contains x"))
    assert not matches(Run, to_filters("summary.loss > 'a'"))  # no order between a number and text


# -- one run -------------------------------------------------------------------------------------


def test_run_detail_sorts_keys_by_what_the_page_draws(world):
    rid = world.ids["baseline"]
    d = world.ui.get(f"/api/runs/{rid}")
    assert d["config"] == {"lr": 0.001, "optimizer": "adam", "layers": 4}
    assert d["scalars"] == ["train/acc", "train/loss", "val/loss"]
    assert d["media"] == {
        "confusion": "chart",
        "counts": "chart",
        "examples": "image-file",
        "page": "html-file",
        "roc": "chart",
        "sound": "audio-file",
        "water": "molecule-file",
    }
    assert d["histograms"] == ["weights"]
    assert d["tables"] == ["preds", "scores"]
    assert d["summary"]["examples"] == "<image-file>"
    assert d["metadata"]["python"]


def test_unknown_run_is_a_404_naming_it(world):
    with pytest.raises(urllib.error.HTTPError) as e:
        world.ui.get("/api/runs/nosuchrun")
    assert e.value.code == 404 and "nosuchrun" in json.loads(e.value.read())["error"]


def test_media_files_are_the_logged_bytes(world):
    rid = world.ids["baseline"]
    run = trackside.Api(world.root).run(rid)
    assert world.ui.get(q(f"/api/runs/{rid}/media", key="examples"))["steps"] == [0, 100, 200]
    at = world.ui.get(q(f"/api/runs/{rid}/media", key="examples", step=100))
    (item,) = at["items"]
    assert item["kind"] == "image" and item["caption"] == "sample at step 100"
    assert item["masks"]["pred"]["class_labels"] == {"1": "car", "2": "tree"}
    assert item["boxes"]["gt"]["box_data"][0]["class_id"] == 1
    image = run.media("examples", step=100)
    body, headers = world.ui.get(item["url"], raw=True)
    assert body == image.content and headers["content-type"] == "image/png"
    body, _ = world.ui.get(item["masks"]["pred"]["url"], raw=True)
    assert body == image.masks["pred"].content
    page = world.ui.get(q(f"/api/runs/{rid}/media", key="page", step=0))["items"][0]
    body, headers = world.ui.get(page["url"], raw=True)
    assert b"report at step 0" in body
    assert headers["content-security-policy"] == "sandbox allow-scripts"  # never the page's own origin
    sound = world.ui.get(q(f"/api/runs/{rid}/media", key="sound", step=200))["items"][0]
    body, headers = world.ui.get(sound["url"], raw=True)
    assert body == run.media("sound", step=200).content and headers["content-type"].startswith("audio/")


def test_histograms_over_time_keep_each_histogram_count(world):
    rid = world.ids["baseline"]
    res = world.ui.get(q(f"/api/runs/{rid}/histograms", key="weights"))
    assert res["steps"] == [0, 100, 200]
    run = trackside.Api(world.root).run(rid)
    for step, z, raw in zip(res["steps"], res["z"], res["raw"]):
        h = run.media("weights", step=step)
        assert raw["values"] == h.histogram and raw["bins"] == h.bins
        assert sum(z) == pytest.approx(sum(h.histogram))  # rebinned onto the common bins
    assert len(res["edges"]) == 65


def test_tables_query_pages_increments_and_versions(world):
    rid = world.ids["baseline"]
    run = trackside.Api(world.root).run(rid)
    versions = world.ui.get(f"/api/runs/{rid}/tables")["tables"]
    assert [v["increment"] for v in versions["preds"]] == [0, 1, 2]
    assert [v["version"] for v in versions["scores"]] == ["v0", "v1"]
    res = world.ui.get(q(f"/api/runs/{rid}/table", key="preds", where="score > 0.5", sort="score", desc="1"))
    assert [r["cells"][0] for r in res["rows"]] == [11, 10, 9, 8, 7]
    res = world.ui.get(q(f"/api/runs/{rid}/table", key="preds", per_page=5, page=2))
    assert res["total"] == 12 and [r["cells"][0] for r in res["rows"]] == [10, 11]
    grouped = world.ui.get(q(f"/api/runs/{rid}/table", key="preds", group="label"))
    assert grouped["columns"][:2] == ["label", "count"]
    assert sorted((r["cells"][0], r["cells"][1]) for r in grouped["rows"]) == [("cat", 6), ("dog", 6)]
    inc = world.ui.get(q(f"/api/runs/{rid}/table", key="preds", increment=1))
    assert [r["cells"][0] for r in inc["rows"]] == [4, 5, 6, 7]
    cell = inc["rows"][0]["cells"][1]
    assert cell["kind"] == "image"
    body, _ = world.ui.get(cell["url"], raw=True)
    assert body == run.table_increments("preds")[1].table.data[0][1].content
    v0 = world.ui.get(q(f"/api/runs/{rid}/table", key="scores", version="v0"))
    assert [r["cells"] for r in v0["rows"]] == [[1, 0.5]] and v0["log_mode"] == "MUTABLE"
    latest = world.ui.get(q(f"/api/runs/{rid}/table", key="scores"))
    assert latest["version"] == "v1" and [r["cells"] for r in latest["rows"]] == [[1, 0.5], [2, 0.7]]


def test_console_is_searched_and_paged(world):
    rid = world.ids["baseline"]
    last = world.ui.get(q(f"/api/runs/{rid}/console", per_page=10))
    assert last["all"] == 32 and last["page"] == last["pages"] - 1 == 3
    assert last["lines"][-1][2:] == ["stderr", "warning: learning rate is low"]
    found = world.ui.get(q(f"/api/runs/{rid}/console", q="BATCH 2"))
    assert [ln[3] for ln in found["lines"]] == ["batch 2 ok"] + [f"batch {i} ok" for i in range(20, 30)]
    assert world.ui.get(q(f"/api/runs/{rid}/console", since=30))["lines"][0][2] == "batch 29 ok"


def test_artifacts_list_versions_and_download_files(world):
    rid = world.ids["baseline"]
    arts = world.ui.get(f"/api/runs/{rid}/artifacts")["artifacts"]
    (labels,) = [a for a in arts if a["name"] == "labels"]
    assert labels["version"] == "v0" and labels["aliases"] == ["best", "latest"]
    (entry,) = labels["entries"]
    assert entry["name"] == "labels.csv" and entry["kind"] == "file"
    body, headers = world.ui.get(q("/api/artifacts/file", name="labels:v0", entry="labels.csv"), raw=True)
    assert body == b"id,name\n1,car\n2,tree\n"
    assert "attachment" in headers["content-disposition"]
    assert any(a["run_key"] == "preds" for a in arts)


def test_tail_returns_only_rows_after_the_cursor(world):
    rid = world.ids["mid-lr"]
    t = world.ui.get(q(f"/api/runs/{rid}/tail", keys="train/loss,val/loss", since=STEPS - 6))
    assert t["rows"]["_step"] == list(range(STEPS - 5, STEPS))
    assert t["rows"]["train/loss"] == [loss_at(s, 0.03) for s in range(STEPS - 5, STEPS)]
    assert t["rows"]["val/loss"] == [None] * 5  # logged every 10 steps: none of these rows has it
    assert t["cursor"] == STEPS - 1
    again = world.ui.get(q(f"/api/runs/{rid}/tail", keys="train/loss", since=t["cursor"]))
    assert again["rows"]["_step"] == [] and again["cursor"] == STEPS - 1


# -- serving: the page's files, tokens, servers --------------------------------------------------


def test_the_page_and_plotly_come_from_the_installed_packages(world):
    import plotly

    body, headers = world.ui.get("/", raw=True)
    html = body.decode()
    assert "http://" not in html and "https://" not in html  # no CDN: works air-gapped
    src = f"/static/plotly-{plotly.__version__}.min.js"
    assert src in html
    js, headers = world.ui.get(src, raw=True)
    with open(os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js"), "rb") as f:
        shipped = f.read()
    assert js == shipped and "content-encoding" not in headers
    assert "immutable" in headers["cache-control"]
    # a browser asks for gzip: compressed once, when the app started, not per request
    req = urllib.request.Request(world.ui.url + src, headers={"Accept-Encoding": "gzip, deflate"})
    with urllib.request.urlopen(req, timeout=30) as res:
        assert res.headers["content-encoding"] == "gzip" and "Accept-Encoding" in res.headers["vary"]
        assert gzip.decompress(res.read()) == shipped
    app_js, _ = world.ui.get("/static/app.js", raw=True)
    assert b"import " in app_js
    # any page path is the page (links can be shared); unknown API calls are JSON 404s
    assert world.ui.get(f"/runs/{world.ids['baseline']}/media?key=examples", raw=True)[0] == body
    assert world.ui.status("/api/nope") == 404


def test_a_non_loopback_bind_needs_a_token(world):
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "ui", world.root, "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "TRACKSIDE_TOKEN"},
    )
    assert p.returncode == 2
    assert "refusing to serve the page on 0.0.0.0 without a token" in p.stderr


def test_a_token_guards_every_call(world):
    ui = UIProcess(world.root, "--host", "0.0.0.0", token=TOKEN)
    try:
        assert ui.page_url.endswith(f"?token={TOKEN}")
        assert ui.status("/api/projects", token="wrong") == 401
        req = urllib.request.Request(ui.url + "/api/projects")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401 and "needs its token" in json.loads(e.value.read())["error"]
        assert ui.get("/api/projects")["projects"][0]["name"] == "vision"  # the bearer token

        # a browser: ?token= once sets a cookie and leads to the same page without it
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(ui.url + f"/projects/vision?token={TOKEN}&q=x", timeout=10)
        assert e.value.code == 303 and e.value.headers["location"] == "/projects/vision?q=x"
        cookie = e.value.headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in e.value.headers["set-cookie"]
        req = urllib.request.Request(ui.url + "/api/projects", headers={"Cookie": cookie})
        with urllib.request.urlopen(req, timeout=10) as res:
            assert json.loads(res.read())["projects"]
    finally:
        ui.stop()


def _sync_to(server_url: str, run_dir: str, token: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "sync", run_dir, "--to", server_url, "--token", token, "--quiet"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_the_page_beside_a_team_server_with_a_token(world, servers, tmp_path):
    server = servers.start(tmp_path / "server-root", "--token", TOKEN, "--ui-port", "0")
    info = json.loads((tmp_path / "server0.json").read_text())
    assert info["ui_url"].endswith(f"?token={TOKEN}")
    rid = world.ids["high-lr"]
    _sync_to(server.url, os.path.join(world.root, "runs", rid), TOKEN)
    base = info["ui_url"].split("?")[0].rstrip("/")

    def get(path, token=TOKEN):
        req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.urlopen(req, timeout=30) as res:
            return json.loads(res.read())

    d = get(f"/api/runs/{rid}")
    assert d["name"] == "high-lr" and d["scalars"] == ["train/acc", "train/loss", "val/loss"]
    with pytest.raises(urllib.error.HTTPError) as e:
        get("/api/projects", token=None)
    assert e.value.code == 401


def test_trackside_ui_reads_a_team_server(world, servers, tmp_path):
    server = servers.start(tmp_path / "server-root", "--token", TOKEN)
    rid = world.ids["baseline"]
    _sync_to(server.url, os.path.join(world.root, "runs", rid), TOKEN)
    ui = UIProcess(server.url, token=TOKEN)
    try:
        d = ui.get(f"/api/runs/{rid}")
        assert d["media"]["examples"] == "image-file" and d["tables"] == ["preds", "scores"]
        at = ui.get(q(f"/api/runs/{rid}/media", key="examples", step=100))
        body, _ = ui.get(at["items"][0]["url"], raw=True)
        assert body == trackside.Api(world.root).run(rid).media("examples", step=100).content
        inc = ui.get(q(f"/api/runs/{rid}/table", key="preds", increment=2))
        assert [r["cells"][0] for r in inc["rows"]] == [8, 9, 10, 11]
    finally:
        ui.stop()
