"""``Image`` (with segmentation masks and bounding boxes) and ``Classes``.

An image is stored as one file: arrays, pillow images and figures as PNG (deterministic, so
the same pixels logged twice are one file), a file path as its own bytes. Masks are PNG files
of class ids next to it; boxes and class labels travel inline in the logged form::

    {"_type": "image-file", "path": "media/ab/ab12....png", "sha256": ..., "size": ...,
     "format": "png", "width": 64, "height": 48, "mode": "RGB", "caption": ...,
     "masks": {"predictions": {"_type": "mask", "path": ..., "class_labels": {"1": "tree"}}},
     "boxes": {"predictions": {"box_data": [...], "class_labels": {"2": "road"}}},
     "classes": {"_type": "classes", "class_set": [{"id": 0, "name": "dog"}]}}

Class-label keys are strings in the logged form (JSON has no integer keys) and integers in
the objects.
"""

from __future__ import annotations

import io
import numbers
import os
import sys

from ._media import Media, extension, image_info, numpy, png_bytes, read_input, target_dir, to_uint8
from .base import DataType, need, store_bytes
from .figures import figure_png

IMAGE_FORMATS = ("png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff")
DOMAINS = ("percentage", "pixel")
_BOX_FIELDS = {"position", "class_id", "box_caption", "scores", "domain"}
_GROUP_FIELDS = {"box_data", "class_labels", "domain"}


def _pil():
    return need("PIL.Image", "media")


def _is_pil(obj) -> bool:
    mod = sys.modules.get("PIL.Image")
    return mod is not None and isinstance(obj, mod.Image)


# -- class labels ------------------------------------------------------------------------------


def _class_labels(labels, what: str) -> dict | None:
    """``{int id: str label}`` from a dict whose keys are ints (or their strings)."""
    if labels is None:
        return None
    if not isinstance(labels, dict):
        raise TypeError(f"{what}: class_labels must be a dict of class id to label, not {type(labels).__name__}")
    out = {}
    for k, v in labels.items():
        try:
            if isinstance(k, bool):
                raise ValueError
            cid = int(k)
            if isinstance(k, float) and k != cid:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{what}: class_labels key {k!r} is not an integer class id") from None
        if not isinstance(v, str):
            raise TypeError(f"{what}: class_labels[{k!r}] must be a str label, not {type(v).__name__}")
        out[cid] = v
    return out


def _labels_json(labels: dict | None) -> dict | None:
    return None if labels is None else {str(k): v for k, v in labels.items()}


class Classes(DataType):
    """A mapping from class id to name shared by the masks and boxes of many images:
    ``Classes([{"id": 0, "name": "dog"}, {"id": 1, "name": "cat"}])``."""

    _type = "classes"

    def __init__(self, class_set):
        if isinstance(class_set, Classes):
            class_set = class_set.class_set
        items = []
        seen = set()
        for i, c in enumerate(class_set):
            if not isinstance(c, dict) or "id" not in c or "name" not in c:
                raise ValueError(f"Classes item {i} must be a dict with 'id' and 'name', not {c!r}")
            cid, name = c["id"], c["name"]
            if isinstance(cid, bool) or not isinstance(cid, numbers.Integral):
                raise TypeError(f"Classes item {i}: id must be an int, not {cid!r}")
            if not isinstance(name, str):
                raise TypeError(f"Classes item {i}: name must be a str, not {name!r}")
            if int(cid) in seen:
                raise ValueError(f"Classes item {i}: id {int(cid)} appears twice")
            seen.add(int(cid))
            item = {"id": int(cid), "name": name}
            item.update({k: v for k, v in c.items() if k not in ("id", "name")})
            items.append(item)
        self.class_set: list = items

    def labels(self) -> dict:
        """``{id: name}``."""
        return {c["id"]: c["name"] for c in self.class_set}

    def to_json(self, run=None) -> dict:
        return {"_type": self._type, "class_set": [dict(c) for c in self.class_set]}

    @classmethod
    def from_json(cls, obj: dict, source=None) -> "Classes":
        return cls(obj["class_set"])

    def __eq__(self, other) -> bool:
        if not isinstance(other, Classes):
            return NotImplemented
        return self.class_set == other.class_set

    __hash__ = None

    def __repr__(self) -> str:
        return f"<Classes {self.labels()}>"


# -- masks ---------------------------------------------------------------------------------------


