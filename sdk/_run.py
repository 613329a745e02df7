"""``init`` and ``Run``: what training code calls.

``Run.log`` resolves the step with the single-writer rules and hands the entry to the transport
buffer; everything else (durability, merging across ranks, the store) happens in the daemon.
"""

from __future__ import annotations

import atexit
import os
import random
import re
import signal
import string
import sys
import threading
import time
import warnings
import weakref
from typing import Any

from .contracts import discovery, names
from .contracts.constants import DURABILITY, LATE_STEPS, MODES, REDUCE_RULES, SUMMARY_KINDS
from .contracts.errors import Error, TransportError, UsageError  # noqa: F401  (re-exported: trackside.Error ...)
from .contracts.version import __version__

# the seeds' naming rule: letters, digits and underscores, not starting with a digit; "/" groups
_GOOD_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z0-9_.\-]+)*$")
_ID_CHARS = string.ascii_lowercase + string.digits

DEFAULT_SETTINGS: dict[str, Any] = {
    "durability": "fsync",
    "late_steps": "amend",
    "merge_window": 10.0,
    "flush_interval": 0.02,
    "max_buffer": 16 << 20,
    "buffer_policy": "block",
    "console": True,
    "finish_timeout": 120.0,
    "reconnect_timeout": 60.0,  # seconds a writer keeps trying to reach a daemon before log() raises
    "system_metrics": True,  # the daemon samples CPU, memory, disk, network, GPUs for the run
    "server": None,  # a `trackside server` URL (grpc:// or grpcs://) to upload to; default $TRACKSIDE_SERVER
    "upload_interval": 1.0,  # seconds between uploads to the server while keeping up
    "transport": "unix",  # how this process reaches the host's daemon: "unix" (socket) or "grpc" (loopback)
}
# seconds; unset means the daemon's default (1 s and 10 s unless it was started otherwise)
_SYSTEM_INTERVALS = ("system_sample_interval", "system_log_interval")


def new_run_id() -> str:
    return "".join(random.choice(_ID_CHARS) for _ in range(8))


class _AttrDict(dict):
    """A dict whose keys also read and write as attributes (``config.lr = 0.1``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value


class Config(_AttrDict):
    """The run's configuration: a dict whose changes reach the run (``config.lr = ...`` too)."""

    def __init__(self, run: "Run", initial: dict | None = None):
        super().__init__(initial or {})
        object.__setattr__(self, "_run", run)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._run._event("config", {key: value})

    def update(self, other=(), /, **kw):
        d = dict(other, **kw)
        super().update(d)
        if d:
            self._run._event("config", d)

    def setdefaults(self, d: dict) -> None:
        self.update({k: v for k, v in d.items() if k not in self})


class Summary(_AttrDict):
    """The run's summary. Computed from logged values (last value unless ``define_metric`` says
    otherwise); values assigned here win over computed ones."""

    def __init__(self, run: "Run"):
        super().__init__()
        object.__setattr__(self, "_run", run)

    def __setitem__(self, key, value):
        value = self._run._logged_form(key, value)
        super().__setitem__(key, value)
        self._run._event("summary", {"set": {key: value}})

    def __delitem__(self, key):
        super().__delitem__(key)
        self._run._event("summary", {"del": [key]})

    def update(self, other=(), /, **kw):
        d = {k: self._run._logged_form(k, v) for k, v in dict(other, **kw).items()}
        super().update(d)
        if d:
            self._run._event("summary", {"set": d})


