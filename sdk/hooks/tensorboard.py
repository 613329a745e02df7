"""TensorBoard summaries as trackside values, and the live capture of ``SummaryWriter`` writes
(``trackside.init(sync_tensorboard=True)``): a hook of the run, below the importers and
exporters of ``trackside.integration.tensorboard``, which read event files with the same
``Reader``. Needs the ``tensorboard`` package (``pip install 'trackside[tensorboard]'``).
"""

from __future__ import annotations

import importlib
import io
from collections import defaultdict

from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from ..data_types.histogram import MAX_BINS, Histogram
from ..data_types.image import Image


# -- events to values ----------------------------------------------------------------------------


class Reader:
    """Turns the summaries of one writer's events into trackside values, tag by tag; remembers
    which plugin each tag belongs to (TF2 writers name it on the tag's first value only)."""

    def __init__(self):
        self.plugins: dict[str, str] = {}
        self.skipped: dict[str, int] = defaultdict(int)

    def values(self, event) -> dict:
        out = {}
        for v in event.summary.value:
            plugin = v.metadata.plugin_data.plugin_name
            if plugin:
                self.plugins[v.tag] = plugin
            value = self._value(v, self.plugins.get(v.tag, ""))
            if value is None:
                self.skipped[self.plugins.get(v.tag) or v.WhichOneof("value") or "empty"] += 1
            else:
                out[v.tag] = value
        return out

    @staticmethod
    def _value(v, plugin: str):
        kind = v.WhichOneof("value")
        if kind == "simple_value":
            return float(v.simple_value)
        if kind == "histo":
            h = v.histo
            # bucket i holds the values in (limit[i-1], limit[i]]; the first one starts at min
            return to_histogram(
                [min(h.min, h.bucket_limit[0]) if h.bucket_limit else h.min, *h.bucket_limit], list(h.bucket), h.max
            )
        if kind == "image":
            return to_image(v.image.encoded_image_string)
        if kind == "tensor":
            if plugin == "scalars":
                return float(tensor_util.make_ndarray(v.tensor).item())
            if plugin == "histograms":
                arr = tensor_util.make_ndarray(v.tensor)  # k x 3: left edge, right edge, count
                if arr.ndim != 2 or arr.shape[0] == 0:
                    return None
                return to_histogram([*arr[:, 0].tolist(), float(arr[-1, 1])], arr[:, 2].tolist(), None)
            if plugin == "images":
                images = list(v.tensor.string_val)[2:]  # width, height, then the encoded images
                return to_image(images[0]) if images else None
        return None


def to_histogram(edges: list, counts: list, hi):
    """A trackside Histogram of TensorBoard buckets: empty buckets at both ends dropped (writers
    pad with them), the last edge clamped to the maximum (TensorFlow's last limit is DBL_MAX)."""
    counts = [round(c) for c in counts]
    nz = [i for i, c in enumerate(counts) if c]
    if not nz:
        return None
    first, last = nz[0], nz[-1]
    counts, edges = counts[first : last + 1], [float(e) for e in edges[first : last + 2]]
    if hi is not None and edges[-1] > hi >= edges[-2]:
        edges[-1] = float(hi)
    while len(counts) > MAX_BINS:  # trackside keeps at most 512 bins: merge neighbours
        counts = [sum(counts[i : i + 2]) for i in range(0, len(counts), 2)]
        edges = edges[::2] if len(edges) % 2 else [*edges[:-1:2], edges[-1]]
    return Histogram(np_histogram=(counts, edges))


def to_image(data: bytes):
    return Image(io.BytesIO(bytes(data)))


# -- import ----------------------------------------------------------------------------------------


# -- init(sync_tensorboard=True) -----------------------------------------------------------------

_WRITERS = (
    ("tensorboard.summary.writer.event_file_writer", "EventFileWriter"),  # torch.utils.tensorboard
    ("tensorboardX.event_file_writer", "EventFileWriter"),
)
_originals: dict = {}  # patched class -> its own add_event
_syncing: list = []  # runs receiving what SummaryWriters write


def sync(run) -> None:
    """Also log into ``run`` what any ``SummaryWriter`` (PyTorch's or tensorboardX's) writes
    from now until the run finishes, at the writer's step; the event files are written as
    before."""
    if not _originals:
        for module, name in _WRITERS:
            try:
                cls = getattr(importlib.import_module(module), name)
            except ImportError:
                continue
            _originals[cls] = cls.add_event
            cls.add_event = _capturing(cls.add_event)
    _syncing.append(run)
    run.__dict__.setdefault("_on_finish", []).append(lambda: _stop(run))


def _capturing(add_event):
    readers: dict = {}

    def capture(self, event):
        add_event(self, event)
        if not _syncing or not event.HasField("summary"):
            return
        if not isinstance(event, event_pb2.Event):  # tensorboardX's own copy of the proto
            event = event_pb2.Event.FromString(event.SerializeToString())
        values = readers.setdefault(id(self), Reader()).values(event)
        if values:
            for run in _syncing:
                run.log(values, step=int(event.step))

    return capture


def _stop(run) -> None:
    if run in _syncing:
        _syncing.remove(run)
    if not _syncing:
        for cls, add_event in _originals.items():
            cls.add_event = add_event
        _originals.clear()
