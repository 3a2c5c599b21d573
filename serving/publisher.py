"""Where the model server sends its InferenceEvents: one per Predict call, success or error.

A publisher is called on the request thread, after the response is built and before it is returned, so
``publish`` must never block and never raise: a Kafka-backed publisher enqueues into its client's buffer and,
when that is full, drops the event and counts the drop rather than waiting. The server still guards the call
(an exception from ``publish`` is logged, the response is unaffected).
"""

from __future__ import annotations

import threading
from typing import Protocol

from schemas import InferenceEvent
from serving.after_response import wait_idle


class EventPublisher(Protocol):
    """Sink for inference events. ``publish`` returns at once (no I/O on the caller's thread) and does
    not raise; delivery is the publisher's concern (at least once, deduplicated on ``event_id``)."""

    def publish(self, event: InferenceEvent) -> None: ...


class NullPublisher:
    """Discards every event (a server run without monitoring)."""

    def publish(self, event: InferenceEvent) -> None:
        return None


class InMemoryPublisher:
    """Keeps events in a list, in publish order, for tests. Thread-safe."""

    def __init__(self) -> None:
        self._events: list[InferenceEvent] = []
        self._lock = threading.Lock()

    def publish(self, event: InferenceEvent) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[InferenceEvent]:
        """A copy of the events published so far, including those of every request answered already (their
        events are published just after the answer is sent: ``serving.after_response``)."""
        wait_idle()
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        """Forget the events published so far, including those of every request answered already: a request
        answered just before must not publish into the list after it was cleared."""
        wait_idle()
        with self._lock:
            self._events.clear()

    def __len__(self) -> int:
        wait_idle()
        with self._lock:
            return len(self._events)
