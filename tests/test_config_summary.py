"""``run.config``, ``run.summary`` and ``define_metric``'s summaries, set in the training process
and read back through the store (the daemon's summary rules: test_summary.py)."""

import trackside


def test_config_summary_and_define_metric(ts):
    run = trackside.init(project="p", config={"lr": 0.1, "layers": [64, 64]})
    run.config.update({"batch": 32})
    run.config.dropout = 0.2
    run.define_metric("val/*", summary="min,max")
    for i, v in enumerate([0.5, 0.2, 0.9]):
        run.log({"val/loss": v, "train/loss": v * 2})
    run.summary["best_epoch"] = 3
    run.summary["train/loss"] = -1.0  # an assignment wins over the computed value
    run.finish()
    r = trackside.Api(run.root).run(run.id)
    assert r.config == {"lr": 0.1, "layers": [64, 64], "batch": 32, "dropout": 0.2}
    assert r.summary["val/loss"] == {"min": 0.2, "max": 0.9}
    assert r.summary["best_epoch"] == 3
    assert r.summary["train/loss"] == -1.0
