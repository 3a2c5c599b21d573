"""``recwatch serve --replicas N``: N server processes (one GIL each) on ports ``port + 10 i``.

Clients spread load with gRPC's client-side round robin over the replicas' addresses::

    channel = grpc.insecure_channel(
        "ipv4:127.0.0.1:8500,127.0.0.1:8510",
        options=[("grpc.lb_policy_name", "round_robin")],
    )

Each replica has its own replica id (``<replica>-<i>``) in its events and in the ``x-recwatch-replica``
trailing metadata of every Predict answer. The supervisor restarts a replica that dies (after a short
back-off, at most ``max_restarts`` times) and forwards SIGTERM/SIGINT to all of them: each drains its
in-flight requests and flushes its event producer before exiting.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)

PORT_STRIDE = 10


@dataclass(frozen=True)
class ReplicaSpec:
    index: int
    argv: tuple[str, ...]


def replica_specs(
    base_argv: Sequence[str], *, replicas: int, port: int, rest_port: int | None, replica: str
) -> list[ReplicaSpec]:
    """The command line of each replica: ``base_argv`` plus its ports and replica id."""
    specs = []
    for i in range(replicas):
        argv = [*base_argv, "--port", str(port + PORT_STRIDE * i), "--replica", f"{replica}-{i}"]
        if rest_port is not None:
            argv += ["--rest_api_port", str(rest_port + PORT_STRIDE * i)]
        specs.append(ReplicaSpec(i, tuple(argv)))
    return specs


def round_robin_target(host: str, port: int, replicas: int) -> str:
    """The gRPC target that spreads calls over all replicas (use with lb_policy_name=round_robin)."""
    return "ipv4:" + ",".join(f"{host}:{port + PORT_STRIDE * i}" for i in range(replicas))


class Supervisor:
    """Runs the replicas until SIGTERM/SIGINT (or ``stop()``), restarting ones that die."""

    def __init__(
        self,
        specs: Sequence[ReplicaSpec],
        *,
        spawn: Callable[[ReplicaSpec], subprocess.Popen[bytes]] | None = None,
        max_restarts: int = 5,
        backoff_s: float = 1.0,
        grace_s: float = 30.0,
    ) -> None:
        self._specs = list(specs)
        self._spawn = spawn or (lambda spec: subprocess.Popen(list(spec.argv)))
        self._max_restarts = max_restarts
        self._backoff_s = backoff_s
        self._grace_s = grace_s
        self._stop = threading.Event()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, int] = {}

    def run(self) -> int:
        """Returns 0 after a clean stop, 1 if a replica kept dying."""
        previous = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                self._stop.set()

            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        failed = False
        try:
            for spec in self._specs:
                self._procs[spec.index] = self._spawn(spec)
            while not self._stop.wait(0.2):
                for spec in self._specs:
                    proc = self._procs[spec.index]
                    code = proc.poll()
                    if code is None:
                        continue
                    n = self.restarts.get(spec.index, 0)
                    if n >= self._max_restarts:
                        log.error("replica %d exited with %s %d times; giving up", spec.index, code, n + 1)
                        failed = True
                        self._stop.set()
                        break
                    log.warning("replica %d exited with %s; restarting", spec.index, code)
                    self.restarts[spec.index] = n + 1
                    time.sleep(self._backoff_s * (n + 1))
                    self._procs[spec.index] = self._spawn(spec)
        finally:
            self._terminate_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if failed else 0

    def stop(self) -> None:
        self._stop.set()

    def _terminate_all(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace_s
        for proc in self._procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
