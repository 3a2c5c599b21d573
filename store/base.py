"""The interface every store backend implements: chDB in-process, the chDB store daemon, ClickHouse server.

Values crossing this interface are plain Python: ``int``, ``float``, ``str``, ``list`` for arrays. ``DateTime``
columns take ``int`` Unix seconds on insert and come back from ``query`` as naive UTC ``datetime`` objects.
Backends convert to their own wire types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class StoreError(Exception):
    """Root of store errors."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached or opened (server down, data directory locked by another process)."""


class QueryError(StoreError):
    """The store rejected a statement; ``sql`` holds it and the message holds the server's reason."""

    def __init__(self, message: str, sql: str) -> None:
        super().__init__(message)
        self.sql = sql


@dataclass(frozen=True)
class QueryResult:
    """Rows of a SELECT, with column names and ClickHouse type names."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def scalar(self) -> Any:
        """The first column of the first row (``SELECT count() …``)."""
        return self.rows[0][0]


@runtime_checkable
class Store(Protocol):
    """A ClickHouse-compatible store.

    ``connect`` does the I/O (constructors never do); statements run in the store's database, so SQL names
    tables without a database prefix.
    """

    url: str
    database: str

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def server_version(self) -> tuple[int, ...]:
        """The engine's version, e.g. ``(18, 16, 1)``; DDL is generated from it."""
        ...

    def execute(self, sql: str) -> None:
        """Run one statement that returns no rows (DDL, ``INSERT … SELECT``, ``OPTIMIZE``)."""
        ...

    def query(self, sql: str) -> QueryResult:
        """Run one SELECT (or SHOW / DESCRIBE) and return all rows."""
        ...

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> int:
        """Insert rows given column-wise (all sequences of equal length) as one block; returns the row count."""
        ...


Statement = tuple[str, str]  # (SQL, output format: "" for no result, "JSONCompact", "ArrowStream", ...)


@runtime_checkable
class InputStore(Protocol):
    """A store that runs statements over bytes handed to it (chDB: ``file()`` over an uploaded file).

    The ingest fast path (``stream_processors.protobuf_ingest``): Kafka message bytes go to the engine, which
    parses them itself (``FORMAT Protobuf``). ClickHouse 18.16 has no Protobuf input format, so
    ``ClickHouseServerStore`` does not implement this and callers fall back to decoding in Python.
    """

    def run_over_input(self, data: bytes, statements: Sequence[Statement], cleanup: Sequence[str] = ()) -> list[bytes]:
        """Run ``statements`` in order with ``{input}`` replaced by the path of a file holding ``data``; return
        each one's output in its format (``b""`` for none). ``cleanup`` statements run afterwards whatever
        happened (their errors are ignored). A failing statement raises ``QueryError`` with its SQL."""
        ...
