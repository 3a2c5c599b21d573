"""Configuration of the event logger (typed; read from the environment only by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import topics

MiB = 1 << 20


@dataclass(frozen=True)
class EventLoggerConfig:
    """Where events go and the bounds that keep logging from hurting requests.

    Sizes are bytes, times seconds unless the name says ``_ms``.
    """

    bootstrap: str
    topic: str = topics.INFERENCE
    spool_dir: Path | None = None
    """Spool directory, one per process (it is locked). None: no spool, events Kafka cannot take are dropped
    with reason ``no_spool``."""
    sample_rate: float = 1.0
    """Fraction of requests logged, decided by a hash of request_id (the same in every process)."""
    queue_max_events: int = 100_000
    queue_max_bytes: int = 64 * MiB
    """Bounds of the in-memory queue between publish() and the delivery thread."""
    spool_max_bytes: int = 1024 * MiB
    spool_segment_bytes: int = 1 * MiB
    spool_linger_s: float = 0.05
    """Events bound for the spool are written (and fsync'd) in one batch at most this long after the first."""
    spool_batch_bytes: int = 1 * MiB
    """... or as soon as this many bytes are waiting."""
    message_timeout_ms: int = 10_000
    """A live event not acknowledged within this time fails in librdkafka and goes to the spool."""
    linger_ms: int = 200
    """librdkafka's linger: events are sent in batches at most this old. Events feed 10 s windows, so 200 ms
    costs nothing downstream, and fewer, larger produce requests cost the server's core less (logging took 13 %
    of a 32-row request's throughput at 5 ms, 3.3 % at 50 ms, 2.6 % at 200 ms: docs/benchmarks.md)."""
    in_flight_max_events: int = 100_000
    in_flight_max_bytes: int = 64 * MiB
    """librdkafka's buffer (queue.buffering.max.*): beyond it the delivery thread spools instead."""
    replay_in_flight_max: int = 10_000
    """Spooled records handed to librdkafka at once while replaying."""
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 2.0
    """While Kafka is unreachable, a metadata request checks every probe_interval_s whether it is back."""
    drain_interval_s: float = 0.2
    """The delivery thread takes the queue at least this often (publish() never wakes it: no cost per call).
    Like ``linger_ms``: fewer, larger rounds cost less; a SIGKILL loses at most a few rounds of events."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any librdkafka property; it overrides the ones set here."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {self.sample_rate}")
        positive = {
            "queue_max_events": self.queue_max_events,
            "queue_max_bytes": self.queue_max_bytes,
            "spool_max_bytes": self.spool_max_bytes,
            "spool_segment_bytes": self.spool_segment_bytes,
            "message_timeout_ms": self.message_timeout_ms,
            "in_flight_max_events": self.in_flight_max_events,
            "in_flight_max_bytes": self.in_flight_max_bytes,
            "replay_in_flight_max": self.replay_in_flight_max,
            "probe_interval_s": self.probe_interval_s,
            "probe_timeout_s": self.probe_timeout_s,
            "drain_interval_s": self.drain_interval_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.spool_max_bytes < self.spool_segment_bytes:
            raise ValueError("spool_max_bytes must be >= spool_segment_bytes")

    def librdkafka(self) -> dict[str, Any]:
        """The producer properties (callbacks are added by the delivery thread)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,  # no duplicates from librdkafka's own retries
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": self.linger_ms,
            "message.timeout.ms": self.message_timeout_ms,
            "queue.buffering.max.messages": self.in_flight_max_events,
            "queue.buffering.max.kbytes": max(1, self.in_flight_max_bytes // 1024),
            # reconnect soon after Kafka returns, so the spool drains and live delivery resumes quickly
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
        }
        conf.update(self.extra)
        return conf
