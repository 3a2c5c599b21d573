"""``recwatch trainer``: the trainer (``rollout/trainer.py``) as a process, over Kafka, the store and the model
repository named by the TF Serving config file.

Reads ``recwatch.model-updates.v1`` from the beginning (its own consumer group, no commits: the topic *is* the
state) and every ``tick_s`` answers the retrain commands that no trainer decision names yet, one at a time; the
models, their ``base_path`` and stable version are re-read from the config file each time (the controller
rewrites the ``stable`` label on promotion). Its events are published with an idempotent producer and kept in
memory at once (read your writes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from rollout.service import KafkaTopic, run_ticks
from rollout.trainer import Fit, ModelDir, Trainer, TrainerPolicy, wall_clock_us
from schemas import ModelUpdate, topics
from store.base import Store
from training.from_store import MAX_ROWS, store_behaviors
from training.taobao import Behaviors

log = logging.getLogger(__name__)


class StoreBehaviors:
    """:class:`BehaviorSource` over the store's ``feedback_events`` (:func:`training.from_store.store_behaviors`)."""

    def __init__(self, store: Store, *, max_rows: int = MAX_ROWS) -> None:
        self.store = store
        self.max_rows = max_rows

    def behaviors(self, model: str, since_us: int, until_us: int, *, min_events: int) -> Behaviors:
        return store_behaviors(
            self.store, model, since_us, until_us, min_events=min_events, max_rows=self.max_rows
        ).behaviors


def model_dirs(model_config_file: Path) -> dict[str, ModelDir]:
    """The models of a TF Serving config file, with the version labelled ``stable`` (else the latest on disk)."""
    from serving.config import parse_model_server_config
    from serving.model_repository import list_versions

    out: dict[str, ModelDir] = {}
    for config in parse_model_server_config(model_config_file.read_text(), relative_to=model_config_file.parent):
        versions = list_versions(config.base_path)
        stable = config.labels.get("stable") or (versions[-1] if versions else 0)
        out[config.name] = ModelDir(config.name, config.base_path, int(stable))
    return out


class TrainerService:
    """``recwatch trainer``: reads ``recwatch.model-updates.v1`` from the beginning (the topic is the state),
    and every ``tick_s`` answers the retrain commands no decision names yet, one at a time."""

    def __init__(
        self,
        store: Store,
        bootstrap: str,
        model_config_file: Path,
        *,
        policy: TrainerPolicy | None = None,
        tick_s: float = 5.0,
        topic: str = topics.MODEL_UPDATES,
        clock: Callable[[], int] = wall_clock_us,
        fit: Fit | None = None,
    ) -> None:
        policy = policy or TrainerPolicy()
        self.topic = KafkaTopic(bootstrap, topic, reader="trainer")
        self.trainer = Trainer(
            self.topic,
            StoreBehaviors(store, max_rows=policy.max_rows),
            lambda: model_dirs(model_config_file),
            policy=policy,
            clock=clock,
            fit=fit,
        )
        self.tick_s = tick_s

    def start(self) -> None:
        self.topic.start()

    def tick(self) -> list[ModelUpdate]:
        while self.topic.poll(0.2):
            pass
        published: list[ModelUpdate] = []
        for model in self.topic.models():
            published += self.trainer.tick(model)
        return published

    def run(self, stop: threading.Event) -> None:
        run_ticks(self.tick, stop, self.tick_s, "trainer")

    def close(self) -> None:
        self.topic.close()
