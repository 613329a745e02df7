"""trackside: log machine-learning training runs at microsecond cost.

    import trackside
    run = trackside.init(project="mnist", config={"lr": 1e-3})
    for step in range(100):
        run.log({"loss": loss})
    run.finish()

``import trackside`` is light: no grpc, psutil, numpy or CLI libraries until a feature needs
them. The module-level ``log``, ``config``, ``summary``, ``define_metric`` and ``finish`` act on
the run most recently started in this process (``trackside.run``).
"""

import importlib

from .contracts.version import __version__
from ._run import Run, _current, init
from .contracts.errors import Error, TransportError, UsageError

__all__ = [
    "Api",
    "Artifact",
    "Audio",
    "Classes",
    "Error",
    "Histogram",
    "Html",
    "Image",
    "JoinedTable",
    "Molecule",
    "Object3D",
    "Table",
    "Video",
    "plot",
    "Run",
    "TransportError",
    "UsageError",
    "__version__",
    "define_metric",
    "finish",
    "init",
    "log",
    "log_artifact",
    "unwatch",
    "use_artifact",
    "watch",
]


# names imported on first use, so that `import trackside` stays light
_LAZY = {
    "Api": ".api",
    "Table": ".data_types.table",
    "JoinedTable": ".data_types.table",
    "Histogram": ".data_types.histogram",
    "Image": ".data_types.image",
    "Classes": ".data_types.image",
    "Audio": ".data_types.audio",
    "Video": ".data_types.video",
    "Html": ".data_types.html",
    "Object3D": ".data_types.object3d",
    "Molecule": ".data_types.molecule",
    "plot": ".data_types.plots",
    "plots": ".data_types.plots",  # the seeds' older names: plots.ROC, plots.precision_recall, plots.HeatMap
    "sklearn": ".data_types.plots",  # sklearn.plot_confusion_matrix
    "Artifact": ".artifacts",
}


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"run", "config", "summary"})


def _active(what: str):
    run = _current.get("run")
    if run is None:
        raise UsageError(f"trackside.{what}: no run is active; call trackside.init() first")
    return run


def log(data: dict, step: int | None = None, commit: bool | None = None) -> None:
    """``Run.log`` on the active run."""
    _active("log").log(data, step=step, commit=commit)


def define_metric(name: str, step_metric: str | None = None, **kwargs) -> None:
    """``Run.define_metric`` on the active run."""
    _active("define_metric").define_metric(name, step_metric, **kwargs)


def log_artifact(artifact, name: str | None = None, type: str | None = None, aliases=None):
    """``Run.log_artifact`` on the active run."""
    return _active("log_artifact").log_artifact(artifact, name=name, type=type, aliases=aliases)


def use_artifact(artifact_or_name, type: str | None = None):
    """``Run.use_artifact`` on the active run."""
    return _active("use_artifact").use_artifact(artifact_or_name, type=type)


def watch(
    models,
    criterion=None,
    log: str | None = "gradients",
    log_freq: int = 1000,
    idx: int | None = None,
    log_graph: bool = False,
) -> None:
    """``Run.watch`` on the active run."""
    _active("watch").watch(models, criterion, log=log, log_freq=log_freq, idx=idx, log_graph=log_graph)


def unwatch(models=None) -> None:
    """``Run.unwatch`` on the active run."""
    _active("unwatch").unwatch(models)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """Finish the active run, if any."""
    run = _current.get("run")
    if run is not None:
        run.finish(exit_code=exit_code)


def __getattr__(name: str):
    if name in ("run", "config", "summary"):
        run = _current.get("run")
        if name == "run" or run is None:
            return run
        return getattr(run, name)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'trackside' has no attribute {name!r}")
