"""`recwatch infra up | status | down` as a user runs them, in a private home on private ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from infra.processes import ProcessRecord
from schemas import topics
from tests.ports import free_ports

pytestmark = pytest.mark.integration


def _recwatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recwatch.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]


def _status(env: dict[str, str]) -> dict[str, Any]:
    done = _recwatch(env, "infra", "status")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_up_status_sql_down(tmp_path: Path) -> None:
    port = free_ports()
    env = {**os.environ, "RECWATCH_HOME": str(tmp_path / "home"), "RECWATCH_KAFKA_PORT": str(port)}
    env.pop("RECWATCH_KAFKA", None)
    env.pop("RECWATCH_STORE", None)
    up = _recwatch(env, "infra", "up")
    try:
        assert up.returncode == 0, up.stderr
        status = _status(env)
        assert status["kafka"]["bootstrap"] == f"127.0.0.1:{port}"
        assert status["kafka"]["version"].startswith("4.")
        broker_pid = status["kafka"]["brokers"][0]["pid"]
        daemon_pid = status["store"]["chdb_daemon_pid"]
        assert _alive(broker_pid) and _alive(daemon_pid)
        assert status["store"]["url"].startswith("chdb://")

        metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=30)
        assert set(topics.ALL) <= set(metadata.topics)

        # another command finds the store through RECWATCH_HOME alone, while the daemon owns it
        sql = _recwatch(env, "sql", "SELECT count() AS n FROM inference_events", "--format", "csv")
        assert sql.returncode == 0, sql.stderr
        assert sql.stdout.splitlines() == ["n", "0"]

        again = _recwatch(env, "infra", "up")  # idempotent: nothing new started
        assert again.returncode == 0, again.stderr
        assert _status(env)["kafka"]["brokers"][0]["pid"] == broker_pid
    finally:
        down = _recwatch(env, "infra", "down")
    assert down.returncode == 0, down.stderr
    assert not _alive(broker_pid) and not _alive(daemon_pid)
    # data survives `down`; with nothing running, `sql` opens chDB in-process
    sql = _recwatch(env, "sql", "SELECT count() AS n FROM schema_migrations", "--format", "csv")
    assert sql.returncode == 0, sql.stderr
    assert int(sql.stdout.splitlines()[1]) >= 1


def test_existing_kafka_is_used_and_not_started(tmp_path: Path, kafka_bootstrap: str) -> None:
    env = {**os.environ, "RECWATCH_HOME": str(tmp_path / "home"), "RECWATCH_KAFKA": kafka_bootstrap}
    env.pop("RECWATCH_STORE", None)
    up = _recwatch(env, "infra", "up")
    try:
        assert up.returncode == 0, up.stderr
        assert "RECWATCH_KAFKA" in up.stdout
        status = _status(env)
        assert status["kafka"]["bootstrap"] == kafka_bootstrap
        assert status["kafka"]["brokers"] == []
        assert not (tmp_path / "home" / "kafka").exists()
    finally:
        assert _recwatch(env, "infra", "down").returncode == 0


@pytest.mark.clickhouse_server
def test_up_with_the_clickhouse_server(tmp_path: Path, kafka_bootstrap: str) -> None:
    ch_port = free_ports()
    env = {
        **os.environ,
        "RECWATCH_HOME": str(tmp_path / "home"),
        "RECWATCH_KAFKA": kafka_bootstrap,
        "RECWATCH_CLICKHOUSE_PORT": str(ch_port),
    }
    env.pop("RECWATCH_STORE", None)
    up = _recwatch(env, "infra", "up", "--clickhouse", "server")
    try:
        assert up.returncode == 0, up.stderr
        status = _status(env)
        assert status["store"]["url"] == f"clickhouse://127.0.0.1:{ch_port}/recwatch"
        server = status["store"]["clickhouse_server"]
        assert server["version"].startswith("18.16") and _alive(server["pid"])
        sql = _recwatch(
            env, "sql", "SELECT version() AS v, count() AS n FROM inference_metrics_10s", "--format", "json"
        )
        assert sql.returncode == 0, sql.stderr
        row = json.loads(sql.stdout)
        assert row["v"].startswith("18.16") and row["n"] == 0
    finally:
        assert _recwatch(env, "infra", "down").returncode == 0
    assert not _alive(server["pid"])


def test_pid_records_never_match_a_reused_pid() -> None:
    me = ProcessRecord(os.getpid(), start_ticks=-5)  # same pid, different start time: not ours to signal
    assert not me.alive()
