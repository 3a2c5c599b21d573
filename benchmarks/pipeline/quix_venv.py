"""The Quix Streams peer's virtual environment, built once under ``<cache>/bench-venvs/quixstreams``.

quixstreams pins its own confluent-kafka (and pulls rocksdict, pydantic, …), so it gets a venv of its own, as
the serving benchmark's peers do (``benchmarks/serving/peers.py``): created with pinned versions and reused
while its marker file records the same pins; a venv whose marker differs (pins changed, or an install was
interrupted) is rebuilt from scratch. protobuf is pinned to the project's (the generated ``schemas/v1``
modules need >= 7.35); the app imports ``schemas`` from the work tree through ``PYTHONPATH``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

NAME = "quixstreams"
REQUIREMENTS: tuple[str, ...] = ("quixstreams==3.28.1", "protobuf==7.36.2")
_MARKER = ".recwatch-bench-complete"


class QuixVenvError(RuntimeError):
    """The venv could not be built; ``log`` has pip's output."""

    def __init__(self, message: str, log: Path) -> None:
        super().__init__(message)
        self.log = log


def venv_python(cache: Path) -> Path:
    return cache / "bench-venvs" / NAME / "bin" / "python"


def ensure_venv(cache: Path, *, python: str | None = None) -> Path:
    """Create (once) the venv with ``REQUIREMENTS``; return its python. Idempotent."""
    root = cache / "bench-venvs" / NAME
    marker = root / _MARKER
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if marker.exists() and marker.read_text() == wanted and venv_python(cache).exists():
        return venv_python(cache)
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    log = root.parent / f"{NAME}-install.log"
    base = python or str(getattr(sys, "_base_executable", None) or sys.executable)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    with open(log, "ab") as out:
        for argv in ([base, "-m", "venv", str(root)], [*pip, "--upgrade", "pip"], [*pip, *REQUIREMENTS]):
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode:
                raise QuixVenvError(f"{' '.join(argv[:6])} … failed; see {log}", log)
    marker.write_text(wanted)
    return venv_python(cache)


if __name__ == "__main__":
    import os

    print(ensure_venv(Path(os.environ.get("RECWATCH_CACHE") or Path.home() / ".cache" / "recwatch").absolute()))
