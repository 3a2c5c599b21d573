"""The worker, assembled: two pipelines (inference, feedback) over the sinks, the window emitter, health.

No Faust here: ``stream_processors.faust_adapter`` feeds ``Worker.inference`` / ``Worker.feedback`` with takes
and calls ``Worker.revoke`` on rebalances. The pipelines share one sink thread (both write the feedback join) and
one ingest thread (the store engine's half of inference batches).

Health (``Worker.collect``, served as Prometheus text on ``/metrics`` by ``start_metrics_server``): consumer lag
per partition, batches and rows stored, store errors and retries, seconds since the last stored batch, dead
letters by reason. Everything is read at scrape time from counters the pipelines keep anyway: nothing is added
to the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import topics
from store.base import Store
from stream_processors.feedback_sink import FeedbackSink
from stream_processors.inference_sink import InferenceSink
from stream_processors.pipeline import Backoff, Clock, DeadLetters, Pipeline, SystemClock, Written
from stream_processors.sinks import FeedbackRows, InferenceRows
from stream_processors.window_emitter import WindowEmitter

__all__ = ["Worker", "WorkerSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    bootstrap: str
    data_dir: Path
    app_id: str = "recwatch-worker"
    source_topic: str = topics.INFERENCE
    feedback_topic: str = topics.FEEDBACK
    metrics_topic: str = topics.METRICS
    dead_letter_topic: str = topics.DEAD_LETTER
    window_s: int = 10
    allowed_lateness_s: int = 30
    # Records taken together (whole partition fetches: a take may go over by one fetch) ...
    batch_max_records: int = 40_000
    batch_max_rows: int = 60_000  # ... and written to the store in (equal) inserts of at most this many rows
    batch_within_s: float = 0.5  # how long a take waits for more when traffic is light ...
    batch_busy_within_s: float = 0.05  # ... and after a full take (a backlog): ``faust_adapter.take_ready``
    retention_interval_s: float = 3600.0  # how often the group's leader drops expired partitions (no-op with TTL)
    backoff: Backoff = field(default_factory=Backoff)  # between retries of a failing store
    # The consumer group: a worker that died is out of the group after session_timeout_s (its partitions go to
    # the others, or to its restarted self); a restarted broker sees the living ones back within a heartbeat.
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 20.0
    request_timeout_s: float = 30.0
    max_poll_interval_s: float = 3600.0  # a store outage keeps the partitions paused this long before leaving
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # /metrics; 0: any free port (logged); None: not served


class Worker:
    """The pipelines and what they share; construction does no I/O."""

    def __init__(
        self,
        settings: WorkerSettings,
        store: Store,
        dead_letters: DeadLetters,
        *,
        clock: Clock | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.inference_sink = InferenceSink(
            store,
            topic=settings.source_topic,
            window_s=settings.window_s,
            allowed_lateness_s=settings.allowed_lateness_s,
        )
        self.join = FeedbackSink(store, inference_topic=settings.source_topic, feedback_topic=settings.feedback_topic)
        self._sink_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recwatch-sink")
        self._ingest_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recwatch-ingest")
        common: dict[str, Any] = {
            "dead_letters": dead_letters,
            "clock": self.clock,
            "backoff": settings.backoff,
            "max_rows": settings.batch_max_rows,
            "sink_executor": self._sink_thread,
            "ingest_executor": self._ingest_thread,
            "on_fatal": on_fatal,
        }
        self.inference: Pipeline[Any] = Pipeline(
            InferenceRows(self.inference_sink, self.join),
            topic=settings.source_topic,
            on_written=self._logger("inference"),
            **common,
        )
        self.feedback: Pipeline[Any] = Pipeline(
            FeedbackRows(self.join), topic=settings.feedback_topic, on_written=self._logger("feedback"), **common
        )
        self.emitter = WindowEmitter(store, window_s=settings.window_s, allowed_lateness_s=settings.allowed_lateness_s)
        self.highwaters: dict[tuple[str, int], int] = {}  # end offsets of the assigned partitions (refreshed)
        self.assignment: set[tuple[str, int]] = set()
        self.metrics_address: tuple[str, int] | None = None
        self._metrics_server: Any = None

    def _logger(self, name: str) -> Callable[[Written], None]:
        def written(w: Written) -> None:
            log.info("%s batch: %d written, %d redelivered skipped; %s", name, w.rows, w.duplicates, w.detail)

        return written

    def pipelines(self) -> Iterator[tuple[str, Pipeline[Any]]]:
        yield self.settings.source_topic, self.inference
        yield self.settings.feedback_topic, self.feedback

    async def revoke(self, inference: Iterable[int], feedback: Iterable[int]) -> None:
        """A rebalance: both pipelines drop what is not stored and forget the partitions."""
        inference, feedback = list(inference), list(feedback)
        await self.inference.revoke(inference)
        await self.feedback.revoke(feedback)
        self.assignment.clear()

    def assigned(self, inference: Iterable[int], feedback: Iterable[int]) -> None:
        self.assignment = {(self.settings.source_topic, p) for p in inference}
        self.assignment |= {(self.settings.feedback_topic, p) for p in feedback}
        self.highwaters = {tp: o for tp, o in self.highwaters.items() if tp in self.assignment}

    def in_sink_thread(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(self._sink_thread, fn, *args)

    def lags(self) -> dict[tuple[str, int], int]:
        """Records on the broker past the last offset marked done (or, before any, the first one fetched), per
        assigned partition whose end offset is known."""
        out = {}
        for topic, pipeline in self.pipelines():
            stats = pipeline.stats
            for (t, p), end in self.highwaters.items():
                if t != topic:
                    continue
                done = stats.done.get(p)
                start = done + 1 if done is not None else stats.first_seen.get(p)
                if start is not None:
                    out[(t, p)] = max(0, end - start)
        return out

    def collect(self) -> Iterator[Any]:
        """Prometheus metric families (``prometheus_client`` custom collector protocol)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        lag = GaugeMetricFamily(
            "recwatch_worker_consumer_lag", "records past the last stored offset", labels=["topic", "partition"]
        )
        for (t, p), n in sorted(self.lags().items()):
            lag.add_metric([t, str(p)], n)
        yield lag
        families = {
            "batches": CounterMetricFamily("recwatch_worker_batches_stored", "batches stored", labels=["topic"]),
            "rows": CounterMetricFamily("recwatch_worker_rows_stored", "new rows stored", labels=["topic"]),
            "dups": CounterMetricFamily(
                "recwatch_worker_duplicates_skipped", "redelivered records the store held", labels=["topic"]
            ),
            "errors": CounterMetricFamily("recwatch_worker_store_errors", "failed store calls", labels=["topic"]),
            "retries": CounterMetricFamily("recwatch_worker_store_retries", "batches retried", labels=["topic"]),
            "dead": CounterMetricFamily(
                "recwatch_worker_dead_letters", "messages sent to the dead-letter topic", labels=["topic", "reason"]
            ),
        }
        since = GaugeMetricFamily(
            "recwatch_worker_seconds_since_last_stored_batch",
            "seconds since a batch was last stored (since start when none)",
            labels=["topic"],
        )
        outage = GaugeMetricFamily(
            "recwatch_worker_store_outage_seconds",
            "seconds the store has been failing (0: it answers)",
            labels=["topic"],
        )
        now = self.clock.monotonic()
        for topic, pipeline in self.pipelines():
            s = pipeline.stats
            families["batches"].add_metric([topic], s.batches_stored)
            families["rows"].add_metric([topic], s.rows_stored)
            families["dups"].add_metric([topic], s.duplicates_skipped)
            families["errors"].add_metric([topic], s.store_errors)
            families["retries"].add_metric([topic], s.retries)
            for reason, n in sorted(s.dead_letters.items()):
                families["dead"].add_metric([topic, reason], n)
            since.add_metric([topic], now - (s.last_stored_at if s.last_stored_at is not None else s.started_at))
            outage.add_metric([topic], now - s.outage_since if s.outage_since is not None else 0.0)
        yield from families.values()
        yield since
        yield outage

    def start_metrics_server(self) -> None:
        """Serve ``/metrics`` on ``settings.metrics_host:metrics_port`` (loopback); a port in use (another worker on
        this host) or 0 gives any free port. The address is logged and written to
        ``<data_dir>/metrics-<pid>.address``."""
        if self.settings.metrics_port is None:
            return
        import os

        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        host = self.settings.metrics_host
        try:
            server, _ = start_http_server(self.settings.metrics_port, addr=host, registry=registry)
        except OSError as exc:
            log.warning("metrics port %d: %s; using a free port", self.settings.metrics_port, exc)
            server, _ = start_http_server(0, addr=host, registry=registry)
        self._metrics_server = server
        self.metrics_address = (host, int(server.server_address[1]))
        address_file = self.settings.data_dir / f"metrics-{os.getpid()}.address"
        address_file.parent.mkdir(parents=True, exist_ok=True)
        address_file.write_text(f"{host}:{self.metrics_address[1]}\n")
        log.info("worker metrics on http://%s:%d/metrics", *self.metrics_address)

    def close(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        self._sink_thread.shutdown(wait=True)
        self._ingest_thread.shutdown(wait=True)
