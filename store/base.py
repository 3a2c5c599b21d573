"""The interface every store backend implements: chDB in-process, the chDB store daemon, ClickHouse server.

Values crossing this interface are plain Python: ``int``, ``float``, ``str``, ``list`` for arrays. ``DateTime``
columns take ``int`` Unix seconds on insert and come back from ``query`` as naive UTC ``datetime`` objects.
Backends convert to their own wire types.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class StoreError(Exception):
    """Root of store errors."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached or opened (server down, data directory locked by another process)."""


class QueryError(StoreError):
    """The store rejected a statement; ``sql`` holds it and the message holds the server's reason. It may pass on
    a retry (a server still loading its tables, a memory or parts limit hit): callers that must not lose data
    retry it; only ``RejectedDataError`` says the data itself is at fault."""

    def __init__(self, message: str, sql: str) -> None:
        super().__init__(message)
        self.sql = sql


class RejectedDataError(QueryError):
    """The store refused the data of a statement (a type mismatch, a value it cannot parse, convert or hold):
    the same data fails again however often it is retried. The worker isolates such a record and dead-letters it
    (``stream_processors.pipeline``)."""


# ClickHouse error codes that mean "this data", the same on the server (18.16) and in chDB: CANNOT_PARSE_TEXT,
# CANNOT_PARSE_QUOTED_STRING, CANNOT_PARSE_INPUT_ASSERTION_FAILED, CANNOT_PARSE_DATE, CANNOT_PARSE_DATETIME,
# ILLEGAL_TYPE_OF_ARGUMENT, TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND, CANNOT_CONVERT_TYPE, CANNOT_PARSE_NUMBER,
# INCORRECT_DATA, TOO_LARGE_STRING_SIZE, SIZES_OF_ARRAYS_DONT_MATCH, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE.
DATA_ERROR_CODES: frozenset[int] = frozenset({6, 26, 27, 38, 41, 43, 53, 69, 70, 72, 117, 131, 190, 321})


def query_error(message: str, sql: str, code: int | None = None) -> QueryError:
    """The error for a statement the engine refused: ``RejectedDataError`` when its code (given, or read from a
    ``Code: N.`` message) is one of ``DATA_ERROR_CODES``."""
    if code is None:
        m = _CODE.search(message)
        code = int(m.group(1)) if m else None
    if code is not None and code in DATA_ERROR_CODES:
        return RejectedDataError(message, sql)
    return QueryError(message, sql)


_CODE = re.compile(r"\bCode: (\d+)\b")


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
