"""Kafka message -> validated InferenceEvent, or a rejection with its reason (for the dead-letter topic)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError

from schemas import FeedbackEvent, InferenceEvent


@dataclass(frozen=True)
class Rejected:
    """A message that could not be used; it goes to the dead-letter topic with ``reason``."""

    topic: str
    partition: int
    offset: int
    value: bytes
    reason: str


EARLIEST_US: Final = 946_684_800_000_000  # 2000-01-01: anything earlier is a unit or clock error
MAX_FUTURE_US: Final = 86_400_000_000  # one day ahead of the worker's clock


def decode_inference(value: bytes | None, now_us: int | None = None) -> InferenceEvent | str:
    """The event, or the reason it is unusable (a short machine-readable string).

    ``received_us`` must be plausible: after 2000-01-01 and at most a day ahead of ``now_us`` (the worker's
    clock): one event from a server whose clock is years ahead would otherwise move the partition's watermark
    and make every later event late.
    """
    if not value:
        return "empty"
    try:
        event = InferenceEvent.FromString(value)
    except DecodeError:
        return "undecodable"
    if not event.event_id:
        return "missing_event_id"
    if not event.model:
        return "missing_model"
    return _implausible_time("received_us", event.received_us, now_us) or event


_BEHAVIORS: Final = frozenset(FeedbackEvent.Behavior.values()) - {FeedbackEvent.BEHAVIOR_UNSPECIFIED}


def decode_feedback(value: bytes | None, now_us: int | None = None) -> FeedbackEvent | str:
    """The feedback event, or the reason it is unusable (a short machine-readable string).

    Rejects what :class:`~stream_processors.attribution.Attribution` would count as ``invalid`` (no ``event_id``,
    ``request_id`` or ``item_id``, an unspecified or unknown behaviour), and a ``ts_us`` before 2000-01-01 or more
    than a day ahead of ``now_us`` (the worker's clock): shop clocks and units (ms for µs) are not trusted, and the
    raw table is partitioned by day of ``ts_us``.
    """
    if not value:
        return "empty"
    try:
        event = FeedbackEvent.FromString(value)
    except DecodeError:
        return "undecodable"
    if not event.event_id:
        return "missing_event_id"
    if not event.request_id:
        return "missing_request_id"
    if not event.item_id:
        return "missing_item_id"
    if event.behavior not in _BEHAVIORS:
        return "missing_behavior" if event.behavior == FeedbackEvent.BEHAVIOR_UNSPECIFIED else "unknown_behavior"
    return _implausible_time("ts_us", event.ts_us, now_us) or event


def _implausible_time(field: str, us: int, now_us: int | None) -> str:
    """Why an event time cannot be used (missing, before 2000, a day or more ahead), or "" when it can."""
    if us <= 0:
        return f"missing_{field}"
    if us < EARLIEST_US:
        return f"{field}_too_old"
    if us > (time.time_ns() // 1000 if now_us is None else now_us) + MAX_FUTURE_US:
        return f"{field}_in_future"
    return ""
