"""One reading of the host: CPU, memory, disk, network (psutil) and the GPUs (``gpu``), for the
training processes a run watches and their children."""

from __future__ import annotations

import logging
import os
import time

import psutil

from .gpu import GpuReader, load_nvml, match_gpu_processes

log = logging.getLogger("trackside.daemon")

CHILDREN_EVERY = 2.0  # seconds between scans for a training process's children (a scan reads /proc/*/stat)


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
