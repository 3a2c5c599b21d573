"""The retrain rules in ``recwatch alerter`` over real Kafka and the embedded store: a sustained score drift on the
stable version becomes exactly one RETRAIN_REQUESTED on the model-updates topic (actor ``rules``, caused by the
alert), and a restarted alerter that sees the same alert again (restored from its checkpoint, and the same windows
re-delivered) publishes no second one."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from alerting.service import AlertService, RecordingNotifier
from infra import kafka
from rollout.retrain_trigger import RetrainTrigger
from rollout.service import KafkaTopic
from schemas import Alert, ModelUpdate, WindowAggregate
from store import Store

pytestmark = pytest.mark.integration

US = 1_000_000


@pytest.fixture
def topic_names(kafka_bootstrap: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = {kind: f"test.retrain.{kind}.{suffix}" for kind in ("metrics", "anomalies", "alerts", "updates")}
    kafka.ensure_topics(kafka_bootstrap, {**dict.fromkeys(names.values(), 1), names["updates"]: 3})
    return names


def _windows(start_s: int, means: list[float]) -> list[bytes]:
    rng = random.Random(4)
    out = []
    for i, mean in enumerate(means):
        requests = rng.randint(150, 250)
        out.append(
            WindowAggregate(
                window_start_us=(start_s + 10 * i) * US,
                window_end_us=(start_s + 10 * i + 10) * US,
                model="ranker",
                version=1,
                label="stable",
                requests=requests,
                throughput_rps=requests / 10,
                latency_p99_us=40_000 * (1 + rng.uniform(-0.1, 0.1)),
                score_mean=mean,
                score_histogram=[requests],
            ).SerializeToString()
        )
    return out


def _produce(bootstrap: str, topic: str, messages: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in messages:
        producer.produce(topic, value, b"ranker/1")
    assert producer.flush(30) == 0


def _commands(bootstrap: str, topic: str) -> list[ModelUpdate]:
    reader = KafkaTopic(bootstrap, topic)
    reader.start()
    try:
        reader.catch_up(30)  # every publish was acknowledged before this: the topic's end holds them all
        return [u for u in reader.updates("ranker") if u.kind == ModelUpdate.RETRAIN_REQUESTED]
    finally:
        reader.close()


@pytest.fixture
def services() -> Iterator[list[AlertService]]:
    started: list[AlertService] = []
    yield started
    for s in started:
        s.close()


@pytest.mark.parametrize("store_url", ["chdb"], indirect=True)
def test_a_sustained_drift_alert_publishes_one_retrain_command_also_across_a_restart(
    kafka_bootstrap: str, migrated_store: Store, topic_names: dict[str, str], services: list[AlertService]
) -> None:
    group = f"alerter-{uuid.uuid4().hex[:8]}"
    start_s = int(time.time()) // 10 * 10 - 600  # windows of 10 min ago: the drift has lasted > 60 s by now

    def new_service() -> AlertService:
        trigger = RetrainTrigger(KafkaTopic(kafka_bootstrap, topic_names["updates"]), min_firing_s=60)
        svc = AlertService(
            migrated_store, kafka_bootstrap, notifiers=[RecordingNotifier()], group_id=group,
            metrics_topic=topic_names["metrics"], anomalies_topic=topic_names["anomalies"],
            alerts_topic=topic_names["alerts"], watchers=[trigger],
        )  # fmt: skip
        services.append(svc)
        svc.start()
        return svc

    rng = random.Random(2)
    means = [0.195 + rng.uniform(-0.004, 0.004) for _ in range(20)] + [0.32] * 10  # drift from window 20 on
    payloads = _windows(start_s, means)
    svc = new_service()
    _produce(kafka_bootstrap, topic_names["metrics"], payloads)
    deadline = time.monotonic() + 60
    while svc.stats.windows < len(payloads) and time.monotonic() < deadline:
        svc.poll_once(0.5)
    [trigger] = svc.watchers
    assert isinstance(trigger, RetrainTrigger)
    [cmd] = trigger.published
    [open_alert] = svc.rules.open.values()
    assert open_alert.alert.labels["alertname"] == "RecwatchScoreMeanDrift"
    assert open_alert.alert.status == Alert.FIRING
    assert (cmd.model, cmd.parent_version, cmd.actor, cmd.caused_by) == (
        "ranker",
        1,
        "rules",
        open_alert.alert.fingerprint,
    )
    for _ in range(3):
        svc.poll_once(0.2)  # the alert is still open: no second command
    svc.close()

    restarted = new_service()  # restores the open alert from its checkpoint, rebuilds the rules from the topic
    assert list(restarted.rules.open) == [open_alert.alert.fingerprint]
    _produce(kafka_bootstrap, topic_names["metrics"], payloads[-5:])  # re-delivered windows
    for _ in range(5):
        restarted.poll_once(0.5)
    [trigger2] = restarted.watchers
    assert isinstance(trigger2, RetrainTrigger) and trigger2.published == []

    [on_topic] = _commands(kafka_bootstrap, topic_names["updates"])
    assert on_topic == cmd
