"""Artifacts: named, versioned sets of objects (tables, images ...) and files.

    art = trackside.Artifact("mnist_test_preds", type="predictions")
    art.add(table, "my_test_key")          # a data type, under an entry name
    art.add_file("labels.csv")             # a file, under its base name
    run.log_artifact(art)                  # returns once the store holds it: art.version == "v0"
    run.use_artifact("mnist_test_preds:latest").get("my_test_key") == table

Files are content-addressed under the run root (``<root>/artifacts/media/...``; a table
logged with ``run.log`` keeps its rows file in the run folder), so the same content is stored
once, and the store's ``artifacts`` table (written by the daemon from an "artifact" event)
holds each version's manifest: entry name -> logged form or file reference, with paths
relative to the run root. Any process that reads the store (``trackside.Api``) gets equal
objects back. Versions count from ``v0`` per name; ``latest`` follows the newest, and
``log_artifact(art, aliases=[...])`` adds aliases of your own. Logging content identical to the
latest version stores no new version. A table logged with ``run.log({key: table})`` is the
artifact ``run-<run id>-<key>``, one version per log (per increment for INCREMENTAL tables).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from typing import Any, NamedTuple, Optional

import msgspec

from .contracts import names
from .contracts.errors import ArtifactNotFoundError, Error, UsageError
from .data_types.base import DataType, from_json, store_file
from .data_types.table import JoinedTable, Table, concat, table_artifact_name
from .store.reader import StoreReader


def _plain(obj):
    """msgspec hook for a manifest's values: numpy scalars and arrays become lists."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in an artifact's manifest")


_digest_encode = msgspec.msgpack.Encoder(enc_hook=_plain).encode  # a manifest's bytes, for its digest

__all__ = ["Artifact", "ArtifactNotFoundError", "TableIncrement", "table_artifact_name"]

_VERSION = re.compile(r"^v([0-9]+)$")
STORE_WAIT = 60.0  # seconds log_artifact waits for the daemon to store the artifact


class TableIncrement(NamedTuple):
    """One increment of an INCREMENTAL table (``RunView.table_increments``)."""

    increment: int  # 0, 1, ... in logging order, continued by a resumed run
    version: int  # the version of the artifact run-<run id>-<key> that holds it
    step: Optional[int]  # the step it was logged at
    table: Any  # a Table of the increment's rows only


def _check_name(name, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what} must be a non-empty string, not {name!r}")
    return names.check_artifact_name(name, what)


def _check_entry_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"an entry name must be a non-empty string, not {name!r}")
    return names.check_entry_name(name)


