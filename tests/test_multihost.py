"""Many processes on many hosts, one run: ranks on two hosts, each host with its own daemon and
run root, all uploading one run (`init(id=...)`) to one `trackside server`. The server reduces
each step across every rank of every host, closes the run as soon as the last rank finished,
and keeps both hosts' system metrics. Real daemons, server and training processes.

Each daemon gets a host of its own where the kernel allows it (root): a network namespace
(`ip netns`, its own network stack, a veth pair to the server's) and a UTS namespace (its own
host name). Elsewhere both daemons share this machine's network and name, which the writer ids
must survive anyway (and one test makes them share the name on purpose)."""

import json
import os
import socket
import subprocess
import sys
import time
import types

import pytest

import trackside
from trackside.contracts import discovery
from trackside.remote import UploadClient
from trackside.transport import daemon_status

from conftest import stop, wait_until

TRAIN = """
import json, os, sys, time, trackside
run_id, steps, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rank = int(os.environ["RANK"])
run = trackside.init(project="multi", id=None if run_id == "-" else run_id, group="ddp",
                     config={"lr": 0.1, "rank_seen": rank},
                     settings={"upload_interval": 0.2, "system_sample_interval": 0.1, "system_log_interval": 0.5})
run.define_metric("t", reduce="sum")
run.define_metric("loss", reduce="mean")
run.define_metric("top", reduce="max")
for i in range(steps):
    run.log({"t": 1.0, "loss": (rank + 1) * 0.25 + i, "top": float(rank * 1000 + i)}, step=i)
    time.sleep(pause)
run.finish()
print(json.dumps({"pid": os.getpid(), "rank": rank, "finished_at": time.time()}), flush=True)
"""


def _works(*cmd) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


UTS = _works("unshare", "--uts", "true")
NETNS = UTS and _works("ip", "netns", "list")
TOKEN = "multihost-test-token"


