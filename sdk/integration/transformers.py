"""``TracksideCallback``: log a Hugging Face ``Trainer`` into a trackside run.

    from trackside.integration.transformers import TracksideCallback
    args = TrainingArguments(..., report_to="none")     # no other tracker
    Trainer(model, args, ..., callbacks=[TracksideCallback(project="glue")]).train()

Only the world's process zero logs. At ``on_train_begin`` the run's config is the model's
config with the ``TrainingArguments`` over it; ``on_log`` and ``on_evaluate`` log the Trainer's
numbers at ``state.global_step`` with W&B's names (``eval_loss`` -> ``eval/loss``, ``test_...``
-> ``test/...``, the rest under ``train/``); ``on_train_end`` finishes the run it started.
"""

from __future__ import annotations

import os

from transformers import TrainerCallback

from .._run import UsageError, _current, init
from ..artifacts import Artifact
from ._values import config_value

_PREFIXES = (("eval_", "eval/"), ("test_", "test/"))


def rewrite(logs: dict) -> dict:
    """The Trainer's log keys as W&B names them; numbers only (text and lists are skipped)."""
    out = {}
    for k, v in logs.items():
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        for prefix, group in _PREFIXES:
            if k.startswith(prefix):
                out[group + k[len(prefix) :]] = v
                break
        else:
            out["train/" + k] = v
    return out


class TracksideCallback(TrainerCallback):
    """See the module. ``run``: log into this run instead of starting one (it is not finished
    at the end); otherwise ``init_kwargs`` go to ``trackside.init``. ``log_checkpoints``:
    False (default), ``"all"`` (each checkpoint the Trainer saves, as a version of the artifact
    ``checkpoint-<run id>``) or ``"end"`` (the last one, at the end of training)."""

    def __init__(self, run=None, *, log_checkpoints: bool | str = False, **init_kwargs):
        if log_checkpoints not in (False, "all", "end"):
            raise UsageError(f"log_checkpoints={log_checkpoints!r}: use False, 'all' or 'end'")
        self.run = run
        self._own = run is None
        self._log_checkpoints = log_checkpoints
        self._init_kwargs = init_kwargs
        self._last_checkpoint = None

    def _config(self, args, model) -> dict:
        config = {}
        model_config = getattr(model, "config", None)
        if model_config is not None and hasattr(model_config, "to_dict"):
            config.update(model_config.to_dict())
        config.update(args.to_dict())
        return {k: config_value(v) for k, v in config.items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.run is None or self.run.finished:
            self.run = init(
                **{
                    "project": os.environ.get("TRACKSIDE_PROJECT") or "huggingface",
                    "name": args.run_name if args.run_name != args.output_dir else None,
                    **self._init_kwargs,
                }
            )
            self._own = True
        self.run.config.update(self._config(args, model))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._log(state, logs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._log(state, metrics)  # the same numbers on_log gets from evaluate(): one row, no change

    def _log(self, state, logs) -> None:
        if not state.is_world_process_zero or self.run is None or self.run.finished or not logs:
            return
        values = rewrite(logs)
        if values:
            self.run.log(values, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.run is None or not self._log_checkpoints:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            self._last_checkpoint = (folder, state.global_step)
            if self._log_checkpoints == "all":
                self._log_checkpoint(folder, state.global_step)

    def _log_checkpoint(self, folder: str, step: int) -> None:
        art = Artifact(f"checkpoint-{self.run.id}", type="model", metadata={"global_step": step})
        art.add_dir(folder)
        self.run.log_artifact(art, aliases=["latest", f"step-{step}"])

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.run is None or self.run.finished:
            return
        if self._log_checkpoints == "end" and self._last_checkpoint is not None:
            self._log_checkpoint(*self._last_checkpoint)
        if self._own:
            self.run.finish()
            if _current.get("run") is self.run:
                _current.pop("run", None)
