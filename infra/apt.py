"""Installing one Debian package on demand, non-interactively, without starting its system service.

``clickhouse-server`` and ``prometheus-alertmanager`` both enable and start a system-wide service from their
postinst (listening on 0.0.0.0). recwatch runs its own instances under ``$RECWATCH_HOME`` on 127.0.0.1 instead, so
while installing it puts a ``policy-rc.d`` in place that denies every service start (Debian's mechanism for
exactly this), and removes it afterwards if it created it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from infra.errors import MissingToolError

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def find_binary(*names: str) -> Path | None:
    """The first of ``names`` on PATH or in /usr/sbin and /usr/bin (Debian puts servers in /usr/sbin, which is not
    on a normal user's PATH)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return Path(found)
    return None


def ensure_package(package: str, find_binary: Callable[[], Path | None]) -> Path:
    """``find_binary()``, installing ``package`` with apt-get first when it finds nothing. Raises
    MissingToolError (with the command to run by hand) when it cannot install."""
    binary = find_binary()
    if binary is not None:
        return binary
    hint = f"Install it with: sudo apt-get install --no-install-recommends {package}"
    if shutil.which("apt-get") is None:
        raise MissingToolError(package, f"apt-get is not available to install it. {hint}")
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise MissingToolError(package, f"Not running as root and sudo is not available. {hint}")
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    install = [
        *sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *lock,
        "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", package,
    ]  # fmt: skip
    created_policy = _deny_service_starts(sudo, package)
    try:
        result = _run(install, env)
        if result.returncode != 0:  # stale package lists: refresh once and retry
            _run([*sudo, "apt-get", "update", "-q", *lock], env)
            result = _run(install, env)
    finally:
        if created_policy:
            _run([*sudo, "rm", "-f", str(POLICY_RC_D)], env)
    binary = find_binary()
    if result.returncode != 0 or binary is None:
        tail = "\n".join((result.stdout or "").strip().splitlines()[-15:])
        raise MissingToolError(package, f"apt-get install failed (exit {result.returncode}):\n{tail}\n{hint}")
    return binary


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _deny_service_starts(sudo: list[str], package: str) -> bool:
    """Put a ``policy-rc.d`` that denies every service start in place; True if we created it."""
    if POLICY_RC_D.exists():
        return False
    policy = f"#!/bin/sh\n# written by recwatch while installing {package}: start no services\nexit 101\n"
    script = f"printf '%s' '{policy}' > {POLICY_RC_D} && chmod 755 {POLICY_RC_D}"
    result = subprocess.run([*sudo, "sh", "-c", script], stdin=subprocess.DEVNULL, capture_output=True)
    return result.returncode == 0
