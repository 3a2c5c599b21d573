"""The alerter's receivers: Alertmanager needs firing alerts repeated and resolves delivered; webhooks get one
notification per alert state change, grouped by the alert's fingerprint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from alerting.alertmanager import AlertmanagerClient, AlertmanagerError
from alerting.notifiers import AlertmanagerNotifier, WebhookNotifier
from alerting.outbox import WebhookSender
from schemas import Alert


def _alert(fingerprint: str, status: Alert.Status = Alert.FIRING) -> Alert:
    alert = Alert(fingerprint=fingerprint, status=status, severity="warning", starts_at_us=1_700_000_000_000_000)
    alert.labels.update(alertname="RecwatchLatencyP99High", model="ranker", version="1", label="", metric="x")
    if status == Alert.RESOLVED:
        alert.ends_at_us = alert.starts_at_us + 60_000_000
    return alert


class FakeClient:
    url = "http://127.0.0.1:1"

    def __init__(self) -> None:
        self.posts: list[list[tuple[str, int]]] = []
        self.down = False

    def post_alerts(self, alerts: Sequence[Alert]) -> None:
        if self.down:
            raise AlertmanagerError("connection refused", url=self.url)
        self.posts.append([(a.fingerprint, a.status) for a in alerts])


def test_firing_alerts_are_reposted_until_they_resolve() -> None:
    client = FakeClient()
    notifier = AlertmanagerNotifier(cast(AlertmanagerClient, client))
    notifier.notify([_alert("a")])
    notifier.notify([_alert("b")])
    assert client.posts == [[("a", Alert.FIRING)], [("b", Alert.FIRING)]]
    client.posts.clear()
    notifier.refresh()
    assert sorted(client.posts[0]) == [("a", Alert.FIRING), ("b", Alert.FIRING)]
    notifier.notify([_alert("a", Alert.RESOLVED)])
    client.posts.clear()
    notifier.refresh()
    assert client.posts == [[("b", Alert.FIRING)]]  # the resolve went out once; a is no longer repeated


def test_a_resolve_alertmanager_missed_is_sent_with_the_next_refresh() -> None:
    client = FakeClient()
    notifier = AlertmanagerNotifier(cast(AlertmanagerClient, client))
    notifier.notify([_alert("a")])
    client.down = True
    notifier.notify([_alert("a", Alert.RESOLVED)])
    assert notifier.errors == 1 and not notifier.firing()
    client.down = False
    assert notifier.refresh()
    assert client.posts[-1] == [("a", Alert.RESOLVED)]
    client.posts.clear()
    notifier.refresh()
    assert client.posts == []


class FakeSender:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], dict[str, str]]] = []

    def notify(self, group_key: str, alerts: Sequence[Alert], status: Any = None, *, group_labels: Any = None) -> None:
        self.calls.append((group_key, [a.fingerprint for a in alerts], dict(group_labels or {})))


def test_each_alert_change_is_one_webhook_notification_grouped_by_fingerprint() -> None:
    sender = FakeSender()
    notifier = WebhookNotifier(cast(WebhookSender, sender))
    notifier.notify([_alert("a"), _alert("b")])
    notifier.notify([_alert("a", Alert.RESOLVED)])
    assert [(g, f) for g, f, _ in sender.calls] == [("a", ["a"]), ("b", ["b"]), ("a", ["a"])]
    assert sender.calls[0][2] == {
        "alertname": "RecwatchLatencyP99High",
        "model": "ranker",
        "version": "1",
        "label": "",
        "metric": "x",
    }
