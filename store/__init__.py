"""The store: ClickHouse-compatible SQL over chDB (embedded, the default) or a ClickHouse server.

>>> store = open_store("chdb:///tmp/recwatch-doc")  # doctest: +SKIP
>>> store.connect(); migrate(store); store.query("SELECT count() FROM inference_events").scalar()  # doctest: +SKIP
0
"""

from __future__ import annotations

from store.base import QueryError, QueryResult, Store, StoreError, StoreUnavailableError
from store.migrations import migrate
from store.url import StoreUrl, StoreUrlError, parse_store_url

__all__ = [
    "QueryError",
    "QueryResult",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "StoreUrl",
    "StoreUrlError",
    "migrate",
    "open_store",
    "parse_store_url",
]


def open_store(url: str) -> Store:
    """A store for ``url`` (not yet connected).

    For ``chdb://`` the running store daemon of that directory is used when there is one, else chDB is
    opened in this process (which then owns the directory until ``close``).
    """
    parsed = parse_store_url(url)
    if parsed.scheme == "chdb":
        assert parsed.path is not None
        from store.daemon import ChdbDaemonStore, find_daemon

        daemon = find_daemon(parsed.path)
        if daemon is not None:
            return ChdbDaemonStore(parsed.path, parsed.database, *daemon)
        from store.chdb_local import ChdbStore

        return ChdbStore(parsed.path, parsed.database)
    from store.clickhouse import ClickHouseServerStore

    return ClickHouseServerStore(url)
