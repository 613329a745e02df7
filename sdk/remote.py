"""The client side of a ``trackside server``: uploads and the read-back API over gRPC.

    api = trackside.Api("grpc://trackside.example.org:7311")   # a RemoteApi
    run = api.run("3kf9")
    run.history(keys=["loss"])                                  # the rows a local Api returns
    run.table("preds")                                          # a Table, its files fetched on demand
    api.artifact("dataset:latest").download("data")             # an artifact's files, each fetched once

URLs: ``grpc://HOST:PORT`` (plain) or ``grpcs://HOST:PORT`` (TLS); the port defaults to 7311.
The token is the ``token`` argument, else ``$TRACKSIDE_TOKEN``; for ``grpcs://`` the CA file
is ``ca``, else ``$TRACKSIDE_TLS_CA``, else the system's roots.

Imported on first use only (``import trackside`` does not import grpc).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import weakref
from typing import Any, Iterator, Optional, Sequence, Union

import grpc
import msgspec

from trackside.data_types.base import from_json
from trackside.store import StoreError
from trackside.store.tables import BUILTIN_KINDS, read_columns
from trackside.proto.trackside.v1 import trackside_pb2 as pb
from trackside.proto.trackside.v1 import trackside_pb2_grpc as pb_grpc

from .contracts import names
from .contracts.upload import (  # noqa: F401  (re-exported: the upload client's names, here as before)
    DEFAULT_PORT,
    MAX_MESSAGE,
    PermanentUploadError,
    ServerChannel,
    TransientUploadError,
    UploadClient,
    UploadError,
    is_server_url,
    parse_url,
)
from .artifacts import Artifact
from .runs import RunEdits, Runs
from .contracts.errors import ArtifactNotFoundError, RunNotFoundError
from .store.reader import ConsoleLine
from .store.sampling import Buckets, Series, Tail, from_wire

__all__ = [
    "PermanentUploadError",
    "RemoteApi",
    "RemoteArtifact",
    "RemoteError",
    "RemoteRunView",
    "TransientUploadError",
    "UploadClient",
    "UploadError",
    "is_server_url",
]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

ERROR_HEADER = "trackside-error"  # a refused read's trailing metadata: the class of the server's exception
# the exceptions a refused read raises again here, by that name (the server's Api raised them)
READ_ERRORS = {
    "RunNotFoundError": RunNotFoundError,
    "ArtifactNotFoundError": ArtifactNotFoundError,
    "KeyError": KeyError,
    "FileNotFoundError": FileNotFoundError,
    "ValueError": ValueError,
    "TypeError": TypeError,
}
SHA256_NAME = re.compile(r"[0-9a-f]{64}")  # media, table and artifact files are named by their SHA-256

# -- reading ---------------------------------------------------------------------------------------


class RemoteError(StoreError):
    """A read the server did not answer: unreachable, a wrong token, a server failure.
    ``code`` is the gRPC status name."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class RemoteApi:
    """``trackside.Api`` over a ``trackside server``: the same calls and the same results,
    read over the network. ``trackside.Api("grpc://...")`` makes one.

    Reads are live, as with a local store. Objects rebuilt from files (media, tables,
    artifacts) read them from ``cache_dir``, where they are fetched from the server on first
    use, each once: they are named by their SHA-256 (checked on arrival), so a fetched copy
    never goes stale. By default ``cache_dir`` is a temporary folder removed by ``close()``
    (or when the RemoteApi is garbage-collected), and paths into it, such as an artifact's
    ``get_path``, last as long as the RemoteApi; give ``cache_dir`` to keep the files across
    sessions. Safe to use from several threads; ``close()`` (or a ``with`` block) closes the
    connection.
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        ca: Optional[str] = None,
        *,
        timeout: float = 60.0,
        cache_dir: Union[str, os.PathLike, None] = None,
    ):
        self.url = self.root = url
        self._conn = ServerChannel(url, token, ca, timeout)
        self._stub = pb_grpc.ReadStub(self._conn.channel)
        self._edit_stub = pb_grpc.EditStub(self._conn.channel)
        self._cache = os.path.abspath(os.fspath(cache_dir)) if cache_dir is not None else None
        self._cache_lock = threading.Lock()
        self._remove_cache: Optional[weakref.finalize] = None  # removes the temporary cache folder, once one is made

    @property
    def cache_dir(self) -> str:
        """The folder files fetched from the server are kept in, each at its path on the server."""
        with self._cache_lock:
            if self._cache is None:
                self._cache = tempfile.mkdtemp(prefix="trackside-remote-")
                # also when close() is never called: at garbage collection, else at exit
                self._remove_cache = weakref.finalize(self, shutil.rmtree, self._cache, ignore_errors=True)
            return self._cache

    def _error(self, e: grpc.RpcError, what: str) -> Exception:
        code = e.code().name if e.code() is not None else "UNKNOWN"
        details = e.details() or code
        if code in ("NOT_FOUND", "INVALID_ARGUMENT"):
            trailer = dict(e.trailing_metadata() or ()) if hasattr(e, "trailing_metadata") else {}
            cls = READ_ERRORS.get(str(trailer.get(ERROR_HEADER)))
            if cls is None:  # a server that does not name the exception
                cls = (
                    ValueError
                    if code == "INVALID_ARGUMENT"
                    else RunNotFoundError
                    if what == "run"
                    else FileNotFoundError
                )
            # the server says what is missing; which server, only the client knows
            return cls(f"trackside server {self.url}: {details}")
        return RemoteError(f"trackside server {self.url}: {what}: {details} ({code})", code)

    def query(self, method: str, **args) -> Any:
        """One read call (``runs``, ``run``, ``keys``, ``table_keys``, ``artifact`` ...) and its
        decoded result."""
        try:
            reply = self._stub.Query(
                pb.QueryRequest(method=method, args=_encode(args)),
                timeout=self._conn.timeout,
                metadata=self._conn.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e, "run" if "run_id" in args or method == "run" else method) from None
        return _decode(reply.result)

    def scan(self, method: str, **args) -> Iterator[Any]:
        """The items of a streamed read call (``history``, ``console_lines``,
        ``system_metrics``, ``media_files``), a page at a time."""
        replies = self._stub.Scan(pb.QueryRequest(method=method, args=_encode(args)), metadata=self._conn.metadata)
        try:
            for reply in replies:
                yield from _decode(reply.result)
        except grpc.RpcError as e:
            raise self._error(e, "run" if "run_id" in args else method) from None
        finally:
            replies.cancel()  # a scan left early stops the server's too

    def edit(self, method: str, **args) -> Any:
        """One edit call (``edit_run``, ``delete_run``) and its decoded result."""
        try:
            reply = self._edit_stub.Apply(
                pb.QueryRequest(method=method, args=_encode(args)),
                timeout=self._conn.timeout,
                metadata=self._conn.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e, "run") from None
        return _decode(reply.result)

    def runs(
        self,
        project: Optional[str] = None,
        filters: Optional[dict] = None,
        order: Optional[str] = None,
        per_page: int = 50,
    ) -> Runs:
        """The runs of ``project`` matching ``filters``, sorted by ``order``, as ``Api.runs``:
        a ``Runs`` read from the server a page (``per_page`` runs) at a time; the server
        filters, sorts and counts. ValueError names a filter it does not take."""
        args = {"project": project, "filters": filters, "order": order}

        def fetch(offset: int, limit: int) -> list:
            return [RemoteRunView(self, f) for f in self.query("runs", **args, offset=offset, limit=limit)]

        def count() -> int:
            return self.query("count_runs", project=project, filters=filters)

        runs = Runs(fetch, count, per_page)
        runs[0:per_page]  # checks the filters now, as a local Api does (and the page is kept)
        return runs

    def edit_run(self, run_id: str, **changes) -> None:
        """Edit a run on the server (``Api.edit_run``)."""
        self.edit("edit_run", run_id=run_id, **changes)

    def delete_run(self, run_id: str, force: bool = False) -> bool:
        """Delete a run on the server (``Api.delete_run``); refused while it is being uploaded."""
        return self.edit("delete_run", run_id=run_id, force=force)

    def buckets_many(
        self,
        runs: Sequence[Union[str, "RemoteRunView"]],
        key: str,
        samples: int = 1000,
        min_step: Optional[int] = None,
        max_step: Optional[int] = None,
        *,
        x_axis: str = "_step",
    ) -> dict[str, Buckets]:
        """As ``Api.buckets_many``: one key of many runs, sampled on the server in one call."""
        ids = [r.id if isinstance(r, RemoteRunView) else str(r) for r in runs]
        found = self.query(
            "buckets_many", runs=ids, key=key, samples=samples, min_step=min_step, max_step=max_step, x_axis=x_axis
        )
        return {run_id: from_wire(Buckets, b) for run_id, b in found.items()}

    def run(self, path: str) -> "RemoteRunView":
        """The run with this id, or whose id starts with it when exactly one does
        (``"project/run_id"`` accepted). Raises RunNotFoundError naming the run and the server."""
        return RemoteRunView(self, self.query("run", run_id=str(path)))

    def artifact(self, name: str, type: Optional[str] = None) -> "RemoteArtifact":
        """The artifact version ``"name:alias"`` (``latest`` when no alias; ``vN``; an alias
        of your own), as ``Api.artifact``: an ``Artifact`` whose ``get(entry)`` rebuilds the
        stored objects, fetching their files first. Raises ArtifactNotFoundError (a KeyError)
        naming the versions and aliases there are, ValueError when ``type`` is given and
        differs."""
        return RemoteArtifact(self, self.query("artifact", name=name, type=type))

    def download(self, path: str, dest_dir: Union[str, os.PathLike] = ".") -> str:
        """Fetch the server's file ``path`` (relative to its root: ``runs/<id>/media/...``, as
        ``media_files`` lists them, or ``artifacts/...``) to ``dest_dir/path``; returns the
        local path. Written atomically; a file named by its SHA-256 is checked against it
        (ValueError when it differs). Raises FileNotFoundError when the server has no such
        file."""
        parts = _parts(path)
        names.contained(dest_dir, "/".join(parts), "file path")  # no symlink there leads it out either
        target = os.path.join(os.fspath(dest_dir), *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".download-")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    for chunk in self._stub.GetFile(pb.FileRequest(path=str(path)), metadata=self._conn.metadata):
                        f.write(chunk.data)
                        digest.update(chunk.data)
                except grpc.RpcError as e:
                    raise self._error(e, f"file {path}") from None
            name = os.path.basename(target).split(".", 1)[0]
            if SHA256_NAME.fullmatch(name) and digest.hexdigest() != name:
                raise ValueError(
                    f"the file {path} from trackside server {self.url} is damaged: its SHA-256 is not "
                    f"the one its name carries"
                )
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def _local(self, path: str) -> str:
        """Where the server's file or folder ``path`` is kept in the cache folder."""
        return os.path.join(self.cache_dir, *_parts(path))

    def _fetch(self, path: str) -> str:
        """The cached copy of the server's file ``path``, fetched on first use."""
        local = self._local(path)
        if not os.path.isfile(local):
            self.download(path, self.cache_dir)
        return local

    def _fetch_files(self, value, source: str) -> str:
        """Fetch every file the logged form ``value`` names (relative to the server's folder
        ``source``), and those named by a table's cells; returns the local copy of ``source``,
        where ``from_json`` then finds them."""
        folder = self._local(source)
        for ref in _file_refs(value):
            self._fetch(f"{source}/{ref['path']}")
            if ref.get("_type") in TABLE_TYPES:
                # cells of data types are logged forms too, naming files beside the table's
                _, types, columns, _ = read_columns(ref, folder)
                for kind, cells in zip(types, columns):
                    if kind is not None and (kind not in BUILTIN_KINDS or kind == "mixed"):
                        self._fetch_files(cells, source)
        return folder

    def close(self) -> None:
        """Close the connection and remove the temporary cache folder (a ``cache_dir`` given
        is kept). Idempotent."""
        self._conn.close()
        with self._cache_lock:
            if self._remove_cache is not None:
                self._remove_cache()
                self._remove_cache = self._cache = None

    def __enter__(self) -> "RemoteApi":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RemoteApi {self.url}>"


