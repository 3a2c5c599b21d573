"""Real services for integration tests, started once per test session.

- Kafka: one KRaft broker from ``infra.kafka`` on free loopback ports in a temporary home (or the cluster named by
  ``RECWATCH_TEST_KAFKA``).
- ClickHouse server: Debian's clickhouse-server from ``infra.clickhouse_server`` on free loopback ports, a database
  per test.
- chDB: a store daemon per test over a temporary data directory, as ``recwatch infra up`` runs it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recwatch.settings import Settings
from store import Store
from tests.ports import free_ports


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RECWATCH_TEST_KAFKA")
    if external:
        yield external
        return
    from infra import kafka

    home = tmp_path_factory.mktemp("kafka-home")
    cluster = kafka.start(home, cache=Settings.from_env().cache, brokers=1, base_port=free_ports())
    try:
        yield cluster.bootstrap
    finally:
        kafka.stop(home)


@pytest.fixture(scope="session")
def clickhouse_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from infra import clickhouse_server

    home = tmp_path_factory.mktemp("clickhouse-home")
    server = clickhouse_server.start(home, port=free_ports())
    try:
        yield server.url
    finally:
        clickhouse_server.stop(home)


@pytest.fixture(scope="session")
def alertmanager_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from infra import alertmanager

    home = tmp_path_factory.mktemp("alertmanager-home")
    server = alertmanager.start(home, free_ports(1))
    try:
        yield server.url
    finally:
        alertmanager.stop(home)


def start_chdb_daemon(path: Path, timeout_s: float = 30.0) -> subprocess.Popen[bytes]:
    from store.daemon import find_daemon

    proc = subprocess.Popen([sys.executable, "-m", "store.daemon", "--path", str(path)])
    deadline = time.monotonic() + timeout_s
    while find_daemon(path) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"store daemon for {path} did not start")
        time.sleep(0.05)
    return proc


@contextlib.contextmanager
def fresh_store_url(kind: str, directory: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty store of ``kind`` ("chdb": a daemon over ``directory``; else a new database on the
    session's ClickHouse server)."""
    if kind == "chdb":
        daemon = start_chdb_daemon(directory)
        try:
            yield f"chdb://{directory}"
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    else:
        base = request.getfixturevalue("clickhouse_server_url")
        yield base.rsplit("/", 1)[0] + f"/t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["chdb", pytest.param("clickhouse-server", marks=pytest.mark.clickhouse_server)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store of each kind, reachable from several processes at once."""
    with fresh_store_url(request.param, tmp_path / "chdb", request) as url:
        yield url


@pytest.fixture
def migrated_store(store_url: str) -> Iterator[Store]:
    """``store_url``'s store, connected and migrated."""
    from store import migrate, open_store

    s = open_store(store_url)
    s.connect()
    migrate(s)
    try:
        yield s
    finally:
        s.close()
