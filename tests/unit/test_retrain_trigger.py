"""The retrain rules wired to the alerter: open alerts in, exactly one RETRAIN_REQUESTED per sustained alert out,
none after a restart, none for canaries or blips, and a failed publish retried (fakes, no Kafka)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from alerting.service import AlertService, RecordingNotifier
from detection.series import Point
from rollout.retrain_trigger import RetrainTrigger
from schemas import Alert, ModelUpdate

US = 1_000_000
T0 = 1_700_000_000 * US


class FakeTopic:
    """``KafkaTopic`` in memory; ``fail_next`` makes the next publish raise (Kafka away)."""

    def __init__(self) -> None:
        self.log: list[ModelUpdate] = []
        self.fail_next = False
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def catch_up(self, timeout_s: float = 60.0) -> None:
        pass

    def models(self) -> list[str]:
        return sorted({u.model for u in self.log})

    def updates(self, model: str) -> Sequence[ModelUpdate]:
        return [u for u in self.log if u.model == model]

    def publish(self, update: ModelUpdate) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("not acknowledged")
        self.log.append(update)

    def close(self) -> None:
        pass


def alert(alertname: str = "RecwatchScoreMeanDrift", *, label: str = "stable", fp: str = "fp1") -> Alert:
    a = Alert(fingerprint=fp, status=Alert.FIRING, starts_at_us=T0)
    a.labels.update(alertname=alertname, model="ranker", version="1", label=label, metric="score_mean")
    a.annotations["summary"] = "mean prediction score of ranker v1 (stable) is 0.32 vs its baseline 0.19"
    return a


def trigger(topic: FakeTopic) -> RetrainTrigger:
    t = RetrainTrigger(topic, min_firing_s=60, min_interval_s=3600)
    t.start()
    return t


def test_a_sustained_drift_alert_asks_for_one_retrain_and_a_restart_asks_for_none() -> None:
    topic = FakeTopic()
    t = trigger(topic)
    drift, canary, latency = alert(), alert(label="canary", fp="fp2"), alert("RecwatchLatencyP99High", fp="fp3")

    assert t.watch([drift, canary, latency], T0 + 30 * US) == []  # not sustained yet
    [cmd] = t.watch([drift, canary, latency], T0 + 61 * US)
    assert (cmd.kind, cmd.model, cmd.parent_version, cmd.actor, cmd.caused_by) == (
        ModelUpdate.RETRAIN_REQUESTED, "ranker", 1, "rules", "fp1",
    )  # fmt: skip
    assert t.watch([drift], T0 + 120 * US) == []  # answered
    assert topic.log == [cmd]

    restarted = trigger(topic)  # state rebuilt from the topic
    assert restarted.watch([drift], T0 + 200 * US) == []
    other = alert("RecwatchCtrLow", fp="fp4")  # another alert of the model, within the rate limit
    assert restarted.watch([other], T0 + 300 * US) == []
    assert restarted.watch([other], T0 + 3700 * US) != []  # after min_interval_s
    assert len(topic.log) == 2


def test_a_failed_publish_is_retried_on_the_next_poll() -> None:
    topic = FakeTopic()
    t = trigger(topic)
    topic.fail_next = True
    with pytest.raises(RuntimeError):
        t.watch([alert()], T0 + 61 * US)
    [cmd] = t.watch([alert()], T0 + 62 * US)
    assert topic.log == [cmd]


class RecordingWatcher:
    def __init__(self) -> None:
        self.seen: list[tuple[list[str], int]] = []

    def start(self) -> None:
        pass

    def watch(self, alerts: Sequence[Alert], now_us: int) -> None:
        self.seen.append(([a.fingerprint for a in alerts], now_us))

    def close(self) -> None:
        pass


def test_the_alerter_shows_its_watchers_the_open_alerts_until_they_resolve() -> None:
    watcher = RecordingWatcher()
    service = AlertService(
        store=None,  # type: ignore[arg-type]  # _watch touches neither the store nor Kafka
        bootstrap="",
        notifiers=[RecordingNotifier()],
        clock=lambda: 1_700_000_100.0,
        watchers=[watcher],
        resolve_after=1,
    )

    def point(score: float, ts_s: int) -> Point:
        return Point("ranker/1/stable/score_mean", "score_mean", "ranker", 1, "stable", ts_s * US, 10, 0.3, 0.2,
                     score, 0.9, None)  # fmt: skip

    [fired] = service.rules.step(point(0.95, 1_700_000_000))
    service._watch()
    service.rules.step(point(0.1, 1_700_000_010))  # resolves (resolve_after=1)
    service._watch()
    assert watcher.seen == [([fired.alert.fingerprint], 1_700_000_100 * US), ([], 1_700_000_100 * US)]
