"""Hooks a run installs into a framework while it lives: ``run.watch(model)`` (``torch``: gradient
and parameter histograms from PyTorch hooks) and ``init(sync_tensorboard=True)``
(``tensorboard``: what a ``SummaryWriter`` writes is logged too). They sit below the run
(``Run`` calls them) and import none of the SDK above them; each loads its framework only when
a run asks for it."""
