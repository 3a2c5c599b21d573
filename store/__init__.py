"""The store: ClickHouse-compatible SQL over chDB (embedded, the default) or a ClickHouse server.

>>> store = open_store("chdb:///tmp/recwatch-doc")  # doctest: +SKIP
>>> store.connect(); migrate(store); store.query("SELECT count() FROM inference_events").scalar()  # doctest: +SKIP
0
"""

from __future__ import annotations

from store.base import QueryError, QueryResult, RejectedDataError, Store, StoreError, StoreUnavailableError
from store.migrations import migrate
from store.url import StoreUrl, StoreUrlError, parse_store_url

__all__ = [
    "QueryError",
    "QueryResult",
    "RejectedDataError",
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

    For ``chdb://`` the store daemon of that directory is used when it runs or has run before (a stopped one is
    waited for: calls raise ``StoreUnavailableError`` until it is back), else chDB is opened in this process
    (which then owns the directory until ``close``).
    """
    parsed = parse_store_url(url)
    if parsed.scheme == "chdb":
        assert parsed.path is not None
        from store.daemon import ChdbDaemonStore, has_daemon

        if has_daemon(parsed.path):  # running, or it ran before: it is restarted, never locked out by us
            return ChdbDaemonStore(parsed.path, parsed.database)
        from store.chdb_local import ChdbStore

        return ChdbStore(parsed.path, parsed.database)
    from store.clickhouse import ClickHouseServerStore

    return ClickHouseServerStore(url)
