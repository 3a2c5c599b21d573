"""Retention on servers without table TTL (ClickHouse before 19.6, e.g. Debian's 18.16): drop old partitions.

On servers with TTL the tables carry ``TTL`` clauses (store/migrations.py) and :func:`apply_retention` does
nothing. Otherwise it drops, per :data:`RULES` entry, every partition whose *whole* time range ended at or before
``now - days``: a partition still holding one row younger than that is kept, so rows live at least ``days``
days and at most one partition's span longer. The current partition, partitions that cannot be read as
dates, tables that do not exist yet and tables partitioned differently from their rule are never touched.

Partition values are dates in the server's time zone (``toYYYYMMDD(event_time)`` is evaluated there), so the
ranges are compared in that zone. Run it periodically (daily is enough); running it twice drops nothing new.

>>> expired_partitions(["20261028", "20261029", "20261128"], DAY, 30, datetime(2026, 11, 28, 12, 0))
['20261028']
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from store.base import Store
from store.features import Features
from store.migrations import EVENTS_RETENTION_DAYS, METRICS_RETENTION_DAYS

log = logging.getLogger(__name__)

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Granularity(enum.Enum):
    """The time span of one partition, named by the ClickHouse function of the ``PARTITION BY`` key."""

    DAY = "toYYYYMMDD"  # partition value '20261128'
    MONTH = "toYYYYMM"  # partition value '202611'

    @property
    def digits(self) -> int:
        return 8 if self is Granularity.DAY else 6

    def start(self, partition: str) -> date | None:
        """The first day of the partition, or ``None`` when ``partition`` is not such a value."""
        if len(partition) != self.digits or not partition.isascii() or not partition.isdigit():
            return None
        day = int(partition[6:]) if self is Granularity.DAY else 1
        try:
            return date(int(partition[:4]), int(partition[4:6]), day)
        except ValueError:  # month 13, February 30, year 0
            return None

    def end(self, start: date) -> date:
        """The first day after the partition that starts on ``start``."""
        if self is Granularity.DAY:
            return start + timedelta(days=1)
        return date(start.year + 1, 1, 1) if start.month == 12 else date(start.year, start.month + 1, 1)

    def matches(self, partition_key: str) -> bool:
        """Whether a table's ``partition_key`` (as in ``system.tables``) is this function of one column."""
        return re.fullmatch(rf"{self.value}\(\s*`?\w+`?\s*\)", partition_key.strip()) is not None


DAY = Granularity.DAY
MONTH = Granularity.MONTH


@dataclass(frozen=True)
class RetentionRule:
    """Keep ``table``'s rows for at least ``days`` days; its partition key is ``granularity`` of a time column."""

    table: str
    granularity: Granularity
    days: int

    def __post_init__(self) -> None:
        if not _TABLE_NAME.fullmatch(self.table):
            raise ValueError(f"not a plain table name: {self.table!r}")
        if self.days < 1:
            raise ValueError(f"{self.table}: retention must be at least 1 day, got {self.days}")


# Tables without an entry here are kept forever on servers without TTL. Rules for tables a later migration
# creates can be listed before it runs: missing tables are skipped.
RULES: tuple[RetentionRule, ...] = (
    RetentionRule("inference_events", DAY, EVENTS_RETENTION_DAYS),
    RetentionRule("inference_metrics_10s_parts", MONTH, METRICS_RETENTION_DAYS),
    RetentionRule("feedback_events", DAY, EVENTS_RETENTION_DAYS),
    RetentionRule("business_metrics_1m_parts", MONTH, METRICS_RETENTION_DAYS),
    RetentionRule("feedback_unattributed_parts", MONTH, METRICS_RETENTION_DAYS),
    RetentionRule("anomalies", MONTH, METRICS_RETENTION_DAYS),
    RetentionRule("alerts", MONTH, METRICS_RETENTION_DAYS),
    RetentionRule("alert_deliveries", MONTH, METRICS_RETENTION_DAYS),
)


@dataclass
class RetentionReport:
    """What :func:`apply_retention` did, per table; partition values as in ``system.parts``."""

    ttl: bool = False  # the server expires rows by TTL itself: nothing was looked at
    dropped: dict[str, list[str]] = field(default_factory=dict)
    kept: dict[str, list[str]] = field(default_factory=dict)
    unparsable: dict[str, list[str]] = field(default_factory=dict)  # kept too: not a date of the rule's span
    skipped: dict[str, str] = field(default_factory=dict)  # table -> why it was not looked at

    @property
    def dropped_count(self) -> int:
        return sum(len(values) for values in self.dropped.values())


