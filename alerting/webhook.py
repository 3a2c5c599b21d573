"""Alertmanager's webhook JSON for plain webhooks, signed with HMAC-SHA256.

The body is the compact JSON of :func:`webhook_payload` (sorted keys, UTF-8). Three headers go with it:

- ``X-Recwatch-Delivery``: the delivery's id; a retried notification carries the same id, so receivers
  deduplicate on it (delivery is at least once, see ``alerting/outbox.py``).
- ``X-Recwatch-Timestamp``: Unix seconds when the request was signed.
- ``X-Recwatch-Signature``: ``sha256=`` + hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body``
  under the receiver's shared secret. The timestamp is signed too, so an old request cannot be replayed
  with a fresh timestamp.

A receiver checks a request like this (headers are matched case-insensitively):

>>> secret = b"s3cret"
>>> body = b'{"status":"firing","version":"4"}'
>>> headers = signed_headers(secret, "d-1", body, now_s=1_700_000_000)
>>> headers["X-Recwatch-Signature"]
'sha256=e412541e785dcc8a9621eda217753967962c0835714abd3bc2837e9828198f59'
>>> verify(secret, {k.lower(): v for k, v in headers.items()}, body, now_s=1_700_000_010)
True
>>> verify(secret, headers, body.replace(b"firing", b"resolved"), now_s=1_700_000_010)
False
>>> verify(secret, headers, body, now_s=1_700_000_000 + 3600)  # a replay an hour later
False
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import Alert

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "encode_body",
    "sign",
    "signed_headers",
    "verify",
    "webhook_payload",
]

DELIVERY_HEADER = "X-Recwatch-Delivery"
TIMESTAMP_HEADER = "X-Recwatch-Timestamp"
SIGNATURE_HEADER = "X-Recwatch-Signature"

# Alertmanager sends Go's zero time as endsAt of an alert that is still firing.
ZERO_TIME = "0001-01-01T00:00:00Z"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339(us: int) -> str:
    """Unix µs as RFC 3339 UTC (``2024-05-01T12:00:00Z``, ``…:00.250000Z`` with a fraction); 0 is Go's zero
    time, as Alertmanager writes an unset time."""
    if us <= 0:
        return ZERO_TIME
    t = _EPOCH + timedelta(microseconds=us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if t.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def alert_status(alert: Alert) -> str:
    """``"resolved"`` for a RESOLVED alert, else ``"firing"``."""
    return "resolved" if alert.status == Alert.RESOLVED else "firing"


def _alert_labels(alert: Alert) -> dict[str, str]:
    labels = dict(alert.labels)
    # receivers route on labels; Alertmanager alerts carry severity as one
    if alert.severity and "severity" not in labels:
        labels["severity"] = alert.severity
    return labels


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def webhook_payload(
    receiver: str,
    group_key: str,
    alerts: Sequence[Alert],
    *,
    external_url: str = "",
    group_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One notification in Alertmanager's webhook format (version 4).

    ``status`` is ``"firing"`` if any alert fires, else ``"resolved"``; ``commonLabels`` and
    ``commonAnnotations`` hold the pairs every alert shares. An alert's ``severity`` joins its labels when they
    lack one; ``generatorURL`` is its ``generator_url`` annotation (empty without). ``groupLabels`` default to
    none.
    """
    labels = [_alert_labels(a) for a in alerts]
    annotations = [dict(a.annotations) for a in alerts]
    entries = [
        {
            "status": alert_status(a),
            "labels": lab,
            "annotations": ann,
            "startsAt": rfc3339(a.starts_at_us),
            "endsAt": rfc3339(a.ends_at_us) if a.status == Alert.RESOLVED else ZERO_TIME,
            "generatorURL": ann.get("generator_url", ""),
            "fingerprint": a.fingerprint,
        }
        for a, lab, ann in zip(alerts, labels, annotations, strict=True)
    ]
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing" if any(e["status"] == "firing" for e in entries) else "resolved",
        "receiver": receiver,
        "groupLabels": dict(group_labels or {}),
        "commonLabels": _common(labels),
        "commonAnnotations": _common(annotations),
        "externalURL": external_url,
        "alerts": entries,
    }


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The bytes that are sent and signed: compact JSON with sorted keys, UTF-8."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 under ``secret`` of ``f"{timestamp}.".encode() + body``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: bytes, delivery_id: str, body: bytes, now_s: float) -> dict[str, str]:
    """The three ``X-Recwatch-*`` headers for sending ``body`` at ``now_s`` (Unix seconds)."""
    ts = int(now_s)
    return {
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, ts, body),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, *, now_s: float, tolerance_s: float = 300) -> bool:
    """True if ``headers`` carry a delivery id and a signature of ``body`` under ``secret`` made within
    ``tolerance_s`` seconds of ``now_s``. Missing or malformed headers, a stale or future timestamp, another
    secret or a changed body give False. The comparison takes constant time."""
    delivery = _header(headers, DELIVERY_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if not delivery or timestamp is None or signature is None:
        return False
    try:
        ts = int(timestamp.strip())
    except ValueError:
        return False
    if abs(now_s - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body).encode(), signature.strip().encode())
