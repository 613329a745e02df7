"""Rich media from the seeds (histograms, images with masks and boxes, audio, video, html, 3-D
objects, molecules, plots), logged through ``import trackside as wandb`` into a real daemon and
read back equal; content addressing; the media index; bad input."""

import io
import json
import os
import sqlite3
import subprocess
import sys
import wave

import numpy as np
import pytest

import trackside
import trackside as wandb
from trackside.data_types import base

from conftest import history

PIL = pytest.importorskip("PIL.Image")


def logged(fn, **init):
    """Run ``fn(run)`` in a fresh run, finish it and return the run as the store holds it."""
    run = wandb.init(project="media", **init)
    fn(run)
    run.finish()
    return wandb.Api(run.root).run(run.id)


def media_files(view) -> list[str]:
    out = []
    for folder, _, files in os.walk(os.path.join(view.dir, "media")):
        out += [os.path.join(folder, f) for f in files if not f.startswith(".")]
    return sorted(out)


# -- histograms ------------------------------------------------------------------------------------


def test_histogram_in_history_and_summary_reads_back_equal(ts):
    rng = np.random.default_rng(0)
    data = rng.normal(size=1000)
    hist = wandb.Histogram(data)
    custom = wandb.Histogram(data, num_bins=512)
    binned = wandb.Histogram(np_histogram=np.histogram(data))

    def body(run):
        wandb.log({"gradients": hist})
        wandb.log({"gradients": custom})
        wandb.run.summary.update({"gradients": binned})

    view = logged(body)
    assert len(hist.histogram) == 64 and len(hist.bins) == 65 and sum(hist.histogram) == 1000
    assert len(custom.histogram) == 512
    assert view.media("gradients") == [(0, hist), (1, custom)]
    assert view.media("gradients", step=1) == custom
    assert view.rebuild(view.summary["gradients"]) == binned
    assert view.history(keys=["gradients"], objects=True)[0]["gradients"] == hist
    assert media_files(view) == []  # a histogram lives in the row, not in a file


def test_histogram_bins_the_same_without_numpy(monkeypatch):
    values = [0.5, 1.0, 1.5, 2.0, 7.25, 3.0, 3.0, -1.0]
    with_numpy = wandb.Histogram(values, num_bins=5)
    monkeypatch.setitem(sys.modules, "numpy", None)
    plain = wandb.Histogram(values, num_bins=5)
    assert plain.histogram == with_numpy.histogram
    assert plain.bins == pytest.approx(with_numpy.bins)


def test_histogram_over_512_bins_is_a_clear_error():
    with pytest.raises(ValueError, match="at most 512 bins, not 513"):
        wandb.Histogram([1, 2, 3], num_bins=513)
    with pytest.raises(ValueError, match="at most 512 bins, not 513"):
        wandb.Histogram(np_histogram=np.histogram(np.arange(600), bins=513))
    with pytest.raises(ValueError, match="one edge more than counts"):
        wandb.Histogram(np_histogram=([1, 2], [0, 1]))
    with pytest.raises(ValueError, match="finite"):
        wandb.Histogram([1.0, float("nan")])


# -- images ------------------------------------------------------------------------------------------


def test_image_from_numpy_by_last_dimension_and_float_scaling(ts):
    gray2d = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gray = gray2d[:, :, None]
    rgb = np.random.default_rng(1).integers(0, 255, (3, 4, 3), dtype=np.uint8)
    rgba = np.random.default_rng(2).integers(0, 255, (3, 4, 4), dtype=np.uint8)
    floats = np.linspace(0, 1, 12).reshape(3, 4)
    images = [wandb.Image(a, caption=f"c{i}") for i, a in enumerate((gray2d, gray, rgb, rgba, floats))]
    assert [im.mode for im in images] == ["L", "L", "RGB", "RGBA", "L"]
    assert (images[0].to_numpy() == gray2d).all() and (images[2].to_numpy() == rgb).all()
    assert (images[4].to_numpy() == np.rint(floats * 255)).all()
    wide = np.random.default_rng(8).integers(0, 255, (3, 6, 3), dtype=np.uint8)
    assert wandb.Image(np.moveaxis(wide, -1, 0)) == wandb.Image(wide)  # channels first, as torch has them
    assert wandb.Image(rgb, mode="L").mode == "L"

    view = logged(lambda run: wandb.log({"examples": images}))
    assert view.media("examples", step=0) == images


