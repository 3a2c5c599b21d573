"""The record types the worker's parts talk through (Kafka records in, one small place)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Message", "Record"]


@dataclass(frozen=True)
class Message:
    """What the sink needs of a Kafka message."""

    partition: int
    offset: int
    value: bytes | None


class Record(Protocol):
    """A ``Message``, or anything with its fields (aiokafka's ``ConsumerRecord``: the worker passes those)."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...