class Artifact:
    """A named, typed set of objects and files, stored as versions.

    Build it (``add``, ``add_file``, ``add_dir``), log it with ``run.log_artifact``; read
    one back with ``run.use_artifact("name:alias")`` or ``Api().artifact("name:alias")``.
    ``get(name)`` returns an object equal to the one added. Attributes: ``name``, ``type``,
    ``description``, ``metadata``, ``version`` (``"v0"`` ...; None until logged),
    ``aliases``. Not thread-safe.
    """

    def __init__(self, name: str, type: str, description: Optional[str] = None, metadata: Optional[dict] = None):
        self.name = _check_name(name, "artifact name")
        self.type = _check_name(type, "artifact type")
        if description is not None and not isinstance(description, str):
            raise TypeError("description must be a string")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, not {metadata.__class__.__name__}")
        self.description = description
        self.metadata = dict(metadata or {})
        self.version: Optional[str] = None
        self.aliases: list[str] = []
        self.digest: Optional[str] = None
        self.run_key: Optional[str] = None  # a run's table: its key
        self.step: Optional[int] = None
        self._entries: dict[str, tuple] = {}  # while building: name -> ("object", obj) | ("file", path)
        self._manifest: Optional[dict] = None  # once logged or read: name -> stored entry
        self._api: Any = None  # the reader it was read through (a StoreReader), once logged or read
        self._root: Optional[str] = None
        self.increment: Optional[int] = None  # an INCREMENTAL table's increment number

    # -- building --------------------------------------------------------------------------------

    def _building(self, what: str) -> None:
        if self._manifest is not None:
            raise ValueError(
                f"artifact {self.qualified_name} is already logged and cannot change ({what}); "
                f"create a new Artifact({self.name!r}, {self.type!r}) for a new version"
            )

    def add(self, obj, name: str):
        """Add a data type object (Table, JoinedTable, Image ...) under ``name``; returns it.
        It is stored as it is when the artifact is logged. Raises TypeError for other objects
        and ValueError for a table over ``Table.MAX_ARTIFACT_ROWS``."""
        self._building("add")
        name = _check_entry_name(name)
        if not isinstance(obj, DataType):
            raise TypeError(
                f"add() takes a trackside data type (Table, Image, ...), not {type(obj).__name__}; "
                f"use add_file() for a file"
            )
        for t in _tables_in(obj):
            t._check_size(len(t.data))
        self._entries[name] = ("object", obj)
        return obj

    def add_file(self, local_path, name: Optional[str] = None) -> str:
        """Add a file (its content as it is when the artifact is logged) under ``name``
        (default: its base name); returns the entry name. FileNotFoundError when missing."""
        self._building("add_file")
        path = os.fspath(local_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file to add to artifact {self.name!r}: {path}")
        name = _check_entry_name(name if name is not None else os.path.basename(path))
        self._entries[name] = ("file", os.path.abspath(path))
        return name

    def add_dir(self, local_path, name: Optional[str] = None) -> list[str]:
        """Add every file under a folder, named by their path in it (under ``name/`` when
        given); returns the entry names. A symlink that leads out of the folder is a
        ValueError naming it (nothing is added): the folder's content is what is shared."""
        self._building("add_dir")
        root = os.fspath(local_path)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"no such folder to add to artifact {self.name!r}: {root}")
        found = []
        for folder, dirs, files in sorted(os.walk(root)):
            for d in dirs:  # os.walk does not enter linked folders: one pointing out is refused
                if os.path.islink(os.path.join(folder, d)):
                    _inside(root, os.path.join(folder, d))
            for f in sorted(files):
                path = os.path.join(folder, f)
                _inside(root, path)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                found.append((path, f"{name.rstrip('/')}/{rel}" if name else rel))
        return [self.add_file(path, entry) for path, entry in found]

    # -- reading ---------------------------------------------------------------------------------

    @property
    def qualified_name(self) -> str:
        """``name:version`` (``name`` while not logged)."""
        return f"{self.name}:{self.version}" if self.version else self.name

    @property
    def manifest(self) -> Optional[dict]:
        """The stored manifest (entry name -> stored entry) once logged or read; None before."""
        return self._manifest

    @property
    def entries(self) -> list[str]:
        """The entry names, in the order they were added."""
        return list(self._manifest if self._manifest is not None else self._entries)

    def __contains__(self, name) -> bool:
        return name in (self._manifest if self._manifest is not None else self._entries)

    def _entry(self, name: str):
        source = self._entries if self._entries else self._manifest
        if source is None or name not in source:
            names = ", ".join(map(repr, self.entries)) or "none"
            raise KeyError(f"artifact {self.qualified_name} has no entry {name!r}; its entries: {names}")
        return source[name]

    def get(self, name: str):
        """The object stored under ``name``, equal to the one added (a file entry: the path
        of its stored copy). KeyError for an unknown name."""
        entry = self._entry(name)
        if isinstance(entry, tuple):  # built here: the object itself
            return entry[1]
        if entry.get("kind") == "file":
            return self.get_path(name)
        obj = entry["obj"]
        if obj.get("_type") == "incremental-table":
            return self._increments(name, upto=True)

        return from_json(obj, self._source(entry))

    def get_path(self, name: str) -> str:
        """The local path of a file entry (the stored, content-addressed copy: do not
        modify it)."""
        entry = self._entry(name)
        if isinstance(entry, tuple):
            if entry[0] != "file":
                raise KeyError(f"entry {name!r} of artifact {self.qualified_name} is an object, not a file; use get()")
            return entry[1]
        if entry.get("kind") != "file":
            raise KeyError(f"entry {name!r} of artifact {self.qualified_name} is an object, not a file; use get()")
        return self._file(entry)

    def download(self, root=None) -> str:
        """Copy the file entries into a folder (default ``./artifacts/<name>-<version>``),
        each at its entry name; returns the folder. Raises ValueError naming an entry whose
        name or stored path would lead out of its folder (a store written by a hostile
        client); nothing is written then."""
        if root is None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
            root = os.path.join("artifacts", f"{safe}-{self.version or 'draft'}")
        root = os.fspath(root)
        copies = []
        for name in self.entries:  # every name and path is checked before anything is written
            entry = self._entry(name)
            is_file = entry[0] == "file" if isinstance(entry, tuple) else entry.get("kind") == "file"
            if is_file:
                _check_entry_name(name)
                copies.append((self.get_path(name), names.contained(root, name, "artifact entry name")))
        for src, dest in copies:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(src, dest)
        return root

    def _increments(self, name: str, upto: bool):
        """The increments of this INCREMENTAL table up to this version: concatenated
        (``upto``) or as TableIncrements."""
        out = []
        for v, step, inc, manifest in self._increment_rows():
            entry = manifest.get(name)
            if entry is None or entry.get("kind") != "object":
                continue
            t = Table.from_json(entry["obj"], self._source(entry))
            out.append(TableIncrement(inc, v, step, t))
        if not upto:
            return out
        last = out[-1].table if out else None
        return concat([i.table for i in out], last.log_mode if last is not None else "INCREMENTAL")

    # Where a read artifact's files are: under the run root it was read from. A remote
    # artifact (trackside.remote) overrides these three to fetch what they name first.

    def _source(self, entry: dict) -> str:
        """The folder an object entry's logged form names its files relative to."""
        return names.contained(
            self._root, names.check_folder(entry.get("source", "artifacts"), "source folder"), "source folder"
        )

    def _file(self, entry: dict) -> str:
        """The local path of a file entry's stored copy."""
        return names.contained(self._root, names.check_file_path(entry.get("path")), "file path")

    def _increment_rows(self) -> list:
        """``(version, step, increment, manifest)`` of each INCREMENTAL table version of this
        name up to this one, in version order."""
        assert self.version is not None, "only a stored version has increments"
        rows = self._api.conn.execute(
            "SELECT version, step, increment, manifest FROM artifacts WHERE name = ? AND increment IS NOT NULL"
            " AND version <= ? ORDER BY version",
            (self.name, int(self.version[1:])),
        ).fetchall()
        return [(v, step, inc, json.loads(manifest)) for v, step, inc, manifest in rows]

    def __repr__(self) -> str:
        return f"<Artifact {self.qualified_name} type={self.type!r} entries={self.entries}>"

    # -- storing ---------------------------------------------------------------------------------

    def _serialize(self, root: str) -> dict:
        """Write the entries' files under ``<root>/artifacts`` and return the manifest."""
        folder = os.path.join(root, "artifacts")
        manifest = {}
        for name, (kind, obj) in self._entries.items():
            if kind == "object":
                for t in _tables_in(obj):
                    t._check_size(len(t.data))
                manifest[name] = {"kind": "object", "obj": obj.to_json(folder), "source": "artifacts"}
            else:
                ref = store_file(folder, obj)
                manifest[name] = {
                    "kind": "file",
                    "path": "artifacts/" + ref["path"].replace(os.sep, "/"),
                    "sha256": ref["sha256"],
                    "size": ref["size"],
                }
        return manifest

    @classmethod
    def _from_row(cls, api, row) -> "Artifact":
        name, version, type_, description, metadata, manifest, run_key, step, increment, digest = row
        self = cls.__new__(cls)
        cls.__init__(self, name, type_, description, json.loads(metadata) if metadata else None)
        self.version = f"v{version}"
        self.digest = digest
        self.run_key = run_key
        self.step = step
        self.increment = increment
        self._manifest = json.loads(manifest)
        self._api = api
        self._root = api.root
        self.aliases = [
            a
            for (a,) in api.conn.execute(
                "SELECT alias FROM artifact_aliases WHERE name = ? AND version = ? ORDER BY alias", (name, version)
            )
        ]
        return self


