"""Replay of the spool once Kafka is back: segments oldest first, each deleted only when fully acknowledged.

Runs on the delivery thread, alongside live events (which are not held back: consumers order by event time
and deduplicate on ``event_id``). At most ``max_in_flight`` spooled records are in librdkafka at once. When a
replayed record fails, Kafka is reported down and the segment waits; once every outstanding report is in, the
records not yet acknowledged are sent again (so none is counted twice). A crash before the segment is deleted
re-sends all of it from the next process: at least once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from producers.errors import SpoolError
from producers.librdkafka import PURGED, REJECTED, ProducerLike, is_rejected
from producers.spool import Record, Spool
from producers.stats import Counters
from schemas.topics import REPLAYED_HEADER

log = logging.getLogger(__name__)

_REPLAYED: list[tuple[str, str | bytes | None]] = [(REPLAYED_HEADER, b"1")]

_PER_ROUND = 1000
"""Records handed over per delivery round (~2 ms of Python holding the GIL): request threads wait at most
that long for the interpreter, rather than Python's 5 ms switch interval, while a large spool drains.
At one round per drain interval this still replays ~100 k records/s."""


@dataclass
class _Segment:
    """A spooled segment being replayed."""

    number: int
    records: list[Record]
    done: set[int] = field(default_factory=set)  # acknowledged (or rejected) record indexes
    next: int = 0  # next record to hand to librdkafka
    outstanding: int = 0  # handed over, no delivery report yet
    failed: bool = False  # a report failed: resend what is not done once all reports are in


class Replayer:
    """Feeds spooled records to a producer. ``on_failure(reason)`` is told when a replayed delivery fails."""

    def __init__(
        self,
        spool: Spool,
        counters: Counters,
        *,
        topic: str,
        max_in_flight: int,
        on_failure: Callable[[str], None],
        warn: Callable[[str, str], None],
    ) -> None:
        self._spool = spool
        self._counters = counters
        self._topic = topic
        self._max_in_flight = max_in_flight
        self._on_failure = on_failure
        self._warn = warn
        self._segment: _Segment | None = None
        self.in_flight = 0

    def step(self, producer: ProducerLike) -> bool:
        """Hand over what the in-flight bound allows; delete a finished segment. True if one was deleted."""
        segment = self._segment or self._open_oldest()
        if segment is None:
            return False
        self._segment = segment
        if segment.failed:
            if segment.outstanding:
                return False  # resend only once every report is in, so nothing is counted twice
            segment.failed, segment.next = False, 0
        budget = _PER_ROUND
        while segment.next < len(segment.records) and self.in_flight < self._max_in_flight and budget > 0:
            budget -= 1
            i = segment.next
            if i not in segment.done:
                key, value = segment.records[i]
                try:
                    producer.produce(
                        self._topic,
                        value,
                        key,
                        on_delivery=partial(self._on_delivery, segment, i),
                        headers=_REPLAYED,  # it may be a copy of one Kafka has: the worker checks these
                    )
                except BufferError:
                    break
                except KafkaException as exc:
                    if not is_rejected(exc):
                        self._on_failure(f"produce failed: {exc}")
                        break
                    self._settle(segment, i, delivered=False)
                else:
                    segment.outstanding += 1
                    self.in_flight += 1
            segment.next += 1
        return self.finish()

    def finish(self) -> bool:
        """Delete the current segment if every record of it is settled; True if it was."""
        segment = self._segment
        if segment is None or len(segment.done) < len(segment.records):
            return False
        self._spool.delete(segment.number)
        self._segment = None
        return True

    def _open_oldest(self) -> _Segment | None:
        segments = self._spool.segments()
        if not segments:
            if not self._spool.active_records:
                return None
            self._spool.seal()  # Kafka is back and the spool holds nothing older: replay what was just written
            segments = self._spool.segments()
        try:
            contents = self._spool.read(segments[0])
        except SpoolError as exc:
            self._warn("spool_read", f"{exc}; will retry")
            return None
        valid = len(contents.records)
        c = self._counters
        with c.lock:
            if contents.written is None:  # left by an earlier process: its records enter the books now
                corrupt, torn = contents.corrupt, contents.torn
                c.recovered += valid + corrupt + torn
                c.spool_pending += valid
            else:
                lost = contents.written - valid
                corrupt = min(contents.corrupt, lost)
                torn = lost - corrupt
                c.spool_pending -= lost
            if corrupt:
                c.dropped["spool_corrupt"] += corrupt
            if torn:
                c.dropped["spool_torn"] += torn
        if corrupt or torn:
            log.warning("spool segment %d: %d corrupt and %d torn record(s) skipped", contents.segment, corrupt, torn)
        return _Segment(contents.segment, contents.records)

    def _settle(self, segment: _Segment, i: int, *, delivered: bool) -> None:
        if i in segment.done:
            return
        segment.done.add(i)
        c = self._counters
        with c.lock:
            c.spool_pending -= 1
            if delivered:
                c.produced += 1
                c.replayed += 1
            else:
                c.dropped["rejected"] += 1

    def _on_delivery(self, segment: _Segment, i: int, err: KafkaError | None, msg: Any) -> None:
        segment.outstanding -= 1
        self.in_flight -= 1
        if err is None or err.code() in REJECTED:
            self._settle(segment, i, delivered=err is None)
            return
        segment.failed = True  # the record stays in its segment
        if err.code() not in PURGED:
            with self._counters.lock:
                self._counters.delivery_failures += 1
            self._on_failure(f"replay delivery failed: {err}")
