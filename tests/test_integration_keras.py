"""The Keras 3 callback with a real ``fit`` (torch backend) on a tiny model: one run whose
history equals the batch and epoch logs Keras handed to the callback, and the model summary."""

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("torch")
keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")

import trackside
from trackside.integration.keras import TracksideCallback


class Recording(keras.callbacks.Callback):
    """Keeps what Keras hands to callbacks, to compare with the run."""

    def __init__(self):
        super().__init__()
        self.batches, self.epochs = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(dict(logs))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((len(self.batches), epoch, dict(logs)))


def test_fit_logs_batches_and_epochs_equal_to_what_keras_handed_over(ts):
    assert keras.backend.backend() == "torch"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse", metrics=["mae"])
    x, y = np.random.default_rng(0).normal(size=(32, 4)), np.random.default_rng(1).normal(size=(32, 1))
    recording = Recording()
    callback = TracksideCallback(project="k", log_freq=2)
    model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=0, callbacks=[recording, callback])
    assert callback.run.finished

    want = {}
    for i, logs in enumerate(recording.batches, 1):
        if i % 2 == 0:
            want.setdefault(i, {}).update({f"batch/{k}": float(v) for k, v in logs.items()})
    for step, epoch, logs in recording.epochs:
        want.setdefault(step, {}).update({f"epoch/{k}": float(v) for k, v in logs.items()}, **{"epoch/epoch": epoch})
    r = trackside.Api(ts.root).run(callback.run.id)
    rows = {row["_step"]: {k: v for k, v in row.items() if not k.startswith("_")} for row in r.history()}
    assert rows == want
    assert sorted(rows) == [2, 3, 4, 6] and "epoch/val_loss" in rows[6]
    assert r.summary["model/parameters"] == 4 * 8 + 8 + 8 + 1
    assert "dense" in r.summary["model/summary"].lower()
    assert r.config["optimizer"]["learning_rate"] == pytest.approx(0.01)


def test_log_freq_must_be_epoch_or_a_positive_int():
    with pytest.raises(trackside.UsageError, match="log_freq=0"):
        TracksideCallback(log_freq=0)
