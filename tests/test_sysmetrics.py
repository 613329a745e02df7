"""System metrics: the daemon's sampler with real psutil on real processes, the store and the
read-back, and the NVML reading code against a recorded fake of the pynvml calls (this machine
has no GPU; the fake is the only stand-in in these tests)."""

import json
import os
import sqlite3
import subprocess
import sys
import time
import types
from collections import Counter

import pytest

import trackside
from trackside.contracts import discovery
from trackside.store import DB_NAME, SCHEMA_VERSION, Store
from trackside.daemon.sysmetrics import GpuReader, Parts, Reader, Window, load_nvml, match_gpu_processes
from trackside.transport import daemon_status

from conftest import wait_until

SAMPLE, LOG = 0.1, 0.3
FAST = {"system_sample_interval": SAMPLE, "system_log_interval": LOG}
SLACK = 0.5  # seconds of scheduling delay a loaded test machine may add to a window's end


def rows_of(ts, run_id):
    try:
        with trackside.Api(ts.root) as api:
            return api.run(run_id).system_metrics()
    except (FileNotFoundError, KeyError):
        return []


def wait_for_row(ts, run_id, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        seen = rows_of(ts, run_id)
        for row in seen:
            if predicate(row):
                return row
        time.sleep(0.05)
    raise AssertionError(f"no system-metrics row matched within {timeout} s; {len(seen)} rows: {seen[-2:]}")


def metadata_of(ts, run_id) -> dict:
    with trackside.Api(ts.root) as api:
        return api.run(run_id).metadata


def daemon_log(ts) -> str:
    with open(os.path.join(ts.daemon_dir, "daemon.log")) as f:
        return f.read()


def status_of(ts) -> dict:
    return daemon_status(discovery.read_info(ts.daemon_dir))["system_metrics"]


def nvml_works() -> bool:
    try:
        nvml = load_nvml()
        nvml.nvmlInit()
    except Exception:
        return False
    nvml.nvmlShutdown()
    return True


# -- real processes --------------------------------------------------------------------------------

BURN = r"""
import os, sys, time, trackside
run = trackside.init(project="sys", settings=dict(system_sample_interval=0.1, system_log_interval=0.3))
blob = b"\x01" * (200 << 20)  # written byte by byte, so resident
print(run.id, os.getpid(), time.time(), flush=True)
deadline = time.time() + 30
while not os.path.exists(sys.argv[1]) and time.time() < deadline:
    pass  # burn one core
run.finish()
"""


def test_process_burning_cpu_and_memory_shows_it_within_two_log_intervals(ts):
    stop = ts.tmp / "stop"
    p = subprocess.Popen(
        [sys.executable, "-c", BURN, str(stop)], env=ts.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        run_id, pid, started = p.stdout.readline().split()
        cpu, rss = f"system/proc/{pid}/cpu_percent", f"system/proc/{pid}/rss_bytes"
        row = wait_for_row(ts, run_id, lambda r: r.get(cpu, 0) > 20 and r.get(rss, 0) > 200 << 20)
    finally:
        stop.touch()
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    # the first window that lies wholly after the burn began ends within two log intervals
    assert row["_timestamp"] - float(started) <= 2 * LOG + SLACK, (row["_timestamp"], started)
    assert row[cpu + "_max"] >= row[cpu] and row[rss + "_max"] >= row[rss]
    assert row[f"system/proc/{pid}/threads"] >= 1 and row[f"system/proc/{pid}/open_fds"] >= 3
    assert row[f"system/proc/{pid}/rank"] == 0
    assert row["host"] == os.uname().nodename
    # the host: CPU total and per core, load, memory and swap, disk I/O and the run root's usage, network
    cores = os.cpu_count()
    for key in [
        "system/cpu_percent",
        "system/cpu_percent_max",
        *(f"system/cpu/{i}/percent" for i in range(cores)),
        "system/load1",
        "system/memory/used_percent",
        "system/memory/used_bytes",
        "system/memory/total_bytes",
        "system/swap/used_bytes",
        "system/disk/used_percent",
        "system/disk/free_bytes",
        "system/network/sent_bytes_per_s",
        "system/network/recv_bytes",
    ]:
        assert key in row, key
    st = os.statvfs(ts.root)
    assert abs(row["system/disk/free_bytes"] - st.f_bavail * st.f_frsize) < 1 << 30
    assert 0 <= row["system/cpu_percent"] <= 100


CHILD = r"""
import os, sys, trackside
run = trackside.init()  # joins the parent's run (TRACKSIDE_RUN_ID)
print(os.getpid(), flush=True)
sys.stdin.readline()
run.finish()
"""


def start_child(ts):
    env = dict(os.environ, RANK="1")  # init exported the run id to the environment
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return child, int(child.stdout.readline())


def test_run_of_two_processes_shows_both(ts):
    run = trackside.init(project="sys", settings=FAST)
    child, child_pid = start_child(ts)
    try:
        me = os.getpid()
        row = wait_for_row(
            ts, run.id, lambda r: f"system/proc/{me}/rss_bytes" in r and f"system/proc/{child_pid}/rss_bytes" in r
        )
    finally:
        child.communicate(input="\n", timeout=30)
    assert row[f"system/proc/{me}/rank"] == 0 and row[f"system/proc/{child_pid}/rank"] == 1
    # the child is a training process of its own: it is not also counted as the parent's child
    assert row[f"system/proc/{child_pid}/rss_bytes"] > 10 << 20
    assert row[f"system/proc/{me}/children"] == 0
    run.finish()


def test_stopped_process_loses_its_keys_without_errors(ts):
    run = trackside.init(project="sys", settings=FAST)
    child, child_pid = start_child(ts)
    me = os.getpid()
    wait_for_row(ts, run.id, lambda r: f"system/proc/{child_pid}/rss_bytes" in r)
    child.communicate(input="\n", timeout=30)
    assert child.returncode == 0
    gone = time.time()
    wait_for_row(ts, run.id, lambda r: r["_timestamp"] > gone + 2 * LOG + SLACK)
    later = [r for r in rows_of(ts, run.id) if r["_timestamp"] > gone + LOG + SLACK]
    assert later and all(f"system/proc/{me}/rss_bytes" in r for r in later)
    assert not [k for r in later for k in r if k.startswith(f"system/proc/{child_pid}/")]
    assert status_of(ts)["error"] is None
    run.finish()
    text = daemon_log(ts)
    assert "Traceback" not in text and " ERROR " not in text, text


def test_without_nvml_the_gpu_is_reported_unavailable_once_with_the_reason(ts):
    if nvml_works():
        pytest.skip("this machine has a working NVIDIA driver")
    first = trackside.init(project="sys", settings=FAST)
    wait_for_row(ts, first.id, lambda r: True)
    second = trackside.init(project="sys", id="second", settings=FAST)  # a second live run, same daemon
    wait_for_row(ts, second.id, lambda r: True)
    for run in (first, second):
        gpu = metadata_of(ts, run.id)["system"]["gpu"]
        assert gpu.startswith("unavailable: ") and "NVIDIA driver" in gpu, gpu
    assert status_of(ts)["gpu"] == gpu
    assert daemon_log(ts).count("GPU metrics unavailable") == 1
    assert not any(k.startswith("system/gpu/") for r in rows_of(ts, first.id) for k in r)  # and the rest goes on
    second.finish()
    first.finish()


def test_run_setting_turns_system_metrics_off(ts):
    """Proves that a run with system_metrics=False gets no rows while a run beside it on the
    same daemon, with the same intervals and registered after it, gets them: the other run's
    second stored window shows that a window of this run would have ended too."""
    run = trackside.init(project="sys", settings={**FAST, "system_metrics": False})
    other = trackside.init(project="sys", id="other", settings=FAST)
    wait_until(lambda: len(rows_of(ts, other.id)) >= 2)
    assert status_of(ts)["runs"] == 1  # the sampler samples the other run only
    assert rows_of(ts, run.id) == []
    assert "system" not in metadata_of(ts, run.id)
    other.finish()
    run.finish()


def start_daemon(ts, *flags):
    os.makedirs(ts.daemon_dir, mode=0o700, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "trackside.daemon", "--dir", ts.daemon_dir, "--detach", *flags],
        env=ts.env,
        check=True,
        timeout=30,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while discovery.read_info(ts.daemon_dir) is None:
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.02)


def test_daemon_flags_set_the_default_intervals(ts):
    start_daemon(ts, "--sample-interval", str(SAMPLE), "--log-interval", str(LOG))
    run = trackside.init(project="sys")  # no interval settings: the daemon's
    wait_for_row(ts, run.id, lambda r: True, timeout=5 * LOG + 2)
    assert metadata_of(ts, run.id)["system"]["log_interval"] == LOG
    run.finish()


def test_daemon_flag_turns_system_metrics_off(ts):
    """Proves that --no-system-metrics samples nothing for a run that asks for a sample every
    0.1 s. No sleep: a sampler that runs is woken when a run's writer connects and samples at
    once, so once the run is live in the daemon (its writer connected, a record durable) the
    sampler's counters would have moved; they stay at 0, and the finished run (everything it
    had stored, a last partial window included) has no rows."""
    start_daemon(ts, "--no-system-metrics")
    run = trackside.init(project="sys", settings=FAST)
    run.log({"x": 1.0})
    run.flush()
    info = discovery.read_info(ts.daemon_dir)
    wait_until(lambda: any(r["writer_stats"] for r in daemon_status(info)["runs"]))
    status = status_of(ts)
    assert status["enabled"] is False
    assert status["samples"] == 0 and status["runs"] == 0
    run.finish()
    assert rows_of(ts, run.id) == []


def test_bad_interval_settings_are_refused_in_init(ts):
    with pytest.raises(trackside.UsageError, match="system_sample_interval"):
        trackside.init(settings={"system_sample_interval": 0})
    with pytest.raises(trackside.UsageError, match="shorter than system_sample_interval"):
        trackside.init(settings={"system_sample_interval": 2.0, "system_log_interval": 1.0})
    with pytest.raises(trackside.UsageError, match="system_metrics"):
        trackside.init(settings={"system_metrics": "yes"})


def test_history_system_on_the_command_line(ts, capsys):
    from trackside.cli import main

    run = trackside.init(project="sys", settings=FAST)
    wait_for_row(ts, run.id, lambda r: "system/cpu_percent" in r)
    run.finish()
    assert main(["history", run.id, "--system", "--format", "json", "--keys", "system/cpu_percent"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and set(rows[0]) == {"_timestamp", "host", "system/cpu_percent"}
    assert main(["history", run.id, "--system", "--format", "csv", "--keys", "system/memory/used_bytes"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "_timestamp,host,system/memory/used_bytes"
    assert main(["history", run.id, "--system", "--keys", "system/load1"]) == 0
    assert capsys.readouterr().out.split()[:3] == ["time", "host", "system/load1"]
    assert main(["history", run.id, "--system", "--min-step", "3"]) == 2
    assert "time axis" in capsys.readouterr().err


# -- the store -------------------------------------------------------------------------------------


def test_store_round_trip_by_time_and_host(tmp_path):
    with Store(tmp_path) as store:
        store.write_system_metrics("r", [(2_000_000, "b", {"system/x": 2.0}), (1_000_000, "a", {"system/x": 1.0})])
        store.apply("r", system=[(2_000_000, "a", {"system/x": 3.0, "system/y": 1})])
        store.write_system_metrics("r", [(1_000_000, "a", {"system/x": 1.5})])  # the same window again replaces it
        with trackside.Api(tmp_path) as api:
            view = api.run("r")
            assert view.system_metrics() == [
                {"_timestamp": 1.0, "host": "a", "system/x": 1.5},
                {"_timestamp": 2.0, "host": "a", "system/x": 3.0, "system/y": 1},
                {"_timestamp": 2.0, "host": "b", "system/x": 2.0},
            ]
            assert view.system_metrics(keys="system/y") == [{"_timestamp": 2.0, "host": "a", "system/y": 1}]
            assert [r["system/x"] for r in view.system_metrics(host="b")] == [2.0]


def test_store_of_version_1_gets_the_table_and_old_readers_read_nothing(tmp_path):
    with Store(tmp_path) as store:
        store.upsert_run("old", project="p")
    con = sqlite3.connect(tmp_path / DB_NAME)
    con.execute("DROP TABLE system_metrics")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with trackside.Api(tmp_path) as api:  # a reader of a store from before system metrics
        assert api.run("old").system_metrics() == []
    with Store(tmp_path) as store:  # the daemon migrates it
        store.write_system_metrics("old", [(1, "h", {"system/x": 1})])
    con = sqlite3.connect(tmp_path / DB_NAME)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    with trackside.Api(tmp_path) as api:
        assert api.run("old").system_metrics() == [{"_timestamp": 1e-6, "host": "h", "system/x": 1}]


# -- aggregation -----------------------------------------------------------------------------------


def test_window_keeps_mean_max_last_and_growth_since_the_run_began():
    base: dict = {}
    w = Window(0.0)
    for i, value in enumerate([10.0, 30.0, 20.0]):
        parts = Parts()
        parts.avg["g"] = value
        parts.mean["m"] = value
        parts.last["l"] = i
        parts.since["c"] = 1000 + i * 5
        w.add(parts, base)
    assert w.result() == {"g": 20.0, "g_max": 30.0, "m": 20.0, "l": 2, "c": 10}
    w2 = Window(0.0)
    parts = Parts()
    parts.since["c"] = 1100
    w2.add(parts, base)  # a later window of the same run: still counted from the run's start
    assert w2.result() == {"c": 100}


# -- NVML, against a recorded fake ------------------------------------------------------------------

# what pynvml returned on a two-GPU host: an H100 with everything, and a consumer card without
# power readings or ECC (NVML_ERROR_NOT_SUPPORTED)
H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-6f4c1f2e-5f1b-7b0e-2a9c-1d2e3f4a5b6c",
    "utilization": types.SimpleNamespace(gpu=87, memory=41),
    "memory": types.SimpleNamespace(total=85520809984, free=20480000000, used=65040809984),
    "temperature": 61,
    "power": 512345,
    "power_limit": 700000,
    "sm_clock": 1980,
    "memory_clock": 2619,
    "ecc_corrected": 0,
    "ecc_uncorrected": 0,
}
CONSUMER = {
    "name": b"NVIDIA GeForce RTX 3060",
    "uuid": b"GPU-0a1b2c3d-0000-1111-2222-333344445555",
    "utilization": types.SimpleNamespace(gpu=3, memory=1),
    "memory": types.SimpleNamespace(total=12884901888, free=12000000000, used=884901888),
    "temperature": 44,
    "power": "not supported",
    "power_limit": "not supported",
    "sm_clock": 210,
    "memory_clock": 405,
    "ecc_corrected": "not supported",
    "ecc_uncorrected": "not supported",
}


class FakeNVML:
    """The pynvml calls the reader makes, answering from recorded values. A value recorded as
    "not supported" raises pynvml.NVMLError_NotSupported, as NVML does on such a device;
    constants and error classes are pynvml's own."""

    def __init__(self, devices, processes=(), init_error=None):
        self._pynvml = load_nvml()
        self.devices = [dict(d) for d in devices]
        self.processes = {i: list(ps) for i, ps in dict(processes).items()}
        self.init_error = init_error
        self.calls = Counter()

    def __getattr__(self, name):
        return getattr(self._pynvml, name)

    def _get(self, handle, metric):
        self.calls[(handle, metric)] += 1
        value = self.devices[handle][metric]
        if isinstance(value, Exception):
            raise value
        if isinstance(value, str) and value == "not supported":
            raise self._pynvml.NVMLError_NotSupported()
        return value

    def nvmlInit(self):
        self.calls["init"] += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self):
        self.calls["shutdown"] += 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self._get(h, "name")

    def nvmlDeviceGetUUID(self, h):
        return self._get(h, "uuid")

    def nvmlDeviceGetUtilizationRates(self, h):
        return self._get(h, "utilization")

    def nvmlDeviceGetMemoryInfo(self, h):
        return self._get(h, "memory")

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self._pynvml.NVML_TEMPERATURE_GPU
        return self._get(h, "temperature")

    def nvmlDeviceGetPowerUsage(self, h):
        return self._get(h, "power")

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._get(h, "power_limit")

    def nvmlDeviceGetClockInfo(self, h, clock):
        p = self._pynvml
        return self._get(h, {p.NVML_CLOCK_SM: "sm_clock", p.NVML_CLOCK_MEM: "memory_clock"}[clock])

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter):
        p = self._pynvml
        assert counter == p.NVML_VOLATILE_ECC
        kind = {
            p.NVML_MEMORY_ERROR_TYPE_CORRECTED: "ecc_corrected",
            p.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: "ecc_uncorrected",
        }[error_type]
        return self._get(h, kind)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        self.calls[(h, "processes")] += 1
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.processes.get(h, ())]


def read_gpus(nvml):
    gpu = GpuReader(nvml)
    assert gpu.start() == len(nvml.devices)
    avg, last = {}, {}
    procs = gpu.read(avg, last)
    return gpu, avg, last, procs


def test_device_loop_reads_every_gpu_in_units():
    gpu, avg, last, _ = read_gpus(FakeNVML([H100, H100]))
    for i in (0, 1):
        g = f"system/gpu/{i}/"
        assert avg[g + "utilization_percent"] == 87 and avg[g + "memory_utilization_percent"] == 41
        assert avg[g + "memory_used_bytes"] == 65040809984 and last[g + "memory_total_bytes"] == 85520809984
        assert avg[g + "memory_used_percent"] == pytest.approx(76.05, abs=0.01)
        assert avg[g + "temperature_c"] == 61
        assert avg[g + "power_w"] == pytest.approx(512.345) and last[g + "power_limit_w"] == 700.0
        assert avg[g + "sm_clock_mhz"] == 1980 and avg[g + "memory_clock_mhz"] == 2619
        assert last[g + "ecc_corrected"] == 0 and last[g + "ecc_uncorrected"] == 0
    assert [d["name"] for d in gpu.devices] == ["NVIDIA H100 80GB HBM3"] * 2
    assert gpu.devices[0]["memory_total_bytes"] == 85520809984


def test_unsupported_metric_skips_that_metric_not_the_sample_and_is_not_asked_again():
    nvml = FakeNVML([H100, CONSUMER])
    gpu, avg, last, _ = read_gpus(nvml)
    assert "system/gpu/1/power_w" not in avg and "system/gpu/1/ecc_corrected" not in last
    assert avg["system/gpu/1/temperature_c"] == 44 and avg["system/gpu/1/sm_clock_mhz"] == 210
    assert avg["system/gpu/0/power_w"] == pytest.approx(512.345)
    assert gpu.devices[1]["name"] == "NVIDIA GeForce RTX 3060"  # bytes from older bindings read as text
    for _ in range(3):
        gpu.read({}, {})
    assert nvml.calls[(1, "power")] == 1 and nvml.calls[(1, "ecc_corrected")] == 1
    assert nvml.calls[(1, "temperature")] == 4


def test_a_failing_call_skips_that_value_once_and_is_tried_again():
    nvml = FakeNVML([H100])
    nvml.devices[0]["temperature"] = load_nvml().NVMLError_Unknown()
    gpu, avg, _, _ = read_gpus(nvml)
    assert "system/gpu/0/temperature_c" not in avg and avg["system/gpu/0/utilization_percent"] == 87
    nvml.devices[0]["temperature"] = 58
    avg = {}
    gpu.read(avg, {})
    assert avg["system/gpu/0/temperature_c"] == 58


def test_gpu_memory_of_each_training_process_goes_to_its_run():
    owner = {100: 100, 101: 100, 200: 200}  # 101 is a child of training process 100
    procs = [(0, 100, 1 << 30), (0, 101, 1 << 20), (1, 100, 5), (1, 200, 7 << 30), (1, 999, 3 << 30)]
    assert match_gpu_processes(procs, owner) == {100: {0: (1 << 30) + (1 << 20), 1: 5}, 200: {1: 7 << 30}}


PARENT = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
sys.stdin.readline()
child.kill()
"""


def test_reader_matches_gpu_processes_to_real_training_processes_and_their_children(tmp_path):
    trainer = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        worker = int(trainer.stdout.readline())  # e.g. a data-loader worker using the GPU
        nvml = FakeNVML(
            [H100, H100],
            processes={
                0: [(trainer.pid, 4 << 30), (worker, 1 << 30), (os.getpid(), 1 << 20)],
                1: [(other.pid, 2 << 30), (12345678, 9 << 30)],
            },
        )
        reader = Reader(lambda: nvml)
        sample = reader.read({trainer.pid, other.pid}, {str(tmp_path)})
        assert reader.gpu_status == "2 GPUs: NVIDIA H100 80GB HBM3, NVIDIA H100 80GB HBM3"
        t, o = sample.procs[trainer.pid].avg, sample.procs[other.pid].avg
        assert t[f"system/proc/{trainer.pid}/gpu/0/memory_used_bytes"] == 5 << 30
        assert o[f"system/proc/{other.pid}/gpu/1/memory_used_bytes"] == 2 << 30
        assert not [k for k in t if "/gpu/1/" in k] and not [k for k in o if "/gpu/0/" in k]
        assert sample.procs[trainer.pid].last[f"system/proc/{trainer.pid}/children"] == 1
        assert sample.host.avg["system/gpu/1/utilization_percent"] == 87
        reader.close()
        assert nvml.calls["init"] == 1 and nvml.calls["shutdown"] == 1
    finally:
        trainer.stdin.close()
        trainer.wait(timeout=30)
        other.kill()
        other.wait()


def test_nvml_that_cannot_start_is_reported_with_the_reason_and_the_rest_goes_on(tmp_path):
    nvml = FakeNVML([H100], init_error=load_nvml().NVMLError_DriverNotLoaded())
    reader = Reader(lambda: nvml)
    sample = reader.read({os.getpid()}, {str(tmp_path)})
    assert reader.gpu_status.startswith("unavailable: Driver Not Loaded"), reader.gpu_status
    assert "system/memory/used_bytes" in sample.host.avg and os.getpid() in sample.procs
    reader.read({os.getpid()}, {str(tmp_path)})
    assert nvml.calls["init"] == 1  # tried once per daemon, not per sample


def test_nvml_without_gpus_is_unavailable():
    nvml = FakeNVML([])
    reader = Reader(lambda: nvml)
    reader.read(set(), set())
    assert reader.gpu_status == "unavailable: NVML found no GPU it can read"
    assert nvml.calls["shutdown"] == 1


def test_missing_binding_is_unavailable_with_the_install_hint():
    def missing():
        raise ImportError("No module named 'pynvml'")

    reader = Reader(missing)
    reader.read(set(), set())
    assert reader.gpu_status.startswith("unavailable: pynvml is not installed") and "nvidia-ml-py" in reader.gpu_status
