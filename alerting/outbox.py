"""Webhook deliveries persisted in the store (``alert_deliveries``) until a receiver takes them.

Guarantees:

- A notification is written to the store (``enqueue``, state ``pending``) before any attempt to send it, so a
  receiver that is down, or a sender that restarts, loses nothing: a new :class:`WebhookSender` over the same
  store picks up the pending deliveries with their attempts and backoff.
- A delivery is marked ``delivered`` only after the receiver answered 2xx. A crash between that answer and the
  store write re-sends the same request with the same ``X-Recwatch-Delivery`` id: delivery is at least once,
  and exactly once for receivers that deduplicate on that header.
- Every failure (connection refused, timeout, 5xx, 4xx) is retried with exponential backoff and seeded jitter.
  A delivery is given up (``dead``) only when it is older than ``max_age_s`` (24 h by default) or after
  ``max_attempts`` if set, or at once on ``410 Gone``.
- Per receiver and group key, only the oldest pending delivery is due, so a group's "resolved" never overtakes
  its "firing".

Each state change is a new row with a larger ``updated_us`` (the table is a ``ReplacingMergeTree(updated_us)``);
reads take the latest row per delivery with ``argMax``. One sender per store: two senders would both send a
due delivery (receivers' dedup on the delivery id still holds).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from alerting.webhook import alert_status, encode_body, signed_headers, webhook_payload
from schemas import Alert
from store import Store
from store.sql import string_literal

__all__ = ["Delivery", "DeliveryOutbox", "SendReport", "WebhookReceiver", "WebhookSender"]

log = logging.getLogger(__name__)

TABLE = "alert_deliveries"
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
US = 1_000_000


@dataclass(frozen=True)
class Delivery:
    """The latest state of one notification to one receiver. Times are Unix µs; ``payload`` is the exact JSON
    body that is signed and sent."""

    delivery_id: str
    receiver: str
    group_key: str
    status: str  # "firing" | "resolved": the notification's status
    payload: str
    state: str  # "pending" | "delivered" | "dead"
    attempts: int
    next_attempt_us: int
    last_error: str
    created_us: int
    delivered_us: int
    updated_us: int = 0


_FIELDS = (
    ("group_key", "group_key"),
    ("status", "status"),
    ("payload", "payload"),
    ("state", "state"),
    ("attempts", "attempts"),
    ("next_attempt_us", "next_attempt_us"),
    ("last_error", "last_error"),
    ("created_us", "created_us"),
    ("delivered_us", "delivered_us"),
)

# The latest row of each delivery; aliases differ from the column names so old ClickHouse does not resolve
# a column inside argMax to the alias of the aggregate.
_LATEST = (
    "SELECT delivery_id AS d_id, receiver AS d_receiver, "
    + ", ".join(f"argMax({col}, updated_us) AS d_{name}" for col, name in _FIELDS)
    + ", max(updated_us) AS d_updated_us "
    + f"FROM {TABLE} {{where}} GROUP BY receiver, delivery_id"
)
_LATEST_COLUMNS = "d_id, d_receiver, " + ", ".join(f"d_{name}" for _, name in _FIELDS) + ", d_updated_us"
# Per receiver and group, the oldest pending delivery: the only one of the group that may be sent.
_HEADS = (
    "SELECT d_receiver, argMin(d_id, d_created_us) FROM ("
    f"SELECT receiver AS d_receiver, delivery_id AS d_id, argMax(group_key, updated_us) AS d_group_key, "
    f"argMax(state, updated_us) AS d_state, argMax(created_us, updated_us) AS d_created_us "
    f"FROM {TABLE} GROUP BY receiver, delivery_id"
    f") WHERE d_state = '{PENDING}' GROUP BY d_receiver, d_group_key"
)


def _row_to_delivery(row: Sequence[Any]) -> Delivery:
    (did, receiver, group_key, status, payload, state, attempts, nxt, err, created, delivered, updated) = row
    return Delivery(
        delivery_id=str(did),
        receiver=str(receiver),
        group_key=str(group_key),
        status=str(status),
        payload=str(payload),
        state=str(state),
        attempts=int(attempts),
        next_attempt_us=int(nxt),
        last_error=str(err),
        created_us=int(created),
        delivered_us=int(delivered),
        updated_us=int(updated),
    )


class DeliveryOutbox:
    """The queue of webhook deliveries in ``store``'s ``alert_deliveries`` table (migration 6). The store must
    be connected; the outbox itself keeps no state."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _write(self, d: Delivery) -> None:
        self.store.insert(
            TABLE,
            {
                "created_us": [d.created_us],
                "delivery_id": [d.delivery_id],
                "receiver": [d.receiver],
                "group_key": [d.group_key],
                "status": [d.status],
                "payload": [d.payload],
                "state": [d.state],
                "attempts": [d.attempts],
                "next_attempt_us": [d.next_attempt_us],
                "last_error": [d.last_error],
                "delivered_us": [d.delivered_us],
                "updated_us": [d.updated_us],
            },
        )

    def _latest(self, where: str = "", outer: str = "") -> list[Delivery]:
        sql = f"SELECT {_LATEST_COLUMNS} FROM ({_LATEST.format(where=where)}) {outer}"
        return [_row_to_delivery(r) for r in self.store.query(sql).rows]

    def enqueue(
        self,
        receiver: str,
        group_key: str,
        status: str,
        payload: Mapping[str, Any],
        *,
        now_us: int,
        delivery_id: str | None = None,
    ) -> str:
        """Persist a pending delivery, due at once; returns its id. With a ``delivery_id`` that is already in
        the outbox (whatever its state) nothing is written, so re-running a notification does not send it
        twice. Without one, a random id is drawn."""
        if delivery_id is None:
            delivery_id = random_delivery_id()
        elif self.get(delivery_id) is not None:
            return delivery_id
        self._write(
            Delivery(
                delivery_id=delivery_id,
                receiver=receiver,
                group_key=group_key,
                status=status,
                payload=encode_body(payload).decode(),
                state=PENDING,
                attempts=0,
                next_attempt_us=now_us,
                last_error="",
                created_us=now_us,
                delivered_us=0,
                updated_us=now_us,
            )
        )
        return delivery_id

    def get(self, delivery_id: str) -> Delivery | None:
        """The latest state of a delivery, or None."""
        found = self._latest(where=f"WHERE delivery_id = {string_literal(delivery_id)}")
        return found[0] if found else None

    def due(self, now_us: int, *, limit: int = 100) -> list[Delivery]:
        """Pending deliveries with ``next_attempt_us <= now_us``, oldest first; of each receiver's group only
        the oldest pending delivery (the next one waits until it is delivered or dead)."""
        outer = (
            f"WHERE d_state = '{PENDING}' AND d_next_attempt_us <= {int(now_us)} "
            f"AND (d_receiver, d_id) IN ({_HEADS}) "
            f"ORDER BY d_created_us, d_id LIMIT {int(limit)}"
        )
        return self._latest(outer=outer)

    def pending(self, *, limit: int = 1000) -> list[Delivery]:
        """All pending deliveries, due or not, oldest first."""
        return self._latest(outer=f"WHERE d_state = '{PENDING}' ORDER BY d_created_us, d_id LIMIT {int(limit)}")

    def pending_count(self) -> int:
        """How many deliveries wait to be sent."""
        sql = (
            f"SELECT count() FROM (SELECT argMax(state, updated_us) AS d_state FROM {TABLE} "
            f"GROUP BY receiver, delivery_id) WHERE d_state = '{PENDING}'"
        )
        return int(self.store.query(sql).scalar())

    @staticmethod
    def _next(d: Delivery, now_us: int, **changes: Any) -> Delivery:
        # strictly larger than the row it replaces, so the replacing row wins even at the same µs
        return replace(d, updated_us=max(now_us, d.updated_us + 1), **changes)

    def record_success(self, d: Delivery, now_us: int) -> Delivery:
        """The receiver answered 2xx: ``delivered`` (one more attempt)."""
        new = self._next(d, now_us, state=DELIVERED, attempts=d.attempts + 1, delivered_us=now_us, last_error="")
        self._write(new)
        return new

    def record_failure(self, d: Delivery, error: str, now_us: int, next_attempt_us: int) -> Delivery:
        """An attempt failed: still ``pending``, due again at ``next_attempt_us``."""
        new = self._next(d, now_us, attempts=d.attempts + 1, last_error=error[:1000], next_attempt_us=next_attempt_us)
        self._write(new)
        return new

    def record_dead(self, d: Delivery, error: str, now_us: int, *, attempted: bool = True) -> Delivery:
        """Give up on a delivery (too old, too many attempts, or the receiver is gone)."""
        new = self._next(d, now_us, state=DEAD, attempts=d.attempts + int(attempted), last_error=error[:1000])
        self._write(new)
        return new


