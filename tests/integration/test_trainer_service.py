"""``recwatch trainer`` over real Kafka and the embedded store: feedback rows in the store and a retrain command
on the topic become a trained, evaluated version in the model repository and a deploy command for the rollout
controller; a restarted trainer does nothing twice."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from rollout.service import KafkaTopic
from rollout.trainer import TrainerPolicy
from rollout.trainer_service import TrainerService
from schemas import ModelUpdate
from serving.model_repository import list_versions
from store import Store
from tests.unit.test_trainer import START_S, scrambled, shop_log
from training.from_store import store_behaviors
from training.retrain import HoldoutSplit, fit_candidate

pytestmark = pytest.mark.integration

S = 1_000_000
POLICY = TrainerPolicy(window_s=2 * 86_400, min_events=500, epochs=2)


def _write_feedback(store: Store, now_s: int) -> int:
    """The unit tests' shop log over the day before ``now_s``: one prediction of ``ranker`` per feedback event,
    plus feedback on another model's predictions that the trainer must leave out."""
    log = shop_log()
    ts_us = (log.timestamp - START_S + now_s - 86_400) * S
    n = len(log)
    rids = [f"r{i}" for i in range(n)]
    store.insert(
        "inference_events",
        {
            "received_us": (ts_us - S).tolist(),
            "event_id": [f"e{i}" for i in range(n)],
            "request_id": rids,
            "model": ["ranker"] * n,
            "version": [1] * n,
            "label": ["stable"] * n,
        },
    )
    behaviors = np.array(["click", "cart", "fav", "buy"])[np.minimum(log.behavior - 2, 3)]
    store.insert(
        "feedback_events",
        {
            "ts_us": [*ts_us.tolist(), *ts_us[:300].tolist()],
            "event_id": [f"f{i}" for i in range(n + 300)],
            "request_id": [*rids, *(f"other-{i}" for i in range(300))],  # not ranker's predictions
            "user_id": [str(u) for u in [*log.user.tolist(), *log.user[:300].tolist()]],
            "item_id": [str(i) for i in [*log.item.tolist(), *(np.full(300, 999_999)).tolist()]],
            "category_id": [str(c) for c in [*log.category.tolist(), *log.category[:300].tolist()]],
            "behavior": [*behaviors.tolist(), *["click"] * 300],
        },
    )
    return n


def _until_decided(service: TrainerService, seconds: float = 60.0) -> list[ModelUpdate]:
    published: list[ModelUpdate] = []
    deadline = time.monotonic() + seconds
    decisions = (ModelUpdate.DEPLOY_REQUESTED, ModelUpdate.REJECTED)
    while time.monotonic() < deadline and not any(u.kind in decisions for u in published):
        published += service.tick()  # polls Kafka (bounded waits); trains when the command has arrived
    return published


@pytest.mark.parametrize("store_url", ["chdb"], indirect=True)
def test_retrain_command_to_a_published_version_and_a_restart_that_changes_nothing(
    migrated_store: Store, kafka_bootstrap: str, tmp_path: Path
) -> None:
    now_s = int(time.time()) // 60 * 60  # the data must be inside the tables' TTL; the trainer's clock is fixed
    events = _write_feedback(migrated_store, now_s)
    base = tmp_path / "models" / "ranker"
    split = HoldoutSplit.build(shop_log())
    fit_candidate("ctr", scrambled(split.train), base / "1", lambda *_: None, epochs=2)  # a stable that has drifted
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "ranker" base_path: "{base}" model_platform: "tensorflow" '
        'version_labels { key: "stable" value: 1 } } }\n'
    )
    topic = f"test.model-updates.{uuid.uuid4().hex[:8]}"
    sender = KafkaTopic(kafka_bootstrap, topic)
    sender.start()
    command = ModelUpdate(
        update_id=uuid.uuid4().hex, ts_us=now_s * S, model="ranker", kind=ModelUpdate.RETRAIN_REQUESTED,
        parent_version=1, reason="RecwatchCtrLow", actor="rules", caused_by="alert-1",
    )  # fmt: skip
    sender.publish(command)
    sender.close()

    def service() -> TrainerService:
        s = TrainerService(migrated_store, kafka_bootstrap, config, policy=POLICY, topic=topic, clock=lambda: now_s * S)
        s.start()
        return s

    trainer = service()
    try:
        published = _until_decided(trainer)
    finally:
        trainer.close()

    assert [ModelUpdate.Kind.Name(u.kind) for u in published] == [
        "TRAINING_STARTED", "TRAINING_PROGRESS", "TRAINING_PROGRESS", "TRAINING_FINISHED", "EVALUATED",
        "DEPLOY_REQUESTED",
    ]  # fmt: skip
    started, evaluated, deploy = published[0], published[-2], published[-1]
    assert started.metrics["train_events"] + started.metrics["holdout_events"] == events  # only ranker's feedback
    assert evaluated.metrics["auc"] > evaluated.metrics["stable_auc"]
    assert (deploy.version, deploy.parent_version, deploy.actor) == (2, 1, "trainer")
    assert deploy.caused_by == command.update_id
    assert list_versions(base) == [1, 2] and sorted(p.name for p in base.iterdir()) == ["1", "2"]

    restarted = service()
    try:
        deadline = time.monotonic() + 30
        while len(restarted.topic.updates("ranker")) < 1 + len(published) and time.monotonic() < deadline:
            restarted.topic.poll(0.5)  # read the whole topic back (the assignment takes a moment)
        assert restarted.tick() == [] and restarted.tick() == []
        kinds = [u.kind for u in restarted.topic.updates("ranker")]
    finally:
        restarted.close()
    assert kinds.count(ModelUpdate.DEPLOY_REQUESTED) == 1 and list_versions(base) == [1, 2]


def test_the_training_log_query_runs_on_both_stores(migrated_store: Store) -> None:
    """The same SQL on chDB and on ClickHouse 18.16: only the model's interactions of the period, deduplicated."""
    now_s = int(time.time()) // 60 * 60
    events = _write_feedback(migrated_store, now_s)
    migrated_store.insert(
        "feedback_events",
        {"ts_us": [(now_s - 10) * S], "event_id": ["f0"], "request_id": ["r0"], "user_id": ["1"],
         "item_id": ["1"], "category_id": ["1"], "behavior": ["click"]},
    )  # fmt: skip  # event f0 again

    got = store_behaviors(migrated_store, "ranker", (now_s - 86_400) * S, now_s * S, min_events=events)

    assert len(got.behaviors) == events and got.skipped == 0
    assert got.behaviors.timestamp.min() >= now_s - 86_400 and got.behaviors.timestamp.max() < now_s
