"""The peer servers of the serving benchmark: KServe's ModelServer and MLServer, each in its own venv.

kserve 0.21 and mlserver 1.7.1 pin incompatible starlette/fastapi versions, so each gets a virtual environment
under ``<cache>/bench-venvs/<name>/`` (``cache`` is ``RECWATCH_CACHE``, default ``~/.cache/recwatch``), created
once with pinned versions and reused while its marker file records the same pins. MLServer's workers
crash-loop with uvloop >= 0.22, hence ``uvloop==0.21.*``.

Each peer serves the same SavedModel through a small custom model class (``kserve_server.py``,
``mlserver_model.py`` beside this file), bound to 127.0.0.1 only, pinned to one core with ``taskset``, and is
considered up once its readiness endpoint answers (bounded by a deadline). Each is driven over the protocol
that cost it the least CPU per request here: KServe over Open Inference Protocol (v2) gRPC with binary
``raw_input_contents``, MLServer over v2 REST (its gRPC path unpacks binary tensors into Python lists and
costs ~10 % more CPU per request). The other protocol of each is the ``kserve-rest`` / ``mlserver-grpc`` row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> pinned requirements. tensorflow-cpu loads the SavedModel inside the peer.
PEER_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "kserve": ("kserve==0.21.*", "tensorflow-cpu==2.21.*"),
    "mlserver": ("mlserver==1.7.1", "uvloop==0.21.*", "tensorflow-cpu==2.21.*"),
}
_MARKER = ".recwatch-bench-complete"


class PeerError(RuntimeError):
    """A peer's venv could not be built or its server did not come up; ``log`` names the log file."""

    def __init__(self, message: str, *, peer: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.peer = peer
        self.log = log


def venv_root(cache: Path) -> Path:
    return cache / "bench-venvs"


def venv_python(cache: Path, peer: str) -> Path:
    return venv_root(cache) / peer / "bin" / "python"


def ensure_venv(cache: Path, peer: str, *, python: str | None = None, log: Path | None = None) -> Path:
    """Create (once) the peer's venv with its pinned requirements; return its python. Idempotent.

    The marker file holds the requirement list; a venv whose marker differs (pins changed, or an install
    was interrupted) is rebuilt from scratch. pip's output goes to ``log`` (default: beside the venv).
    """
    requirements = PEER_REQUIREMENTS[peer]
    root = venv_root(cache) / peer
    marker = root / _MARKER
    wanted = "\n".join(requirements) + "\n"
    if marker.exists() and marker.read_text() == wanted and venv_python(cache, peer).exists():
        return venv_python(cache, peer)
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    log = log or venv_root(cache) / f"{peer}-install.log"
    base = python or str(getattr(sys, "_base_executable", None) or sys.executable)
    with open(log, "ab") as out:
        steps: list[list[str]] = [
            [base, "-m", "venv", str(root)],
            [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
            [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements],
        ]
        for argv in steps:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode:
                raise PeerError(f"{' '.join(argv[:6])} … failed; see {log}", peer=peer, log=log)
    marker.write_text(wanted)
    return venv_python(cache, peer)


@dataclass(frozen=True)
class PeerServer:
    """How to start one peer and reach it: ``grpc``/``http`` are host:port on 127.0.0.1."""

    name: str
    argv: tuple[str, ...]
    grpc: str
    http: str
    ready_url: str
    cwd: Path | None = None
    env: tuple[tuple[str, str], ...] = ()


def kserve_server(python: Path, model_dir: Path, model_name: str, *, http_port: int, grpc_port: int) -> PeerServer:
    """KServe ModelServer (one uvicorn worker, its gRPC server with the default 4 threads)."""
    argv = (
        str(python),
        str(HERE / "kserve_server.py"),
        "--model_dir",
        str(model_dir),
        "--model_name",
        model_name,
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        "--enable_latency_logging",
        "false",
    )
    return PeerServer(
        "kserve",
        argv,
        grpc=f"127.0.0.1:{grpc_port}",
        http=f"127.0.0.1:{http_port}",
        ready_url=f"http://127.0.0.1:{http_port}/v2/models/{model_name}/ready",
    )


def mlserver_server(
    python: Path,
    workdir: Path,
    model_dir: Path,
    model_name: str,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    parallel_workers: int = 0,
) -> PeerServer:
    """MLServer with ``settings.json`` and ``<model>/model-settings.json`` written under ``workdir``.

    ``parallel_workers=0`` runs inference in the server process itself; MLServer's default (1) sends every
    request to a worker process over a queue, which on one core only adds the hop (measured: slower).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": parallel_workers,
        "debug": False,
        "load_models_at_startup": True,
    }
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings_dir = workdir / model_name
    model_settings_dir.mkdir(exist_ok=True)
    (model_settings_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": model_name,
                "implementation": "mlserver_model.SavedModelRanker",
                "parameters": {"uri": str(model_dir)},
            },
            indent=2,
        )
    )
    (model_settings_dir / "mlserver_model.py").write_text((HERE / "mlserver_model.py").read_text())
    mlserver = python.parent / "mlserver"
    return PeerServer(
        "mlserver",
        (str(mlserver), "start", str(workdir)),
        grpc=f"127.0.0.1:{grpc_port}",
        http=f"127.0.0.1:{http_port}",
        ready_url=f"http://127.0.0.1:{http_port}/v2/models/{model_name}/ready",
        cwd=workdir,
        env=(("PYTHONPATH", str(model_settings_dir)),),
    )


if __name__ == "__main__":
    _cache = Path(os.environ.get("RECWATCH_CACHE") or Path.home() / ".cache" / "recwatch")
    for _peer in sys.argv[1:] or list(PEER_REQUIREMENTS):
        print(ensure_venv(_cache, _peer))
