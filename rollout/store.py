"""The ``deployments`` table: one row per rollout transition, written by the controller (``Reconciler``)."""

from __future__ import annotations

from typing import Final

from schemas import ModelUpdate
from store.base import Store

ACTIONS: Final = {
    ModelUpdate.CANARY_DEPLOYED: "canary_deployed",
    ModelUpdate.WEIGHT_CHANGED: "weight_changed",
    ModelUpdate.PROMOTED: "promoted",
    ModelUpdate.ROLLED_BACK: "rolled_back",
}


class StoreDeployments:
    """``rollout.reconcile.Deployments`` over the store; a row written twice is one row (``update_id`` key)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, update: ModelUpdate) -> None:
        action = ACTIONS.get(update.kind)
        if action is None:
            raise ValueError(f"not a rollout transition: {ModelUpdate.Kind.Name(update.kind)}")
        self.store.insert(
            "deployments",
            {
                "ts_us": [update.ts_us],
                "update_id": [update.update_id],
                "model": [update.model],
                "version": [update.version],
                "parent_version": [update.parent_version],
                "action": [action],
                "canary_weight": [update.canary_weight],
                "reason": [update.reason],
                "actor": [update.actor],
                "caused_by": [update.caused_by],
            },
        )
