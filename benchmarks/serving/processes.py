"""Server processes of the benchmark: started pinned to a core, polled until ready, stopped by their own id.

Each server runs in its own session (its process group id is its pid), so stopping it signals that group —
which also reaches worker processes a server forks (MLServer) — and nothing else. CPU time is read from
``/proc`` for every process of the group, so a server's CPU per request includes its workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


class ServerStartError(RuntimeError):
    """A server exited or did not answer its readiness check before the deadline; ``log`` has its output."""

    def __init__(self, name: str, reason: str, log: Path) -> None:
        super().__init__(f"{name}: {reason}; see {log}")
        self.name, self.reason, self.log = name, reason, log


@dataclass
class ServerProcess:
    name: str
    popen: subprocess.Popen[Any]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU of every live process in this server's process group."""
        return sum(cpu_of(pid) for pid in _group_members(self.pid))

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout_s``; reap the leader."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout_s)
        # Workers may outlive their leader (MLServer's pool): the group id stays valid while any is alive.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def start(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    cpus: str | None = "0",
    nice: int = 0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """Start ``argv`` in a new session, pinned with ``taskset -c cpus`` (None: not pinned) at niceness
    ``nice`` (negative needs root), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full = pinned(argv, cpus, nice)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    return ServerProcess(name, popen, log)


def pinned(argv: Sequence[str], cpus: str | None, nice: int = 0) -> list[str]:
    """``argv`` prefixed with ``nice -n`` (when not 0) and ``taskset -c`` (when ``cpus`` is given)."""
    full = list(argv)
    if cpus is not None:
        full = ["taskset", "-c", cpus, *full]
    if nice:
        full = ["nice", "-n", str(nice), *full]
    return full


def wait_ready(server: ServerProcess, ready: Callable[[], bool], *, deadline_s: float = 120.0) -> float:
    """Poll ``ready()`` every 0.2 s until it returns True; return the seconds it took.

    Raises ServerStartError if the process exits first or ``deadline_s`` passes (the server is then stopped).
    """
    began = time.monotonic()
    while True:
        if not server.alive():
            raise ServerStartError(server.name, f"exited with code {server.popen.returncode}", server.log)
        with contextlib.suppress(Exception):
            if ready():
                return time.monotonic() - began
        if time.monotonic() - began > deadline_s:
            server.stop()
            raise ServerStartError(server.name, f"not ready after {deadline_s:.0f} s", server.log)
        time.sleep(0.2)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick); the server binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # loopback URLs only
        return bool(answer.status == 200)


def core_busy_seconds(cpu: int) -> float:
    """Non-idle time of one core since boot, from /proc/stat (user+nice+system+irq+softirq+steal)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            fields = [int(v) for v in line.split()[1:]]
            busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
            return busy / _TICKS
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5: process group
            members.append(int(entry.name))
    return members


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14, 15: utime, stime
