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

from .gpu import GpuReader, load_nvml, match_gpu_processes
from .host import Parts, Reader, Sample
from .sampler import Sampler
from .window import Window

__all__ = ["GpuReader", "Parts", "Reader", "Sample", "Sampler", "Window", "load_nvml", "match_gpu_processes"]
