"""``RecwatchWorkerStalled``: a stream worker group that has stopped making progress while its lag grows.

What a user notices first when a worker is stuck (a store that stays down, a worker wedged or gone): the group's
committed offsets stand still while the topic grows. ``StallRule.observe`` is given, every few seconds, the
group's committed and end offsets per partition (``recwatch alerter`` reads them from Kafka: what the workers
commit is exactly what they stored); it fires when, for ``stall_s`` seconds, no committed offset moved and the
lag grew, and resolves as soon as a committed offset moves again. This watches from outside: it fires also when
every worker of the group is dead, which the workers' own ``/metrics`` cannot say.

Pure logic: time is passed in (epoch seconds), state is the last progress per group.

>>> rule = StallRule(stall_s=60)
>>> rule.observe(0, "g", {("t", 0): (10, 10)})
[]
>>> [e.kind for e in rule.observe(61, "g", {("t", 0): (10, 500)})]
['fired']
>>> [e.kind for e in rule.observe(70, "g", {("t", 0): (400, 500)})]
['resolved']
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from alerting.rules import AlertEvent
from schemas import Alert

__all__ = ["ALERTNAME", "StallRule"]

ALERTNAME = "RecwatchWorkerStalled"
_US = 1_000_000

Offsets = Mapping[tuple[str, int], tuple[int, int]]  # (topic, partition) -> (committed, end)


@dataclass
class _Group:
    committed: int  # sum of committed offsets at the last progress
    lag: int  # total lag then
    since_s: float  # when the committed offsets last moved
    alert: Alert | None = None


@dataclass
class StallRule:
    """Fire after ``stall_s`` s without a committed offset moving while the lag grew by at least ``min_growth``."""

    stall_s: float = 120.0
    min_growth: int = 1
    groups: dict[str, _Group] = field(default_factory=dict)

    def observe(self, now_s: float, group: str, offsets: Offsets) -> list[AlertEvent]:
        committed = sum(max(c, 0) for c, _ in offsets.values())
        lag = sum(max(0, e - max(c, 0)) for c, e in offsets.values())
        state = self.groups.get(group)
        if state is None or committed != state.committed or lag == 0:
            events = []
            if state is not None and state.alert is not None:
                events.append(AlertEvent("resolved", _resolved(state.alert, now_s)))
            self.groups[group] = _Group(committed, lag, now_s)
            return events
        if state.alert is None and now_s - state.since_s >= self.stall_s and lag - state.lag >= self.min_growth:
            state.alert = _firing(group, offsets, state, now_s, lag)
            return [AlertEvent("fired", state.alert)]
        return []

    def to_json(self) -> dict[str, object]:
        return {
            g: {
                "committed": s.committed,
                "lag": s.lag,
                "since_s": s.since_s,
                "alert": s.alert.SerializeToString().hex() if s.alert is not None else None,
            }
            for g, s in self.groups.items()
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], *, stall_s: float = 120.0, min_growth: int = 1) -> StallRule:
        rule = cls(stall_s=stall_s, min_growth=min_growth)
        for g, raw in data.items():
            s = dict(raw)  # type: ignore[call-overload]
            alert = Alert.FromString(bytes.fromhex(s["alert"])) if s.get("alert") else None
            rule.groups[g] = _Group(int(s["committed"]), int(s["lag"]), float(s["since_s"]), alert)
        return rule


def _fingerprint(group: str) -> str:
    return hashlib.sha256(f"{ALERTNAME}\0{group}".encode()).hexdigest()[:16]


def _firing(group: str, offsets: Offsets, state: _Group, now_s: float, lag: int) -> Alert:
    topics = sorted({t for t, _ in offsets})
    alert = Alert(
        fingerprint=_fingerprint(group),
        status=Alert.FIRING,
        severity="critical",
        starts_at_us=int(state.since_s * _US),
        ends_at_us=0,
    )
    alert.labels.update(
        {
            "alertname": ALERTNAME,
            "severity": "critical",
            "model": "",
            "version": "0",
            "label": "",
            "metric": "consumer_lag",
            "group": group,
            "topic": ",".join(topics),
        }
    )
    alert.annotations.update(
        {
            "summary": (
                f"consumer group {group} has committed nothing for {now_s - state.since_s:.0f} s while its lag grew "
                f"from {state.lag} to {lag} records ({', '.join(topics)}): its workers are stuck, down or waiting "
                "for the store (see each worker's /metrics and log)"
            ),
            "value": str(lag),
            "baseline": str(state.lag),
            "score": "1.0",
            "window": f"{int(state.since_s)} +{int(now_s - state.since_s)}s",
            "sql": "",
        }
    )
    return alert


def _resolved(alert: Alert, now_s: float) -> Alert:
    out = Alert()
    out.CopyFrom(alert)
    out.status = Alert.RESOLVED
    out.ends_at_us = int(now_s * _US)
    return out