def _inside(root: str, path: str) -> None:
    """ValueError when ``path`` (a symlink, or under one) leads out of the folder ``root``."""
    base = os.path.realpath(root)
    if os.path.commonpath([base, os.path.realpath(path)]) != base:
        raise names.BadName(
            f"{path} leads out of the folder {root} (a symlink to {os.path.realpath(path)}): "
            f"copy the file into the folder, or add it with add_file()"
        )


def _tables_in(obj) -> list:
    if isinstance(obj, Table):
        return [obj]
    if isinstance(obj, JoinedTable):
        return [obj.table1, obj.table2]
    return []


# -- reading from the store ------------------------------------------------------------------------

_ROW = "name, version, type, description, metadata, manifest, run_key, step, increment, digest"


def parse_spec(spec: str) -> tuple[str, str]:
    """``"name:alias"`` -> ``(name, alias)``; no alias means ``latest``."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"an artifact is named by a string 'name:alias', not {spec!r}")
    name, sep, alias = spec.rpartition(":")
    if not sep:
        return spec, "latest"
    if not name or not alias:
        raise ValueError(f"artifact {spec!r}: use 'name', 'name:latest', 'name:v3' or 'name:<alias>'")
    return name, alias


def load_artifact(api, spec: str, type: Optional[str] = None) -> Artifact:
    """The artifact version ``spec`` (``"name:alias"``) from ``api``'s store. Raises
    ArtifactNotFoundError naming what exists when the name or alias is unknown, ValueError
    when ``type`` is given and differs."""
    name, alias = parse_spec(spec)
    try:
        found = _find(api, name, alias)
        if found is None and "/" in name:  # "entity/project/name:alias"
            short = name.rsplit("/", 1)[1]
            found = _find(api, short, alias) if _exists(api, short) else None
            if found is not None:
                name = short
    except Exception as e:
        if not api.missing_table(e):
            raise
        found = None
    if found is None:
        raise ArtifactNotFoundError(_not_found(api, name, alias))
    art = Artifact._from_row(api, found)
    if type is not None and art.type != type:
        raise ValueError(f"artifact {art.qualified_name} is of type {art.type!r}, not {type!r}")
    return art


def _exists(api, name: str) -> bool:
    return api.conn.execute("SELECT 1 FROM artifacts WHERE name = ? LIMIT 1", (name,)).fetchone() is not None


def _find(api, name: str, alias: str):
    conn = api.conn
    m = _VERSION.match(alias)
    if m:
        return conn.execute(
            f"SELECT {_ROW} FROM artifacts WHERE name = ? AND version = ?", (name, int(m.group(1)))
        ).fetchone()
    return conn.execute(
        f"SELECT {_ROW} FROM artifacts WHERE name = ? AND version ="
        " (SELECT version FROM artifact_aliases WHERE name = ? AND alias = ?)",
        (name, name, alias),
    ).fetchone()


def _not_found(api, name: str, alias: str) -> str:
    conn = api.conn
    try:
        versions = [
            v for (v,) in conn.execute("SELECT version FROM artifacts WHERE name = ? ORDER BY version", (name,))
        ]
    except Exception as e:
        if not api.missing_table(e):
            raise
        versions = []
    if not versions:
        try:
            names = [n for (n,) in conn.execute("SELECT DISTINCT name FROM artifacts ORDER BY name LIMIT 11")]
        except Exception as e:
            if not api.missing_table(e):
                raise
            names = []
        known = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none"
        return f"no artifact named {name!r} in {api.path} (artifacts: {known})"
    aliases = [a for (a,) in conn.execute("SELECT alias FROM artifact_aliases WHERE name = ? ORDER BY alias", (name,))]
    return (
        f"artifact {name!r} has no version {alias!r}: its versions are v{versions[0]} to v{versions[-1]}, "
        f"its aliases {', '.join(aliases)}"
    )


def run_table(api, run_id: str, key: str, version=None):
    """The table a run logged under ``key``: the latest version, version ``N`` (int or
    ``"vN"``) or ``"latest"``. An INCREMENTAL table reads back as its increments joined."""
    art, entry = run_table_artifact(api, run_id, key, version)
    return art.get(entry)


def run_table_artifact(api, run_id: str, key: str, version=None) -> tuple[Artifact, str]:
    """``(artifact, entry name)`` of the table a run logged under ``key`` at ``version``
    (as ``run_table`` takes it). Raises ArtifactNotFoundError naming the run's tables."""
    if version is None:
        alias = "latest"
    elif isinstance(version, int) and not isinstance(version, bool):
        alias = f"v{version}"
    elif isinstance(version, str):
        alias = version
    else:
        raise TypeError(f"version must be None, an int, 'vN' or an alias, not {version!r}")
    try:
        art = load_artifact(api, f"{table_artifact_name(run_id, key)}:{alias}")
    except ArtifactNotFoundError as e:
        keys = run_table_keys(api, run_id)
        if key in keys:
            raise
        raise ArtifactNotFoundError(
            f"run {run_id} logged no table under {key!r} (its tables: {', '.join(map(repr, keys)) or 'none'})"
        ) from e
    return art, key if key in art else art.entries[0]


