"""What trackside writes is its user's only: files 0600, folders 0700.

The WAL always was; the store (and the -wal/-shm files SQLite makes with the store's mode),
run.json, upload.json, the daemon's log and registry, media, tables and artifacts hold the same
data, so they follow the same rule whatever the process's umask. Shared by the SDK and the
daemon; imports nothing of either.
"""

from __future__ import annotations

import os

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_dirs(path) -> str:
    """Create ``path`` and its missing parents, each 0700 (``os.makedirs`` gives its mode to
    the last folder only); a folder that exists is left as it is. Returns ``path``."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        return path
    parent = os.path.dirname(path)
    if parent != path:
        make_dirs(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
    else:
        os.chmod(path, DIR_MODE)  # the umask may have taken bits off; never adds any
    return path


def create(path) -> None:
    """Make sure the file ``path`` exists and is 0600 (a file another program then opens,
    such as the SQLite store, keeps the mode)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
    restrict(path)


def restrict(path) -> None:
    """Set an existing file of ours to 0600 (one an older trackside made 0644); a missing
    file is not an error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_mode & 0o777 != FILE_MODE and st.st_uid == os.getuid():
        os.chmod(path, FILE_MODE)


def write_atomic(path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600) through a temporary file beside it: a reader sees
    the old content or the new, never half."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a .tmp left by an older trackside kept its mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    os.replace(tmp, path)
