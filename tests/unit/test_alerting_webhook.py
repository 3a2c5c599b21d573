"""Alertmanager's webhook JSON and the HMAC-SHA256 signature of webhook requests."""

from __future__ import annotations

import doctest
import hashlib
import hmac
import json

import pytest

from alerting import outbox, webhook
from alerting.outbox import WebhookReceiver
from alerting.webhook import encode_body, sign, signed_headers, verify, webhook_payload
from schemas import Alert

SECRET = b"shared-secret"
NOW = 1_790_000_000
STARTS_US = 1_789_999_940_250_000  # 2026-09-21T14:12:20.25Z


def make_alert(fingerprint: str, status: int, **labels: str) -> Alert:
    return Alert(
        fingerprint=fingerprint,
        status=status,  # type: ignore[arg-type]
        severity="critical",
        labels={"alertname": "LatencyP99High", "model": "ranker", **labels},
        annotations={"summary": "p99 latency above 50 ms", "value": fingerprint},
        starts_at_us=STARTS_US,
        ends_at_us=STARTS_US + 60_000_000 if status == Alert.RESOLVED else 0,
        anomaly_ids=["a1"],
    )


# The fields of Alertmanager's webhook_config payload (docs: configuration/#webhook_config).
ALERTMANAGER_FIELDS = {
    "version",
    "groupKey",
    "truncatedAlerts",
    "status",
    "receiver",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "alerts",
}
ALERTMANAGER_ALERT_FIELDS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}


def test_payload_has_alertmanagers_webhook_fields() -> None:
    alerts = [make_alert("f1", Alert.FIRING, replica="r1"), make_alert("f2", Alert.RESOLVED, replica="r2")]
    payload = webhook_payload(
        "pager", "{}:{alertname=\"LatencyP99High\"}", alerts, external_url="http://recwatch:8080",
        group_labels={"alertname": "LatencyP99High"},
    )  # fmt: skip
    assert set(payload) == ALERTMANAGER_FIELDS
    assert payload["version"] == "4"
    assert payload["truncatedAlerts"] == 0
    assert payload["status"] == "firing"  # one of the two still fires
    assert payload["receiver"] == "pager"
    assert payload["groupKey"] == '{}:{alertname="LatencyP99High"}'
    assert payload["externalURL"] == "http://recwatch:8080"
    assert payload["groupLabels"] == {"alertname": "LatencyP99High"}
    assert payload["commonLabels"] == {"alertname": "LatencyP99High", "model": "ranker", "severity": "critical"}
    assert payload["commonAnnotations"] == {"summary": "p99 latency above 50 ms"}
    firing, resolved = payload["alerts"]
    assert set(firing) == ALERTMANAGER_ALERT_FIELDS
    assert firing == {
        "status": "firing",
        "labels": {"alertname": "LatencyP99High", "model": "ranker", "replica": "r1", "severity": "critical"},
        "annotations": {"summary": "p99 latency above 50 ms", "value": "f1"},
        "startsAt": "2026-09-21T14:12:20.250000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": "f1",
    }
    assert resolved["status"] == "resolved"
    assert resolved["endsAt"] == "2026-09-21T14:13:20.250000Z"


