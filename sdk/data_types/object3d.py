"""``Object3D``: point clouds, lidar scenes (JSON) and 3-D model files (obj, gltf, glb)."""

from __future__ import annotations

import json
import numbers

from ._media import Media, extension, numpy, read_input

MODEL_FORMATS = ("obj", "gltf", "glb")
SCENE_TYPES = ("lidar/beta",)
_SCENE_FIELDS = {"type", "points", "boxes", "vectors"}


class Object3D(Media):
    """A 3-D object: a point cloud (numpy n x 3 xyz, n x 4 xyz + category, n x 6 xyz + rgb),
    a scene dict ``{"type": "lidar/beta", "points": ..., "boxes": [{"corners": 8 x [x, y, z],
    "label": str, "color": [r, g, b]}, ...], "vectors": [{"start": xyz, "end": xyz}, ...]}``,
    or an obj/gltf/glb file (path, or open file with ``file_type=``).

    Point clouds and scenes are stored as JSON, files byte for byte. ``kind`` is "points",
    "lidar/beta" or the file's type. Raises ValueError for other shapes, scene fields or file
    types, FileNotFoundError for a missing file.
    """

    _type = "object3D-file"
    SUPPORTED_TYPES = MODEL_FORMATS

    def __init__(self, data_or_path, caption: str | None = None, file_type: str | None = None, **kwargs):
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"caption must be a str, not {type(caption).__name__}")
        self.caption = caption
        data = data_or_path
        if isinstance(data, Object3D):
            self._data, self._ext, self.kind = data._data, data._ext, data.kind
            if caption is None:
                self.caption = data.caption
        elif isinstance(data, dict):
            self.kind = _scene_type(data)
            self._data = _json(_scene(data))
            self._ext = "json"
        elif isinstance(data, str) or hasattr(data, "read") or hasattr(data, "__fspath__"):
            self._data, fname = read_input(data, "Object3D")
            ext = (file_type or extension(fname)).lower().lstrip(".")
            if ext not in MODEL_FORMATS:
                raise ValueError(
                    f"Object3D: {fname or 'the file'} has type {ext or '(none)'!r}; supported files "
                    f"are {', '.join(MODEL_FORMATS)} (pass file_type= for a file object without a name)"
                )
            self.kind = self._ext = ext
        else:
            self.kind = "points"
            self._data = _json({"type": "points", "points": _points(data, "Object3D")})
            self._ext = "json"

    def _fields(self) -> dict:
        return {**super()._fields(), "kind": self.kind}

    def _eq_key(self) -> tuple:
        return (*super()._eq_key(), self.kind)

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "Object3D":
        self = cls._blank(obj, source)
        self.kind = obj.get("kind") or self._ext
        return self

    @property
    def scene(self) -> dict:
        """A point cloud's or scene's content as stored (lists; points under ``"points"``)."""
        if self._ext != "json":
            raise ValueError(f"a {self.kind} file has no scene; read .content for its bytes")
        return json.loads(self._data)

    @property
    def points(self):
        """The points as a numpy array (n x 3, 4 or 6)."""
        return numpy().asarray(self.scene["points"], dtype=float)


def _json(obj) -> bytes:
    # fixed separators and key order: the same cloud is the same bytes, hence one stored file
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _points(data, what: str) -> list:
    np = numpy()
    try:
        arr = np.asarray(data, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: points must be numbers ({e})") from None
    if arr.ndim != 2 or arr.shape[1] not in (3, 4, 6):
        raise ValueError(
            f"{what}: a point cloud has shape n x 3 (xyz), n x 4 (xyz, category) or n x 6 (xyz, rgb), not {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: points must be finite (NaN or infinity found)")
    return arr.tolist()


def _scene_type(scene: dict) -> str:
    t = scene.get("type")
    if t not in SCENE_TYPES:
        raise ValueError(f"Object3D scene type {t!r} is not supported; use {', '.join(map(repr, SCENE_TYPES))}")
    return t


def _vec3(v, what: str) -> list:
    if not hasattr(v, "__len__") or len(v) != 3:
        raise ValueError(f"{what} must be [x, y, z], not {v!r}")
    out = []
    for x in v:
        if hasattr(x, "item"):
            x = x.item()
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"{what} must hold numbers, not {x!r}")
        out.append(float(x))
    return out


def _scene(scene: dict) -> dict:
    unknown = set(scene) - _SCENE_FIELDS
    if unknown:
        raise ValueError(f"Object3D scene: unknown field(s) {sorted(unknown)}; use {', '.join(sorted(_SCENE_FIELDS))}")
    out = {"type": scene["type"], "points": _points(scene.get("points", np_empty()), "Object3D scene")}
    boxes = []
    for i, b in enumerate(list(scene.get("boxes", ()))):
        what = f"Object3D scene box {i}"
        if not isinstance(b, dict) or "corners" not in b:
            raise ValueError(f"{what} must be a dict with 'corners' (8 points), 'label' and 'color'")
        unknown = set(b) - {"corners", "label", "color", "score"}
        if unknown:
            raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}; use corners, label, color, score")
        corners = list(b["corners"])
        if len(corners) != 8:
            raise ValueError(f"{what} needs 8 corners, not {len(corners)}")
        box = {"corners": [_vec3(c, f"{what} corner {j}") for j, c in enumerate(corners)]}
        if b.get("label") is not None:
            if not isinstance(b["label"], str):
                raise TypeError(f"{what}: label must be a str, not {b['label']!r}")
            box["label"] = b["label"]
        if b.get("color") is not None:
            box["color"] = _vec3(b["color"], f"{what} color")
        if b.get("score") is not None:
            box["score"] = float(b["score"])
        boxes.append(box)
    vectors = []
    for i, v in enumerate(list(scene.get("vectors", ()))):
        what = f"Object3D scene vector {i}"
        if not isinstance(v, dict) or "end" not in v:
            raise ValueError(f"{what} must be a dict with 'end' (and optional 'start', default the origin)")
        vec = {"start": _vec3(v.get("start", (0, 0, 0)), f"{what} start"), "end": _vec3(v["end"], f"{what} end")}
        vectors.append(vec)
    out["boxes"] = boxes
    out["vectors"] = vectors
    return out


def np_empty():
    return numpy().zeros((0, 3))
