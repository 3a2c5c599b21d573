"""``RecwatchWorkerStalled``: fires when a group's committed offsets stand still while its lag grows, once; resolves
when they move; survives a restart of the alerter (its state round-trips through JSON)."""

from __future__ import annotations

import doctest
import json

import alerting.worker_health
from alerting.worker_health import ALERTNAME, StallRule
from schemas import Alert


def _offsets(committed: int, end: int, partitions: int = 3) -> dict[tuple[str, int], tuple[int, int]]:
    return {("recwatch.inference.v1", p): (committed, end) for p in range(partitions)}


def test_a_group_that_commits_nothing_while_its_lag_grows_fires_once_then_resolves() -> None:
    rule = StallRule(stall_s=60)
    assert rule.observe(0, "g", _offsets(100, 100)) == []
    assert rule.observe(30, "g", _offsets(100, 150)) == []  # not long enough
    (fired,) = rule.observe(61, "g", _offsets(100, 200))
    assert fired.kind == "fired" and fired.alert.status == Alert.FIRING
    assert fired.alert.labels["alertname"] == ALERTNAME and fired.alert.labels["group"] == "g"
    assert fired.alert.starts_at_us == 0
    assert "300" in fired.alert.annotations["summary"]  # the lag, 3 x 100
    assert rule.observe(80, "g", _offsets(100, 300)) == []  # still stalled: no second notification
    (resolved,) = rule.observe(90, "g", _offsets(101, 300))
    assert resolved.kind == "resolved" and resolved.alert.ends_at_us == 90_000_000
    assert resolved.alert.fingerprint == fired.alert.fingerprint


def test_an_idle_group_with_nothing_to_read_does_not_fire() -> None:
    rule = StallRule(stall_s=60)
    for t in range(0, 600, 10):
        assert rule.observe(t, "g", _offsets(100, 100)) == []
    # lag without growth (a backlog it is not reading, but nothing new arrives) does not fire either
    rule = StallRule(stall_s=60)
    for t in range(0, 600, 10):
        assert rule.observe(t, "g", _offsets(100, 150)) == []


def test_the_state_survives_a_restart_through_json() -> None:
    rule = StallRule(stall_s=60)
    rule.observe(0, "g", _offsets(100, 100))
    rule.observe(61, "g", _offsets(100, 200))
    restored = StallRule.from_json(json.loads(json.dumps(rule.to_json())), stall_s=60)
    assert restored.observe(70, "g", _offsets(100, 250)) == []  # the open alert is known
    (resolved,) = restored.observe(80, "g", _offsets(150, 250))
    assert resolved.kind == "resolved"


def test_doctests() -> None:
    result = doctest.testmod(alerting.worker_health)
    assert result.attempted and not result.failed
