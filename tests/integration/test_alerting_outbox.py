"""Webhook deliveries persisted in the store survive a receiver outage and a sender restart, and arrive signed,
exactly once per notification, on chDB and on ClickHouse 18.16."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from alerting.outbox import DeliveryOutbox, WebhookReceiver, WebhookSender
from alerting.webhook import verify
from schemas import Alert
from store import Store, open_store
from tests.ports import free_ports

pytestmark = pytest.mark.integration

SECRET = b"receiver-shared-secret"
US = 1_000_000


class ManualClock:
    """Unix µs that move only when the test advances them."""

    def __init__(self) -> None:
        self.now_us = int(time.time()) * US  # recent, so the table's TTL keeps the rows

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * US)


class RecordingReceiver:
    """A webhook receiver on 127.0.0.1:``port`` that records every request and answers ``codes`` in turn,
    then 200. Not listening until ``start``."""

    def __init__(self, port: int, codes: tuple[int, ...] = ()) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks/recwatch"
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._codes = list(codes)
        self._lock = threading.Lock()
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.requests.append((self.path, dict(self.headers.items()), body))
                    code = receiver._codes.pop(0) if receiver._codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = HTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            assert not self._thread.is_alive()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    r = RecordingReceiver(free_ports(1))
    try:
        yield r
    finally:
        r.stop()


def alert(i: int, status: int, clock: ManualClock) -> Alert:
    return Alert(
        fingerprint=f"fp{i}",
        status=status,  # type: ignore[arg-type]
        severity="warning",
        labels={"alertname": "CtrDrop", "model": "ranker", "label": f"slice'{i}\\"},
        annotations={"summary": f"CTR dropped on slice {i}"},
        starts_at_us=clock.now_us - 300 * US,
        ends_at_us=clock.now_us if status == Alert.RESOLVED else 0,
        anomaly_ids=[f"an-{i}"],
    )


def sender_for(store: Store, receiver: RecordingReceiver, clock: ManualClock) -> WebhookSender:
    return WebhookSender(
        DeliveryOutbox(store),
        [WebhookReceiver("pager", receiver.url, SECRET, timeout_s=5.0)],
        clock=clock,
        backoff_initial_s=1.0,
        backoff_max_s=60.0,
        backoff_factor=2.0,
        seed=7,
    )


def test_receiver_down_for_a_minute_every_alert_arrives_afterwards_signed_exactly_once_per_group(
    migrated_store: Store, store_url: str, receiver: RecordingReceiver
) -> None:
    clock = ManualClock()
    sender = sender_for(migrated_store, receiver, clock)
    expected: dict[str, tuple[str, str]] = {}  # delivery id -> (group key, status)
    for i in range(5):
        firing = i % 2 == 0
        group_key = f'{{}}:{{alertname="CtrDrop", label="slice\'{i}"}}'
        (delivery_id,) = sender.notify(group_key, [alert(i, Alert.FIRING if firing else Alert.RESOLVED, clock)])
        expected[delivery_id] = (group_key, "firing" if firing else "resolved")
    assert len(expected) == 5

    # the receiver is down for 60 s: every attempt fails, on the backoff schedule
    start_us = clock.now_us
    attempts_seen = 0
    while clock.now_us - start_us <= 60 * US:
        report = sender.run_once()
        assert report.delivered == 0 and report.dead == 0
        attempts_seen += report.attempted
        for delivery_id in expected:
            d = sender.outbox.get(delivery_id)
            assert d is not None and d.state == "pending"
            if d.attempts:
                assert d.last_error.startswith("connection: ")
                base = min(60.0, 1.0 * 2.0 ** (d.attempts - 1))
                wait_s = (d.next_attempt_us - d.updated_us) / US
                assert base <= wait_s <= min(60.0, base * 1.1) + 1e-6, (d.attempts, wait_s)
        clock.advance(1)
    # waits of 1, 2, 4, 8, 16 s (+ <= 10 % jitter, 1 s steps) fit in a minute, the sixth (32 s) does not
    assert attempts_seen == 5 * 6
    assert sender.counters == {("pager", "connection"): 30}
    assert receiver.requests == []

    # a restarted sender (new connection, new outbox) finds the same pending deliveries with their backoff
    restarted_store = open_store(store_url)
    restarted_store.connect()
    try:
        restarted = sender_for(restarted_store, receiver, clock)
        pending = restarted.outbox.pending()
        assert {d.delivery_id for d in pending} == set(expected)
        assert restarted.outbox.pending_count() == 5
        assert all(d.attempts == 6 and d.state == "pending" for d in pending)
        assert restarted.run_once().attempted == 0  # not due before their backoff ends

        receiver.start()
        clock.now_us = max(d.next_attempt_us for d in pending)
        report = restarted.run_once()
        assert (report.attempted, report.delivered, report.failed, report.dead) == (5, 5, 0, 0)

        # every notification arrived exactly once, signed, as Alertmanager webhook JSON with its status
        arrived = {headers["X-Recwatch-Delivery"]: (path, headers, body) for path, headers, body in receiver.requests}
        assert len(receiver.requests) == 5
        assert set(arrived) == set(expected)
        for delivery_id, (path, headers, body) in arrived.items():
            assert path == "/hooks/recwatch"
            assert headers["Content-Type"] == "application/json"
            assert verify(SECRET, headers, body, now_s=clock.now_us / US)
            assert not verify(b"wrong", headers, body, now_s=clock.now_us / US)
            payload = json.loads(body)
            group_key, status = expected[delivery_id]
            assert payload["version"] == "4"
            assert payload["receiver"] == "pager"
            assert payload["groupKey"] == group_key
            assert payload["status"] == status
            assert [a["status"] for a in payload["alerts"]] == [status]
        assert sorted(json.loads(b)["groupKey"] for _, _, b in receiver.requests) == sorted(
            g for g, _ in expected.values()
        )

        # nothing more is sent, by this sender or the original one
        for _ in range(3):
            clock.advance(120)
            assert restarted.run_once().attempted == 0
            assert sender.run_once().attempted == 0
        assert len(receiver.requests) == 5
        assert restarted.outbox.pending_count() == 0
        for delivery_id in expected:
            d = restarted.outbox.get(delivery_id)
            assert d is not None and d.state == "delivered" and d.attempts == 7 and d.delivered_us > 0
        assert restarted.counters == {("pager", "delivered"): 5}
    finally:
        restarted_store.close()


def test_a_500_is_retried_and_a_groups_resolved_waits_for_its_firing(
    migrated_store: Store, receiver: RecordingReceiver
) -> None:
    receiver._codes = [500]
    receiver.start()
    clock = ManualClock()
    sender = sender_for(migrated_store, receiver, clock)
    (firing_id,) = sender.notify("g", [alert(1, Alert.FIRING, clock)], "firing")
    clock.advance(0.001)
    (resolved_id,) = sender.notify("g", [alert(1, Alert.RESOLVED, clock)], "resolved")

    report = sender.run_once()  # only the group's oldest delivery is due
    assert (report.attempted, report.failed) == (1, 1)
    firing = sender.outbox.get(firing_id)
    assert firing is not None and firing.state == "pending" and firing.attempts == 1
    assert firing.last_error == "http_500: HTTP 500"
    assert sender.counters == {("pager", "http_500"): 1}

    clock.advance(0.5)
    assert sender.run_once().attempted == 0  # backing off
    clock.advance(1.0)
    assert sender.run_once().delivered == 1
    assert sender.run_once().delivered == 1  # now the resolved one
    assert sender.run_once().attempted == 0

    ids = [h["X-Recwatch-Delivery"] for _, h, _ in receiver.requests]
    assert ids == [firing_id, firing_id, resolved_id]  # the retry carries the same id, the order holds
    assert [json.loads(b)["status"] for _, _, b in receiver.requests] == ["firing", "firing", "resolved"]
    assert all(verify(SECRET, h, b, now_s=clock.now_us / US) for _, h, b in receiver.requests)


def test_the_same_delivery_enqueued_twice_is_sent_once(migrated_store: Store, receiver: RecordingReceiver) -> None:
    receiver.start()
    clock = ManualClock()
    sender = sender_for(migrated_store, receiver, clock)
    outbox = sender.outbox
    first = outbox.enqueue("pager", "g1", "firing", {"n": 1}, now_us=clock(), delivery_id="notif-1")
    second = outbox.enqueue("pager", "g1", "firing", {"n": 2}, now_us=clock() + 1, delivery_id="notif-1")
    assert first == second == "notif-1"
    alerts = [alert(2, Alert.FIRING, clock)]
    assert sender.notify("g2", alerts) == sender.notify("g2", alerts)  # a re-run of a notification
    assert outbox.pending_count() == 2

    assert sender.run_once().delivered == 2
    clock.advance(60)
    assert sender.run_once().attempted == 0
    outbox.enqueue("pager", "g1", "firing", {"n": 3}, now_us=clock(), delivery_id="notif-1")  # after delivery
    assert sender.run_once().attempted == 0

    assert len(receiver.requests) == 2
    bodies = {h["X-Recwatch-Delivery"]: json.loads(b) for _, h, b in receiver.requests}
    assert bodies["notif-1"] == {"n": 1}  # the first enqueue's payload


def test_a_delivery_is_dead_only_after_max_age_or_410(migrated_store: Store, receiver: RecordingReceiver) -> None:
    clock = ManualClock()
    sender = sender_for(migrated_store, receiver, clock)
    sender.max_age_s = 600
    (down_id,) = sender.notify("g-down", [alert(3, Alert.FIRING, clock)])
    for _ in range(20):  # down for 10 minutes: retried, never more than 60 s apart, then given up
        sender.run_once()
        d = sender.outbox.get(down_id)
        assert d is not None
        if d.state == "dead":
            break
        assert d.next_attempt_us - clock.now_us <= 60 * US
        clock.now_us = d.next_attempt_us
    assert d is not None
    assert d.state == "dead" and d.last_error.startswith("connection: ")
    assert clock.now_us - d.created_us >= 600 * US
    assert sender.counters[("pager", "dead")] == 1

    receiver._codes = [410]
    receiver.start()
    (gone_id,) = sender.notify("g-gone", [alert(4, Alert.FIRING, clock)])
    assert sender.run_once().dead == 1
    gone = sender.outbox.get(gone_id)
    assert gone is not None and gone.state == "dead" and gone.attempts == 1
    assert sender.outbox.pending_count() == 0


def test_a_receiver_that_never_answers_is_a_timeout(migrated_store: Store) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        clock = ManualClock()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        sender = WebhookSender(
            DeliveryOutbox(migrated_store), [WebhookReceiver("slow", url, SECRET, timeout_s=0.3)], clock=clock
        )
        (delivery_id,) = sender.notify("g", [alert(5, Alert.FIRING, clock)])
        assert sender.run_once().failed == 1
    d = sender.outbox.get(delivery_id)
    assert d is not None and d.state == "pending" and d.last_error.startswith("timeout: ")
    assert sender.counters == {("slow", "timeout"): 1}
