"""The alerter's receivers: Prometheus Alertmanager (v2 API) and signed webhooks (``alerting.outbox``).

Both implement ``alerting.service.Notifier`` (``notify(alerts)``, called with each firing or resolved alert
once) and run a background loop started by :meth:`start` and stopped by :meth:`stop`:

- :class:`AlertmanagerNotifier` posts each alert at once and re-posts every alert still firing every
  ``refresh_s`` (60 s): Alertmanager resolves an alert by itself when a client stops re-sending it for its
  ``resolve_timeout`` (5 min by default), so a live alert must be repeated. A resolved alert is posted with its
  ``endsAt`` and forgotten. If Alertmanager is down, the next refresh posts again what is firing; a resolve
  that could not be posted is retried with the refreshes until it goes through.
- :class:`WebhookNotifier` enqueues one signed notification per alert state change in the store's outbox
  (group = the alert's fingerprint, so each receiver gets a group's firing and its resolved exactly once, in
  that order) and delivers the outbox every ``poll_s`` (1 s), retrying with backoff while a receiver is down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from alerting.alertmanager import AlertmanagerClient, AlertmanagerError
from alerting.outbox import WebhookSender
from schemas import Alert

log = logging.getLogger(__name__)

GROUP_LABELS = ("alertname", "model", "version", "label", "metric", "replica")  # as infra/alertmanager.py groups


class AlertmanagerNotifier:
    def __init__(self, client: AlertmanagerClient, *, refresh_s: float = 60.0) -> None:
        self.client = client
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._firing: dict[str, Alert] = {}  # fingerprint -> the alert as last sent
        self._unsent_resolves: dict[str, Alert] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def notify(self, alerts: Sequence[Alert]) -> None:
        with self._lock:
            for alert in alerts:
                if alert.status == Alert.RESOLVED:
                    self._firing.pop(alert.fingerprint, None)
                    self._unsent_resolves[alert.fingerprint] = alert
                else:
                    self._unsent_resolves.pop(alert.fingerprint, None)
                    self._firing[alert.fingerprint] = alert
        self.refresh(only=[a.fingerprint for a in alerts])

    def refresh(self, only: Sequence[str] | None = None) -> bool:
        """Post the firing alerts and the resolves not yet accepted (those in ``only``, or all); True if posted."""
        with self._lock:
            keep = set(only) if only is not None else None
            resolves = [a for f, a in self._unsent_resolves.items() if keep is None or f in keep]
            firing = [a for f, a in self._firing.items() if keep is None or f in keep]
        if not resolves and not firing:
            return True
        try:
            self.client.post_alerts([*firing, *resolves])
        except AlertmanagerError as exc:
            self.errors += 1
            log.warning("Alertmanager at %s: %s (the next refresh posts again)", self.client.url, exc)
            return False
        with self._lock:
            for alert in resolves:
                if self._unsent_resolves.get(alert.fingerprint) is alert:
                    del self._unsent_resolves[alert.fingerprint]
        return True

    def firing(self) -> list[Alert]:
        with self._lock:
            return list(self._firing.values())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alertmanager-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()


class WebhookNotifier:
    def __init__(self, sender: WebhookSender, *, poll_s: float = 1.0) -> None:
        self.sender = sender
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            group_labels = {k: alert.labels[k] for k in GROUP_LABELS if k in alert.labels}
            self.sender.notify(alert.fingerprint, [alert], group_labels=group_labels)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.sender.run_forever, args=(self._stop, self.poll_s), name="webhook-sender", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
