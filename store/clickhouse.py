"""The store backend for a ClickHouse server, over the native protocol (clickhouse-driver).

URLs look like ``clickhouse://[user[:password]@]host[:port][/database][?<parameter>=<value>&…]``: port 9000
and database ``recwatch`` when left out (as everywhere in recwatch); query parameters other than ``connect_timeout`` and
``send_receive_timeout`` (seconds) are passed to the server as settings, e.g.
``allow_experimental_low_cardinality_type=1``.

``DateTime`` values go in as ``int`` Unix seconds (or ``datetime``) and come out of ``query`` as naive UTC
``datetime`` objects, whatever the server's time zone (also inside ``Nullable`` and ``Array``).
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clickhouse_driver import Client, errors

from store.base import QueryError, QueryResult, RejectedDataError, StoreUnavailableError, query_error

DEFAULT_PORT = 9000
DEFAULT_DATABASE = "default"  # exists on every server: used to create the store's database
RECWATCH_DATABASE = "recwatch"
_UNKNOWN_DATABASE = 81

# The driver logs every failed connection attempt with a traceback; the caller gets StoreUnavailableError.
# A NullHandler keeps that off stderr when the application has not configured logging.
logging.getLogger("clickhouse_driver").addHandler(logging.NullHandler())

# Socket errors (OSError) while a query runs reach the caller unwrapped; EOFError when the server hangs up.
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    errors.NetworkError,
    errors.SocketTimeoutError,
    EOFError,
    OSError,
)


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _server_message(exc: errors.ServerException) -> str:
    """``Code: N. DB::Exception: …`` without the server's stack trace."""
    text = (exc.message or "").split("Stack trace:", 1)[0].strip().rstrip(".")
    return f"Code: {exc.code}. {text}" if text else f"Code: {exc.code}."


def parse_version(text: str) -> tuple[int, ...]:
    """``"18.16.1"`` -> ``(18, 16, 1)``; stops at the first part that is not a number (``"23.8.2.7-lts"``)."""
    parts: list[int] = []
    for part in text.strip().split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() != len(part):
            break
    if not parts:
        raise ValueError(f"not a ClickHouse version: {text!r}")
    return tuple(parts)


