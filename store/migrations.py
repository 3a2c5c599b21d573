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


_WINDOW_COLUMNS_V2 = (
    ("error_codes", "Array(Int32)"),  # gRPC status codes of the errors, ascending; counts in error_counts
    ("error_counts", "Array(UInt64)"),
    ("latency_keys", "Array(UInt16)"),  # total_us sketch: bucket keys (stream_processors/sketch.py)
    ("latency_counts", "Array(UInt64)"),
    ("queue_sum_us", "UInt64"),
    ("compute_sum_us", "UInt64"),
    ("batch_size_sum", "UInt64"),
    ("rows_sum", "UInt64"),
    ("cache_hits", "UInt64"),
    ("score_count", "UInt64"),  # scores (first output's head values) folded into the score statistics
    ("score_sum", "Float64"),
    ("score_sumsq", "Float64"),
    ("score_hist", "Array(UInt64)"),  # 10 equal bins over [0, 1], out-of-range scores clamped to the ends
    ("late_events", "UInt64"),  # events of this window that arrived after the watermark closed it
    ("max_event_us", "Int64"),  # the partition's latest event time when the row was written (watermark)
)

_QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99)


def _metrics_view(name: str, bucket: str, keys: tuple[str, ...]) -> list[str]:
    """A view over the partial rows: sums per ``keys`` with ``window_start`` = ``bucket``, latency percentiles
    merged from the sketches (stream_processors/sketch.py: the SQL representative value of a bucket key)."""
    from stream_processors.sketch import sql_quantiles

    group = ", ".join(("w", *keys))
    levels = ", ".join(f"q[{i + 1}] AS latency_p{round(level * 100)}_us" for i, level in enumerate(_QUANTILE_LEVELS))
    return [
        f"DROP TABLE IF EXISTS {name}",
        f"""
CREATE VIEW {name} AS
SELECT
    w AS window_start, {", ".join(keys)}, requests, errors, errors_by_status,
    if(requests = 0, 0, requests / {bucket_seconds(bucket)}) AS throughput_rps,
    if(requests = 0, 0, latency_sum_us / requests) AS latency_mean_us,
    {levels},
    latency_max_us,
    if(requests = 0, 0, queue_sum_us / requests) AS queue_mean_us,
    if(requests = 0, 0, compute_sum_us / requests) AS compute_mean_us,
    if(requests = 0, 0, batch_size_sum / requests) AS batch_size_mean,
    if(requests = 0, 0, cache_hits / requests) AS cache_hit_rate,
    if(score_count = 0, 0, score_sum / score_count) AS score_mean,
    if(score_count = 0, 0, sqrt(greatest(score_sumsq / score_count - pow(score_sum / score_count, 2), 0))) AS score_std,
    score_hist,
    late_events
FROM (
    SELECT
        {bucket} AS w, {", ".join(keys)},
        sum(requests) AS requests,
        sum(errors) AS errors,
        sumMap(error_codes, error_counts) AS errors_by_status,
        sum(latency_sum_us) AS latency_sum_us,
        max(latency_max_us) AS latency_max_us,
        sum(queue_sum_us) AS queue_sum_us,
        sum(compute_sum_us) AS compute_sum_us,
        sum(batch_size_sum) AS batch_size_sum,
        sum(cache_hits) AS cache_hits,
        sum(score_count) AS score_count,
        sum(score_sum) AS score_sum,
        sum(score_sumsq) AS score_sumsq,
        sumForEach(score_hist) AS score_hist,
        sum(late_events) AS late_events
    FROM inference_metrics_10s_parts FINAL
    GROUP BY {group}
) AS sums
ANY LEFT JOIN (
    SELECT
        {bucket} AS w, {", ".join(keys)},
        {sql_quantiles(_QUANTILE_LEVELS, "_k", "_c")} AS q
    FROM inference_metrics_10s_parts FINAL
    ARRAY JOIN latency_keys AS _k, latency_counts AS _c
    GROUP BY {group}
) AS percentiles USING ({group})
""",
    ]


def bucket_seconds(bucket: str) -> int:
    return 60 if "Minute" in bucket else 10


def _window_aggregates(f: Features) -> list[str]:
    adds = [f"ALTER TABLE inference_metrics_10s_parts ADD COLUMN {n} {t}" for n, t in _WINDOW_COLUMNS_V2]
    per_replica = ("model", "version", "label", "replica")
    return [
        *adds,
        *_metrics_view("inference_metrics_10s", "window_start", per_replica),
        *_metrics_view("inference_metrics_1m", "toStartOfMinute(window_start)", per_replica),
        *_metrics_view("inference_metrics_1m_by_version", "toStartOfMinute(window_start)", per_replica[:3]),
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "inference events and 10 s metrics", _inference_tables),
    Migration(2, "latency sketches, errors by status, scores, late events; 1 min views", _window_aggregates),
)


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
