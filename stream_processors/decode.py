"""Kafka message -> validated InferenceEvent, or a rejection with its reason (for the dead-letter topic)."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from schemas import InferenceEvent


@dataclass(frozen=True)
class Rejected:
    """A message that could not be used; it goes to the dead-letter topic with ``reason``."""

    topic: str
    partition: int
    offset: int
    value: bytes
    reason: str


def decode_inference(value: bytes | None) -> InferenceEvent | str:
    """The event, or the reason it is unusable (a short machine-readable string)."""
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
    if event.received_us <= 0:
        return "missing_received_us"
    return event
