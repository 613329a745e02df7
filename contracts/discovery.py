"""Where a host's daemon lives and how processes find it.

One daemon per host and user. Its folder (``$TRACKSIDE_DAEMON_DIR``, else
``$XDG_RUNTIME_DIR/trackside``, else ``/tmp/trackside-<uid>``) is 0700 and holds the Unix
socket (0600), a lock that keeps a second daemon out, and ``daemon.json``, written atomically,
with the pid, the socket path and the gRPC port.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile

ENV_DAEMON_DIR = "TRACKSIDE_DAEMON_DIR"
ENV_RUN_ID = "TRACKSIDE_RUN_ID"  # set by init() so child processes (ranks) join the same run
ENV_ROOT = "TRACKSIDE_DIR"
SOCKET_NAME = "daemon.sock"
INFO_NAME = "daemon.json"
LOCK_NAME = "daemon.lock"


def daemon_dir(create: bool = True) -> str:
    """The daemon folder for this user, created 0700 when missing; refuses one others can open."""
    path = os.environ.get(ENV_DAEMON_DIR)
    if not path:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime and os.path.isdir(runtime):
            path = os.path.join(runtime, "trackside")
        else:
            path = os.path.join(tempfile.gettempdir(), f"trackside-{os.getuid()}")
    path = os.path.abspath(path)
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
        if st.st_uid != os.getuid():
            raise PermissionError(f"daemon folder {path} belongs to uid {st.st_uid}, not to you ({os.getuid()})")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o700)
    return path


def socket_path(folder: str | None = None) -> str:
    return os.path.join(folder or daemon_dir(), SOCKET_NAME)


def read_info(folder: str | None = None) -> dict | None:
    """The running daemon's ``daemon.json``, or None when there is none."""
    try:
        with open(os.path.join(folder or daemon_dir(), INFO_NAME), "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def write_info(folder: str, info: dict) -> None:
    """Atomically replace ``daemon.json`` (a reader sees the old file or the new, never half)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".daemon.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, INFO_NAME))


def remove_info(folder: str, pid: int) -> None:
    info = read_info(folder)
    if info and info.get("pid") == pid:
        try:
            os.unlink(os.path.join(folder, INFO_NAME))
        except FileNotFoundError:
            pass


def run_root(dir: str | None = None) -> str:
    """The run root: ``<dir>/trackside`` when ``dir`` is given, else ``$TRACKSIDE_DIR``, else
    ``./trackside``; always absolute (the daemon runs elsewhere)."""
    if dir is not None:
        return os.path.abspath(os.path.join(os.fspath(dir), "trackside"))
    return os.path.abspath(os.environ.get(ENV_ROOT) or "trackside")


def pid_alive(pid) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its reaper does not count)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
