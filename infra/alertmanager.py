"""Debian's Prometheus Alertmanager (0.25 on bookworm), installed on demand and run under ``$RECWATCH_HOME``.

The server gets its own config and data under ``home/alertmanager``, listens on ``127.0.0.1:<port>`` only
(clustering off: its gossip port would bind 0.0.0.0:9094) and is tracked by ``home/alertmanager/pid``. The
Debian package's system service is never started: the install runs with a ``policy-rc.d`` that denies it.

Alerts are grouped by ``alertname, model, version, label, metric``; a group is sent 1 s after its first alert,
changes every 5 s, repeats every 4 h. Every alert goes to the ``recwatch-null`` receiver (which sends nothing)
and, when ``start`` is given a ``webhook_url``, also to a webhook that receives resolved alerts too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra import processes
from infra.errors import MissingToolError, StartupError

PACKAGE = "prometheus-alertmanager"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
NULL_RECEIVER = "recwatch-null"
WEBHOOK_RECEIVER = "recwatch-webhook"
GROUP_BY = ("alertname", "model", "version", "label", "metric")
_POLICY_SCRIPT = f"#!/bin/sh\n# written by recwatch while installing {PACKAGE}: start no services\nexit 101\n"


@dataclass(frozen=True)
class AlertmanagerServer:
    url: str  # http://127.0.0.1:<port>
    pid: int | None
    version: str
    port: int
    webhook_url: str | None


# --------------------------------------------------------------------------------------------- install


def _find_binary() -> Path | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin"])
    found = shutil.which(PACKAGE, path=search)
    return Path(found) if found else None


def ensure_installed() -> Path:
    """The server binary; installs Debian's ``prometheus-alertmanager`` non-interactively when it is missing."""
    binary = _find_binary()
    if binary is not None:
        return binary
    hint = f"Install it with: sudo apt-get install --no-install-recommends {PACKAGE}"
    if shutil.which("apt-get") is None:
        raise MissingToolError(PACKAGE, f"apt-get is not available to install it. {hint}")
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise MissingToolError(PACKAGE, f"Not running as root and sudo is not available. {hint}")
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [
        *sudo,
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=600",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        PACKAGE,
    ]
    # The package's postinst enables and starts a system service on 0.0.0.0:9093/9094: deny it.
    created_policy = _deny_service_starts(sudo)
    try:
        result = _run(install, env)
        if result.returncode != 0:  # stale package lists: refresh once and retry
            _run([*sudo, "apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=600"], env)
            result = _run(install, env)
    finally:
        if created_policy:
            _run([*sudo, "rm", "-f", str(POLICY_RC_D)], env)
    binary = _find_binary()
    if result.returncode != 0 or binary is None:
        tail = "\n".join((result.stdout or "").strip().splitlines()[-15:])
        raise MissingToolError(PACKAGE, f"apt-get install failed (exit {result.returncode}):\n{tail}\n{hint}")
    return binary


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _deny_service_starts(sudo: list[str]) -> bool:
    """Put a ``policy-rc.d`` that denies every service start in place; True if we created it."""
    # The same logic as infra.clickhouse_server's, with this package's name in the script's comment.
    if POLICY_RC_D.exists():
        return False
    script = f"printf '%s' '{_POLICY_SCRIPT}' > {POLICY_RC_D} && chmod 755 {POLICY_RC_D}"
    result = subprocess.run([*sudo, "sh", "-c", script], stdin=subprocess.DEVNULL, capture_output=True)
    return result.returncode == 0


# ----------------------------------------------------------------------------------------------- files


def _dir(home: Path) -> Path:
    return home.resolve() / "alertmanager"


def _pid_file(home: Path) -> Path:
    return _dir(home) / "pid"


def _state_file(home: Path) -> Path:
    return _dir(home) / "server.json"


def _log(home: Path) -> Path:
    return _dir(home) / "alertmanager.log"


def config_yaml(webhook_url: str | None) -> str:
    """The ``alertmanager.yml`` that ``start`` writes (strings are JSON-quoted, which YAML reads as is)."""
    q = json.dumps
    lines = [
        "# Generated by recwatch (infra/alertmanager.py); rewritten on every start.",
        "route:",
        f"  receiver: {q(NULL_RECEIVER)}",
        f"  group_by: [{', '.join(q(label) for label in GROUP_BY)}]",
        "  group_wait: 1s",
        "  group_interval: 5s",
        "  repeat_interval: 4h",
    ]
    if webhook_url:
        # A child route without matchers takes every alert and inherits the grouping above.
        lines += ["  routes:", f"    - receiver: {q(WEBHOOK_RECEIVER)}"]
    lines += ["receivers:", f"  - name: {q(NULL_RECEIVER)}"]
    if webhook_url:
        lines += [
            f"  - name: {q(WEBHOOK_RECEIVER)}",
            "    webhook_configs:",
            f"      - url: {q(webhook_url)}",
            "        send_resolved: true",
        ]
    return "\n".join(lines) + "\n"


