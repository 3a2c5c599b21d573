"""Store URLs: ``chdb:///abs/path[?database=recwatch]`` and ``clickhouse://[user[:pw]@]host[:port]/db``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from store.base import StoreError

DEFAULT_DATABASE = "recwatch"


class StoreUrlError(StoreError, ValueError):
    """A store URL that recwatch cannot use; the message shows the accepted forms."""


@dataclass(frozen=True)
class StoreUrl:
    scheme: str  # "chdb" or "clickhouse"
    database: str
    path: Path | None = None  # chdb
    host: str = "127.0.0.1"  # clickhouse
    port: int = 9000
    user: str = "default"
    password: str = ""


def parse_store_url(url: str) -> StoreUrl:
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        raw_path = unquote(parts.netloc + parts.path)
        if not raw_path:
            raise StoreUrlError(f"{url!r}: a chDB URL names a directory, e.g. chdb:///var/lib/recwatch/chdb")
        database = parse_qs(parts.query).get("database", [DEFAULT_DATABASE])[0]
        return StoreUrl("chdb", database, path=Path(raw_path).absolute())
    if parts.scheme == "clickhouse":
        database = parts.path.lstrip("/") or DEFAULT_DATABASE
        try:
            port = parts.port or 9000
        except ValueError:
            raise StoreUrlError(f"{url!r}: the port must be a number") from None
        return StoreUrl(
            "clickhouse",
            database,
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
        )
    raise StoreUrlError(
        f"{url!r}: unsupported store URL; use chdb:///path (embedded) or clickhouse://host:port/db (server)"
    )
