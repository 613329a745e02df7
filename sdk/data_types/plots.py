"""Plots: matplotlib figures (stored as images), plotly figures (stored as JSON) and charts
computed here (ROC, precision-recall, confusion matrix, heatmap, line, scatter, bar).

    wandb.log({"chart": plt})                                   # the current pyplot figure
    wandb.log({"roc": wandb.plot.roc_curve(y_true, y_probas, labels)})
    wandb.log({"roc": wandb.plots.ROC(y_true, y_probas, labels)})  # the older names
    wandb.sklearn.plot_confusion_matrix(y_true, y_pred, labels)   # logs "confusion_matrix"

A ``Chart`` stores its points as a JSON file (``columns`` and ``data`` rows) and its kind,
title and options inline::

    {"_type": "chart", "kind": "roc", "title": "ROC", "path": ..., "sha256": ..., "size": ...,
     "format": "json", "fields": {"x": "fpr", "y": "tpr", "stroke": "class"}}
"""

from __future__ import annotations

import json

import trackside

from ._media import Media, numpy
from .base import need
from .image import Image
from .figures import figure_png, is_matplotlib, is_plotly  # noqa: F401  (trackside.data_types.plots.figure_png ...)

# at most this many points per class in a ROC or PR curve (evenly spaced; the ends are kept)
CURVE_POINTS = 1000


# -- figures -------------------------------------------------------------------------------------


def as_data_type(obj):
    """The data type a figure is logged as (Image for matplotlib, Plotly for plotly), or None."""
    if is_matplotlib(obj):
        return Image(obj)
    if is_plotly(obj):
        return Plotly(obj)
    return None


class Plotly(Media):
    """A plotly figure, stored as its JSON. ``figure`` rebuilds it (needs plotly); ``spec`` is
    the JSON as a dict."""

    _type = "plotly-file"

    def __init__(self, figure, caption: str | None = None):
        if isinstance(figure, Plotly):
            self._data = figure._data
        elif is_plotly(figure):
            self._data = figure.to_json().encode()
        elif isinstance(figure, dict):
            self._data = json.dumps(figure, separators=(",", ":")).encode()
        else:
            raise TypeError(f"Plotly takes a plotly figure or its dict, not {type(figure).__name__}")
        self._ext = "json"
        self.caption = caption

    @property
    def spec(self) -> dict:
        return json.loads(self._data)

    @property
    def figure(self):
        return need("plotly.io", "media").from_json(self._data.decode())

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "Plotly":
        return cls._blank(obj, source)


# -- computed charts ---------------------------------------------------------------------------


class Chart(Media):
    """A chart computed from data: ``kind`` ("roc", "pr", "confusion_matrix", "heatmap",
    "line", "scatter", "bar", "histogram", "line_series"), ``title``, ``columns`` and ``data``
    (rows), and ``fields`` (which columns the axes show, options). Equal when all of those are."""

    _type = "chart"

    def __init__(self, kind: str, columns, data, title: str | None = None, fields: dict | None = None):
        self.kind = kind
        self.title = title
        self.columns = [str(c) for c in columns]
        self.data = [[_plain(v) for v in row] for row in data]
        for i, row in enumerate(self.data):
            if len(row) != len(self.columns):
                raise ValueError(f"chart row {i} has {len(row)} values for {len(self.columns)} columns")
        self.fields = dict(fields or {})
        self.caption = None
        self._data = json.dumps(
            {"columns": self.columns, "data": self.data}, separators=(",", ":"), allow_nan=True
        ).encode()
        self._ext = "json"

    def _fields(self) -> dict:
        out = {"kind": self.kind, "fields": self.fields}
        if self.title is not None:
            out["title"] = self.title
        return out

    def _eq_key(self) -> tuple:
        return (self.kind, self.title, self.columns, self.data, self.fields)

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "Chart":
        raw = cls._blank(obj, source)
        body = json.loads(raw._data)
        return cls(obj["kind"], body["columns"], body["data"], obj.get("title"), obj.get("fields"))

    def __repr__(self) -> str:
        return f"<Chart {self.kind} {self.title!r} {len(self.data)} rows>"


