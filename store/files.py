"""Reading the files a logged value names (media, table rows, artifact files): inside their
folder only, and checked against the SHA-256 they were stored under."""

from __future__ import annotations

import hashlib

from trackside.contracts.names import contained


def load_file(obj: dict, source: str) -> bytes:
    """The bytes of a logged file, checked against the SHA-256 it was stored under."""
    try:
        rel = obj["path"]
    except KeyError:
        raise ValueError(f"logged {obj.get('_type')!r} value has no file path: {obj!r}") from None
    path = contained(source, rel)  # a path from a row or manifest: it never leads out of its folder
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"the {obj.get('_type')} file {path} is missing (was the run folder moved?)") from None
    want = obj.get("sha256")
    if want and hashlib.sha256(data).hexdigest() != want:
        raise ValueError(f"the {obj.get('_type')} file {path} is damaged: its SHA-256 is not {want}")
    return data