def run_table_increments(api, run_id: str, key: str) -> list[TableIncrement]:
    """Each increment of the INCREMENTAL table a run logged under ``key``, in order."""
    art = load_artifact(api, f"{table_artifact_name(run_id, key)}:latest")
    return art._increments(key if key in art else art.entries[0], upto=False)


def run_table_keys(api, run_id: str) -> list[str]:
    """The keys under which a run logged tables."""
    try:
        return [
            k
            for (k,) in api.conn.execute(
                "SELECT DISTINCT a.run_key FROM artifacts a JOIN runs r ON r.rid = a.rid"
                " WHERE r.run_id = ? AND a.run_key IS NOT NULL ORDER BY a.run_key",
                (run_id,),
            )
        ]
    except Exception as e:
        if not api.missing_table(e):
            raise
        return []


def run_artifacts(api, run_id: str) -> list[Artifact]:
    """The artifact versions a run logged (its tables too), oldest first."""
    try:
        rows = api.conn.execute(
            f"SELECT {', '.join('a.' + c.strip() for c in _ROW.split(','))} FROM artifacts a"
            " JOIN runs r ON r.rid = a.rid WHERE r.run_id = ? ORDER BY a.aid",
            (run_id,),
        ).fetchall()
    except Exception as e:
        if not api.missing_table(e):
            raise
        return []
    return [Artifact._from_row(api, row) for row in rows]