def _plain(v):
    if hasattr(v, "item") and getattr(v, "shape", None) == ():
        return v.item()
    return v


def _labels_for(y_true, n_classes: int, labels):
    """Class names, and y_true as class indices (it may hold indices or the names)."""
    np = numpy()
    y = np.asarray(y_true)
    if labels is None:
        labels = [str(i) for i in range(n_classes)]
    labels = [str(x) for x in labels]
    if len(labels) != n_classes:
        raise ValueError(f"{len(labels)} labels for {n_classes} classes; give one label per class")
    if y.dtype.kind in "US" or y.dtype == object:
        index = {name: i for i, name in enumerate(labels)}
        try:
            y = np.array([index[str(v)] for v in y.ravel()])
        except KeyError as e:
            raise ValueError(f"y_true holds {e.args[0]!r}, which is not one of the labels {labels}") from None
    else:
        y = y.ravel().astype(int)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"y_true holds class {int(y.max()) if y.max() >= n_classes else int(y.min())}, outside 0..{n_classes - 1}"
        )
    return y, labels


def _probas(y_probas, n: int):
    np = numpy()
    p = np.asarray(y_probas, dtype=float)
    if p.ndim == 1:  # binary: the probability of class 1
        p = np.column_stack([1 - p, p])
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"y_probas must be n_samples x n_classes ({n} samples), not of shape {p.shape}")
    return p


def _thin(n: int):
    np = numpy()
    if n <= CURVE_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, CURVE_POINTS).round().astype(int))


def _curve(y_bin, score):
    """True and false positives at each distinct threshold, highest first, from (0, 0)."""
    np = numpy()
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], y_bin[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0, tps].astype(float), np.r_[0, fps].astype(float)


def roc_curve(y_true, y_probas, labels=None, classes_to_plot=None, title: str = "ROC") -> Chart:
    """One-vs-rest ROC curves: a row (class, fpr, tpr) per threshold of each class."""
    np = numpy()
    y_true = np.asarray(y_true)
    p = _probas(y_probas, y_true.size)
    y, labels = _labels_for(y_true, p.shape[1], labels)
    rows = []
    for i in _which(classes_to_plot, labels):
        tps, fps = _curve((y == i).astype(int), p[:, i])
        tpr = tps / tps[-1] if tps[-1] else np.zeros_like(tps)
        fpr = fps / fps[-1] if fps[-1] else np.zeros_like(fps)
        rows += [[labels[i], float(fpr[j]), float(tpr[j])] for j in _thin(tps.size)]
    return Chart("roc", ["class", "fpr", "tpr"], rows, title, {"x": "fpr", "y": "tpr", "stroke": "class"})


def pr_curve(y_true, y_probas, labels=None, classes_to_plot=None, title: str = "Precision v. Recall") -> Chart:
    """One-vs-rest precision-recall curves: a row (class, recall, precision) per threshold."""
    np = numpy()
    y_true = np.asarray(y_true)
    p = _probas(y_probas, y_true.size)
    y, labels = _labels_for(y_true, p.shape[1], labels)
    rows = []
    for i in _which(classes_to_plot, labels):
        tps, fps = _curve((y == i).astype(int), p[:, i])
        recall = tps / tps[-1] if tps[-1] else np.zeros_like(tps)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tps + fps > 0, tps / np.maximum(tps + fps, 1), 1.0)
        rows += [[labels[i], float(recall[j]), float(precision[j])] for j in _thin(tps.size)]
    return Chart(
        "pr", ["class", "recall", "precision"], rows, title, {"x": "recall", "y": "precision", "stroke": "class"}
    )


def _which(classes_to_plot, labels) -> list:
    if classes_to_plot is None:
        return list(range(len(labels)))
    out = []
    for c in classes_to_plot:
        if isinstance(c, str):
            if c not in labels:
                raise ValueError(f"classes_to_plot: {c!r} is not one of the labels {labels}")
            out.append(labels.index(c))
        else:
            out.append(int(c))
    return out


