"""Take the screenshots of docs/ui/ (used in the README): the demo runs of the UI's tests
(tests/ui_world.py) logged by the SDK into a temporary run root, `trackside ui` serving them,
Chromium drawing each page.

    python docs/ui/screenshots.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))

from ui_world import DemoWorld  # noqa: E402

SYSTEM_RUN = """
import time, trackside
run = trackside.init(project="vision", name="system-demo",
                     settings={"system_sample_interval": 0.2, "system_log_interval": 0.5})
for step in range(300):
    run.log({"train/loss": 1 / (1 + step)})
    time.sleep(0.02)
run.finish()
print(run.id)
"""


def main() -> None:
    from playwright.sync_api import sync_playwright

    tmp = tempfile.mkdtemp(prefix="trackside-shots-")
    world = DemoWorld(tmp)
    try:
        sysrun = subprocess.run(
            [sys.executable, "-c", SYSTEM_RUN], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        base, ids = world.ui.url, world.ids
        rid = ids["baseline"]
        pages = {
            "projects": "/",
            "runs": "/projects/vision?columns=config.lr,config.optimizer,summary.best_acc&order=config.lr",
            "compare": f"/projects/vision/compare?runs={','.join(ids.values())}&smooth=ema",
            "charts": f"/runs/{rid}/charts",
            "system": f"/runs/{sysrun}/system",
            "media": f"/runs/{rid}/media?key=examples&step=200",
            "plot": f"/runs/{rid}/media?key=roc&step=100",
            "histograms": f"/runs/{rid}/histograms",
            "tables": f"/runs/{rid}/tables",
            "overview": f"/runs/{rid}",
            "console": f"/runs/{rid}/console",
            "artifacts": f"/runs/{rid}/artifacts",
        }
        with sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=[
                    "--no-sandbox",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = b.new_page(viewport={"width": 1280, "height": 760})
            for name, path in pages.items():
                page.goto(base + path)
                page.wait_for_function("document.body.dataset.ready === location.pathname", timeout=30000)
                page.wait_for_timeout(800)
                page.screenshot(path=os.path.join(HERE, f"{name}.png"))
                print(f"docs/ui/{name}.png")
            b.close()
    finally:
        world.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
