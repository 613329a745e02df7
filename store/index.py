"""The checks and walks of what the store indexes: artifact versions (an "artifact" event's
data) and the files a logged value references (the media index). Shared by the writer, the
daemon (which checks an event before it is stored) and the team server (which checks an
upload where it enters)."""

from __future__ import annotations

import re

from trackside.contracts import names

_VERSION_ALIAS = re.compile(r"^v[0-9]+$")  # "v3": a version, never a user's alias


def check_artifact(data) -> dict:
    """An "artifact" event's data, checked: raises ValueError or TypeError saying what is wrong.

    Fields: ``uid`` (the log call's id), ``name``, ``type``, ``digest``, ``manifest`` (a dict of
    entry name to entry), optional ``description``, ``metadata`` (dict), ``aliases`` (list of
    str), ``run_key`` and ``step`` (a table logged with ``run.log``), ``incremental`` (bool)."""
    if not isinstance(data, dict):
        raise TypeError(f"artifact event data must be a map, not {type(data).__name__}")
    out = {}
    for field in ("uid", "name", "type", "digest"):
        v = data.get(field)
        if not isinstance(v, str) or not v:
            raise ValueError(f"artifact {field} must be a non-empty string, not {v!r}")
        out[field] = v
    names.check_artifact_name(out["name"])
    manifest = data.get("manifest")
    if not isinstance(manifest, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in manifest.items()
    ):
        raise TypeError("artifact manifest must be a map of entry name to entry")
    for name, entry in manifest.items():
        check_manifest_entry(name, entry)
    out["manifest"] = manifest
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise TypeError(f"artifact metadata must be a map, not {type(metadata).__name__}")
    out["metadata"] = metadata
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise TypeError("artifact description must be a string")
    out["description"] = description
    aliases = data.get("aliases") or []
    if not isinstance(aliases, list) or not all(
        isinstance(a, str) and a and ":" not in a and "/" not in a and not _VERSION_ALIAS.match(a) for a in aliases
    ):
        raise ValueError(f"artifact aliases must be strings without ':' or '/' and not of the form vN: {aliases!r}")
    out["aliases"] = aliases
    run_key, step = data.get("run_key"), data.get("step")
    if run_key is not None and not isinstance(run_key, str):
        raise TypeError("artifact run_key must be a string")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise TypeError("artifact step must be an int")
    out["run_key"], out["step"] = run_key, step
    out["incremental"] = bool(data.get("incremental"))
    return out


def check_manifest_entry(name: str, entry: dict) -> None:
    """An artifact manifest entry's names that become paths on a reader's machine: a file
    entry's name (``download`` writes the file there) and ``path``, and an object entry's
    ``source`` folder and the paths its logged form names under it (all relative to the run
    root). An object entry's name is only a key (a run's table is named by its history key).
    Raises BadName (a ValueError) naming the value."""
    if entry.get("kind") == "file" or "path" in entry:
        names.check_entry_name(name)
        names.check_file_path(entry.get("path"))
    if entry.get("kind") == "object" or "source" in entry:
        source = entry.get("source", "artifacts")
        names.check_folder(source)
        for path, _, _ in media_refs(entry.get("obj")):
            names.check_file_path(f"{source}/{names.check_relative_path(path, 'file path')}")


def media_refs(value, owner: str = ""):
    """``(path, sha256, type)`` of each file a logged value references, depth first."""
    if isinstance(value, dict):
        kind = value.get("_type")
        kind = str(kind) if kind is not None else owner
        path = value.get("path")
        if isinstance(path, str) and kind:
            sha = value.get("sha256")
            yield path, sha if isinstance(sha, str) else None, kind
        for v in value.values():
            if isinstance(v, (dict, list)):
                yield from media_refs(v, kind)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)):
                yield from media_refs(v, owner)