def _write_config(home: Path, webhook_url: str | None) -> Path:
    base = _dir(home)
    (base / "data").mkdir(parents=True, exist_ok=True)
    config = base / "alertmanager.yml"
    config.write_text(config_yaml(webhook_url))
    return config


def server_argv(binary: Path, home: Path, port: int) -> list[str]:
    base = _dir(home)
    return [
        str(binary),
        f"--config.file={base / 'alertmanager.yml'}",
        f"--storage.path={base / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # empty: no gossip (it would listen on 0.0.0.0:9094)
    ]


# ------------------------------------------------------------------------------------ start/stop/status


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _get(url: str, timeout_s: float) -> bytes:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(url, timeout=timeout_s) as answer:
        body: bytes = answer.read()
        return body


def _ask_version(port: int, *, timeout_s: float) -> str:
    """Raises (URLError, OSError) unless ``/-/ready`` answers 200; then the version from ``/api/v2/status``."""
    _get(f"{_url(port)}/-/ready", timeout_s)  # non-2xx raises HTTPError
    try:
        status = json.loads(_get(f"{_url(port)}/api/v2/status", timeout_s))
        return str(status["versionInfo"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def status(home: Path) -> AlertmanagerServer | None:
    """The server started under ``home`` if it is running (from its pid and state files; no request)."""
    record = processes.read(_pid_file(home))
    if record is None:
        return None
    try:
        state = json.loads(_state_file(home).read_text())
        port, version, webhook = int(state["port"]), str(state["version"]), state.get("webhook_url")
    except (OSError, ValueError, KeyError, TypeError):
        return None  # still starting (start() writes the state once the server is ready)
    return AlertmanagerServer(_url(port), record.pid, version, port, webhook)


def start(
    home: Path, port: int = 19093, *, webhook_url: str | None = None, timeout_s: float = 30.0
) -> AlertmanagerServer:
    """Start Alertmanager under ``home/alertmanager`` (or return the one already running there, as it is).

    Returns once ``GET /-/ready`` answers 200 on ``127.0.0.1:port``; raises ``StartupError`` with the tail of
    ``home/alertmanager/alertmanager.log`` if it exits or is not ready within ``timeout_s``.
    """
    running = status(home)
    if running is not None:
        return running
    pid_file, log = _pid_file(home), _log(home)
    if processes.read(pid_file) is not None:  # a previous start() that did not finish: start afresh
        processes.stop(pid_file)
    if not processes.port_free(port):
        raise StartupError(f"cannot start Alertmanager: port {port} on 127.0.0.1 already in use")
    binary = ensure_installed()
    _write_config(home, webhook_url)
    _state_file(home).unlink(missing_ok=True)
    log.write_text("")  # this run's output only, so the tail in an error is about this run
    record = processes.spawn(server_argv(binary, home, port), pid_file=pid_file, log_file=log, cwd=_dir(home))
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        if not record.alive():
            processes.stop(pid_file)
            raise StartupError(_startup_message(home, "exited during startup", last_error))
        try:
            version = _ask_version(port, timeout_s=1.0)
            break
        except OSError as exc:  # not listening yet (URLError, HTTPError 503 are OSErrors): retry
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            processes.stop(pid_file)
            raise StartupError(_startup_message(home, f"was not ready within {timeout_s:g}s", last_error))
        time.sleep(0.1)
    state = {"port": port, "version": version, "webhook_url": webhook_url}
    _state_file(home).write_text(json.dumps(state) + "\n")
    return AlertmanagerServer(_url(port), record.pid, version, port, webhook_url)


def _startup_message(home: Path, what: str, last_error: str) -> str:
    log = _log(home)
    message = f"Alertmanager {what}; see {log}"
    if last_error:
        message += f"\nlast error from GET /-/ready: {last_error}"
    return message + f"\n--- tail of {log} ---\n{processes.log_tail(log)}"


def stop(home: Path) -> bool:
    """Stop the server started under ``home``; True if one was running. Data and config stay."""
    stopped = processes.stop(_pid_file(home), timeout_s=15.0)
    _state_file(home).unlink(missing_ok=True)
    return stopped
