"""EventLogger against real Kafka: normal delivery, a broker outage under load, and a restart while Kafka is down.

The outage tests run their own single-node broker (free loopback ports, a temporary home) so they can stop and
start it without disturbing the session broker other tests use.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from infra import kafka
from producers import EventLogger, EventLoggerConfig
from recwatch.settings import Settings
from schemas import InferenceEvent
from tests.ports import free_ports

pytestmark = pytest.mark.integration


def _event(i: int, run: str) -> InferenceEvent:
    return InferenceEvent(
        event_id=f"{run}-{i}", request_id=f"req-{run}-{i}", model="m", version=1, received_us=1_700_000_000_000_000 + i
    )


def _consume(bootstrap: str, topic: str, expected: set[str], timeout_s: float = 60.0) -> Counter[str]:
    """event_id -> how many times it is on the topic; stops once every expected id was seen (or at timeout)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    idle_after_complete = 0
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.5)
            for msg in batch:
                assert msg.error() is None, msg.error()
                event = InferenceEvent.FromString(msg.value() or b"")
                assert msg.key() == event.request_id.encode()
                seen[event.event_id] += 1
            if expected <= seen.keys():
                idle_after_complete = 0 if batch else idle_after_complete + 1
                if idle_after_complete >= 2:  # read on a little, so duplicates are counted too
                    break
    finally:
        consumer.close()
    return seen


def _wait_drained(logger: EventLogger, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = logger.stats
        if s.kafka_up and s.queued == s.in_flight == s.spool_pending == 0 and s.spool_segments == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"spool not drained after {timeout_s}s: {logger.stats}")


# ------------------------------------------------------------------------------------------------ normal


def test_every_event_is_delivered_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"test-logger-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(kafka_bootstrap, {topic: 3})
    run = uuid.uuid4().hex[:6]
    n = 2000
    logger = EventLogger(EventLoggerConfig(bootstrap=kafka_bootstrap, topic=topic, spool_dir=tmp_path / "spool"))
    logger.start()
    for i in range(n):
        logger.publish(_event(i, run))
    assert logger.close(timeout_s=30) == 0
    s = logger.stats
    assert (s.published, s.produced, s.spooled, s.dropped) == (n, n, 0, {})
    seen = _consume(kafka_bootstrap, topic, {f"{run}-{i}" for i in range(n)})
    assert seen == Counter({f"{run}-{i}": 1 for i in range(n)})


# ------------------------------------------------------------------------------------------------ outage


class Broker:
    """A broker of our own, to stop and start."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_ports()
        self.bootstrap = ""

    def start(self) -> None:
        self.bootstrap = kafka.start(self.home, cache=Settings.from_env().cache, base_port=self.port).bootstrap

    def stop(self) -> None:
        kafka.stop(self.home)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("outage-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _outage_config(broker: Broker, topic: str, spool: Path) -> EventLoggerConfig:
    return EventLoggerConfig(
        bootstrap=broker.bootstrap,
        topic=topic,
        spool_dir=spool,
        message_timeout_ms=5000,
        spool_segment_bytes=256 * 1024,  # several segments, so replay order and deletion are exercised
        extra={"log_level": 0},  # the broker is down on purpose: keep librdkafka's connect errors quiet
    )


def test_a_broker_outage_under_load_loses_nothing_and_never_blocks_publish(broker: Broker, tmp_path: Path) -> None:
    topic = f"test-outage-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(broker.bootstrap, {topic: 3})
    run = uuid.uuid4().hex[:6]
    logger = EventLogger(_outage_config(broker, topic, tmp_path / "spool"))
    logger.start()

    published: list[str] = []
    call_ns: list[int] = []
    stop = threading.Event()

    def load(rate_per_s: int = 500) -> None:
        i, start = 0, time.monotonic()
        while not stop.is_set():
            event = _event(i, run)
            t0 = time.perf_counter_ns()
            logger.publish(event)
            call_ns.append(time.perf_counter_ns() - t0)
            published.append(event.event_id)
            i += 1
            time.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))

    thread = threading.Thread(target=load, name="load")
    thread.start()
    try:
        time.sleep(4)
        broker.stop()
        t_down = time.monotonic()
        while logger.stats.kafka_up and time.monotonic() - t_down < 10:
            time.sleep(0.05)
        assert not logger.stats.kafka_up, "the outage was not noticed"
        time.sleep(12)
        spooled_during_outage = logger.stats.spooled
        broker.start()
        time.sleep(4)
    finally:
        stop.set()
        thread.join()
    _wait_drained(logger, timeout_s=60)
    assert logger.close(timeout_s=30) == 0

    s = logger.stats
    assert s.published == len(published)
    assert s.dropped == {}
    assert spooled_during_outage > 0
    assert s.replayed == s.spooled  # every spooled event came back out
    assert max(call_ns) < 50e6, f"publish() took {max(call_ns) / 1e6:.1f} ms"

    seen = _consume(broker.bootstrap, topic, set(published), timeout_s=90)
    assert seen.keys() == set(published)  # zero loss, nothing foreign
    duplicates = sum(seen.values()) - len(seen)
    p99_us = sorted(call_ns)[len(call_ns) * 99 // 100] / 1e3
    print(
        f"outage: {len(published)} published, {s.spooled} spooled, {s.replayed} replayed, {duplicates} duplicates "
        f"on the topic; publish() p99 {p99_us:.0f} µs, max {max(call_ns) / 1e3:.0f} µs"
    )


def test_events_spooled_at_close_are_replayed_by_the_next_logger(broker: Broker, tmp_path: Path) -> None:
    topic = f"test-restart-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(broker.bootstrap, {topic: 3})
    run = uuid.uuid4().hex[:6]
    spool = tmp_path / "spool"
    broker.stop()
    try:
        first = EventLogger(_outage_config(broker, topic, spool))
        first.start()
        for i in range(300):
            first.publish(_event(i, run))
        time.sleep(0.5)
        assert first.close(timeout_s=2) == 300  # SIGTERM while Kafka is down: the events wait on disk
        assert first.stats.dropped == {}
        assert first.stats.spooled == 300
        assert list(spool.glob("*.seg"))
    finally:
        broker.start()

    second = EventLogger(_outage_config(broker, topic, spool))
    second.start()
    _wait_drained(second, timeout_s=60)
    assert second.close() == 0
    assert (second.stats.recovered, second.stats.replayed) == (300, 300)
    assert not list(spool.glob("*.seg"))
    seen = _consume(broker.bootstrap, topic, {f"{run}-{i}" for i in range(300)})
    assert seen == Counter({f"{run}-{i}": 1 for i in range(300)})
