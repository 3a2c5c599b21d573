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


def open_store(url: str, *, long_running: bool = False) -> Store:
    """A store for ``url`` (not yet connected).

    For ``chdb://`` the running store daemon of that directory is used, else chDB is opened in this process (which
    then owns the directory until ``close``). ``long_running`` (the worker, the alerter, the controller, the
    trainer): a directory that has had a daemon is only ever reached through it, also while it is down (calls raise
    ``StoreUnavailableError`` until it is back): a process that opened it in-process would lock the restarted
    daemon out for as long as it runs.
    """
    parsed = parse_store_url(url)
    if parsed.scheme == "chdb":
        assert parsed.path is not None
        from store.daemon import ChdbDaemonStore, find_daemon, has_daemon

        if find_daemon(parsed.path) is not None or (long_running and has_daemon(parsed.path)):
            return ChdbDaemonStore(parsed.path, parsed.database)
        from store.chdb_local import ChdbStore

        return ChdbStore(parsed.path, parsed.database)
    from store.clickhouse import ClickHouseServerStore

    return ClickHouseServerStore(url)
