"""Stores for tests: an in-process chDB per test, and (integration) the ClickHouse server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from store import Store, migrate
from store.chdb_local import ChdbStore


@pytest.fixture
def chdb_store(tmp_path: Path) -> Iterator[Store]:
    store = ChdbStore(tmp_path / "chdb", "recwatch")
    store.connect()
    migrate(store)
    yield store
    store.close()
