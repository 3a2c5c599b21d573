"""``recwatch controller``: the rollout controller as a process, over Kafka, the store and the server's files.

Reads ``recwatch.model-updates.v1`` from the beginning (its own consumer group, no commits: the topic *is* the
state), and every ``tick_s`` runs each model's :class:`rollout.reconcile.Reconciler` with the commands no event
answers yet. Its own events are published with an idempotent producer and kept in memory at once (read your
writes). Killed at any moment and started again, it rebuilds the same state from the topic and the stored
windows and sets the serving files to match (see ``rollout/reconcile.py``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rollout.controller import RolloutController, RolloutPolicy
from rollout.live import StoreWindows
from rollout.reconcile import Reconciler
from rollout.serving_files import FileServing
from rollout.store import StoreDeployments
from schemas import ModelUpdate, topics
from store.base import Store

log = logging.getLogger(__name__)


class KafkaTopic:
    """``rollout.reconcile.Topic`` over a Kafka topic keyed by model."""

    def __init__(self, bootstrap: str, topic: str = topics.MODEL_UPDATES, *, reader: str = "controller") -> None:
        """``reader`` names the process in the consumer group id (``recwatch-<reader>-<uuid>``), so Kafka's
        group listings say who reads the topic."""
        self.bootstrap = bootstrap
        self.topic = topic
        self.reader = reader
        self._by_model: dict[str, list[ModelUpdate]] = defaultdict(list)
        self._seen: set[str] = set()
        self.undecodable = 0
        self._consumer: object | None = None
        self._producer: object | None = None

    def start(self) -> None:
        from confluent_kafka import Consumer, Producer

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"recwatch-{self.reader}-{uuid.uuid4().hex}",  # read all, commit nothing
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([self.topic])
        self._consumer = consumer
        self._producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True})

    def poll(self, timeout_s: float = 0.5, max_messages: int = 1000) -> int:
        """Read what arrived; returns how many messages."""
        from confluent_kafka import Consumer

        assert isinstance(self._consumer, Consumer), "start() first"
        messages = self._consumer.consume(max_messages, timeout_s)
        for msg in messages:
            value = msg.value()
            if msg.error() or value is None:
                continue
            try:
                self._add(ModelUpdate.FromString(value))
            except Exception:  # bad bytes on a shared topic: counted, never fatal
                self.undecodable += 1
                log.warning("undecodable message on %s at offset %s", self.topic, msg.offset())
        return len(messages)

    def catch_up(self, timeout_s: float = 60.0) -> None:
        """Read until every partition's end as it was when called: afterwards the topic's history is known (a
        plain :meth:`poll` may return nothing while the group is still being assigned its partitions).
        Raises TimeoutError when that takes longer than ``timeout_s``."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = self._consumer
        assert isinstance(consumer, Consumer), "start() first"
        partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            if high > low:
                ends[p] = high
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll(0.2)
            assigned = consumer.assignment()
            if len(assigned) == len(partitions):
                positions = {tp.partition: tp.offset for tp in consumer.position(assigned)}
                if all(positions.get(p, -1) >= end for p, end in ends.items()):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic} not read to its end within {timeout_s:.0f} s")

    def _add(self, update: ModelUpdate) -> None:
        if update.update_id and update.update_id in self._seen:
            return
        self._seen.add(update.update_id)
        self._by_model[update.model].append(update)

    def models(self) -> list[str]:
        return list(self._by_model)

    def updates(self, model: str) -> Sequence[ModelUpdate]:
        return list(self._by_model.get(model, ()))

    def publish(self, update: ModelUpdate) -> None:
        from confluent_kafka import Producer

        assert isinstance(self._producer, Producer), "start() first"
        self._producer.produce(self.topic, key=update.model.encode(), value=update.SerializeToString())
        if self._producer.flush(30):
            raise RuntimeError(f"model update {update.update_id} not acknowledged by Kafka within 30 s")
        self._add(update)

    def close(self) -> None:
        from confluent_kafka import Consumer

        if isinstance(self._consumer, Consumer):
            self._consumer.close()
        self._consumer = None  # closing twice is a no-op


class ControllerService:
    def __init__(
        self,
        store: Store,
        bootstrap: str,
        serving: FileServing,
        initial_stable: Mapping[str, int],
        *,
        policy: RolloutPolicy | None = None,
        window_s: int = 60,
        tick_s: float = 5.0,
        topic: str = topics.MODEL_UPDATES,
    ) -> None:
        self.topic = KafkaTopic(bootstrap, topic)
        self.controller = RolloutController(policy)
        self.windows = StoreWindows(
            store, window_s=window_s, latency_tolerance=self.controller.policy.compare.latency_tolerance
        )
        self.deployments = StoreDeployments(store)
        self.serving = serving
        self.initial_stable = dict(initial_stable)
        self.tick_s = tick_s

    def start(self) -> None:
        self.topic.start()

    def tick(self) -> list[ModelUpdate]:
        """Read the topic, then one reconcile round per model; returns what was published."""
        while self.topic.poll(0.2):
            pass
        published: list[ModelUpdate] = []
        for model, stable in self.initial_stable.items():
            loop = Reconciler(model, stable, self.controller, self.topic, self.serving, self.windows, self.deployments)
            published += loop.tick(loop.pending_commands(), now_us=time.time_ns() // 1000)
        for u in published:
            log.info("%s %s v%d: %s", ModelUpdate.Kind.Name(u.kind), u.model, u.version, u.reason)
        return published

    def run(self, stop: threading.Event) -> None:
        run_ticks(self.tick, stop, self.tick_s, "controller")

    def close(self) -> None:
        self.topic.close()


def run_ticks(tick: Callable[[], object], stop: threading.Event, tick_s: float, what: str) -> None:
    """Call ``tick`` every ``tick_s`` seconds until ``stop`` is set. A failing tick is logged and retried: Kafka
    or the store away for a moment loses nothing, the topic and the store still hold the state."""
    while not stop.is_set():
        try:
            tick()
        except Exception:
            log.exception("%s tick failed; retrying in %.0f s", what, tick_s)
        stop.wait(tick_s)


def stable_versions(model_config_file: Path) -> dict[str, int]:
    """Each model's version labelled ``stable`` in the config file, else its latest version on disk."""
    from serving.config import parse_model_server_config
    from serving.model_repository import list_versions

    out: dict[str, int] = {}
    for config in parse_model_server_config(model_config_file.read_text(), relative_to=model_config_file.parent):
        stable = config.labels.get("stable")
        versions = list_versions(config.base_path)
        if stable is None and versions:
            stable = versions[-1]
        if stable is not None:
            out[config.name] = int(stable)
    return out
