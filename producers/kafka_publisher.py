"""Publishes one Protobuf event per request to Kafka without blocking the request.

``publish`` serializes the event and hands it to librdkafka's in-memory queue (``produce`` never waits on the
network); a background thread serves delivery reports. Delivery is at least once (idempotent producer,
``acks=all``, librdkafka retries); consumers dedup on ``event_id``. When the local queue is full the event is
dropped and counted under ``dropped["queue_full"]`` — the request is never delayed. (A bounded on-disk spool
for long Kafka outages comes with the serving issue.)
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas import topics

log = logging.getLogger(__name__)


class SerializableEvent(Protocol):
    request_id: str

    def SerializeToString(self) -> bytes: ...


@dataclass(frozen=True)
class PublisherConfig:
    bootstrap: str
    topic: str = topics.INFERENCE
    linger_ms: int = 5
    queue_max_messages: int = 200_000
    extra: dict[str, Any] = field(default_factory=dict)  # any librdkafka property


@dataclass
class PublisherStats:
    enqueued: int = 0
    delivered: int = 0
    failed: int = 0  # librdkafka gave up on delivery (after its retries)
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "enqueued": self.enqueued,
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": dict(self.dropped),
        }


class KafkaEventPublisher:
    """``publish(event)`` from any thread; ``start`` before, ``close`` after."""

    def __init__(self, config: PublisherConfig) -> None:
        self.config = config
        self.stats = PublisherStats()
        self._producer: Any = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        from confluent_kafka import Producer

        conf: dict[str, Any] = {
            "bootstrap.servers": self.config.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.config.linger_ms,
            "compression.type": "lz4",
            "queue.buffering.max.messages": self.config.queue_max_messages,
            # keep retrying while Kafka is briefly away; the spool (serving issue) covers long outages
            "message.timeout.ms": 300_000,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
        }
        conf.update(self.config.extra)
        self._producer = Producer(conf)
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-publisher-poll", daemon=True)
        self._poller.start()

    def publish(self, event: SerializableEvent) -> None:
        value = event.SerializeToString()
        try:
            self._producer.produce(self.config.topic, value, key=event.request_id.encode())
        except BufferError:
            with self._lock:
                self.stats.dropped["queue_full"] += 1
            return
        with self._lock:  # request threads publish concurrently; `+=` on an attribute is not atomic
            self.stats.enqueued += 1

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait until queued events are delivered; returns how many are still undelivered."""
        remaining: int = self._producer.flush(timeout_s)
        return remaining

    def close(self, timeout_s: float = 30.0) -> int:
        """Flush, stop the delivery thread; returns the number of events not delivered."""
        if self._producer is None:
            return 0
        remaining = self.flush(timeout_s)
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        if remaining:
            self.stats.dropped["undelivered_at_close"] += remaining
        self._producer = None
        return remaining

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            log.warning("event not delivered to %s: %s", self.config.topic, err)

    def _on_error(self, err: Any) -> None:
        log.warning("kafka: %s", err)
