"""``RecwatchWorkerStalled`` as the alerter reads it: a consumer group's committed and end offsets from the real
broker (``KafkaGroupOffsets``), fed to the rule: a group that committed and then went away while the topic grew
fires."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from alerting.service import KafkaGroupOffsets
from alerting.worker_health import StallRule
from infra import kafka

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        producer.produce(topic, b"x", partition=i % 2)
    assert producer.flush(30) == 0


def test_a_dead_group_behind_a_growing_topic_is_read_as_stalled(kafka_bootstrap: str) -> None:
    topic, group = f"test.stall.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(kafka_bootstrap, {topic: 2})
    _produce(kafka_bootstrap, topic, 10)
    worker = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    worker.commit(offsets=[TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 5)], asynchronous=False)
    worker.close()  # the group's only member is gone

    read = KafkaGroupOffsets(kafka_bootstrap)
    try:
        assert read(group) == {(topic, 0): (5, 5), (topic, 1): (5, 5)}
        rule = StallRule(stall_s=60)
        assert rule.observe(0, group, read(group)) == []
        _produce(kafka_bootstrap, topic, 10)  # the topic grows, nobody commits
        offsets = read(group)
        assert offsets == {(topic, 0): (5, 10), (topic, 1): (5, 10)}
        (fired,) = rule.observe(61, group, offsets)
        assert fired.kind == "fired" and fired.alert.labels["group"] == group
        assert fired.alert.labels["topic"] == topic
    finally:
        read.close()
