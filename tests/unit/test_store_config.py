from __future__ import annotations

from pathlib import Path

import pytest

from recwatch.settings import ConfigError, Settings
from store.features import Features
from store.migrations import MIGRATIONS
from store.url import StoreUrlError, parse_store_url


def test_chdb_url() -> None:
    url = parse_store_url("chdb:///var/lib/rw/chdb?database=shop")
    assert (url.scheme, url.path, url.database) == ("chdb", Path("/var/lib/rw/chdb"), "shop")


def test_clickhouse_url_with_credentials() -> None:
    url = parse_store_url("clickhouse://alice:s%40cret@10.0.0.5:9440/metrics")
    assert (url.host, url.port, url.user, url.password, url.database) == (
        "10.0.0.5",
        9440,
        "alice",
        "s@cret",
        "metrics",
    )


@pytest.mark.parametrize("bad", ["postgres://x/y", "chdb://", "clickhouse://h:port/db"])
def test_bad_store_urls_say_what_is_accepted(bad: str) -> None:
    with pytest.raises(StoreUrlError):
        parse_store_url(bad)


def test_ddl_for_18_16_avoids_what_it_lacks() -> None:
    statements = " ".join(s for m in MIGRATIONS for s in m.statements(Features((18, 16, 1))))
    for missing in ("TTL", "CODEC", "LowCardinality", "DateTime64"):
        assert missing not in statements


def test_ddl_for_current_clickhouse_uses_ttl_codecs_and_low_cardinality() -> None:
    statements = " ".join(s for m in MIGRATIONS for s in m.statements(Features((26, 9))))
    for present in ("TTL", "CODEC(Delta, ZSTD)", "LowCardinality(String)"):
        assert present in statements


def test_settings_from_env(tmp_path: Path) -> None:
    s = Settings.from_env({"RECWATCH_HOME": str(tmp_path), "RECWATCH_KAFKA": "h:1", "RECWATCH_KAFKA_PORT": "9192"})
    assert (s.home, s.kafka, s.kafka_port, s.store) == (tmp_path, "h:1", 9192, None)
    assert s.default_store_url == f"chdb://{tmp_path}/store/chdb"


def test_settings_reject_non_numbers() -> None:
    with pytest.raises(ConfigError, match="RECWATCH_KAFKA_PORT"):
        Settings.from_env({"RECWATCH_KAFKA_PORT": "ninety"})