def test_image_from_pil_and_from_a_jpeg_path(ts, tmp_path):
    im = PIL.fromarray(np.random.default_rng(3).integers(0, 255, (6, 5, 3), dtype=np.uint8))
    path = tmp_path / "myimage.jpg"
    im.convert("RGB").save(path)
    from_pil = wandb.Image(im, caption="Label")
    from_path = wandb.Image(str(path))
    assert from_path.format == "jpg" and from_path.content == path.read_bytes()
    assert (from_path.width, from_path.height) == (5, 6)

    view = logged(lambda run: wandb.log({"example": from_pil, "jpeg": from_path}))
    assert view.media("example", step=0) == from_pil
    assert view.media("jpeg", step=0) == from_path
    assert view.media("example", step=0).image.size == (5, 6)


def test_image_with_masks_and_boxes_reads_back_equal(ts):
    image = np.random.default_rng(4).integers(0, 255, (8, 10, 3), dtype=np.uint8)
    mask_data = np.ones((8, 10), dtype=np.int64)
    mask_data[2:5, 3:7] = 2
    mask_data[0, :] = 3
    class_labels = {1: "tree", 2: "car", 3: "road"}
    mask_img = wandb.Image(
        image,
        masks={
            "predictions": {"mask_data": mask_data, "class_labels": class_labels},
            "groud_truth": {"mask_data": np.zeros((8, 10), int), "class_labels": class_labels},
        },
    )
    class_id_to_label = {1: "car", 2: "road", 3: "building"}
    img = wandb.Image(
        image,
        boxes={
            "predictions": {
                "box_data": [
                    {
                        "position": {"minX": 0.1, "maxX": 0.2, "minY": 0.3, "maxY": 0.4},
                        "class_id": 2,
                        "box_caption": "minMax(pixel)",
                        "scores": {"acc": 0.1, "loss": 1.2},
                    },
                    {
                        "position": {"middle": [5, 4], "width": 4, "height": 2},
                        "domain": "pixel",
                        "class_id": 3,
                        "box_caption": "a building",
                        "scores": {"acc": 0.5, "loss": 0.7},
                    },
                ],
                "class_labels": class_id_to_label,
            },
            "ground_truth": {
                "box_data": [
                    {"position": {"minX": 1, "maxX": 3, "minY": 2, "maxY": 6}, "domain": "pixel", "class_id": 1}
                ]
            },
        },
    )
    assert img.boxes["ground_truth"]["class_labels"] == {1: "class_1"}  # the seeds' default names

    view = logged(lambda run: wandb.log({"segmentation": mask_img, "driving_scene": img}))
    back_mask, back_boxes = view.media("segmentation", step=0), view.media("driving_scene", step=0)
    assert back_mask == mask_img and back_boxes == img
    assert (back_mask.masks["predictions"].mask_data == mask_data).all()
    assert back_mask.masks["predictions"].class_labels == class_labels
    assert back_boxes.boxes["predictions"]["box_data"][1]["position"] == {
        "middle": [5.0, 4.0],
        "width": 4.0,
        "height": 2.0,
    }
    types = {(f["key"], f["type"]) for f in view.media_files()}
    assert types == {("segmentation", "image-file"), ("segmentation", "mask"), ("driving_scene", "image-file")}


def test_image_with_classes_mask_paths_and_an_image_from_another(ts, tmp_path):
    classes = ["dog", "cat"]
    class_set = wandb.Classes([{"name": c, "id": i} for i, c in enumerate(classes)])
    pixels = np.random.default_rng(5).integers(0, 255, (4, 6, 3), dtype=np.uint8)
    PIL.fromarray(pixels).save(tmp_path / "img.png")
    PIL.fromarray(np.eye(4, 6, dtype=np.uint8)).save(tmp_path / "gt.png")
    PIL.fromarray(np.ones((4, 6), dtype=np.uint8)).save(tmp_path / "pred.png")
    example = wandb.Image(
        str(tmp_path / "img.png"), classes=class_set, masks={"ground_truth": {"path": str(tmp_path / "gt.png")}}
    )
    predicted = wandb.Image(example, classes=class_set, masks={"predictions": {"path": tmp_path / "pred.png"}})
    assert predicted.content == example.content and set(predicted.masks) == {"ground_truth", "predictions"}

    def body(run):
        wandb.log({"dataset": example, "predicted": predicted, "classes": class_set})

    view = logged(body)
    assert view.media("dataset", step=0) == example
    assert view.media("predicted", step=0) == predicted
    assert view.media("classes", step=0) == class_set
    assert view.media("predicted", step=0).classes.labels() == {0: "dog", 1: "cat"}
    # the image bytes are one file for both images
    assert len({f["sha256"] for f in view.media_files() if f["type"] == "image-file"}) == 1


