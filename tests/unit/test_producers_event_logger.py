"""EventLogger against a fake producer and a fake clock: where every event goes, step by step, without sleeping."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from producers import EventLogger, EventLoggerConfig, SpoolLockedError
from producers.testing import FakeProducer
from schemas import InferenceEvent


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Producers:
    """A producer factory that remembers every producer it made (a fatal error makes a new one)."""

    def __init__(self) -> None:
        self.made: list[FakeProducer] = []

    def __call__(self, conf: dict[str, Any]) -> FakeProducer:
        self.made.append(FakeProducer(conf))
        return self.made[-1]

    @property
    def current(self) -> FakeProducer:
        return self.made[-1]

    def delivered_ids(self) -> list[str]:
        return [InferenceEvent.FromString(m.value() or b"").event_id for p in self.made for m in p.delivered]


def _event(i: int) -> InferenceEvent:
    return InferenceEvent(event_id=f"e{i}", request_id=f"r{i}", model="m", received_us=i)


def _config(tmp_path: Path | None, **kw: Any) -> EventLoggerConfig:
    defaults: dict[str, Any] = {"bootstrap": "fake:9092", "topic": "t", "spool_linger_s": 0.05}
    if tmp_path is not None:
        defaults["spool_dir"] = tmp_path / "spool"
    return EventLoggerConfig(**{**defaults, **kw})


def _logger(tmp_path: Path | None, **kw: Any) -> tuple[EventLogger, Producers, FakeClock]:
    producers, clock = Producers(), FakeClock()
    logger = EventLogger(_config(tmp_path, **kw), clock=clock, producer_factory=producers)
    logger.start(background=False)
    return logger, producers, clock


def _balanced(logger: EventLogger) -> bool:
    s = logger.stats
    return s.published + s.recovered == (
        s.sampled_out + s.produced + s.dropped_total + s.queued + s.in_flight + s.spool_pending
    )


def _go_down(logger: EventLogger, producers: Producers) -> None:
    producers.current.reachable = False
    producers.current.raise_error(KafkaError._ALL_BROKERS_DOWN)
    logger.step()
    assert not logger.stats.kafka_up


def _go_up(logger: EventLogger, producers: Producers, clock: FakeClock) -> None:
    producers.current.reachable = True
    clock.advance(logger.config.probe_interval_s)
    logger.step()
    assert logger.stats.kafka_up


# ------------------------------------------------------------------------------------------- request path


def test_events_reach_kafka_keyed_by_request_id(tmp_path: Path) -> None:
    logger, producers, _ = _logger(tmp_path)
    for i in range(5):
        logger.publish(_event(i))
    assert logger.stats.queued == 5
    logger.step()
    producers.current.deliver()
    logger.step()
    assert [m.key() for m in producers.current.delivered] == [f"r{i}".encode() for i in range(5)]
    assert producers.delivered_ids() == [f"e{i}" for i in range(5)]
    s = logger.stats
    assert (s.published, s.produced, s.queued, s.in_flight, s.spooled) == (5, 5, 0, 0, 0)
    assert logger.close() == 0


def test_publish_never_raises_and_counts_what_it_cannot_serialize(tmp_path: Path) -> None:
    class Broken:
        request_id = "r"

        def SerializeToString(self) -> bytes:
            raise ValueError("no")

    logger, _, _ = _logger(tmp_path)
    logger.publish(Broken())
    logger.publish(object())  # type: ignore[arg-type]
    assert logger.stats.dropped == {"error": 2}
    assert _balanced(logger)
    logger.close()


def test_a_full_queue_drops_the_newest_events_and_counts_them(tmp_path: Path) -> None:
    logger, _, _ = _logger(tmp_path, queue_max_events=3)
    for i in range(5):
        logger.publish(_event(i))
    assert (logger.stats.queued, logger.stats.dropped) == (3, {"queue_full": 2})
    two = sum(len(_event(i).SerializeToString()) + len(f"r{i}") for i in range(2))
    by_bytes, _, _ = _logger(tmp_path / "b", queue_max_bytes=two)
    for i in range(3):
        by_bytes.publish(_event(i))
    assert (by_bytes.stats.queued, by_bytes.stats.dropped) == (2, {"queue_full": 1})
    assert _balanced(logger) and _balanced(by_bytes)
    logger.close()
    by_bytes.close()


def test_sampled_out_requests_are_counted_and_not_sent(tmp_path: Path) -> None:
    logger, producers, _ = _logger(tmp_path, sample_rate=0.5)
    for i in range(1000):
        logger.publish(_event(i))
    logger.step()
    producers.current.deliver()
    logger.step()
    s = logger.stats
    assert 400 < s.sampled_out < 600
    assert s.produced == 1000 - s.sampled_out
    from producers.sampling import Sampler

    assert set(producers.delivered_ids()) == {f"e{i}" for i in range(1000) if Sampler(0.5).keep(f"r{i}")}
    logger.close()


def test_publish_after_close_is_counted(tmp_path: Path) -> None:
    logger, _, _ = _logger(tmp_path)
    logger.close()
    logger.publish(_event(1))
    assert logger.stats.dropped == {"closed": 1}


# ----------------------------------------------------------------------------------------- Kafka down


def test_while_kafka_is_down_events_are_spooled_in_batches(tmp_path: Path) -> None:
    logger, producers, clock = _logger(tmp_path)
    _go_down(logger, producers)
    for i in range(10):
        logger.publish(_event(i))
    logger.step()
    assert len(producers.current) == 0  # nothing handed to librdkafka while it is down
    assert (logger.stats.in_flight, logger.stats.spooled) == (10, 0)  # waiting for the batch
    clock.advance(0.06)
    logger.step()
    s = logger.stats
    assert (s.in_flight, s.spooled, s.spool_pending, s.spool_segments) == (0, 10, 10, 1)
    assert s.spool_bytes > 0
    assert _balanced(logger)
    assert logger.close() == 10  # left in the spool for the next start


def test_a_failed_delivery_goes_to_the_spool_not_away(tmp_path: Path) -> None:
    logger, producers, clock = _logger(tmp_path)
    for i in range(6):
        logger.publish(_event(i))
    logger.step()
    producers.current.deliver(2)
    producers.current.reachable = False
    producers.current.fail(4)  # the broker went away; librdkafka gave up after message_timeout_ms
    logger.step()
    assert not logger.stats.kafka_up  # a failed delivery is a down signal
    clock.advance(0.06)
    logger.step()
    s = logger.stats
    assert (s.produced, s.delivery_failures, s.spooled, s.in_flight) == (2, 4, 4, 0)
    assert _balanced(logger)
    logger.close()


def test_records_kafka_rejects_are_dropped_not_spooled(tmp_path: Path) -> None:
    logger, producers, _ = _logger(tmp_path)
    logger.publish(_event(1))
    logger.step()
    producers.current.fail(code=KafkaError.MSG_SIZE_TOO_LARGE)
    logger.step()
    s = logger.stats
    assert (s.dropped, s.spooled, s.kafka_up) == ({"rejected": 1}, 0, True)
    logger.close()


def test_without_a_spool_undeliverable_events_are_dropped_and_counted() -> None:
    logger, producers, clock = _logger(None)
    _go_down(logger, producers)
    logger.publish(_event(1))
    logger.step()
    clock.advance(1)
    logger.step()
    assert logger.stats.dropped == {"no_spool": 1}
    assert _balanced(logger)
    logger.close()


def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    logger, producers, clock = _logger(tmp_path, spool_max_bytes=400, spool_segment_bytes=200)
    _go_down(logger, producers)
    for i in range(20):
        logger.publish(_event(i))
    logger.step()
    clock.advance(1)
    logger.step()
    s = logger.stats
    assert s.spooled > 0 and s.dropped["spool_full"] == 20 - s.spooled
    assert s.spool_bytes <= 400
    assert _balanced(logger)
    logger.close()


def test_the_probe_waits_for_kafka_and_does_not_sleep(tmp_path: Path) -> None:
    logger, producers, clock = _logger(tmp_path, probe_interval_s=5.0)
    _go_down(logger, producers)
    clock.advance(4.9)
    producers.current.reachable = True
    logger.step()
    assert not logger.stats.kafka_up  # not probed again before probe_interval_s
    clock.advance(0.1)
    logger.step()
    assert logger.stats.kafka_up


def test_a_stale_all_brokers_down_report_does_not_count_against_a_good_probe(tmp_path: Path) -> None:
    logger, producers, clock = _logger(tmp_path)
    _go_down(logger, producers)
    producers.current.raise_error(KafkaError._ALL_BROKERS_DOWN)  # queued during the outage, served late
    producers.current.reachable = True
    clock.advance(1.0)
    logger.step()  # serves the stale report, probes again at once
    logger.step()
    assert logger.stats.kafka_up


# --------------------------------------------------------------------------------------------- replay


def test_spooled_events_are_replayed_oldest_first_when_kafka_returns(tmp_path: Path) -> None:
    logger, producers, clock = _logger(tmp_path, spool_segment_bytes=300)
    _go_down(logger, producers)
    for i in range(30):
        logger.publish(_event(i))
        logger.step()
        clock.advance(0.06)
    logger.step()
    assert logger.stats.spool_segments > 2
    _go_up(logger, producers, clock)
    for _ in range(20):
        producers.current.deliver()
        logger.step()
    assert producers.delivered_ids() == [f"e{i}" for i in range(30)]
    s = logger.stats
    assert (s.replayed, s.produced, s.spool_pending, s.spool_segments, s.spool_bytes) == (30, 30, 0, 0, 0)
    assert not list((tmp_path / "spool").glob("*.seg"))
    logger.close()


def test_a_segment_is_deleted_only_when_all_its_records_are_delivered(tmp_path: Path) -> None:
    logger, producers, clock = _logger(tmp_path, replay_in_flight_max=100)
    _go_down(logger, producers)
    for i in range(10):
        logger.publish(_event(i))
    logger.step()
    clock.advance(1)
    logger.step()
    _go_up(logger, producers, clock)
    assert len(producers.current.in_flight) == 10
    producers.current.deliver(7)
    producers.current.reachable = False
    producers.current.fail(3)  # Kafka went away again mid-replay
    logger.step()
    assert not logger.stats.kafka_up
    assert len(list((tmp_path / "spool").glob("*.seg"))) == 1  # still there: 3 records undelivered
    assert (logger.stats.replayed, logger.stats.spool_pending) == (7, 3)
    _go_up(logger, producers, clock)
    assert [m.value() for m, _ in producers.current.in_flight] == [
        _event(i).SerializeToString() for i in (7, 8, 9)
    ]  # only the undelivered ones are sent again
    producers.current.deliver()
    logger.step()
    logger.step()
    assert sorted(producers.delivered_ids()) == sorted(f"e{i}" for i in range(10))
    assert not list((tmp_path / "spool").glob("*.seg"))
    assert _balanced(logger)
    logger.close()


def test_a_spooled_record_kafka_refuses_is_dropped_and_the_rest_replayed(tmp_path: Path) -> None:
    logger, producers, clock = _logger(tmp_path, extra={"message.max.bytes": 60})
    _go_down(logger, producers)
    big = InferenceEvent(event_id="big", request_id="rbig", error="x" * 100)
    for event in (_event(1), big, _event(2)):
        logger.publish(event)
    logger.step()
    clock.advance(1)
    logger.step()
    assert logger.stats.spooled == 3
    _go_up(logger, producers, clock)  # replay: produce() refuses the big one at once
    producers.current.deliver()
    logger.step()
    logger.step()
    assert producers.delivered_ids() == ["e1", "e2"]
    s = logger.stats
    assert (s.dropped, s.replayed, s.spool_pending, s.spool_segments) == ({"rejected": 1}, 2, 0, 0)
    assert _balanced(logger)
    logger.close()


def test_close_spools_what_it_cannot_deliver_and_the_next_logger_replays_it(tmp_path: Path) -> None:
    logger, producers, _ = _logger(tmp_path)
    for i in range(4):
        logger.publish(_event(i))
    logger.step()
    producers.current.deliver(1)
    logger.publish(_event(4))  # still queued at close
    assert logger.close(timeout_s=0.0) == 4  # 3 in flight (purged) + 1 queued: all to the spool
    assert logger.stats.dropped == {}
    assert producers.current.closed

    again, producers2, _ = _logger(tmp_path)
    for _ in range(3):
        producers2.current.deliver()
        again.step()
    assert sorted(producers2.delivered_ids()) == [f"e{i}" for i in range(1, 5)]
    s = again.stats
    assert (s.recovered, s.replayed, s.spool_pending) == (4, 4, 0)
    again.close()


def test_a_crash_during_replay_sends_the_segment_again(tmp_path: Path) -> None:
    logger, producers, _ = _logger(tmp_path)
    _go_down(logger, producers)
    for i in range(5):
        logger.publish(_event(i))
    logger.step()
    logger.close(timeout_s=0.0)
    crashed, producers2, _ = _logger(tmp_path)
    crashed.step()
    producers2.current.deliver(2)  # two acknowledged, then the process dies before deleting the segment
    crashed.step()
    assert crashed.stats.replayed == 2
    crashed._spool.close()  # type: ignore[union-attr]  # a crash releases the lock, deletes nothing
    survivor, producers3, _ = _logger(tmp_path)
    survivor.step()
    producers3.current.deliver()
    survivor.step()
    assert producers3.delivered_ids() == [f"e{i}" for i in range(5)]  # at least once: e0, e1 twice overall
    survivor.close()


def test_a_torn_record_left_by_a_crash_is_skipped_and_counted(tmp_path: Path) -> None:
    logger, producers, _ = _logger(tmp_path)
    _go_down(logger, producers)
    for i in range(3):
        logger.publish(_event(i))
    logger.close(timeout_s=0.0)
    (segment,) = (tmp_path / "spool").glob("*.seg")
    with open(segment, "r+b") as f:
        f.truncate(segment.stat().st_size - 3)
    again, producers2, _ = _logger(tmp_path)
    again.step()
    producers2.current.deliver()
    again.step()
    assert producers2.delivered_ids() == ["e0", "e1"]
    s = again.stats
    assert (s.recovered, s.replayed, s.dropped) == (3, 2, {"spool_torn": 1})
    assert _balanced(again)
    again.close()


def test_a_fatal_producer_error_recreates_the_producer_and_spools_its_events(tmp_path: Path) -> None:
    logger, producers, clock = _logger(tmp_path)
    for i in range(3):
        logger.publish(_event(i))
    logger.step()
    producers.current.raise_error(KafkaError._FATAL, fatal=True)
    logger.step()
    assert len(producers.made) == 2
    clock.advance(1)
    logger.step()
    assert logger.stats.spooled == 3
    for _ in range(3):
        producers.current.deliver()
        logger.step()
    assert sorted(producers.delivered_ids()) == ["e0", "e1", "e2"]
    assert _balanced(logger)
    logger.close()


# --------------------------------------------------------------------------------------- lifecycle


def test_two_loggers_cannot_share_a_spool(tmp_path: Path) -> None:
    first, _, _ = _logger(tmp_path)
    with pytest.raises(SpoolLockedError):
        _logger(tmp_path)
    first.close()


def test_the_background_thread_delivers_and_stops(tmp_path: Path) -> None:
    producers = Producers()
    before = set(threading.enumerate())
    with EventLogger(_config(tmp_path, drain_interval_s=0.001), producer_factory=producers) as logger:
        logger.publish(_event(1))
        for _ in range(2000):
            if producers.made and producers.made[0].in_flight:
                break
            threading.Event().wait(0.001)
        producers.current.deliver()
    assert logger.stats.produced == 1
    assert set(threading.enumerate()) <= before


def test_close_without_start_counts_the_queued_events_as_closed(tmp_path: Path) -> None:
    logger = EventLogger(_config(tmp_path), producer_factory=Producers())
    logger.publish(_event(1))
    assert logger.close() == 1
    assert logger.stats.dropped == {"closed": 1}
    assert not (tmp_path / "spool").exists()  # the constructor did no I/O


def test_an_invalid_librdkafka_property_fails_start_and_releases_the_spool(tmp_path: Path) -> None:
    from confluent_kafka import KafkaException

    bad = EventLogger(_config(tmp_path, extra={"no.such.property": 1}))  # the real producer factory
    with pytest.raises(KafkaException):
        bad.start()
    good, _, _ = _logger(tmp_path)  # the spool is not left locked
    good.close()