def random_delivery_id() -> str:
    return hashlib.sha256(random.SystemRandom().randbytes(32)).hexdigest()[:32]


def notification_id(receiver: str, group_key: str, alerts: Sequence[Alert]) -> str:
    """A delivery id that is the same for the same notification (receiver, group, and each alert's
    fingerprint, status and times), so enqueueing it again is a no-op."""
    h = hashlib.sha256()
    for part in (receiver, group_key):
        h.update(part.encode() + b"\0")
    for a in sorted(alerts, key=lambda a: (a.fingerprint, a.starts_at_us)):
        h.update(f"{a.fingerprint}\0{alert_status(a)}\0{a.starts_at_us}\0{a.ends_at_us}\0".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class WebhookReceiver:
    """A webhook endpoint (``http://`` or ``https://``) and the secret its requests are signed with (kept out
    of ``repr``)."""

    name: str
    url: str
    secret: bytes = field(repr=False)
    timeout_s: float = 5.0


@dataclass(frozen=True)
class SendReport:
    """What one ``run_once`` did."""

    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0


class _AttemptError(Exception):
    """A failed POST: ``reason`` is the counter key (``connection``, ``timeout``, ``http_503``, …)."""

    def __init__(self, reason: str, detail: str, *, permanent: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.permanent = permanent


def _post(receiver: WebhookReceiver, body: bytes, headers: Mapping[str, str]) -> int:
    url = urllib.parse.urlsplit(receiver.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise _AttemptError("bad_url", f"not an http(s) URL: {receiver.url!r}", permanent=True)
    conn_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    conn = conn_type(url.hostname, url.port, timeout=receiver.timeout_s)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        response.read(64 * 1024)
        return response.status
    except TimeoutError as exc:
        raise _AttemptError("timeout", f"timed out after {receiver.timeout_s} s: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _AttemptError("connection", f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


class WebhookSender:
    """Builds notifications into the outbox and POSTs the due ones, signed, to their receivers.

    ``clock`` returns Unix µs (inject a manual clock in tests). After the n-th failed attempt a delivery is due
    again in ``min(backoff_max_s, backoff_initial_s * backoff_factor ** (n - 1)) * (1 + jitter * u)`` seconds,
    capped at ``backoff_max_s``, with ``u`` uniform in [0, 1) from ``random.Random(seed)``.
    """

    def __init__(
        self,
        outbox: DeliveryOutbox,
        receivers: Sequence[WebhookReceiver],
        *,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        backoff_factor: float = 2.0,
        jitter: float = 0.1,
        max_age_s: float = 86400.0,
        max_attempts: int | None = None,
        external_url: str = "",
        seed: int = 0,
        batch: int = 100,
    ) -> None:
        self.outbox = outbox
        self.receivers = {r.name: r for r in receivers}
        self.clock = clock
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.backoff_factor = backoff_factor
        self.jitter = jitter
        self.max_age_s = max_age_s
        self.max_attempts = max_attempts
        self.external_url = external_url
        self.batch = batch
        self._rng = random.Random(seed)
        self.counters: dict[tuple[str, str], int] = {}  # (receiver, outcome) -> count

    def backoff_us(self, attempts: int) -> int:
        """The wait after the ``attempts``-th failed attempt (1-based), µs."""
        base = min(self.backoff_max_s, self.backoff_initial_s * self.backoff_factor ** max(attempts - 1, 0))
        return int(min(self.backoff_max_s, base * (1 + self.jitter * self._rng.random())) * US)

    def notify(
        self,
        group_key: str,
        alerts: Sequence[Alert],
        status: str | None = None,
        *,
        group_labels: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Enqueue one notification of ``alerts`` per receiver; returns the delivery ids. The ids are derived
        from the notification, so calling again with the same alerts enqueues nothing new. ``status`` (firing
        or resolved), when given, must match the alerts' (firing if any fires)."""
        now = self.clock()
        ids = []
        for receiver in self.receivers.values():
            payload = webhook_payload(
                receiver.name, group_key, alerts, external_url=self.external_url, group_labels=group_labels
            )
            if status is not None and status != payload["status"]:
                raise ValueError(f"status {status!r} does not match the alerts' status {payload['status']!r}")
            ids.append(
                self.outbox.enqueue(
                    receiver.name,
                    group_key,
                    payload["status"],
                    payload,
                    now_us=now,
                    delivery_id=notification_id(receiver.name, group_key, alerts),
                )
            )
        return ids

    def _count(self, receiver: str, outcome: str) -> None:
        key = (receiver, outcome)
        self.counters[key] = self.counters.get(key, 0) + 1

    def _attempt(self, d: Delivery) -> None:
        receiver = self.receivers.get(d.receiver)
        if receiver is None:
            raise _AttemptError("unknown_receiver", f"no receiver named {d.receiver!r} is configured")
        body = d.payload.encode()
        headers = signed_headers(receiver.secret, d.delivery_id, body, self.clock() / US)
        status = _post(receiver, body, headers)
        if 200 <= status < 300:
            return
        raise _AttemptError(f"http_{status}", f"HTTP {status}", permanent=status == 410)

    def run_once(self) -> SendReport:
        """POST every due delivery once and record the outcome. Receiver errors are logged and counted, never
        raised (store errors are)."""
        attempted = delivered = failed = dead = 0
        for d in self.outbox.due(self.clock(), limit=self.batch):
            attempted += 1
            try:
                self._attempt(d)
            except _AttemptError as exc:
                now = self.clock()
                self._count(d.receiver, exc.reason)
                too_old = now - d.created_us >= self.max_age_s * US
                too_many = self.max_attempts is not None and d.attempts + 1 >= self.max_attempts
                if exc.permanent or too_old or too_many:
                    log.error("webhook %s: giving up on delivery %s: %s", d.receiver, d.delivery_id, exc)
                    self.outbox.record_dead(d, f"{exc.reason}: {exc}", now)
                    self._count(d.receiver, DEAD)
                    dead += 1
                else:
                    nxt = now + self.backoff_us(d.attempts + 1)
                    log.warning(
                        "webhook %s: delivery %s attempt %d failed (%s), next in %.1f s",
                        d.receiver,
                        d.delivery_id,
                        d.attempts + 1,
                        exc,
                        (nxt - now) / US,
                    )
                    self.outbox.record_failure(d, f"{exc.reason}: {exc}", now, nxt)
                    failed += 1
            else:
                self.outbox.record_success(d, self.clock())
                self._count(d.receiver, DELIVERED)
                delivered += 1
        return SendReport(attempted=attempted, delivered=delivered, failed=failed, dead=dead)

    def run_forever(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Call ``run_once`` every ``poll_s`` seconds until ``stop`` is set; store errors are logged and
        retried on the next poll."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("webhook sender: run failed; retrying in %.1f s", poll_s)
            stop.wait(poll_s)
