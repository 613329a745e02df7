"""The Lightning logger with a real ``Trainer`` on a tiny model: one run whose history equals
what ``log_metrics`` received, on one process and under DDP (2 CPU processes, gloo); hyper-
parameters as config; checkpoints as artifacts; ``finalize`` finishes the run."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

import trackside

SCRIPT = r"""
import json, os, sys
import torch
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from trackside.integration.lightning import TracksideLogger, _rank

out, strategy, devices, log_model, all_ranks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
received = []


class Recording(TracksideLogger):
    def log_metrics(self, metrics, step=None):
        received.append([step, {k: float(v) for k, v in metrics.items()}])
        super().log_metrics(metrics, step)


class Tiny(L.LightningModule):
    def __init__(self, lr=0.1, hidden=4):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, i):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


torch.manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
loader = lambda: torch.utils.data.DataLoader(data, batch_size=8)
logger = Recording(project="lit", log_model={"no": False, "yes": True, "all": "all"}[log_model],
                   rank_zero_only=all_ranks == "no")
trainer = L.Trainer(max_epochs=2, logger=logger, accelerator="cpu", devices=devices, strategy=strategy,
                    log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[ModelCheckpoint(dirpath=os.path.join(os.path.dirname(out), "ckpt"),
                                               monitor="val_loss", save_top_k=1)])
trainer.fit(Tiny(), loader(), loader())
with open(f"{out}.{_rank()}", "w") as f:
    json.dump({"id": logger.version, "received": received, "finished": logger._run is None or logger._run.finished}, f)
"""


def fit(ts, strategy="auto", devices=1, log_model="no", all_ranks=False):
    script = ts.tmp / "fit.py"
    script.write_text(SCRIPT)
    out = ts.tmp / "received.json"
    p = subprocess.run(
        [sys.executable, str(script), str(out), strategy, str(devices), log_model, "yes" if all_ranks else "no"],
        check=False,
        env=ts.env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ts.tmp,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return [json.loads((ts.tmp / f"received.json.{rank}").read_text()) for rank in range(devices)]


def by_step(received):
    rows = {}
    for step, metrics in received:
        rows.setdefault(step, {}).update(metrics)
    return rows


def check_history(ts, result):
    r = trackside.Api(ts.root).run(result["id"])
    rows = {row["_step"]: {k: v for k, v in row.items() if not k.startswith("_")} for row in r.history()}
    want = by_step(result["received"])
    assert rows == want
    assert any("val_loss" in m for m in want.values()) and any("train_loss" in m for m in want.values())
    assert r.config["lr"] == 0.1 and r.config["hidden"] == 4
    assert r.state == "finished" and result["finished"]
    return r


def test_trainer_logs_one_run_equal_to_what_log_metrics_received(ts):
    (result,) = fit(ts, log_model="yes")
    assert len(result["received"]) >= 8  # 4 steps per epoch, 2 epochs, validation
    r = check_history(ts, result)
    (art,) = r.logged_artifacts()
    assert art.name == f"model-{r.id}" and art.type == "model" and art.entries[0].endswith(".ckpt")


def test_ddp_on_two_cpu_processes_logs_one_run_from_rank_zero(ts):
    results = fit(ts, strategy="ddp", devices=2)
    check_history(ts, results[0])
    assert len(trackside.Api(ts.root).runs()) == 1  # the other rank's logger started no run


def test_ddp_with_every_rank_logging_writes_one_run_from_two_writers(ts):
    results = fit(ts, strategy="ddp", devices=2, all_ranks=True)
    assert results[0]["id"] == results[1]["id"]
    (r,) = trackside.Api(ts.root).runs()
    ranks = [by_step(res["received"]) for res in results]
    rows = {row["_step"]: row for row in r.history()}
    assert sorted(rows) == sorted(set(ranks[0]) | set(ranks[1]))
    for step, row in rows.items():
        for key in ranks[0][step]:
            assert row[key] in (ranks[0][step][key], ranks[1][step][key])  # one step's values merged (last wins)
    assert r.state == "finished"


def test_log_model_must_be_known(ts):
    from trackside.integration.lightning import TracksideLogger

    with pytest.raises(trackside.UsageError, match="log_model='best'"):
        TracksideLogger(log_model="best")


def test_fabric_logs_through_the_same_logger(ts):
    import lightning as L
    from trackside.integration.lightning import TracksideLogger

    logger = TracksideLogger(project="fabric", config={"source": "fabric"})
    fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[logger])
    fabric.log_dict({"loss": 0.5, "acc": 0.25}, step=0)
    fabric.log("loss", 0.125, step=3)
    logger.log_hyperparams({"lr": 0.01})
    logger.finalize("success")
    r = trackside.Api(ts.root).run(logger.version)
    assert [(row["_step"], row["loss"]) for row in r.history()] == [(0, 0.5), (3, 0.125)]
    assert r.config == {"source": "fabric", "lr": 0.01} and r.project == "fabric" and r.state == "finished"
