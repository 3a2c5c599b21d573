"""Prometheus metrics: what observe() counts, what a scrape shows, and that the exposition parses."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas import InferenceEvent
from serving.cache import CacheStats
from serving.metrics import OTHER_MODEL, ServingMetrics


def _event(
    *,
    model: str = "ranker",
    version: int = 3,
    label: str = "stable",
    code: grpc.StatusCode = grpc.StatusCode.OK,
    total_us: int = 1500,
    batch_size: int = 32,
    cache_hit: bool = False,
) -> InferenceEvent:
    event = InferenceEvent(
        model=model,
        version=version,
        label=label,
        api="predict",
        status_code=code.value[0],
        batch_size=batch_size,
        cache_hit=cache_hit,
    )
    event.latency.total_us = total_us
    return event


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(metrics: ServingMetrics, accept: str = "") -> Samples:
    """Every sample of a scrape, parsed back with prometheus_client's own parser."""
    body, _ = metrics.exposition(accept)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


REQUEST = {"model": "ranker", "version": "3", "label": "stable", "api": "predict"}


def test_requests_and_latency_are_counted_by_model_version_label_api_and_status():
    metrics = ServingMetrics(process=False)
    for total_us in (800, 1500, 30_000):
        metrics.observe(_event(total_us=total_us))
    metrics.observe(_event(code=grpc.StatusCode.INVALID_ARGUMENT, total_us=200))

    samples = _samples(metrics)

    assert _value(samples, "recwatch_requests_total", **REQUEST, status="OK") == 3
    assert _value(samples, "recwatch_requests_total", **REQUEST, status="INVALID_ARGUMENT") == 1
    ok = {**REQUEST, "status": "OK"}
    assert _value(samples, "recwatch_request_duration_seconds_count", **ok) == 3
    assert _value(samples, "recwatch_request_duration_seconds_sum", **ok) == pytest.approx(0.0323)
    assert _value(samples, "recwatch_request_duration_seconds_bucket", **ok, le="0.001") == 1
    assert _value(samples, "recwatch_request_duration_seconds_bucket", **ok, le="0.0025") == 2
    assert _value(samples, "recwatch_request_duration_seconds_bucket", **ok, le="+Inf") == 3


def test_batch_size_counts_computed_requests_and_cache_hits_their_own_counter():
    metrics = ServingMetrics(process=False)
    metrics.observe(_event(batch_size=32))
    metrics.observe(_event(batch_size=100))
    metrics.observe(_event(batch_size=32, cache_hit=True))
    metrics.observe(_event(batch_size=7, code=grpc.StatusCode.NOT_FOUND))

    samples = _samples(metrics)

    model = {"model": "ranker", "version": "3"}
    assert _value(samples, "recwatch_batch_size_count", **model) == 2
    assert _value(samples, "recwatch_batch_size_sum", **model) == 132
    assert _value(samples, "recwatch_batch_size_bucket", **model, le="32.0") == 1
    assert _value(samples, "recwatch_cache_hits_total", **model) == 1
    assert _value(samples, "recwatch_requests_total", **REQUEST, status="NOT_FOUND") == 1


def test_unbounded_label_values_fold_into_other_after_max_series():
    metrics = ServingMetrics(process=False, max_series=3)
    for i in range(10):
        metrics.observe(_event(model=f"no-such-model-{i}", code=grpc.StatusCode.NOT_FOUND, version=0, label=""))

    samples = _samples(metrics)

    requests = {k: v for k, v in samples.items() if k[0] == "recwatch_requests_total"}
    assert len(requests) == 4
    other = {"model": OTHER_MODEL, "version": "", "label": "", "api": "predict", "status": "NOT_FOUND"}
    assert _value(samples, "recwatch_requests_total", **other) == 7


def test_concurrent_observers_lose_no_counts():
    metrics = ServingMetrics(process=False)
    events = [_event(version=v) for v in (1, 2)]

    def work() -> None:
        for i in range(2000):
            metrics.observe(events[i % 2])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    samples = _samples(metrics)
    for version in ("1", "2"):
        labels = {**REQUEST, "version": version, "status": "OK"}
        assert _value(samples, "recwatch_requests_total", **labels) == 8000
        assert _value(samples, "recwatch_request_duration_seconds_count", **labels) == 8000


