"""The feedback sink against an in-process chDB (the same checks run on both stores in
tests/integration/test_feedback_sink_stores.py)."""

from __future__ import annotations

import pytest

from store import Store
from store.migrations import BUSINESS_COUNT_COLUMNS
from stream_processors.feedback_sink import COUNT_COLUMNS
from tests import feedback_sink_checks as checks
from tests.store_fixtures import chdb_store

__all__ = ["chdb_store"]


def test_the_table_has_a_column_per_business_window_count() -> None:
    assert COUNT_COLUMNS == BUSINESS_COUNT_COLUMNS


def test_ctr_per_model_version_and_label_canary_vs_stable(chdb_store: Store) -> None:
    checks.check_ctr_per_version_and_label_canary_vs_stable(chdb_store)


def test_feedback_before_its_prediction_and_unattributed_reasons(chdb_store: Store) -> None:
    checks.check_feedback_before_its_prediction_and_unattributed_reasons(chdb_store)


def test_late_feedback_updates_an_old_window(chdb_store: Store) -> None:
    checks.check_late_feedback_updates_an_old_window(chdb_store)


def test_redelivered_batches_change_no_total(chdb_store: Store) -> None:
    checks.check_redelivered_batches_change_no_total(chdb_store)


def test_restarts_rebalances_and_redeliveries_give_the_same_totals(chdb_store: Store) -> None:
    checks.check_restarts_and_redeliveries_give_the_same_totals(chdb_store)


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "retried"])
@pytest.mark.parametrize("table", ["business_metrics_1m_parts", "feedback_unattributed_parts"])
def test_a_failure_between_inserts_is_repaired_by_redelivery(chdb_store: Store, table: str, restart: bool) -> None:
    checks.check_a_failure_between_inserts_is_repaired_by_redelivery(chdb_store, table, restart=restart)


def test_invalid_feedback_is_rejected_with_a_reason(chdb_store: Store) -> None:
    checks.check_invalid_feedback_is_rejected_with_a_reason(chdb_store)
