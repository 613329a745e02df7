"""Runs logged by the real SDK for the web page's tests (tests/test_ui_*.py), and the page's
server process (``trackside ui``) they read them through."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request

STEPS = 300  # steps of the demo runs' metrics
IMAGE = 32  # the demo image's side (pixels)


def loss_at(step: int, lr: float) -> float:
    return 2.0 / (1.0 + lr * 50 * step) + 0.05 * ((step * 7919) % 13) / 13


def log_demo_runs(project: str = "vision") -> dict:
    """Three finished runs of ``project`` (config lr 0.001 / 0.03 / 0.1): metrics under
    ``train/`` and ``val/``, and on the first one every kind of media, a histogram over time,
    an INCREMENTAL and a MUTABLE table, console output and an artifact. Returns the runs' ids
    by name. Logs into $TRACKSIDE_DIR through the daemon of $TRACKSIDE_DAEMON_DIR."""
    import numpy as np

    import trackside

    ids = {}
    for name, lr, opt, tags in (
        ("baseline", 0.001, "adam", ["base"]),
        ("mid-lr", 0.03, "adam", []),
        ("high-lr", 0.1, "sgd", ["best"]),
    ):
        run = trackside.init(project=project, name=name, config={"lr": lr, "optimizer": opt, "layers": 4}, tags=tags)
        ids[name] = run.id
        rich = name == "baseline"
        for step in range(STEPS):
            row = {"train/loss": loss_at(step, lr), "train/acc": 1 - loss_at(step, lr) / 3}
            if step % 10 == 0:
                row["val/loss"] = loss_at(step, lr) * 1.1
            if rich and step % 100 == 0:
                row.update(media_row(step))
            if rich and step == 100:
                row.update(chart_row())
            run.log(row)
        run.summary["best_acc"] = 1 - loss_at(STEPS - 1, lr) / 3
        if rich:
            print("epoch 1 done: loss 0.52")
            for i in range(30):
                print(f"batch {i} ok")
            print("warning: learning rate is low", file=sys.stderr)
            log_tables(run)
            art = trackside.Artifact("labels", type="dataset", description="the class names")
            path = os.path.join(os.environ["TRACKSIDE_DIR"], "..", "labels.csv")
            with open(path, "w") as f:
                f.write("id,name\n1,car\n2,tree\n")
            art.add_file(path)
            run.log_artifact(art, aliases=["best"])
        run.finish()
    del np
    return ids


def demo_image(step: int):
    import numpy as np

    img = np.zeros((IMAGE, IMAGE, 3), dtype=np.uint8)
    img[:, :, 0] = np.arange(IMAGE)[None, :] * 8
    img[:, :, 2] = (step // 100) * 60
    mask = np.zeros((IMAGE, IMAGE), dtype=np.uint8)
    mask[4:14, 4:14] = 1  # car
    mask[18:30, 16:30] = 2  # tree
    return img, mask


def media_row(step: int) -> dict:
    import numpy as np

    import trackside

    img, mask = demo_image(step)
    t = np.arange(1600) / 16000.0
    return {
        "examples": trackside.Image(
            img,
            caption=f"sample at step {step}",
            masks={"pred": {"mask_data": mask, "class_labels": {1: "car", 2: "tree"}}},
            boxes={
                "gt": {
                    "box_data": [{"position": {"minX": 2, "maxX": 16, "minY": 2, "maxY": 16}, "class_id": 1}],
                    "class_labels": {1: "car"},
                    "domain": "pixel",
                }
            },
        ),
        "sound": trackside.Audio(np.sin(2 * np.pi * 440 * t).astype(np.float32), sample_rate=16000, caption="a"),
        "page": trackside.Html(f"<h3 id='h'>report at step {step}</h3>"),
        "weights": trackside.Histogram(np.random.default_rng(step).normal(step / 100, 1, 500)),
    }


# a water molecule: PDB records with element columns
WATER_PDB = """HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O
HETATM    2  H1  HOH A   1       0.957   0.000   0.000  1.00  0.00           H
HETATM    3  H2  HOH A   1      -0.240   0.927   0.000  1.00  0.00           H
END
"""


def chart_row() -> dict:
    """Charts computed by the SDK (``plot.*``) and a molecule, as a user of ``wandb.plot`` logs them."""
    import io

    import trackside

    y_true = [0, 0, 1, 1, 2, 2, 2, 0]
    probs = [
        [0.8, 0.1, 0.1],
        [0.4, 0.5, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.2, 0.7],
        [0.3, 0.3, 0.4],
        [0.6, 0.1, 0.3],
        [0.9, 0.05, 0.05],
    ]
    labels = ["cat", "dog", "bird"]
    bars = trackside.Table(columns=["class", "count"], data=[["cat", 3], ["dog", 2], ["bird", 3]])
    return {
        "roc": trackside.plot.roc_curve(y_true, probs, labels=labels),
        "confusion": trackside.plot.confusion_matrix(probs=probs, y_true=y_true, class_names=labels),
        "counts": trackside.plot.bar(bars, "class", "count", title="examples per class"),
        "water": trackside.Molecule(io.BytesIO(WATER_PDB.encode()), file_type="pdb", caption="water"),
    }


def log_tables(run) -> None:
    import numpy as np

    import trackside

    inc = trackside.Table(columns=["id", "image", "score", "label"], log_mode="INCREMENTAL")
    for log in range(3):
        for i in range(4):
            img = np.full((8, 8, 3), 40 * (log * 4 + i) % 255, dtype=np.uint8)
            inc.add_data(log * 4 + i, trackside.Image(img), (log * 4 + i) / 12, "cat" if i % 2 else "dog")
        run.log({"preds": inc}, step=STEPS + log)
    mut = trackside.Table(columns=["epoch", "acc"], log_mode="MUTABLE")
    mut.add_data(1, 0.5)
    run.log({"scores": mut}, step=STEPS + 3)
    mut.add_data(2, 0.7)
    run.log({"scores": mut}, step=STEPS + 4)


# -- the page's server ---------------------------------------------------------------------------


class UIProcess:
    """``trackside ui SOURCE --port 0 ...`` as a process; ``url`` from the line it prints."""

    def __init__(self, source: str, *args: str, env=None, token=None):
        cmd = [sys.executable, "-m", "trackside.cli", "ui", source, "--port", "0", *args]
        if token:
            cmd += ["--token", token]
        # the output goes to a file (a pipe nobody reads could fill and stop the server)
        self.log = tempfile.NamedTemporaryFile("w+", prefix="trackside-ui-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env or dict(os.environ)
        )
        deadline = time.monotonic() + 60
        line = ""
        while not line.startswith("trackside ui: http"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise AssertionError(f"trackside ui did not start: {out}")
            time.sleep(0.02)
            with open(self.log.name) as f:
                line = f.readline()
        self.page_url = line.split()[2]  # with ?token= when there is one
        self.url = self.page_url.split("?")[0].rstrip("/")
        self.token = token

    def output(self) -> str:
        with open(self.log.name) as f:
            return f.read()

    def get(self, path: str, token=None, raw: bool = False):
        """GET ``path`` (with the token as a bearer when given); the parsed JSON (or bytes)."""
        req = urllib.request.Request(self.url + path)
        token = token or self.token
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=30) as res:
            body = res.read()
            return (body, res.headers) if raw else json.loads(body)

    def status(self, path: str, token=None) -> int:
        try:
            self.get(path, token=token, raw=True)
        except urllib.error.HTTPError as e:
            return e.code
        return 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def isolated_world(tmp) -> types.SimpleNamespace:
    """Environment for a private daemon and run root under ``tmp`` (set in os.environ by the
    caller's fixture)."""
    return types.SimpleNamespace(
        root=os.path.join(tmp, "trackside"), daemon_dir=os.path.join(tmp, "daemon"), started=time.monotonic()
    )


class DemoWorld:
    """A private daemon and run root with the demo runs logged (``ids``), and ``trackside ui``
    serving them (``ui``); ``close()`` stops both and restores the environment."""

    ENV = ("TRACKSIDE_DAEMON_DIR", "TRACKSIDE_DIR", "TRACKSIDE_RUN_ID", "TRACKSIDE_MODE", "TRACKSIDE_IDLE_TIMEOUT")

    def __init__(self, tmp):
        self.saved = {k: os.environ.get(k) for k in self.ENV}
        self.tmp = str(tmp)
        self.root = os.path.join(self.tmp, "trackside")
        self.daemon_dir = os.path.join(self.tmp, "daemon")
        for k in self.ENV:
            os.environ.pop(k, None)
        os.environ.update(TRACKSIDE_DAEMON_DIR=self.daemon_dir, TRACKSIDE_DIR=self.root, TRACKSIDE_IDLE_TIMEOUT="120")
        self.ui = None
        try:
            self.ids = log_demo_runs()
            self.ui = UIProcess(self.root)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        from conftest import stop_daemon

        from trackside._run import _finish_all

        if self.ui is not None:
            self.ui.stop()
        _finish_all(0)
        stop_daemon(self.daemon_dir)
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
