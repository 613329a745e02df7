"""``Table``: rows of typed columns, logged in one of three modes, and ``JoinedTable``.

Each column holds one kind of value, inferred from its first cell that is not None: number
(int and float mix), string, bool, list, dict, bytes, numpy array, or one trackside data type
(``Image``, ``Classes`` ... by its ``_type``). None fits every column. A cell of another kind is
a TypeError naming its row and column (``allow_mixed_types=True`` lifts the rule).

A logged table is not one JSON blob: its rows are written once, as a msgpack file of columns,
content-addressed in the run folder (``media/<sha256 prefix>/<sha256>.msgpack``)::

    {"format": "trackside-table", "version": 1, "columns": [...], "types": [...],
     "nrows": N, "data": [[cells of column 0], [cells of column 1], ...]}

Cells of data types are held as their logged form (files of their own beside the table);
numpy arrays as ``{"_type": "ndarray", "dtype", "shape", "data": raw bytes}``. The history
row, the summary and the artifact ``run-<run id>-<key>`` hold the table's logged form, a
reference to that file::

    {"_type": "table", "path": ..., "sha256": ..., "size": ..., "nrows": N, "ncols": 5,
     "columns": [...], "column_types": [...], "log_mode": "MUTABLE", "artifact": "run-ab12-preds"}

``"_type": "incremental-table"`` marks one increment of an INCREMENTAL table (its new rows
only); readers concatenate the increments (``RunView.table``).
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid

import msgspec

from trackside.store.tables import BUILTIN_KINDS, FORMAT, FORMAT_VERSION, read_columns  # noqa: F401  (re-exported)

from ..contracts.errors import UsageError
from .base import DataType, from_json, need, store_bytes

__all__ = ["IMMUTABLE", "INCREMENTAL", "JoinedTable", "LOG_MODES", "MUTABLE", "Table"]

IMMUTABLE = "IMMUTABLE"
MUTABLE = "MUTABLE"
INCREMENTAL = "INCREMENTAL"
LOG_MODES = (IMMUTABLE, MUTABLE, INCREMENTAL)

# the kinds of plain Python values, by exact type (the fast path of the per-cell check)
_PLAIN = {int: "number", float: "number", str: "string", bool: "bool", list: "list", dict: "dict", bytes: "bytes"}
_REBUILT = "ndarray"  # kinds stored as a logged form and rebuilt on reading, besides data types


def _plain(obj):
    """msgspec hook for values nested in list and dict cells: numpy scalars and arrays."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} inside a table cell")


_encode = msgspec.msgpack.Encoder(enc_hook=_plain).encode
_decode = msgspec.msgpack.Decoder().decode


def _kind(v):
    """``(kind, value)`` of a cell the fast path did not know; the value normalized (numpy
    scalars become Python scalars, tuples lists). Raises TypeError for what a table cannot hold."""
    if isinstance(v, DataType):
        if not type(v)._type:
            raise TypeError(f"a {type(v).__name__} has no logged form and cannot go in a table")
        return type(v)._type, v
    if isinstance(v, bool):
        return "bool", bool(v)
    if type(v).__module__ == "numpy":
        if type(v).__name__ == "ndarray":
            return "ndarray", v
        if getattr(v, "shape", None) == () and hasattr(v, "item"):  # a numpy scalar
            item = v.item()
            kind = _PLAIN.get(type(item))
            if kind is not None:
                return kind, item
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return "number", (int(v) if isinstance(v, int) else float(v))
    if isinstance(v, str):
        return "string", str(v)
    if isinstance(v, tuple):
        return "list", list(v)
    if isinstance(v, (bytearray, memoryview)):
        return "bytes", bytes(v)
    raise TypeError(
        f"a {type(v).__name__} cannot go in a table: use numbers, strings, bools, lists, dicts, "
        f"bytes, numpy arrays or trackside data types (Image, Histogram ...)"
    )


