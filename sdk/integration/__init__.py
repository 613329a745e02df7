"""Integrations with training frameworks and the way in from (and out to) other trackers.

Each module imports its framework when it is imported itself, never from ``import trackside``:

- ``trackside.integration.lightning``: ``TracksideLogger`` for PyTorch Lightning and Fabric
- ``trackside.integration.transformers``: ``TracksideCallback`` for the Hugging Face ``Trainer``
- ``trackside.integration.keras``: ``TracksideCallback`` for Keras 3 ``fit``
- ``trackside.integration.tensorboard``: export to and import from TensorBoard event files
- ``trackside.integration.wandb`` and ``.mlflow``: import W&B offline runs and MLflow runs

``run.watch`` and ``init(sync_tensorboard=True)`` are hooks of the run itself: ``trackside.hooks``.
"""
