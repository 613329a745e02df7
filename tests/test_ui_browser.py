"""The web page in a real browser: Playwright drives Debian's Chromium (no browser download)
over runs logged by the SDK, and each test checks what a person sees on one page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("plotly")
pytest.importorskip("numpy")
pytest.importorskip("PIL")
sync_api = pytest.importorskip("playwright.sync_api")

import trackside  # noqa: E402
from ui_world import STEPS, DemoWorld  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)

LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "page-token"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = DemoWorld(tmp_path_factory.mktemp("ui-browser"))
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, world):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.world = world
    try:
        yield pg
    finally:
        ctx.close()
    assert not errors, errors  # the page's own scripts never fail


def open_page(pg, path: str, base=None):
    pg.goto((base or pg.world.ui.url) + path)
    pg.wait_for_function("document.body.dataset.ready === location.pathname", timeout=20000)


def panel_lines(pg, key: str) -> dict:
    """The drawn line of each run in the panel of ``key``: run id -> (x, y), as plotly holds them."""
    return pg.evaluate(
        """key => {
            const gd = document.querySelector(`.panel[data-key="${key}"] .plot`);
            const out = {};
            for (const t of gd.data) if (t.meta) out[t.meta] = [Array.from(t.x), Array.from(t.y)];
            return out;
        }""",
        key,
    )


# -- projects and the runs table -----------------------------------------------------------------


def test_projects_page_links_to_the_runs_table(page):
    open_page(page, "/")
    row = page.locator("#projects tbody tr")
    assert row.count() == 1 and row.locator("td").nth(1).inner_text() == "3"
    row.locator("a").click()
    page.wait_for_selector("#runs tbody tr")
    assert page.url.endswith("/projects/vision")
    assert page.locator("#runs tbody tr").count() == 3


def test_a_filter_hides_rows_and_columns_sort_and_group(page):
    open_page(page, "/projects/vision")
    names = lambda: page.locator("#runs tbody tr[data-run] td:nth-child(2)").all_inner_texts()  # noqa: E731
    assert sorted(names()) == ["baseline", "high-lr", "mid-lr"]
    page.fill("input[name=q]", "config.lr > 0.01")
    page.click("form.toolbar button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#runs tbody tr[data-run]').length === 2")
    assert sorted(names()) == ["high-lr", "mid-lr"]
    assert "q=config.lr" in page.url  # the filtered table is a link
    page.select_option("select[name=add-column]", "config.lr")
    page.wait_for_selector("#runs th[data-field='config.lr']")
    page.click("#runs th[data-field='config.lr']")  # ascending
    page.wait_for_function("document.querySelector('#runs th[data-field=\"config.lr\"]').textContent.includes('▴')")
    assert names() == ["mid-lr", "high-lr"]
    page.fill("input[name=q]", "")
    page.click("form.toolbar button[type=submit]")
    page.select_option("select[name=group]", "config.optimizer")
    page.wait_for_selector("#runs tr.group-row")
    assert page.locator("#runs tr.group-row").all_inner_texts() == ["config.optimizer = adam", "config.optimizer = sgd"]
    # the page as a link: the same table, opened anew
    open_page(page, page.url.replace(page.world.ui.url, ""))
    assert page.locator("#runs tr.group-row").count() == 2


def test_selected_runs_open_in_one_chart(page):
    open_page(page, "/projects/vision")
    for name in ("baseline", "high-lr"):
        page.locator(f"#runs tr[data-run='{page.world.ids[name]}'] input[type=checkbox]").check()
    page.click("button[name=compare]")
    page.wait_for_selector(".panel[data-key='train/loss'][data-points]")
    lines = panel_lines(page, "train/loss")
    assert set(lines) == {page.world.ids["baseline"], page.world.ids["high-lr"]}
    colors = page.evaluate(
        "() => Array.from(document.querySelector('.panel[data-key=\"train/loss\"] .plot').data)"
        ".filter(t => t.meta).map(t => t.line.color)"
    )
    assert len(set(colors)) == 2  # one colour per run


# -- charts ---------------------------------------------------------------------------------------


def test_chart_points_are_the_stored_buckets(page):
    w = page.world
    rid = w.ids["mid-lr"]
    open_page(page, f"/runs/{rid}/charts")
    page.wait_for_selector(".panel[data-key='train/loss'][data-points]")
    groups = page.locator("details.group > summary").all_inner_texts()
    assert groups == ["train (2)", "val (1)"]  # one panel per metric, grouped by prefix
    x, y = panel_lines(page, "train/loss")[rid]
    s = trackside.Api(w.root).run(rid).series("train/loss")
    assert x == s.steps.tolist() and y == s.values.tolist()  # fewer points than buckets: every point


def test_zoom_requeries_at_full_resolution(page):
    w = page.world
    rid = w.ids["baseline"]
    open_page(page, f"/runs/{rid}/charts?smooth=ema&weight=0.5")
    page.wait_for_selector(".panel[data-key='train/loss'][data-points]")
    # a narrow panel asks for fewer buckets than the run has points
    page.evaluate("() => { document.querySelector('.panel[data-key=\"train/loss\"]').style.width = '300px'; }")
    page.evaluate(
        "() => Plotly.relayout(document.querySelector('.panel[data-key=\"train/loss\"] .plot'), {'xaxis.range': [40, 60]})"
    )
    page.wait_for_selector(".panel[data-key='train/loss'][data-zoomed-at]")
    b = trackside.Api(w.root).run(rid).buckets(["train/loss"], samples=1000, min_step=40, max_step=61)["train/loss"]
    assert b.exact
    smoothed = page.evaluate(
        "() => Array.from(document.querySelector('.panel[data-key=\"train/loss\"] .plot').data).filter(t => t.meta)[0]"
    )
    assert smoothed["x"] == b.x.tolist()
    # EMA with debiasing over the raw values: the first point is the first value
    assert smoothed["y"][0] == pytest.approx(b.last[0])
    acc, n, want = 0.0, 0, []
    for v in b.last.tolist():
        acc = acc * 0.5 + 0.5 * v
        n += 1
        want.append(acc / (1 - 0.5**n))
    assert smoothed["y"] == pytest.approx(want)


def test_x_axis_log_scale_and_hover(page):
    rid = page.world.ids["high-lr"]
    open_page(page, f"/runs/{rid}/charts?x=_runtime&log=1")
    page.wait_for_selector(".panel[data-key='train/loss'][data-points]")
    lay = page.evaluate("() => document.querySelector('.panel[data-key=\"train/loss\"] .plot').layout")
    assert lay["yaxis"]["type"] == "log" and lay["hovermode"] == "x unified"
    assert lay["xaxis"]["title"]["text"] == "relative time (s)"
    x, _ = panel_lines(page, "train/loss")[rid]
    run = trackside.Api(page.world.root).run(rid)
    assert 0 <= x[0] <= x[-1] <= run.runtime + 1


LIVE_SCRIPT = textwrap.dedent(
    """
    import os, sys, time, trackside
    run = trackside.init(project="live", name="growing")
    print(run.id, flush=True)
    step = 0
    while not os.path.exists(sys.argv[1]):
        run.log({"train/loss": 1.0 / (step + 1)})
        step += 1
        time.sleep(0.02)
    run.finish()
    """
)


def test_a_live_runs_chart_grows(page, tmp_path):
    stop_file = tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE_SCRIPT, str(stop_file)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        rid = proc.stdout.readline().strip()
        api = trackside.Api(page.world.root)
        from conftest import wait_until

        wait_until(lambda: api.run(rid).last_step is not None and api.run(rid).last_step > 5, timeout=30)
        open_page(page, f"/runs/{rid}/charts")
        page.wait_for_selector(".panel[data-key='train/loss'][data-points]")
        first = int(page.get_attribute(".panel[data-key='train/loss']", "data-points"))
        page.wait_for_function(
            f"Number(document.querySelector('.panel[data-key=\"train/loss\"]').dataset.points) > {first + 20}",
            timeout=20000,
        )
        x, y = panel_lines(page, "train/loss")[rid]
        assert x == sorted(x) and len(set(x)) == len(x)  # appended in order, nothing twice
        assert all(v == pytest.approx(1.0 / (s + 1)) for s, v in zip(x, y))
    finally:
        stop_file.write_text("")
        proc.wait(60)
        proc.stdout.close()


# -- system, media, histograms, tables -------------------------------------------------------------


def test_system_panels(page):
    rid = page.world.ids["baseline"]
    open_page(page, f"/runs/{rid}/system")
    keys = page.locator(".panel").evaluate_all("ps => ps.map(p => p.dataset.key)")
    assert "system/memory/used_percent" in keys
    assert not any(k.endswith("_max") for k in keys)


def mask_pixel(page, x: int, y: int) -> list:
    return page.evaluate(
        """([x, y]) => {
            const c = document.querySelector('canvas.media-canvas');
            return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data);
        }""",
        [x, y],
    )


def test_media_mask_toggle_changes_the_pixels(page):
    w = page.world
    rid = w.ids["baseline"]
    open_page(page, f"/runs/{rid}/media?key=examples&step=100")
    page.wait_for_selector("canvas.media-canvas[data-drawn]")
    assert page.locator("figcaption").first.inner_text() == "sample at step 100"
    image = trackside.Api(w.root).run(rid).media("examples", step=100).to_numpy()
    tree = (24, 22)  # (x, y) inside the tree mask (class 2), outside every box
    with_mask = mask_pixel(page, *tree)
    assert with_mask[:3] != image[tree[1], tree[0]].tolist()
    drawn = page.get_attribute("canvas.media-canvas", "data-drawn")
    page.locator("input[data-kind=masks][data-layer=pred][data-class='2']").uncheck()  # hide class "tree"
    page.wait_for_function(f"document.querySelector('canvas.media-canvas').dataset.drawn !== '{drawn}'")
    assert mask_pixel(page, *tree)[:3] == image[tree[1], tree[0]].tolist()
    car = (8, 8)
    assert mask_pixel(page, *car)[:3] != image[car[1], car[0]].tolist()  # the car class still shows
    page.locator("input[data-kind=masks][data-layer=pred]:not([data-class])").uncheck()  # the whole layer
    page.wait_for_function("document.querySelector('canvas.media-canvas').dataset.drawn")
    page.wait_for_timeout(100)
    assert mask_pixel(page, *car)[:3] == image[car[1], car[0]].tolist()
    # the step slider
    page.fill("input[name=step]", "0")
    page.dispatch_event("input[name=step]", "input")
    page.wait_for_selector("#media[data-step='0']")
    assert page.locator("figcaption").first.inner_text() == "sample at step 0"


def test_audio_and_sandboxed_html(page):
    rid = page.world.ids["baseline"]
    open_page(page, f"/runs/{rid}/media?key=sound")
    src = page.get_attribute("audio", "src")
    assert src and page.evaluate("s => fetch(s).then(r => r.status)", src) == 200
    page.select_option("select[name=key]", "page")
    frame = page.wait_for_selector("iframe.html")
    assert frame.get_attribute("sandbox") == "allow-scripts"
    assert frame.content_frame().wait_for_selector("#h").inner_text() == "report at step 200"


def test_sdk_charts_and_a_molecule_are_drawn_from_their_rows(page):
    rid = page.world.ids["baseline"]
    run = trackside.Api(page.world.root).run(rid)

    def figure(key: str) -> list:
        if page.input_value("select[name=key]") != key:
            page.select_option("select[name=key]", key)
        page.wait_for_selector(f"#media[data-key='{key}'] figure.chart[data-drawn]")
        return page.evaluate("() => document.querySelector('#media figure.chart .plot').data")

    open_page(page, f"/runs/{rid}/media?key=roc")
    roc = run.media("roc", step=100)
    traces = figure("roc")
    lines = {t["name"]: list(zip(t["x"], t["y"])) for t in traces if t.get("name")}
    want: dict = {}
    for cls, fpr, tpr in roc.data:
        want.setdefault(cls, []).append((fpr, tpr))
    assert lines == want and set(want) == {"cat", "dog", "bird"}
    heat = figure("confusion")[0]
    counts = {(a, p): n for a, p, n in run.media("confusion", step=100).data}
    assert heat["type"] == "heatmap" and heat["x"] == heat["y"] == ["cat", "dog", "bird"]
    assert heat["z"] == [[counts[(a, p)] for p in heat["x"]] for a in heat["y"]]
    assert sum(map(sum, heat["z"])) == 8
    bar = figure("counts")[0]
    assert bar["type"] == "bar" and bar["x"] == ["cat", "dog", "bird"] and bar["y"] == [3, 2, 3]
    page.select_option("select[name=key]", "water")
    mol = page.wait_for_selector("#media[data-key='water'] figure[data-atoms]")
    assert mol.get_attribute("data-atoms") == "3" and mol.query_selector("a[download]") is not None
    atoms = page.evaluate("() => document.querySelector('#media .plot3d').data[0]")
    assert atoms["text"] == ["O", "H", "H"] and atoms["x"] == [0, 0.957, -0.24]


def test_histograms_heat_map_and_slider(page):
    rid = page.world.ids["baseline"]
    open_page(page, f"/runs/{rid}/histograms")
    heat = page.evaluate("() => document.querySelector('#heatmap').data[0]")
    assert heat["type"] == "heatmap" and heat["x"] == [0, 100, 200] and len(heat["y"]) == 64
    assert page.get_attribute("#histogram", "data-step") == "200"
    page.fill("input[name=step]", "0")
    page.dispatch_event("input[name=step]", "input")
    assert page.get_attribute("#histogram", "data-step") == "0"


def test_tables_filter_images_increments_and_versions(page):
    rid = page.world.ids["baseline"]
    open_page(page, f"/runs/{rid}/tables")
    rows = page.locator("#table tbody tr")
    assert rows.count() == 12
    assert page.locator("#table img.thumb").first.evaluate("img => img.decode().then(() => img.naturalWidth)") == 8
    page.fill("input[name=where]", "score > 0.5 and label == cat")
    page.click("form.toolbar button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#table tbody tr').length === 3")
    assert page.locator("#table tbody tr td:first-child").all_inner_texts() == ["7", "9", "11"]
    page.fill("input[name=where]", "")
    page.click("form.toolbar button[type=submit]")
    page.select_option("select[name=increment]", "1")
    page.wait_for_function("document.querySelectorAll('#table tbody tr').length === 4")
    assert page.locator("#table tbody tr td:first-child").all_inner_texts() == ["4", "5", "6", "7"]
    page.select_option("select[name=key]", "scores")
    page.wait_for_function("document.querySelectorAll('#table tbody tr').length === 2")
    page.select_option("select[name=version]", "v0")
    page.wait_for_function("document.querySelectorAll('#table tbody tr').length === 1")
    assert page.locator("#table tbody tr td").all_inner_texts() == ["1", "0.5"]


# -- overview, console, artifacts ------------------------------------------------------------------


def test_overview_shows_config_summary_and_metadata(page):
    rid = page.world.ids["baseline"]
    open_page(page, f"/runs/{rid}")
    config = dict(
        zip(page.locator("#config th").all_inner_texts(), page.locator("#config td").all_inner_texts(), strict=True)
    )
    assert config == {"lr": "0.001", "optimizer": "adam", "layers": "4"}
    fields = dict(zip(page.locator("#fields th").all_inner_texts(), page.locator("#fields td").all_inner_texts()))
    assert fields["state"] == "finished" and fields["python"] and fields["last step"] == str(STEPS + 4)
    assert "best_acc" in page.locator("#summary").inner_text()


def test_console_search_and_pages(page):
    rid = page.world.ids["baseline"]
    open_page(page, f"/runs/{rid}/console")
    assert page.locator("#console .line").last.inner_text().endswith("warning: learning rate is low")
    page.fill("input[name=q]", "batch 2")
    page.click("form.toolbar button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#console .line').length === 11")
    assert page.locator("#console .line").first.inner_text().endswith("batch 2 ok")


def test_artifacts_with_versions_and_files(page):
    rid = page.world.ids["baseline"]
    open_page(page, f"/runs/{rid}/artifacts")
    link = page.locator("section[data-name=labels] a", has_text="labels.csv")
    with page.expect_download() as d:
        link.click()
    assert open(d.value.path()).read() == "id,name\n1,car\n2,tree\n"


# -- a team server with a token ----------------------------------------------------------------------


def test_the_page_on_a_team_server_with_a_token(page, servers, tmp_path):
    w = page.world
    server = servers.start(tmp_path / "server-root", "--token", TOKEN, "--ui-port", "0")
    info = json.loads((tmp_path / "server0.json").read_text())
    rid = w.ids["high-lr"]
    subprocess.run(
        [sys.executable, "-m", "trackside.cli", "sync", os.path.join(w.root, "runs", rid), "--to", server.url]
        + ["--token", TOKEN, "--quiet"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    base = info["ui_url"].split("?")[0].rstrip("/")
    page.goto(base + "/")
    assert "needs its token" in page.inner_text("body")
    page.goto(info["ui_url"])  # the address the server printed: ?token=..., then a cookie
    page.wait_for_function("document.body.dataset.ready === '/'")
    assert "token" not in page.url
    open_page(page, f"/runs/{rid}/charts", base=base)
    page.wait_for_selector(".panel[data-key='train/loss'][data-points]")
    x, y = panel_lines(page, "train/loss")[rid]
    s = trackside.Api(w.root).run(rid).series("train/loss")
    assert x == s.steps.tolist() and y == s.values.tolist()
