"""The deployments table on both stores: transitions in order, a transition recorded twice is one row."""

from __future__ import annotations

import time

import pytest

from rollout.store import StoreDeployments
from schemas import ModelUpdate
from store import Store

pytestmark = pytest.mark.integration


def test_transitions_are_rows_once_each(migrated_store: Store) -> None:
    now = int(time.time() * 1_000_000)
    deployments = StoreDeployments(migrated_store)
    kinds = (ModelUpdate.CANARY_DEPLOYED, ModelUpdate.WEIGHT_CHANGED, ModelUpdate.PROMOTED)
    updates = [
        ModelUpdate(
            update_id=f"u{i}",
            ts_us=now + i,
            model="ranker",
            kind=kind,
            version=2,
            parent_version=1,
            reason=f"step {i}",
            actor="controller",
            caused_by="alert:x",
            canary_weight=0.1 * i,
        )
        for i, kind in enumerate(kinds)
    ]
    for u in [*updates, updates[1]]:  # the weight change recorded again after a crash
        deployments.record(u)
    rows = migrated_store.query(
        "SELECT ts_us, model, version, action, reason FROM deployments FINAL WHERE model = 'ranker' ORDER BY ts_us"
    ).rows
    assert [(r[3], r[4]) for r in rows] == [
        ("canary_deployed", "step 0"),
        ("weight_changed", "step 1"),
        ("promoted", "step 2"),
    ]
    with pytest.raises(ValueError, match="not a rollout transition"):
        deployments.record(ModelUpdate(update_id="c", model="ranker", kind=ModelUpdate.DEPLOY_REQUESTED))