def test_same_image_logged_twice_is_stored_once(ts):
    pixels = np.full((5, 5, 3), 7, dtype=np.uint8)

    def body(run):
        for _ in range(3):
            wandb.log({"img": wandb.Image(pixels), "copy": wandb.Image(pixels.copy(), caption="same pixels")})

    view = logged(body)
    files = media_files(view)
    assert len(files) == 1
    assert [s for s, _ in view.media("img")] == [0, 1, 2]
    assert {f["path"] for f in view.media_files()} == set(files)


def test_lists_of_media_per_key_and_objects_in_history(ts):
    images = [wandb.Image(np.full((3, 3), i * 40, dtype=np.uint8), caption=str(i)) for i in range(4)]

    def body(run):
        wandb.log({"example": [wandb.Image(img.to_numpy(), caption=img.caption) for img in images], "loss": 0.5})
        wandb.log({"example": (images[0],), "loss": 0.25})

    view = logged(body)
    assert view.media("example") == [(0, images), (1, [images[0]])]
    rows = view.history(objects=True)
    assert rows[0]["example"] == images and rows[1]["loss"] == 0.25
    assert view.history()[0]["example"]["_type"] == "list"
    assert [r["example"] for r in view.scan_history(keys=["example"], objects=True)] == [images, [images[0]]]


# -- audio, video, html ----------------------------------------------------------------------------


def test_audio_from_numpy_and_from_a_file(ts, tmp_path):
    t = np.linspace(0, 1, 32, endpoint=False)
    clip = np.sin(2 * np.pi * 4 * t)
    stereo = np.stack([clip, -clip], axis=1).astype(np.float32)
    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(np.zeros(80, "<i2").tobytes())
    examples = [wandb.Audio(clip, caption="Nice", sample_rate=32), wandb.Audio(stereo, sample_rate=32)]
    from_file = wandb.Audio(str(path))
    assert from_file.sample_rate == 8000 and from_file.duration == pytest.approx(0.01)
    assert examples[1].channels == 2

    view = logged(lambda run: wandb.log({"examples": examples, "file": from_file}))
    back = view.media("examples", step=0)
    assert back == examples and back[0].caption == "Nice" and back[0].sample_rate == 32
    assert np.allclose(back[0].to_numpy(), clip, atol=1e-4)
    assert view.media("file", step=0) == from_file


def test_video_from_numpy_as_gif_and_mp4_and_from_a_file(ts, tmp_path):
    pytest.importorskip("imageio")
    frames = np.random.default_rng(6).integers(0, 255, (3, 3, 8, 10), dtype=np.uint8)  # time, channel, h, w
    gif = wandb.Video(frames, fps=4, format="gif")
    assert (gif.frames, gif.height, gif.width, gif.format) == (3, 8, 10, "gif")
    assert gif == wandb.Video(frames, fps=4, format="gif")
    batch = wandb.Video(np.zeros((5, 2, 1, 4, 4), dtype=np.uint8))  # 5 clips tiled 3 x 2
    assert (batch.height, batch.width) == (8, 12)
    logs = {"video": gif, "batch": batch}
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        mp4 = wandb.Video(frames[:, :, :7, :9], fps=4, format="mp4")
        (tmp_path / "myvideo.mp4").write_bytes(mp4.content)
        logs["mp4"] = mp4
        logs["example"] = wandb.Video(str(tmp_path / "myvideo.mp4"))
    view = logged(lambda run: wandb.log(logs))
    for key, video in logs.items():
        assert view.media(key, step=0) == video, key
    if imageio_ffmpeg is not None:
        assert view.media("example", step=0).content == logs["mp4"].content


