"""System metrics (DESIGN §8): one sampler per daemon, shared by every live run.

The ``Sampler`` lives on the daemon's event loop. Every tick it hands the pids of the runs'
training processes to a ``Reader`` in its own worker thread (psutil and NVML calls block; the
loop never waits on them), adds the returned ``Sample`` to each run's ``Window`` and, every log
interval of that run, stores the window's aggregate as one ``system_metrics`` row of the run,
stamped with the time and the host name (so a multi-host run keeps each host's rows apart).

A sample holds:

- the host: CPU total and per core, load, memory and swap, disk and network I/O (host-wide), and
  the usage of each run root's filesystem;
- each training process of each run (a writer's ``Hello`` names its pid) with its children:
  CPU (percent of one core), RSS, threads, open file descriptors;
- each GPU through NVML (pynvml): utilization, memory, temperature, power and its limit, SM and
  memory clocks, ECC errors, and the GPU memory of each training process.

A window keeps, per key, the mean and the maximum (``<key>_max``) of gauges, only the mean of
the per-core CPU and of the available memory, the last value of slow or cumulative values
(load, totals, threads, ECC counts), and for the I/O counters the bytes since the run began. Without NVML (no driver, no GPU) the GPU part is
reported once, with the reason, and everything else goes on; an NVML call that fails for one
device and metric skips that value, not the sample.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import socket
import time
import warnings

log = logging.getLogger("trackside.daemon")

MIN_INTERVAL = 0.01  # seconds; a run asking for less would keep the daemon's worker busy
CHILDREN_EVERY = 2.0  # seconds between scans for a training process's children (a scan reads /proc/*/stat)
IDLE_POLL = 1.0  # seconds between looks for runs while none wants system metrics (writers also wake it)
CLOSE_TIMEOUT = 10.0  # seconds a closing run waits for its last rows to be stored


# -- NVML -----------------------------------------------------------------------------------------


def load_nvml():
    """The NVML binding (``import pynvml``, shipped by nvidia-ml-py). Raises ImportError."""
    with warnings.catch_warnings():
        # the deprecated ``pynvml`` wrapper distribution warns on import; the module is the same
        warnings.simplefilter("ignore", FutureWarning)
        import pynvml
    return pynvml


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class GpuReader:
    """Reads every GPU through ``nvml``: the pynvml module, or in tests an object with the same
    calls. Use from one thread. ``start`` raises the binding's NVMLError when NVML cannot start.

    A metric a device does not support (``NVMLError_NotSupported``) is skipped and not asked
    for again; any other failing call skips that value in this sample only (logged once)."""

    def __init__(self, nvml):
        self.nvml = nvml
        self.devices: list[dict] = []  # index, name, uuid, memory_total_bytes: the run's metadata
        self._handles: list[tuple] = []  # (index, handle, keys)
        self._skip: set[tuple[int, str]] = set()
        self._failing: set[tuple[int, str]] = set()
        self._started = False

    def start(self) -> int:
        """Initialize NVML and find the devices; returns how many can be read."""
        nvml = self.nvml
        nvml.nvmlInit()
        self._started = True
        try:
            count = nvml.nvmlDeviceGetCount()
            for i in range(count):
                try:
                    handle = nvml.nvmlDeviceGetHandleByIndex(i)
                except nvml.NVMLError as e:  # e.g. a device this container may not open
                    log.warning("GPU %d cannot be opened (%s): not sampled", i, e)
                    continue
                keys = {m: f"system/gpu/{i}/{m}" for m in _GPU_METRICS}
                self._handles.append((i, handle, keys))
                info = {"index": i}
                name = self._call(i, "name", nvml.nvmlDeviceGetName, handle)
                if name is not None:
                    info["name"] = _text(name)
                uuid = self._call(i, "uuid", nvml.nvmlDeviceGetUUID, handle)
                if uuid is not None:
                    info["uuid"] = _text(uuid)
                mem = self._call(i, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
                if mem is not None:
                    info["memory_total_bytes"] = int(mem.total)
                self.devices.append(info)
        except BaseException:
            self.close()
            raise
        return len(self._handles)

    def read(self, avg: dict, last: dict) -> list[tuple[int, int, int]]:
        """Add each device's values to ``avg`` (gauges: mean and max per window) and ``last``;
        return NVML's compute processes as ``(device index, pid, GPU memory bytes)``."""
        nvml = self.nvml
        call = self._call
        procs = []
        for i, h, k in self._handles:
            u = call(i, "utilization", nvml.nvmlDeviceGetUtilizationRates, h)
            if u is not None:
                avg[k["utilization_percent"]] = u.gpu
                avg[k["memory_utilization_percent"]] = u.memory
            m = call(i, "memory", nvml.nvmlDeviceGetMemoryInfo, h)
            if m is not None:
                avg[k["memory_used_bytes"]] = m.used
                last[k["memory_total_bytes"]] = m.total
                if m.total:
                    avg[k["memory_used_percent"]] = 100.0 * m.used / m.total
            v = call(i, "temperature", nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU)
            if v is not None:
                avg[k["temperature_c"]] = v
            v = call(i, "power", nvml.nvmlDeviceGetPowerUsage, h)
            if v is not None:
                avg[k["power_w"]] = v / 1000.0  # NVML says milliwatts
            v = call(i, "power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, h)
            if v is not None:
                last[k["power_limit_w"]] = v / 1000.0
            v = call(i, "sm_clock", nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM)
            if v is not None:
                avg[k["sm_clock_mhz"]] = v
            v = call(i, "memory_clock", nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM)
            if v is not None:
                avg[k["memory_clock_mhz"]] = v
            # volatile counts: since the driver last loaded, which is what a run can act on
            v = call(
                i,
                "ecc_corrected",
                nvml.nvmlDeviceGetTotalEccErrors,
                h,
                nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                nvml.NVML_VOLATILE_ECC,
            )
            if v is not None:
                last[k["ecc_corrected"]] = v
            v = call(
                i,
                "ecc_uncorrected",
                nvml.nvmlDeviceGetTotalEccErrors,
                h,
                nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                nvml.NVML_VOLATILE_ECC,
            )
            if v is not None:
                last[k["ecc_uncorrected"]] = v
            ps = call(i, "processes", nvml.nvmlDeviceGetComputeRunningProcesses, h)
            for p in ps or ():
                used = getattr(p, "usedGpuMemory", None)
                if used is not None:  # None: NVML cannot tell (e.g. Windows WDDM, some MIG setups)
                    procs.append((i, p.pid, int(used)))
        return procs

    def _call(self, i: int, metric: str, fn, *args):
        if (i, metric) in self._skip:
            return None
        try:
            value = fn(*args)
        except self.nvml.NVMLError_NotSupported:
            self._skip.add((i, metric))
            log.info("GPU %d does not support reading %s: not sampled", i, metric.replace("_", " "))
            return None
        except self.nvml.NVMLError as e:
            if (i, metric) not in self._failing:
                self._failing.add((i, metric))
                log.warning("GPU %d: reading %s failed (%s); skipped while it fails", i, metric.replace("_", " "), e)
            return None
        self._failing.discard((i, metric))
        return value

    def close(self) -> None:
        if self._started:
            self._started = False
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError as e:
                log.debug("nvmlShutdown: %s", e)


_GPU_METRICS = (
    "utilization_percent",
    "memory_utilization_percent",
    "memory_used_bytes",
    "memory_total_bytes",
    "memory_used_percent",
    "temperature_c",
    "power_w",
    "power_limit_w",
    "sm_clock_mhz",
    "memory_clock_mhz",
    "ecc_corrected",
    "ecc_uncorrected",
)


def match_gpu_processes(gpu_procs, owner: dict[int, int]) -> dict[int, dict[int, int]]:
    """GPU memory per training process: ``{training pid: {device index: bytes}}``.

    ``gpu_procs`` are NVML's compute processes ``(device, pid, bytes)``; ``owner`` maps each pid
    of a watched process tree (a training process and its children) to the training process's
    pid. A child's memory counts for its training process; pids of other programs are ignored.
    NVML names host pids: inside a container with its own pid namespace nothing matches."""
    out: dict[int, dict[int, int]] = {}
    for device, pid, used in gpu_procs:
        top = owner.get(pid)
        if top is not None:
            per = out.setdefault(top, {})
            per[device] = per.get(device, 0) + used
    return out


# -- one reading of the host ----------------------------------------------------------------------


class Parts:
    """Values of one sample by how a window aggregates them: ``avg`` (mean and max), ``mean``
    (mean only), ``last`` (the last value), ``since`` (counters: growth since the run began)."""

    __slots__ = ("avg", "mean", "last", "since")

    def __init__(self):
        self.avg: dict = {}
        self.mean: dict = {}
        self.last: dict = {}
        self.since: dict = {}


class Sample:
    __slots__ = ("time", "host", "roots", "procs", "cost_us")

    def __init__(self, t: float):
        self.time = t  # seconds since the epoch
        self.host = Parts()
        self.roots: dict[str, dict] = {}  # run root -> usage of its filesystem
        self.procs: dict[int, Parts] = {}  # training pid -> its keys (absent: the process is gone)
        self.cost_us = 0.0


class Reader:
    """Takes samples. Made and used in one worker thread; ``close`` shuts NVML down there too.

    ``nvml_loader`` returns the NVML binding (tests pass a fake); NVML is started at the first
    ``read`` and, when it cannot be, ``gpu_status`` says why (``"unavailable: <reason>"``)."""

    def __init__(self, nvml_loader=load_nvml):
        import psutil

        self._ps = psutil
        self._nvml_loader = nvml_loader
        self.gpu: GpuReader | None = None
        self.gpu_status: str | None = None  # None until NVML is tried
        self.cpu_count = psutil.cpu_count() or 0
        self.memory_total = psutil.virtual_memory().total
        self._procs: dict[int, object] = {}  # pid -> psutil.Process, kept so cpu_percent has a baseline
        self._tree: dict[int, list[int]] = {}  # training pid -> its children's pids
        self._tree_at: dict[int, float] = {}
        self._pkeys: dict[int, tuple] = {}
        self._core_keys: list[str] = []
        self._prev_io = None  # (monotonic, disk counters, net counters)
        self._failing: set[str] = set()
        self._cpu_ready = False  # psutil's first cpu_percent only sets its baseline

    # NVML ------------------------------------------------------------------------------------

    def start_gpu(self) -> None:
        if self.gpu_status is not None:
            return
        try:
            nvml = self._nvml_loader()
        except ImportError as e:
            return self._no_gpu(f"pynvml is not installed ({e}); pip install nvidia-ml-py")
        gpu = GpuReader(nvml)
        try:
            count = gpu.start()
        except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ... or a broken binding
            return self._no_gpu(f"{e} ({type(e).__name__}); GPU sampling needs an NVIDIA driver")
        if count == 0:
            gpu.close()
            return self._no_gpu("NVML found no GPU it can read")
        self.gpu = gpu
        self.gpu_status = f"{count} GPU{'s' if count > 1 else ''}: " + ", ".join(
            d.get("name", "?") for d in gpu.devices
        )
        log.info("system metrics: sampling %s through NVML", self.gpu_status)

    def _no_gpu(self, reason: str) -> None:
        self.gpu_status = f"unavailable: {reason}"
        log.info("system metrics: GPU metrics %s; CPU, memory, disk and network are sampled", self.gpu_status)

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()
            self.gpu = None

    # the sample ------------------------------------------------------------------------------

    def read(self, pids, roots) -> Sample:
        """One sample of the host, the training processes ``pids`` (each with its children)
        and the filesystems of ``roots``. Never raises for one failing source: that part is
        left out (and logged once)."""
        if self.gpu_status is None:
            self.start_gpu()  # once; not counted in the sample's cost
        t0 = time.perf_counter()
        ps = self._ps
        mono = time.monotonic()
        sample = Sample(time.time())
        host = sample.host
        avg, last = host.avg, host.last
        try:
            cores = ps.cpu_percent(percpu=True)
            if len(cores) != len(self._core_keys):
                self._core_keys = [f"system/cpu/{i}/percent" for i in range(len(cores))]
            if cores and self._cpu_ready:
                avg["system/cpu_percent"] = sum(cores) / len(cores)
                host.mean.update(zip(self._core_keys, cores))
            self._cpu_ready = True
        except Exception as e:
            self._failed("cpu", e)
        try:
            last["system/load1"], last["system/load5"], last["system/load15"] = os.getloadavg()
        except OSError as e:
            self._failed("load", e)
        try:
            vm = ps.virtual_memory()
            avg["system/memory/used_percent"] = vm.percent
            avg["system/memory/used_bytes"] = vm.used
            host.mean["system/memory/available_bytes"] = vm.available
            last["system/memory/total_bytes"] = vm.total
            sw = ps.swap_memory()
            avg["system/swap/used_percent"] = sw.percent
            avg["system/swap/used_bytes"] = sw.used
        except Exception as e:
            self._failed("memory", e)
        self._read_io(host, mono)
        for root in roots:
            try:
                st = os.statvfs(root)
            except OSError as e:
                self._failed(f"usage of {root}", e)
                continue
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            free = st.f_bavail * st.f_frsize  # what a non-root user can still write, as df shows
            sample.roots[root] = {
                "system/disk/used_percent": 100.0 * used / (used + free) if used + free else 0.0,
                "system/disk/used_bytes": used,
                "system/disk/free_bytes": free,
            }
        owner = self._read_procs(sample, set(pids), mono)
        if self.gpu is not None:
            try:
                gpu_procs = self.gpu.read(avg, last)
            except Exception as e:  # a binding bug must not cost the rest of the sample
                self._failed("gpu", e)
            else:
                for pid, per in match_gpu_processes(gpu_procs, owner).items():
                    parts = sample.procs.get(pid)
                    if parts is not None:
                        for device, used in per.items():
                            parts.avg[f"system/proc/{pid}/gpu/{device}/memory_used_bytes"] = used
        sample.cost_us = (time.perf_counter() - t0) * 1e6
        return sample

    def _read_io(self, host: Parts, mono: float) -> None:
        ps = self._ps
        try:
            disk = ps.disk_io_counters()  # None without disks (some containers)
        except Exception as e:
            disk = None
            self._failed("disk I/O", e)
        try:
            net = ps.net_io_counters()
        except Exception as e:
            net = None
            self._failed("network I/O", e)
        since, avg = host.since, host.avg
        if disk is not None:
            since["system/disk/read_bytes"] = disk.read_bytes
            since["system/disk/write_bytes"] = disk.write_bytes
        if net is not None:
            since["system/network/sent_bytes"] = net.bytes_sent
            since["system/network/recv_bytes"] = net.bytes_recv
        prev = self._prev_io
        self._prev_io = (mono, disk, net)
        if prev is None or mono <= prev[0]:
            return
        dt = mono - prev[0]
        if disk is not None and prev[1] is not None:
            avg["system/disk/read_bytes_per_s"] = max(0, disk.read_bytes - prev[1].read_bytes) / dt
            avg["system/disk/write_bytes_per_s"] = max(0, disk.write_bytes - prev[1].write_bytes) / dt
        if net is not None and prev[2] is not None:
            avg["system/network/sent_bytes_per_s"] = max(0, net.bytes_sent - prev[2].bytes_sent) / dt
            avg["system/network/recv_bytes_per_s"] = max(0, net.bytes_recv - prev[2].bytes_recv) / dt

    def _read_procs(self, sample: Sample, pids: set[int], mono: float) -> dict[int, int]:
        """Per training process (with its children, less those that are training processes
        themselves); returns the owner map of every pid read (pid -> training pid)."""
        ps = self._ps
        owner: dict[int, int] = {}
        stale = [p for p in self._tree if p not in pids]
        for p in stale:
            self._tree.pop(p, None)
            self._tree_at.pop(p, None)
            self._pkeys.pop(p, None)
        children_of = None
        for pid in pids:
            at = self._tree_at.get(pid)
            if at is None or mono - at >= CHILDREN_EVERY:
                if children_of is None:
                    children_of = self._children_map(pids)
                self._tree[pid] = _descendants(pid, pids, children_of)
                self._tree_at[pid] = mono
            fresh = pid not in self._procs
            cpu = 0.0
            rss = threads = fds = kids = 0
            alive = False
            for i, p in enumerate((pid, *self._tree[pid])):
                if i and p in pids:
                    continue  # became a training process since the last scan: it has keys of its own
                proc = self._procs.get(p)
                try:
                    if proc is None:
                        proc = self._procs[p] = ps.Process(p)
                    with proc.oneshot():
                        if proc.status() == ps.STATUS_ZOMBIE:  # exited, not yet reaped: gone
                            raise ps.NoSuchProcess(p)
                        c = proc.cpu_percent()
                        r = proc.memory_info().rss
                        t = proc.num_threads()
                        f = proc.num_fds()
                except (ps.NoSuchProcess, ps.AccessDenied):  # gone, or no longer ours to read
                    self._procs.pop(p, None)
                    continue
                except (ps.Error, OSError) as e:
                    self._procs.pop(p, None)
                    self._failed(f"process {p}", e)
                    continue
                cpu += c
                rss += r
                threads += t
                fds += f
                owner[p] = pid
                if i == 0:
                    alive = True
                else:
                    kids += 1
            if not alive:
                continue  # a training process that ended has no keys from now on
            keys = self._pkeys.get(pid)
            if keys is None:
                keys = self._pkeys[pid] = tuple(
                    f"system/proc/{pid}/{m}" for m in ("cpu_percent", "rss_bytes", "threads", "open_fds", "children")
                )
            parts = sample.procs[pid] = Parts()
            if not fresh:  # psutil's first cpu_percent of a process is 0.0: a baseline, not a value
                parts.avg[keys[0]] = cpu
            parts.avg[keys[1]] = rss
            parts.last[keys[2]] = threads
            parts.last[keys[3]] = fds
            parts.last[keys[4]] = kids
        keep = set(owner)
        for p in [p for p in self._procs if p not in keep]:
            del self._procs[p]
        return owner

    def _children_map(self, pids) -> dict[int, list[int]]:
        """parent pid -> child pids, for the whole host (one pass over /proc)."""
        ppid_map = getattr(self._ps, "_ppid_map", None)  # psutil's own one-pass map, where it has one
        out: dict[int, list[int]] = {}
        if ppid_map is not None:
            try:
                for child, parent in ppid_map().items():
                    out.setdefault(parent, []).append(child)
                return out
            except Exception:
                out.clear()
        for pid in pids:  # slower: one pass per training process
            try:
                for c in self._ps.Process(pid).children(recursive=True):
                    out.setdefault(c.ppid(), []).append(c.pid)
            except self._ps.Error:
                pass
        return out

    def _failed(self, what: str, error: Exception) -> None:
        if what not in self._failing:
            self._failing.add(what)
            log.warning("system metrics: reading %s failed (%s); left out while it fails", what, error)


def _descendants(pid: int, watched: set[int], children_of: dict[int, list[int]]) -> list[int]:
    """The pids below ``pid``, not descending into other training processes (they have keys
    of their own, and their children count for them)."""
    out = []
    stack = [pid]
    while stack:
        for c in children_of.get(stack.pop(), ()):
            if c not in watched and c != pid:
                out.append(c)
                stack.append(c)
    return out


# -- aggregation per run ----------------------------------------------------------------------------


class Window:
    """One run's samples since its last stored row."""

    __slots__ = ("start", "samples", "sums", "counts", "maxes", "last", "time")

    def __init__(self, start: float):
        self.start = start  # monotonic
        self.samples = 0
        self.sums: dict = {}
        self.counts: dict = {}
        self.maxes: dict = {}
        self.last: dict = {}
        self.time = 0.0  # wall time of the last sample

    def add(self, parts: Parts, base: dict) -> None:
        sums, counts, maxes = self.sums, self.counts, self.maxes
        for k, v in parts.avg.items():
            if k in sums:
                sums[k] += v
                counts[k] += 1
                if v > maxes[k]:
                    maxes[k] = v
            else:
                sums[k] = v
                counts[k] = 1
                maxes[k] = v
        for k, v in parts.mean.items():
            if k in sums:
                sums[k] += v
                counts[k] += 1
            else:
                sums[k] = v
                counts[k] = 1
        self.last.update(parts.last)
        for k, v in parts.since.items():
            b = base.get(k)
            if b is None or v < b:  # first value, or the counter was reset
                base[k] = b = v
            self.last[k] = v - b

    def result(self) -> dict:
        counts = self.counts
        out = {k: s / counts[k] for k, s in self.sums.items()}
        for k, m in self.maxes.items():
            out[k + "_max"] = m
        out.update(self.last)
        return out


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
