"""Detached child processes tracked by pid files.

A pid file holds ``<pid> <start-time>``: the start time (clock ticks since boot, /proc/<pid>/stat field 22)
makes sure ``stop`` never signals a process that merely reused the pid. Processes are never found or killed
by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_ticks: int

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; its parent just has not reaped it
        return None
    return int(fields[19])


def spawn(
    argv: Sequence[str],
    *,
    pid_file: Path,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcessRecord:
    """Start ``argv`` in its own session, stdout and stderr appended to ``log_file``, and record its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    ticks = None
    for _ in range(100):
        ticks = _start_ticks(proc.pid)
        if ticks is not None or proc.poll() is not None:
            break
        time.sleep(0.01)
    record = ProcessRecord(proc.pid, ticks if ticks is not None else -1)
    pid_file.write_text(f"{record.pid} {record.start_ticks}\n")
    return record


def read(pid_file: Path) -> ProcessRecord | None:
    """The process recorded in ``pid_file``, or None if there is none or it is no longer running."""
    try:
        pid_s, ticks_s = pid_file.read_text().split()
    except (FileNotFoundError, ValueError):
        return None
    record = ProcessRecord(int(pid_s), int(ticks_s))
    return record if record.alive() else None


def stop(pid_file: Path, *, timeout_s: float = 30.0) -> bool:
    """SIGTERM the recorded process (SIGKILL after ``timeout_s``) and remove the pid file.

    Returns True if a running process was stopped.
    """
    record = read(pid_file)
    stopped = False
    if record is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while record.alive() and time.monotonic() < deadline:
            _reap(record.pid)
            time.sleep(0.05)
        if record.alive():
            os.kill(record.pid, signal.SIGKILL)
            while record.alive():
                _reap(record.pid)
                time.sleep(0.02)
        _reap(record.pid)
        stopped = True
    pid_file.unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on ``host:port`` (checked by binding it, as the server would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} does not exist)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or f"({path} is empty)"