def test_payload_all_resolved_is_resolved_and_json_round_trips() -> None:
    payload = webhook_payload("pager", "g", [make_alert("f1", Alert.RESOLVED), make_alert("f2", Alert.RESOLVED)])
    assert payload["status"] == "resolved"
    assert payload["groupLabels"] == {}
    body = encode_body(payload)
    assert json.loads(body) == payload
    assert b" " not in body.replace(b"p99 latency above 50 ms", b"")  # compact
    assert encode_body(dict(reversed(list(payload.items())))) == body  # key order does not matter


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"status":"firing"}'
    expected = hmac.new(SECRET, b"1790000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, body) == "sha256=" + expected


def test_signed_headers_verify_round_trip_case_insensitive() -> None:
    body = encode_body(webhook_payload("pager", "g", [make_alert("f1", Alert.FIRING)]))
    headers = signed_headers(SECRET, "delivery-1", body, now_s=NOW + 0.9)
    assert headers["X-Recwatch-Delivery"] == "delivery-1"
    assert headers["X-Recwatch-Timestamp"] == str(NOW)
    assert headers["X-Recwatch-Signature"].startswith("sha256=")
    assert verify(SECRET, headers, body, now_s=NOW + 10)
    assert verify(SECRET, {k.lower(): v for k, v in headers.items()}, body, now_s=NOW)
    assert verify(SECRET, {k.upper(): v for k, v in headers.items()}, body, now_s=NOW)


def test_verify_rejects_tampered_body() -> None:
    body = encode_body(webhook_payload("pager", "g", [make_alert("f1", Alert.FIRING)]))
    headers = signed_headers(SECRET, "d", body, now_s=NOW)
    assert not verify(SECRET, headers, body.replace(b"firing", b"resolved"), now_s=NOW)
    assert not verify(SECRET, headers, body + b" ", now_s=NOW)


def test_verify_rejects_wrong_secret() -> None:
    headers = signed_headers(SECRET, "d", b"{}", now_s=NOW)
    assert not verify(b"another-secret", headers, b"{}", now_s=NOW)


def test_verify_rejects_stale_and_future_timestamps() -> None:
    headers = signed_headers(SECRET, "d", b"{}", now_s=NOW)
    assert verify(SECRET, headers, b"{}", now_s=NOW + 300)
    assert not verify(SECRET, headers, b"{}", now_s=NOW + 301)  # a replay after the tolerance
    assert not verify(SECRET, headers, b"{}", now_s=NOW - 301)
    assert verify(SECRET, headers, b"{}", now_s=NOW + 3000, tolerance_s=3600)


def test_verify_rejects_a_replayed_signature_with_a_fresh_timestamp() -> None:
    headers = signed_headers(SECRET, "d", b"{}", now_s=NOW)
    replayed = {**headers, "X-Recwatch-Timestamp": str(NOW + 3600)}
    assert not verify(SECRET, replayed, b"{}", now_s=NOW + 3600)


@pytest.mark.parametrize("missing", ["X-Recwatch-Delivery", "X-Recwatch-Timestamp", "X-Recwatch-Signature"])
def test_verify_rejects_missing_headers(missing: str) -> None:
    headers = signed_headers(SECRET, "d", b"{}", now_s=NOW)
    del headers[missing]
    assert not verify(SECRET, headers, b"{}", now_s=NOW)


@pytest.mark.parametrize(
    "bad", [{"X-Recwatch-Timestamp": "soon"}, {"X-Recwatch-Signature": "sha1=00"}, {"X-Recwatch-Signature": ""}]
)
def test_verify_rejects_malformed_headers(bad: dict[str, str]) -> None:
    headers = {**signed_headers(SECRET, "d", b"{}", now_s=NOW), **bad}
    assert not verify(SECRET, headers, b"{}", now_s=NOW)


def test_receiver_repr_hides_the_secret() -> None:
    receiver = WebhookReceiver(name="pager", url="http://127.0.0.1:9/hook", secret=b"top-secret-value")
    assert "top-secret-value" not in repr(receiver)
    assert "pager" in repr(receiver)


def test_notification_id_is_stable_per_notification() -> None:
    alerts = [make_alert("f1", Alert.FIRING), make_alert("f2", Alert.FIRING)]
    same = outbox.notification_id("pager", "g", list(reversed(alerts)))
    assert outbox.notification_id("pager", "g", alerts) == same
    assert outbox.notification_id("slack", "g", alerts) != same
    assert outbox.notification_id("pager", "g", [make_alert("f1", Alert.RESOLVED), alerts[1]]) != same


def test_sql_string_escapes_quotes_and_backslashes() -> None:
    from store.sql import string_literal

    assert string_literal("it's a \\ path") == "'it\\'s a \\\\ path'"


def test_docstring_example_runs() -> None:
    result = doctest.testmod(webhook)
    assert result.attempted > 0
    assert result.failed == 0
