"""Regenerates the Python code for ``schemas/v1/*.proto`` (``make schemas``).

The generated ``*_pb2.py`` / ``*_pb2.pyi`` files are committed so that installing recwatch needs no protoc.
``tests/unit/test_schemas.py`` fails when they are out of date with the .proto files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path(__file__).resolve().parent / "v1"


# Read only by the store engine (ClickHouse ``FORMAT Protobuf`` resolves its ``import`` next to it), never by
# Python: no generated code.
ENGINE_ONLY = frozenset({"ingest.proto"})


def proto_files() -> list[Path]:
    return sorted(p for p in PROTO_DIR.glob("*.proto") if p.name not in ENGINE_ONLY)


def generate(out_dir: Path = ROOT) -> None:
    # A child process: grpc_tools' compiler deadlocks in a process that has TensorFlow loaded.
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(p.relative_to(ROOT)) for p in proto_files()),
    ]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"protoc failed: {done.stderr}")


if __name__ == "__main__":
    generate()
    sys.exit(0)
