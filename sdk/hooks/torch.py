"""``run.watch(model)``: gradient and parameter histograms of a PyTorch model.

A forward pre-hook on each watched model counts its calls; every ``log_freq``-th call (the
first one included) logs ``parameters/<name>`` histograms and arms one-shot hooks on the
parameters that log ``gradients/<name>`` when the backward pass reaches them. Values go into
the run's current step with ``commit=False``: they land in the row of the next ``log()``.
A call that does not log costs one counter increment. Histograms are computed where the
tensor lives (GPU included) and only the counts and edges are copied to the host.
"""

from __future__ import annotations

import torch

from ..contracts.errors import UsageError
from ..data_types.histogram import Histogram

LOG_KINDS = ("gradients", "parameters", "all", None)
NUM_BINS = 64


def histogram(tensor: torch.Tensor, num_bins: int = NUM_BINS):
    """``(counts, edges)`` as lists, equal to ``numpy.histogram(tensor, bins=num_bins)`` for
    the tensor's finite values, computed on the tensor's device with one copy to the host;
    None when it holds no finite value."""
    t = tensor.detach().reshape(-1)
    if not t.is_floating_point() or t.element_size() < 4:
        t = t.float()  # half, bfloat16 and integers bin as float32
    if t.numel() == 0:
        return None
    # no data-dependent shapes or host reads until the end: NaN and infinities are masked, not
    # filtered out, and counted in a bin past the last one that is dropped
    finite = torch.isfinite(t)
    lo = torch.where(finite, t, torch.inf).min()
    hi = torch.where(finite, t, -torch.inf).max()
    any_finite = lo <= hi
    lo = torch.where(any_finite, lo, 0.0)
    hi = torch.where(any_finite, hi, 0.0)
    same = hi == lo  # numpy's rule for one distinct value: the range [v - 0.5, v + 0.5]
    lo = torch.where(same, lo - 0.5, lo)
    hi = torch.where(same, hi + 0.5, hi)
    t = torch.where(finite, t, lo)
    # numpy's arithmetic, step by step, so that counts and edges come out equal to its own
    edges = torch.arange(num_bins + 1, device=t.device, dtype=t.dtype) * ((hi - lo) / num_bins) + lo
    edges[-1] = hi
    idx = ((t - lo) / (hi - lo) * num_bins).long()
    idx[idx == num_bins] = num_bins - 1
    idx -= (t < edges[idx]).long()
    idx += ((t >= edges[idx + 1]) & (idx != num_bins - 1)).long()
    idx = torch.where(finite, idx, num_bins)
    counts = torch.bincount(idx, minlength=num_bins + 1)[:num_bins]
    out = torch.cat([counts.double(), edges.double()]).cpu().tolist()  # the one transfer
    counts = [int(c) for c in out[:num_bins]]
    return (counts, out[num_bins:]) if any(counts) else None


class _Watch:
    """The hooks on one model."""

    def __init__(self, run, model, log, log_freq: int, prefix: str):
        self.run = run
        self.model = model
        self.log_freq = log_freq
        self.prefix = prefix
        self.parameters = log in ("parameters", "all")
        self.gradients = log in ("gradients", "all")
        self.calls = 0
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or self.parameters]
        self.armed: dict = {}  # gradient key -> the handle of its one-shot hook
        self.handle = model.register_forward_pre_hook(self._forward)

    def _forward(self, module, args) -> None:
        calls = self.calls
        self.calls = calls + 1
        if calls % self.log_freq:
            return
        if self.parameters:
            self._log({f"parameters/{self.prefix}{n}": p for n, p in self.named})
        if self.gradients and torch.is_grad_enabled():
            self._disarm()  # hooks of a call whose backward never ran
            for n, p in self.named:
                if p.requires_grad:
                    key = f"gradients/{self.prefix}{n}"
                    self.armed[key] = p.register_hook(self._on_grad(key))

    def _on_grad(self, key: str):
        def hook(grad):
            handle = self.armed.pop(key, None)
            if handle is not None:  # one-shot: only the backward of the logging call
                handle.remove()
                self._log({key: grad})

        return hook

    def _log(self, tensors: dict) -> None:
        data = {}
        for key, t in tensors.items():
            h = histogram(t)
            if h is not None:
                data[key] = Histogram(np_histogram=h)
        if data and self.run._client is not None:
            self.run.log(data, commit=False)

    def _disarm(self) -> None:
        for h in self.armed.values():
            h.remove()
        self.armed.clear()

    def remove(self) -> None:
        self.handle.remove()
        self._disarm()


def watch(
    run,
    models,
    criterion=None,
    log: str | None = "gradients",
    log_freq: int = 1000,
    idx: int | None = None,
    log_graph: bool = False,
) -> list:
    """Hook ``models`` (a ``torch.nn.Module`` or a list of them) into ``run``; see the module's
    docstring. Raises UsageError for an unknown ``log``, a ``log_freq`` below 1, a model that is
    not a Module or one watched already."""
    if log not in LOG_KINDS:
        raise UsageError(f"watch(log={log!r}): use 'gradients', 'parameters', 'all' or None")
    if isinstance(log_freq, bool) or not isinstance(log_freq, int) or log_freq < 1:
        raise UsageError(f"watch(log_freq={log_freq!r}): log every N calls of the model, N an int >= 1")
    if log_graph:
        raise UsageError(
            "watch(log_graph=True) is not supported: trackside records histograms only; pass log_graph=False"
        )
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    watches = run.__dict__.setdefault("_watches", [])
    for i, model in enumerate(models):
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"watch() takes torch.nn.Module objects, not {type(model).__name__}")
        if any(w.model is model for w in watches):
            raise UsageError(f"model {type(model).__name__} is watched already; call run.unwatch(model) first")
    if log is None:
        return []
    added = []
    for i, model in enumerate(models):
        # several models get their own prefix, as W&B names them: graph_<i>
        n = (idx if idx is not None else len(watches)) + i
        prefix = f"graph_{n}/" if len(models) > 1 or watches or idx is not None else ""
        added.append(_Watch(run, model, log, log_freq, prefix))
    watches.extend(added)
    return added


def unwatch(run, models=None) -> None:
    """Remove the hooks of ``models`` (all watched models when None)."""
    watches = run.__dict__.get("_watches", [])
    if models is None:
        chosen = list(watches)
    else:
        models = list(models) if isinstance(models, (list, tuple)) else [models]
        chosen = [w for w in watches if any(w.model is m for m in models)]
    for w in chosen:
        w.remove()
        watches.remove(w)
