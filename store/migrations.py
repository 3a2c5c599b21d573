"""Versioned schema migrations, rendered for the connected server's version.

Each migration runs once per database, in order; applied versions are recorded in ``schema_migrations``.
Migrations only add: a new table, a new column with a default, a new view. Tables and columns are
documented in docs/tables.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from store.base import Store
from store.features import Features

EVENTS_RETENTION_DAYS = 30
METRICS_RETENTION_DAYS = 400


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[Features], list[str]]


def _inference_tables(f: Features) -> list[str]:
    lc = f.low_cardinality
    events = f"""
CREATE TABLE IF NOT EXISTS inference_events (
    event_time DateTime DEFAULT toDateTime(intDiv(received_us, 1000000)),
    received_us Int64{f.codec("Delta, ZSTD")},
    sent_us Int64{f.codec("Delta, ZSTD")},
    event_id String,
    request_id String,
    model {lc("String")},
    version Int64,
    label {lc("String")},
    replica {lc("String")},
    api {lc("String")},
    signature {lc("String")},
    status_code Int32,
    error String,
    queue_us UInt32,
    batch_us UInt32,
    compute_us UInt32,
    total_us UInt32,
    batch_size UInt32,
    cache_hit UInt8,
    rows UInt32,
    input_names Array(String),
    input_shapes Array(String),
    output_name {lc("String")},
    score_count UInt32,
    score_mean Float32,
    score_min Float32,
    score_max Float32,
    scores Array(Float32),
    user_id String,
    item_ids Array(String),
    kafka_partition Int32,
    kafka_offset Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (model, version, event_time, event_id)
{f.ttl_clause(f"event_time + INTERVAL {EVENTS_RETENTION_DAYS} DAY")}
"""
    # One cumulative row per (window, model, version, label, replica, Kafka partition); a newer row for the same
    # key replaces the older one (version column: the last Kafka offset folded in). Readers use the view below.
    parts = f"""
CREATE TABLE IF NOT EXISTS inference_metrics_10s_parts (
    window_start DateTime,
    model {lc("String")},
    version Int64,
    label {lc("String")},
    replica {lc("String")},
    kafka_partition Int32,
    requests UInt64,
    errors UInt64,
    latency_sum_us UInt64,
    latency_max_us UInt32,
    last_offset Int64,
    updated_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(last_offset)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model, version, label, replica, window_start, kafka_partition)
{f.ttl_clause(f"window_start + INTERVAL {METRICS_RETENTION_DAYS} DAY")}
"""
    view = """
CREATE VIEW IF NOT EXISTS inference_metrics_10s AS
SELECT
    window_start, model, version, label, replica, requests, errors,
    latency_sum_us / requests AS latency_mean_us,
    latency_max_us
FROM (
    SELECT
        window_start, model, version, label, replica,
        sum(requests) AS requests,
        sum(errors) AS errors,
        sum(latency_sum_us) AS latency_sum_us,
        max(latency_max_us) AS latency_max_us
    FROM inference_metrics_10s_parts FINAL
    GROUP BY window_start, model, version, label, replica
)
"""
    return [events, parts, view]


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "inference events and 10 s metrics", _inference_tables),)


def migrate(store: Store, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply the migrations not yet recorded in the store's database; returns the versions applied."""
    store.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, applied_at DateTime) "
        "ENGINE = MergeTree() PARTITION BY tuple() ORDER BY version"
    )
    done = {row[0] for row in store.query("SELECT version FROM schema_migrations").rows}
    features = Features(store.server_version())
    applied = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        for statement in migration.statements(features):
            store.execute(statement.strip())
        store.insert(
            "schema_migrations",
            {"version": [migration.version], "name": [migration.name], "applied_at": [int(time.time())]},
        )
        applied.append(migration.version)
    return applied
