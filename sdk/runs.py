"""``Runs``: what ``Api.runs`` returns, a list of runs read a page at a time.

    runs = api.runs("mnist", filters={"config.lr": {"$gt": 0.01}}, order="-summary.acc", per_page=100)
    len(runs)        # one COUNT query
    runs[0]          # the page holding it (100 runs), kept
    runs[100:200]    # one query for exactly those runs
    for run in runs: # a page at a time

Pages are read when first needed and kept; ``len`` is counted once. Runs stored between two
pages' reads shift the later pages (as with any paged listing): make a new ``Runs`` for a fresh
view. A ``Runs`` equals a list (or another ``Runs``) of the same runs in the same order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Callable, Iterator, Optional, Union, overload

from trackside.store.edits import to_json

__all__ = ["RunEdits", "RunSummary", "Runs"]


class Runs(Sequence):
    """A lazily paged, read-only list of runs (``RunView`` or ``RemoteRunView``).

    ``fetch(offset, limit)`` returns the runs at ``offset`` (at most ``limit``); ``count()``
    how many there are; ``per_page`` how many a page holds."""

    def __init__(self, fetch: Callable[[int, int], list], count: Callable[[], int], per_page: int = 50):
        if not isinstance(per_page, int) or isinstance(per_page, bool) or per_page < 1:
            raise ValueError(f"per_page must be a positive int, not {per_page!r}")
        self._fetch = fetch
        self._count = count
        self.per_page = per_page
        self._pages: dict[int, list] = {}
        self._length: Optional[int] = None

    def _page(self, n: int) -> list:
        page = self._pages.get(n)
        if page is None:
            page = self._pages[n] = list(self._fetch(n * self.per_page, self.per_page))
            if len(page) < self.per_page and self._length is None:
                self._length = n * self.per_page + len(page)  # the end, seen without a COUNT
        return page

    def __len__(self) -> int:
        if self._length is None:
            self._length = int(self._count())
        return self._length

    def __iter__(self) -> Iterator:
        n = 0
        while True:
            page = self._page(n)
            yield from page
            if len(page) < self.per_page:
                return
            n += 1

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list: ...

    def __getitem__(self, index: Union[int, slice]):
        if isinstance(index, slice):
            start, stop, step = index.start, index.stop, index.step
            if (start is None or start >= 0) and stop is not None and stop >= 0 and step in (None, 1):
                start = start or 0
                if stop <= start:
                    return []
                first, last = start // self.per_page, (stop - 1) // self.per_page
                if all(p in self._pages for p in range(first, last + 1)):
                    return [r for p in range(first, last + 1) for r in self._pages[p]][
                        start - first * self.per_page : stop - first * self.per_page
                    ]
                return list(self._fetch(start, stop - start))  # one query for exactly that range
            return [self[i] for i in range(*index.indices(len(self)))]
        if not isinstance(index, int):
            raise TypeError(f"Runs indices are ints or slices, not {type(index).__name__}")
        if index < 0:
            index += len(self)
            if index < 0:
                raise IndexError("Runs index out of range")
        page = self._page(index // self.per_page)
        i = index % self.per_page
        if i >= len(page):
            raise IndexError("Runs index out of range")
        return page[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Runs, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which do not hash

    def __bool__(self) -> bool:
        return bool(self._page(0))

    def __repr__(self) -> str:
        known = f"{self._length} runs" if self._length is not None else f"{self.per_page} runs a page"
        return f"<Runs ({known})>"


# -- edits after the run ---------------------------------------------------------------------------

_MISSING = object()


class RunSummary(dict):
    """A run's summary read back, whose changes are stored at once: ``summary["k"] = v``,
    ``summary.update({...})``, ``del summary["k"]``, ``pop``, ``setdefault``, ``clear``.

    Only top-level keys are edits: a change inside a nested value (``summary["a"]["b"] = 1``) is
    not seen; assign the whole value (``summary["a"] = {...}``). A change the store refuses
    (a value JSON cannot hold, a server that cannot be reached) raises and changes nothing."""

    def __init__(self, values: dict, save: Callable[[dict, list], None]):
        super().__init__(values)
        self._save = save

    def __setitem__(self, key: str, value: Any) -> None:
        self._save({key: value}, [])
        super().__setitem__(key, _as_stored(value))

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._save({}, [key])
        super().__delitem__(key)

    def update(self, *args, **kwargs) -> None:  # type: ignore[override]
        values = dict(*args, **kwargs)
        if values:
            self._save(values, [])
            super().update({k: _as_stored(v) for k, v in values.items()})

    def pop(self, key: str, default: Any = _MISSING) -> Any:  # type: ignore[override]
        if key not in self:
            if default is _MISSING:
                raise KeyError(key)
            return default
        value = self[key]
        del self[key]
        return value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def popitem(self) -> tuple:
        key = next(reversed(self))
        return key, self.pop(key)

    def clear(self) -> None:
        if self:
            self._save({}, list(self))
            super().clear()

    def __ior__(self, other):  # type: ignore[override]
        self.update(other)
        return self


# the run fields RunEdits.update() saves when they were changed
EDITABLE_FIELDS = ("name", "group", "job_type", "tags", "notes")


class RunEdits:
    """Edits of a run read back, for ``RunView`` and ``RemoteRunView`` (W&B's semantics).

    - ``run.summary`` (a ``RunSummary``): item assignments, ``update``, ``del`` are stored at
      once, so ``api.run(path).summary["x"] = value`` is kept without more.
    - ``run.name``, ``group``, ``job_type``, ``tags``, ``notes`` and ``run.config`` (a dict to
      change in place): ``run.update()`` stores what changed since the view was read, in one
      transaction, then re-reads the run.
    - ``run.delete()``: the run's rows and its files are removed (refused while it is running,
      unless ``force=True``).

    What the run's writers store later for the same key (a live run, a replay of its WAL after
    a crash) does not undo an edit; a change they make to that key afterwards wins over it
    (``trackside.store.edits``). A subclass gives ``_stored_summary``, ``_stored_config``,
    ``_edit(**changes)``, ``_delete(force)`` and ``refresh``, and calls ``_loaded()`` after
    each read.
    """

    __slots__ = ()
    # given by the class it is mixed into
    _edits: dict
    _stored_summary: Callable[[], dict]
    _stored_config: Callable[[], dict]
    _edit: Callable[..., None]
    _delete: Callable[[bool], None]
    refresh: Callable[[], Any]

    def _loaded(self) -> None:
        self._edits = {
            "fields": {f: _copy(getattr(self, f)) for f in EDITABLE_FIELDS},
            "summary": None,
            "config": None,
        }

    @property
    def summary(self) -> RunSummary:
        """The run's summary (the last value of each key unless the run set it otherwise).
        Assignments are stored at once (see ``RunSummary``)."""
        edits = self._edits
        if edits["summary"] is None:
            edits["summary"] = RunSummary(self._stored_summary(), self._save_summary)
        return edits["summary"]

    @property
    def config(self) -> dict:
        """The run's config; change it in place and call ``update()`` to store the changes."""
        edits = self._edits
        if edits["config"] is None:
            edits["config"] = self._stored_config()
        return edits["config"]

    def _save_summary(self, sets: dict, dels: list) -> None:
        self._edit(summary=sets, summary_del=dels)

    def update(self):
        """Store the changes made to ``name``, ``group``, ``job_type``, ``tags``, ``notes``
        and ``config`` since the run was read (summary changes are stored as they are made),
        then re-read the run; returns the run. Raises ValueError for a value a field does not
        take (tags: a list of strings; the others a string or None)."""
        before = self._edits["fields"]
        fields = {f: getattr(self, f) for f in EDITABLE_FIELDS if getattr(self, f) != before[f]}
        changes: dict = {}
        if fields:
            changes["fields"] = fields
        config = self._edits["config"]
        if config is not None:
            stored = self._stored_config()
            sets = {k: v for k, v in config.items() if k not in stored or not _same(stored[k], v)}
            dels = [k for k in stored if k not in config]
            if sets:
                changes["config"] = sets
            if dels:
                changes["config_del"] = dels
        if changes:
            self._edit(**changes)
        return self.refresh()

    def delete(self, force: bool = False) -> None:
        """Delete the run: its rows in the store and its files (history, console, media, tables
        it logged, WAL). Artifacts it logged with ``log_artifact`` stay. Raises ValueError while
        the run is running (its writers would bring it back), unless ``force=True``."""
        self._delete(force)


def _as_stored(value: Any) -> Any:
    """A value as reading it back gives it (numpy arrays as lists, tuples as lists ...)."""
    return json.loads(to_json(value))


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _same(a: Any, b: Any) -> bool:
    try:
        return a == b and type(a) is type(b)
    except Exception:  # e.g. numpy arrays compare elementwise
        return False
