"""The daemon's list of runs it has not finished with, ``<daemon folder>/runs/<run id>``.

A run is added when its stream opens and removed when it closes with nothing left to do
(every row stored, everything uploaded). A daemon that was killed, or stopped while a
destination was away, leaves entries behind; the next daemon reopens those runs at start, so
their WAL backlog is stored or uploaded without waiting for a writer of the run to come back.
Each entry is a file holding the run's root (runs live under roots anywhere on the host).
"""

from __future__ import annotations

import os

from trackside.contracts.names import BadName, check_run_id
from trackside.contracts.private import make_dirs, write_atomic

FOLDER = "runs"


def _path(folder: str, run_id: str) -> str:
    return os.path.join(folder, FOLDER, check_run_id(run_id))


def add(folder: str, run_id: str, root: str) -> None:
    path = _path(folder, run_id)
    try:
        with open(path) as f:
            if f.read() == root:
                return
    except FileNotFoundError:
        pass
    make_dirs(os.path.dirname(path))
    write_atomic(path, root.encode())


def remove(folder: str, run_id: str) -> None:
    try:
        os.unlink(_path(folder, run_id))
    except FileNotFoundError:
        pass


def entries(folder: str) -> list[tuple[str, str]]:
    """``(run_id, root)`` of every run left unfinished, oldest first."""
    base = os.path.join(folder, FOLDER)
    try:
        names = [e for e in os.scandir(base) if e.is_file() and not e.name.endswith(".tmp")]
    except FileNotFoundError:
        return []
    out = []
    for e in sorted(names, key=lambda e: e.stat().st_mtime):
        try:
            check_run_id(e.name)
        except BadName:
            continue  # not an entry of ours
        with open(e.path) as f:
            out.append((e.name, f.read()))
    return out