def _netns_up(name: str, idx: int) -> tuple[list, str, str]:
    """A network namespace joined to this one by a veth pair; returns the commands that remove
    it, the address of this side (where the namespace reaches the server) and its name."""
    tag = f"{os.getpid() % 100000}{name}"
    ns, veth, peer = f"tsmh{tag}", f"tv{tag}", f"tv{tag}p"
    subnet = f"10.{240 + idx}.{os.getpid() % 250}"
    undo = [["ip", "link", "del", veth], ["ip", "netns", "del", ns]]
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", peer],
        ["ip", "link", "set", peer, "netns", ns],
        ["ip", "addr", "add", f"{subnet}.1/24", "dev", veth],
        ["ip", "link", "set", veth, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{subnet}.2/24", "dev", peer],
        ["ip", "netns", "exec", ns, "ip", "link", "set", peer, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    for i, cmd in enumerate(steps):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        if p.returncode:
            for u in undo[: 1 if i >= 2 else 0] + undo[1:]:
                subprocess.run(u, capture_output=True, timeout=10)
            raise AssertionError(f"{' '.join(cmd)} failed: {p.stderr}")
    return undo, f"{subnet}.1", ns


@pytest.fixture
def hosts(tmp_path, monkeypatch, servers):
    """Hosts, each with its own daemon, daemon folder and run root (``hosts.start(name,
    own_hostname=)``), and the server they all upload to (``hosts.server()``). Where this runs
    as root, a host is a network namespace (its own network stack, joined to this one by a
    veth pair: the server listens on every address, with a token) and a UTS namespace (its own
    host name). Every daemon is stopped by its pid and every namespace removed after the test."""
    for k in ("TRACKSIDE_RUN_ID", "RANK", "LOCAL_RANK", "WORLD_SIZE", "TRACKSIDE_SERVER", "TRACKSIDE_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    started, undo = [], []
    state = types.SimpleNamespace(server=None)

    def server(*args):
        if NETNS:
            monkeypatch.setenv("TRACKSIDE_TOKEN", TOKEN)  # for reading back
            state.server = servers.start(
                tmp_path / "server",
                "--host",
                "0.0.0.0",
                "--token",
                TOKEN,
                *args,
                env=dict(os.environ, TRACKSIDE_TOKEN=TOKEN),
            )
        else:
            state.server = servers.start(tmp_path / "server", *args)
        return state.server

    def restart_server():
        stop(state.server.proc)
        return server("--port", str(state.server.port))

    def start(name, own_hostname=True):
        base = tmp_path / name
        daemon_dir, root = base / "daemon", base / "trackside"
        daemon_dir.mkdir(parents=True)
        cmd = [sys.executable, "-m", "trackside.daemon", "--dir", str(daemon_dir), "--idle-timeout", "120"]
        hostname, address = socket.gethostname(), "127.0.0.1"
        if own_hostname and UTS:
            hostname = f"node-{name}"
            cmd = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *cmd]
        if own_hostname and NETNS:
            steps, address, ns = _netns_up(name, len(started))
            undo.extend(steps)
            cmd = ["ip", "netns", "exec", ns, *cmd]
        log = open(base / "daemon.out", "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSIDE_")}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        started.append(proc)
        wait_until(
            lambda: (discovery.read_info(str(daemon_dir)) or {}).get("pid") == proc.pid or proc.poll() is not None, 20
        )
        assert proc.poll() is None, (base / "daemon.out").read_text()
        env = dict(
            os.environ,
            TRACKSIDE_DAEMON_DIR=str(daemon_dir),
            TRACKSIDE_DIR=str(root),
            TRACKSIDE_SERVER=f"grpc://{address}:{state.server.port}",
        )
        return types.SimpleNamespace(
            name=name, hostname=hostname, proc=proc, daemon_dir=str(daemon_dir), root=str(root), env=env
        )

    try:
        yield types.SimpleNamespace(start=start, server=server, restart_server=restart_server)
    finally:
        for proc in started:
            stop(proc)
        for cmd in undo:
            subprocess.run(cmd, capture_output=True, timeout=10)


def start_ranks(host, run_id, ranks, world_size, steps, pause, by_env=False):
    """The ranks join by ``init(id=run_id)``, or (``by_env``) by TRACKSIDE_RUN_ID exported
    before the launcher started them."""
    procs = []
    for rank in ranks:
        env = dict(host.env, RANK=str(rank), LOCAL_RANK=str(rank % 2), WORLD_SIZE=str(world_size))
        if by_env:
            env["TRACKSIDE_RUN_ID"] = run_id
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", TRAIN, "-" if by_env else run_id, str(steps), str(pause)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish_ranks(procs) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def run_closed(url, run_id, hosts) -> bool:
    """The server stored the run's end and let its stream go; no daemon holds the run open."""
    if trackside.Api(url).run(run_id).state != "finished":
        return False
    client = UploadClient(url)
    try:
        if any(r["run_id"] == run_id for r in client.status()["runs"]):
            return False
    finally:
        client.close()
    return not any(
        r["run_id"] == run_id for h in hosts for r in daemon_status(discovery.read_info(h.daemon_dir)).get("runs", [])
    )


def two_hosts(hosts, steps=200, pause=0.01, own_hostnames=True, first=(0, 1), by_env=False):
    """Two hosts x two ranks logging one run into one server; host b starts after host a (as
    hosts do), host a runs ranks ``first``. Returns what the ranks reported, the
    run and the time the run was seen closed."""
    server = hosts.server()
    a = hosts.start("a", own_hostname=own_hostnames)
    b = hosts.start("b", own_hostname=own_hostnames)
    run_id = "shared-run"
    procs = start_ranks(a, run_id, first, 4, steps, pause, by_env)
    # host b's ranks start once the server has stored host a's first steps: rows made final
    # before the server knew of host b's ranks
    wait_until(lambda: trackside.Api(server.url).run(run_id).history_rows > 0)
    procs += start_ranks(b, run_id, [k for k in range(4) if k not in first], 4, steps, pause, by_env)
    ranks = finish_ranks(procs)
    wait_until(lambda: run_closed(server.url, run_id, [a, b]), timeout=20)
    closed_at = time.time()
    return types.SimpleNamespace(
        server=server,
        a=a,
        b=b,
        run_id=run_id,
        ranks=ranks,
        closed_at=closed_at,
        run=trackside.Api(server.url).run(run_id),
    )


def test_ranks_on_two_hosts_are_reduced_across_hosts(hosts):
    steps = 200
    r = two_hosts(hosts, steps=steps)
    rows = r.run.history()
    assert [row["_step"] for row in rows] == list(range(steps))
    ranks = range(4)
    for row in rows:
        i = row["_step"]
        assert row["t"] == 4.0, row
        assert row["loss"] == pytest.approx(sum((k + 1) * 0.25 + i for k in ranks) / 4), row
        assert row["top"] == max(float(k * 1000 + i) for k in ranks), row


def test_an_uploading_run_closes_as_soon_as_its_last_rank_finished(hosts):
    """The hosts' system-metrics writers finish with the run: the server stores the run's end
    and lets its stream go, and each daemon lets the run go, without waiting for an idle time
    (30 s) that system rows every 0.5 s would keep putting off."""
    r = two_hosts(hosts, steps=100)
    last_finish = max(x["finished_at"] for x in r.ranks)
    print(f"closed {r.closed_at - last_finish:.2f} s after the last finish()")
    rows = r.run.system_metrics()
    assert rows
    assert all(row["_timestamp"] <= last_finish + 2.0 for row in rows)


def test_two_daemons_with_one_host_name_keep_both_hosts_system_metrics(hosts):
    """Containers and pods share host names: the system-metrics writers of two daemons on
    hosts of one name are still two writers, and the server keeps the rows of both (each
    daemon watches its own ranks, so each rank's process keys show up)."""
    r = two_hosts(hosts, steps=150, own_hostnames=False)
    rows = r.run.system_metrics()
    watched = {int(k.split("/")[2]) for row in rows for k in row if k.startswith("system/proc/")}
    assert {x["pid"] for x in r.ranks} <= watched
    assert {row["host"] for row in rows} == {socket.gethostname()}


def test_both_hosts_system_metrics_reach_the_server(hosts):
    r = two_hosts(hosts, steps=150)
    rows = r.run.system_metrics()
    watched = {int(k.split("/")[2]) for row in rows for k in row if k.startswith("system/proc/")}
    assert {x["pid"] for x in r.ranks} <= watched
    if UTS:
        assert {row["host"] for row in rows} == {r.a.hostname, r.b.hostname}


@pytest.mark.parametrize("by_env", [False, True], ids=["init-id", "exported-run-id"])
def test_ranks_joining_one_run_take_rank_0s_config_and_metadata(hosts, by_env):
    """Every rank calls init(project=, id=, group=, config=) alike (or the run id is exported
    before the launcher starts them); the run is rank 0's, though rank 0 starts last here."""
    r = two_hosts(hosts, steps=50, first=(2, 3), by_env=by_env)
    run = r.run
    assert run.project == "multi" and run.group == "ddp"
    assert run.config == {"lr": 0.1, "rank_seen": 0}
    rank0 = next(x for x in r.ranks if x["rank"] == 0)
    assert run.metadata["pid"] == rank0["pid"] and run.state == "finished"
    assert [row["t"] for row in run.history()] == [4.0] * 50


def test_a_process_started_by_rank_0_never_takes_the_run_over(ts, monkeypatch):
    """A data loader worker of rank 0 inherits RANK=0 and the exported run id: it joins the
    run as another writer, and the run keeps rank 0's config and metadata."""
    from conftest import run_script

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    run = trackside.init(project="p", config={"who": "rank 0"}, settings={"system_metrics": False})
    code = """
import os, trackside
run = trackside.init(project="p", config={"who": "worker"}, settings={"system_metrics": False})
run.log({"w": 1.0})
run.finish()
print(os.getpid())
"""
    worker = int(run_script(code, dict(os.environ)).stdout.split()[-1])
    run.log({"r": 1.0})
    run.finish()
    stored = trackside.Api(ts.root).run(run.id)
    assert stored.config == {"who": "rank 0"}
    assert stored.metadata["pid"] == os.getpid() != worker


def test_a_host_that_starts_after_the_other_finished_is_still_reduced(hosts):
    """The ranks announce the world's size: the server waits for all four to finish before it
    ends the run and lets it go, so host b's steps, late by a whole run, are still reduced."""
    server = hosts.server()
    a, b = hosts.start("a"), hosts.start("b")
    finish_ranks(start_ranks(a, "late-host", [0, 1], 4, 30, 0.0))
    api = trackside.Api(server.url)
    wait_until(
        lambda: (
            not any(
                x["run_id"] == "late-host" for x in daemon_status(discovery.read_info(a.daemon_dir)).get("runs", [])
            )
            and api.run("late-host").history_rows == 30
        )
    )
    assert api.run("late-host").state == "running"
    finish_ranks(start_ranks(b, "late-host", [2, 3], 4, 30, 0.0))
    wait_until(lambda: run_closed(server.url, "late-host", [a, b]))
    assert [row["t"] for row in api.run("late-host").history()] == [4.0] * 30


def test_a_server_restarted_between_the_hosts_still_ends_and_reduces_the_run(hosts):
    """What was stored before a server restart still counts: the ranks' announcements and
    finishes (the run ends once the other host's ranks finish after the restart) and their
    values (the other host's steps are reduced with them)."""
    server = hosts.server()
    a, b = hosts.start("a"), hosts.start("b")
    finish_ranks(start_ranks(a, "restart", [0, 1], 4, 30, 0.0))
    api = trackside.Api(server.url)
    wait_until(
        lambda: (
            not any(x["run_id"] == "restart" for x in daemon_status(discovery.read_info(a.daemon_dir)).get("runs", []))
            and api.run("restart").history_rows == 30
        )
    )
    server = hosts.restart_server()
    finish_ranks(start_ranks(b, "restart", [2, 3], 4, 30, 0.0))
    wait_until(lambda: run_closed(server.url, "restart", [a, b]))
    rows = trackside.Api(server.url).run("restart").history()
    assert [row["t"] for row in rows] == [4.0] * 30
    assert [row["loss"] for row in rows] == pytest.approx(
        [sum((k + 1) * 0.25 + i for k in range(4)) / 4 for i in range(30)]
    )


DDP_TRAIN = """
import json, os, sys, torch, torch.distributed as dist, trackside
from torch.nn.parallel import DistributedDataParallel as DDP
out_dir, run_id, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
run = trackside.init(project="ddp", id=run_id, config={"rank_seen": rank, "world": world},
                     settings={"upload_interval": 0.2, "system_sample_interval": 0.1, "system_log_interval": 0.5})
run.define_metric("loss", reduce="mean")
run.define_metric("rank_tokens", reduce="sum")
torch.manual_seed(rank)
model = DDP(torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
logged = []
for i in range(steps):
    x = torch.randn(16, 8)
    loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    loss.backward()  # gradients all-reduced across both nodes over gloo
    opt.step()
    logged.append(loss.item())
    run.log({"loss": logged[-1], "rank_tokens": 1.0}, step=i)
run.finish()
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump({"pid": os.getpid(), "loss": logged}, f)
dist.destroy_process_group()
"""


def test_a_torchrun_ddp_job_on_two_nodes_is_one_run(hosts, tmp_path):
    """torchrun, 2 nodes x 2 ranks, real DDP over gloo; each node's ranks log through that
    node's daemon to one server. Every step holds the mean loss and the summed tokens of all
    four ranks; the run is rank 0's and closes once all four finished."""
    pytest.importorskip("torch", reason="the torchrun test needs torch (pip install torch==2.13.0, the CPU build)")
    server = hosts.server()
    nodes = [hosts.start("a"), hosts.start("b")]
    script = tmp_path / "train_ddp.py"
    script.write_text(DDP_TRAIN)
    with socket.socket() as s:  # a free port for the rendezvous, on loopback (the nodes share it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps, procs = 40, []
    for node_rank, node in enumerate(nodes):
        env = dict(node.env, OMP_NUM_THREADS="1")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc-per-node",
            "2",
            "--node-rank",
            str(node_rank),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            str(script),
            str(tmp_path),
            "ddp-run",
            str(steps),
        ]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    logged = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(4)]
    wait_until(lambda: run_closed(server.url, "ddp-run", nodes), timeout=30)
    run = trackside.Api(server.url).run("ddp-run")
    rows = run.history()
    assert [row["_step"] for row in rows] == list(range(steps))
    for row in rows:
        i = row["_step"]
        assert row["rank_tokens"] == 4.0, row
        assert row["loss"] == pytest.approx(sum(x["loss"][i] for x in logged) / 4, rel=1e-6), row
    assert run.config == {"rank_seen": 0, "world": 4}
    watched = {int(k.split("/")[2]) for row in run.system_metrics() for k in row if k.startswith("system/proc/")}
    assert {x["pid"] for x in logged} <= watched
