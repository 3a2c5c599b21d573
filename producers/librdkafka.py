"""The part of librdkafka (through confluent-kafka) the event logger depends on, and how it reads its errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

DeliveryCallback = Callable[[Any, Any], None]
"""``on_delivery(err: KafkaError | None, msg)``, called from ``poll``/``flush`` on the polling thread."""

REJECTED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError._INVALID_ARG})
"""Kafka refuses the record itself: retrying or spooling it can never succeed, so it is dropped (``rejected``)."""

PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
"""Our own purge (close, fatal error): the event goes to the spool, but it says nothing about Kafka's health."""


class ProducerLike(Protocol):
    """What the logger uses of ``confluent_kafka.Producer`` (``producers.testing.FakeProducer`` has it too)."""

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryCallback,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None: ...
    def poll(self, timeout: float = -1) -> int: ...
    def flush(self, timeout: float = -1) -> int: ...
    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None: ...
    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...
    def __len__(self) -> int: ...


ProducerFactory = Callable[[dict[str, Any]], ProducerLike]


def kafka_producer(conf: dict[str, Any]) -> ProducerLike:
    """The real producer (the default factory)."""
    from confluent_kafka import Producer

    producer: ProducerLike = Producer(conf)
    return producer


def is_rejected(exc: KafkaException) -> bool:
    """Whether ``produce`` raised because of the record itself (e.g. larger than ``message.max.bytes``)."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() in REJECTED
