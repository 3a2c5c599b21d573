"""Partial latency sketches merged in SQL (chDB and ClickHouse 18.16) give Python's merged quantiles."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Iterator

import pytest

from store import Store, open_store
from stream_processors.sketch import (
    ALPHA,
    LatencySketch,
    key_of,
    representative,
    sql_merge_quantiles,
    sql_representative,
)

pytestmark = pytest.mark.integration

LEVELS = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)
MODELS = ("ranker", "retrieval")
REPLICAS = ("serve-0", "serve-1", "serve-2")
PARTITIONS = (0, 1)

DDL = """
CREATE TABLE sketch_parts (
    window_start DateTime,
    model String,
    replica String,
    kafka_partition UInt16,
    latency_keys Array(UInt16),
    latency_counts Array(UInt64)
) ENGINE = MergeTree() ORDER BY (model, window_start, replica, kafka_partition)
"""


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    s.connect()
    try:
        s.execute(DDL)
        yield s
    finally:
        s.close()


def _raw_values(rng: random.Random, model: str, n: int) -> list[float]:
    if model == "ranker":  # heavy tail, integer µs as the events carry them
        return [float(min(int(200 * rng.paretovariate(1.2)), 10_000_000)) for _ in range(n)]
    values = [rng.lognormvariate(8, 1.2) for _ in range(n)]  # fractional µs, a few sub-µs zeros
    return values + [0.0] * rng.randint(0, 3)


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(len(ordered) * q), 1) - 1]


def _insert_parts(store: Store) -> tuple[dict[str, LatencySketch], dict[str, list[float]]]:
    """One partial row per (model, replica, partition), plus an empty one; returns Python's merges and raw data."""
    rng = random.Random(20240611)
    merged = {m: LatencySketch() for m in MODELS}
    raw: dict[str, list[float]] = {m: [] for m in MODELS}
    rows: dict[str, list[object]] = {
        "window_start": [],
        "model": [],
        "replica": [],
        "kafka_partition": [],
        "latency_keys": [],
        "latency_counts": [],
    }
    for model in MODELS:
        for replica in REPLICAS:
            for partition in PARTITIONS:
                values = _raw_values(rng, model, rng.randint(50, 3000))
                part = LatencySketch()
                part.add_many(values)
                merged[model].merge(part)
                raw[model] += values
                keys, counts = part.to_arrays()
                for column, value in zip(rows, (1_700_000_000, model, replica, partition, keys, counts), strict=True):
                    rows[column].append(value)
    for column, value in zip(rows, (1_700_000_000, "ranker", "serve-9", 5, [], []), strict=True):
        rows[column].append(value)  # a replica that served nothing in the window
    assert store.insert("sketch_parts", rows) == len(MODELS) * len(REPLICAS) * len(PARTITIONS) + 1
    return merged, raw


def test_sql_merge_equals_python_merge_and_exact_within_alpha(store: Store) -> None:
    merged, raw = _insert_parts(store)
    sql = sql_merge_quantiles("sketch_parts", "latency_keys", "latency_counts", LEVELS, group_by=["model"])
    result = store.query(sql)
    assert [row[0] for row in result.rows] == sorted(MODELS)
    for model, sql_quantiles in result.rows:
        python_quantiles = merged[model].quantiles(LEVELS)
        assert len(sql_quantiles) == len(LEVELS)
        for level, got, expected in zip(LEVELS, sql_quantiles, python_quantiles, strict=True):
            assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), (model, level)
            exact = exact_quantile(raw[model], level)
            assert abs(got - exact) <= ALPHA * (1 + 1e-6) * exact, (model, level, exact, got)


def test_sum_map_merges_rows_into_python_arrays(store: Store) -> None:
    merged, _ = _insert_parts(store)
    result = store.query(
        "SELECT model, tupleElement(m, 1) AS keys, tupleElement(m, 2) AS counts "
        "FROM (SELECT model, sumMap(latency_keys, latency_counts) AS m FROM sketch_parts GROUP BY model) "
        "ORDER BY model"
    )
    for model, keys, counts in result.rows:
        assert (list(keys), list(counts)) == merged[model].to_arrays()
        restored = LatencySketch.from_arrays(keys, counts)
        assert restored.quantiles(LEVELS) == merged[model].quantiles(LEVELS)


def test_sql_representative_matches_python_for_every_key(store: Store) -> None:
    # every finite float64 latency has a key <= 35489; the representatives of keys below it are finite
    # (the chDB daemon's JSON answers carry inf as null, so the last key is left to the unit tests)
    n = key_of(sys.float_info.max)
    result = store.query(
        f"SELECT k, {sql_representative('k')} AS rep FROM (SELECT toUInt16(number) AS k FROM system.numbers LIMIT {n})"
    )
    assert len(result.rows) == n
    worst = 0.0
    for key, rep in result.rows:
        expected = representative(key)
        if expected == 0.0:
            assert rep == 0.0
            continue
        worst = max(worst, abs(rep - expected) / expected)
    print(f"worst relative difference of SQL and Python representatives: {worst:.3g}")
    assert worst <= 1e-12