TABLE_TYPES = ("table", "incremental-table")  # logged forms whose file holds cells naming files of their own


def _parts(path) -> list[str]:
    """The parts of a path relative to the server's root; ValueError (BadName) for any other path."""
    return names.check_relative_path(path, "file path").split("/")


def _file_refs(value, in_form: bool = False) -> Iterator[dict]:
    """The logged forms in ``value`` that name a file (a dict with ``_type`` and ``path``), at
    any depth inside a logged form (an image's masks too); plain dicts are not logged forms."""
    if isinstance(value, dict):
        if "_type" in value:
            in_form = True
            if isinstance(value.get("path"), str):
                yield value
        if in_form:
            for v in value.values():
                yield from _file_refs(v, True)
    elif isinstance(value, list):
        for v in value:
            yield from _file_refs(v, in_form)


class RemoteArtifact(Artifact):
    """An artifact version on a server (``RemoteApi.artifact``, a run's ``logged_artifacts``
    and tables): an ``Artifact`` with the same attributes and calls. ``get`` and ``get_path``
    fetch the files they need first, into the RemoteApi's ``cache_dir`` (``get_path`` is a
    path there); ``download`` copies them out of it."""

    def __init__(self, api: RemoteApi, fields: dict):
        super().__init__(fields["name"], fields["type"], fields["description"], fields["metadata"])
        self.version = fields["version"]
        self.aliases = list(fields["aliases"])
        self.digest = fields["digest"]
        self.run_key = fields["run_key"]
        self.step = fields["step"]
        self.increment = fields["increment"]
        self._manifest = fields["manifest"]
        self._api = api

    def _source(self, entry: dict) -> str:
        return self._api._fetch_files(entry["obj"], entry.get("source", "artifacts"))

    def _file(self, entry: dict) -> str:
        return self._api._fetch(entry["path"])

    def _increment_rows(self) -> list:
        return [tuple(row) for row in self._api.query("artifact_increments", name=self.name, version=self.version)]


