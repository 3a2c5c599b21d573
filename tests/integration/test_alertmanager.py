"""Debian's Prometheus Alertmanager from infra.alertmanager, driven through alerting.alertmanager's v2 client."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from alerting.alertmanager import AlertmanagerClient, AlertmanagerError, to_postable_alert
from infra import alertmanager
from schemas import Alert
from tests.ports import free_ports

pytestmark = pytest.mark.integration

T = TypeVar("T")
DEADLINE_S = 10.0


def _poll(probe: Callable[[], T | None], what: str, deadline_s: float = DEADLINE_S) -> T:
    """``probe()`` until it returns something other than None; fails after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"Alertmanager did not show {what} within {deadline_s:g}s")
        time.sleep(0.05)


def _alert(name: str, status: Alert.Status = Alert.FIRING, *, ends_at_us: int = 0) -> Alert:
    return Alert(
        fingerprint=f"fp-{name}",
        status=status,
        severity="critical",
        labels={"alertname": name, "model": "ranker", "version": "3", "label": "", "metric": "latency_p99_us"},
        annotations={"summary": "p99 latency 41 ms > 25 ms", "sql": "SELECT 1"},
        starts_at_us=int(time.time() * 1e6) - 60_000_000,
        ends_at_us=ends_at_us,
    )


def _listed(client: AlertmanagerClient, name: str) -> dict[str, Any] | None:
    found = client.alerts(filters=[f'alertname="{name}"'])
    return found[0] if found else None


