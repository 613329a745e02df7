"""Generate the Python modules of the wire protocol: ``python proto/generate.py``.

This is the one place that says how ``trackside.proto`` is made: grpcio-tools' protoc (pinned in
the ``test`` extra, since generated code changes with it) writes ``*_pb2.py``, ``*_pb2.pyi`` and
``*_pb2_grpc.py`` next to each ``.proto``. protoc writes absolute imports from the proto root
(``from trackside.v1 import ...``); inside the installed package they must be relative, so the
one import line is rewritten. ``tests/test_proto.py`` regenerates into a temporary folder and
fails when the committed files differ.
"""

from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent


def generate(out: pathlib.Path = ROOT) -> list[pathlib.Path]:
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted(p.relative_to(ROOT) for p in ROOT.rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + [str(p) for p in protos]) != 0:
        raise SystemExit("protoc failed")
    written = []
    for proto in protos:
        stem = out / proto.with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = stem.parent / (stem.name + suffix)
            text = path.read_text()
            # `from trackside.v1 import x_pb2 as ...` -> `from . import x_pb2 as ...`
            text = re.sub(r"^from trackside\.v1 import ", "from . import ", text, flags=re.M)
            path.write_text(text)
            written.append(path)
    return written


if __name__ == "__main__":
    for p in generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(p)