def test_html_from_a_string_and_a_file_with_and_without_styles(ts, tmp_path):
    path = tmp_path / "some.html"
    path.write_text("<html><head><title>t</title></head><body><p>hi</p></body></html>")
    with open(path) as f:
        styled = wandb.Html(f)
    with open(path) as f:
        plain = wandb.Html(f, inject=False)
    link = wandb.Html('<a href="https://mysite">Link</a>')
    assert plain.html == path.read_text()
    assert styled.html.startswith("<html><head><style") and "<p>hi</p>" in styled.html
    assert wandb.Html(str(path), inject=False) == plain

    view = logged(lambda run: wandb.log({"custom_file": styled, "custom_plain": plain, "custom_string": link}))
    assert view.media("custom_file", step=0) == styled
    assert view.media("custom_plain", step=0).html == plain.html
    assert view.media("custom_string", step=0) == link


# -- 3-D objects and molecules ---------------------------------------------------------------------


def test_object3d_point_clouds_lidar_scene_and_model_files(ts, tmp_path):
    rng = np.random.default_rng(7)
    xyz = rng.normal(size=(20, 3))
    clouds = {
        "nx3": wandb.Object3D(xyz),
        "nx4": wandb.Object3D(np.hstack([xyz, rng.integers(1, 15, (20, 1))])),
        "nx6": wandb.Object3D(np.hstack([xyz, rng.integers(0, 256, (20, 3))])),
    }
    scene = wandb.Object3D(
        {
            "type": "lidar/beta",
            "points": np.array([[0.4, 1, 1.3], [1, 1, 1], [1.2, 1, 1.2]]),
            "boxes": np.array(
                [
                    {
                        "corners": [
                            [0, 0, 0],
                            [0, 1, 0],
                            [0, 0, 1],
                            [1, 0, 0],
                            [1, 1, 0],
                            [0, 1, 1],
                            [1, 0, 1],
                            [1, 1, 1],
                        ],
                        "label": "Box",
                        "color": [123, 321, 111],
                    },
                    {
                        "corners": [
                            [0, 0, 0],
                            [0, 2, 0],
                            [0, 0, 2],
                            [2, 0, 0],
                            [2, 2, 0],
                            [0, 2, 2],
                            [2, 0, 2],
                            [2, 2, 2],
                        ],
                        "label": "Box-2",
                        "color": [111, 321, 0],
                    },
                ]
            ),
            "vectors": [{"start": [0, 0, 0], "end": [0.1, 0.2, 0.5]}],
        }
    )
    (tmp_path / "cube.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "cube.gltf").write_text(json.dumps({"asset": {"version": "2.0"}}))
    (tmp_path / "cube.glb").write_bytes(b"glTF\x02\x00\x00\x00\x0c\x00\x00\x00")
    models = {ext: wandb.Object3D(str(tmp_path / f"cube.{ext}")) for ext in ("obj", "gltf", "glb")}
    with open(tmp_path / "cube.obj") as f:
        models["file_object"] = wandb.Object3D(f)

    view = logged(lambda run: wandb.log({**clouds, "point_scene": scene, **models}))
    for key, obj in {**clouds, "point_scene": scene, **models}.items():
        assert view.media(key, step=0) == obj, key
    assert np.allclose(view.media("nx6", step=0).points, clouds["nx6"].points)
    back = view.media("point_scene", step=0).scene
    assert back["boxes"][1]["label"] == "Box-2" and back["vectors"][0]["end"] == [0.1, 0.2, 0.5]
    assert view.media("obj", step=0).kind == "obj"


def test_molecule_in_each_of_the_ten_file_types(ts, tmp_path):
    pdb = "ATOM      1  N   ALA A   1      11.104   6.134  -6.504  1.00  0.00           N\nEND\n"
    molecules = {}
    for ext in ("pdb", "pqr", "mmcif", "mcif", "cif", "sdf", "sd", "gro", "mol2", "mmtf"):
        path = tmp_path / f"6lu7.{ext}"
        path.write_text(f"{ext}\n{pdb}")
        molecules[ext] = wandb.Molecule(str(path))
    with open(tmp_path / "6lu7.pdb") as f:
        molecules["protein"] = wandb.Molecule(f)

    view = logged(lambda run: wandb.log(molecules))
    for key, mol in molecules.items():
        assert view.media(key, step=0) == mol, key
    assert view.media("protein", step=0).format == "pdb"
    (tmp_path / "x.xyz").write_text("1\n")
    with pytest.raises(ValueError, match="supported types are pdb, pqr"):
        wandb.Molecule(str(tmp_path / "x.xyz"))


# -- plots -------------------------------------------------------------------------------------------


def test_plots_matplotlib_as_image_and_plotly_as_json(ts):
    plt = pytest.importorskip("matplotlib.pyplot")
    go = pytest.importorskip("plotly.graph_objects")
    plt.figure(figsize=(2, 2), dpi=50)
    plt.plot([1, 2, 3, 4])
    plt.ylabel("some interesting numbers")
    fig = plt.gcf()
    pfig = go.Figure(data=[go.Bar(x=["a", "b"], y=[1, 3])])

    def body(run):
        wandb.log({"chart": plt})
        wandb.log({"figure_image": wandb.Image(fig), "plotly": pfig})

    try:
        view = logged(body)
    finally:
        plt.close(fig)
    chart = view.media("chart", step=0)
    assert isinstance(chart, wandb.Image)
    assert chart == view.media("figure_image", step=1)
    assert (chart.width, chart.height) == (100, 100)
    plotly = view.media("plotly", step=1)
    assert plotly.spec["data"][0]["type"] == "bar"
    assert plotly.figure.data[0].y == (1, 3)


def test_plots_roc_precision_recall_confusion_matrix_and_heatmap(ts):
    labels = ["cat", "dog", "bird"]
    y_test = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    y_probas = np.eye(3)[y_test] * 0.8 + 0.1  # a perfect classifier
    y_pred = np.array([0, 1, 2, 0, 2, 2, 1, 1])
    x_labels, y_labels = ["je", "suis"], ["I", "am", "here"]
    matrix_values = np.arange(6).reshape(2, 3) / 5

    def body(run):
        wandb.log({"roc": wandb.plots.ROC(y_test, y_probas, labels)}, commit=False)
        wandb.log({"pr": wandb.plots.precision_recall(y_test, y_probas, labels)}, commit=False)
        wandb.log(
            {"heatmap_with_text": wandb.plots.HeatMap(x_labels, y_labels, matrix_values, show_text=False)}, commit=False
        )
        wandb.log({"roc_new": wandb.plot.roc_curve(y_test, y_probas, labels)}, commit=False)
        cm = wandb.sklearn.plot_confusion_matrix(y_test, y_pred, labels)  # logs "confusion_matrix"
        body.cm = cm

    view = logged(body)
    roc = view.media("roc", step=0)
    assert roc.kind == "roc" and roc == wandb.plot.roc_curve(y_test, y_probas, labels) == view.media("roc_new", step=0)
    cat = [(fpr, tpr) for c, fpr, tpr in roc.data if c == "cat"]
    assert cat[0] == (0.0, 0.0) and (0.0, 1.0) in cat and cat[-1] == (1.0, 1.0)
    pr = view.media("pr", step=0)
    dog = [(r, p) for c, r, p in pr.data if c == "dog"]
    assert dog == [(0.0, 1.0), (1.0, 1.0), (1.0, 3 / 8)]  # thresholds 0.9 (all three dogs), then 0.1
    cm = view.media("confusion_matrix", step=0)
    assert cm == body.cm
    counts = {(a, p): n for a, p, n in cm.data}
    assert counts[("cat", "cat")] == 2 and counts[("cat", "dog")] == 1 and counts[("dog", "bird")] == 1
    assert sum(counts.values()) == len(y_test)
    heat = view.media("heatmap_with_text", step=0)
    assert heat.fields["show_text"] is False and heat.data[5] == ["suis", "here", 1.0]
    with pytest.raises(ValueError, match=r"matrix_values has shape \(3, 2\)"):
        wandb.plots.HeatMap(x_labels, y_labels, matrix_values.T)


def test_plot_line_from_anything_with_columns_and_data():
    class T:
        columns = ["x", "y"]
        data = [[0, 1.0], [1, 0.5]]

    chart = wandb.plot.line(T(), "x", "y", title="loss")
    assert chart.data == [[0, 1.0], [1, 0.5]] and chart.fields["x"] == "x"
    with pytest.raises(ValueError, match="no column 'z'"):
        wandb.plot.scatter(T(), "x", "z")


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (5, 6, 2), (2, 3, 4, 5), (0, 4)])
def test_image_array_of_an_impossible_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match=rf"Image array of shape \({shape[0]},.*is not an image"):
        wandb.Image(np.zeros(shape))