def test_producer_stats_are_read_at_scrape_time_as_counters_gauges_and_drop_reasons():
    stats = {
        "published": 10,
        "produced": 7,
        "queued": 2,
        "spool_bytes": 4096,
        "kafka_up": True,
        "dropped": {"queue_full": 1, "spool_full": 0},
        "note": "ignored: not a number",
    }
    metrics = ServingMetrics(process=False, producer_stats=lambda: stats)

    first = _samples(metrics)
    stats["published"] = 12
    stats["kafka_up"] = False
    second = _samples(metrics)

    assert _value(first, "recwatch_producer_published_total") == 10
    assert _value(second, "recwatch_producer_published_total") == 12
    assert _value(first, "recwatch_producer_queued") == 2
    assert _value(first, "recwatch_producer_spool_bytes") == 4096
    assert _value(first, "recwatch_producer_kafka_up") == 1 and _value(second, "recwatch_producer_kafka_up") == 0
    assert _value(first, "recwatch_producer_dropped_total", reason="queue_full") == 1
    assert not any("note" in name for name, _ in first)
    families = {f.name: f.type for f in text_string_to_metric_families(metrics.exposition()[0].decode())}
    assert families["recwatch_producer_published"] == "counter"
    assert families["recwatch_producer_queued"] == "gauge"


@dataclass(frozen=True)
class LoggerLikeStats:
    published: int
    spool_pending: int
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:  # properties are not series
        return sum(self.dropped.values())


def test_stats_may_be_dataclasses_as_components_return_them():
    metrics = ServingMetrics(
        process=False,
        producer_stats=lambda: LoggerLikeStats(published=4, spool_pending=1, dropped={"closed": 2}),
        cache_stats=lambda: CacheStats(hits=5, misses=2, evictions=1, expirations=0, bytes=2048, entries=3),
    )

    samples = _samples(metrics)
    families = {f.name: f.type for f in text_string_to_metric_families(metrics.exposition()[0].decode())}

    assert _value(samples, "recwatch_producer_published_total") == 4
    assert _value(samples, "recwatch_producer_spool_pending") == 1
    assert _value(samples, "recwatch_producer_dropped_total", reason="closed") == 2
    assert _value(samples, "recwatch_result_cache_hits_total") == 5
    assert _value(samples, "recwatch_result_cache_misses_total") == 2
    assert _value(samples, "recwatch_result_cache_bytes") == 2048
    assert families["recwatch_result_cache_entries"] == "gauge"
    assert families["recwatch_result_cache_evictions"] == "counter"
    assert {name for name, _ in samples if name.startswith("recwatch_producer")} == {
        "recwatch_producer_published_total",
        "recwatch_producer_spool_pending",
        "recwatch_producer_dropped_total",
    }  # the dropped_total property is not a series


def test_a_failing_source_does_not_fail_the_scrape():
    def broken() -> dict[str, int]:
        raise RuntimeError("logger gone")

    metrics = ServingMetrics(process=False, producer_stats=broken, cache_stats=lambda: 42, queue_depth=lambda: 1 / 0)
    metrics.observe(_event())

    samples = _samples(metrics)

    assert _value(samples, "recwatch_requests_total", **REQUEST, status="OK") == 1
    assert not any(name.startswith(("recwatch_producer", "recwatch_queue", "recwatch_result")) for name, _ in samples)


def test_queue_depth_is_a_gauge_read_at_scrape_time():
    depth = [5]
    metrics = ServingMetrics(process=False, queue_depth=lambda: depth[0])

    assert _value(_samples(metrics), "recwatch_queue_depth") == 5
    depth[0] = 0
    assert _value(_samples(metrics), "recwatch_queue_depth") == 0


def test_process_memory_and_cpu_are_exported():
    samples = _samples(ServingMetrics())

    assert _value(samples, "process_resident_memory_bytes") > 10 * 2**20
    assert _value(samples, "process_cpu_seconds_total") > 0


def test_openmetrics_is_served_when_asked_for():
    metrics = ServingMetrics(process=False)
    metrics.observe(_event())

    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    text_body, text_type = metrics.exposition()

    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    assert text_type.startswith("text/plain") and b"recwatch_requests_total" in text_body


def test_two_instances_do_not_share_series():
    a, b = ServingMetrics(process=False), ServingMetrics(process=False)
    a.observe(_event())

    assert ("recwatch_requests_total", frozenset({**REQUEST, "status": "OK"}.items())) not in _samples(b)
