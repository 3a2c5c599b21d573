"""Debian's ClickHouse server (18.16) from infra.clickhouse_server, used through ClickHouseServerStore."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from infra import clickhouse_server
from infra.errors import MissingToolError
from store.base import QueryError, Store, StoreUnavailableError
from store.clickhouse import ClickHouseServerStore
from tests.ports import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.clickhouse_server]

PORT = free_ports()
STOP_TEST_PORT = free_ports()


def _start(home: Path, port: int) -> clickhouse_server.ClickHouseServer:
    try:
        return clickhouse_server.start(home, port=port, timeout_s=90)
    except MissingToolError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def server_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("recwatch-home")
    _start(home, PORT)
    yield home
    clickhouse_server.stop(home)


@pytest.fixture(scope="module")
def server(server_home: Path) -> clickhouse_server.ClickHouseServer:
    running = clickhouse_server.status(server_home)
    assert running is not None
    return running


@pytest.fixture
def store(server: clickhouse_server.ClickHouseServer) -> Iterator[ClickHouseServerStore]:
    s = ClickHouseServerStore(server.url)
    s.connect()
    yield s
    s.close()


def test_server_describes_itself(server: clickhouse_server.ClickHouseServer, server_home: Path) -> None:
    assert server.url == f"clickhouse://127.0.0.1:{PORT}/recwatch"
    assert (server.port, server.http_port) == (PORT, PORT + 1)
    assert server.pid is not None
    assert (server_home / "clickhouse" / "pid").read_text().split()[0] == str(server.pid)
    assert (server_home / "clickhouse" / "logs" / "stdout.log").exists()
    assert server.version.startswith("18.16.")


def test_version_is_18_16(store: ClickHouseServerStore) -> None:
    assert isinstance(store, Store)
    version = store.server_version()
    assert version[:2] == (18, 16)
    assert len(version) >= 3
    assert store.database == "recwatch"
    assert store.query("SELECT currentDatabase()").scalar() == "recwatch"


def test_replacing_merge_tree_round_trip(store: ClickHouseServerStore) -> None:
    store.execute("DROP TABLE IF EXISTS items")
    store.execute(
        "CREATE TABLE items (item_id UInt64, updated_at DateTime, tags Array(String), score Float64, "
        "seen Array(DateTime), deleted_at Nullable(DateTime)) "
        "ENGINE = ReplacingMergeTree(updated_at) PARTITION BY toYYYYMM(updated_at) ORDER BY item_id"
    )
    n = store.insert(
        "items",
        {
            "item_id": [1, 2, 3],
            "updated_at": [1_700_000_000, np.int64(1_700_000_100), 1_700_000_200],
            "tags": [["shoes", "red"], [], ["hat"]],
            "score": [0.5, 1.0, 2.0],
            "seen": [[1_700_000_000, 1_700_000_001], [], [0]],
            "deleted_at": [None, 1_700_000_500, None],
        },
    )
    assert n == 3
    # a newer version of item 1 replaces the older one under FINAL
    store.insert(
        "items",
        {"item_id": [1], "updated_at": [1_700_000_300], "tags": [["shoes"]], "score": [0.75], "seen": [[]]},
    )
    result = store.query("SELECT item_id, updated_at, tags, score, seen, deleted_at FROM items FINAL ORDER BY item_id")
    assert result.columns == ["item_id", "updated_at", "tags", "score", "seen", "deleted_at"]
    assert result.types == [
        "UInt64",
        "DateTime",
        "Array(String)",
        "Float64",
        "Array(DateTime)",
        "Nullable(DateTime)",
    ]

    def utc(seconds: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)

    assert result.rows == [
        (1, utc(1_700_000_300), ["shoes"], 0.75, [], None),
        (2, utc(1_700_000_100), [], 1.0, [], utc(1_700_000_500)),
        (3, utc(1_700_000_200), ["hat"], 2.0, [utc(0)], None),
    ]
    # the server stores the ints as Unix seconds (UTC)
    check = store.query("SELECT toUnixTimestamp(updated_at), toString(updated_at) FROM items WHERE item_id = 2")
    assert check.rows == [(1_700_000_100, "2023-11-14 22:15:00")]
    assert store.query("SELECT count() FROM items").scalar() == 4  # before a merge both versions are there


def test_bad_statement_raises_query_error_with_sql(store: ClickHouseServerStore) -> None:
    sql = "SELECT no_such_function(1)"
    with pytest.raises(QueryError) as caught:
        store.query(sql)
    assert caught.value.sql == sql
    assert "Code: 46" in str(caught.value)
    assert "Stack trace" not in str(caught.value)
    with pytest.raises(QueryError) as caught:
        store.execute("CREATE TABLE broken (x UInt8) ENGINE = NoSuchEngine")
    assert "NoSuchEngine" in caught.value.sql
    # the connection stays usable after an error
    assert store.query("SELECT 1").scalar() == 1


def test_insert_of_bad_values_raises_query_error(store: ClickHouseServerStore) -> None:
    store.execute("CREATE TABLE IF NOT EXISTS typed (ts DateTime, n UInt8) ENGINE = MergeTree ORDER BY ts")
    with pytest.raises(QueryError):
        store.insert("typed", {"ts": ["not a time"], "n": [1]})
    with pytest.raises(QueryError):
        store.insert("no_such_table", {"ts": [1]})
    assert store.insert("typed", {"ts": [5], "n": [7]}) == 1
    assert store.query("SELECT toUnixTimestamp(ts), n FROM typed").rows == [(5, 7)]


def test_connect_creates_the_database(server: clickhouse_server.ClickHouseServer) -> None:
    url = f"clickhouse://default@127.0.0.1:{server.port}/recwatch_created_by_connect"
    with ClickHouseServerStore(url) as created:
        assert created.query("SELECT currentDatabase()").scalar() == "recwatch_created_by_connect"
        created.execute("CREATE TABLE t (x UInt8) ENGINE = Memory")
        assert created.query("EXISTS TABLE recwatch_created_by_connect.t").scalar() == 1
        created.execute("DROP DATABASE recwatch_created_by_connect")


def test_start_twice_returns_the_running_server(server_home: Path, server: clickhouse_server.ClickHouseServer) -> None:
    again = clickhouse_server.start(server_home, port=PORT)
    assert again.pid == server.pid
    assert again == server


def test_after_stop_the_store_is_unavailable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    started = _start(home, STOP_TEST_PORT)
    running = ClickHouseServerStore(started.url)
    running.connect()
    assert running.query("SELECT 1").scalar() == 1

    assert clickhouse_server.stop(home) is True
    assert clickhouse_server.status(home) is None
    assert not (home / "clickhouse" / "pid").exists()
    assert clickhouse_server.stop(home) is False

    with pytest.raises(StoreUnavailableError):
        running.query("SELECT 1")  # the open connection is gone
    running.close()
    fresh = ClickHouseServerStore(f"clickhouse://127.0.0.1:{STOP_TEST_PORT}/recwatch?connect_timeout=2")
    with pytest.raises(StoreUnavailableError):
        fresh.connect()