class Run:
    """One training run as seen from one process (a writer). Made by ``trackside.init``."""

    def __init__(self, *, id, project, name, config, tags, group, job_type, root, mode, settings, resume, rank):
        self.id = id
        self.project = project
        self.name = name or id
        self.tags = tuple(tags or ())
        self.group = group
        self.job_type = job_type
        self.root = root
        self.dir = os.path.join(root, "runs", id)
        self.mode = mode
        self.settings = settings
        # where the daemon sends the run: its local store, nowhere yet (offline: the WAL only,
        # `trackside sync` later) or a server
        self.dest = "offline" if mode == "offline" else (settings.get("server") or "local")
        self.resume = resume
        self.rank = rank
        self.step = 0
        self.finished = False
        self.late_dropped = 0
        self._seen_keys: set[str] = set()  # keys already checked against the naming rules
        self._late_steps = settings["late_steps"]
        self._client = None
        self._last_client = None
        self._meta_thread = None
        self._exported_id = False  # init exported TRACKSIDE_RUN_ID for this run (finish takes it back)
        self.summary = Summary(self)
        self.config = Config(self)
        if config:
            dict.update(self.config, _plain_config(config))

    # -- logging ---------------------------------------------------------------------------------

    def log(self, data: dict, step: int | None = None, commit: bool | None = None) -> None:
        """Log ``data`` (str keys to numbers, bools, strings, None) at a step.

        Without ``step``, the values go to the current step, which is then committed (the next
        call starts a new one) unless ``commit=False``. ``step=s`` above the current step commits
        the pending row and moves to ``s``; ``step`` equal to it adds to it; a lower step follows
        the run's ``late_steps`` policy. Returns once the entry is in the send buffer: it does not
        wait for disk or network. Raises TypeError for a value that cannot be logged, naming the
        key; nothing of a rejected call is logged.
        """
        client = self._client
        if client is None:
            if self.mode == "disabled":
                return
            raise UsageError(
                f"run {self.id} is finished: log() after finish() is not recorded; start a new run with trackside.init()"
            )
        if type(data) is not dict:
            if not isinstance(data, dict):
                raise TypeError(f"log() takes a dict of values, not {type(data).__name__}")
            data = dict(data)
        cur = self.step
        if step is None:
            s = cur
            commit_now = commit is not False
        else:
            if not isinstance(step, int):
                raise TypeError(f"step must be an int, not {type(step).__name__}")
            s = step
            # an explicit step stays open until a later step is logged, unless commit=True
            commit_now = commit is True
            if s < cur:
                if self._late_steps == "error":
                    raise UsageError(
                        f"step {s} is lower than the current step {cur} (late_steps='error'); "
                        f"log with step >= {cur}, or init with settings={{'late_steps': 'amend'}}"
                    )
                if self._late_steps == "drop":
                    self.late_dropped += 1
                    if self.late_dropped == 1:
                        warnings.warn(
                            f"trackside: dropping values logged at step {s} < current step {cur} "
                            f"(late_steps='drop'); later drops are counted in run.late_dropped",
                            stacklevel=2,
                        )
                    return
        if not self._seen_keys.issuperset(data):
            self._check_keys(data)
        try:
            client.add(s, commit_now, time.time_ns() // 1000, data, None)
        except TypeError:
            # rich values (media, tables, histograms) and array scalars: handled here, off the
            # fast path; scalars stay values, rich values travel as the entry's payload
            values, payload = _split_values(data, self, s)
            client.add(s, commit_now, time.time_ns() // 1000, values, payload)
        if s >= cur:
            self.step = s + 1 if commit_now else s

    def _check_keys(self, data: dict) -> None:
        for k in data:
            if k in self._seen_keys:
                continue
            if type(k) is not str:
                raise TypeError(f"log() keys must be str, not {type(k).__name__} ({k!r})")
            self._seen_keys.add(k)
            if not _GOOD_KEY.match(k):
                warnings.warn(
                    f"trackside: metric name {k!r} breaks the naming rules (letters, digits and underscores, "
                    f"not starting with a digit; '/' separates groups); it is logged, but may be hard to query",
                    stacklevel=3,
                )

    def define_metric(
        self,
        name: str,
        step_metric: str | None = None,
        *,
        summary: str | None = None,
        reduce: str | None = None,
        hidden: bool = False,
        step_sync: bool | None = None,
        goal: str | None = None,
        overwrite: bool | None = None,
    ) -> None:
        """Say how a metric (or a glob like ``"val/*"``) is summarized and merged across writers.

        ``summary``: comma-separated of min, max, mean, first, last, none. ``reduce``: how values
        of one step from several writers combine: last (default), mean, sum, min, max.
        """
        if not isinstance(name, str) or not name:
            raise UsageError("define_metric needs a metric name or glob")
        if reduce is not None and reduce not in REDUCE_RULES:
            raise UsageError(f"reduce={reduce!r} is not one of last, mean, sum, min, max")
        if summary is not None:
            kinds = [s.strip() for s in summary.split(",") if s.strip()]
            bad = [k for k in kinds if k not in SUMMARY_KINDS]
            if bad:
                raise UsageError(f"summary={summary!r}: unknown kind(s) {bad}; use min, max, mean, first, last, none")
        self._event(
            "define_metric",
            {
                k: v
                for k, v in {
                    "name": name,
                    "step_metric": step_metric,
                    "summary": summary,
                    "reduce": reduce,
                    "hidden": hidden,
                    "goal": goal,
                }.items()
                if v is not None
            },
        )

    def _logged_form(self, key: str, value):
        """A data type (histogram, image, ...), a list of them or a figure as it is stored;
        other values as they are."""
        if self.mode == "disabled":  # nothing is recorded: write no files either
            return value
        form = _rich_form(self, key, value, self.step)
        return value if form is None else form

    def _event(self, kind: str, data) -> None:
        if self._client is not None:
            self._client.event(kind, data)
        elif self.mode != "disabled" and self.finished:
            raise UsageError(f"run {self.id} is finished: changes after finish() are not recorded")

    # -- artifacts -------------------------------------------------------------------------------

    def log_artifact(self, artifact, name: str | None = None, type: str | None = None, aliases=None):
        """Store an ``Artifact`` (or a file or folder path) as the next version of its name;
        returns it once the store holds it (``artifact.version`` is set, e.g. ``"v0"``).
        Waits for the daemon (it blocks, unlike ``log``). See ``trackside.artifacts``."""
        # lazy: artifacts load the store's reader (sqlite3); keeps import trackside light
        from .artifacts import log_artifact

        return log_artifact(self, artifact, name=name, type=type, aliases=aliases)

    def use_artifact(self, artifact_or_name, type: str | None = None):
        """The artifact version ``"name:alias"`` (``latest``, ``vN`` or your alias) from the
        run root's store; ``.get(entry)`` gives back the objects. Raises
        ArtifactNotFoundError (a KeyError) naming the versions and aliases that exist."""
        # lazy: artifacts load the store's reader (sqlite3); keeps import trackside light
        from .artifacts import use_artifact

        return use_artifact(self, artifact_or_name, type=type)

    # -- frameworks ------------------------------------------------------------------------------

    def watch(
        self,
        models,
        criterion=None,
        log: str | None = "gradients",
        log_freq: int = 1000,
        idx: int | None = None,
        log_graph: bool = False,
    ) -> None:
        """Log histograms of a PyTorch model's gradients (``gradients/<name>``) and/or parameters
        (``parameters/<name>``; ``log="parameters"`` or ``"all"``) every ``log_freq`` calls of
        the model, into the step of the next ``log()``. Calls that do not log cost a counter
        increment. ``unwatch()`` removes the hooks; ``finish()`` does too. A disabled run
        watches nothing."""
        if self.mode == "disabled":
            return
        from .hooks.torch import watch  # optional: torch (the user's)

        watch(self, models, criterion=criterion, log=log, log_freq=log_freq, idx=idx, log_graph=log_graph)

    def unwatch(self, models=None) -> None:
        """Stop ``watch`` on ``models`` (every watched model when None)."""
        if self.__dict__.get("_watches"):
            from .hooks.torch import unwatch  # optional: torch (the user's)

            unwatch(self, models)

    # -- lifecycle -------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Return once everything logged so far is durable at the run's durability level
        (``"fsync"``: on disk at the daemon). Blocks, unlike ``log``. Raises TimeoutError when
        ``timeout`` seconds pass first (nothing is lost: the data stays buffered and goes on),
        TransportError when the writer failed (the daemon refused it or stayed unreachable)."""
        client = self._client
        if client is None:
            return
        if not client.flush(timeout):
            raise TimeoutError(
                f"run {self.id}: not everything logged was durable within {timeout} s; it stays buffered and is sent on"
            )

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Flush everything and return once the daemon has it durable and in the store.
        Raises TransportError when the writer failed before that (the message says why: the
        daemon refused the run, or could not be reached within ``reconnect_timeout``)."""
        if self.finished:
            return
        self.finished = True
        _live_runs.discard(self)
        self.unwatch()
        for stop in self.__dict__.pop("_on_finish", ()):  # integrations' hooks (sync_tensorboard)
            stop()
        if _current.get("run") is self:
            _current.pop("run", None)
        if self._exported_id and os.environ.get(discovery.ENV_RUN_ID) == self.id:
            # children started from now on are not ranks of this run
            os.environ.pop(discovery.ENV_RUN_ID, None)
            os.environ.pop(_ENV_STARTED_BY, None)
        client, self._client = self._client, None
        if client is None:
            return
        _console.detach(client)
        if self._meta_thread is not None:
            self._meta_thread.join(10)  # git and package versions belong to the run's record
        client.exit_code = exit_code or 0
        self._last_client = client
        ok = client.finish(timeout=self.settings["finish_timeout"])
        if client.error is not None:
            raise TransportError(
                f"run {self.id} finished without confirmation that everything is stored: {client.error}"
            )
        if not ok:
            print(
                f"trackside: run {self.id} finished without confirmation that everything is stored: the daemon "
                f"did not confirm within {self.settings['finish_timeout']:.0f} s",
                file=sys.stderr,
            )

    @property
    def dropped(self) -> int:
        """Entries dropped because the send buffer was full (``buffer_policy="drop"`` only)."""
        client = self._client or self._last_client
        return client.dropped if client is not None else 0

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=1 if exc_type else 0)

    def __repr__(self) -> str:
        return f"<trackside.Run {self.id} project={self.project!r} step={self.step}>"

    def _after_fork(self) -> None:
        if self._client is not None:
            self._client.after_fork()


def _plain_config(config) -> dict:
    if isinstance(config, dict):
        return dict(config)
    if hasattr(config, "__dict__"):  # argparse.Namespace and friends
        return dict(vars(config))
    raise TypeError(f"config must be a dict or a namespace, not {type(config).__name__}")


def _split_values(data: dict, run: "Run", step: int) -> tuple[dict, bytes | None]:
    """Split a log() dict into plain values and a payload of rich values.

    Scalars from array libraries (numpy, torch: anything with ``.item()`` and an empty shape)
    become Python scalars. An object with a ``_trackside_log(run, key, step)`` method (the data
    types) is turned into its logged form: a JSON-like dict with a ``_type``; such values go
    into the entry's payload (msgpack), and the daemon merges them into the row. Anything else
    is a TypeError naming the key.
    """
    import msgspec  # lazy: msgspec (~15 ms) comes with the transport; keeps import trackside light

    plain: dict = {}
    rich: dict = {}
    for k, v in data.items():
        if v is None or isinstance(v, (int, float, str, bool)):
            plain[k] = v
        elif hasattr(v, "_trackside_log"):
            rich[k] = v._trackside_log(run, k, step)
        elif hasattr(v, "item") and tuple(getattr(v, "shape", (None,))) == ():
            plain[k] = v.item()
        else:
            form = _rich_form(run, k, v, step)
            if form is None:
                raise TypeError(
                    f"cannot log {type(v).__name__} for key {k!r}: values must be int, float, bool, str, "
                    f"None, a trackside data type, a list of data types or a matplotlib/plotly figure"
                )
            rich[k] = form
    return plain, (msgspec.msgpack.encode(rich) if rich else None)


def _figure(v):
    """The data type of a matplotlib figure (or the pyplot module) or a plotly figure, else None.
    Checked by module name, so that neither library is imported to find out."""
    name = getattr(v, "__name__", None) if type(v) is type(sys) else type(v).__module__
    if isinstance(name, str) and name.startswith(("matplotlib", "plotly")):
        # optional: matplotlib/plotly (and numpy); keeps import trackside light
        from .data_types.plots import as_data_type

        return as_data_type(v)
    return None


def _rich_form(run: "Run", key: str, v, step: int):
    """The logged form of a data type, a non-empty list or tuple of data types (``{"_type":
    "list", "items": [...]}``) or a figure; None for any other value."""
    if hasattr(v, "_trackside_log"):
        return v._trackside_log(run, key, step)
    if isinstance(v, (list, tuple)) and v:
        items = []
        for x in v:
            form = _rich_form(run, key, x, step) if not isinstance(x, (list, tuple)) else None
            if form is None:
                return None
            items.append(form)
        return {"_type": "list", "items": items}
    fig = _figure(v)
    return fig._trackside_log(run, key, step) if fig is not None else None


# -- module-level state ------------------------------------------------------------------------

_current: dict = {}
_live_runs: "weakref.WeakSet[Run]" = weakref.WeakSet()


class _ConsoleTee:
    """Copies what the process prints (sys.stdout / sys.stderr) to the run's console log."""

    def __init__(self):
        self.clients: list = []
        self._installed = False
        self._lock = threading.RLock()  # re-entrant for the same reason as the transport's

    def attach(self, client) -> None:
        with self._lock:
            self.clients.append(client)
            if not self._installed:
                self._installed = True
                sys.stdout = _TeeStream(sys.stdout, "stdout", self)
                sys.stderr = _TeeStream(sys.stderr, "stderr", self)

    def detach(self, client) -> None:
        with self._lock:
            if client in self.clients:
                self.clients.remove(client)
            if not self.clients and self._installed:
                self._installed = False
                for name in ("stdout", "stderr"):
                    s = getattr(sys, name)
                    if isinstance(s, _TeeStream):
                        s.flush_partial()
                        setattr(sys, name, s.inner)

    def emit(self, lines) -> None:
        for c in list(self.clients):
            c.event("console", lines, ordered=False)


_console = _ConsoleTee()


class _TeeStream:
    def __init__(self, inner, name: str, tee: _ConsoleTee):
        self.inner = inner
        self.name = name
        self.tee = tee
        self._partial = ""

    def write(self, s: str) -> int:
        n = self.inner.write(s)
        if s:
            text = self._partial + s
            lines = text.split("\n")
            self._partial = lines.pop()
            if lines:
                now = time.time_ns() // 1000
                self.tee.emit([[now, self.name, line] for line in lines])
        return n

    def flush_partial(self) -> None:
        if self._partial:
            self.tee.emit([[time.time_ns() // 1000, self.name, self._partial]])
            self._partial = ""

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def init(
    project: str | None = None,
    name: str | None = None,
    *,
    id: str | None = None,
    config=None,
    tags=None,
    group: str | None = None,
    job_type: str | None = None,
    dir=None,
    resume=None,
    mode: str | None = None,
    settings: dict | None = None,
    entity=None,
    notes=None,
    reinit=None,
    sync_tensorboard: bool = False,
    **unknown,
) -> Run:
    """Start a run (or join one: a child process of a run joins it as another writer).

    Starts the host's daemon when none is running. ``mode="disabled"`` returns a run whose
    calls do nothing. ``sync_tensorboard=True`` also logs what TensorBoard ``SummaryWriter``s
    write during the run (needs the ``tensorboard`` package). Raises UsageError for bad arguments and TransportError when no daemon
    can be reached.
    """
    if unknown:
        raise UsageError(f"init() got unknown argument(s): {', '.join(sorted(unknown))}")
    mode = mode or os.environ.get("TRACKSIDE_MODE", "online")
    if mode not in MODES:
        raise UsageError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    merged = dict(DEFAULT_SETTINGS)
    if settings:
        unknown_settings = set(settings) - set(DEFAULT_SETTINGS) - set(_SYSTEM_INTERVALS)
        if unknown_settings:
            raise UsageError(
                f"unknown setting(s): {', '.join(sorted(unknown_settings))}; "
                f"known: {', '.join([*DEFAULT_SETTINGS, *_SYSTEM_INTERVALS])}"
            )
        merged.update(settings)
    _check_system_settings(merged)
    merged["server"] = merged["server"] or os.environ.get("TRACKSIDE_SERVER") or None
    if merged["server"] is not None and not str(merged["server"]).startswith(("grpc://", "grpcs://")):
        raise UsageError(f"server={merged['server']!r} must be a grpc://host:port or grpcs://host:port URL")
    if merged["transport"] not in ("unix", "grpc"):
        raise UsageError(f"transport={merged['transport']!r} is not one of unix, grpc")
    if merged["late_steps"] not in LATE_STEPS:
        raise UsageError(f"late_steps={merged['late_steps']!r} is not one of {', '.join(LATE_STEPS)}")
    if merged["durability"] not in DURABILITY:
        raise UsageError(f"durability={merged['durability']!r} is not one of {', '.join(DURABILITY)}")
    joined = False
    if id is None and os.environ.get(discovery.ENV_RUN_ID):
        id = os.environ[discovery.ENV_RUN_ID]  # a child process (a rank) joins its parent's run
        joined = True
    try:
        if id is not None:
            id = names.check_run_id(str(id))
        names.check_project(project or os.environ.get("TRACKSIDE_PROJECT") or "uncategorized")
    except names.BadName as e:
        raise UsageError(str(e)) from None
    if resume not in (None, False, True, "allow", "must", "never", "auto"):
        raise UsageError(f"resume={resume!r} is not one of allow, must, never, auto")
    root = (
        discovery.run_root(dir)
        if dir is not None
        else (
            os.environ.get(discovery.ENV_ROOT)
            and os.path.abspath(os.environ[discovery.ENV_ROOT])
            or discovery.run_root()
        )
    )
    rank, local_rank, world_size, ranked = _ranks()
    run = Run(
        id=id or new_run_id(),
        project=project or os.environ.get("TRACKSIDE_PROJECT") or "uncategorized",
        name=name,
        config=config,
        tags=tags,
        group=group,
        job_type=job_type,
        root=root,
        mode=mode,
        settings=merged,
        resume=resume,
        rank=rank,
    )
    if mode == "disabled":
        return run
    if resume == "must" and not _run_exists(root, run.id):
        raise UsageError(f"resume='must' but run {run.id} does not exist under {root}")
    if resume == "never" and _run_exists(root, run.id):
        raise UsageError(f"resume='never' but run {run.id} already exists under {root}")
    from .transport import Client  # socket and thread machinery only when a run really starts

    info = {
        "project": run.project,
        "name": run.name,
        "group": group,
        "job_type": job_type,
        "tags": list(run.tags),
        "settings": merged,
        "dest": run.dest,
    }
    if merged["transport"] == "grpc":
        # lazy: grpc only for transport="grpc"; keeps import trackside light
        from .grpc_transport import GrpcClient as Client
    hello = info
    if run.dest not in ("local", "offline") and os.environ.get("TRACKSIDE_TOKEN"):
        # the daemon uploads with the token of the run's own environment (it keeps it in memory only)
        hello = {**info, "token": os.environ["TRACKSIDE_TOKEN"]}
    client = Client(
        run.id,
        root,
        hello,
        rank=rank,
        flush_interval=merged["flush_interval"],
        max_buffer=merged["max_buffer"],
        buffer_policy=merged["buffer_policy"],
        reconnect_timeout=float(merged["reconnect_timeout"]),
    )
    client.start()
    run._client = client
    if client.welcome is not None and client.welcome.next_step:
        run.step = client.welcome.next_step
    # a process the run's own processes started (a data loader worker of rank 0 inherits RANK=0)
    # is never rank 0; one whose launcher was given TRACKSIDE_RUN_ID by the user may be
    if rank == 0 and not (joined and (os.environ.get(_ENV_STARTED_BY) or not ranked)):
        # the run's own fields, config and metadata come from rank 0 only: every rank may call
        # init(project=, config=, ...) alike, and the run is rank 0's whatever order they join in
        client.event("run", {**info, "config": dict(run.config), "metadata": _metadata_quick()})
        run._meta_thread = threading.Thread(
            target=_record_environment, args=(client,), name="trackside-meta", daemon=True
        )
        run._meta_thread.start()
    if not joined:
        os.environ[discovery.ENV_RUN_ID] = run.id  # this process's children join the run
        os.environ[_ENV_STARTED_BY] = str(os.getpid())
        os.environ[discovery.ENV_ROOT] = root
        run._exported_id = True  # finish() takes it back: a later init() here starts a new run
    # every writer announces itself before its data: whoever stores the run (this host's daemon,
    # a server that gets every host's uploads) knows how many ranks to wait for
    import socket  # lazy: keeps import trackside light (socket comes with the transport)

    client.event(
        "join",
        {
            "rank": rank,
            "local_rank": local_rank,
            "world_size": world_size,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        },
    )
    if merged["console"]:
        _console.attach(client)
    _current["run"] = run
    _live_runs.add(run)
    _install_exit_handlers()
    if sync_tensorboard:
        try:
            from .hooks.tensorboard import sync  # optional: tensorboard (pip install 'trackside[tensorboard]')
        except ImportError as e:
            run.finish()
            raise UsageError(
                f"init(sync_tensorboard=True) needs the tensorboard package ({e}): pip install 'trackside[tensorboard]'"
            ) from None
        sync(run)
    return run


_ENV_STARTED_BY = "TRACKSIDE_RUN_STARTED_BY"  # set beside TRACKSIDE_RUN_ID by the process that exported it


def _ranks() -> tuple[int, int, int | None, bool]:
    """``(rank, local_rank, world_size, ranked)`` from the launcher's environment: ``RANK``,
    ``LOCAL_RANK`` and ``WORLD_SIZE`` as torchrun, accelerate and Lightning set them (``ranked``:
    ``RANK`` or ``LOCAL_RANK`` was set). A process without them is rank 0 of an unknown world."""
    values = {}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise UsageError(
                f"{name}={raw!r} in the environment is not an integer; "
                f"set it as a launcher does (RANK=0, LOCAL_RANK=0, WORLD_SIZE=4)"
            ) from None
        if values[name] < 0 or (name == "WORLD_SIZE" and values[name] == 0):
            raise UsageError(f"{name}={raw!r} in the environment is out of range")
    rank = values.get("RANK", values.get("LOCAL_RANK", 0))
    return rank, values.get("LOCAL_RANK", rank), values.get("WORLD_SIZE"), "RANK" in values or "LOCAL_RANK" in values


def _check_system_settings(settings: dict) -> None:
    if not isinstance(settings["system_metrics"], bool):
        raise UsageError(f"system_metrics={settings['system_metrics']!r} must be True or False")
    for name in _SYSTEM_INTERVALS:
        value = settings.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise UsageError(f"{name}={value!r} must be a positive number of seconds")
    sample, window = settings.get("system_sample_interval"), settings.get("system_log_interval")
    if sample is not None and window is not None and window < sample:
        raise UsageError(
            f"system_log_interval={window!r} is shorter than system_sample_interval={sample!r}: "
            f"a stored row aggregates the samples of one log interval"
        )


def _run_exists(root: str, run_id: str) -> bool:
    return os.path.isdir(os.path.join(root, "runs", run_id))


def _metadata_quick() -> dict:
    # lazy: platform and socket only when a run starts; keeps import trackside light
    import platform
    import socket

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "program": sys.argv[0] if sys.argv else None,
        "args": sys.argv[1:],
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "trackside": __version__,
        "started_at": time.time(),
    }


def _record_environment(client) -> None:
    """Git commit and diff, installed packages: slow calls, off the caller's thread."""
    # lazy: subprocess and the transport only when a run starts; keeps import trackside light
    import subprocess

    from .transport import _block_signals

    _block_signals()
    try:  # background work: yield the CPU to the training loop (Linux: per thread)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass
    meta: dict = {}

    def git(*args):
        try:
            r = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit:
        meta["git"] = {
            "commit": commit.strip(),
            "branch": (git("rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None,
            "remote": (git("config", "--get", "remote.origin.url") or "").strip() or None,
            "diff": git("diff", "HEAD") or "",
        }
    try:
        meta["packages"] = _installed_packages()
    except Exception:
        pass
    try:
        client.event("meta", meta)
    except Exception:
        pass


def _installed_packages() -> dict:
    """name -> version of every installed distribution. Reading them all costs ~0.2 s of CPU in a
    large environment, at every run's start (64 processes starting at once: seconds of both
    cores): the list is kept in the daemon's folder under a key of the import path's folders and
    their modification times, which an install, upgrade or removal changes."""
    import contextlib
    import hashlib
    import json

    folders = []
    for entry in sys.path:
        try:
            folders.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            continue
    key = hashlib.sha256(repr((sys.prefix, sys.version, folders)).encode()).hexdigest()[:32]
    path = None
    try:
        path = os.path.join(discovery.daemon_dir(), f"packages-{key}.json")
        with open(path) as f:
            cached = json.load(f)
        if isinstance(cached, dict):
            return cached
    except (OSError, ValueError):
        pass
    from importlib import metadata as md  # lazy: importlib.metadata (~15 ms), on the environment thread only

    packages = {d.metadata["Name"]: d.version for d in md.distributions() if d.metadata["Name"]}
    if path is not None:  # private (0600), whole or not at all; one temporary file per process
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(packages, f)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return packages


_exit_installed = False
_signal_exit_code: int | None = None  # set when SIGTERM ends the process


def _install_exit_handlers() -> None:
    global _exit_installed
    if _exit_installed:
        return
    _exit_installed = True
    atexit.register(_finish_all, None)
    prev_hook = sys.excepthook

    def excepthook(tp, value, tb):
        _finish_all(1)
        prev_hook(tp, value, tb)

    sys.excepthook = excepthook
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:

        def on_term(signum, frame):
            # Unwind like Ctrl-C does, and finish the runs at exit: finishing here, inside
            # whatever the main thread was doing (holding a lock, printing), could deadlock.
            global _signal_exit_code
            _signal_exit_code = 128 + signum
            signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM stops the process at once
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _finish_all(exit_code: int | None) -> None:
    if exit_code is None:  # at exit: a SIGTERM exit is a failure, a normal exit is not
        exit_code = _signal_exit_code or 0
    for run in list(_live_runs):
        try:
            run.finish(exit_code=exit_code)
        except Exception as e:  # exiting: say it, never raise
            print(f"trackside: could not finish run {run.id}: {e}", file=sys.stderr)


def _after_fork_in_child() -> None:
    for run in list(_live_runs):
        run._after_fork()
