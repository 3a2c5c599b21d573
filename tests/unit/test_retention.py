"""store.retention: which partitions expire (pure), and what apply_retention asks of a store (a fake one)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from store.base import QueryResult
from store.migrations import EVENTS_RETENTION_DAYS, METRICS_RETENTION_DAYS
from store.retention import (
    DAY,
    MONTH,
    RULES,
    RetentionRule,
    apply_retention,
    expired_partitions,
)

# ----------------------------------------------------------------------------------------- partition ids


@pytest.mark.parametrize(
    ("granularity", "value", "start", "end"),
    [
        (DAY, "20261128", date(2026, 11, 28), date(2026, 11, 29)),
        (DAY, "20261231", date(2026, 12, 31), date(2027, 1, 1)),
        (DAY, "20240228", date(2024, 2, 28), date(2024, 2, 29)),
        (DAY, "20240229", date(2024, 2, 29), date(2024, 3, 1)),
        (DAY, "20250228", date(2025, 2, 28), date(2025, 3, 1)),
        (MONTH, "202611", date(2026, 11, 1), date(2026, 12, 1)),
        (MONTH, "202612", date(2026, 12, 1), date(2027, 1, 1)),
        (MONTH, "202402", date(2024, 2, 1), date(2024, 3, 1)),
    ],
)
def test_partition_ranges(granularity: Any, value: str, start: date, end: date) -> None:
    assert granularity.start(value) == start
    assert granularity.end(start) == end


@pytest.mark.parametrize(
    ("granularity", "value"),
    [
        (DAY, "20250229"),  # not a leap year
        (DAY, "20261131"),
        (DAY, "20261300"),
        (DAY, "202611"),  # a month value under a daily rule
        (MONTH, "20261128"),
        (MONTH, "202613"),
        (MONTH, "000001"),
        (DAY, "tuple()"),
        (DAY, "'2026-11-28'"),
        (DAY, "2026112٨"),  # an Arabic-Indic digit: str.isdigit() accepts it, SQL would not
        (DAY, ""),
        (MONTH, "-20261"),
    ],
)
def test_values_that_are_not_dates_of_the_span_do_not_parse(granularity: Any, value: str) -> None:
    assert granularity.start(value) is None
    assert expired_partitions([value], granularity, 1, datetime(2100, 1, 1)) == []


# ------------------------------------------------------------------------------------------ cutoff math


def test_a_day_expires_when_its_last_second_is_older_than_the_retention() -> None:
    # cutoff 2026-10-29 00:00: the day 10-28 ended exactly then, 10-29 still has rows inside the retention
    now = datetime(2026, 11, 28, 0, 0)
    assert expired_partitions(["20261027", "20261028", "20261029"], DAY, 30, now) == ["20261027", "20261028"]
    just_before = now - timedelta(seconds=1)
    assert expired_partitions(["20261027", "20261028", "20261029"], DAY, 30, just_before) == ["20261027"]


def test_a_month_expires_when_the_next_month_began_before_the_cutoff() -> None:
    # 400 days before 2026-12-05 12:00 is 2025-10-31 12:00: October 2025 still has younger rows
    now = datetime(2026, 12, 5, 12, 0)
    values = ["202508", "202509", "202510", "202511"]
    assert expired_partitions(values, MONTH, 400, now) == ["202508", "202509"]
    # 400 days before 2026-12-06 00:00 is 2025-11-01 00:00: October has ended exactly then
    assert expired_partitions(values, MONTH, 400, datetime(2026, 12, 6)) == ["202508", "202509", "202510"]


def test_month_ends_and_leap_days() -> None:
    # 2024-03-01 00:00 minus 1 day is 2024-02-29 00:00: February 28th has ended, the leap day has not
    now = datetime(2024, 3, 1)
    assert expired_partitions(["20240227", "20240228", "20240229"], DAY, 1, now) == ["20240227", "20240228"]
    # a year later there is no leap day: 2025-03-01 minus 1 day is 2025-02-28
    assert expired_partitions(["20250227", "20250228"], DAY, 1, datetime(2025, 3, 1)) == ["20250227"]
    # a 29-day February as a monthly partition ends on March 1st
    assert expired_partitions(["202402"], MONTH, 1, datetime(2024, 3, 2)) == ["202402"]
    assert expired_partitions(["202402"], MONTH, 1, datetime(2024, 3, 1, 23, 59, 59)) == []
    # a year boundary
    assert expired_partitions(["20261231", "202612"], DAY, 1, datetime(2027, 1, 2)) == ["20261231"]
    assert expired_partitions(["202612"], MONTH, 1, datetime(2027, 1, 2)) == ["202612"]


def test_the_current_and_future_partitions_are_never_dropped() -> None:
    now = datetime(2026, 11, 28, 23, 59, 59)
    assert expired_partitions(["20261128", "20261129", "202611", "203001"], DAY, 1, now) == []
    assert expired_partitions(["202611", "202612", "203001"], MONTH, 1, now) == []


def test_now_as_unix_seconds_or_an_aware_datetime() -> None:
    values = ["20261027", "20261028"]
    as_naive = expired_partitions(values, DAY, 30, datetime(2026, 11, 28))
    assert as_naive == ["20261027", "20261028"]
    assert expired_partitions(values, DAY, 30, datetime(2026, 11, 28, tzinfo=UTC).timestamp()) == as_naive
    # 19:00 on the 27th in New York is 2026-11-28 00:00 UTC
    aware = datetime(2026, 11, 27, 19, 0, tzinfo=ZoneInfo("America/New_York"))
    assert expired_partitions(values, DAY, 30, aware) == as_naive
    assert expired_partitions(values, DAY, 30, aware - timedelta(seconds=1)) == ["20261027"]


def test_partition_dates_are_read_in_the_servers_time_zone() -> None:
    # cutoff 2026-10-29 00:00 UTC; in Tokyo (UTC+9) the day 10-28 ended at 10-28 15:00 UTC, in New York
    # (UTC-4 in October) at 10-29 04:00 UTC: not yet expired there
    now = datetime(2026, 11, 28)
    assert expired_partitions(["20261028"], DAY, 30, now, ZoneInfo("Asia/Tokyo")) == ["20261028"]
    assert expired_partitions(["20261028"], DAY, 30, now, ZoneInfo("America/New_York")) == []


def test_rules_reject_names_that_cannot_go_into_sql_and_nonpositive_days() -> None:
    with pytest.raises(ValueError, match="table name"):
        RetentionRule("events; DROP TABLE x", DAY, 30)
    with pytest.raises(ValueError, match="at least 1 day"):
        RetentionRule("events", DAY, 0)


def test_the_rules_cover_the_tables_with_the_migrations_retention() -> None:
    by_table = {rule.table: rule for rule in RULES}
    assert by_table["inference_events"] == RetentionRule("inference_events", DAY, EVENTS_RETENTION_DAYS)
    assert by_table["inference_metrics_10s_parts"] == RetentionRule(
        "inference_metrics_10s_parts", MONTH, METRICS_RETENTION_DAYS
    )


def test_granularity_recognises_the_partition_keys_the_migrations_write() -> None:
    assert DAY.matches("toYYYYMMDD(event_time)")
    assert MONTH.matches("toYYYYMM(window_start)")
    assert not MONTH.matches("toYYYYMMDD(window_start)")
    assert not DAY.matches("(toYYYYMMDD(event_time), model)")
    assert not DAY.matches("tuple()")


# ------------------------------------------------------------------------------------ against a fake store


class FakeStore:
    """Answers the catalogue queries apply_retention makes from a dict of tables; records DROP PARTITION."""

    url = "fake://"
    database = "recwatch"

    def __init__(
        self,
        version: tuple[int, ...],
        tables: dict[str, tuple[str, list[str]]],  # name -> (partition_key, partitions)
        timezone: str = "UTC",
    ) -> None:
        self.version = version
        self.tables = tables
        self.timezone = timezone
        self.queries: list[str] = []
        self.executed: list[str] = []

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    def server_version(self) -> tuple[int, ...]:
        return self.version

    def execute(self, sql: str) -> None:
        self.executed.append(sql)
        prefix = "ALTER TABLE "
        assert sql.startswith(prefix), sql
        table, _, value = sql[len(prefix) :].partition(" DROP PARTITION ")
        self.tables[table][1].remove(value)

    def query(self, sql: str) -> QueryResult:
        self.queries.append(sql)
        if sql == "SELECT timezone()":
            return QueryResult(["timezone()"], ["String"], [(self.timezone,)])
        if "FROM system.tables" in sql:
            keys = [(name, key) for name, (key, _) in self.tables.items() if f"'{name}'" in sql]
            return QueryResult(["name", "partition_key"], ["String", "String"], list(keys))
        if "FROM system.parts" in sql:
            parts = [(p,) for name, (_, ps) in self.tables.items() if f"table = '{name}'" in sql for p in ps]
            return QueryResult(["partition"], ["String"], list(parts))
        raise AssertionError(f"unexpected query: {sql}")

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> int:
        raise AssertionError("retention never inserts")


NOW = datetime(2026, 11, 28, 12, 0)


def _fake_1816() -> FakeStore:
    return FakeStore(
        (18, 16, 1),
        {
            "inference_events": ("toYYYYMMDD(event_time)", ["20251024", "20261028", "20261029", "20261128"]),
            "inference_metrics_10s_parts": ("toYYYYMM(window_start)", ["202509", "202510", "202611"]),
            "schema_migrations": ("tuple()", ["tuple()"]),
        },
    )


def test_without_ttl_expired_partitions_are_dropped_and_the_rest_kept() -> None:
    store = _fake_1816()
    report = apply_retention(store, NOW, RULES[:2])  # the tables this fake has
    assert not report.ttl
    assert report.dropped == {"inference_events": ["20251024", "20261028"], "inference_metrics_10s_parts": ["202509"]}
    assert report.kept == {
        "inference_events": ["20261029", "20261128"],
        "inference_metrics_10s_parts": ["202510", "202611"],
    }
    assert report.dropped_count == 3
    assert report.skipped == {} and report.unparsable == {}
    assert store.executed == [
        "ALTER TABLE inference_events DROP PARTITION 20251024",
        "ALTER TABLE inference_events DROP PARTITION 20261028",
        "ALTER TABLE inference_metrics_10s_parts DROP PARTITION 202509",
    ]
    again = apply_retention(store, NOW)
    assert again.dropped_count == 0 and len(store.executed) == 3


def test_unparsable_partitions_are_kept_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore((18, 16, 1), {"inference_events": ("toYYYYMMDD(event_time)", ["19700000", "x", "20200101"])})
    with caplog.at_level(logging.WARNING, logger="store.retention"):
        report = apply_retention(store, NOW)
    assert report.dropped == {"inference_events": ["20200101"]}
    assert report.unparsable == {"inference_events": ["19700000", "x"]}
    assert report.kept == {"inference_events": []}
    assert store.tables["inference_events"][1] == ["19700000", "x"]
    assert "'x'" in caplog.text and "'19700000'" in caplog.text


def test_missing_tables_and_mismatched_partition_keys_are_skipped() -> None:
    store = FakeStore((18, 16, 1), {"alerts": ("toYYYYMMDD(fired_at)", ["20200101"])})
    rules = (RetentionRule("feedback_events", DAY, 30), RetentionRule("alerts", MONTH, 30))
    report = apply_retention(store, NOW, rules)
    assert report.skipped["feedback_events"] == "table does not exist"
    assert "toYYYYMMDD(fired_at)" in report.skipped["alerts"]
    assert report.dropped == {} and store.executed == []
    assert not any("system.parts" in sql for sql in store.queries)


def test_a_server_with_ttl_is_left_alone() -> None:
    store = _fake_1816()
    store.version = (19, 6, 2)
    report = apply_retention(store, NOW)
    assert report.ttl
    assert set(report.skipped) == {rule.table for rule in RULES}
    assert all("TTL" in reason for reason in report.skipped.values())
    assert report.dropped == {} and report.kept == {}
    assert store.executed == [] and store.queries == []
