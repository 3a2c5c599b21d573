"""Property: whatever Kafka does, every published event is delivered, pending, or dropped with a reason.

Hypothesis drives an EventLogger (fake producer, fake clock, real spool on disk, tiny bounds so queues and the
spool overflow) through any sequence of publishes, delivery rounds, acknowledgements, failures, outages,
fatal errors and clock steps. After every step the counters add up; at the end, once Kafka has been back long
enough, every event not counted as dropped or sampled out has reached Kafka (at least once).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from producers import EventLogger, EventLoggerConfig, LoggerStats
from producers.sampling import Sampler
from producers.testing import FakeProducer
from schemas import InferenceEvent

FAILURES = st.sampled_from(
    [KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.MSG_SIZE_TOO_LARGE]
)


class LoggerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="producers-accounting-"))
        self.now = 0.0
        self.producers: list[FakeProducer] = []
        self.finished: list[LoggerStats] = []  # stats of the loggers closed by restart()
        self.config = EventLoggerConfig(
            bootstrap="fake:9092",
            topic="t",
            spool_dir=self.dir,
            sample_rate=0.8,
            queue_max_events=12,
            queue_max_bytes=4096,
            in_flight_max_events=10,
            spool_max_bytes=2000,
            spool_segment_bytes=300,
            spool_linger_s=0.05,
            replay_in_flight_max=4,
            probe_interval_s=1.0,
            extra={"message.max.bytes": 100},  # the fake refuses larger events at produce(), as librdkafka does
        )
        self.logger = self._new_logger()
        self.next_id = 0
        self.published: list[str] = []

    def _new_logger(self) -> EventLogger:
        logger = EventLogger(self.config, clock=lambda: self.now, producer_factory=self._make_producer)
        logger.start(background=False)
        return logger

    def _make_producer(self, conf: dict[str, Any]) -> FakeProducer:
        producer = FakeProducer(conf)
        if self.producers:
            producer.reachable = self.producers[-1].reachable
        self.producers.append(producer)
        return producer

    @property
    def producer(self) -> FakeProducer:
        return self.producers[-1]

    # ------------------------------------------------------------------------------------------ operations

    @rule(n=st.integers(1, 8), payload=st.integers(0, 120))
    def publish(self, n: int, payload: int) -> None:
        for _ in range(n):
            event_id = f"e{self.next_id}"
            self.next_id += 1
            self.published.append(event_id)
            self.logger.publish(InferenceEvent(event_id=event_id, request_id=f"r{event_id}", error="x" * payload))

    @rule()
    def delivery_round(self) -> None:
        self.logger.step()

    @rule(n=st.integers(1, 6))
    def acknowledge(self, n: int) -> None:
        self.producer.deliver(n)

    @rule(n=st.integers(1, 6), code=FAILURES)
    def fail(self, n: int, code: int) -> None:
        self.producer.fail(n, code)

    @rule()
    def brokers_down(self) -> None:
        self.producer.reachable = False
        self.producer.raise_error(KafkaError._ALL_BROKERS_DOWN)

    @rule()
    def brokers_up(self) -> None:
        self.producer.reachable = True

    @rule()
    def fatal_error(self) -> None:
        self.producer.raise_error(KafkaError._FATAL, fatal=True)

    @rule(seconds=st.sampled_from([0.01, 0.06, 1.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.next_id > 0)
    @rule(timeout=st.sampled_from([0.0, 5.0]))
    def restart(self, timeout: float) -> None:
        """SIGTERM and start again on the same spool."""
        before = self.logger.stats
        self.logger.close(timeout_s=timeout)
        self._check(self.logger)
        closed = self.logger.stats
        assert closed.queued == closed.in_flight == 0  # close leaves nothing in memory
        assert closed.dropped.get("closed", 0) == before.dropped.get("closed", 0)
        self.finished.append(closed)
        self.logger = self._new_logger()

    # ------------------------------------------------------------------------------------------ properties

    def _check(self, logger: EventLogger) -> None:
        s = logger.stats
        assert s.published + s.recovered == (
            s.sampled_out + s.produced + s.dropped_total + s.queued + s.in_flight + s.spool_pending
        ), s
        assert s.spool_bytes <= self.config.spool_max_bytes
        assert s.queued <= self.config.queue_max_events

    @invariant()
    def counters_add_up(self) -> None:
        self._check(self.logger)

    def teardown(self) -> None:
        try:
            self._drain()
            loggers = [*self.finished, self.logger.stats]
            dropped = sum(s.dropped_total for s in loggers)
            delivered = {
                InferenceEvent.FromString(m.value() or b"").event_id for p in self.producers for m in p.delivered
            }
            kept = {e for e in self.published if Sampler(self.config.sample_rate).keep(f"r{e}")}
            assert delivered <= kept
            if not self.finished:
                assert len(kept) - len(delivered) == dropped  # nothing unaccounted for
            else:
                # Counters are per process: a record replayed by the next process can be counted twice
                # (rejected again, or torn). Still, no event is missing without a counted drop.
                assert len(kept) - len(delivered) <= dropped
            assert sum(s.published for s in loggers) == len(self.published)
        finally:
            self.logger.close(timeout_s=0.0)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _drain(self) -> None:
        self.producer.reachable = True
        for _ in range(300):
            self.now += 1.0
            self.logger.step()
            self.producer.deliver()
            self.logger.step()
            s = self.logger.stats
            if s.queued == s.in_flight == s.spool_pending == 0 and s.spool_segments == 0 and not len(self.producer):
                return
        raise AssertionError(f"the logger did not drain: {self.logger.stats}")


TestLoggerAccounting = LoggerMachine.TestCase
TestLoggerAccounting.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