def confusion_matrix(probs=None, y_true=None, preds=None, class_names=None, title: str = "Confusion Matrix") -> Chart:
    """Counts of (actual, predicted) pairs, one row per pair of classes. ``preds`` are class
    indices (or names); ``probs`` (n x classes) are turned into predictions by argmax."""
    np = numpy()
    if y_true is None:
        raise ValueError("confusion_matrix needs y_true")
    if (probs is None) == (preds is None):
        raise ValueError("confusion_matrix needs exactly one of probs= or preds=")
    y_arr = np.asarray(y_true)
    if probs is not None:
        p = _probas(probs, y_arr.size)
        n_classes, pred = p.shape[1], p.argmax(axis=1)
    else:
        pred_arr = np.asarray(preds)
        if pred_arr.ndim == 2:  # predicted probabilities after all
            return confusion_matrix(probs=pred_arr, y_true=y_true, class_names=class_names, title=title)
        if pred_arr.size != y_arr.size:
            raise ValueError(f"y_true has {y_arr.size} values but preds has {pred_arr.size}")
        if class_names is not None:
            n_classes = len(class_names)
        else:
            ints = [a for a in (y_arr, pred_arr) if a.dtype.kind in "iub"]
            if len(ints) != 2:
                raise ValueError("confusion_matrix needs class_names when y_true or preds hold names")
            n_classes = int(max(y_arr.max(initial=0), pred_arr.max(initial=0))) + 1
        pred, _ = _labels_for(pred_arr, n_classes, class_names)
    y, names = _labels_for(y_arr, n_classes, class_names)
    counts = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(counts, (y, pred), 1)
    rows = [[names[a], names[b], int(counts[a, b])] for a in range(n_classes) for b in range(n_classes)]
    return Chart(
        "confusion_matrix",
        ["Actual", "Predicted", "nPredictions"],
        rows,
        title,
        {"x": "Predicted", "y": "Actual", "value": "nPredictions"},
    )


def heatmap(x_labels, y_labels, matrix_values, show_text: bool = False, title: str | None = None) -> Chart:
    """A heatmap: ``matrix_values`` of shape len(x_labels) x len(y_labels); a row (x, y,
    value) per cell."""
    np = numpy()
    m = np.asarray(matrix_values, dtype=float)
    x_labels, y_labels = [str(x) for x in x_labels], [str(y) for y in y_labels]
    if m.shape != (len(x_labels), len(y_labels)):
        raise ValueError(
            f"matrix_values has shape {m.shape}, not len(x_labels) x len(y_labels) = {(len(x_labels), len(y_labels))}"
        )
    rows = [[x, y, float(m[i, j])] for i, x in enumerate(x_labels) for j, y in enumerate(y_labels)]
    return Chart(
        "heatmap",
        ["x", "y", "value"],
        rows,
        title,
        {"x": "x", "y": "y", "value": "value", "show_text": bool(show_text)},
    )


def _table_columns(table, names, kind: str):
    columns = list(getattr(table, "columns", None) or ())
    data = getattr(table, "data", None)
    if data is None:
        raise TypeError(f"plot.{kind} takes a Table (or anything with .columns and .data), not {type(table).__name__}")
    idx = []
    for n in names:
        if n not in columns:
            raise ValueError(f"plot.{kind}: the table has no column {n!r} (columns: {columns})")
        idx.append(columns.index(n))
    return [[row[i] for i in idx] for row in data]


def line(table, x: str, y: str, stroke: str | None = None, title: str | None = None) -> Chart:
    names = [x, y] + ([stroke] if stroke else [])
    return Chart("line", names, _table_columns(table, names, "line"), title, {"x": x, "y": y, "stroke": stroke})


