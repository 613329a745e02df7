"""Names from peers never become paths outside their folder: artifact entry names, the file
paths in manifests, logged media paths, run ids, project names, uploaded file paths and
symlinks in artifact folders. The attacks come over the wire where they can: a real
``trackside server``, an attacker speaking its gRPC Upload API with the generated stubs, a
real daemon and its socket; the victim reads with the public ``Api``. Each attack is refused
where the name enters (with an error naming it, and what was logged before it kept) and again
where it would become a path (a store that holds such a name from elsewhere)."""

import hashlib
import json
import os
import socket
import sqlite3
import struct

import grpc
import msgspec
import pytest

import trackside
from trackside import _native as codec
from trackside.contracts import discovery
from trackside._native.constants import RECORD_EVENT
from trackside.artifacts import ArtifactNotFoundError
from trackside.store import Store
from trackside.proto.trackside.v1 import trackside_pb2 as pb
from trackside.proto.trackside.v1 import trackside_pb2_grpc as pb_grpc
from trackside.contracts.protocol import PROTOCOL_VERSION, Event, Hello, Refused, encode_event, pack, server_decoder

from conftest import run_script, wait_until

SECRET = b"the victim's secret\n"

# entry names that would lead Artifact.download out of its folder (or out of any folder on
# another system): climbing, absolute, Windows forms, NUL, empty and '.' parts
BAD_ENTRIES = [
    "../../../ESCAPED.txt",
    "a/../../../../ESCAPED.txt",
    "ABSOLUTE",  # replaced by an absolute path beside the download folder
    "..\\..\\..\\ESCAPED.txt",
    "C:\\ESCAPED.txt",
    "C:ESCAPED.txt",
    "ESCAPED.txt\x00.png",
    "./ESCAPED.txt",
    "a//ESCAPED.txt",
    "",
]


def _entry(name, tmp_path):
    return str(tmp_path / "victim" / "ESCAPED.txt") if name == "ABSOLUTE" else name


# -- a raw Upload client ---------------------------------------------------------------------------


class Attacker:
    """A token holder speaking the server's Upload API directly (no trackside client code)."""

    def __init__(self, server):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        self.stub = pb_grpc.UploadStub(self.channel)
        self.seq = 0

    def put(self, path, data):
        return self.stub.PutFile(
            iter([pb.FileChunk(path=path, data=data)]), timeout=20, metadata=(("trackside-file-size", str(len(data))),)
        )

    def put_content(self, data, ext="txt"):
        """Upload ``data`` where an honest client keeps an artifact file; returns its path."""
        digest = hashlib.sha256(data).hexdigest()
        path = f"artifacts/media/{digest[:2]}/{digest}.{ext}"
        self.put(path, data)
        return path, digest

    def row(self, step, values, rich=None):
        self.seq += 1
        payload = msgspec.msgpack.encode(rich) if rich is not None else None
        return codec.encode_batch(1, self.seq, [(step, True, 1_000_000 + step, values, payload)])

    def event(self, kind, data):
        self.seq += 1
        return codec.frame(RECORD_EVENT, encode_event(Event(1, self.seq, kind, data)))

    def append(self, run_id, records, info=None):
        return self.stub.Append(
            pb.UploadRequest(run_id=run_id, run_info=msgspec.msgpack.encode(info or {}), records=records), timeout=20
        )

    def close(self):
        self.channel.close()


def artifact_event(manifest, name="x"):
    return {
        "uid": hashlib.sha256(repr(manifest).encode()).hexdigest(),
        "name": name,
        "type": "data",
        "digest": hashlib.sha256(repr(manifest).encode()).hexdigest(),
        "manifest": manifest,
    }


def files_outside(top, inside):
    """Files under ``top`` that are not under ``inside``."""
    out = []
    for folder, _, files in os.walk(top):
        for f in files:
            path = os.path.join(folder, f)
            if os.path.commonpath([path, str(inside)]) != str(inside):
                out.append(path)
    return out


@pytest.fixture
def attack(servers, tmp_path):
    server = servers.start(tmp_path / "server")
    attacker = Attacker(server)
    try:
        yield server, attacker
    finally:
        attacker.close()


