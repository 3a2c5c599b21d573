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


def _metrics_view(
    name: str, bucket: str, keys: tuple[str, ...], *, producer: bool = False, process_rss: bool = False
) -> list[str]:
    """A view over the partial rows: sums per ``keys`` with ``window_start`` = ``bucket``, latency percentiles
    merged from the sketches (stream_processors/sketch.py: the SQL representative value of a bucket key).
    ``producer`` adds the loggers' totals (migration 4 on), ``process_rss`` the servers' RSS (migration 7 on)."""
    from stream_processors.sketch import sql_quantiles

    group = ", ".join(("w", *keys))
    # the loggers' cumulative totals: per replica, the highest seen in the window (migration 4 on)
    outer_producer = ",\n    producer_dropped_total, producer_spooled_total" if producer else ""
    inner_producer = (
        ",\n        max(producer_dropped) AS producer_dropped_total"
        ",\n        max(producer_spooled) AS producer_spooled_total"
        if producer
        else ""
    )
    # the serving processes' RSS: the highest of the window's events (per replica, or over replicas)
    outer_rss = ",\n    process_rss_max_bytes" if process_rss else ""
    inner_rss = ",\n        max(process_rss_max) AS process_rss_max_bytes" if process_rss else ""
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
    late_events{outer_producer}{outer_rss}
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
        sum(late_events) AS late_events{inner_producer}{inner_rss}
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


def _feedback_tables(f: Features) -> list[str]:
    """Raw shop feedback, business metrics per 1 min window (stream_processors/feedback_sink.py) and the feedback
    that could not be attributed. Cumulative rows carry ``progress`` = (last inference offset + 1) + (last feedback
    offset + 1) of their Kafka partition: it only grows, so the newest row of a key replaces the older ones."""
    lc = f.low_cardinality
    events = f"""
CREATE TABLE IF NOT EXISTS feedback_events (
    ts DateTime DEFAULT toDateTime(intDiv(ts_us, 1000000)),
    ts_us Int64{f.codec("Delta, ZSTD")},
    event_id String,
    request_id String,
    user_id String,
    item_id String,
    category_id String,
    behavior {lc("String")},
    inference_offset Int64,
    held UInt8,
    kafka_partition Int32,
    kafka_offset Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(ts)
ORDER BY (behavior, ts, event_id)
{f.ttl_clause(f"ts + INTERVAL {EVENTS_RETENTION_DAYS} DAY")}
"""
    counts = "".join(f"    {name} UInt64,\n" for name in BUSINESS_COUNT_COLUMNS)
    parts = f"""
CREATE TABLE IF NOT EXISTS business_metrics_1m_parts (
    window_start DateTime,
    model {lc("String")},
    version Int64,
    label {lc("String")},
    kafka_partition Int32,
{counts}    last_inference_offset Int64,
    last_feedback_offset Int64,
    progress UInt64,
    updated_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(progress)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model, version, label, window_start, kafka_partition)
{f.ttl_clause(f"window_start + INTERVAL {METRICS_RETENTION_DAYS} DAY")}
"""
    sums = ",\n        ".join(f"sum({name}) AS {name}" for name in BUSINESS_COUNT_COLUMNS)
    view = f"""
CREATE VIEW IF NOT EXISTS business_metrics_1m AS
SELECT
    window_start, model, version, label, {", ".join(BUSINESS_COUNT_COLUMNS)},
    if(impressions = 0, 0, clicked_impressions / impressions) AS ctr,
    if(impressions = 0, 0, carted_impressions / impressions) AS add_to_cart_rate,
    if(impressions = 0, 0, bought_impressions / impressions) AS conversion_rate
FROM (
    SELECT
        window_start, model, version, label,
        {sums}
    FROM business_metrics_1m_parts FINAL
    GROUP BY window_start, model, version, label
)
"""
    unattributed = f"""
CREATE TABLE IF NOT EXISTS feedback_unattributed_parts (
    minute DateTime,
    kafka_partition Int32,
    reason {lc("String")},
    events UInt64,
    last_inference_offset Int64,
    last_feedback_offset Int64,
    progress UInt64,
    updated_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(progress)
PARTITION BY toYYYYMM(minute)
ORDER BY (reason, minute, kafka_partition)
{f.ttl_clause(f"minute + INTERVAL {METRICS_RETENTION_DAYS} DAY")}
"""
    # rows with reason '' (0 events) only mark how far a partition has counted (stream_processors/feedback_sink.py)
    unattributed_view = """
CREATE VIEW IF NOT EXISTS feedback_unattributed AS
SELECT minute, reason, sum(events) AS events
FROM feedback_unattributed_parts FINAL
WHERE reason != ''
GROUP BY minute, reason
"""
    return [events, parts, view, unattributed, unattributed_view]


