"""Names that travel between processes, and the one check each kind gets.

Run ids, project names, artifact names, artifact entry names and the paths of stored files
come from training processes, from daemons uploading to a server and from servers answering a
reader: any of them may be broken or hostile. Each kind has one validator here, called where
the name enters (the SDK, the daemon, the team server's Upload service) and again where it
becomes a path (``contained``), so that a name that reached a store some other way (an older
trackside, a store edited by hand) still cannot lead out of its folder.

A validator returns the name unchanged or raises BadName (a ValueError) naming the value and
the rule. History keys and table keys never become paths: media and table files are named by
their SHA-256, and the paths that name them are checked as file paths.

Shared by the SDK and the daemon; imports nothing of either.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "BadName",
    "check_artifact_name",
    "check_entry_name",
    "check_file_path",
    "check_folder",
    "check_media_path",
    "check_project",
    "check_relative_path",
    "check_run_id",
    "contained",
]

MAX_RUN_ID = 128
MAX_PROJECT = 128
MAX_ARTIFACT_NAME = 512  # room for a run table's run-<run id>-<key>
MAX_PATH = 4096

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,%d}" % (MAX_RUN_ID - 1))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"[A-Za-z]:")  # C:, C:\ or C:name: a Windows drive, absolute there
# run-folder entries that are the daemon's own, never a file a peer sends or fetches
RUN_DIR_OWN = ("wal", "upload.json", "run.json")


class BadName(ValueError):
    """A name or path that cannot be used: the message names the value and the rule."""


def check_run_id(run_id) -> str:
    """A run id: 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit
    (so never '.', '..' or a path)."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise BadName(
            f"invalid run id {run_id!r}: use 1 to {MAX_RUN_ID} letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit"
        )
    return run_id


def check_project(project) -> str:
    """A project name: 1 to 128 characters, no '/', '\\' or control characters."""
    if (
        not isinstance(project, str)
        or not project
        or len(project) > MAX_PROJECT
        or _CONTROL.search(project)
        or "/" in project
        or "\\" in project
    ):
        raise BadName(
            f"invalid project name {project!r}: use 1 to {MAX_PROJECT} characters without '/', '\\' "
            f"or control characters"
        )
    return project


def check_artifact_name(name, what: str = "artifact name") -> str:
    """An artifact name (or type): 1 to 256 characters, no ':' (it separates an alias) and no
    control characters. A table logged with ``run.log`` is the artifact ``run-<id>-<key>``."""
    if not isinstance(name, str) or not name:
        raise BadName(f"invalid {what} {name!r}: use a non-empty string")
    if ":" in name or _CONTROL.search(name) or len(name) > MAX_ARTIFACT_NAME:
        raise BadName(
            f"invalid {what} {name!r}: use at most {MAX_ARTIFACT_NAME} characters, no ':' (it "
            f"separates an alias) and no control characters"
        )
    return name


def check_relative_path(path, what: str = "path") -> str:
    """A path relative to some folder, with '/' between parts: not absolute, no drive, no
    '\\', no empty, '.' or '..' part, no control characters."""
    if not isinstance(path, str) or not path:
        raise BadName(f"invalid {what} {path!r}: use a non-empty relative path")
    if len(path) > MAX_PATH or _CONTROL.search(path) or "\\" in path:
        raise BadName(
            f"invalid {what} {path!r}: no '\\' or control characters (NUL ...), at most {MAX_PATH} characters"
        )
    if path.startswith("/") or _DRIVE.match(path):
        raise BadName(f"invalid {what} {path!r}: use a relative path, not an absolute one")
    if any(p in ("", ".", "..") for p in path.split("/")):
        raise BadName(f"invalid {what} {path!r}: use a relative path without '..', '.' or empty parts")
    return path


def check_entry_name(name) -> str:
    """An artifact entry name: a relative path (``Artifact.download`` writes the entry there)."""
    if not isinstance(name, str):
        raise BadName(f"invalid artifact entry name {name!r}: use a string")
    return check_relative_path(name, "artifact entry name")


def check_file_path(path) -> str:
    """The path of a stored file relative to a run root, as uploads and reads name them:
    under ``runs/<run id>/`` (not the daemon's own files there: its WAL, run.json,
    upload.json) or under ``artifacts/``."""
    check_relative_path(path, "file path")
    parts = path.split("/")
    if parts[0] == "artifacts" and len(parts) >= 2:
        return path
    if parts[0] == "runs" and len(parts) >= 3 and _RUN_ID.fullmatch(parts[1]) and parts[2] not in RUN_DIR_OWN:
        return path
    raise BadName(f"invalid file path {path!r}: use a path under runs/<run id>/ or artifacts/")


def check_media_path(path, run_id: str) -> str:
    """The path of a file a logged value names (an image, a table's rows ...), relative to its
    run's folder: ``media/...``, never the daemon's own files there."""
    check_relative_path(path, "media path")
    try:
        check_file_path(f"runs/{check_run_id(run_id)}/{path}")
    except BadName:
        raise BadName(f"invalid media path {path!r}: it names one of the run folder's own files") from None
    return path


def check_folder(path, what: str = "folder") -> str:
    """A folder relative to a run root that stored files are named under (an artifact
    entry's ``source``): ``artifacts`` or ``runs/<run id>``, or a folder inside one."""
    check_relative_path(path, what)
    try:
        check_file_path(path + "/x")
    except BadName:
        raise BadName(f"invalid {what} {path!r}: use artifacts/... or runs/<run id>/...") from None
    return path


def contained(folder, path: str, what: str = "path") -> str:
    """``folder/path`` as an absolute path, once ``path`` is a valid relative path and the
    result, symlinks resolved, is still inside ``folder``. Raises BadName otherwise."""
    check_relative_path(path, what)
    base = os.path.realpath(os.fspath(folder))
    full = os.path.join(base, *path.split("/"))
    if os.path.commonpath([base, os.path.realpath(full)]) != base:
        raise BadName(f"invalid {what} {path!r}: it leads out of {os.fspath(folder)} (through a symlink)")
    return full
