"""Windowed aggregates through the real sink into an in-process chDB (the same checks run against the
ClickHouse server in tests/integration/test_window_aggregates_stores.py)."""

from __future__ import annotations

from store import Store
from tests import window_aggregate_checks as checks
from tests.store_fixtures import chdb_store

__all__ = ["chdb_store"]


def test_percentiles_match_exact_ones_per_replica_and_rolled_up(chdb_store: Store) -> None:
    checks.check_percentiles_match_exact_ones_per_replica_and_rolled_up(chdb_store)


def test_errors_by_status_scores_and_cache_hits_per_window(chdb_store: Store) -> None:
    checks.check_errors_scores_and_cache_per_window(chdb_store)


def test_late_events_are_counted_not_aggregated_and_survive_a_restart(chdb_store: Store) -> None:
    checks.check_late_events_are_counted_not_aggregated_and_survive_a_restart(chdb_store)