# BusinessWindow's counts (stream_processors/attribution.py), in its field order
BUSINESS_COUNT_COLUMNS = (
    "impressions",
    "clicks",
    "carts",
    "favs",
    "buys",
    "clicked_impressions",
    "carted_impressions",
    "faved_impressions",
    "bought_impressions",
    "not_shown",
    "outside_window",
    "duplicates",
)


def _producer_totals(f: Features) -> list[str]:
    per_replica = ("model", "version", "label", "replica")
    return [
        "ALTER TABLE inference_metrics_10s_parts ADD COLUMN producer_dropped UInt64",
        "ALTER TABLE inference_metrics_10s_parts ADD COLUMN producer_spooled UInt64",
        *_metrics_view("inference_metrics_10s", "window_start", per_replica, producer=True),
        *_metrics_view("inference_metrics_1m", "toStartOfMinute(window_start)", per_replica, producer=True),
    ]


def _process_rss(f: Features) -> list[str]:
    """The serving processes' RSS per window: the max of the events' ``process_rss_bytes`` (0 = unknown)."""
    per_replica = ("model", "version", "label", "replica")
    minute = "toStartOfMinute(window_start)"
    return [
        "ALTER TABLE inference_metrics_10s_parts ADD COLUMN process_rss_max UInt64",
        *_metrics_view("inference_metrics_10s", "window_start", per_replica, producer=True, process_rss=True),
        *_metrics_view("inference_metrics_1m", minute, per_replica, producer=True, process_rss=True),
        *_metrics_view("inference_metrics_1m_by_version", minute, per_replica[:3], process_rss=True),
    ]


def _raw_gauges(f: Features) -> list[str]:
    """The per-event values the window rows take the max of (``producer_*``, ``process_rss_max``), kept on the raw
    rows too: the worker rebuilds window rows from ``inference_events`` after a crash (``protobuf_ingest``)."""
    return [
        "ALTER TABLE inference_events ADD COLUMN producer_dropped UInt64",
        "ALTER TABLE inference_events ADD COLUMN producer_spooled UInt64",
        "ALTER TABLE inference_events ADD COLUMN process_rss UInt64",
    ]


def _metrics_emitted(f: Features) -> list[str]:
    """How far the closed windows are on the metrics topic (stream_processors/window_emitter.py)."""
    return [
        "CREATE TABLE IF NOT EXISTS metrics_emitted (stream String, through DateTime, at DateTime) "
        "ENGINE = MergeTree() PARTITION BY tuple() ORDER BY (stream, through)"
    ]


