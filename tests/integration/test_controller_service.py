"""``recwatch controller`` over real Kafka and both stores: a deploy command becomes a canary in the server's
files, healthy live windows promote it, and a restarted controller does nothing twice."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest

from rollout.compare import ComparePolicy
from rollout.controller import RolloutPolicy
from rollout.service import ControllerService, KafkaTopic
from rollout.serving_files import FileServing
from schemas import ModelUpdate
from serving.config import parse_canary_weights, parse_model_server_config
from store import Store
from stream_processors.inference_sink import InferenceSink
from stream_processors.records import Message
from tests import window_aggregate_checks as checks

pytestmark = pytest.mark.integration

POLICY = RolloutPolicy(steps=(0.5,), healthy_windows_per_step=1, compare=ComparePolicy(min_requests=100))


def _service(store: Store, bootstrap: str, files: FileServing, topic: str) -> ControllerService:
    service = ControllerService(store, bootstrap, files, {"ranker": 1}, policy=POLICY, topic=topic, tick_s=0.1)
    service.start()
    return service


def _until(service: ControllerService, kind: int, seconds: float = 30.0) -> list[ModelUpdate]:
    published: list[ModelUpdate] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not any(u.kind == kind for u in published):
        published += service.tick()
    return published


def test_deploy_canary_promote_and_a_restart_that_changes_nothing(
    migrated_store: Store, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"test.model-updates.{uuid.uuid4().hex[:8]}"
    config, weights = tmp_path / "models.config", tmp_path / "weights.json"
    config.write_text(
        'model_config_list { config { name: "ranker" base_path: "/m/ranker" model_platform: "tensorflow" '
        'version_labels { key: "stable" value: 1 } } }\n'
    )
    files = FileServing(config, weights)
    base = checks.window_now()
    sender = KafkaTopic(kafka_bootstrap, topic)
    sender.start()
    deploy = ModelUpdate(
        update_id=uuid.uuid4().hex, ts_us=(base - 60) * 1_000_000, model="ranker",
        kind=ModelUpdate.DEPLOY_REQUESTED, version=2, reason="test", actor="person",
    )  # fmt: skip
    sender.publish(deploy)
    sender.close()

    service = _service(migrated_store, kafka_bootstrap, files, topic)
    try:
        [deployed] = _until(service, ModelUpdate.CANARY_DEPLOYED)
        assert deployed.caused_by == deploy.update_id and deployed.canary_weight == 0.5
        [ranker] = parse_model_server_config(config.read_text())
        assert dict(ranker.labels) == {"stable": 1, "canary": 2} and ranker.policy.versions == (1, 2)
        assert parse_canary_weights(weights.read_text()) == {"ranker": 0.5}

        rng = random.Random(1)  # one healthy minute: both arms alike
        events = [
            checks.event(
                i,
                (base + rng.randrange(60)) * 1_000_000,
                version=2 if i % 2 else 1,
                label="canary" if i % 2 else "stable",
                total_us=int(rng.lognormvariate(7.0, 0.3)),
            )
            for i in range(600)
        ]
        events.sort(key=lambda ev: ev.received_us)
        InferenceSink(migrated_store, topic=topic).write_batch(
            [Message(0, i, ev.SerializeToString()) for i, ev in enumerate(events)]
        )
        migrated_store.insert("metrics_emitted", {"stream": ["inference_10s"], "through": [base + 50], "at": [base]})
        promoted = _until(service, ModelUpdate.PROMOTED)
        assert [ModelUpdate.Kind.Name(u.kind) for u in promoted] == ["PROMOTED"]
    finally:
        service.close()
    [ranker] = parse_model_server_config(config.read_text())
    assert dict(ranker.labels) == {"stable": 2} and parse_canary_weights(weights.read_text()) == {"ranker": 0.0}

    restarted = _service(migrated_store, kafka_bootstrap, files, topic)
    try:
        before = config.read_text()
        assert restarted.tick() == [] and restarted.tick() == []
        assert config.read_text() == before
    finally:
        restarted.close()
    rows = migrated_store.query("SELECT action FROM deployments FINAL WHERE model = 'ranker' ORDER BY ts_us").rows
    assert [r[0] for r in rows] == ["canary_deployed", "promoted"]