def _series_values(series) -> list:
    """A pandas column as a list: a missing value (NaN, NA, NaT) is None, except in a float
    column, where NaN is a number."""
    values = series.tolist()
    if getattr(series.dtype, "kind", "O") != "f":
        missing = series.isna().tolist()
        if any(missing):
            values = [None if m else v for v, m in zip(values, missing)]
    return values


def _target_dir(run) -> str:
    """The folder a table's files go under: ``run.dir`` for a run, or a folder path itself."""
    if isinstance(run, (str, os.PathLike)):
        return os.fspath(run)
    d = getattr(run, "dir", None)
    if d is None:
        raise TypeError(f"cannot store a table for {type(run).__name__}: pass a run or a folder")
    return d


def _pack_ndarray(a) -> dict:
    if a.dtype.kind in "biufc" and not a.dtype.hasobject:
        import numpy as np  # optional: numpy (pip install 'trackside[media]')

        return {
            "_type": "ndarray",
            "dtype": a.dtype.str,
            "shape": list(a.shape),
            "data": np.ascontiguousarray(a).tobytes(),
        }
    return {"_type": "ndarray", "dtype": None, "shape": list(a.shape), "list": a.tolist()}


def _unpack_ndarray(obj: dict):
    import numpy as np  # optional: numpy (pip install 'trackside[media]')

    if obj.get("dtype") is None:
        return np.array(obj["list"])
    return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()


def _same(a, b) -> bool:
    """Cell equality that reads back true: NaN equals NaN, arrays compare by shape and values."""
    if a is b:
        return True
    ta, tb = type(a), type(b)
    if ta is float and tb is float:
        return a == b or (a != a and b != b)
    if ta.__name__ == "ndarray" or tb.__name__ == "ndarray":
        import numpy as np  # optional: numpy (pip install 'trackside[media]')

        if not (hasattr(a, "shape") and hasattr(b, "shape")) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if ta is list and tb is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if ta is dict and tb is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _rows_equal(x: list, y: list) -> bool:
    if len(x) != len(y):
        return False
    try:
        if x == y:
            return True
    except (TypeError, ValueError):  # numpy arrays in cells
        pass
    return all(len(r) == len(s) and all(_same(a, b) for a, b in zip(r, s)) for r, s in zip(x, y))