def test_missing_media_file_paths_are_clear_errors(tmp_path):
    missing = str(tmp_path / "nope")
    for make, name in [
        (wandb.Image, "a.png"),
        (wandb.Audio, "a.wav"),
        (wandb.Video, "a.mp4"),
        (wandb.Molecule, "a.pdb"),
        (wandb.Object3D, "a.obj"),
        (wandb.Html, "a.html"),
    ]:
        with pytest.raises(FileNotFoundError, match=f"no such file: {missing}/{name}"):
            make(f"{missing}/{name}")
    with pytest.raises(FileNotFoundError, match="no such file"):
        wandb.Image(np.zeros((2, 2)), masks={"gt": {"path": f"{missing}/m.png"}})


def test_wrong_mask_shape_and_bad_masks_are_clear_errors():
    img = np.zeros((4, 6, 3))
    with pytest.raises(ValueError, match=r"mask 'p': mask_data has shape \(6, 4\) but the image is 4x6"):
        wandb.Image(img, masks={"p": {"mask_data": np.zeros((6, 4), int)}})
    with pytest.raises(ValueError, match="must be 2-D"):
        wandb.Image(img, masks={"p": {"mask_data": np.zeros((4, 6, 1), int)}})
    with pytest.raises(ValueError, match="class ids must be in 0..255"):
        wandb.Image(img, masks={"p": {"mask_data": np.full((4, 6), 300)}})
    with pytest.raises(ValueError, match="exactly one of 'mask_data'"):
        wandb.Image(img, masks={"p": {"class_labels": {1: "a"}}})


