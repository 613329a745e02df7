"""``Molecule``: a molecular structure file, stored byte for byte."""

from __future__ import annotations

from ._media import Media, extension, read_input

MOLECULE_FORMATS = ("pdb", "pqr", "mmcif", "mcif", "cif", "sdf", "sd", "gro", "mol2", "mmtf")


class Molecule(Media):
    """A molecule from a file path or an open file in one of the formats pdb, pqr, mmcif,
    mcif, cif, sdf, sd, gro, mol2, mmtf (by the file's extension, or ``file_type=`` for a file
    object without a name). Raises FileNotFoundError for a missing path and ValueError for
    another format."""

    _type = "molecule-file"
    SUPPORTED_TYPES = MOLECULE_FORMATS

    def __init__(self, data_or_path, caption: str | None = None, file_type: str | None = None, **kwargs):
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"caption must be a str, not {type(caption).__name__}")
        if isinstance(data_or_path, Molecule):
            self._data, self._ext = data_or_path._data, data_or_path._ext
            self.caption = caption if caption is not None else data_or_path.caption
            return
        self.caption = caption
        self._data, fname = read_input(data_or_path, "Molecule")
        ext = (file_type or extension(fname)).lower().lstrip(".")
        if ext not in MOLECULE_FORMATS:
            what = f"{fname!r}" if fname else "the file"
            raise ValueError(
                f"Molecule: {what} has type {ext or '(none)'!r}; supported types are "
                f"{', '.join(MOLECULE_FORMATS)} (pass file_type= for a file object without a name)"
            )
        self._ext = ext

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "Molecule":
        return cls._blank(obj, source)
