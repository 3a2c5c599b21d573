"""Debian's ClickHouse server (18.16 on bookworm), installed on demand and run under ``$RECWATCH_HOME``.

The server gets its own config under ``home/clickhouse`` (data, tmp, logs, …), listens on 127.0.0.1 only
(native ``port``, HTTP ``port + 1``, no interserver port) and is tracked by ``home/clickhouse/pid``. The
Debian package's system service is never started: the install runs with a ``policy-rc.d`` that denies it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from clickhouse_driver import Client

from infra import processes
from infra.errors import MissingToolError, StartupError

DATABASE = "recwatch"
PACKAGE = "clickhouse-server"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
_BINARY_CANDIDATES = ("clickhouse-server", "clickhouse")
_POLICY_SCRIPT = "#!/bin/sh\n# written by recwatch while installing clickhouse-server: start no services\nexit 101\n"


@dataclass(frozen=True)
class ClickHouseServer:
    url: str  # clickhouse://127.0.0.1:<port>/recwatch
    pid: int | None
    version: str
    port: int
    http_port: int


# --------------------------------------------------------------------------------------------- install


def _find_binary() -> Path | None:
    # Debian installs /usr/sbin/clickhouse-server, which is not on a normal user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    for name in _BINARY_CANDIDATES:
        found = shutil.which(name, path=search)
        if found:
            return Path(found)
    return None


def _server_argv(binary: Path, config: Path) -> list[str]:
    # /usr/bin/clickhouse is the multi-call binary; clickhouse-server is a symlink to it.
    if binary.name == "clickhouse":
        return [str(binary), "server", f"--config-file={config}"]
    return [str(binary), f"--config-file={config}"]


def ensure_installed() -> Path:
    """The server binary; installs Debian's ``clickhouse-server`` non-interactively when it is missing."""
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
    if POLICY_RC_D.exists():
        return False
    script = f"printf '%s' '{_POLICY_SCRIPT}' > {POLICY_RC_D} && chmod 755 {POLICY_RC_D}"
    result = subprocess.run([*sudo, "sh", "-c", script], stdin=subprocess.DEVNULL, capture_output=True)
    return result.returncode == 0


# ----------------------------------------------------------------------------------------------- files


def _dir(home: Path) -> Path:
    return home.resolve() / "clickhouse"


def _pid_file(home: Path) -> Path:
    return _dir(home) / "pid"


def _state_file(home: Path) -> Path:
    return _dir(home) / "server.json"


def _stdout_log(home: Path) -> Path:
    return _dir(home) / "logs" / "stdout.log"


def _config_xml(base: Path, port: int, http_port: int) -> str:
    def d(name: str) -> str:
        return escape(f"{base / name}/")

    return f"""<?xml version="1.0"?>
<!-- Generated by recwatch (infra/clickhouse_server.py); rewritten on every start. -->
<yandex>
    <logger>
        <level>information</level>
        <log>{escape(str(base / "logs" / "clickhouse-server.log"))}</log>
        <errorlog>{escape(str(base / "logs" / "clickhouse-server.err.log"))}</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{port}</tcp_port>
    <http_port>{http_port}</http_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>64</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{d("data")}</path>
    <tmp_path>{d("tmp")}</tmp_path>
    <user_files_path>{d("user_files")}</user_files_path>
    <format_schema_path>{d("format_schemas")}</format_schema_path>
    <users_config>{escape(str(base / "users.xml"))}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <umask>027</umask>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by>
        <flush_interval_milliseconds>7500</flush_interval_milliseconds>
    </query_log>
    <dictionaries_config>{escape(str(base / "*_dictionary.xml"))}</dictionaries_config>
</yandex>
"""