def test_unknown_box_domain_and_bad_boxes_are_clear_errors():
    img = np.zeros((4, 6, 3))

    def boxes(**box):
        return {"p": {"box_data": [{"position": {"minX": 0, "maxX": 1, "minY": 0, "maxY": 1}, "class_id": 1, **box}]}}

    with pytest.raises(ValueError, match="domain 'pixels' is not one of percentage, pixel"):
        wandb.Image(img, boxes=boxes(domain="pixels"))
    with pytest.raises(TypeError, match="class_id must be an int"):
        wandb.Image(img, boxes=boxes(class_id="car"))
    with pytest.raises(ValueError, match="unknown field"):
        wandb.Image(img, boxes=boxes(caption="x"))
    with pytest.raises(ValueError, match="position must have minX"):
        wandb.Image(img, boxes={"p": {"box_data": [{"position": {"minX": 0, "width": 1}, "class_id": 1}]}})
    with pytest.raises(ValueError, match="must not exceed"):
        wandb.Image(
            img, boxes={"p": {"box_data": [{"position": {"minX": 2, "maxX": 1, "minY": 0, "maxY": 1}, "class_id": 1}]}}
        )


def test_other_bad_media_input_is_a_clear_error():
    with pytest.raises(ValueError, match="needs sample_rate"):
        wandb.Audio(np.zeros(10))
    with pytest.raises(ValueError, match=r"Video array of shape \(3, 8, 8\)"):
        wandb.Video(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="Video format 'avi'"):
        wandb.Video(np.zeros((1, 3, 2, 2)), format="avi")
    with pytest.raises(ValueError, match=r"n x 3 \(xyz\).*not \(4, 5\)"):
        wandb.Object3D(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="scene type 'lidar'"):
        wandb.Object3D({"type": "lidar", "points": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="needs 8 corners"):
        wandb.Object3D({"type": "lidar/beta", "points": np.zeros((1, 3)), "boxes": [{"corners": [[0, 0, 0]]}]})
    with pytest.raises(ValueError, match="Classes item 0"):
        wandb.Classes([{"name": "dog"}])


def test_a_list_with_a_non_media_item_is_refused_and_nothing_is_logged(ts):
    def body(run):
        with pytest.raises(TypeError, match="key 'examples'"):
            wandb.log({"examples": [wandb.Image(np.zeros((2, 2))), 3], "loss": 1.0})
        wandb.log({"loss": 2.0})

    view = logged(body)
    assert [r.get("loss") for r in view.history()] == [2.0]


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=r"pip install 'trackside\[media\]'"):
        wandb.Image(np.zeros((2, 2)))


def test_damaged_and_missing_media_files_are_reported(ts):
    view = logged(lambda run: wandb.log({"img": wandb.Image(np.zeros((2, 2)))}))
    (path,) = media_files(view)
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="is damaged"):
        view.media("img", step=0)
    os.unlink(path)
    with pytest.raises(FileNotFoundError, match="is missing"):
        view.media("img", step=0)
    with pytest.raises(KeyError, match="no media at key 'img' step 5"):
        view.media("img", step=5)


