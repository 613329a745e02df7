"""GPUs through NVML (``pynvml``): utilization, memory, temperature, power per device, and which
processes use which device. NVML is loaded once, on first use; a host without it has no GPU
metrics, never an error."""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger("trackside.daemon")


def load_nvml():
    """The NVML binding (``import pynvml``, shipped by nvidia-ml-py). Raises ImportError."""
    with warnings.catch_warnings():
        # the deprecated ``pynvml`` wrapper distribution warns on import; the module is the same
        warnings.simplefilter("ignore", FutureWarning)
        import pynvml  # lazy: only a sampler that reads GPUs loads NVML, under the warnings filter above
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