_USERS_XML = """<?xml version="1.0"?>
<!-- Generated by recwatch (infra/clickhouse_server.py); rewritten on every start. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
            <!-- idle connections notice a shutdown within this many seconds (default 10) -->
            <poll_interval>1</poll_interval>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""


def _write_config(home: Path, port: int, http_port: int) -> Path:
    base = _dir(home)
    for sub in ("data", "tmp", "user_files", "format_schemas", "logs"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "users.xml").write_text(_USERS_XML)
    config = base / "config.xml"
    config.write_text(_config_xml(base, port, http_port))
    return config


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"


# ------------------------------------------------------------------------------------ start/stop/status


def _url(port: int) -> str:
    return f"clickhouse://127.0.0.1:{port}/{DATABASE}"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ask_version(port: int, http_port: int, *, timeout_s: float) -> str:
    """``SELECT version()`` over the native protocol; raises (driver or socket errors) when it cannot."""
    # The HTTP /ping first: clickhouse-driver logs a warning with a traceback for every refused connection,
    # and a bare TCP probe leaves "Client has not sent any data" in the server's log.
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(f"http://127.0.0.1:{http_port}/ping", timeout=timeout_s) as answer:
        answer.read()
    client = Client(host="127.0.0.1", port=port, connect_timeout=timeout_s, send_receive_timeout=max(timeout_s, 5))
    try:
        rows: Any = client.execute("SELECT version()")
        client.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        return str(rows[0][0])
    finally:
        client.disconnect()


def status(home: Path) -> ClickHouseServer | None:
    """The server started under ``home`` if it is running (from its pid and state files; no query)."""
    record = processes.read(_pid_file(home))
    if record is None:
        return None
    try:
        state = json.loads(_state_file(home).read_text())
        port, http_port, version = int(state["port"]), int(state["http_port"]), str(state["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # still starting (start() writes the state once the server answers)
    return ClickHouseServer(_url(port), record.pid, version, port, http_port)


def start(home: Path, *, port: int = 19000, timeout_s: float = 60) -> ClickHouseServer:
    """Start a server under ``home/clickhouse`` (or return the one already running there).

    Returns once ``SELECT version()`` answers on ``port`` and the ``recwatch`` database exists.
    """
    running = status(home)
    if running is not None:
        return running
    pid_file, log = _pid_file(home), _stdout_log(home)
    if processes.read(pid_file) is not None:  # a previous start() that did not finish: start afresh
        processes.stop(pid_file)
    http_port = port + 1
    busy = [p for p in (port, http_port) if not _port_free(p)]
    if busy:
        raise StartupError(
            f"cannot start ClickHouse server: port(s) {', '.join(map(str, busy))} on 127.0.0.1 already in use"
        )
    binary = ensure_installed()
    config = _write_config(home, port, http_port)
    _state_file(home).unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")  # this run's output only, so the tails in an error are about this run
    (log.parent / "clickhouse-server.err.log").write_text("")
    record = processes.spawn(_server_argv(binary, config), pid_file=pid_file, log_file=log, cwd=_dir(home))
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        if not record.alive():
            processes.stop(pid_file)
            raise StartupError(_startup_message(home, "exited during startup", last_error))
        try:
            version = _ask_version(port, http_port, timeout_s=1.0)
            break
        except Exception as exc:  # not listening yet, or still loading: retry until the deadline
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            processes.stop(pid_file)
            raise StartupError(_startup_message(home, f"did not answer within {timeout_s:g}s", last_error))
        time.sleep(0.2)
    _state_file(home).write_text(json.dumps({"port": port, "http_port": http_port, "version": version}) + "\n")
    return ClickHouseServer(_url(port), record.pid, version, port, http_port)


def _startup_message(home: Path, what: str, last_error: str) -> str:
    log = _stdout_log(home)
    err_log = log.parent / "clickhouse-server.err.log"
    message = f"ClickHouse server {what}; see {log}"
    if last_error:
        message += f"\nlast connection error: {last_error}"
    message += f"\n--- tail of {log} ---\n{_tail(log)}"
    if err_log.exists():
        message += f"\n--- tail of {err_log} ---\n{_tail(err_log)}"
    return message


def stop(home: Path) -> bool:
    """Stop the server started under ``home``; True if one was running."""
    stopped = processes.stop(_pid_file(home), timeout_s=30.0)
    _state_file(home).unlink(missing_ok=True)
    return stopped
