"""Prometheus metrics of the model server, served at ``GET /metrics`` on the REST port.

:class:`ServingMetrics` is a :class:`serving.predict.RequestObserver`: ``observe(event)`` runs on the request
thread for every finished request and costs a dict lookup and four lock-protected increments (measured in
``docs/rest.md``; the labelled children are cached, never looked up by label values on the hot path).
Everything else is read when Prometheus scrapes: the event logger's counters, the batch queue depth, the
process's memory and CPU.

Series (``status`` is the gRPC code name, e.g. ``OK``, ``NOT_FOUND``, ``INVALID_ARGUMENT``)::

    recwatch_requests_total{model,version,label,api,status}                  counter
    recwatch_request_duration_seconds{model,version,label,api,status}        histogram (the event's total_us)
    recwatch_batch_size{model,version}                                       histogram (rows computed together)
    recwatch_cache_hits_total{model,version}                                 counter
    recwatch_queue_depth                                                     gauge (if a callable is given)
    recwatch_producer_<counter>_total, recwatch_producer_<gauge>,
    recwatch_producer_dropped_total{reason}                                  (if producer_stats is given)
    recwatch_result_cache_<counter>_total, recwatch_result_cache_<gauge>    (if cache_stats is given)
    process_resident_memory_bytes, process_cpu_seconds_total, ...            (prometheus_client's process collector)

Label sets are bounded: after ``max_series`` distinct (model, version, label, api, status) sets, requests with
new ones (e.g. random names of models that do not exist) are counted under ``model="_other"`` with empty
version and label.

Example::

    metrics = ServingMetrics(
        producer_stats=lambda: logger.stats,  # producers.EventLogger: a LoggerStats dataclass
        cache_stats=cache.stats,  # serving.cache.LruResultCache
        queue_depth=batcher.queued_requests,  # serving.batching.BatchingExecutor
    )
    predictor = Predictor(manager, logger, replica="r1", observers=[metrics])
    body, content_type = metrics.exposition()
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from schemas import InferenceEvent
from serving.after_response import wait_idle

log = logging.getLogger(__name__)

NAMESPACE: Final = "recwatch"
OTHER_MODEL: Final = "_other"
LATENCY_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Keys of the event logger's stats() (producers.stats.LoggerStats) that are levels, not running totals.
PRODUCER_GAUGES: Final = frozenset(
    {"queued", "queue_bytes", "in_flight", "spool_pending", "spool_bytes", "spool_segments", "kafka_up"}
)
CACHE_GAUGES: Final = frozenset({"bytes", "entries"})  # of serving.cache.CacheStats
REQUEST_LABELS: Final = ("model", "version", "label", "api", "status")

_CODE_NAMES: Final = {code.value[0]: code.name for code in grpc.StatusCode}
_SeriesKey = tuple[str, int, str, str, int]


@dataclass(frozen=True)
class _Series:
    """The prometheus_client children of one label set, resolved once."""

    requests: Any
    latency: Any
    batch: Any
    cache_hits: Any


class ServingMetrics:
    """Request metrics fed by :meth:`observe`, plus scrape-time collectors. Construction does no I/O (the
    process collector first reads ``/proc`` at the first scrape)."""

    def __init__(
        self,
        *,
        producer_stats: Callable[[], object] | None = None,
        producer_gauges: Collection[str] = PRODUCER_GAUGES,
        cache_stats: Callable[[], object] | None = None,
        queue_depth: Callable[[], float] | None = None,
        process: bool = True,
        max_series: int = 1000,
        latency_buckets_s: Sequence[float] = LATENCY_BUCKETS_S,
        batch_buckets: Sequence[float] = BATCH_BUCKETS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._max_series = max_series
        self._series: dict[_SeriesKey, _Series] = {}
        self._lock = threading.Lock()  # creating series only; observe() reads the dict without it
        self._requests = Counter(
            f"{NAMESPACE}_requests",
            "Finished prediction requests, by gRPC status code name",
            REQUEST_LABELS,
            registry=self.registry,
        )
        self._latency = Histogram(
            f"{NAMESPACE}_request_duration_seconds",
            "Time a request spent in the server (decode, queue, compute, event), as the event's latency.total_us",
            REQUEST_LABELS,
            buckets=latency_buckets_s,
            registry=self.registry,
        )
        self._batch = Histogram(
            f"{NAMESPACE}_batch_size",
            "Rows of the batch an answered, not cached request was computed in",
            ("model", "version"),
            buckets=batch_buckets,
            registry=self.registry,
        )
        self._cache_hits = Counter(
            f"{NAMESPACE}_cache_hits",
            "Requests answered from the result cache",
            ("model", "version"),
            registry=self.registry,
        )
        if queue_depth is not None:
            self.registry.register(_QueueDepthCollector(queue_depth))
        if producer_stats is not None:
            self.registry.register(_StatsCollector("producer", "Event logger", producer_stats, producer_gauges))
        if cache_stats is not None:
            self.registry.register(_StatsCollector("result_cache", "Result cache", cache_stats, CACHE_GAUGES))
        if process:
            self.registry.register(_ProcessCollector())

    def observe(self, event: InferenceEvent) -> None:
        """Count one finished request (RequestObserver); called on the request thread."""
        key = (event.model, event.version, event.label, event.api, event.status_code)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key)
        series.requests.inc()
        series.latency.observe(event.latency.total_us * 1e-6)
        if event.status_code == 0:
            if event.cache_hit:
                series.cache_hits.inc()
            else:
                series.batch.observe(event.batch_size)

    def _new_series(self, key: _SeriesKey) -> _Series:
        model, version, label, api, code = key
        status = _CODE_NAMES.get(code, str(code))
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                return series
            if len(self._series) >= self._max_series:
                model, version_text, label = OTHER_MODEL, "", ""
            else:
                version_text = str(version)
            labels = (model, version_text, label, api, status)
            series = _Series(
                requests=self._requests.labels(*labels),
                latency=self._latency.labels(*labels),
                batch=self._batch.labels(model, version_text),
                cache_hits=self._cache_hits.labels(model, version_text),
            )
            self._series[key] = series
            return series

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics in the Prometheus text format (or OpenMetrics if ``accept`` asks for it), and its
        content type. Requests answered a moment ago are counted first (their accounting runs after the
        answer is sent: serving/after_response.py); under steady load this waits at most 0.1 s."""
        wait_idle(0.1)
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _QueueDepthCollector(Collector):
    def __init__(self, depth: Callable[[], float]) -> None:
        self._depth = depth

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(f"{NAMESPACE}_queue_depth", "")]

    def collect(self) -> Iterable[Metric]:
        try:
            value = float(self._depth())
        except Exception:  # a failing source must not fail the scrape
            log.exception("queue depth callable raised")
            return []
        return [GaugeMetricFamily(f"{NAMESPACE}_queue_depth", "Requests waiting for a batch", value=value)]