# -- artifact entry names --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_ENTRIES)
def test_an_artifact_entry_that_climbs_out_is_refused_by_the_server_and_never_downloaded(attack, tmp_path, bad):
    server, attacker = attack
    name = _entry(bad, tmp_path)
    path, digest = attacker.put_content(b"planted by the attacker\n")
    manifest = {name: {"kind": "file", "path": path, "sha256": digest, "size": 24}}
    with pytest.raises(grpc.RpcError) as e:
        attacker.append(
            "attacker1", [attacker.row(0, {"loss": 1.0}), attacker.event("artifact", artifact_event(manifest))]
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(name) in e.value.details() and "artifact entry name" in e.value.details()
    api = trackside.Api(server.url)
    # what came before the bad record is kept
    wait_until(lambda: api.run("attacker1").history_rows == 1)
    assert [r["loss"] for r in api.run("attacker1").history()] == [1.0]
    # another user downloads whatever is there: nothing lands outside the folder
    victim = tmp_path / "victim"
    dl = victim / "dl" / "a" / "b"
    dl.mkdir(parents=True)
    with pytest.raises(ArtifactNotFoundError):
        api.artifact("x:latest").download(str(dl))
    api.close()
    assert files_outside(victim, dl) == []
    assert not any("ESCAPED" in p for p in files_outside(tmp_path, tmp_path / "server"))


def _doctored_store(root, manifest_of):
    """A store holding an artifact ``x`` whose manifest was written by a trackside without the
    checks (or edited by hand): ``manifest_of(good_manifest)`` replaces the stored one."""
    data = b"planted\n"
    digest = hashlib.sha256(data).hexdigest()
    rel = f"artifacts/media/{digest[:2]}/{digest}.txt"
    os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
    with open(os.path.join(root, rel), "wb") as f:
        f.write(data)
    good = {"ok.txt": {"kind": "file", "path": rel, "sha256": digest, "size": len(data)}}
    with Store(root) as s:
        s.add_artifact("r1", artifact_event(good))
    conn = sqlite3.connect(os.path.join(root, "trackside.db"))
    conn.execute("UPDATE artifacts SET manifest = ?", (json.dumps(manifest_of(good)),))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("where", ["local", "server"])
@pytest.mark.parametrize(
    "bad", ["../../../ESCAPED.txt", "a/../../../../ESCAPED.txt", "..\\..\\ESCAPED.txt", "ESCAPED.txt\x00"]
)
def test_download_refuses_an_entry_that_climbs_out_of_a_store_that_holds_one(servers, tmp_path, where, bad):
    root = tmp_path / "store"
    _doctored_store(str(root), lambda good: {**good, bad: good["ok.txt"]})
    if where == "server":
        api = trackside.Api(servers.start(root).url)
    else:
        api = trackside.Api(str(root))
    victim = tmp_path / "victim"
    dl = victim / "dl" / "a" / "b"
    dl.mkdir(parents=True)
    art = api.artifact("x:latest")
    with pytest.raises(ValueError, match="artifact entry name") as e:
        art.download(str(dl))
    assert repr(bad) in str(e.value)
    api.close()
    assert files_outside(victim, dl) == []
    assert os.listdir(dl) == []  # checked before anything is written


@pytest.mark.parametrize(
    "bad", ["ABSOLUTE", "artifacts/../../secret.txt", "runs/../../secret.txt", "runs/r1/../../../secret.txt"]
)
def test_a_file_entry_path_outside_the_root_is_refused_and_never_read(attack, tmp_path, bad):
    server, attacker = attack
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    path = str(secret) if bad == "ABSOLUTE" else bad
    manifest = {"data.txt": {"kind": "file", "path": path, "sha256": hashlib.sha256(SECRET).hexdigest(), "size": 20}}
    with pytest.raises(grpc.RpcError) as e:
        attacker.append("attacker2", [attacker.event("artifact", artifact_event(manifest))])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and repr(path) in e.value.details()
    # a store that holds such a path (from elsewhere): reading the entry refuses
    root = tmp_path / "store"
    _doctored_store(str(root), lambda good: manifest)
    art = trackside.Api(str(root)).artifact("x:latest")
    with pytest.raises(ValueError, match="file path") as e:
        art.get_path("data.txt")
    assert repr(path) in str(e.value)
    dl = tmp_path / "victim"
    with pytest.raises(ValueError):
        art.download(str(dl))
    assert not dl.exists()  # nothing written


@pytest.mark.parametrize(
    "source,obj_path",
    [("..", "secret.txt"), ("artifacts", "../secret.txt"), ("ABSOLUTE", "secret.txt"), ("artifacts", "ABSOLUTE")],
)
def test_an_object_entry_whose_files_lead_out_is_refused_and_never_read(attack, tmp_path, source, obj_path):
    server, attacker = attack
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    source = str(tmp_path) if source == "ABSOLUTE" else source
    obj_path = str(secret) if obj_path == "ABSOLUTE" else obj_path
    manifest = {"page": {"kind": "object", "source": source, "obj": {"_type": "html-file", "path": obj_path}}}
    with pytest.raises(grpc.RpcError) as e:
        attacker.append("attacker3", [attacker.event("artifact", artifact_event(manifest))])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    root = tmp_path / "store"
    _doctored_store(str(root), lambda good: manifest)
    with pytest.raises(ValueError):
        trackside.Api(str(root)).artifact("x:latest").get("page")


# -- logged media paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "../../../secret.txt",
        "ABSOLUTE",
        "media/../../../../secret.txt",
        "media\\x",
        "wal/00000000000000000000.wal",
        "run.json",
    ],
)
def test_a_logged_media_path_that_leads_out_is_refused_by_the_server(attack, tmp_path, bad):
    server, attacker = attack
    path = str(tmp_path / "secret.txt") if bad == "ABSOLUTE" else bad
    with pytest.raises(grpc.RpcError) as e:
        attacker.append(
            "attacker4",
            [
                attacker.row(0, {"loss": 1.0}),
                attacker.row(1, {"loss": 0.5}, rich={"page": {"_type": "html-file", "path": path}}),
            ],
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(path) in e.value.details() and "'page'" in e.value.details()
    api = trackside.Api(server.url)
    wait_until(lambda: api.run("attacker4").history_rows == 1)  # the row before it is kept
    assert [r["loss"] for r in api.run("attacker4").history()] == [1.0]
    api.close()


@pytest.mark.parametrize("where", ["local", "server"])
@pytest.mark.parametrize("bad", ["../../../secret.txt", "ABSOLUTE", "media/../../../../secret.txt"])
def test_a_media_path_that_leads_out_of_a_store_that_holds_one_is_never_read(servers, tmp_path, where, bad):
    from conftest import T0, Row

    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    path = str(secret) if bad == "ABSOLUTE" else bad
    root = tmp_path / "store"
    with Store(root) as s:  # written by a trackside without the checks, or by hand
        s.apply("r1", rows=[Row(0, T0, {"loss": 1.0, "page": {"_type": "html-file", "path": path}})])
    if where == "server":
        api = trackside.Api(servers.start(root).url)
    else:
        api = trackside.Api(str(root))
    run = api.run("r1")
    with pytest.raises(ValueError, match="invalid") as e:
        run.media("page", step=0)
    asked = path if where == "local" else f"runs/r1/{path}"  # a server is asked for the file in the run's folder
    assert repr(asked) in str(e.value)
    assert [r["loss"] for r in run.history(keys=["loss"])] == [1.0]
    if where == "local":
        assert [f["path"] for f in run.media_files("page")] == [None]
    api.close()


# -- run ids and project names ---------------------------------------------------------------------

BAD_RUN_IDS = ["..", ".", "../x", "a/b", "/tmp/x", "a\\b", "x\x00", "x\n", "", "-x", "x" * 129]


@pytest.mark.parametrize("bad", BAD_RUN_IDS)
def test_a_run_id_that_is_a_path_is_refused_by_the_server(attack, tmp_path, bad):
    server, attacker = attack
    with pytest.raises(grpc.RpcError) as e:
        attacker.append(bad, [attacker.row(0, {"loss": 1.0})])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "invalid run id" in e.value.details()
    root = tmp_path / "server"
    assert sorted(os.listdir(root / "runs")) == []
    assert not (root / "wal").exists() and not (root / "run.json").exists()
    assert files_outside(tmp_path, root) == [str(p) for p in tmp_path.iterdir() if p.is_file()]


@pytest.mark.parametrize("bad", ["..", "x\n", "a/b", "x\x00"])
def test_a_run_id_that_is_a_path_is_refused_by_the_daemon_and_the_sdk(ts, bad):
    run = trackside.init(project="p")  # the daemon is up
    run.log({"a": 1})
    s = socket.socket(socket.AF_UNIX)
    s.connect(discovery.socket_path(ts.daemon_dir))
    s.settimeout(10)
    s.sendall(pack(Hello(PROTOCOL_VERSION, bad, 7, os.getpid(), 0, ts.root, {"project": "p"})))
    head = s.recv(4, socket.MSG_WAITALL)
    body = s.recv(struct.unpack("<I", head)[0], socket.MSG_WAITALL)
    msg = server_decoder.decode(body)
    s.close()
    assert isinstance(msg, Refused) and "invalid run id" in msg.reason and repr(bad) in msg.reason
    run.log({"a": 2})  # the live run goes on
    run.finish()
    with pytest.raises(trackside.UsageError, match="invalid run id"):
        trackside.init(id=bad)
    assert [r["a"] for r in trackside.Api(ts.root).run(run.id).history()] == [1, 2]
    assert sorted(os.listdir(os.path.join(ts.root, "runs"))) == [run.id]


@pytest.mark.parametrize("bad", ["a/b", "..\\x", "p\x00", "p\n", "", "p" * 129])
def test_a_project_name_is_checked_where_it_enters(ts, attack, monkeypatch, bad):
    server, attacker = attack
    with pytest.raises(grpc.RpcError) as e:
        attacker.append("attacker5", [attacker.row(0, {"loss": 1.0})], info={"project": bad})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "invalid project name" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        attacker.append("attacker6", [attacker.event("run", {"project": bad})])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and repr(bad) in e.value.details()
    s = socket.socket(socket.AF_UNIX)
    trackside.init(project="ok").finish()  # the daemon is up
    s.connect(discovery.socket_path(ts.daemon_dir))
    s.settimeout(10)
    s.sendall(pack(Hello(PROTOCOL_VERSION, "r1", 7, os.getpid(), 0, ts.root, {"project": bad})))
    head = s.recv(4, socket.MSG_WAITALL)
    msg = server_decoder.decode(s.recv(struct.unpack("<I", head)[0], socket.MSG_WAITALL))
    s.close()
    assert isinstance(msg, Refused) and "invalid project name" in msg.reason
    if bad:  # init(project="") takes the default project
        with pytest.raises(trackside.UsageError, match="invalid project name"):
            trackside.init(project=bad)
    if bad and "\x00" not in bad:  # an environment holds no NUL
        monkeypatch.setenv("TRACKSIDE_PROJECT", bad)
        with pytest.raises(trackside.UsageError, match="invalid project name"):
            trackside.init()


# -- uploaded file paths ---------------------------------------------------------------------------

BAD_FILE_PATHS = [
    "../ESCAPED.txt",
    "runs/../../ESCAPED.txt",
    "runs/r1/../../../ESCAPED.txt",
    "ABSOLUTE",
    "runs/r1/..\\..\\..\\ESCAPED.txt",
    "C:\\ESCAPED.txt",
    "runs/r1/ESCAPED\x00.txt",
    "runs/../ESCAPED.txt",
    "runs/r1/wal/00000000000000000000.wal",
    "runs/r1/run.json",
    "ESCAPED.txt",
    "artifacts",
    "runs/r1/./x",
]


@pytest.mark.parametrize("bad", BAD_FILE_PATHS)
def test_an_uploaded_or_fetched_file_path_that_leads_out_is_refused(attack, tmp_path, bad):
    server, attacker = attack
    path = str(tmp_path / "ESCAPED.txt") if bad == "ABSOLUTE" else bad
    with pytest.raises(grpc.RpcError) as e:
        attacker.put(path, b"x")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        attacker.stub.MissingFiles(pb.MissingFilesRequest(paths=[path]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    read = pb_grpc.ReadStub(attacker.channel)
    with pytest.raises(grpc.RpcError) as e:
        list(read.GetFile(pb.FileRequest(path=path), timeout=10))
    assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert not any("ESCAPED" in p for p in files_outside(tmp_path, tmp_path / "server"))
    api = trackside.Api(server.url)
    with pytest.raises(ValueError):
        api.download(path, str(tmp_path / "victim" / "dl"))
    api.close()
    assert files_outside(tmp_path / "victim", tmp_path / "victim" / "dl") == []


# -- symlinks --------------------------------------------------------------------------------------


def test_a_symlink_in_an_artifact_folder_that_points_outside_is_refused(ts, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    folder = tmp_path / "dataset"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    os.symlink("../a.txt", folder / "sub" / "inside.txt")  # stays in the folder: kept
    art = trackside.Artifact("d", "dataset")
    assert sorted(art.add_dir(folder)) == ["a.txt", "sub/b.txt", "sub/inside.txt"]
    os.symlink(secret, folder / "sub" / "leak.txt")
    with pytest.raises(ValueError, match="leads out") as e:
        trackside.Artifact("d", "dataset").add_dir(folder)
    assert "leak.txt" in str(e.value)
    os.unlink(folder / "sub" / "leak.txt")
    os.symlink(tmp_path, folder / "sub" / "up")  # a folder outside
    with pytest.raises(ValueError, match="leads out"):
        trackside.Artifact("d", "dataset").add_dir(folder)
    os.unlink(folder / "sub" / "up")
    with trackside.init(project="p") as run:
        logged = run.log_artifact(art)
    dl = tmp_path / "dl"
    logged.download(dl)
    assert (dl / "sub" / "inside.txt").read_text() == "a"


TRAIN_WITH_A_LINK = """
import os, sys, trackside
run = trackside.init(project="p", settings={"upload_interval": 0.1, "system_metrics": False})
os.makedirs(os.path.join(run.dir, "media"), exist_ok=True)
os.symlink(sys.argv[1], os.path.join(run.dir, "media", "leak.txt"))
for i in range(5):
    run.log({"loss": float(i), "page": trackside.Html("<b>%d</b>" % i)})
run.finish()
print(run.id)
"""


def test_the_uploader_never_sends_a_symlink_that_leads_out_of_the_root(ts, servers, tmp_path):
    server = servers.start(tmp_path / "server")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    run_id = run_script(TRAIN_WITH_A_LINK, dict(ts.env, TRACKSIDE_SERVER=server.url), secret).stdout.split()[-1]
    api = trackside.Api(server.url)
    wait_until(lambda: api.run(run_id).history_rows == 5 and api.run(run_id).state == "finished", 30)
    assert len(api.run(run_id).media("page")) == 5  # the run's own files went
    api.close()
    for folder, _, files in os.walk(tmp_path / "server"):
        for f in files:
            with open(os.path.join(folder, f), "rb") as fh:
                assert fh.read() != SECRET, os.path.join(folder, f)


# -- names that are no paths -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a\\b", "../t", "/t", "t/", "C:t"])
def test_a_table_under_a_key_that_is_no_path_is_stored_and_read_back(ts, key):
    # a logged table is the artifact run-<id>-<key> with one object entry named by the key: no
    # file is ever written at that name, so the key needs no path rules
    table = trackside.Table(columns=["a"], data=[[1], [2]])
    with trackside.init(project="p") as run:
        run.log({key: table})
    assert trackside.Api(ts.root).run(run.id).table(key) == table


def test_sync_takes_only_run_folders_named_by_a_valid_run_id(ts, tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "trackside" / "runs" / "-x"
    (bad / "wal").mkdir(parents=True)
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "sync", str(bad), "--to", str(tmp_path / "other")],
        env=ts.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and "invalid run id '-x'" in p.stderr
    assert not (tmp_path / "other" / "runs" / "-x").exists()