class ImageMask(Media):
    """A segmentation mask: a PNG of integer class ids (0..255), one per pixel, and optional
    ``class_labels``. Built by ``Image(masks=...)``."""

    _type = "mask"

    def __init__(self, spec: dict, name: str, size: tuple[int, int] | None):
        what = f"mask {name!r}"
        if not isinstance(spec, dict):
            raise TypeError(
                f"{what} must be a dict with 'mask_data' or 'path' (and 'class_labels'), not {type(spec).__name__}"
            )
        unknown = set(spec) - {"mask_data", "path", "class_labels"}
        if unknown:
            raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}; use mask_data or path, and class_labels")
        if ("mask_data" in spec) == ("path" in spec):
            raise ValueError(f"{what} needs exactly one of 'mask_data' (a 2-D array of class ids) or 'path'")
        self.caption = None
        self.class_labels = _class_labels(spec.get("class_labels"), what)
        if "mask_data" in spec:
            np = numpy()
            arr = np.asarray(spec["mask_data"])
            if arr.ndim != 2:
                raise ValueError(f"{what}: mask_data must be 2-D (height x width), not of shape {arr.shape}")
            if size is not None and arr.shape != (size[1], size[0]):
                raise ValueError(
                    f"{what}: mask_data has shape {arr.shape} but the image is "
                    f"{size[1]}x{size[0]} (height x width); they must match"
                )
            if arr.dtype == bool:
                arr = arr.astype(np.uint8)
            if not np.issubdtype(arr.dtype, np.number):
                raise TypeError(f"{what}: mask_data must hold integer class ids, not {arr.dtype}")
            if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"{what}: mask_data must hold integer class ids; it has fractions")
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise ValueError(f"{what}: class ids must be in 0..255, not {arr.min()}..{arr.max()}")
            self._data = png_bytes(_pil().fromarray(arr.astype(np.uint8)))
            self._ext = "png"
        else:
            self._data, fname = read_input(spec["path"], what)
            self._ext = extension(fname) or "png"
            info = image_info(self._data)
            got = info[:2] if info is not None else None
            if size is not None and got is not None and got != size:
                raise ValueError(
                    f"{what}: the mask file is {got[1]}x{got[0]} but the image is "
                    f"{size[1]}x{size[0]} (height x width); they must match"
                )

    def _fields(self) -> dict:
        return {"class_labels": _labels_json(self.class_labels)} if self.class_labels is not None else {}

    def _eq_key(self) -> tuple:
        return (self._data, self.class_labels)

    @property
    def mask_data(self):
        """The class ids as a 2-D uint8 numpy array (needs numpy and pillow)."""
        np = numpy()
        with _pil().open(io.BytesIO(self._data)) as im:
            return np.asarray(im)

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "ImageMask":
        self = cls._blank(obj, source)
        self.class_labels = _class_labels(obj.get("class_labels"), "mask")
        return self


# -- boxes ---------------------------------------------------------------------------------------


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        if hasattr(v, "item") and getattr(v, "shape", None) == ():
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{what} must be a number, not {v!r}")
    return float(v)


def _domain(d, what: str):
    if d is not None and d not in DOMAINS:
        raise ValueError(f"{what}: domain {d!r} is not one of {', '.join(DOMAINS)}")
    return d


def _box(b, what: str) -> dict:
    if not isinstance(b, dict):
        raise TypeError(f"{what} must be a dict with 'position' and 'class_id', not {type(b).__name__}")
    unknown = set(b) - _BOX_FIELDS
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}; a box has {', '.join(sorted(_BOX_FIELDS))}")
    pos = b.get("position")
    if not isinstance(pos, dict):
        raise ValueError(f"{what} needs a 'position' dict: minX/maxX/minY/maxY or middle/width/height")
    keys = set(pos)
    if keys == {"minX", "maxX", "minY", "maxY"}:
        p = {k: _number(pos[k], f"{what} position {k}") for k in ("minX", "maxX", "minY", "maxY")}
        if p["minX"] > p["maxX"] or p["minY"] > p["maxY"]:
            raise ValueError(f"{what}: minX/minY must not exceed maxX/maxY, got {p}")
    elif keys == {"middle", "width", "height"}:
        mid = pos["middle"]
        if not hasattr(mid, "__len__") or len(mid) != 2:
            raise ValueError(f"{what}: middle must be [x, y], not {mid!r}")
        p = {
            "middle": [_number(mid[0], f"{what} middle x"), _number(mid[1], f"{what} middle y")],
            "width": _number(pos["width"], f"{what} width"),
            "height": _number(pos["height"], f"{what} height"),
        }
        if p["width"] < 0 or p["height"] < 0:
            raise ValueError(f"{what}: width and height must not be negative, got {p['width']}, {p['height']}")
    else:
        raise ValueError(
            f"{what}: position must have minX, maxX, minY, maxY, or middle, width, height; got {sorted(keys)}"
        )
    cid = b.get("class_id")
    if isinstance(cid, bool) or not isinstance(cid, numbers.Integral):
        raise TypeError(f"{what}: class_id must be an int, not {cid!r}")
    out = {"position": p, "class_id": int(cid)}
    if b.get("box_caption") is not None:
        if not isinstance(b["box_caption"], str):
            raise TypeError(f"{what}: box_caption must be a str, not {b['box_caption']!r}")
        out["box_caption"] = b["box_caption"]
    if b.get("scores") is not None:
        if not isinstance(b["scores"], dict):
            raise TypeError(f"{what}: scores must be a dict of name to number, not {b['scores']!r}")
        out["scores"] = {str(k): _number(v, f"{what} score {k!r}") for k, v in b["scores"].items()}
    if b.get("domain") is not None:
        out["domain"] = _domain(b["domain"], what)
    return out