class Table(DataType):
    """A two-dimensional table: named columns, each holding one kind of value, and rows.

    ``Table(columns=["a", "b"], data=[[1, "x"], [2, "y"]])``, ``Table(dataframe=df)``, or
    columns and then ``add_data`` / ``add_column``. ``log_mode`` says what logging the same
    object again does: ``"IMMUTABLE"`` (the default; a second log is an error),
    ``"MUTABLE"`` (each log stores a new version of the whole table) or ``"INCREMENTAL"``
    (each log stores only the rows added since the previous one, as the next numbered
    increment of the key; a resumed run continues the key's increments). At most
    ``MAX_ARTIFACT_ROWS`` rows (200,000) are stored per log; raise it on the class to store
    more.
    """

    _type = "table"
    MAX_ARTIFACT_ROWS = 200_000

    def __init__(
        self,
        columns=None,
        data=None,
        rows=None,
        dataframe=None,
        *,
        log_mode: str = IMMUTABLE,
        allow_mixed_types: bool = False,
        dtype=None,
    ):
        if log_mode not in LOG_MODES:
            raise ValueError(f"log_mode={log_mode!r} is not one of {', '.join(LOG_MODES)}")
        if data is not None and rows is not None:
            raise ValueError("give the rows once: data= or rows=, not both")
        if rows is not None:
            data = rows
        if dataframe is None and hasattr(data, "iloc") and hasattr(data, "columns"):  # a DataFrame as data=
            dataframe, data = data, None
        self.log_mode = log_mode
        self.allow_mixed_types = bool(allow_mixed_types)
        self._logged = False  # an IMMUTABLE table logged once
        self._logged_rows = 0  # INCREMENTAL: rows already stored as increments
        if dataframe is not None:
            if data is not None:
                raise ValueError("give either dataframe= or data=, not both")
            if columns is None:
                columns = [str(c) for c in dataframe.columns]
            values = [_series_values(dataframe[c]) for c in dataframe.columns]
            data = [list(r) for r in zip(*values)] if values else []
        elif (
            data is not None
            and hasattr(data, "tolist")
            and getattr(data, "ndim", 2) == 2
            and type(data).__module__ == "numpy"
        ):
            data = data.tolist()
        if columns is None:
            width = len(data[0]) if data else 0
            columns = [f"col{i}" for i in range(width)]
        self.columns: list[str] = self._check_columns(columns)
        n = len(self.columns)
        self._types: list = [None] * n
        self._type_rows: list = [None] * n  # the row that set each column's kind (for errors)
        if dtype is not None:
            self._set_dtypes(dtype)
        self.data: list[list] = self._check_rows(data or (), 0) if data is not None else []

    # -- building --------------------------------------------------------------------------------

    @staticmethod
    def _check_columns(columns) -> list:
        if isinstance(columns, str) or not hasattr(columns, "__iter__"):
            raise TypeError(f"columns must be a list of names, not {type(columns).__name__}")
        out = list(columns)
        for c in out:
            if not isinstance(c, str):
                raise TypeError(f"column names must be strings, not {type(c).__name__} ({c!r})")
        dup = sorted({c for c in out if out.count(c) > 1})
        if dup:
            raise ValueError(f"column name(s) {dup} appear more than once")
        return out

    def _set_dtypes(self, dtype) -> None:
        dtypes = list(dtype) if isinstance(dtype, (list, tuple)) else [dtype] * len(self.columns)
        if len(dtypes) != len(self.columns):
            raise ValueError(f"dtype has {len(dtypes)} entries for {len(self.columns)} columns")
        names = {
            int: "number",
            float: "number",
            str: "string",
            bool: "bool",
            list: "list",
            dict: "dict",
            bytes: "bytes",
        }
        for j, t in enumerate(dtypes):
            if t is None:
                continue
            if t in names:
                self._types[j] = names[t]
            elif isinstance(t, type) and issubclass(t, DataType) and t._type:
                self._types[j] = t._type
            elif getattr(t, "__name__", None) == "ndarray":
                self._types[j] = "ndarray"
            else:
                raise TypeError(f"dtype for column {self.columns[j]!r}: {t!r} is not a type a table column can hold")
            self._type_rows[j] = "dtype"

    def _bad_cell(self, i: int, j: int, kind: str, value) -> TypeError:
        want = self._types[j]
        set_by = self._type_rows[j]
        origin = "by dtype" if set_by == "dtype" else f"by row {set_by}"
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return TypeError(
            f"row {i}, column {self.columns[j]!r}: {shown} is a {kind} value, but the column holds {want} "
            f"values (set {origin}); put {want} values (or None) in it, or pass allow_mixed_types=True"
        )

    def _check_rows(self, rows, start: int) -> list:
        """The rows as new lists with normalized cells, after checking their length and kinds.

        Raises ValueError (wrong length) or TypeError (wrong kind) naming row and column; the
        table is unchanged then."""
        n = len(self.columns)
        types = list(self._types)
        type_rows = list(self._type_rows)
        saved = self._types, self._type_rows
        self._types, self._type_rows = types, type_rows  # for _bad_cell's message
        plain = _PLAIN
        mixed = self.allow_mixed_types
        out = []
        try:
            for i, row in enumerate(rows, start):
                if type(row) is not list and (isinstance(row, (str, bytes, dict)) or not hasattr(row, "__len__")):
                    raise TypeError(f"row {i} must be a list of {n} values, not {type(row).__name__}")
                row = list(row)  # the table's own copy: later changes to the caller's list do not leak in
                if len(row) != n:
                    raise ValueError(
                        f"row {i} has {len(row)} value{'s' if len(row) != 1 else ''}, but the table has "
                        f"{n} column{'s' if n != 1 else ''} ({', '.join(self.columns)})"
                    )
                for j in range(n):
                    v = row[j]
                    if v is None:
                        continue
                    kind = plain.get(type(v))
                    if kind is None:
                        try:
                            kind, v2 = _kind(v)
                        except TypeError as e:
                            raise TypeError(f"row {i}, column {self.columns[j]!r}: {e}") from None
                        if v2 is not v:
                            row[j] = v2
                    want = types[j]
                    if want != kind:
                        if want is None:
                            types[j] = kind
                            type_rows[j] = i
                        elif want != "mixed":
                            if mixed:
                                types[j] = "mixed"
                            else:
                                raise self._bad_cell(i, j, kind, v)
                out.append(row)
        except BaseException:
            self._types, self._type_rows = saved
            raise
        return out

    def add_data(self, *data) -> None:
        """Add one row: one value per column, in column order (``add_data(*row)`` for a list).
        Raises ValueError for the wrong number of values and TypeError for a value of the
        wrong kind for its column (the table is unchanged then)."""
        self.data.extend(self._check_rows((data,), len(self.data)))

    add_row = add_data

    def add_column(self, name: str, data, optional: bool = False) -> None:
        """Add a column of values (a list or a numpy array) with one value per row; on a
        table without columns, the column makes the rows. Raises ValueError when the name is
        taken or the length differs from the number of rows, TypeError for mixed kinds."""
        if not isinstance(name, str):
            raise TypeError(f"column name must be a string, not {type(name).__name__}")
        if name in self.columns:
            raise ValueError(f"the table already has a column {name!r}")
        if type(data).__module__ == "numpy" and type(data).__name__ == "ndarray":
            values = data.tolist() if data.ndim == 1 else list(data)
        elif hasattr(data, "tolist") and not isinstance(data, (list, tuple)):  # pandas Series
            values = data.tolist()
        elif isinstance(data, (list, tuple)):
            values = list(data)
        else:
            raise TypeError(f"column {name!r}: data must be a list or a numpy array, not {type(data).__name__}")
        nrows = len(self.data)
        if self.columns and len(values) != nrows:
            raise ValueError(
                f"column {name!r} has {len(values)} value{'s' if len(values) != 1 else ''}, but the "
                f"table has {nrows} row{'s' if nrows != 1 else ''}; give one value per row"
            )
        probe = Table.__new__(Table)
        probe.columns, probe.allow_mixed_types = [name], self.allow_mixed_types
        probe._types, probe._type_rows = [None], [None]
        checked = probe._check_rows(([v] for v in values), 0)
        self.columns.append(name)
        self._types.append(probe._types[0])
        self._type_rows.append(probe._type_rows[0])
        if nrows == 0 and len(self.columns) == 1:
            self.data = checked
        else:
            for row, (v,) in zip(self.data, checked):
                row.append(v)

    # -- reading ---------------------------------------------------------------------------------

    def _index(self, name: str) -> int:
        try:
            return self.columns.index(name)
        except ValueError:
            raise KeyError(f"the table has no column {name!r}; its columns: {', '.join(self.columns)}") from None

    def get_column(self, name: str, convert_to: str | None = None):
        """The values of one column, as a list; ``convert_to="numpy"``: a numpy array (data
        types by their ``to_numpy()``, e.g. an Image's pixels). KeyError for an unknown name."""
        j = self._index(name)
        values = [row[j] for row in self.data]
        if convert_to is None:
            return values
        if convert_to != "numpy":
            raise ValueError(f"convert_to={convert_to!r}: use None or 'numpy'")

        np = need("numpy", "media")
        values = [v.to_numpy() if hasattr(v, "to_numpy") else v for v in values]
        if values and all(hasattr(v, "shape") for v in values):
            try:
                return np.stack(values)
            except ValueError:  # arrays of different shapes
                pass
        try:
            return np.array(values)
        except ValueError:
            out = np.empty(len(values), dtype=object)
            out[:] = values
            return out

    def get_index(self) -> list:
        """The row indexes, 0 to ``len(data) - 1``."""
        return list(range(len(self.data)))

    def iterrows(self):
        """``(index, row)`` for each row, in order; ``row`` is the row's list of values."""
        return enumerate(self.data)

    @property
    def column_types(self) -> dict:
        """``{column: kind}``: number, string, bool, list, dict, bytes, ndarray, a data type's
        ``_type``, ``mixed``, or None while a column holds only None."""
        return dict(zip(self.columns, self._types))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return self.columns == other.columns and _rows_equal(self.data, other.data)

    __hash__ = None

    def __repr__(self) -> str:
        return f"<Table {len(self.data)} rows x {len(self.columns)} columns {self.columns} log_mode={self.log_mode}>"

    # -- the logged form -------------------------------------------------------------------------

    def _check_size(self, nrows: int) -> None:
        limit = type(self).MAX_ARTIFACT_ROWS
        if nrows > limit:
            raise ValueError(
                f"the table has {nrows:,} rows, more than Table.MAX_ARTIFACT_ROWS ({limit:,}); "
                f"log fewer rows, or raise the limit: trackside.Table.MAX_ARTIFACT_ROWS = {nrows}"
            )

    def _verify(self) -> None:
        """Rows changed through ``.data`` directly: check their length (kinds were checked on
        the way in; cells assigned in place are trusted)."""
        n = len(self.columns)
        for i, row in enumerate(self.data):
            if len(row) != n:
                raise ValueError(
                    f"row {i} has {len(row)} values, but the table has {n} columns "
                    f"({', '.join(self.columns)}); was table.data changed directly?"
                )

    def to_json(self, run) -> dict:
        """Write the rows file under ``run.dir`` (or a folder) and return the logged form."""
        return self._write(run, self.data, self._type)

    def _write(self, run, rows, form_type: str) -> dict:
        self._check_size(len(rows))
        self._verify()
        target = _target_dir(run)
        cols = [list(c) for c in zip(*rows)] if rows and self.columns else [[] for _ in self.columns]
        types = list(self._types)
        for j, kind in enumerate(types):
            if kind in BUILTIN_KINDS and kind != "mixed" or kind is None:
                continue
            cols[j] = [_cell_form(v, run) for v in cols[j]]
        doc = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "columns": self.columns,
            "types": types,
            "nrows": len(rows),
            "data": cols,
        }
        try:
            blob = _encode(doc)
        except (TypeError, OverflowError, msgspec.EncodeError) as e:
            raise TypeError(f"the table cannot be stored: {e}") from None
        ref = store_bytes(target, blob, "msgpack")
        return {
            "_type": form_type,
            **ref,
            "nrows": len(rows),
            "ncols": len(self.columns),
            "columns": list(self.columns),
            "column_types": types,
            "log_mode": self.log_mode,
        }

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "Table":
        """The table (for an increment: its rows only) from its logged form."""
        columns, types, rows = read_rows(obj, source)
        return cls._from_parts(columns, types, rows, obj.get("log_mode", IMMUTABLE))

    @classmethod
    def _from_parts(cls, columns, types, rows, log_mode=IMMUTABLE) -> "Table":
        self = cls.__new__(cls)
        self.log_mode = log_mode if log_mode in LOG_MODES else IMMUTABLE
        self.allow_mixed_types = "mixed" in types
        self._logged = False
        self._logged_rows = 0
        self.columns = list(columns)
        self._types = list(types)
        self._type_rows = [0 if t is not None else None for t in types]
        self.data = rows
        return self

    def _trackside_log(self, run, key: str, step: int) -> dict:
        """``run.log({key: table})``: store the rows (all of them, or the new ones for an
        INCREMENTAL table) and index them as the next version of ``run-<run id>-<key>``."""
        if self.log_mode == IMMUTABLE and self._logged:
            raise UsageError(
                "this IMMUTABLE table was already logged; to log it again, create it with "
                "log_mode='MUTABLE' (each log stores a new version) or 'INCREMENTAL' (each log stores "
                "the new rows), or log a new Table"
            )
        if getattr(run, "mode", None) == "disabled":
            return {"_type": self._type, "nrows": len(self.data), "columns": list(self.columns)}
        if self.log_mode == INCREMENTAL:
            rows = self.data[self._logged_rows :]
            form = self._write(run, rows, "incremental-table")
        else:
            form = self._write(run, self.data, self._type)
        form["artifact"] = record_table(run, key, step, form, incremental=self.log_mode == INCREMENTAL)
        self._logged = True
        self._logged_rows = len(self.data)
        return form