def _listening_addresses(pid: int) -> set[str]:
    """``host:port`` of the TCP sockets ``pid`` listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                host_hex, port_hex = local.split(":")
                host = ".".join(str(int(host_hex[i : i + 2], 16)) for i in (6, 4, 2, 0)) if table == "tcp" else host_hex
                addresses.add(f"{host}:{int(port_hex, 16)}")
    return addresses


# ------------------------------------------------------------------------------------------------ infra


def test_start_is_idempotent_listens_on_loopback_only_and_stop_is_idempotent(tmp_path: Path) -> None:
    port = free_ports(1)
    server = alertmanager.start(tmp_path, port)
    try:
        assert server.url == f"http://127.0.0.1:{port}"
        assert server.version.startswith("0.25")
        assert server.pid is not None
        assert alertmanager.start(tmp_path, port) == server  # already running: the same process
        assert alertmanager.status(tmp_path) == server
        assert (tmp_path / "alertmanager" / "pid").read_text().split()[0] == str(server.pid)
        assert "Listening on" in (tmp_path / "alertmanager" / "alertmanager.log").read_text()
        assert AlertmanagerClient(server.url).ready()
        # no cluster gossip port (0.0.0.0:9094 by default), nothing on other interfaces
        assert _listening_addresses(server.pid) == {f"127.0.0.1:{port}"}
    finally:
        assert alertmanager.stop(tmp_path)
    assert not alertmanager.stop(tmp_path)
    assert alertmanager.status(tmp_path) is None
    assert not Path(f"/proc/{server.pid}").exists() or "Z" in Path(f"/proc/{server.pid}/stat").read_text()
    assert not AlertmanagerClient(server.url, timeout_s=1).ready()


# ----------------------------------------------------------------------------------------------- client


def test_a_firing_alert_is_listed_with_its_labels_and_annotations(alertmanager_url: str) -> None:
    client = AlertmanagerClient(alertmanager_url)
    name = f"LatencyHigh_{uuid.uuid4().hex[:8]}"
    alert = _alert(name)
    client.post_alerts([alert])

    listed = _poll(lambda: _listed(client, name), f"the firing alert {name}")
    # the empty "label" label is left out, severity joins the labels
    assert listed["labels"] == {
        "alertname": name,
        "model": "ranker",
        "version": "3",
        "metric": "latency_p99_us",
        "severity": "critical",
    }
    assert listed["annotations"] == {"summary": "p99 latency 41 ms > 25 ms", "sql": "SELECT 1"}
    assert listed["status"]["state"] in {"active", "unprocessed"}
    starts_at = to_postable_alert(alert)["startsAt"]
    assert listed["startsAt"][:23] == starts_at[:23]  # Alertmanager answers in ms (truncated)
    assert [r["name"] for r in listed["receivers"]] == ["recwatch-null"]


def test_a_resolved_alert_is_no_longer_active(alertmanager_url: str) -> None:
    client = AlertmanagerClient(alertmanager_url)
    name = f"ErrorRate_{uuid.uuid4().hex[:8]}"
    client.post_alerts([_alert(name)])
    _poll(lambda: _listed(client, name), f"the firing alert {name}")

    resolved = _alert(name, Alert.RESOLVED, ends_at_us=int(time.time() * 1e6) - 1_000_000)
    client.post_alerts([resolved])
    _poll(lambda: True if _listed(client, name) is None else None, f"{name} resolved")
    assert client.alerts(active=False, filters=[f'alertname="{name}"']) == []


def test_a_stopped_server_or_a_bad_url_raises_alertmanager_error(alertmanager_url: str) -> None:
    nobody = AlertmanagerClient(f"http://127.0.0.1:{free_ports(1)}", timeout_s=2)
    with pytest.raises(AlertmanagerError) as refused:
        nobody.post_alerts([_alert("Nobody")])
    assert refused.value.status is None and refused.value.retryable
    with pytest.raises(AlertmanagerError):
        nobody.alerts()
    assert not nobody.ready()

    with pytest.raises(AlertmanagerError) as not_found:
        AlertmanagerClient(alertmanager_url + "/no/such/prefix").alerts()
    assert not_found.value.status == 404 and not not_found.value.retryable

    with pytest.raises(AlertmanagerError) as not_a_url:
        AlertmanagerClient("not-a-url").post_alerts([_alert("NotAUrl")])
    assert not_a_url.value.status is None


def test_alerts_alertmanager_rejects_raise_with_status_and_body(alertmanager_url: str) -> None:
    bad = _alert("BadLabel")
    bad.labels["not a label name"] = "x"
    with pytest.raises(AlertmanagerError) as rejected:
        AlertmanagerClient(alertmanager_url).post_alerts([bad])
    assert rejected.value.status == 400 and not rejected.value.retryable
    assert "not a label name" in rejected.value.body


def test_alerts_that_break_the_contract_are_refused_before_sending() -> None:
    nameless = _alert("X")
    del nameless.labels["alertname"]
    with pytest.raises(ValueError, match="alertname"):
        to_postable_alert(nameless)
    with pytest.raises(ValueError, match="ends_at_us"):
        to_postable_alert(_alert("X", Alert.RESOLVED))
    firing = _alert("X")
    firing.starts_at_us = 1_714_564_800_000_250
    assert to_postable_alert(firing)["startsAt"] == "2024-05-01T12:00:00.000250Z"
    assert "endsAt" not in to_postable_alert(firing)


# ---------------------------------------------------------------------------------------------- webhook


class _Receiver(BaseHTTPRequestHandler):
    received: queue.Queue[tuple[str, dict[str, Any]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.put((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, queue.Queue[tuple[str, dict[str, Any]]]]]:
    received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/recwatch", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_alerts_reach_the_webhook_firing_then_resolved(
    tmp_path: Path, webhook: tuple[str, queue.Queue[tuple[str, dict[str, Any]]]]
) -> None:
    hook_url, received = webhook
    server = alertmanager.start(tmp_path, free_ports(1), webhook_url=hook_url)
    try:
        assert server.webhook_url == hook_url
        client = AlertmanagerClient(server.url)
        name = f"CtrDrop_{uuid.uuid4().hex[:8]}"
        client.post_alerts([_alert(name)])

        path, firing = received.get(timeout=DEADLINE_S)  # group_wait is 1 s
        assert path == "/hooks/recwatch"
        assert firing["version"] == "4"
        assert firing["status"] == "firing"
        assert firing["receiver"] == "recwatch-webhook"
        assert [a["labels"]["alertname"] for a in firing["alerts"]] == [name]
        assert firing["alerts"][0]["labels"]["severity"] == "critical"
        assert firing["alerts"][0]["annotations"]["summary"] == "p99 latency 41 ms > 25 ms"
        assert firing["groupLabels"] == {
            "alertname": name,
            "model": "ranker",
            "version": "3",
            "metric": "latency_p99_us",
        }

        client.post_alerts([_alert(name, Alert.RESOLVED, ends_at_us=int(time.time() * 1e6) - 1_000_000)])
        _, resolved = received.get(timeout=DEADLINE_S)  # the group's next flush, group_interval 5 s later
        assert resolved["status"] == "resolved"
        assert [a["status"] for a in resolved["alerts"]] == ["resolved"]
    finally:
        alertmanager.stop(tmp_path)