def _aware(now: datetime | float) -> datetime:
    """``now`` as an aware datetime: floats are Unix seconds, naive datetimes are UTC (as everywhere in store)."""
    if isinstance(now, datetime):
        # in UTC: "- timedelta(days=…)" on a zoned datetime is wall-clock arithmetic, an hour off across DST
        return now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(now, tz=UTC)


def expired_partitions(
    partitions: Iterable[str],
    granularity: Granularity,
    days: int,
    now: datetime | float,
    tz: tzinfo = UTC,
) -> list[str]:
    """The partitions whose whole range (dates in ``tz``) ended at or before ``now - days``, in input order.

    Never the partition holding ``now``; never a value that is not a date of ``granularity``.
    """
    current = _aware(now)
    cutoff = current - timedelta(days=days)
    expired = []
    for partition in partitions:
        start = granularity.start(partition)
        if start is None:
            continue
        end = granularity.end(start)
        start_at = datetime.combine(start, time(), tzinfo=tz)
        end_at = datetime.combine(end, time(), tzinfo=tz)
        if start_at <= current < end_at:
            continue
        if end_at <= cutoff:
            expired.append(partition)
    return expired


def _server_timezone(store: Store) -> tzinfo:
    name = str(store.query("SELECT timezone()").scalar())
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown server time zone %r: reading partition dates as UTC", name)
        return UTC


def _partition_keys(store: Store, tables: Sequence[str]) -> dict[str, str]:
    names = ", ".join(f"'{table}'" for table in tables)  # RetentionRule allows only [A-Za-z0-9_] names
    rows = store.query(
        f"SELECT name, partition_key FROM system.tables WHERE database = currentDatabase() AND name IN ({names})"
    ).rows
    return {str(name): str(key) for name, key in rows}


def apply_retention(store: Store, now: datetime | float, rules: Sequence[RetentionRule] = RULES) -> RetentionReport:
    """Drop the expired partitions of ``rules``' tables in the store's database, unless the server has TTL.

    ``now`` is an aware or naive-UTC datetime or Unix seconds. Each drop is one
    ``ALTER TABLE t DROP PARTITION <value>`` (on 18.16 the value of a numeric key must be unquoted); a failing
    statement raises :class:`store.base.QueryError` after the earlier drops took effect, so a rerun continues.
    """
    report = RetentionReport()
    version = store.server_version()
    if Features(version).ttl:
        report.ttl = True
        server = ".".join(str(part) for part in version)
        for rule in rules:
            report.skipped[rule.table] = f"TTL: ClickHouse {server} expires rows itself"
        return report
    if not rules:
        return report
    tz = _server_timezone(store)
    keys = _partition_keys(store, [rule.table for rule in rules])
    for rule in rules:
        key = keys.get(rule.table)
        if key is None:
            report.skipped[rule.table] = "table does not exist"
            continue
        if not rule.granularity.matches(key):
            report.skipped[rule.table] = f"partition key is {key!r}, the rule expects {rule.granularity.value}(…)"
            log.warning("retention: %s skipped: %s", rule.table, report.skipped[rule.table])
            continue
        partitions = sorted(
            str(row[0])
            for row in store.query(
                "SELECT DISTINCT partition FROM system.parts "
                f"WHERE database = currentDatabase() AND table = '{rule.table}' AND active"
            ).rows
        )
        unparsable = [p for p in partitions if rule.granularity.start(p) is None]
        for partition in unparsable:
            log.warning(
                "retention: %s: partition %r is not a %s value; kept", rule.table, partition, rule.granularity.value
            )
        expired = expired_partitions(partitions, rule.granularity, rule.days, now, tz)
        dropped = report.dropped.setdefault(rule.table, [])
        for partition in expired:
            # digits only (Granularity.start parsed it): safe to splice, and 18.16 rejects a quoted value
            store.execute(f"ALTER TABLE {rule.table} DROP PARTITION {partition}")
            log.info("retention: %s: dropped partition %s (older than %d days)", rule.table, partition, rule.days)
            dropped.append(partition)
        report.kept[rule.table] = [p for p in partitions if p not in expired and p not in unparsable]
        if unparsable:
            report.unparsable[rule.table] = unparsable
    return report
