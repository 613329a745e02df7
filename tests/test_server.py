"""`trackside server`: uploads stored exactly once, read back through trackside.Api("grpc://..."),
files, tokens, TLS, a server killed mid-run, bad records, health. Real server processes on
loopback, each stopped by its test."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import trackside
from trackside.artifacts import ArtifactNotFoundError
from trackside.cli import main as cli_main
from trackside.proto.trackside.v1 import trackside_pb2 as pb
from trackside.proto.trackside.v1 import trackside_pb2_grpc as pb_grpc
from trackside.remote import PermanentUploadError, RemoteApi, RemoteError, TransientUploadError, UploadClient

from conftest import run_script, stop, wait_until
from test_sink import synthetic_records, wal_records

INFO = {"project": "p", "settings": {"durability": "flush", "merge_window": 0.1}}


def log_a_run_with_media(ts):
    run = trackside.init(project="team", name="uploaded", config={"lr": 0.1}, tags=["a"])
    for i in range(60):
        data = {"loss": 1.0 / (i + 1), "acc": i / 60}
        if i % 20 == 0:
            data["img"] = trackside.Image(np.full((4, 5, 3), i, dtype=np.uint8), caption=f"step {i}")
        run.log(data)
    print("a line for the console")
    run.summary["best"] = 7
    run.finish()
    return run.id


def upload_run(client, root, run_id, batch=16):
    """What a daemon's uploader does: the run's files the server lacks, then its WAL records."""
    run_dir = os.path.join(root, "runs", run_id)
    files = [
        os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
        for d, _, names in os.walk(os.path.join(run_dir, "media"))
        for f in names
    ]
    for path in client.missing_files(files):
        client.put_file(path, os.path.join(root, path))
    records = wal_records(root, run_id)
    for i in range(0, len(records), batch):
        assert client.append(
            run_id, {"project": "team", "settings": {"durability": "flush"}}, records[i : i + batch]
        ) == (len(records[i : i + batch]), 0)
    return records


def test_an_uploaded_run_reads_back_through_api_url_as_stored_locally(ts, servers, tmp_path, capsys):
    run_id = log_a_run_with_media(ts)
    server = servers.start(tmp_path / "server")
    with UploadClient(server.url) as client:
        upload_run(client, ts.root, run_id)
    original = trackside.Api(ts.root).run(run_id)
    api = trackside.Api(server.url)
    assert isinstance(api, RemoteApi)
    wait_until(lambda: api.run(run_id).state == "finished" and api.run(run_id).history() == original.history())
    remote = api.run(run_id[:6])  # a unique prefix works too
    assert (remote.id, remote.project, remote.name, remote.tags) == (run_id, "team", "uploaded", ["a"])
    assert remote.config == {"lr": 0.1}
    assert remote.summary == original.summary and remote.summary["best"] == 7
    assert remote.keys() == original.keys()
    assert remote.history(keys=["loss"], min_step=10, max_step=20) == original.history(
        keys=["loss"], min_step=10, max_step=20
    )
    assert list(remote.scan_history(page_size=7)) == original.history()
    assert remote.history(samples=5) == original.history(samples=5)
    assert remote.history(pandas=True).equals(original.history(pandas=True))
    assert [line.text for line in remote.console_lines()] == [line.text for line in original.console_lines()]
    assert remote.console() == original.console()
    # the remote view mirrors the server's own store, field by field
    local = trackside.Api(server.root).run(run_id)
    for field in (
        "state",
        "exit_code",
        "created_at",
        "updated_at",
        "finished_at",
        "history_rows",
        "last_step",
        "metadata",
        "runtime",
    ):
        assert getattr(remote, field) == getattr(local, field), field
    assert remote.system_metrics() == local.system_metrics()
    assert [f["path"] for f in remote.media_files("img")] == [
        os.path.relpath(f["path"], server.root) for f in local.media_files("img")
    ]
    assert len(remote.media_files("img")) == 3
    assert remote.media("img") == original.media("img")
    assert remote.media("img", step=20) == original.media("img", step=20)
    assert [r.id for r in api.runs("team")] == [run_id] and api.runs("other") == []
    with pytest.raises(trackside.api.RunNotFoundError, match="nosuchrun"):
        api.run("nosuchrun")
    # the read CLI takes a server URL as its root
    capsys.readouterr()
    assert cli_main(["history", run_id, "--root", server.url, "--keys", "loss", "--format", "json"]) == 0
    assert [r["loss"] for r in json.loads(capsys.readouterr().out)] == [r["loss"] for r in original.history()]
    assert cli_main(["runs", "--root", server.url, "--format", "json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [run_id]
    assert stop(server.proc) == 0  # SIGTERM: a clean exit


def test_a_retried_batch_is_stored_once(servers, tmp_path):
    server = servers.start(tmp_path / "server")
    records = synthetic_records(50)
    client = UploadClient(server.url)
    assert client.append("r1", INFO, records[:30]) == (30, 0)
    assert client.append("r1", INFO, records[:30]) == (0, 30)  # the reply was lost: sent again
    assert client.append("r1", INFO, records[20:]) == (70, 10)
    api = trackside.Api(server.url)
    wait_until(lambda: api.run("r1").history_rows == 50)
    rows = api.run("r1").history()
    assert [r["_step"] for r in rows] == list(range(50))
    assert all(r["loss11"] == r["loss22"] == r["_step"] + 1 for r in rows)
    status = client.status()
    assert (status["records"], status["duplicates"]) == (100, 40)


def test_sigterm_stores_everything_acknowledged_before_exiting(servers, tmp_path):
    server = servers.start(tmp_path / "server")
    client = UploadClient(server.url)
    records = synthetic_records(300)
    for i in range(0, len(records), 100):
        client.append("r1", INFO, records[i : i + 100])
    assert stop(server.proc) == 0  # at once, while the rows may still be on their way to the store
    run = trackside.Api(server.root).run("r1")
    assert run.history_rows == 300 and [r["_step"] for r in run.history()] == list(range(300))


def test_a_server_killed_mid_run_stores_resent_batches_exactly_once(servers, tmp_path):
    root = tmp_path / "server"
    records = synthetic_records(200)
    batches = [records[i : i + 25] for i in range(0, len(records), 25)]
    server = servers.start(root)
    client = UploadClient(server.url)
    for batch in batches[:8]:
        client.append("r1", INFO, batch)
    os.kill(server.pid, signal.SIGKILL)  # acknowledged batches are durable: nothing lost
    server.proc.wait()
    with pytest.raises(TransientUploadError) as e:
        client.append("r1", INFO, batches[8])
    assert e.value.code == "UNAVAILABLE" and server.url in str(e.value)
    client.close()
    server = servers.start(root)
    client = UploadClient(server.url)
    totals = [0, 0]
    for batch in batches:  # the uploader does not know what arrived: it sends everything again
        stored, dup = client.append("r1", INFO, batch)
        totals[0] += stored
        totals[1] += dup
    assert totals == [200, 200]
    api = trackside.Api(server.url)
    wait_until(lambda: api.run("r1").history_rows == 200)
    rows = api.run("r1").history()
    assert [r["_step"] for r in rows] == list(range(200))
    assert all(r["loss11"] == r["loss22"] == r["_step"] + 1 for r in rows)


def test_a_non_loopback_bind_requires_a_token(servers, tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "TRACKSIDE_TOKEN"}
    refused = servers.start(tmp_path / "server", "--host", "0.0.0.0", env=env, expect_start=False)
    assert refused.proc.wait(10) == 2
    assert "without a token" in refused.output and "TRACKSIDE_TOKEN" in refused.output
    assert not os.path.exists(tmp_path / "server" / "trackside.db")  # refused before touching anything

    server = servers.start(tmp_path / "server", "--host", "0.0.0.0", env={**env, "TRACKSIDE_TOKEN": "s3cret"})
    records = synthetic_records(5)
    for token in (None, "wrong"):
        with pytest.raises(PermanentUploadError) as e:
            UploadClient(server.url, token=token).append("r1", INFO, records)
        assert e.value.code == "UNAUTHENTICATED" and "token" in str(e.value)
        with pytest.raises(RemoteError) as e:
            RemoteApi(server.url, token=token).runs()
        assert e.value.code == "UNAUTHENTICATED"
    assert UploadClient(server.url, token="s3cret").append("r1", INFO, records) == (10, 0)
    monkeypatch.setenv("TRACKSIDE_TOKEN", "s3cret")  # the variable stands in for the argument
    api = trackside.Api(server.url)
    wait_until(lambda: api.run("r1").history_rows == 5)


def test_trackside_server_command_refuses_a_public_address_without_a_token(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRACKSIDE_TOKEN", raising=False)
    assert cli_main(["server", "--root", str(tmp_path / "server"), "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err


def test_the_token_option_guards_a_loopback_server_too(servers, tmp_path):
    server = servers.start(tmp_path / "server", "--token", "t0k3n")
    with pytest.raises(PermanentUploadError, match="requires a token"):
        UploadClient(server.url).status()
    assert UploadClient(server.url, token="t0k3n").status()["records"] == 0


def test_tls_with_a_self_signed_certificate(servers, tmp_path, monkeypatch):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = servers.start(tmp_path / "server", "--tls-cert", str(cert), "--tls-key", str(key))
    url = f"grpcs://127.0.0.1:{server.port}"
    records = synthetic_records(5)
    assert UploadClient(url, ca=str(cert)).append("r1", INFO, records) == (10, 0)
    monkeypatch.setenv("TRACKSIDE_TLS_CA", str(cert))
    api = trackside.Api(f"grpcs://localhost:{server.port}")
    wait_until(lambda: api.run("r1").history_rows == 5)
    monkeypatch.delenv("TRACKSIDE_TLS_CA")
    with pytest.raises(TransientUploadError):  # the system's roots do not trust a self-signed certificate
        UploadClient(url, timeout=5).status()
    with pytest.raises(TransientUploadError):  # nor does a plain connection get through
        UploadClient(server.url, timeout=5).status()


def test_files_round_trip_and_paths_are_checked(servers, tmp_path):
    server = servers.start(tmp_path / "server")
    client = UploadClient(server.url)
    api = RemoteApi(server.url)
    data = os.urandom(2 * 1024 * 1024 + 123)  # three chunks
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    paths = ["runs/r1/media/ab/abc.bin", "artifacts/media/cd/cde.bin"]
    assert client.missing_files(paths) == paths
    assert client.put_file(paths[0], local) == len(data)
    assert client.missing_files(paths) == paths[1:]
    (tmp_path / "empty").write_bytes(b"")
    assert client.put_file(paths[1], tmp_path / "empty") == 0
    assert client.missing_files(paths) == []
    got = api.download(paths[0], tmp_path / "down")
    assert got == str(tmp_path / "down" / "runs" / "r1" / "media" / "ab" / "abc.bin")
    assert open(got, "rb").read() == data
    assert open(api.download(paths[1], tmp_path / "down"), "rb").read() == b""
    with pytest.raises(FileNotFoundError):
        api.download("runs/r1/media/nothing.bin", tmp_path / "down")
    for bad in ("../etc/passwd", "runs/r1/wal/00000000.wal", "trackside.db", "/etc/passwd"):
        with pytest.raises(PermanentUploadError) as e:
            client.put_file(bad, local)
        assert e.value.code == "INVALID_ARGUMENT"
        with pytest.raises(PermanentUploadError):
            client.missing_files([bad])
        if not bad.startswith(("/", "..")):
            with pytest.raises(ValueError):
                api.download(bad, tmp_path / "down")
    # one PutFile stream carries one file
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        chunks = [
            pb.FileChunk(path="runs/r1/media/x.bin", data=b"1"),
            pb.FileChunk(path="runs/r2/media/y.bin", data=b"2"),
        ]
        put = pb_grpc.UploadStub(channel).PutFile
        with pytest.raises(grpc.RpcError) as e:
            put(iter(chunks), timeout=10, metadata=[("trackside-file-size", "2")])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one file" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:  # a size to check the file against is required
            put(iter(chunks[:1]), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "trackside-file-size" in e.value.details()
    assert client.missing_files(["runs/r1/media/x.bin", "runs/r2/media/y.bin"]) == [
        "runs/r1/media/x.bin",
        "runs/r2/media/y.bin",
    ]


def test_a_file_cut_off_or_unlike_its_name_is_not_kept(servers, tmp_path):
    server = servers.start(tmp_path / "server")
    client = UploadClient(server.url)
    data = b"x" * 1000
    digest = hashlib.sha256(data).hexdigest()
    good, other = f"runs/r1/media/{digest[:2]}/{digest}.bin", f"runs/r1/media/00/{'0' * 64}.bin"
    (tmp_path / "f").write_bytes(data)
    with pytest.raises(PermanentUploadError, match="SHA-256"):
        client.put_file(other, tmp_path / "f")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        put = pb_grpc.UploadStub(channel).PutFile
        # fewer bytes than announced: a stream cut short
        with pytest.raises(grpc.RpcError) as e:
            put(
                iter([pb.FileChunk(path="runs/r1/media/a.bin", data=b"12")]),
                timeout=10,
                metadata=[("trackside-file-size", "3")],
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 of 3 bytes" in e.value.details()

        # a client that gives up mid-file: its half is not kept under the file's name. Proven
        # without sleeps by the server's partial file (.upload-*): there once the first half is
        # being written (then the client cancels), gone once the server dropped it
        def stalled():
            yield pb.FileChunk(path=good, data=data[:500])
            time.sleep(2)

        folder = os.path.join(server.root, "runs", "r1", "media", digest[:2])

        def partial() -> list:
            return [f for f in os.listdir(folder) if f.startswith(".upload-")] if os.path.isdir(folder) else []

        call = put.future(stalled(), timeout=10, metadata=[("trackside-file-size", "1000")])
        wait_until(lambda: partial())
        call.cancel()
    wait_until(lambda: not partial())
    assert client.missing_files([good, other, "runs/r1/media/a.bin"]) == [good, other, "runs/r1/media/a.bin"]
    assert client.put_file(good, tmp_path / "f") == 1000
    assert client.missing_files([good]) == []


def test_a_bad_record_is_refused_and_the_server_serves_on(servers, tmp_path):
    server = servers.start(tmp_path / "server")
    client = UploadClient(server.url)
    records = synthetic_records(10)
    broken = bytearray(records[3])
    broken[-1] ^= 0xFF
    with pytest.raises(PermanentUploadError) as e:
        client.append("r1", INFO, records[:3] + [bytes(broken)])
    assert e.value.code == "INVALID_ARGUMENT" and "checksum" in str(e.value) and "r1" in str(e.value)
    with pytest.raises(PermanentUploadError, match="run id"):
        client.append("../escape", INFO, records)
    assert client.append("r1", INFO, records) == (17, 3)  # the three before the bad one were kept
    assert client.append("r2", INFO, records) == (20, 0)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", "trackside.v1.Upload", "trackside.v1.Read"):
            assert (
                check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                == health_pb2.HealthCheckResponse.SERVING
            )


def test_only_the_read_calls_of_the_api_are_served(servers, tmp_path):
    server = servers.start(tmp_path / "server")
    api = RemoteApi(server.url)
    with pytest.raises(RemoteError) as e:
        api.query("close")
    assert e.value.code == "UNIMPLEMENTED" and "runs" in str(e.value)
    with pytest.raises(ValueError, match="bad arguments"):
        api.query("runs", project="p", sql="DROP TABLE runs")


def test_urls_are_checked():
    for bad in ("http://host:1", "grpc://", "grpc://host:port", "grpc://a b:1"):
        with pytest.raises(ValueError, match="grpc://HOST:PORT"):
            UploadClient(bad)
    assert UploadClient("grpc://[::1]:7311").url == "grpc://[::1]:7311"


# -- tables and artifacts read back through a server -----------------------------------------------

TABLES = """
import os, sys, numpy as np, trackside
folder = sys.argv[1]
run = trackside.init(project="team", name="tables", settings={"upload_interval": 0.2, "system_metrics": False})
images = [trackside.Image(np.full((4, 5, 3), i * 60, dtype=np.uint8), caption=f"img {i}") for i in range(3)]
preds = trackside.Table(columns=["id", "image", "score"], data=[[i, images[i], i / 4] for i in range(3)])
run.log({"preds": preds, "img": images[0], "loss": 0.5})
mutable = trackside.Table(columns=["epoch", "acc"], log_mode="MUTABLE")
incremental = trackside.Table(columns=["step", "label"], log_mode="INCREMENTAL")
for step in range(3):
    mutable.add_data(step, step / 10)
    for j in range(2):
        incremental.add_data(step, f"s{step}j{j}")
    run.log({"evals": mutable, "stream": incremental, "loss": 0.4 - step / 10}, step=step + 1)