# -- the store's media index -----------------------------------------------------------------------


def test_media_index_is_filled_by_the_store_and_by_migrating_an_old_store(tmp_path):
    from typing import NamedTuple

    from trackside.store import SCHEMA_VERSION, Store

    class Row(NamedTuple):
        step: int
        time_us: int
        values: dict
        payloads: list = []
        amend: bool = False

    img = {
        "_type": "image-file",
        "path": "media/ab/ab.png",
        "sha256": "ab",
        "size": 1,
        "masks": {"gt": {"_type": "mask", "path": "media/cd/cd.png", "sha256": "cd"}},
    }
    rows = [
        Row(0, 1, {"loss": 1.0}),
        Row(1, 2, {"img": img, "h": {"_type": "histogram", "values": [1], "bins": [0, 1]}}),
    ]
    root = tmp_path / "trackside"
    with Store(root) as store:
        store.write_rows("r1", rows)
        store.write_rows("r1", rows[1:])  # a replay indexes nothing twice
    con = sqlite3.connect(root / "trackside.db")
    want = [
        ("h", 1, "", None, "histogram"),
        ("img", 1, "media/ab/ab.png", "ab", "image-file"),
        ("img", 1, "media/cd/cd.png", "cd", "mask"),
    ]
    assert con.execute("SELECT key, step, path, sha256, type FROM media ORDER BY key, path").fetchall() == want
    # the same store as trackside wrote it before the index existed
    con.execute("DROP TABLE media")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with Store(root):
        pass
    con = sqlite3.connect(root / "trackside.db")
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("SELECT key, step, path, sha256, type FROM media ORDER BY key, path").fetchall() == want
    con.close()


def test_media_index_holds_rich_values_amended_into_an_earlier_step(ts):
    def body(run):
        run.log({"loss": 1.0}, step=0)
        run.log({"loss": 0.5}, step=3, commit=True)
        run.log({"h": wandb.Histogram([1, 2, 3])}, step=0)  # late: amended into step 0

    view = logged(body)
    assert view.media("h") == [(0, wandb.Histogram([1, 2, 3]))]
    assert [(f["key"], f["step"], f["type"]) for f in view.media_files()] == [("h", 0, "histogram")]


def test_media_reads_back_from_a_store_without_the_index(ts):
    view = logged(lambda run: wandb.log({"h": wandb.Histogram([1, 2, 3]), "loss": 1.0}))
    con = sqlite3.connect(os.path.join(ts.root, "trackside.db"))
    con.execute("DROP TABLE media")
    con.commit()
    con.close()
    view = wandb.Api(ts.root).run(view.id)
    assert view.media("h") == [(0, wandb.Histogram([1, 2, 3]))]
    assert view.media("loss") == [] and view.media_files() == []


def test_media_types_do_not_load_heavy_modules_until_used():
    code = (
        "import sys, trackside; trackside.Image; trackside.Histogram; trackside.Audio; trackside.Video; "
        "trackside.plot; print(sorted(m for m in ('numpy', 'PIL', 'matplotlib', 'plotly', 'imageio') "
        "if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_logged_forms_rebuild_with_base_from_json(tmp_path):
    img = wandb.Image(np.zeros((2, 3)), caption="x")
    form = img.to_json(str(tmp_path))
    assert base.from_json(form, str(tmp_path)) == img
    assert base.from_json({"_type": "list", "items": [form, form]}, str(tmp_path)) == [img, img]
    assert base.from_json({"plain": 1}, str(tmp_path)) == {"plain": 1}
    raw = io.BytesIO(img.content)
    assert PIL.open(raw).size == (3, 2)


def test_rich_values_travel_as_payload_and_land_in_the_row(ts):
    class Point:
        def __init__(self, x):
            self.x = x

        def _trackside_log(self, run, key, step):
            return {"_type": "point", "x": self.x, "key": key, "step": step}

    run = trackside.init(project="p")
    run.log({"loss": 0.5, "pt": Point(3)})
    run.log({"loss": 0.25})
    run.finish()
    rows = history(run)
    assert rows[0]["pt"] == {"_type": "point", "x": 3, "key": "pt", "step": 0}
    assert rows[0]["loss"] == 0.5 and "pt" not in rows[1]
    assert trackside.Api(run.root).run(run.id).summary["pt"]["x"] == 3
