"""The alerter's checkpoint survives a deploy: a rules checkpoint written by the previous release (version 0, a
pickled dict) restores its open alerts, and what this release writes is versioned JSON that restores too."""

from __future__ import annotations

import base64
import json
import pickle

from alerting.rules import AlertRules
from alerting.service import AlertService
from store import Store
from tests.store_fixtures import chdb_store
from tests.unit.test_alert_rules import point, run

__all__ = ["chdb_store"]


def _service(store: Store) -> AlertService:
    return AlertService(store, "127.0.0.1:1", notifiers=[], group_id="g")


def _row(store: Store, state: str) -> None:
    store.insert(
        "detector_checkpoints",
        {
            "series": ["g:__rules__"],
            "detector": ["alert_rules"],
            "through_us": [0],
            "state": [state],
            "updated_us": [1],
        },
    )


def test_a_version_0_pickled_rules_checkpoint_restores_its_open_alert(chdb_store: Store) -> None:
    rules = AlertRules()
    run(rules, [0.95])
    legacy = {"rules": rules, "business_through_s": 1_700_000_000}
    _row(chdb_store, base64.b64encode(pickle.dumps(legacy)).decode("ascii"))
    service = _service(chdb_store)
    service.restore()
    assert service.business_through_s == 1_700_000_000
    assert set(service.rules.open) == set(rules.open)
    kinds = [e.kind for i in (1, 2, 3) for e in service.rules.step(point(i, 0.1))]
    assert kinds == ["resolved"]


def test_the_json_rules_checkpoint_round_trips(chdb_store: Store) -> None:
    rules = AlertRules()
    run(rules, [0.95])
    state = {"v": 1, "state": {"open": rules.to_json(), "business_through_s": 5, "stall": {}}}
    _row(chdb_store, json.dumps(state))
    service = _service(chdb_store)
    service.restore()
    assert service.business_through_s == 5 and set(service.rules.open) == set(rules.open)