def _cell_form(v, run):
    if v is None:
        return None
    if isinstance(v, DataType):
        return v.to_json(run)
    if type(v).__name__ == "ndarray":
        return _pack_ndarray(v)
    return v


def _cell_value(v, source):
    if type(v) is dict:
        if v.get("_type") == "ndarray":
            return _unpack_ndarray(v)
        return from_json(v, source)
    return v


def read_rows(obj: dict, source: str) -> tuple[list, list, list]:
    """``(columns, types, rows)`` of a logged table's rows file, cells rebuilt. Raises
    FileNotFoundError (missing file) or ValueError (damaged file)."""
    columns, types, cols, nrows = read_columns(obj, source)
    for j, kind in enumerate(types):
        if kind is None or (kind in BUILTIN_KINDS and kind != "mixed"):
            continue
        cols[j] = [_cell_value(v, source) for v in cols[j]]
    rows = [list(r) for r in zip(*cols)] if cols else [[] for _ in range(nrows)]
    return columns, types, rows


def concat(tables: list, log_mode: str = INCREMENTAL) -> Table:
    """One table of the rows of ``tables`` in order, columns matched by name (the last
    table's columns first; a column a table lacks is None in its rows)."""
    if not tables:
        return Table._from_parts([], [], [], log_mode)
    columns = list(tables[-1].columns)
    for t in tables[:-1]:
        columns += [c for c in t.columns if c not in columns]
    types: list = [None] * len(columns)
    rows: list = []
    for t in tables:
        idx = [t.columns.index(c) if c in t.columns else None for c in columns]
        for j, i in enumerate(idx):
            if i is not None and t._types[i] is not None:
                types[j] = t._types[i] if types[j] in (None, t._types[i]) else "mixed"
        if idx == list(range(len(columns))):
            rows.extend(t.data)
        else:
            rows.extend([None if i is None else r[i] for i in idx] for r in t.data)
    return Table._from_parts(columns, types, rows, log_mode)


