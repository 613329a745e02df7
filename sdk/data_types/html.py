"""``Html``: an HTML page (a string or a file) stored as one ``.html`` file."""

from __future__ import annotations

import os

from ._media import Media, read_input

# the default styles a page gets with inject=True: readable type and tables, nothing fetched
DEFAULT_STYLE = (
    '<style data-trackside="default">'
    "body{font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Helvetica,Arial,sans-serif;"
    "font-size:14px;line-height:1.5;color:#1a1a1a;margin:8px}"
    "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 8px}"
    "</style>"
)


class Html(Media):
    """An HTML page: a string of HTML, an open file, or a path to a ``.html``/``.htm`` file.

    ``inject=True`` (default) adds trackside's default styles at the start of the page's
    ``<head>`` (or before the content when it has none); ``inject=False`` stores the page as
    given. A string ending in ``.html``/``.htm`` with no ``<`` is taken as a path (missing:
    FileNotFoundError); ``data_is_not_path=True`` always takes a string as HTML.
    """

    _type = "html-file"

    def __init__(self, data, inject: bool = True, data_is_not_path: bool = False):
        if isinstance(data, Html):
            text = data.html
        elif isinstance(data, str) and (
            data_is_not_path or "<" in data or not data.lower().rstrip().endswith((".html", ".htm"))
        ):
            text = data
        elif isinstance(data, (str, os.PathLike)) or hasattr(data, "read"):
            raw, _ = read_input(data, "Html")
            text = raw.decode("utf-8", errors="replace")
        else:
            raise TypeError(f"Html takes a string of HTML, an open file or a path, not {type(data).__name__}")
        if inject and DEFAULT_STYLE not in text:
            text = _inject(text)
        self.html: str = text
        self.caption = None
        self._data = text.encode("utf-8")
        self._ext = "html"

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "Html":
        self = cls._blank(obj, source)
        self.html = self._data.decode("utf-8")
        return self

    def __repr__(self) -> str:
        return f"<Html {len(self._data)} bytes sha256={self.sha256[:12]}>"


def _inject(text: str) -> str:
    low = text.lower()
    head = low.find("<head")
    if head >= 0:
        end = low.find(">", head)
        if end >= 0:
            return text[: end + 1] + DEFAULT_STYLE + text[end + 1 :]
    return DEFAULT_STYLE + text
