"""The windowed aggregates on both stores: chDB through its daemon and ClickHouse 18.16 (version-gated DDL,
views merging sketches with ARRAY JOIN + quantilesExactWeighted, sumMap, sumForEach)."""

from __future__ import annotations

import pytest

from store import Store
from tests import window_aggregate_checks as checks

pytestmark = pytest.mark.integration


@pytest.fixture
def store(migrated_store: Store) -> Store:
    return migrated_store


def test_percentiles_match_exact_ones_per_replica_and_rolled_up(store: Store) -> None:
    checks.check_percentiles_match_exact_ones_per_replica_and_rolled_up(store)


def test_errors_by_status_scores_and_cache_hits_per_window(store: Store) -> None:
    checks.check_errors_scores_and_cache_per_window(store)


def test_late_events_are_counted_not_aggregated_and_survive_a_restart(store: Store) -> None:
    checks.check_late_events_are_counted_not_aggregated_and_survive_a_restart(store)


def test_process_rss_is_the_max_per_replica_and_round_trips_through_the_store(store: Store) -> None:
    checks.check_process_rss_is_the_max_per_replica_and_round_trips_through_the_store(store)
