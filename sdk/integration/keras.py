"""``TracksideCallback``: log Keras 3 ``fit`` into a trackside run (any backend).

    from trackside.integration.keras import TracksideCallback
    model.fit(x, y, epochs=10, callbacks=[TracksideCallback(project="mnist", log_freq=100)])

The run's step is the number of training batches seen. Every ``log_freq`` batches the batch's
logs go in as ``batch/<name>``; at each epoch's end its logs (validation included) as
``epoch/<name>`` with ``epoch/epoch``. At the start of training the model's summary (text) and
parameter count are put in the run's summary (``model/summary``, ``model/parameters``), and
the optimizer's settings in its config (``optimizer``). The run is finished at the end of
``fit`` when the callback started it.
"""

from __future__ import annotations

import keras

from .._run import UsageError, _current, init
from ._values import config_value


class TracksideCallback(keras.callbacks.Callback):
    """See the module. ``run``: log into this run (it is not finished at the end); otherwise
    ``init_kwargs`` go to ``trackside.init``. ``log_freq``: ``"epoch"`` (default: epoch logs
    only) or N (also every N-th batch)."""

    def __init__(self, run=None, *, log_freq: int | str = "epoch", **init_kwargs):
        super().__init__()
        if log_freq != "epoch" and (isinstance(log_freq, bool) or not isinstance(log_freq, int) or log_freq < 1):
            raise UsageError(f"log_freq={log_freq!r}: use 'epoch' or a number of batches >= 1")
        self.run = run
        self._own = run is None
        self._log_freq = log_freq
        self._init_kwargs = init_kwargs
        self._batches = 0

    def on_train_begin(self, logs=None):
        if self.run is None or self.run.finished:
            self.run = init(**{"project": "keras", **self._init_kwargs})
            self._own = True
        lines: list = []
        self.model.summary(print_fn=lambda line, *a, **kw: lines.append(line))
        self.run.summary.update({"model/summary": "\n".join(lines), "model/parameters": self.model.count_params()})
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            self.run.config["optimizer"] = config_value(optimizer.get_config())

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self._log_freq != "epoch" and self._batches % self._log_freq == 0 and logs:
            self.run.log({f"batch/{k}": _number(v) for k, v in logs.items()}, step=self._batches)

    def on_epoch_end(self, epoch, logs=None):
        values = {f"epoch/{k}": _number(v) for k, v in (logs or {}).items()}
        self.run.log({**values, "epoch/epoch": epoch}, step=self._batches)

    def on_train_end(self, logs=None):
        if self._own and self.run is not None and not self.run.finished:
            self.run.finish()
            if _current.get("run") is self.run:
                _current.pop("run", None)


def _number(v):
    return v.item() if hasattr(v, "item") else v
