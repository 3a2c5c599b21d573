"""The feedback sink on both stores: chDB through its daemon and ClickHouse 18.16 (version-gated DDL, FINAL views,
the rebuild's IN subqueries and argMax/maxIf aggregates)."""

from __future__ import annotations

import pytest

from store import Store
from tests import feedback_sink_checks as checks

pytestmark = pytest.mark.integration


@pytest.fixture
def store(migrated_store: Store) -> Store:
    return migrated_store


def test_ctr_per_model_version_and_label_canary_vs_stable(store: Store) -> None:
    checks.check_ctr_per_version_and_label_canary_vs_stable(store)


def test_feedback_before_its_prediction_and_unattributed_reasons(store: Store) -> None:
    checks.check_feedback_before_its_prediction_and_unattributed_reasons(store)


def test_late_feedback_updates_an_old_window(store: Store) -> None:
    checks.check_late_feedback_updates_an_old_window(store)


def test_redelivered_batches_change_no_total(store: Store) -> None:
    checks.check_redelivered_batches_change_no_total(store)


def test_restarts_rebalances_and_redeliveries_give_the_same_totals(store: Store) -> None:
    checks.check_restarts_and_redeliveries_give_the_same_totals(store)


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "retried"])
@pytest.mark.parametrize("table", ["business_metrics_1m_parts", "feedback_unattributed_parts"])
def test_a_failure_between_inserts_is_repaired_by_redelivery(store: Store, table: str, restart: bool) -> None:
    checks.check_a_failure_between_inserts_is_repaired_by_redelivery(store, table, restart=restart)


def test_invalid_feedback_is_rejected_with_a_reason(store: Store) -> None:
    checks.check_invalid_feedback_is_rejected_with_a_reason(store)