class ClickHouseServerStore:
    """A ClickHouse server reached over the native protocol. One connection, guarded by a lock."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "clickhouse":
            raise ValueError(f"not a clickhouse:// URL: {url!r}")
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or DEFAULT_PORT
        self.database = unquote(parts.path.lstrip("/")) or RECWATCH_DATABASE
        if "/" in self.database:
            raise ValueError(f"the URL path must be a database name: {url!r}")
        self.user = unquote(parts.username) if parts.username else "default"
        self.password = unquote(parts.password) if parts.password else ""
        self.connect_timeout = 10.0
        self.send_receive_timeout = 300.0
        self.settings: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query):
            if key == "connect_timeout":
                self.connect_timeout = float(value)
            elif key == "send_receive_timeout":
                self.send_receive_timeout = float(value)
            else:
                self.settings[key] = int(value) if value.isdigit() else value
        self._lock = threading.RLock()
        self._client: Client | None = None
        self._version: tuple[int, ...] | None = None
        self._column_types: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"ClickHouseServerStore({self.host}:{self.port}/{self.database})"

    # --------------------------------------------------------------------------------------- lifecycle

    def _new_client(self, database: str) -> Client:
        return Client(
            host=self.host,
            port=self.port,
            database=database,
            user=self.user,
            password=self.password,
            connect_timeout=self.connect_timeout,
            send_receive_timeout=self.send_receive_timeout,
            client_name="recwatch",
            settings=dict(self.settings),
        )

    def connect(self) -> None:
        """Connect, creating the database first if it does not exist yet."""
        with self._lock:
            if self._client is not None:
                return
            client = self._new_client(self.database)
            try:
                try:
                    version = self._run(client, "SELECT version()", connecting=True)
                except QueryError as exc:
                    if f"Code: {_UNKNOWN_DATABASE}." not in str(exc):
                        raise StoreUnavailableError(f"{self}: {exc}") from exc
                    self._create_database()
                    version = self._run(client, "SELECT version()", connecting=True)
            except BaseException:
                client.disconnect()
                raise
            self._version = parse_version(str(version[0][0]))
            self._client = client
            self._column_types.clear()

    def _create_database(self) -> None:
        bootstrap = self._new_client(DEFAULT_DATABASE)
        try:
            self._run(
                bootstrap,
                f"CREATE DATABASE IF NOT EXISTS {_quote_identifier(self.database)}",
                connecting=True,
            )
        finally:
            bootstrap.disconnect()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            if client is not None:
                client.disconnect()

    def __enter__(self) -> ClickHouseServerStore:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ running

    def _run(self, client: Client, sql: str, *args: Any, connecting: bool = False, **kwargs: Any) -> Any:
        """``client.execute`` with the driver's errors mapped to the store's."""
        try:
            return client.execute(sql, *args, **kwargs)
        except errors.ServerException as exc:
            raise query_error(_server_message(exc), sql, code=exc.code) from exc
        except _NETWORK_ERRORS as exc:
            client.disconnect()  # the driver reconnects on the next execute
            what = "cannot connect to" if connecting else "lost the connection to"
            raise StoreUnavailableError(f"{what} ClickHouse at {self.host}:{self.port}: {exc}") from exc
        except errors.Error as exc:
            client.disconnect()
            raise QueryError(str(exc), sql) from exc
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            # values the driver cannot encode; a half-sent INSERT leaves the connection unusable
            client.disconnect()
            raise RejectedDataError(f"cannot encode the data: {type(exc).__name__}: {exc}", sql) from exc

    def _connected(self) -> Client:
        if self._client is None:
            self.connect()
        assert self._client is not None
        return self._client

    def server_version(self) -> tuple[int, ...]:
        with self._lock:
            client = self._connected()
            if self._version is None:
                self._version = parse_version(str(self._run(client, "SELECT version()")[0][0]))
            return self._version

    def execute(self, sql: str) -> None:
        with self._lock:
            client = self._connected()
            self._column_types.clear()  # the statement may have changed a table
            self._run(client, sql)

    def query(self, sql: str) -> QueryResult:
        with self._lock:
            client = self._connected()
            rows, described = self._run(client, sql, with_column_types=True)
            server_tz = self._server_timezone(client)
        names = [str(name) for name, _ in described]
        types = [str(type_) for _, type_ in described]
        converters = [_reader(type_, server_tz) for type_ in types]
        if any(conv is not None for conv in converters):
            rows = [
                tuple(value if conv is None else conv(value) for conv, value in zip(converters, row, strict=True))
                for row in rows
            ]
        return QueryResult(columns=names, types=types, rows=[tuple(row) for row in rows])

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> int:
        names = list(columns)
        if not names:
            return 0
        data = [list(columns[name]) for name in names]
        lengths = {len(values) for values in data}
        if len(lengths) != 1:
            sizes = ", ".join(f"{name}={len(values)}" for name, values in zip(names, data, strict=True))
            raise ValueError(f"columns of unequal length for {table}: {sizes}")
        count = lengths.pop()
        if count == 0:
            return 0
        cols = ", ".join(_quote_identifier(name) for name in names)
        sql = f"INSERT INTO {table} ({cols}) VALUES"
        with self._lock:
            client = self._connected()
            types = self._table_types(client, table)
            for i, name in enumerate(names):
                writer = _writer(types.get(name, ""))
                if writer is not None:
                    try:
                        data[i] = [writer(value) for value in data[i]]
                    except (TypeError, ValueError, OverflowError) as exc:
                        raise RejectedDataError(f"column {name} ({types[name]}): {exc}", sql) from exc
            self._run(client, sql, data, columnar=True)
        return count

    # ---------------------------------------------------------------------------------------- helpers

    def _table_types(self, client: Client, table: str) -> dict[str, str]:
        types = self._column_types.get(table)
        if types is None:
            rows = self._run(client, f"DESCRIBE TABLE {table}")
            types = {str(row[0]): str(row[1]) for row in rows}
            self._column_types[table] = types
        return types

    @staticmethod
    def _server_timezone(client: Client) -> str:
        info = client.connection.server_info
        return str(info.get_timezone()) if info is not None else "UTC"


# -------------------------------------------------------------------------------- DateTime conversion

_DATETIME = re.compile(r"DateTime(\('[^']*'\))?$")


def _inner(type_: str, wrapper: str) -> str | None:
    prefix = wrapper + "("
    return type_[len(prefix) : -1] if type_.startswith(prefix) and type_.endswith(")") else None


def _writer(type_: str) -> Callable[[Any], Any] | None:
    """Makes values the driver takes for a ``DateTime`` column (int and datetime, but not numpy ints)."""
    if _DATETIME.match(type_):
        return _to_datetime_value
    return _wrapped(type_, _writer)


def _wrapped(type_: str, make: Callable[[str], Callable[[Any], Any] | None]) -> Callable[[Any], Any] | None:
    """The converter ``make`` gives for the element type, lifted over ``Nullable(…)`` and ``Array(…)``."""
    inner = _inner(type_, "Nullable")
    if inner is not None:
        conv = make(inner)
        if conv is None:
            return None
        element = conv
        return lambda v: None if v is None else element(v)
    inner = _inner(type_, "Array")
    if inner is not None:
        conv = make(inner)
        if conv is None:
            return None
        item = conv
        return lambda v: [item(x) for x in v]
    return None


def _to_datetime_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, dt.datetime)):
        return value
    if isinstance(value, float):
        return int(value)
    return operator.index(value)  # numpy integers and the like; anything else raises TypeError


def _reader(type_: str, server_tz: str) -> Callable[[Any], Any] | None:
    """Turns the driver's ``datetime`` values of a ``DateTime`` result column into naive UTC datetimes."""
    if _DATETIME.match(type_):
        try:
            tz: dt.tzinfo = ZoneInfo(server_tz)
        except (ZoneInfoNotFoundError, ValueError):
            tz = dt.UTC
        return lambda v: _naive_utc(v, tz)
    return _wrapped(type_, lambda inner: _reader(inner, server_tz))


def _naive_utc(value: Any, tz: dt.tzinfo) -> Any:
    if not isinstance(value, dt.datetime):
        return value
    if value.tzinfo is None:  # the driver gives naive datetimes in the server's time zone
        value = value.replace(tzinfo=tz)
    return value.astimezone(dt.UTC).replace(tzinfo=None)