def scatter(table, x: str, y: str, title: str | None = None) -> Chart:
    return Chart("scatter", [x, y], _table_columns(table, [x, y], "scatter"), title, {"x": x, "y": y})


def bar(table, label: str, value: str, title: str | None = None) -> Chart:
    return Chart(
        "bar", [label, value], _table_columns(table, [label, value], "bar"), title, {"label": label, "value": value}
    )


def histogram(table, value: str, title: str | None = None) -> Chart:
    return Chart("histogram", [value], _table_columns(table, [value], "histogram"), title, {"value": value})


def line_series(xs, ys, keys=None, title: str | None = None, xname: str = "x") -> Chart:
    """Several lines over one x axis (``xs`` one list, or one per line)."""
    ys = [list(y) for y in ys]
    if xs and not hasattr(list(xs)[0], "__len__"):
        xs = [list(xs)] * len(ys)
    xs = [list(x) for x in xs]
    if len(xs) != len(ys):
        raise ValueError(f"line_series: {len(xs)} x lists for {len(ys)} lines")
    keys = list(keys) if keys is not None else [f"key_{i}" for i in range(len(ys))]
    if len(keys) != len(ys):
        raise ValueError(f"line_series: {len(keys)} keys for {len(ys)} lines")
    rows = []
    for key, x, y in zip(keys, xs, ys):
        if len(x) != len(y):
            raise ValueError(f"line_series: line {key!r} has {len(x)} x values and {len(y)} y values")
        rows += [[str(key), a, b] for a, b in zip(x, y)]
    return Chart(
        "line_series", ["lineKey", xname, "lineVal"], rows, title, {"x": xname, "y": "lineVal", "stroke": "lineKey"}
    )


class _Namespace:
    """A module-like bundle of chart helpers (``wandb.plot.*`` / ``wandb.plots.*``)."""

    def __init__(self, name: str, **funcs):
        self.__name__ = name
        self.__dict__.update(funcs)

    def __repr__(self) -> str:
        return f"<trackside.{self.__name__}: {', '.join(k for k in self.__dict__ if not k.startswith('_'))}>"


def _roc_legacy(y_true, y_probas, labels=None, **kw) -> Chart:
    return roc_curve(y_true, y_probas, labels, **kw)


def _pr_legacy(y_true, y_probas, labels=None, **kw) -> Chart:
    return pr_curve(y_true, y_probas, labels, **kw)


def _heatmap_legacy(x_labels, y_labels, matrix_values, show_text: bool = False) -> Chart:
    return heatmap(x_labels, y_labels, matrix_values, show_text)


def _cm_legacy(y_true, y_pred, labels=None) -> Chart:
    return confusion_matrix(y_true=y_true, preds=y_pred, class_names=labels)


def plot_confusion_matrix(y_true, y_pred, labels=None, normalize: bool = False) -> Chart:
    """Compute the confusion matrix and log it to the active run as ``"confusion_matrix"``."""
    chart = _cm_legacy(y_true, y_pred, labels)
    if normalize:
        totals: dict = {}
        for actual, _, n in chart.data:
            totals[actual] = totals.get(actual, 0) + n
        chart = Chart(
            chart.kind,
            chart.columns,
            [[a, p, n / totals[a] if totals[a] else 0.0] for a, p, n in chart.data],
            chart.title,
            chart.fields,
        )
    trackside.log({"confusion_matrix": chart})
    return chart


plot = _Namespace(
    "plot",
    roc_curve=roc_curve,
    pr_curve=pr_curve,
    confusion_matrix=confusion_matrix,
    heatmap=heatmap,
    line=line,
    scatter=scatter,
    bar=bar,
    histogram=histogram,
    line_series=line_series,
    Chart=Chart,
    Plotly=Plotly,
)
plots = _Namespace(
    "plots", ROC=_roc_legacy, precision_recall=_pr_legacy, HeatMap=_heatmap_legacy, confusion_matrix=_cm_legacy
)
sklearn = _Namespace("sklearn", plot_confusion_matrix=plot_confusion_matrix)