run.summary["gradients"] = trackside.Histogram([1, 2, 2, 3, 3, 3])
run.log_artifact(folder, name="raw", type="dataset")
art = trackside.Artifact("dataset", type="dataset", description="a table and a file", metadata={"n": 3})
art.add(trackside.Table(columns=["x", "y"], data=[[1, "a"], [2, "b"]]), "split")
art.add_file(os.path.join(folder, "labels.csv"))
run.log_artifact(art, aliases=["best"])
run.finish()
print(run.id)
"""


def test_tables_and_artifacts_read_back_through_api_url_as_stored_locally(ts, servers, tmp_path, capsys):
    from test_upload import env_for

    server = servers.start(tmp_path / "server")
    folder = tmp_path / "raw"
    (folder / "sub").mkdir(parents=True)
    (folder / "labels.csv").write_text("id,label\n1,cat\n")
    (folder / "sub" / "notes.txt").write_text("notes")
    # a training process whose daemon uploads the run: no store on this side
    run_id = run_script(TABLES, env_for(ts, server.url), folder).stdout.split()[-1]
    api = RemoteApi(server.url, cache_dir=tmp_path / "cache")
    wait_until(lambda: api.run(run_id).state == "finished" and len(api.run(run_id).logged_artifacts()) == 9, 30)
    # the same WAL synced into a local root: what a local Api gives for the same run
    cli_main(["sync", os.path.join(ts.root, "runs", run_id), "--to", str(tmp_path / "copy"), "--quiet"])
    local = trackside.Api(tmp_path / "copy").run(run_id)
    remote = api.run(run_id)

    assert remote.table_keys() == local.table_keys() == ["evals", "preds", "stream"]
    for key in ("preds", "evals", "stream"):
        assert remote.table(key) == local.table(key), key
    assert remote.table("evals", version=1) == local.table("evals", version=1)
    assert remote.table("evals", version="v0").data == [[0, 0.0]]
    assert remote.table("stream", version=1) == local.table("stream", version=1)
    assert remote.table_increments("stream") == local.table_increments("stream")
    assert [(i.increment, i.step, len(i.table.data)) for i in remote.table_increments("stream")] == [
        (0, 1, 2),
        (1, 2, 2),
        (2, 3, 2),
    ]
    # rich values rebuilt as the objects logged, their files fetched from the server
    assert remote.history(objects=True) == local.history(objects=True)
    assert list(remote.scan_history(keys=["img"], objects=True)) == list(local.scan_history(keys=["img"], objects=True))
    assert remote.rebuild(remote.summary["gradients"]) == local.rebuild(local.summary["gradients"])
    assert remote.rebuild(3) == 3

    def described(a):
        return (
            a.name,
            a.version,
            a.type,
            a.description,
            a.metadata,
            a.aliases,
            a.digest,
            a.run_key,
            a.step,
            a.increment,
            a.entries,
        )

    assert [described(a) for a in remote.logged_artifacts()] == [described(a) for a in local.logged_artifacts()]
    local_api = trackside.Api(tmp_path / "copy")
    for spec in ("dataset:latest", "dataset:best", "raw:v0", f"run-{run_id}-stream:v1"):
        assert described(api.artifact(spec)) == described(local_api.artifact(spec)), spec
    dataset = api.artifact("dataset:best", type="dataset")
    assert dataset.get("split") == local_api.artifact("dataset:best").get("split")
    with open(dataset.get_path("labels.csv")) as f:
        assert f.read() == "id,label\n1,cat\n"
    assert dataset.get_path("labels.csv").startswith(api.cache_dir)
    raw = api.artifact("raw")
    assert sorted(raw.entries) == ["labels.csv", "sub/notes.txt"]
    out = raw.download(tmp_path / "down")
    assert (tmp_path / "down" / "sub" / "notes.txt").read_text() == "notes"
    assert out == str(tmp_path / "down")
    assert api.artifact(f"run-{run_id}-stream:v1").get("stream") == local.table("stream", version=1)
    with pytest.raises(ValueError, match="not 'model'"):
        api.artifact("dataset", type="model")
    with pytest.raises(ArtifactNotFoundError, match=r"no version 'v9'.*v0 to v2"):
        remote.table("evals", version=9)
    with pytest.raises(ArtifactNotFoundError, match=r"no table under 'nope'.*'evals'"):
        remote.table("nope")

    # the read CLI shows a server's table as a local one
    capsys.readouterr()
    assert cli_main(["table", run_id, "evals", "--root", server.url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"epoch": e, "acc": e / 10} for e in range(3)]

    # each file is fetched once: with the server gone, what was read reads again from the cache
    fetched = sorted(
        os.path.relpath(os.path.join(d, f), api.cache_dir) for d, _, names in os.walk(api.cache_dir) for f in names
    )
    assert len(fetched) == len(set(fetched)) and any(p.startswith("artifacts") for p in fetched)
    stop(server.proc)
    assert dataset.get("split") == local_api.artifact("dataset:best").get("split")
    assert raw.download(tmp_path / "again") == str(tmp_path / "again")
    api.close()
    assert os.path.isdir(tmp_path / "cache")  # a cache folder given is kept


def test_the_temporary_cache_folder_goes_with_the_api(ts, servers, tmp_path):
    run_id = log_a_run_with_media(ts)
    server = servers.start(tmp_path / "server")
    with UploadClient(server.url) as client:
        upload_run(client, ts.root, run_id)
    api = RemoteApi(server.url)
    wait_until(lambda: api.run(run_id).state == "finished")
    assert api.run(run_id).media("img", step=20) == trackside.Api(ts.root).run(run_id).media("img", step=20)
    cache = api.cache_dir
    assert os.listdir(cache)
    api.close()
    assert not os.path.exists(cache)


def test_a_run_not_found_names_the_run_and_the_server_never_its_path(servers, tmp_path):
    server = servers.start(tmp_path / "server")
    UploadClient(server.url).append("r1", INFO, synthetic_records(3))
    api = RemoteApi(server.url)
    wait_until(lambda: api.run("r1").history_rows == 3)
    for call in (
        lambda: api.run("nosuchrun"),
        lambda: api.query("keys", run_id="nosuchrun"),
        lambda: list(api.scan("history", run_id="nosuchrun")),
    ):
        with pytest.raises(trackside.api.RunNotFoundError) as e:
            call()
        message = str(e.value)
        assert "nosuchrun" in message and server.url in message, message
        assert server.root not in message and "trackside.db" not in message, message
    with pytest.raises(ArtifactNotFoundError) as e:
        api.artifact("nothing:v0")
    assert "nothing" in str(e.value) and server.url in str(e.value) and server.root not in str(e.value)


def test_the_cli_says_in_one_line_that_a_server_cannot_be_reached(capsys):
    assert cli_main(["runs", "--root", "grpc://127.0.0.1:1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("trackside: ") and "grpc://127.0.0.1:1" in line and "UNAVAILABLE" in line
