"""The record types the worker's parts talk through (Kafka records in, one small place)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.topics import REPLAYED_HEADER

__all__ = ["Message", "Record", "replayed"]


@dataclass(frozen=True)
class Message:
    """What the sink needs of a Kafka message."""

    partition: int
    offset: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


class Record(Protocol):
    """A ``Message``, or anything with its fields (aiokafka's ``ConsumerRecord``: the worker passes those)."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def replayed(records: Iterable[Record]) -> set[tuple[int, int]]:
    """(partition, offset) of the records a model server sent again from its spool (``schemas.topics.
    REPLAYED_HEADER``): the only ones that may be a copy of an event Kafka already has."""
    return {(r.partition, r.offset) for r in records if r.headers and any(k == REPLAYED_HEADER for k, _ in r.headers)}
