"""What the file-backed media types share: bytes held in memory, written content-addressed.

A media object keeps the exact bytes of the file it will be stored as (a PNG, a WAV, an OBJ
...), made once when it is built. Logging writes them with ``store_bytes`` (the same content
logged twice is one file), and reading back loads the same bytes, so an object and its read-back
compare equal by content. ``to_json`` takes the run (anything with a ``dir``) or a folder path.
"""

from __future__ import annotations

import hashlib
import io
import os

from trackside.store.files import load_file  # noqa: F401  (the data types read their files through it)

from .base import DataType, need, store_bytes


def target_dir(run) -> str:
    """The folder a logged file goes under: ``run.dir`` for a run, or the folder itself."""
    if isinstance(run, (str, os.PathLike)):
        return os.fspath(run)
    d = getattr(run, "dir", None)
    if d is None:
        raise TypeError(f"cannot store files for {type(run).__name__}: pass a run or a folder")
    return d


def read_input(data, what: str, *, binary: bool = True) -> tuple[bytes, str | None]:
    """``(content, file name or None)`` of a path (str or PathLike) or an open file object.

    A missing path is a FileNotFoundError naming it."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what}: no such file: {path}")
        with open(path, "rb") as f:
            return f.read(), path
    if hasattr(data, "read"):
        content = data.read()
        if isinstance(content, str):
            content = content.encode("utf-8")
        name = getattr(data, "name", None)
        return bytes(content), name if isinstance(name, str) else None
    raise TypeError(f"{what}: expected a file path or an open file, not {type(data).__name__}")


def extension(name: str | None) -> str:
    """A file name's extension, lower case, without the dot ('' when it has none)."""
    if not name:
        return ""
    return os.path.splitext(name)[1].lstrip(".").lower()


def numpy():
    return need("numpy", "media")


def to_uint8(arr):
    """Pixel values as uint8: integers are clipped to 0..255; floats in [0, 1] are scaled by
    255, floats with negative values are stretched from their min..max to 0..255, and other
    floats are rounded and clipped."""
    np = numpy()
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if arr.size:
            lo, hi = float(arr.min()), float(arr.max())
            if lo < 0:
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            elif hi <= 1.0:
                arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise TypeError(f"pixel values must be numbers, not {arr.dtype}")


def png_bytes(pil_image) -> bytes:
    buf = io.BytesIO()
    pil_image.save(buf, format="PNG")
    return buf.getvalue()


def image_info(data: bytes) -> tuple[int, int, str] | None:
    """``(width, height, mode)`` of encoded image bytes when pillow can read them, else None."""
    try:
        from PIL import Image as PILImage  # optional: pillow (pip install 'trackside[media]')
    except ImportError:
        return None
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            return im.size[0], im.size[1], im.mode
    except Exception:  # not an image pillow knows: the size is only informative
        return None


class Media(DataType):
    """A data type stored as one file. Subclasses set ``_data`` (bytes), ``_ext`` and
    ``caption`` and extend ``_fields`` / ``_eq_key``."""

    _data: bytes = b""
    _ext: str = "bin"
    caption: str | None = None

    def _fields(self) -> dict:
        """The logged form's fields besides the file reference."""
        return {"caption": self.caption} if self.caption is not None else {}

    def to_json(self, run) -> dict:
        ref = store_bytes(target_dir(run), self._data, self._ext)
        return {"_type": self._type, **ref, "format": self._ext, **self._fields()}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._data).hexdigest()

    @property
    def format(self) -> str:
        return self._ext

    @property
    def content(self) -> bytes:
        """The file's bytes, exactly as stored."""
        return self._data

    def _eq_key(self) -> tuple:
        return (self._data, self._ext, self.caption)

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._eq_key() == other._eq_key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.sha256))

    def __repr__(self) -> str:
        cap = f" caption={self.caption!r}" if self.caption is not None else ""
        return f"<{type(self).__name__} {self._ext} {len(self._data)} bytes sha256={self.sha256[:12]}{cap}>"

    @classmethod
    def _blank(cls, obj: dict, source: str):
        """A new object with the file's bytes and caption of a logged form (no ``__init__``)."""
        self = cls.__new__(cls)
        self._data = load_file(obj, source)
        self._ext = obj.get("format") or extension(obj.get("path")) or "bin"
        self.caption = obj.get("caption")
        return self
