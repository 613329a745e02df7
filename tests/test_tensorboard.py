"""TensorBoard both ways, with the real writers and TensorBoard's own loader: export ->
``EventAccumulator`` equal; tensorboardX and torch ``SummaryWriter`` log directories -> import ->
history equal; ``init(sync_tensorboard=True)`` captures a writer's values live."""

import io
import os

import pytest

pytest.importorskip("tensorboard")
np = pytest.importorskip("numpy")
PIL = pytest.importorskip("PIL.Image")

import trackside
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trackside.cli import main as cli
from trackside.integration.tensorboard import Reader


def accumulator(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def test_export_is_read_back_equal_by_tensorboards_event_accumulator(ts, tmp_path, capsys):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
    run = trackside.init(project="p")
    for step in range(4):
        run.log({"loss": 1.0 / (step + 1), "acc": step / 4, "w": trackside.Histogram(rng.normal(size=100), num_bins=8)})
    run.log({"sample": trackside.Image(pixels)}, step=5)
    run.finish()
    view = trackside.Api(ts.root).run(run.id)
    history = view.history()

    assert cli(["export", "tensorboard", run.id, "--out", str(tmp_path / "tb"), "--root", ts.root]) == 0
    assert "4 histograms, 1 images, 8 scalars" in capsys.readouterr().out
    acc = accumulator(tmp_path / "tb")
    assert sorted(acc.Tags()["scalars"]) == ["acc", "loss"]
    for key in ("loss", "acc"):
        got = [(e.step, e.wall_time, e.value) for e in acc.Scalars(key)]
        want = [(r["_step"], r["_timestamp"], float(np.float32(r[key]))) for r in history if key in r]
        assert got == want
    hists = acc.Histograms("w")
    logged = [r["w"] for r in history if "w" in r]
    assert [h.step for h in hists] == [0, 1, 2, 3]
    for h, w in zip(hists, logged):
        v = h.histogram_value
        assert [v.min, *v.bucket_limit] == w["bins"] and list(v.bucket) == w["values"]
    (img,) = acc.Images("sample")
    assert img.step == 5 and (img.width, img.height) == (5, 6)
    assert np.array_equal(np.asarray(PIL.open(io.BytesIO(img.encoded_image_string))), pixels)


def test_tensorboardx_logdir_imports_into_equal_history(ts, tmp_path, capsys):
    tbx = pytest.importorskip("tensorboardX")
    rng = np.random.default_rng(1)
    values = [rng.normal(size=200) for _ in range(3)]
    pixels = rng.integers(0, 255, (3, 4, 6), dtype=np.uint8)  # CHW, tensorboardX's default
    for name in ("exp1", "exp2"):
        w = tbx.SummaryWriter(str(tmp_path / "logs" / name))
        for step in range(3):
            w.add_scalar("train/loss", 0.5 * step, step)
            w.add_histogram("weights", values[step], step, bins=10)
        w.add_image("sample", pixels, 2)
        w.close()

    assert cli(["import", "tensorboard", str(tmp_path / "logs"), "--root", ts.root]) == 0
    out = capsys.readouterr().out
    assert out.count("3 rows") == 2, out
    runs = {r.name: r for r in trackside.Api(ts.root).runs()}
    assert sorted(runs) == ["exp1", "exp2"]
    rows = runs["exp1"].history(objects=True)
    assert [r["_step"] for r in rows] == [0, 1, 2]
    assert [r["train/loss"] for r in rows] == [0.0, 0.5, 1.0]
    for r, v in zip(rows, values):
        counts, edges = np.histogram(v, bins=10)
        assert r["weights"].histogram == counts.tolist() and r["weights"].bins == edges.tolist()
    assert np.array_equal(np.asarray(PIL.open(io.BytesIO(rows[2]["sample"]._data))), pixels.transpose(1, 2, 0))
    assert runs["exp1"].metadata["imported"]["from"] == "tensorboard"

    # importing again imports nothing
    assert cli(["import", "tensorboard", str(tmp_path / "logs"), "--root", ts.root]) == 0
    assert capsys.readouterr().out.count("exists already") == 2
    assert len(trackside.Api(ts.root).runs()) == 2


def test_torch_summary_writer_logdir_imports_into_equal_history(ts, tmp_path):
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter
    from trackside.integration.tensorboard import import_logdir

    w = SummaryWriter(str(tmp_path / "run"))
    scalars = [0.1, 0.25, 3.5e-3, 1e10]
    for step, v in enumerate(scalars):
        w.add_scalar("loss", v, step * 10)
        w.add_scalars("pair", {"a": step, "b": -step}, step * 10)  # its own sub-writers: own runs
    w.add_histogram("h", np.arange(50.0), 30, bins=5)
    w.close()
    results = import_logdir(str(tmp_path / "run"), ts.root, project="tb")
    assert sorted(r["name"] for r in results) == ["pair_a", "pair_b", "run"]
    by_name = {r.name: r for r in trackside.Api(ts.root).runs(project="tb")}
    rows = by_name["run"].history(objects=True)
    assert [(r["_step"], r["loss"]) for r in rows] == [(s * 10, float(np.float32(v))) for s, v in enumerate(scalars)]
    counts, edges = np.histogram(np.arange(50.0), bins=5)
    assert rows[-1]["h"].histogram == counts.tolist() and rows[-1]["h"].bins == edges.tolist()
    assert [r["pair"] for r in by_name["pair_b"].history()] == [0.0, -1.0, -2.0, -3.0]


def test_sync_tensorboard_logs_what_a_summary_writer_writes(ts, tmp_path):
    tbx = pytest.importorskip("tensorboardX")
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    run = trackside.init(project="p", sync_tensorboard=True)
    w = tbx.SummaryWriter(str(tmp_path / "live"))
    w2 = SummaryWriter(str(tmp_path / "torch"))
    for step in range(3):
        w.add_scalar("loss", 1.5 * step, step)
        w2.add_histogram("torch/h", np.arange(10.0) * step, step, bins=4)
    w.close()
    w2.close()
    run.finish()
    rows = trackside.Api(ts.root).run(run.id).history(objects=True)
    assert [(r["_step"], r["loss"]) for r in rows] == [(0, 0.0), (1, 1.5), (2, 3.0)]
    counts, edges = np.histogram(np.arange(10.0) * 2, bins=4)
    assert rows[2]["torch/h"].histogram == counts.tolist() and rows[2]["torch/h"].bins == edges.tolist()
    # the event files are written as without trackside, and after finish() nothing is captured
    assert [e.value for e in accumulator(tmp_path / "live").Scalars("loss")] == [0.0, 1.5, 3.0]
    run2 = trackside.init(project="p")
    w = tbx.SummaryWriter(str(tmp_path / "after"))
    w.add_scalar("loss", 1.0, 0)
    w.close()
    run2.finish()
    assert trackside.Api(ts.root).run(run2.id).history() == []


def test_reader_counts_what_it_cannot_import():
    from tensorboard.compat.proto import event_pb2, summary_pb2

    reader = Reader()
    event = event_pb2.Event(
        step=1,
        summary=summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag="x", simple_value=2.0),
                summary_pb2.Summary.Value(tag="clip", audio=summary_pb2.Summary.Audio(sample_rate=8000)),
            ]
        ),
    )
    assert reader.values(event) == {"x": 2.0}
    assert dict(reader.skipped) == {"audio": 1}


def test_import_of_a_missing_logdir_says_so(ts, tmp_path, capsys):
    assert cli(["import", "tensorboard", str(tmp_path / "nope"), "--root", ts.root]) == 1
    assert f"no such log directory: {tmp_path / 'nope'}" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert cli(["import", "tensorboard", str(tmp_path / "empty"), "--root", ts.root]) == 1
    assert "found no runs" in capsys.readouterr().err
