"""Fakes for tests of code that logs events: ``FakeProducer`` stands in for ``confluent_kafka.Producer``.

Nothing leaves the process; the test decides the fate of every message::

    logger = EventLogger(config, producer_factory=FakeProducer)
    logger.start(background=False)
    ...publish...
    logger.step()                       # the delivery thread's round: events reach the fake
    logger.producer.fail(3)             # the three oldest messages time out (reports come with the next poll)
    logger.producer.reachable = False   # metadata probes fail, as when no broker answers
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException

DeliveryCallback = Callable[[Any, Any], None]


@dataclass(frozen=True)
class FakeMessage:
    """What a delivery report carries (``confluent_kafka.Message``'s accessors)."""

    topic_name: str
    key_bytes: bytes | None
    value_bytes: bytes | None

    def topic(self) -> str:
        return self.topic_name

    def key(self) -> bytes | None:
        return self.key_bytes

    def value(self) -> bytes | None:
        return self.value_bytes

    def error(self) -> None:
        return None


class FakeProducer:
    """Holds produced messages in ``in_flight`` until :meth:`deliver` or :meth:`fail`; reports and errors
    are served by the next ``poll``/``flush``, on the calling thread, as librdkafka does. Not thread-safe."""

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        self.conf = dict(conf or {})
        self.max_messages = int(self.conf.get("queue.buffering.max.messages", 100_000))
        self.max_message_bytes = int(self.conf.get("message.max.bytes", 1_000_000))
        self.in_flight: list[tuple[FakeMessage, DeliveryCallback | None]] = []
        self.delivered: list[FakeMessage] = []  # every acknowledged message, in acknowledgement order
        self.reachable = True  # what list_topics answers
        self.partitions = 1
        self.closed = False
        self._reports: deque[Callable[[], None]] = deque()

    # ------------------------------------------------------------------------ the Producer API the logger uses

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryCallback | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        if len(self) >= self.max_messages:
            raise BufferError("Local: Queue full")
        if len(value or b"") + len(key or b"") > self.max_message_bytes:  # librdkafka refuses it at once
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "fake: message too large"))
        self.in_flight.append((FakeMessage(topic, key, value), on_delivery))

    def poll(self, timeout: float = -1) -> int:
        served = 0
        while self._reports:
            self._reports.popleft()()
            served += 1
        return served

    def flush(self, timeout: float = -1) -> int:
        self.poll(0)
        return len(self)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.fail(code=KafkaError._PURGE_INFLIGHT)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        if not self.reachable:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "fake: no broker answers"))
        partitions = {p: SimpleNamespace(id=p, leader=0, error=None) for p in range(self.partitions)}
        names = [topic] if topic is not None else []
        return SimpleNamespace(topics={n: SimpleNamespace(topic=n, error=None, partitions=partitions) for n in names})

    def close(self) -> bool:
        self.closed = True
        return True

    def __len__(self) -> int:
        return len(self.in_flight) + len(self._reports)

    # --------------------------------------------------------------------------------------- test controls

    def deliver(self, n: int | None = None) -> None:
        """Acknowledge the ``n`` oldest messages in flight (all by default)."""
        for msg, cb in self._take(n):
            self.delivered.append(msg)
            self._report(cb, None, msg)

    def fail(self, n: int | None = None, code: int = KafkaError._MSG_TIMED_OUT) -> None:
        """Fail the ``n`` oldest messages in flight (all by default) with ``code``."""
        for msg, cb in self._take(n):
            self._report(cb, KafkaError(code), msg)

    def raise_error(self, code: int, *, fatal: bool = False) -> None:
        """Report a client-level error (``error_cb``), e.g. ``KafkaError._ALL_BROKERS_DOWN``."""
        error_cb = self.conf.get("error_cb")
        if error_cb is not None:
            err = KafkaError(code, "fake error", fatal=fatal)
            self._reports.append(lambda: error_cb(err))

    def _take(self, n: int | None) -> list[tuple[FakeMessage, DeliveryCallback | None]]:
        k = len(self.in_flight) if n is None else min(n, len(self.in_flight))
        taken, self.in_flight = self.in_flight[:k], self.in_flight[k:]
        return taken

    def _report(self, cb: DeliveryCallback | None, err: KafkaError | None, msg: FakeMessage) -> None:
        if cb is not None:
            self._reports.append(lambda: cb(err, msg))
