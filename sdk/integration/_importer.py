"""Writing a run that was recorded elsewhere (TensorBoard, W&B, MLflow) into a run root.

An imported run is written like an offline run (its WAL only), with each row at its original
time, and then stored from that WAL into the root's store, as ``trackside sync`` does: the
run's ``finished_at`` is then its last row's time, its rows keep their ``_timestamp``, and
``trackside sync RUN --to URL`` later sends it to a server like any run. What is not kept:
the store's ``created_at`` is the time of the import (the source's start time is in
``metadata["imported"]["started_at"]``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from ..contracts import discovery
from .._run import _current, _split_values, init
from ..contracts.errors import Error, UsageError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_run_id(run_id) -> str | None:
    """``run_id`` when it is a valid trackside run id (it names a folder), else None."""
    return run_id if isinstance(run_id, str) and _ID.match(run_id) and ".." not in run_id else None


def imported(root: str, run_id: str) -> bool:
    return os.path.isdir(os.path.join(root, "runs", run_id))


class ImportedRun:
    """One run being written from another tracker's records; a context manager.

    ``log(values, step, time_s)`` writes one step's row at its original time (steps must not
    go down); ``config``, ``summary`` and ``console(lines)`` as for a live run. On a clean exit
    the run is finished and stored (by ``trackside sync``); raises UsageError when ``run_id`` exists in ``root``."""

    def __init__(
        self,
        root: str,
        *,
        run_id: str,
        project: str,
        name: str | None = None,
        config=None,
        tags=(),
        group=None,
        job_type=None,
        source: dict | None = None,
    ):
        if check_run_id(run_id) is None:
            raise UsageError(f"run id {run_id!r} is not a valid trackside run id")
        if imported(root, run_id):
            raise UsageError(f"run {run_id} exists already under {root}: remove it to import it again")
        self.root = os.path.abspath(root)
        saved_env = {k: os.environ.get(k) for k in (discovery.ENV_ROOT, discovery.ENV_RUN_ID)}
        self._saved = (saved_env, _current.get("run"))
        os.environ[discovery.ENV_ROOT] = self.root
        try:
            self.run = init(
                project=project,
                name=name,
                id=run_id,
                config=config or {},
                tags=list(tags or ()),
                group=group,
                job_type=job_type,
                mode="offline",
                settings={"console": False, "system_metrics": False, "durability": "flush"},
            )
        except BaseException:
            self._restore()
            raise
        if source:
            self.run._client.event("meta", {"imported": source})
        self.step = -1
        self.exit_code = 0  # the source run's, recorded by finish()

    @property
    def config(self):
        return self.run.config

    @property
    def summary(self):
        return self.run.summary

    @property
    def dir(self) -> str:
        return self.run.dir

    def log(self, values: dict, step: int, time_s: float | None) -> None:
        if not values:
            return
        if step < self.step:
            raise ValueError(f"imported rows must come in step order: step {step} after {self.step}")
        run = self.run
        plain, payload = _split_values(values, run, step)
        time_us = int(time_s * 1e6) if time_s is not None else time.time_ns() // 1000
        run._client.add(step, True, time_us, plain, payload)  # Run.log, at the source's time
        self.step = step
        run.step = step + 1

    def console(self, lines) -> None:
        """``lines``: (time in seconds, "stdout" or "stderr", text) triples."""
        lines = [[int(t * 1e6), stream, text] for t, stream, text in lines]
        if lines:
            self.run._client.event("console", lines, ordered=False)

    def finish(self, exit_code: int | None = None) -> None:
        run = self.run
        run.finish(exit_code=self.exit_code if exit_code is None else exit_code)
        self._restore()
        # stored from its WAL by `trackside sync` (a process, as the daemon is one: the SDK
        # never imports them), which keeps the rows' own times and ends the run at its last row
        done = subprocess.run(
            [sys.executable, "-m", "trackside.cli", "sync", run.dir],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise Error(
                f"run {run.id} was written to {run.dir} but could not be stored "
                f"(`trackside sync {run.dir}` failed: {done.stderr.strip()[-2000:]})"
            )

    def _restore(self) -> None:
        """The process's run root, run id and active run as they were before the import."""
        saved_env, active = self._saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if active is not None:
            _current["run"] = active

    def __enter__(self) -> ImportedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=None if exc_type is None else 1)