def _box_group(name: str, group, has_classes: bool) -> dict:
    what = f"boxes {name!r}"
    if not isinstance(group, dict) or "box_data" not in group:
        raise ValueError(f"{what} must be a dict with 'box_data' (a list of boxes) and optional 'class_labels'")
    unknown = set(group) - _GROUP_FIELDS
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}; use box_data, class_labels, domain")
    boxes = [_box(b, f"{what} box {i}") for i, b in enumerate(group["box_data"])]
    labels = _class_labels(group.get("class_labels"), what)
    if labels is None and not has_classes:
        # the seeds: without labels, class ids are named class_0, class_1, ...
        labels = {b["class_id"]: f"class_{b['class_id']}" for b in sorted(boxes, key=lambda b: b["class_id"])}
    out = {"box_data": boxes}
    if labels is not None:
        out["class_labels"] = labels
    if group.get("domain") is not None:
        out["domain"] = _domain(group["domain"], what)
    return out


def _boxes_json(boxes: dict) -> dict:
    return {
        name: {**g, "class_labels": _labels_json(g["class_labels"])} if "class_labels" in g else dict(g)
        for name, g in boxes.items()
    }


# -- the image -------------------------------------------------------------------------------------


class Image(Media):
    """An image to log: a numpy array (2-D grayscale; 3-D with the last dimension 1, 3 or 4 for
    grayscale, RGB, RGBA; floats scaled to 0..255), a pillow image, a matplotlib figure, a file
    path, or another ``Image`` (same pixels, new overlays).

    ``caption``: text shown with it. ``mode``: a pillow mode to convert to (``"L"``, ``"RGB"``
    ...). ``masks``: ``{name: {"mask_data": 2-D array of class ids, "class_labels": {id: label}}
    or {"path": file}}``. ``boxes``: ``{name: {"box_data": [box, ...], "class_labels": {...}}}``,
    each box ``{"position": {minX, maxX, minY, maxY} or {middle: [x, y], width, height},
    "class_id", "box_caption", "scores", "domain": "percentage" (default) or "pixel"}``.
    ``classes``: a ``Classes`` (or its list) naming the class ids of masks and boxes.
    ``file_type``: "png" (default) or "jpg" for arrays and pillow images.

    Encodes at construction: errors (an impossible array shape, a missing file, a mask whose
    shape differs from the image's, an unknown box domain) are raised here, and logging only
    writes the bytes. Needs numpy and pillow for arrays (``pip install 'trackside[media]'``).
    """

    _type = "image-file"

    def __init__(
        self,
        data_or_path,
        mode: str | None = None,
        caption: str | None = None,
        grouping=None,
        classes=None,
        boxes: dict | None = None,
        masks: dict | None = None,
        file_type: str | None = None,
    ):
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"caption must be a str, not {type(caption).__name__}")
        self.caption = caption
        self.grouping = grouping
        self.width = self.height = None
        self.mode = None
        src_masks = src_boxes = src_classes = None
        data = data_or_path
        if isinstance(data, Image):
            self._data, self._ext = data._data, data._ext
            self.width, self.height, self.mode = data.width, data.height, data.mode
            if caption is None:
                self.caption = data.caption
            src_masks, src_boxes, src_classes = data.masks, data.boxes, data.classes
            if mode is not None and mode != self.mode:
                self._from_pil(_pil().open(io.BytesIO(self._data)), mode, file_type)
        elif isinstance(data, (str, os.PathLike)) or hasattr(data, "read"):
            self._data, fname = read_input(data, "Image")
            ext = extension(fname)
            if ext and ext not in IMAGE_FORMATS:
                raise ValueError(f"Image: {fname} is not an image file ({', '.join(IMAGE_FORMATS)})")
            self._ext = "jpg" if ext == "jpeg" else (ext or "png")
            if mode is not None:
                self._from_pil(_pil().open(io.BytesIO(self._data)), mode, file_type)
            else:
                self._read_header()
        elif _is_pil(data):
            self._from_pil(data, mode, file_type)
        else:
            png = figure_png(data)
            if png is not None:
                self._data, self._ext = png, "png"
                self._read_header()
            else:
                self._from_array(data, mode, file_type)
        size = (self.width, self.height) if self.width is not None else None
        self.classes = Classes(classes) if classes is not None else src_classes
        has_classes = self.classes is not None
        self.masks = dict(src_masks or {})
        for name, spec in (masks or {}).items():
            self.masks[str(name)] = spec if isinstance(spec, ImageMask) else ImageMask(spec, str(name), size)
        self.boxes = dict(src_boxes or {})
        for name, group in (boxes or {}).items():
            self.boxes[str(name)] = _box_group(str(name), group, has_classes)

    def _read_header(self) -> None:
        info = image_info(self._data)
        if info is not None:
            self.width, self.height, self.mode = info

    def _from_array(self, data, mode, file_type) -> None:
        np = numpy()
        if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor
            data = data.detach().cpu().numpy()
        try:
            arr = np.asarray(data)
        except Exception as e:
            raise TypeError(
                f"Image takes an array, a pillow image, a figure or a file path, not {type(data).__name__} ({e})"
            ) from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(
                f"Image takes an array of numbers, a pillow image, a figure or a file path, "
                f"not {type(data).__name__} of {arr.dtype}"
            )
        shape = arr.shape
        if arr.ndim == 3 and shape[-1] not in (1, 3, 4) and shape[0] in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # channels first (a torch image): move them last
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[:, :, 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))) or 0 in arr.shape:
            raise ValueError(
                f"Image array of shape {shape} is not an image: use height x width (grayscale) or "
                f"height x width x 1, 3 or 4 (grayscale, RGB, RGBA)"
            )
        self._from_pil(_pil().fromarray(to_uint8(arr)), mode, file_type)

    def _from_pil(self, im, mode, file_type) -> None:
        if mode is not None and im.mode != mode:
            try:
                im = im.convert(mode)
            except ValueError as e:
                raise ValueError(f"Image: cannot convert a {im.mode} image to mode {mode!r}: {e}") from None
        ext = (file_type or "png").lower()
        buf = io.BytesIO()
        if ext == "png":
            im.save(buf, format="PNG")
        elif ext in ("jpg", "jpeg"):
            if im.mode not in ("L", "RGB", "CMYK"):
                im = im.convert("RGB")
            im.save(buf, format="JPEG", quality=95)
            ext = "jpg"
        else:
            raise ValueError(f"Image file_type {file_type!r} is not png or jpg")
        self._data, self._ext = buf.getvalue(), ext
        self.width, self.height = im.size
        self.mode = im.mode

    # -- logged form ----------------------------------------------------------------------------

    def to_json(self, run) -> dict:
        folder = target_dir(run)
        out = {"_type": self._type, **store_bytes(folder, self._data, self._ext), "format": self._ext}
        for k in ("width", "height", "mode", "caption"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.grouping is not None:
            out["grouping"] = self.grouping
        if self.masks:
            out["masks"] = {name: m.to_json(folder) for name, m in self.masks.items()}
        if self.boxes:
            out["boxes"] = _boxes_json(self.boxes)
        if self.classes is not None:
            out["classes"] = self.classes.to_json()
        return out

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "Image":
        self = cls._blank(obj, source)
        self.width, self.height, self.mode = obj.get("width"), obj.get("height"), obj.get("mode")
        self.grouping = obj.get("grouping")
        self.classes = Classes.from_json(obj["classes"]) if obj.get("classes") else None
        self.masks = {name: ImageMask.from_json(m, source) for name, m in (obj.get("masks") or {}).items()}
        self.boxes = {name: _box_group(name, g, True) for name, g in (obj.get("boxes") or {}).items()}
        return self

    def _eq_key(self) -> tuple:
        return (self._data, self._ext, self.caption, self.masks, self.boxes, self.classes)

    # -- reading ----------------------------------------------------------------------------------

    @property
    def image(self):
        """The image as a pillow image (needs pillow)."""
        im = _pil().open(io.BytesIO(self._data))
        im.load()
        return im

    def to_numpy(self):
        """The pixels as a numpy array: height x width (grayscale) or height x width x channels."""
        return numpy().asarray(self.image)

    def __repr__(self) -> str:
        size = f" {self.width}x{self.height}" if self.width is not None else ""
        extra = "".join(f" {k}={sorted(v)}" for k, v in (("masks", self.masks), ("boxes", self.boxes)) if v)
        cap = f" caption={self.caption!r}" if self.caption is not None else ""
        return f"<Image {self._ext}{size}{cap}{extra} sha256={self.sha256[:12]}>"


__all__ = ["Classes", "Image", "ImageMask"]
