"""The alerter against the real Kafka broker and both stores: a latency spike becomes one anomaly and one alert
(stored, published, notified once), clean windows resolve it, and a restarted alerter that is sent the same
windows again adds nothing (checkpointed detectors and rules, windows deduplicated by start)."""

from __future__ import annotations

import copy
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest
from confluent_kafka import Consumer, Producer

from alerting.service import AlertService, RecordingNotifier
from infra import kafka
from schemas import Alert, Anomaly, WindowAggregate
from store import Store, StoreUnavailableError

pytestmark = pytest.mark.integration

US = 1_000_000
SERIES = "ranker/1/stable/latency_p99_us"


@pytest.fixture
def topic_names(kafka_bootstrap: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = {kind: f"test.alerter.{kind}.{suffix}" for kind in ("metrics", "anomalies", "alerts")}
    kafka.ensure_topics(kafka_bootstrap, dict.fromkeys(names.values(), 1))
    return names


def _windows(start_s: int, p99s: list[float]) -> list[WindowAggregate]:
    rng = random.Random(5)
    out = []
    for i, p99 in enumerate(p99s):
        requests = rng.randint(150, 250)
        out.append(
            WindowAggregate(
                window_start_us=(start_s + 10 * i) * US,
                window_end_us=(start_s + 10 * i + 10) * US,
                model="ranker",
                version=1,
                label="stable",
                replica="",
                requests=requests,
                errors=rng.randint(0, 2),
                throughput_rps=requests / 10,
                latency_p99_us=p99,
            )
        )
        if i == 0:  # a per-replica row: not a monitored series
            out.append(WindowAggregate(window_start_us=start_s * US, model="ranker", version=1, replica="r1"))
    return out


def _produce(bootstrap: str, topic: str, messages: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in messages:
        producer.produce(topic, value, b"ranker/1")
    assert producer.flush(30) == 0


def _poll_until(service: AlertService, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"alerter did not get there: {service.stats}"
        service.poll_once(0.5)


def _read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    found: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(found) < expected:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                found.append(bytes(msg.value() or b""))
        end = time.monotonic() + 2  # more than expected would be a duplicate: look a little longer
        while time.monotonic() < end:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                found.append(bytes(msg.value() or b""))
    finally:
        consumer.close()
    return found


@pytest.fixture
def services() -> Iterator[list[AlertService]]:
    started: list[AlertService] = []
    yield started
    for s in started:
        s.close()


def test_spike_fires_one_alert_resolves_and_a_restart_deduplicates(
    kafka_bootstrap: str, migrated_store: Store, topic_names: dict[str, str], services: list[AlertService]
) -> None:
    store = migrated_store
    group = f"alerter-{uuid.uuid4().hex[:8]}"

    def new_service(notifier: RecordingNotifier) -> AlertService:
        svc = AlertService(
            store,
            kafka_bootstrap,
            notifiers=[notifier],
            group_id=group,
            metrics_topic=topic_names["metrics"],
            anomalies_topic=topic_names["anomalies"],
            alerts_topic=topic_names["alerts"],
        )
        services.append(svc)
        svc.start()
        return svc

    rng = random.Random(9)
    p99s = [40_000 * (1 + rng.uniform(-0.15, 0.15)) for _ in range(20)] + [250_000.0]  # 20 clean, then ~x6
    p99s += [40_000 * (1 + rng.uniform(-0.15, 0.15)) for _ in range(4)]  # recovery
    start_s = int(time.time()) // 10 * 10 - 600
    windows = _windows(start_s, p99s)
    payloads = [w.SerializeToString() for w in windows]
    spike_at = 21  # the per-replica row comes second

    notifier = RecordingNotifier()
    svc = new_service(notifier)
    _produce(kafka_bootstrap, topic_names["metrics"], [*payloads[: spike_at + 1], b"\xff not a protobuf"])
    _poll_until(svc, lambda: svc.stats.windows + svc.stats.bad_messages >= spike_at + 2)
    assert svc.stats.bad_messages == 1

    assert store.query("SELECT metric, model, version, label, replica FROM anomalies").rows == [
        ("latency_p99_us", "ranker", 1, "stable", "")
    ]
    rows = store.query("SELECT status, severity, alertname, metric, anomaly_ids, ends_at_us FROM alerts FINAL").rows
    assert rows == [("FIRING", "critical", "RecwatchLatencyP99High", "latency_p99_us", [rows[0][4][0]], 0)]
    assert [a.status for a in notifier.alerts] == [Alert.FIRING] and len(notifier.calls) == 1
    fired = notifier.alerts[0]
    assert fired.starts_at_us == windows[spike_at].window_start_us
    # the annotation's SQL runs as is on this store
    store.query(fired.annotations["sql"])

    _produce(kafka_bootstrap, topic_names["metrics"], payloads[spike_at + 1 :])
    _poll_until(svc, lambda: svc.stats.windows >= len(windows))
    rows = store.query("SELECT status, ends_at_us FROM alerts FINAL").rows
    assert rows == [("RESOLVED", windows[spike_at + 1].window_start_us)]
    assert [a.status for a in notifier.alerts] == [Alert.FIRING, Alert.RESOLVED]

    alerts_on_topic = [Alert.FromString(v) for v in _read_all(kafka_bootstrap, topic_names["alerts"], 2)]
    assert [(a.fingerprint, a.status) for a in alerts_on_topic] == [
        (fired.fingerprint, Alert.FIRING),
        (fired.fingerprint, Alert.RESOLVED),
    ]
    anomalies_on_topic = [Anomaly.FromString(v) for v in _read_all(kafka_bootstrap, topic_names["anomalies"], 1)]
    assert [a.ts_us for a in anomalies_on_topic] == [windows[spike_at].window_start_us]

    # restart: a new instance of the same group restores the detectors and rules from the store ...
    before = copy.deepcopy(svc.monitor.detectors[SERIES])
    svc.close()
    notifier2 = RecordingNotifier()
    svc2 = new_service(notifier2)
    restored = svc2.monitor.detectors[SERIES]
    assert restored.n == before.n and list(restored.normal) == list(before.normal)
    assert copy.deepcopy(restored).update(0.0, 41_000.0) == copy.deepcopy(before).update(0.0, 41_000.0)
    assert not svc2.rules.open

    # ... and the same windows delivered again (the emitter's at-least-once replay) add nothing
    _produce(kafka_bootstrap, topic_names["metrics"], payloads)
    _poll_until(svc2, lambda: svc2.stats.windows >= len(windows))
    assert store.query("SELECT count() FROM anomalies").scalar() == 1
    assert store.query("SELECT count() FROM alerts FINAL").scalar() == 1
    assert notifier2.calls == []
    assert restored.n == before.n  # replayed windows were not scored
    assert len(_read_all(kafka_bootstrap, topic_names["alerts"], 2)) == 2


def test_closed_business_minutes_are_polled_and_a_halved_ctr_alerts(
    kafka_bootstrap: str, migrated_store: Store, topic_names: dict[str, str], services: list[AlertService]
) -> None:
    store = migrated_store
    rng = random.Random(3)
    base_s = (int(time.time()) // 60 - 40) * 60
    columns: dict[str, list[object]] = {
        "window_start": [], "model": [], "version": [], "label": [], "kafka_partition": [],
        "impressions": [], "clicked_impressions": [], "bought_impressions": [],
        "last_inference_offset": [], "last_feedback_offset": [], "progress": [],
    }  # fmt: skip
    for m in range(30):
        impressions = rng.randint(2500, 3500)
        ctr = 0.05 if m < 25 else 0.025  # halved from minute 25 on
        clicked = sum(rng.random() < ctr for _ in range(impressions))
        bought = sum(rng.random() < 0.01 for _ in range(impressions))  # conversion unchanged
        row = (base_s + 60 * m, "ranker", 1, "stable", 0, impressions, clicked, bought, m, m, 2 * m + 2)
        for name, value in zip(columns, row, strict=True):
            columns[name].append(value)
    store.insert("business_metrics_1m_parts", columns)

    now = float(base_s + 30 * 60 + 180)  # every minute above ended at least 2 min ago
    notifier = RecordingNotifier()
    svc = AlertService(
        store,
        kafka_bootstrap,
        notifiers=[notifier],
        group_id=f"alerter-{uuid.uuid4().hex[:8]}",
        clock=lambda: now,
        metrics_topic=topic_names["metrics"],
        anomalies_topic=topic_names["anomalies"],
        alerts_topic=topic_names["alerts"],
    )
    services.append(svc)
    svc.start()
    svc.poll_once(0.1)
    assert svc.stats.business_rows == 29  # the lookback (30 min) starts after minute 0
    first = store.query("SELECT min(ts_us) FROM anomalies WHERE metric = 'ctr'").scalar()
    assert base_s + 25 * 60 <= first // US <= base_s + 27 * 60  # flagged within 3 windows
    assert [(a.labels["alertname"], a.status) for a in notifier.alerts] == [("RecwatchCtrLow", Alert.FIRING)]
    assert store.query(notifier.alerts[0].annotations["sql"]).rows  # the annotation's SQL shows the minutes
    svc.poll_once(0.1)  # not due again (same clock): nothing re-read
    assert svc.stats.business_rows == 29


def test_the_documented_queries_run(migrated_store: Store) -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "detection.md").read_text()
    queries = [block.split("```", 1)[0] for block in doc.split("```sql\n")[1:]]
    assert len(queries) == 3
    for sql in queries:
        migrated_store.query(sql.strip())


class FailingOutbox(RecordingNotifier):
    """An outbox whose store write fails the first ``failures`` times (the store restarting)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def notify(self, alerts: Sequence[Alert]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailableError("outbox: the store did not answer")
        super().notify(alerts)


@pytest.mark.parametrize("store_url", ["chdb"], indirect=True)
def test_an_alert_whose_outbox_write_fails_is_not_lost(
    kafka_bootstrap: str, migrated_store: Store, topic_names: dict[str, str]
) -> None:
    """The poll fails and is not checkpointed: the alerter goes back to its last checkpoint, reads the windows
    again, and the alert reaches the outbox once the store answers (the process keeps running)."""
    outbox = FailingOutbox(failures=2)
    svc = AlertService(
        migrated_store,
        kafka_bootstrap,
        notifiers=[outbox],
        group_id=f"alerter-{uuid.uuid4().hex[:8]}",
        metrics_topic=topic_names["metrics"],
        anomalies_topic=topic_names["anomalies"],
        alerts_topic=topic_names["alerts"],
    )
    rng = random.Random(9)
    p99s = [40_000 * (1 + rng.uniform(-0.15, 0.15)) for _ in range(20)] + [250_000.0]
    start_s = int(time.time()) // 10 * 10 - 600
    _produce(kafka_bootstrap, topic_names["metrics"], [w.SerializeToString() for w in _windows(start_s, p99s)])
    stop = threading.Event()
    runner = threading.Thread(target=svc.run, args=(stop, 0.5), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 90
        while not outbox.alerts and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(timeout=60)
    assert [a.status for a in outbox.alerts] == [Alert.FIRING]
    assert svc.stats.store_errors == 2 and outbox.failures == 0
    rows = migrated_store.query("SELECT status, alertname FROM alerts FINAL").rows
    assert rows == [("FIRING", "RecwatchLatencyP99High")]
    assert migrated_store.query("SELECT count() FROM anomalies FINAL").scalar() == 1