# -- the run's side --------------------------------------------------------------------------------


def _reader(run):
    """The run's read-only view of its store (opened once)."""
    api = getattr(run, "_artifact_reader", None)
    if api is None:
        api = run._artifact_reader = StoreReader(run.root)
    return api


def _stored(run, uid: str, timeout: float):
    """Wait until the daemon has stored the artifact event ``uid``; ``(name, version)`` or None."""
    client = run._client
    deadline = time.monotonic() + timeout
    if client is not None:
        client.flush(timeout)
    api = _reader(run)
    delay = 0.001
    while True:
        try:
            row = api.conn.execute(
                "SELECT a.name, a.version FROM artifact_logs l JOIN artifacts a ON a.aid = l.aid WHERE l.uid = ?",
                (uid,),
            ).fetchone()
        except Exception as e:
            if not api.missing_table(e):
                raise
            row = None  # the daemon has not made the tables yet
        if row is not None:
            return row
        if time.monotonic() > deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def log_artifact(
    run, artifact, name: Optional[str] = None, type: Optional[str] = None, aliases: Optional[list] = None
) -> Artifact:
    """``Run.log_artifact``: store the artifact's files, index it as the name's next version
    and return once the store holds it (``artifact.version`` is then set). A path (file or
    folder) makes an artifact of it (``name`` defaults to its base name, ``type`` to
    "unspecified"). Raises ValueError for an artifact already logged or bad aliases, and
    the run's Error when the daemon does not store it within a minute."""

    if isinstance(artifact, (str, os.PathLike)):
        path = os.fspath(artifact)
        art = Artifact(name or os.path.basename(os.path.abspath(path)), type or "unspecified")
        if os.path.isdir(path):
            art.add_dir(path)
        else:
            art.add_file(path)
        artifact = art
    elif not isinstance(artifact, Artifact):
        raise TypeError(f"log_artifact() takes an Artifact or a path, not {artifact.__class__.__name__}")
    if artifact._manifest is not None:
        raise ValueError(
            f"artifact {artifact.qualified_name} is already logged; create a new Artifact for a new version"
        )
    aliases = list(aliases or [])
    for a in aliases:
        if not isinstance(a, str) or not a or ":" in a or "/" in a or _VERSION.match(a):
            raise ValueError(
                f"alias {a!r} is not valid: a non-empty string without ':' or '/', not of the form vN "
                f"(versions are named by the store)"
            )
    if run._client is None:
        raise UsageError(f"run {run.id} is not live (finished or disabled): log_artifact() needs a running run")
    manifest = artifact._serialize(run.root)

    digest = hashlib.sha256(_digest_encode({"type": artifact.type, "manifest": manifest})).hexdigest()
    uid = uuid.uuid4().hex
    run._event(
        "artifact",
        {
            "uid": uid,
            "name": artifact.name,
            "type": artifact.type,
            "digest": digest,
            "manifest": manifest,
            "description": artifact.description,
            "metadata": artifact.metadata,
            "aliases": aliases,
        },
    )
    if run.dest != "local":
        # offline or uploading: the destination numbers the version when the run gets there
        artifact.version, artifact.digest, artifact._manifest, artifact._root = None, digest, manifest, run.root
        return artifact
    found = _stored(run, uid, STORE_WAIT)
    if found is None:
        raise Error(
            f"the trackside daemon did not store artifact {artifact.name!r} within {STORE_WAIT:.0f} s "
            f"(is it an older daemon? `trackside daemon stop` lets the next run start a new one)"
        )
    artifact.version = f"v{found[1]}"
    artifact.digest = digest
    artifact._manifest = manifest
    artifact._root = run.root
    artifact._api = _reader(run)
    artifact.aliases = [
        a
        for (a,) in artifact._api.conn.execute(
            "SELECT alias FROM artifact_aliases WHERE name = ? AND version = ? ORDER BY alias",
            (artifact.name, found[1]),
        )
    ]
    return artifact


def use_artifact(run, spec, type: Optional[str] = None) -> Artifact:
    """``Run.use_artifact``: the artifact version ``"name:alias"`` (``latest``, ``vN`` or an
    alias of your own) from the run's store, as it is once everything this run logged before
    is stored. Raises ArtifactNotFoundError naming what exists."""
    if isinstance(spec, Artifact):
        if spec._manifest is None:
            raise ValueError(f"artifact {spec.name!r} is not logged yet: log it with run.log_artifact() first")
        spec = spec.qualified_name
    client = run._client
    if client is not None:
        # read what this run logged so far: wait until the store holds the last table it logged
        last = getattr(run, "_last_artifact_uid", None)
        if last is not None and _stored(run, last, STORE_WAIT) is not None and run._last_artifact_uid == last:
            run._last_artifact_uid = None
    return load_artifact(_reader(run), spec, type)
