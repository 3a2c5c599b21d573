"""A client for Prometheus Alertmanager's v2 API (``/api/v2/alerts``), standard library only.

recwatch's ``Alert`` becomes a ``postableAlert``: its labels plus ``severity``, its annotations, ``startsAt``
from ``starts_at_us`` and, for a RESOLVED alert only, ``endsAt`` from ``ends_at_us``. A FIRING alert has no
``endsAt``: Alertmanager keeps it active for its ``resolve_timeout`` (5 min by default) after the last post,
so a sender re-posts firing alerts more often than that. Alertmanager names the alert by its label set; the
``fingerprint`` of recwatch's alert is not sent.

The client connects directly (``*_proxy`` variables are ignored) and never retries: every failure raises
``AlertmanagerError``, whose ``retryable`` says whether posting the same alerts again can succeed::

    client = AlertmanagerClient("http://127.0.0.1:19093")
    client.post_alerts([alert])
    [a["labels"]["alertname"] for a in client.alerts()]
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from schemas import Alert

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class AlertmanagerError(Exception):
    """Alertmanager did not accept a request: ``status`` is None when no HTTP answer came (refused, timeout)."""

    def __init__(self, message: str, *, url: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.body = body

    @property
    def retryable(self) -> bool:
        """True when the server was unreachable or failed (5xx); False when it rejected the request (4xx)."""
        return self.status is None or self.status >= 500


def _rfc3339(ts_us: int) -> str:
    """``ts_us`` (µs since the epoch) as RFC 3339 in UTC, e.g. ``2024-05-01T12:00:00.000250Z``."""
    return (_EPOCH + dt.timedelta(microseconds=ts_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_postable_alert(alert: Alert, generator_url: str | None = None) -> dict[str, Any]:
    """Alertmanager's ``postableAlert`` for ``alert``; ValueError if it breaks the ``Alert`` contract.

    Labels and annotations with empty values are left out (an empty label is an absent one to Alertmanager).
    """
    labels = {k: v for k, v in alert.labels.items() if v}
    if alert.severity:  # a severity label wins, as in alerting.webhook's payloads
        labels.setdefault("severity", alert.severity)
    for required in ("alertname", "severity"):
        if required not in labels:
            raise ValueError(f"alert {alert.fingerprint!r} has no {required} label")
    postable: dict[str, Any] = {
        "labels": labels,
        "annotations": {k: v for k, v in alert.annotations.items() if v},
    }
    if alert.starts_at_us:
        postable["startsAt"] = _rfc3339(alert.starts_at_us)
    if alert.status == Alert.RESOLVED:
        if not alert.ends_at_us:
            raise ValueError(f"resolved alert {alert.fingerprint!r} has no ends_at_us")
        postable["endsAt"] = _rfc3339(alert.ends_at_us)
    elif alert.status != Alert.FIRING:
        raise ValueError(f"alert {alert.fingerprint!r} is neither FIRING nor RESOLVED")
    if generator_url:
        postable["generatorURL"] = generator_url
    return postable


class AlertmanagerClient:
    """Posts and lists alerts on the Alertmanager at ``url`` (e.g. ``http://127.0.0.1:19093``).

    Construction does no I/O; each call is one HTTP request bounded by ``timeout_s``.
    """

    def __init__(self, url: str, timeout_s: float = 5.0, *, generator_url: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.generator_url = generator_url
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post_alerts(self, alerts: Sequence[Alert]) -> None:
        """Send ``alerts`` in one request; Alertmanager merges them with what it holds, by label set."""
        if not alerts:
            return
        body = [to_postable_alert(a, self.generator_url) for a in alerts]
        self._request("POST", "/api/v2/alerts", json.dumps(body).encode())

    def alerts(
        self,
        active: bool = True,
        *,
        silenced: bool = True,
        inhibited: bool = True,
        unprocessed: bool = True,
        filters: Sequence[str] = (),
        receiver: str | None = None,
    ) -> list[dict[str, Any]]:
        """``GettableAlert`` dicts (``labels``, ``annotations``, ``startsAt``, ``status.state``, …).

        Alertmanager never lists resolved alerts; ``active=False`` leaves out the active ones too.
        ``filters`` are matchers such as ``'alertname="LatencyHigh"'``.
        """
        query: list[tuple[str, str]] = [
            ("active", _bool(active)),
            ("silenced", _bool(silenced)),
            ("inhibited", _bool(inhibited)),
            ("unprocessed", _bool(unprocessed)),
            *(("filter", f) for f in filters),
        ]
        if receiver is not None:
            query.append(("receiver", receiver))
        answer = self._request("GET", "/api/v2/alerts?" + urllib.parse.urlencode(query))
        try:
            listed = json.loads(answer)
        except ValueError:
            raise AlertmanagerError(
                "Alertmanager answered GET /api/v2/alerts with invalid JSON", url=self.url, status=200, body=answer
            ) from None
        if not isinstance(listed, list):
            raise AlertmanagerError(
                "Alertmanager answered GET /api/v2/alerts with a non-list", url=self.url, status=200, body=answer
            )
        return listed

    def ready(self) -> bool:
        """True if ``GET /-/ready`` answers 200 (False on any error, never raises)."""
        try:
            self._request("GET", "/-/ready")
        except AlertmanagerError:
            return False
        return True

    def _request(self, method: str, path: str, data: bytes | None = None) -> str:
        url = self.url + path
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                return str(answer.read().decode("utf-8", errors="replace"))
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", errors="replace")
            raise AlertmanagerError(
                f"Alertmanager answered {method} {path} with {exc.code}: {body.strip()[:500]}",
                url=url,
                status=exc.code,
                body=body,
            ) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timeout, bad URL, not HTTP
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise AlertmanagerError(f"cannot reach Alertmanager at {url}: {reason}", url=url) from exc


def _bool(value: bool) -> str:
    return "true" if value else "false"