def _alerting_tables(f: Features) -> list[str]:
    """Anomalies from the online detectors, the alerts made of them, their deliveries to receivers and the
    detectors' checkpoints (issue 5; ``detection/``, ``alerting/``). Rows whose state changes (an alert that
    resolves, a delivery that is retried) are written again with a larger ``updated_us``: read them ``FINAL``
    (or ``argMax(..., updated_us)``) to see the latest state."""
    lc = f.low_cardinality
    anomalies = f"""
CREATE TABLE IF NOT EXISTS anomalies (
    ts DateTime DEFAULT toDateTime(intDiv(ts_us, 1000000)),
    ts_us Int64,
    anomaly_id String,
    metric {lc("String")},
    model {lc("String")},
    version Int64,
    label {lc("String")},
    replica {lc("String")},
    value Float64,
    score Float64,
    threshold Float64,
    detector {lc("String")},
    detected_us Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (model, version, label, metric, replica, ts_us, anomaly_id)
{f.ttl_clause(f"ts + INTERVAL {METRICS_RETENTION_DAYS} DAY")}
"""
    alerts = f"""
CREATE TABLE IF NOT EXISTS alerts (
    starts_at DateTime DEFAULT toDateTime(intDiv(starts_at_us, 1000000)),
    starts_at_us Int64,
    ends_at_us Int64,
    fingerprint String,
    status {lc("String")},
    severity {lc("String")},
    alertname {lc("String")},
    model {lc("String")},
    version Int64,
    label {lc("String")},
    metric {lc("String")},
    label_names Array(String),
    label_values Array(String),
    annotation_names Array(String),
    annotation_values Array(String),
    anomaly_ids Array(String),
    updated_us Int64
) ENGINE = ReplacingMergeTree(updated_us)
PARTITION BY toYYYYMM(starts_at)
ORDER BY (fingerprint, starts_at_us)
{f.ttl_clause(f"starts_at + INTERVAL {METRICS_RETENTION_DAYS} DAY")}
"""
    deliveries = f"""
CREATE TABLE IF NOT EXISTS alert_deliveries (
    created DateTime DEFAULT toDateTime(intDiv(created_us, 1000000)),
    created_us Int64,
    delivery_id String,
    receiver {lc("String")},
    group_key String,
    status {lc("String")},
    payload String,
    state {lc("String")},
    attempts UInt32,
    next_attempt_us Int64,
    last_error String,
    delivered_us Int64,
    updated_us Int64
) ENGINE = ReplacingMergeTree(updated_us)
PARTITION BY toYYYYMM(created)
ORDER BY (receiver, delivery_id)
{f.ttl_clause(f"created + INTERVAL {METRICS_RETENTION_DAYS} DAY")}
"""
    checkpoints = """
CREATE TABLE IF NOT EXISTS detector_checkpoints (
    series String,
    detector String,
    through_us Int64,
    state String,
    updated_us Int64
) ENGINE = ReplacingMergeTree(updated_us)
PARTITION BY tuple()
ORDER BY series
"""
    return [anomalies, alerts, deliveries, checkpoints]


def _deployments(f: Features) -> list[str]:
    """Every rollout transition (issue 6; ``rollout/``): one row per status event of the model-updates topic,
    keyed by its ``update_id``, so a transition recorded twice (after a crash) is one row."""
    lc = f.low_cardinality
    return [
        f"""
CREATE TABLE IF NOT EXISTS deployments (
    ts DateTime DEFAULT toDateTime(intDiv(ts_us, 1000000)),
    ts_us Int64,
    update_id String,
    model {lc("String")},
    version Int64,
    parent_version Int64,
    action {lc("String")},
    canary_weight Float64,
    reason String,
    actor {lc("String")},
    caused_by String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (model, update_id)
"""
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "inference events and 10 s metrics", _inference_tables),
    Migration(2, "latency sketches, errors by status, scores, late events; 1 min views", _window_aggregates),
    Migration(3, "feedback events, business metrics per 1 min, unattributed feedback", _feedback_tables),
    Migration(4, "event loggers' dropped and spooled totals per replica and window", _producer_totals),
    Migration(5, "progress of the closed windows published on the metrics topic", _metrics_emitted),
    Migration(6, "anomalies, alerts, alert deliveries, detector checkpoints", _alerting_tables),
    Migration(7, "serving processes' RSS (max) per replica and window", _process_rss),
    Migration(8, "rollout transitions: canary deployed, weight changed, promoted, rolled back", _deployments),
    Migration(9, "raw events keep the logger totals and RSS: window rows can be rebuilt from them", _raw_gauges),
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
