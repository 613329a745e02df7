"""The sampler: one task of the daemon that reads the host at the shortest interval any run
asks for and writes each run's windows into its stream."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import socket
import time

from .gpu import load_nvml
from .host import Reader, Sample
from .window import Window

log = logging.getLogger("trackside.daemon")

MIN_INTERVAL = 0.01  # seconds; a run asking for less would keep the daemon's worker busy
IDLE_POLL = 1.0  # seconds between looks for runs while none wants system metrics (writers also wake it)
CLOSE_TIMEOUT = 10.0  # seconds a closing run waits for its last rows to be stored


class _RunState:
    __slots__ = (
        "stream",
        "off",
        "sample_interval",
        "log_interval",
        "window",
        "base",
        "next_sample",
        "pending",
        "meta",
        "described",
        "writer",
        "closed",
    )

    def __init__(self, stream, off: bool, sample_interval: float = 1.0, log_interval: float = 10.0):
        self.stream = stream
        self.off = off
        self.sample_interval = sample_interval
        self.log_interval = log_interval
        self.window = Window(time.monotonic())
        self.base: dict = {}  # counter values when the run began
        self.next_sample = 0.0
        self.pending: list = []  # (time_us, data) rows not stored yet
        self.meta: dict | None = None
        self.described = False
        self.writer: asyncio.Task | None = None
        self.closed = False


class Sampler:
    """The daemon's system-metrics sampler.

    ``streams`` returns the live ``RunStream``s; each has ``run_id``, ``root``, ``settings``
    (the run's init settings), ``pids`` (training process pid -> (connections, rank)) and
    ``write_system(host, rows, metadata)``. Defaults for runs that do not say otherwise:
    ``sample_interval``, ``log_interval`` (seconds); ``enabled=False`` samples nothing at all.
    The sampler runs while at least one run wants system metrics and costs nothing otherwise;
    it samples at the smallest sample interval of the live runs (a run with a larger one takes
    every sample that is due for it) and stores each run's window at the run's log interval."""

    def __init__(
        self,
        streams,
        *,
        enabled: bool = True,
        sample_interval: float = 1.0,
        log_interval: float = 10.0,
        host: str | None = None,
        nvml_loader=load_nvml,
    ):
        self.streams = streams
        self.enabled = enabled
        self.sample_interval = max(float(sample_interval), MIN_INTERVAL)
        self.log_interval = max(float(log_interval), self.sample_interval)
        self.host = host or socket.gethostname()
        self._nvml_loader = nvml_loader
        self._reader: Reader | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._runs: dict[str, _RunState] = {}
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._reader_error: str | None = None
        self.samples = 0
        self.cost_us = 0.0  # of every sample taken, in the worker thread

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start on the running loop. Until a run wants system metrics nothing is sampled; the
        worker thread imports psutil and the NVML binding meanwhile (NVML starts with the first
        run), so that the first run's writers do not wait on those imports for the GIL."""
        if not self.enabled or self._task is not None:
            return
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sysmetrics")
        self._pool.submit(self._prepare)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="sysmetrics")

    def _prepare(self) -> None:
        try:
            self._reader = Reader(self._nvml_loader)
            self._nvml_loader()
        except Exception:  # reported by the first sample, when it fails again there
            pass

    def wake(self) -> None:
        """A run or a training process appeared: look at the runs now, not at the next tick."""
        if self._wake is not None:
            self._wake.set()

    async def close_run(self, stream) -> None:
        """``stream`` is closing: store its last (partial) window and wait until it is stored."""
        st = self._runs.get(stream.run_id)
        if st is None or st.stream is not stream:
            return
        del self._runs[stream.run_id]
        st.closed = True
        if st.off:
            return
        if st.window.samples:
            self._emit(st)
        if st.writer is not None and not st.writer.done():
            try:
                await asyncio.wait_for(st.writer, CLOSE_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning(
                    "run %s: its last system metrics were not stored within %.0f s; dropped",
                    stream.run_id,
                    CLOSE_TIMEOUT,
                )

    async def stop(self) -> None:
        """Store every run's last window, stop sampling and shut NVML down."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        for st in list(self._runs.values()):
            await self.close_run(st.stream)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._close_reader)
        self._pool.shutdown(wait=True)
        self._task = None

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()

    # -- the loop --------------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = None  # monotonic time of the last tick
        while True:
            runs = self._sync()
            if not runs:
                last = None
                await self._wait(IDLE_POLL)
                continue
            tick = min(st.sample_interval for st in runs)
            now = time.monotonic()
            due = now if last is None else last + tick
            if due > now and await self._wait(due - now):
                continue  # woken: a new run may want a shorter tick
            now = time.monotonic()
            last = due if now - due < tick else now  # keep the cadence unless a tick was missed
            try:
                await self._tick(loop, runs, tick)
            except Exception:  # never let a bug here end sampling for good
                log.exception("system metrics: a tick failed")

    async def _wait(self, timeout: float | None) -> bool:
        """Sleep ``timeout`` seconds (None: until woken); True when woken."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _sync(self) -> list[_RunState]:
        """Follow the daemon's live runs; return those that want system metrics."""
        live: dict[str, _RunState] = {}
        for stream in self.streams():
            st = self._runs.get(stream.run_id)
            if st is None or st.stream is not stream:
                st = self._new_run(stream)
            live[stream.run_id] = st
        self._runs = live
        return [st for st in live.values() if not st.off]

    def _new_run(self, stream) -> _RunState:
        settings = getattr(stream, "settings", None) or {}
        if settings.get("system_metrics", True) is False:
            return _RunState(stream, off=True)
        sample = self._interval(stream, settings, "system_sample_interval", self.sample_interval)
        window = max(self._interval(stream, settings, "system_log_interval", self.log_interval), sample)
        return _RunState(stream, off=False, sample_interval=sample, log_interval=window)

    @staticmethod
    def _interval(stream, settings: dict, name: str, default: float) -> float:
        value = settings.get(name)
        if value is None:
            return default
        try:
            value = float(value)
            if not math.isfinite(value) or value <= 0:
                raise ValueError
        except (TypeError, ValueError):
            log.warning(
                "run %s: setting %s=%r is not a positive number of seconds; using %s",
                stream.run_id,
                name,
                value,
                default,
            )
            return default
        return max(value, MIN_INTERVAL)

    async def _tick(self, loop, runs: list[_RunState], tick: float) -> None:
        pids: set[int] = set()
        roots: set[str] = set()
        for st in runs:
            pids.update(st.stream.pids)
            roots.add(st.stream.root)
        sample = await loop.run_in_executor(self._pool, self._read, pids, roots)
        if sample is None:
            return
        self.samples += 1
        self.cost_us += sample.cost_us
        now = time.monotonic()
        slack = tick / 2  # a tick a little early still counts
        for st in runs:
            if st.closed:
                continue
            if now >= st.next_sample - slack:
                self._add(st, sample)
                st.next_sample = now + st.sample_interval
            if st.window.samples and now - st.window.start >= st.log_interval - slack:
                self._emit(st)
            if not st.described:
                st.described = True
                st.meta = {"system": self._describe(st)}
                self._write_soon(st)

    def _read(self, pids, roots):
        try:
            if self._reader is None:
                self._reader = Reader(self._nvml_loader)
            sample = self._reader.read(pids, roots)
        except Exception as e:
            if str(e) != self._reader_error:
                self._reader_error = str(e)
                log.exception("system metrics: sampling failed")
            return None
        self._reader_error = None
        return sample

    def _add(self, st: _RunState, sample: Sample) -> None:
        w = st.window
        w.add(sample.host, st.base)
        usage = sample.roots.get(st.stream.root)
        if usage:
            w.last.update(usage)
        for pid, (_, rank) in list(st.stream.pids.items()):
            parts = sample.procs.get(pid)
            if parts is not None:
                w.add(parts, st.base)
                w.last[f"system/proc/{pid}/rank"] = rank
        w.samples += 1
        w.time = sample.time

    def _emit(self, st: _RunState) -> None:
        w = st.window
        st.pending.append((int(w.time * 1e6), w.result()))
        st.window = Window(time.monotonic())
        self._write_soon(st)

    def _describe(self, st: _RunState) -> dict:
        r = self._reader
        out = {
            "host": self.host,
            "sample_interval": st.sample_interval,
            "log_interval": st.log_interval,
        }
        if r is not None:
            out["cpu_count"] = r.cpu_count
            out["memory_total_bytes"] = r.memory_total
            out["gpu"] = r.gpu_status
            if r.gpu is not None:
                out["gpus"] = list(r.gpu.devices)
        return out

    def _write_soon(self, st: _RunState) -> None:
        if st.writer is None or st.writer.done():
            st.writer = asyncio.get_running_loop().create_task(self._write(st), name=f"sysmetrics-{st.stream.run_id}")

    async def _write(self, st: _RunState) -> None:
        # one write at a time per run: rows that come meanwhile go into the next transaction
        while st.pending or st.meta:
            rows, st.pending = st.pending, []
            meta, st.meta = st.meta, None
            try:
                await st.stream.write_system(self.host, rows, metadata=meta)
            except Exception:
                log.exception(
                    "run %s: storing %d rows of system metrics failed; they are dropped", st.stream.run_id, len(rows)
                )

    # -- reporting -------------------------------------------------------------------------------

    def status(self) -> dict:
        r = self._reader
        return {
            "enabled": self.enabled,
            "host": self.host,
            "sample_interval": self.sample_interval,
            "log_interval": self.log_interval,
            "runs": sum(1 for st in self._runs.values() if not st.off),
            "samples": self.samples,
            "mean_sample_us": round(self.cost_us / self.samples, 1) if self.samples else None,
            # None until the first run is sampled (NVML is started lazily)
            "gpu": r.gpu_status if r is not None else None,
            "error": self._reader_error,
        }
