"""The committed protocol modules match the .proto schema (proto/generate.py)."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "proto"


def test_generated_modules_are_current(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the test extra: pip install -e .[test]")
    spec = importlib.util.spec_from_file_location("generate", ROOT / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = gen.generate(tmp_path)
    assert fresh, "no .proto files found"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run python proto/generate.py"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python proto/generate.py"


def test_generated_modules_import():
    from trackside.proto.trackside.v1 import trackside_pb2, trackside_pb2_grpc

    batch = trackside_pb2.Batch(run_id="r", writer=1, seq=2, record=b"x")
    assert trackside_pb2.Batch.FromString(batch.SerializeToString()) == batch
    assert hasattr(trackside_pb2_grpc, "IngestStub")
