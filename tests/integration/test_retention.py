"""store.retention on Debian's ClickHouse 18.16 (no TTL: partitions are dropped) and on chDB (TTL: left alone)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from store import Store, migrate
from store.clickhouse import ClickHouseServerStore
from store.features import Features
from store.retention import DAY, RULES, RetentionRule, apply_retention
from tests.store_fixtures import chdb_store

__all__ = ["chdb_store"]

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DAYS_AGO = (430, 400, 31, 30, 0)  # rows of each table, two per age
# inference_events (30 days, cutoff 2026-10-29 12:00): 20250924, 20251024, 20261028 expired; 20261029, 20261128 not
# inference_metrics_10s_parts (400 days, cutoff 2025-10-24 12:00): 202509 expired; 202510, 202610, 202611 not


def _fill(store: Store) -> None:
    times = [int((NOW - timedelta(days=days, hours=hour)).timestamp()) for days in DAYS_AGO for hour in (0, 1)]
    store.insert(
        "inference_events",
        {
            "event_time": times,
            "received_us": [t * 1_000_000 for t in times],
            "event_id": [f"e{i}" for i in range(len(times))],
            "model": ["ranker"] * len(times),
        },
    )
    store.insert(
        "inference_metrics_10s_parts",
        {
            "window_start": times,
            "model": ["ranker"] * len(times),
            "kafka_partition": list(range(len(times))),  # distinct keys: ReplacingMergeTree keeps every row
            "requests": [1] * len(times),
        },
    )


def _counts(store: Store, table: str, key: str) -> dict[str, int]:
    rows = store.query(f"SELECT toString({key}) AS p, count() FROM {table} GROUP BY p ORDER BY p").rows
    return {str(p): int(n) for p, n in rows}


@pytest.fixture
def server_store(clickhouse_server_url: str) -> Iterator[Store]:
    url = clickhouse_server_url.rsplit("/", 1)[0] + f"/t_{uuid.uuid4().hex[:12]}"
    store = ClickHouseServerStore(url)
    store.connect()
    migrate(store)
    yield store
    store.execute(f"DROP DATABASE IF EXISTS {store.database}")
    store.close()


@pytest.mark.clickhouse_server
def test_clickhouse_18_16_drops_exactly_the_expired_partitions(server_store: Store) -> None:
    assert not Features(server_store.server_version()).ttl
    _fill(server_store)
    events_before = _counts(server_store, "inference_events", "toYYYYMMDD(event_time)")
    assert events_before == {"20250924": 2, "20251024": 2, "20261028": 2, "20261029": 2, "20261128": 2}

    report = apply_retention(server_store, NOW)

    assert not report.ttl and report.skipped == {} and report.unparsable == {}
    assert {table: parts for table, parts in report.dropped.items() if parts} == {
        "inference_events": ["20250924", "20251024", "20261028"],
        "inference_metrics_10s_parts": ["202509"],
    }
    assert {table: parts for table, parts in report.kept.items() if parts} == {
        "inference_events": ["20261029", "20261128"],
        "inference_metrics_10s_parts": ["202510", "202610", "202611"],
    }
    assert _counts(server_store, "inference_events", "toYYYYMMDD(event_time)") == {"20261029": 2, "20261128": 2}
    assert _counts(server_store, "inference_metrics_10s_parts", "toYYYYMM(window_start)") == {
        "202510": 2,  # 400 days ago, 2025-10-24: October still has rows younger than the cutoff
        "202610": 4,
        "202611": 2,
    }
    # the readers' views see the same rows
    assert server_store.query("SELECT sum(requests) FROM inference_metrics_10s").scalar() == 8

    again = apply_retention(server_store, NOW)
    assert again.dropped_count == 0
    assert again.kept == report.kept


@pytest.mark.clickhouse_server
def test_clickhouse_18_16_skips_tables_that_do_not_exist_yet(server_store: Store) -> None:
    _fill(server_store)
    rules = (*RULES, RetentionRule("a_table_of_a_later_migration", DAY, 30))
    report = apply_retention(server_store, NOW, rules)
    assert report.skipped == {"a_table_of_a_later_migration": "table does not exist"}
    assert report.dropped_count == 4


def test_chdb_has_ttl_and_is_left_alone(chdb_store: Store) -> None:
    _fill(chdb_store)
    # chDB applies TTL on merges only; what the insert kept is what retention must not touch
    events = _counts(chdb_store, "inference_events", "toYYYYMMDD(event_time)")
    metrics = _counts(chdb_store, "inference_metrics_10s_parts", "toYYYYMM(window_start)")

    report = apply_retention(chdb_store, NOW)

    assert report.ttl
    assert report.dropped == {} and report.dropped_count == 0
    assert set(report.skipped) == {rule.table for rule in RULES}
    assert all(reason.startswith("TTL") for reason in report.skipped.values())
    assert _counts(chdb_store, "inference_events", "toYYYYMMDD(event_time)") == events
    assert _counts(chdb_store, "inference_metrics_10s_parts", "toYYYYMM(window_start)") == metrics