class _StatsCollector(Collector):
    """A component's ``stats()`` (a mapping, a dataclass, or an object with ``as_dict()``), read at scrape time
    as ``recwatch_<prefix>_<key>``: numbers become counters (gauges for the keys in ``gauges``), bools gauges
    0/1, and a mapping of numbers (``dropped``) a counter labelled ``reason``."""

    def __init__(self, prefix: str, title: str, stats: Callable[[], object], gauges: Collection[str]) -> None:
        self._prefix = f"{NAMESPACE}_{prefix}"
        self._title = title
        self._stats = stats
        self._gauges = frozenset(gauges)

    def describe(self) -> Iterable[Metric]:
        return []  # names depend on the stats' keys; none clash with the request metrics

    def collect(self) -> Iterable[Metric]:
        try:
            stats = _as_mapping(self._stats())
        except Exception:  # a failing source must not fail the scrape
            log.exception("%s stats callable raised", self._title)
            return []
        metrics: list[Metric] = []
        for key, value in sorted(stats.items()):
            name = f"{self._prefix}_{_metric_name(str(key))}"
            doc = f"{self._title}: {key}"
            if isinstance(value, Mapping):
                family = CounterMetricFamily(name, f"{doc}, by reason", labels=["reason"])
                for reason, count in sorted(value.items()):
                    if isinstance(count, int | float):
                        family.add_metric([str(reason)], float(count))
                metrics.append(family)
            elif isinstance(value, bool) or (key in self._gauges and isinstance(value, int | float)):
                metrics.append(GaugeMetricFamily(name, doc, value=float(value)))
            elif isinstance(value, int | float):
                metrics.append(CounterMetricFamily(name, doc, value=float(value)))
        return metrics


def _as_mapping(stats: object) -> Mapping[str, Any]:
    if isinstance(stats, Mapping):
        return stats
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    as_dict = getattr(stats, "as_dict", None)
    if callable(as_dict):
        result = as_dict()
        if isinstance(result, Mapping):
            return result
    raise TypeError(f"stats() returned {type(stats).__name__}, not a mapping, dataclass or as_dict() object")


class _ProcessCollector(Collector):
    """prometheus_client's process collector (RSS, CPU seconds, fds, start time), built at the first scrape:
    its constructor reads ``/proc``."""

    def __init__(self) -> None:
        self._inner: Collector | None = None

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        if self._inner is None:
            from prometheus_client import ProcessCollector

            self._inner = ProcessCollector(registry=None)
        return self._inner.collect()


def _metric_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)
