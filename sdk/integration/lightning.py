"""``TracksideLogger``: a PyTorch Lightning (and Lightning Fabric) logger.

    from trackside.integration.lightning import TracksideLogger
    trainer = Trainer(logger=TracksideLogger(project="mnist", log_model=True))

Metrics go to the run at Lightning's step (``trainer.global_step``): values logged at one step
(training and validation) share one row. Under DDP only rank zero logs (its ``experiment`` is
the run; other ranks get Lightning's dummy experiment), as with Lightning's own loggers; with
``rank_zero_only=False`` every rank joins the same run as another writer, and their values of
one step merge (``run.define_metric(..., reduce="mean")`` averages them). ``finalize`` finishes
the run; a later ``trainer.test`` resumes it.
"""

from __future__ import annotations

import os
from argparse import Namespace

from lightning.fabric.utilities.rank_zero import rank_zero_only as _rank_zero_fn
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ..contracts import discovery
from .._run import UsageError, init, new_run_id
from ..artifacts import Artifact
from ._values import config_value


class TracksideLogger(Logger):
    """Log a Lightning ``Trainer`` (or ``Fabric``) into a trackside run.

    ``project``, ``name``, ``id``, ``config``, ``tags``, ``dir``, ``settings`` and the other
    keywords go to ``trackside.init``. ``log_model``: False (default), True (the checkpoints
    saved by ``ModelCheckpoint``, as one artifact version each at the end of training) or
    ``"all"`` (each checkpoint as it is saved); the artifact is ``model-<run id>``, its best
    version aliased ``best``. ``prefix`` is put before every metric name (``prefix/loss``).
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        id: str | None = None,
        *,
        log_model: bool | str = False,
        prefix: str = "",
        rank_zero_only: bool = True,
        **init_kwargs,
    ):
        super().__init__()
        if log_model not in (False, True, "all"):
            raise UsageError(f"log_model={log_model!r}: use False, True or 'all'")
        self._project = project
        self._name = name
        self._log_model = log_model
        self._prefix = prefix
        self._all_ranks = not rank_zero_only
        self._init_kwargs = init_kwargs
        self._run = None
        self._started = False
        self._checkpoints: dict = {}  # path -> mtime of the checkpoints logged already
        self._checkpoint_callback = None
        # the id exists before Trainer.fit starts the other ranks, which inherit it
        if id is None and os.environ.get(discovery.ENV_RUN_ID) and _rank() != 0:
            id = os.environ[discovery.ENV_RUN_ID]
        self._id = id or new_run_id()
        if self._all_ranks and _rank() == 0:
            os.environ[discovery.ENV_RUN_ID] = self._id

    # -- the Logger interface -------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self._project

    @property
    def version(self) -> str:
        return self._id

    @property
    def save_dir(self) -> str | None:
        return self._run.dir if self._run is not None else None

    @property
    def experiment(self):
        """The trackside ``Run`` (on rank zero; on every rank with ``rank_zero_only=False``)."""
        if self._all_ranks:
            return self._experiment()
        return self._rank_zero_experiment

    @property
    @rank_zero_experiment
    def _rank_zero_experiment(self):
        return self._experiment()

    def _experiment(self):
        if self._run is None or self._run.finished:
            if _rank() != 0 and self._all_ranks:
                if os.environ.get(discovery.ENV_RUN_ID) != self._id:
                    raise UsageError(
                        "TracksideLogger(rank_zero_only=False): this rank cannot find the run of rank "
                        "zero; pass the same id= on every rank"
                    )
                self._run = init(**self._init_kwargs)  # joins the run as another writer
            else:
                self._run = init(
                    project=self._project,
                    name=self._name,
                    id=self._id,
                    resume="allow" if self._started else self._init_kwargs.pop("resume", None),
                    **self._init_kwargs,
                )
            self._started = True
        return self._run

    def _rank_ok(self) -> bool:
        return self._all_ranks or _rank() == 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        if not self._rank_ok():
            return
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self.experiment.config.update({str(k): config_value(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if not self._rank_ok():
            return
        values = {f"{self._prefix}/{k}" if self._prefix else k: _scalar(v) for k, v in metrics.items()}
        self.experiment.log(values, step=step)

    def log_graph(self, model, input_array=None) -> None:
        pass  # trackside records no graphs

    def save(self) -> None:
        pass  # every value is on its way to the daemon as soon as it is logged

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if not self._log_model or not self._rank_ok() or self._run is None:
            return
        self._checkpoint_callback = checkpoint_callback
        if self._log_model == "all":
            self._log_checkpoints(checkpoint_callback)

    def finalize(self, status: str) -> None:
        if not self._rank_ok() or self._run is None or self._run.finished:
            return
        if self._log_model is True and self._checkpoint_callback is not None and status == "success":
            self._log_checkpoints(self._checkpoint_callback)
        self._run.finish(exit_code=0 if status in ("success", "finished") else 1)

    def _log_checkpoints(self, callback) -> None:
        best = getattr(callback, "best_model_path", "") or ""
        paths = {*getattr(callback, "best_k_models", {}), getattr(callback, "last_model_path", "") or "", best}
        for path in sorted(p for p in paths if p and os.path.isfile(p)):
            stamp = os.path.getmtime(path)
            if self._checkpoints.get(path) == stamp:
                continue
            self._checkpoints[path] = stamp
            art = Artifact(
                f"model-{self._id}",
                type="model",
                metadata={
                    "path": path,
                    "score": config_value(_score(callback, path)),
                    "monitor": getattr(callback, "monitor", None),
                },
            )
            art.add_file(path, name=os.path.basename(path))
            self._run.log_artifact(art, aliases=["latest", "best"] if path == best else ["latest"])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_run"] = None  # ddp_spawn pickles the trainer: the run stays in its process
        return state


def _score(callback, path):
    score = getattr(callback, "best_k_models", {}).get(path)
    return score.item() if hasattr(score, "item") else score


def _rank() -> int:
    return int(getattr(_rank_zero_fn, "rank", None) or getattr(rank_zero_only, "rank", 0) or 0)


def _scalar(v):
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else v
