"""The windowed aggregates on both stores: chDB through its daemon and ClickHouse 18.16 (version-gated DDL,
views merging sketches with ARRAY JOIN + quantilesExactWeighted, sumMap, sumForEach)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from store import Store, migrate, open_store
from tests import window_aggregate_checks as checks

pytestmark = pytest.mark.integration


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    s.connect()
    migrate(s)
    try:
        yield s
    finally:
        s.close()


def test_percentiles_match_exact_ones_per_replica_and_rolled_up(store: Store) -> None:
    checks.check_percentiles_match_exact_ones_per_replica_and_rolled_up(store)


def test_errors_by_status_scores_and_cache_hits_per_window(store: Store) -> None:
    checks.check_errors_scores_and_cache_per_window(store)


def test_late_events_are_counted_not_aggregated_and_survive_a_restart(store: Store) -> None:
    checks.check_late_events_are_counted_not_aggregated_and_survive_a_restart(store)
