"""The event logger's counters: one lock, plain ints, a frozen snapshot for export.

Every event a logger accepts is, at any moment, in exactly one of these places, so a snapshot satisfies::

    published + recovered == sampled_out + produced + sum(dropped.values())
                             + queued + in_flight + spool_pending

``recovered`` counts records found in spool segments an earlier process left behind (counted when replay
reads the segment), ``produced`` counts every delivery acknowledged by Kafka (``replayed`` of them came from
the spool), ``in_flight`` the events the delivery thread holds that are neither acknowledged nor on disk.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

DROP_REASONS = (
    "queue_full",  # the in-memory queue was at its event or byte bound when publish() was called
    "closed",  # publish() after close()
    "spool_full",  # the spool was at spool_max_bytes
    "no_spool",  # Kafka could not take the event and no spool directory is configured
    "spool_error",  # the spool write failed (disk full, I/O error)
    "spool_corrupt",  # a spooled record failed its CRC check when replayed
    "spool_torn",  # a spooled record was cut short (crash during a write)
    "rejected",  # Kafka refused the record itself (too large, invalid); retrying cannot help
    "error",  # serializing the event raised
)


@dataclass(frozen=True)
class LoggerStats:
    """A consistent snapshot of an :class:`~producers.event_logger.EventLogger`'s counters."""

    published: int  # publish() calls
    sampled_out: int  # not logged by the sampling decision
    queued: int  # in the in-memory queue
    queue_bytes: int
    in_flight: int  # taken by the delivery thread: handed to librdkafka or about to be spooled
    produced: int  # acknowledged by Kafka (live and replayed)
    replayed: int  # of produced: delivered from the spool
    spooled: int  # written to the spool by this process
    recovered: int  # found in the spool left by an earlier process
    spool_pending: int  # in the spool, not yet delivered (earlier processes' records once read)
    spool_bytes: int
    spool_segments: int
    delivery_failures: int  # deliveries librdkafka gave up on (the events went to the spool)
    kafka_up: bool  # False while events are being spooled because Kafka is unreachable
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "sampled_out": self.sampled_out,
            "queued": self.queued,
            "queue_bytes": self.queue_bytes,
            "in_flight": self.in_flight,
            "produced": self.produced,
            "replayed": self.replayed,
            "spooled": self.spooled,
            "recovered": self.recovered,
            "spool_pending": self.spool_pending,
            "spool_bytes": self.spool_bytes,
            "spool_segments": self.spool_segments,
            "delivery_failures": self.delivery_failures,
            "kafka_up": self.kafka_up,
            "dropped": dict(self.dropped),
        }


class Counters:
    """Mutable counters behind ``lock``; the logger's queue is guarded by the same lock, so moving an event
    from one place to another is a single critical section and snapshots add up."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published = 0
        self.sampled_out = 0
        self.in_flight = 0
        self.produced = 0
        self.replayed = 0
        self.spooled = 0
        self.recovered = 0
        self.spool_pending = 0
        self.delivery_failures = 0
        self.dropped: Counter[str] = Counter()