class RemoteRunView(RunEdits):
    """One run on a server, as ``RunView`` shows a local one: the same attributes (a snapshot,
    ``refresh()`` takes a new one), the same calls and edits (stored on the server). ``dir`` is the run's folder on the
    server relative to its root (what ``download`` takes); ``media_files`` paths are relative
    to the server's root too. Objects rebuilt from files (``media``, ``rebuild``,
    ``objects=True``, tables, artifacts) fetch them into the RemoteApi's ``cache_dir``."""

    def __init__(self, api: RemoteApi, fields: dict):
        self._api = api
        self._load(fields)

    def _load(self, fields: dict) -> None:
        self.id = fields["id"]
        self.project = fields["project"]
        self.name = fields["name"]
        self.group = fields["group"]
        self.job_type = fields["job_type"]
        self.tags = fields["tags"]
        self.state = fields["state"]
        self.exit_code = fields["exit_code"]
        self.created_at = fields["created_at"]
        self.updated_at = fields["updated_at"]
        self.finished_at = fields["finished_at"]
        self.history_rows = fields["history_rows"]
        self.last_step = fields["last_step"]
        self.dir = f"runs/{self.id}"
        # kept encoded: each access returns new dicts, as a local RunView's do
        self._config = _encode(fields["config"])
        self._summary = _encode(fields["summary"])
        self._metadata = _encode(fields["metadata"])
        self.notes = fields.get("notes")
        self._loaded()

    def refresh(self) -> "RemoteRunView":
        """Re-read the run's attributes from the server; returns self."""
        self._load(self._api.query("run", run_id=self.id))
        return self

    def _stored_summary(self) -> dict:
        return _decode(self._summary)

    def _stored_config(self) -> dict:
        return _decode(self._config)

    def _edit(self, **changes) -> None:
        self._api.edit_run(self.id, **changes)

    def _delete(self, force: bool) -> None:
        self._api.delete_run(self.id, force=force)

    @property
    def metadata(self) -> dict:
        return _decode(self._metadata)

    @property
    def runtime(self) -> float:
        """Seconds from creation to the end (or to the last write while running)."""
        end = self.finished_at if self.finished_at is not None else self.updated_at
        return max(0.0, end - self.created_at)

    def keys(self) -> list[str]:
        """Every key the run has logged to its history, sorted."""
        return self._api.query("keys", run_id=self.id)

    def history(
        self,
        keys: Union[str, Sequence[str], None] = None,
        min_step: Optional[int] = None,
        max_step: Optional[int] = None,
        pandas: bool = False,
        *,
        samples: Optional[int] = None,
        objects: bool = False,
    ):
        """As ``RunView.history``: rows with ``_step``, ``_timestamp`` and the values, for
        ``min_step <= step < max_step``; ``pandas=True`` for a DataFrame. Rich values are their
        logged form; ``objects=True`` rebuilds them as the objects logged (see ``rebuild``)."""
        if pandas:
            try:
                import pandas as pd  # optional: pandas
            except ImportError:
                raise ImportError(
                    "history(pandas=True) needs pandas, which is not installed: pip install pandas "
                    "(or call history() without pandas=True for a list of dicts)"
                ) from None
        rows = list(self._api.scan("history", **_history_args(self.id, keys, min_step, max_step), samples=samples))
        if objects:
            rows = [self._rebuild_row(row) for row in rows]
        return pd.DataFrame.from_records(rows) if pandas else rows

    def series(self, key: str, min_step: Optional[int] = None, max_step: Optional[int] = None) -> Series:
        """As ``RunView.series``: the key's numbers as numpy arrays, read on the server."""
        return from_wire(
            Series, self._api.query("series", run_id=self.id, key=key, min_step=min_step, max_step=max_step)
        )

    def buckets(
        self,
        keys: Union[str, Sequence[str], None] = None,
        samples: int = 1000,
        min_step: Optional[int] = None,
        max_step: Optional[int] = None,
        *,
        x_axis: str = "_step",
    ) -> dict[str, Buckets]:
        """As ``RunView.buckets``: sampled on the server, only the buckets sent."""
        found = self._api.query(
            "buckets", **_history_args(self.id, keys, min_step, max_step), samples=samples, x_axis=x_axis
        )
        return {key: from_wire(Buckets, b) for key, b in found.items()}

    def tail(self, keys: Union[str, Sequence[str], None] = None, since: int = -1, limit: int = 10000) -> Tail:
        """As ``RunView.tail``: the rows stored after ``since``, and the next cursor."""
        keys = [keys] if isinstance(keys, str) else list(keys) if keys is not None else None
        rows, cursor = self._api.query("tail", run_id=self.id, keys=keys, since=since, limit=limit)
        return Tail(rows, cursor)

    def scan_history(
        self,
        keys: Union[str, Sequence[str], None] = None,
        min_step: Optional[int] = None,
        max_step: Optional[int] = None,
        page_size: int = 1000,
        *,
        objects: bool = False,
    ) -> Iterator[dict]:
        """Every history row in step order, streamed from the server: memory stays bounded
        however long the run. ``objects=True`` rebuilds rich values as in ``history``."""
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        rows = self._api.scan("history", **_history_args(self.id, keys, min_step, max_step), page_size=page_size)
        return map(self._rebuild_row, rows) if objects else rows

    def console_lines(self, stream: Optional[str] = None) -> list[ConsoleLine]:
        """The captured console lines in order, as ``(time, stream, text)``."""
        return [ConsoleLine(*line) for line in self._api.scan("console_lines", run_id=self.id, stream=stream)]

    def console(self) -> str:
        """The captured console output, one line per logged line, in order."""
        return "".join(line.text + "\n" for line in self.console_lines())

    def system_metrics(self, keys: Union[str, Sequence[str], None] = None, host: Optional[str] = None) -> list[dict]:
        """The run's system metrics in time order, as ``RunView.system_metrics``."""
        if isinstance(keys, str):
            keys = [keys]
        return list(self._api.scan("system_metrics", run_id=self.id, keys=keys, host=host))

    def media_files(self, key: Optional[str] = None) -> list[dict]:
        """The media index (``step``, ``key``, ``path``, ``sha256``, ``type``); ``path`` is
        relative to the server's root, for ``download``."""
        return list(self._api.scan("media_files", run_id=self.id, key=key))

    def media(self, key: str, step: Optional[int] = None):
        """The rich values logged at ``key`` rebuilt as objects, as ``RunView.media``; their
        files are fetched from the server on first use."""
        if not isinstance(key, str):
            raise TypeError(f"media() takes a key (str), not {type(key).__name__}")
        lo, hi = (None, None) if step is None else (step, step + 1)
        found = [
            (r["_step"], self.rebuild(r[key]))
            for r in self.scan_history([key], lo, hi)
            if type(r.get(key)) is dict and "_type" in r[key]
        ]
        if step is None:
            return found
        if not found:
            raise KeyError(f"run {self.id} has no media at key {key!r} step {step}")
        return found[0][1]

    def rebuild(self, value):
        """A logged form read from this run (a history or summary value) as its object, its
        files fetched from the server first: ``run.rebuild(run.summary["gradients"])`` is the
        Histogram that was logged. Other values come back as they are."""
        return from_json(value, self._api._fetch_files(value, self.dir))

    def _rebuild_row(self, row: dict) -> dict:
        for k, v in row.items():
            if type(v) is dict and "_type" in v:
                row[k] = self.rebuild(v)
        return row

    # -- tables and artifacts --------------------------------------------------------------------

    def table(self, key: str, version: Union[int, str, None] = None):
        """The table the run logged under ``key``, as ``RunView.table``: the latest version, or
        version ``N`` (an int, ``"vN"``, or ``"latest"``). Raises ArtifactNotFoundError (a
        KeyError) naming the run's tables, or its versions, when there is no such table or
        version."""
        found = self._api.query("table", run_id=self.id, key=key, version=version)
        return RemoteArtifact(self._api, found["artifact"]).get(found["entry"])

    def table_increments(self, key: str) -> list:
        """The increments of the INCREMENTAL table logged under ``key``, in order, as
        ``TableIncrement(increment, version, step, table)``."""
        found = self._api.query("table", run_id=self.id, key=key, version="latest")
        return RemoteArtifact(self._api, found["artifact"])._increments(found["entry"], upto=False)

    def table_keys(self) -> list[str]:
        """The keys under which the run logged tables, sorted."""
        return self._api.query("table_keys", run_id=self.id)

    def logged_artifacts(self) -> list[RemoteArtifact]:
        """The artifact versions the run logged (its tables too), oldest first."""
        return [RemoteArtifact(self._api, fields) for fields in self._api.query("logged_artifacts", run_id=self.id)]

    def download(self, path: str, dest_dir: Union[str, os.PathLike] = ".") -> str:
        """``RemoteApi.download``: fetch a file of the server to ``dest_dir/path``."""
        return self._api.download(path, dest_dir)

    def __repr__(self) -> str:
        name = f" name={self.name!r}" if self.name else ""
        return f"<RemoteRunView {self.project}/{self.id}{name} state={self.state}>"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, RemoteRunView) and other._api.url == self._api.url and other.id == self.id

    def __hash__(self) -> int:
        return hash((self._api.url, self.id))


def _history_args(run_id: str, keys, min_step, max_step) -> dict:
    if isinstance(keys, str):
        keys = [keys]
    elif keys is not None:
        keys = list(keys)
    return {"run_id": run_id, "keys": keys, "min_step": min_step, "max_step": max_step}
