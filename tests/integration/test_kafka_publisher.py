"""The event publisher against the real broker: every event is accounted for, delivered or counted."""

from __future__ import annotations

import socket
import uuid

import pytest
from confluent_kafka import Consumer

from infra import kafka
from producers import KafkaEventPublisher, PublisherConfig
from schemas import InferenceEvent

pytestmark = pytest.mark.integration


def _events(n: int) -> list[InferenceEvent]:
    return [InferenceEvent(event_id=f"e{i}", request_id=f"r{i}", model="m", received_us=1 + i) for i in range(n)]


def test_every_published_event_is_delivered_once(kafka_bootstrap: str) -> None:
    topic = f"test-publisher-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(kafka_bootstrap, {topic: 3})
    publisher = KafkaEventPublisher(PublisherConfig(bootstrap=kafka_bootstrap, topic=topic))
    publisher.start()
    for event in _events(500):
        publisher.publish(event)
    assert publisher.close() == 0
    assert (publisher.stats.enqueued, publisher.stats.delivered, publisher.stats.failed) == (500, 500, 0)

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen: list[str] = []
    try:
        for _ in range(200):
            for msg in consumer.consume(500, timeout=0.5):
                assert msg.error() is None
                event = InferenceEvent.FromString(msg.value() or b"")
                assert msg.key() == event.request_id.encode()
                seen.append(event.event_id)
            if len(seen) >= 500:
                break
    finally:
        consumer.close()
    assert sorted(seen) == sorted(e.event_id for e in _events(500))


def test_events_that_cannot_be_delivered_are_counted_not_lost_silently() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    publisher = KafkaEventPublisher(PublisherConfig(bootstrap=dead, topic="nowhere"))
    publisher.start()
    for event in _events(100):
        publisher.publish(event)  # returns at once: nothing waits on the network
    assert publisher.close(timeout_s=1.0) == 100
    assert publisher.stats.enqueued == 100
    assert publisher.stats.delivered == 0
    assert publisher.stats.dropped["undelivered_at_close"] == 100
