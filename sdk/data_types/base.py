"""What every logged data type shares: its logged form and content-addressed files.

A data type turns itself into a JSON-like dict with a ``"_type"`` key when it is logged
(``to_json``); that dict is what a history row, the summary or a table cell holds. Files a type
needs (image bytes, audio, table rows ...) are written once into the run folder under
``media/<sha256 prefix>/<sha256>.<ext>``, so the same content logged twice is stored once.
``from_json`` rebuilds an equal object from the logged form on any machine that reads the
store (``source`` is the folder the relative paths are relative to: the run folder).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile

from ..contracts.private import make_dirs

_TYPES: dict[str, type] = {}


class DataType:
    """Base of the logged data types. Subclasses set ``_type`` and implement ``to_json`` and
    ``from_json``."""

    _type: str = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls._type:
            _TYPES[cls._type] = cls

    def to_json(self, run) -> dict:
        raise NotImplementedError

    @classmethod
    def from_json(cls, obj: dict, source: str):
        raise NotImplementedError

    def _trackside_log(self, run, key: str, step: int) -> dict:
        """The hook ``Run.log`` and ``run.summary`` call: the logged form of this object."""
        return self.to_json(run)


# the modules defining the data types, imported when a logged form names a type not yet loaded
_MODULES = ("histogram", "image", "audio", "video", "html", "object3d", "molecule", "plots", "table")
LIST_TYPE = "list"  # the logged form of a list of data types: {"_type": "list", "items": [...]}


def from_json(obj, source: str):
    """Rebuild a data type from its logged form (a list of them for ``{"_type": "list"}``);
    other values come back as they are."""
    if isinstance(obj, dict):
        kind = obj.get("_type")
        if kind == LIST_TYPE and isinstance(obj.get("items"), list):
            return [from_json(item, source) for item in obj["items"]]
        cls = _TYPES.get(kind)
        if cls is None and isinstance(kind, str):
            _load_modules()
            cls = _TYPES.get(kind)
        if cls is not None:
            return cls.from_json(obj, source)
    return obj


def _load_modules() -> None:
    for name in _MODULES:
        try:
            importlib.import_module(f"{__package__}.{name}")
        except ImportError:  # a module not written yet, or an optional dependency it needs at import
            pass


def store_bytes(run_dir: str, data: bytes, ext: str) -> dict:
    """Write ``data`` once into ``run_dir/media`` by its SHA-256; returns ``{"path", "sha256",
    "size"}`` with ``path`` relative to ``run_dir``. Atomic: a reader never sees half a file."""
    digest = hashlib.sha256(data).hexdigest()
    ext = ext.lstrip(".").lower()
    if not ext.isalnum():
        raise ValueError(f"file extension {ext!r} is not valid")
    rel = os.path.join("media", digest[:2], f"{digest}.{ext}")
    path = os.path.join(run_dir, rel)
    if not os.path.exists(path):
        make_dirs(os.path.dirname(path))
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return {"path": rel, "sha256": digest, "size": len(data)}


def store_file(run_dir: str, src: str, ext: str | None = None) -> dict:
    """``store_bytes`` for an existing file; FileNotFoundError naming it when it is missing."""
    if not os.path.isfile(src):
        raise FileNotFoundError(f"no such file to log: {src}")
    with open(src, "rb") as f:
        data = f.read()
    return store_bytes(run_dir, data, ext or os.path.splitext(src)[1] or "bin")


def need(module: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this needs {module.split('.')[0]}: pip install 'trackside[{extra}]'") from None
