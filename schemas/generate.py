"""Regenerates the Python code for ``schemas/v1/*.proto`` (``make schemas``).

The generated ``*_pb2.py`` / ``*_pb2.pyi`` files are committed so that installing recwatch needs no protoc.
``tests/unit/test_schemas.py`` fails when they are out of date with the .proto files.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path(__file__).resolve().parent / "v1"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path = ROOT) -> None:
    from grpc_tools import protoc  # dev dependency, imported only here

    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(p.relative_to(ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate()
    sys.exit(0)
