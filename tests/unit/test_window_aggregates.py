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


def test_process_rss_is_the_max_per_replica_and_round_trips_through_the_store(chdb_store: Store) -> None:
    checks.check_process_rss_is_the_max_per_replica_and_round_trips_through_the_store(chdb_store)


def test_merging_partial_rows_keeps_the_highest_cumulative_totals_not_their_sum() -> None:
    from stream_processors.window_rows import WindowState

    a = WindowState(requests=3, producer_dropped=5, producer_spooled=7, process_rss_max_bytes=100)
    b = WindowState(requests=2, producer_dropped=4, producer_spooled=9, process_rss_max_bytes=300)
    a.merge(b)
    assert (a.requests, a.producer_dropped, a.producer_spooled, a.process_rss_max_bytes) == (5, 5, 9, 300)
