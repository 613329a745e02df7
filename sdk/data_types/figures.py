"""Recognizing figures (matplotlib, plotly) without importing either library, and rendering a
matplotlib figure to PNG: what ``Image`` and the plots share."""

from __future__ import annotations

import io
import sys


def _is_pyplot(obj) -> bool:
    return obj is not None and obj is sys.modules.get("matplotlib.pyplot")


def is_matplotlib(obj) -> bool:
    """A matplotlib figure, or the pyplot module itself (its current figure)."""
    if _is_pyplot(obj):
        return True
    mod = sys.modules.get("matplotlib.figure")
    return mod is not None and isinstance(obj, mod.Figure)


def is_plotly(obj) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("plotly.") and hasattr(obj, "to_plotly_json")


def figure_png(obj) -> bytes | None:
    """PNG bytes of a matplotlib figure (or of pyplot's current figure); None for anything else."""
    if not is_matplotlib(obj):
        return None
    fig = obj.gcf() if _is_pyplot(obj) else obj
    buf = io.BytesIO()
    # no creation time or version in the file: the same figure renders to the same bytes
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