def table_artifact_name(run_id: str, key: str) -> str:
    """The artifact a run's logged table is reachable as: ``run-<run id>-<key>`` (':' in the
    key, which separates an alias, becomes '_')."""
    return f"run-{run_id}-{key.replace(':', '_')}"


def record_table(run, key: str, step, form: dict, *, incremental: bool = False) -> str:
    """Index a logged table (or joined table) as the next version of the artifact
    ``run-<run id>-<key>``: an "artifact" event the daemon stores. Returns the name."""
    name = table_artifact_name(run.id, key)
    manifest = {key: {"kind": "object", "obj": form, "source": f"runs/{run.id}"}}
    digest = hashlib.sha256(_encode(manifest)).hexdigest()
    event = getattr(run, "_event", None)
    if event is not None:
        uid = uuid.uuid4().hex
        event(
            "artifact",
            {
                "uid": uid,
                "name": name,
                "type": "run_table",
                "digest": digest,
                "manifest": manifest,
                "run_key": key,
                "step": step,
                "incremental": incremental,
            },
        )
        run._last_artifact_uid = uid  # use_artifact waits for it: a run reads its own tables back
    return name


# -- joined tables ---------------------------------------------------------------------------------


class JoinedTable(DataType):
    """Two tables joined on a key: ``JoinedTable(t1, t2, "id")``, or ``["id1", "id2"]`` when
    the key columns have different names. Both tables are stored; ``joined()`` gives the
    inner join: rows of ``table1`` (in order) paired with each row of ``table2`` with the same
    key, columns ``key, <table1's others>, <table2's others>`` (a name both have gets the
    suffixes ``_1`` and ``_2``)."""

    _type = "joined-table"

    def __init__(self, table1, table2, join_key):
        for i, t in enumerate((table1, table2), 1):
            if not isinstance(t, Table):
                raise TypeError(
                    f"table{i} must be a Table (fetch one from an artifact with "
                    f"run.use_artifact(...).get(name)), not {type(t).__name__}"
                )
        if isinstance(join_key, str):
            keys = [join_key, join_key]
        elif isinstance(join_key, (list, tuple)) and len(join_key) == 2 and all(isinstance(k, str) for k in join_key):
            keys = list(join_key)
        else:
            raise TypeError(f"join_key must be a column name or a list of two, not {join_key!r}")
        for i, (t, k) in enumerate(zip((table1, table2), keys), 1):
            if k not in t.columns:
                raise KeyError(f"table{i} has no column {k!r} to join on; its columns: {', '.join(t.columns)}")
        self._table1 = table1
        self._table2 = table2
        self._join_key = join_key if isinstance(join_key, str) else list(join_key)
        self._keys = keys

    @property
    def table1(self) -> Table:
        return self._table1

    @property
    def table2(self) -> Table:
        return self._table2

    @property
    def join_key(self):
        return self._join_key

    def joined(self) -> Table:
        """The inner join as a new Table."""
        t1, t2 = self._table1, self._table2
        k1, k2 = t1.columns.index(self._keys[0]), t2.columns.index(self._keys[1])
        other1 = [i for i in range(len(t1.columns)) if i != k1]
        other2 = [i for i in range(len(t2.columns)) if i != k2]
        names1 = [t1.columns[i] for i in other1]
        names2 = [t2.columns[i] for i in other2]
        clash = (set(names1) & set(names2)) | ({self._keys[0]} & set(names2))
        columns = (
            [self._keys[0]]
            + [f"{n}_1" if n in clash else n for n in names1]
            + [f"{n}_2" if n in clash else n for n in names2]
        )
        types = [t1._types[k1]] + [t1._types[i] for i in other1] + [t2._types[i] for i in other2]
        index: dict = {}
        for row in t2.data:
            index.setdefault(_hashable(row[k2]), []).append(row)
        rows = []
        for row in t1.data:
            key = row[k1]
            left = [row[i] for i in other1]
            for match in index.get(_hashable(key), ()):
                rows.append([key, *left, *(match[i] for i in other2)])
        return Table._from_parts(columns, types, rows, IMMUTABLE)

    @property
    def columns(self) -> list:
        return self.joined().columns

    @property
    def data(self) -> list:
        return self.joined().data

    def iterrows(self):
        return enumerate(self.joined().data)

    def to_json(self, run) -> dict:
        return {
            "_type": self._type,
            "join_key": self._join_key,
            "table1": self._table1.to_json(run),
            "table2": self._table2.to_json(run),
        }

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "JoinedTable":
        return cls(Table.from_json(obj["table1"], source), Table.from_json(obj["table2"], source), obj["join_key"])

    def _trackside_log(self, run, key: str, step: int) -> dict:
        if getattr(run, "mode", None) == "disabled":
            return {"_type": self._type, "join_key": self._join_key}
        form = self.to_json(run)
        form["artifact"] = record_table(run, key, step, form)
        return form

    def __eq__(self, other) -> bool:
        if not isinstance(other, JoinedTable):
            return NotImplemented
        return self._keys == other._keys and self._table1 == other._table1 and self._table2 == other._table2

    __hash__ = None

    def __repr__(self) -> str:
        return f"<JoinedTable on {self._join_key!r}: {self._table1!r} + {self._table2!r}>"


def _hashable(v):
    if isinstance(v, float) and math.isnan(v):
        return ("nan",)
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


# an increment reads back as a table of its own rows; RunView.table joins them
from .base import _TYPES  # noqa: E402

_TYPES.setdefault("incremental-table", Table)
