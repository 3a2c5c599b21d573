"""Per-request event logging that never slows a request down and accounts for every event.

``EventLogger.publish(event)`` is the model server's :class:`~serving.publisher.EventPublisher`. On the request
thread it only decides sampling (a hash of ``request_id``), serializes the event and appends it to a bounded
in-memory queue — no I/O, no waiting, no exception. A delivery thread takes the queue every
``drain_interval_s`` and hands the events to Kafka, or, while Kafka is unreachable, writes them to an on-disk
spool that is replayed when Kafka is back (see :mod:`producers.delivery`, :mod:`producers.spool`).

Guarantees:

* Delivery is at least once: Kafka may receive an event twice (a replay after a crash, a delivery that
  succeeded but whose report was lost); consumers deduplicate on ``event_id``.
* Every published event is delivered, still pending (queue, librdkafka, spool), or counted in
  ``stats.dropped`` under its reason. The spool survives restarts: a new logger on the same ``spool_dir``
  replays what the previous one left.
* Overflow: when the queue is at ``queue_max_events`` or ``queue_max_bytes`` the newest event is dropped
  (``queue_full``); the request thread never writes to disk, so a slow disk cannot slow requests either.
  When the spool is at ``spool_max_bytes``, events that would go there are dropped (``spool_full``).
* ``close(timeout_s)`` delivers what it can within the timeout and spools the rest: a SIGTERM loses nothing
  (a SIGKILL loses the queue and librdkafka's buffer, at most a few ``drain_interval_s`` of events).

>>> from producers.testing import FakeProducer
>>> from schemas import InferenceEvent
>>> logger = EventLogger(EventLoggerConfig(bootstrap="unused", topic="t"), producer_factory=FakeProducer)
>>> logger.start(background=False)
>>> logger.publish(InferenceEvent(event_id="e1", request_id="r1"))
>>> _ = logger.step()  # what the delivery thread does every drain_interval_s
>>> logger.producer.deliver()  # the fake's test control: Kafka acknowledges everything in flight
>>> logger.close()
0
>>> logger.stats.produced, logger.stats.dropped
(1, {})
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from producers.config import EventLoggerConfig
from producers.delivery import Delivery
from producers.librdkafka import ProducerFactory, kafka_producer
from producers.sampling import Sampler
from producers.spool import Record, Spool
from producers.stats import Counters, LoggerStats

log = logging.getLogger(__name__)


class LoggableEvent(Protocol):
    """What ``publish`` needs of an event (an ``InferenceEvent`` has it)."""

    @property
    def request_id(self) -> str: ...
    def SerializeToString(self) -> bytes: ...


class EventLogger:
    """Logs events to ``config.topic``: ``start()``, then ``publish()`` from any thread, then ``close()``.

    ``clock`` (monotonic seconds) drives the spool's batching and the probe schedule; ``producer_factory``
    builds the Kafka producer from librdkafka properties (tests pass ``producers.testing.FakeProducer``).
    """

    def __init__(
        self,
        config: EventLoggerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        producer_factory: ProducerFactory = kafka_producer,
    ) -> None:
        self.config = config
        self._sampler = Sampler(config.sample_rate)
        self._counters = Counters()
        self._queue: deque[Record] = deque()  # guarded by self._counters.lock
        self._queue_bytes = 0
        self._closed = False
        self._started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spool = (
            Spool(config.spool_dir, max_bytes=config.spool_max_bytes, segment_bytes=config.spool_segment_bytes)
            if config.spool_dir is not None
            else None
        )
        self._delivery = Delivery(config, self._counters, self._spool, producer_factory=producer_factory, clock=clock)

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self, *, background: bool = True) -> None:
        """Open the spool and create the producer; start the delivery thread unless ``background=False``
        (then the caller drives delivery with :meth:`step`, as unit tests do).

        Raises SpoolLockedError when another process uses ``spool_dir``, SpoolError when it is unusable.
        """
        if self._started:
            return
        if self._spool is not None:
            self._spool.open()
        try:
            self._delivery.start(background=background)  # KafkaException on an invalid librdkafka property
        except BaseException:
            if self._spool is not None:
                self._spool.close()
            raise
        self._started = True
        if background:
            self._thread = threading.Thread(target=self._run, name="event-logger", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop accepting events, deliver what is possible within ``timeout_s`` and spool the rest.

        Returns how many events are left undelivered: waiting in the spool for the next logger on this
        ``spool_dir`` (segments an earlier process left and this one never read are not included), plus any
        dropped while closing (see ``stats.dropped``). Later ``publish`` calls are counted as dropped
        (``closed``). Idempotent.
        """
        c = self._counters
        with c.lock:
            if self._closed:
                return 0
            self._closed = True
            dropped_before = sum(c.dropped.values()) - c.dropped["closed"]
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        batch = self._take()
        if not self._started:  # nowhere to deliver or spool to
            with c.lock:
                c.in_flight -= len(batch)
                c.dropped["closed"] += len(batch)
            return len(batch)
        self._delivery.submit(batch)
        self._delivery.close(timeout_s)
        with c.lock:  # (publish() calls racing with close count as "closed", not as undelivered here)
            return c.spool_pending + sum(c.dropped.values()) - c.dropped["closed"] - dropped_before

    def __enter__(self) -> EventLogger:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ hot path

    def publish(self, event: LoggableEvent) -> None:
        """Sample, serialize and enqueue ``event``; returns at once and never raises."""
        c = self._counters
        try:
            request_id = event.request_id
            keep = self._sampler.keep(request_id)
            if keep:
                value = event.SerializeToString()
                key = request_id.encode()
        except Exception:
            with c.lock:
                c.published += 1
                c.dropped["error"] += 1
            log.debug("event not serializable; dropped", exc_info=True)
            return
        with c.lock:
            c.published += 1
            if not keep:
                c.sampled_out += 1
            elif self._closed:
                c.dropped["closed"] += 1
            elif (
                len(self._queue) >= self.config.queue_max_events
                or self._queue_bytes + len(key) + len(value) > self.config.queue_max_bytes
            ):
                c.dropped["queue_full"] += 1
            else:
                self._queue.append((key, value))
                self._queue_bytes += len(key) + len(value)

    # ------------------------------------------------------------------------------------- delivery loop

    def step(self) -> bool:
        """One round of the delivery thread: take the queue, hand it over, serve reports, replay, spool.

        Returns True when more work is ready at once. Call it only when started with ``background=False``.
        """
        self._delivery.submit(self._take())
        return self._delivery.tick()

    def _take(self) -> list[Record]:
        c = self._counters
        with c.lock:
            if not self._queue:
                return []
            batch = list(self._queue)
            self._queue.clear()
            self._queue_bytes = 0
            c.in_flight += len(batch)
        return batch

    def _run(self) -> None:
        last_error = -60.0
        while not self._stop.is_set():
            try:
                more = self.step()
            except Exception:  # a bug must not end delivery for the life of the process
                if time.monotonic() - last_error >= 60.0:
                    last_error = time.monotonic()
                    log.exception("event logger delivery round failed (logged once a minute)")
                more = False
            if not more:
                self._stop.wait(self.config.drain_interval_s)

    # --------------------------------------------------------------------------------------------- state

    @property
    def stats(self) -> LoggerStats:
        c = self._counters
        spool = self._spool
        with c.lock:
            return LoggerStats(
                published=c.published,
                sampled_out=c.sampled_out,
                queued=len(self._queue),
                queue_bytes=self._queue_bytes,
                in_flight=c.in_flight,
                produced=c.produced,
                replayed=c.replayed,
                spooled=c.spooled,
                recovered=c.recovered,
                spool_pending=c.spool_pending,
                spool_bytes=spool.bytes if spool is not None else 0,
                spool_segments=spool.segment_count if spool is not None else 0,
                delivery_failures=c.delivery_failures,
                kafka_up=self._delivery.up,
                dropped={reason: n for reason, n in c.dropped.items() if n},
            )

    def totals(self) -> tuple[int, int]:
        """(dropped, spooled) so far: cheap enough to stamp into every event (``InferenceEvent.producer``)."""
        c = self._counters
        return sum(c.dropped.values()), c.spooled

    @property
    def producer(self) -> Any:
        """The producer the logger created (a ``confluent_kafka.Producer``, or the factory's fake)."""
        return self._delivery.producer
