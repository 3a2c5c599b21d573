"""One model's rollout loop, written so that killing it anywhere and starting it again changes nothing.

Each :meth:`Reconciler.tick`:

1. rebuilds the state from the model-updates topic (:func:`rollout.controller.replay`) and re-judges the
   stored windows of the current step (``Windows.since``), so the healthy-window count is what it was;
2. sets the serving side to what that state requires (``Serving.apply``: stable/canary labels and the canary
   weight) and writes the topic's status events to ``deployments`` — both idempotent, so an effect lost in a
   crash is applied now;
3. handles pending commands, judges the windows not judged yet and publishes each decision whose
   ``update_id`` is not on the topic yet (``Topic.publish``), then applies its effect, and records it in the
   ``deployments`` table (``Deployments.record``, keyed by ``update_id``: a repeated row replaces itself).

A crash between deciding and publishing decides the same event (same id) again; between publishing and
applying, step 2 applies it; between applying and recording, the record is written again with the same key.
The interfaces are small so tests drive the loop with fakes and kill it at every step
(``tests/unit/test_rollout.py``); the process that wires Kafka, the store and the model server comes with
``recwatch controller``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rollout.compare import ArmStats
from rollout.controller import Rollout, RolloutController, replay
from schemas import ModelUpdate


@dataclass(frozen=True)
class WindowPair:
    window_us: int
    stable: ArmStats
    canary: ArmStats


class Topic(Protocol):
    def updates(self, model: str) -> Sequence[ModelUpdate]: ...

    def publish(self, update: ModelUpdate) -> None: ...


class Serving(Protocol):
    def apply(self, model: str, stable: int, canary: int, weight: float) -> None: ...


class Windows(Protocol):
    def since(self, model: str, canary: int, window_us: int) -> Sequence[WindowPair]:
        """Closed windows with both arms' counts, starting at or after ``window_us``, oldest first."""
        ...


class Deployments(Protocol):
    def record(self, update: ModelUpdate) -> None: ...


COMMAND_KINDS = frozenset((ModelUpdate.DEPLOY_REQUESTED, ModelUpdate.PROMOTE_REQUESTED, ModelUpdate.ROLLBACK_REQUESTED))
STATUS_KINDS = frozenset(
    (ModelUpdate.CANARY_DEPLOYED, ModelUpdate.WEIGHT_CHANGED, ModelUpdate.PROMOTED, ModelUpdate.ROLLED_BACK)
)


class Reconciler:
    def __init__(
        self,
        model: str,
        initial_stable: int,
        controller: RolloutController,
        topic: Topic,
        serving: Serving,
        windows: Windows,
        deployments: Deployments,
    ) -> None:
        self.model = model
        self.initial_stable = initial_stable
        self.controller = controller
        self.topic = topic
        self.serving = serving
        self.windows = windows
        self.deployments = deployments
        self._recorded: set[str] = set()  # update_ids this process wrote to deployments (all again after a start)

    def state(self) -> Rollout:
        """The state from the topic, with the current step's healthy count recomputed from stored windows."""
        state = self._replay()
        if state.phase == "canary":
            for w in self.windows.since(self.model, state.canary, state.step_started_us):
                judged, decisions = self.controller.judge(
                    state, window_us=w.window_us, stable=w.stable, canary=w.canary
                )
                if decisions:  # decided before the crash but not published: tick() decides it again
                    break
                state = judged
        return state

    def pending_commands(self) -> list[ModelUpdate]:
        """The deploy / promote / rollback commands on the topic that no event answers yet: each event's
        ``caused_by`` is the ``update_id`` of what caused it, so an answered command is named by one."""
        updates = self.topic.updates(self.model)
        answered = {u.caused_by for u in updates if u.kind not in COMMAND_KINDS}
        return [u for u in updates if u.kind in COMMAND_KINDS and u.update_id not in answered]

    def tick(self, commands: Sequence[ModelUpdate] = (), now_us: int = 0) -> list[ModelUpdate]:
        """One round with ``commands`` (e.g. :meth:`pending_commands`); returns the events published in it."""
        state = self.state()
        self.serving.apply(self.model, *state.desired())
        for update in self.topic.updates(self.model):  # a record lost in a crash is written now
            self._record(update)
        published: list[ModelUpdate] = []
        for cmd in commands:
            if cmd.kind == ModelUpdate.DEPLOY_REQUESTED:
                decided = self.controller.deploy(
                    state, version=cmd.version, caused_by=cmd.update_id, ts_us=cmd.ts_us or now_us
                )
            else:
                decided = self.controller.command(state, cmd)
            state = self._publish(decided, published)
        if state.phase == "canary":
            for w in self.windows.since(self.model, state.canary, max(state.step_started_us, state.last_window_us + 1)):
                state, decided = self.controller.judge(state, window_us=w.window_us, stable=w.stable, canary=w.canary)
                if decided:
                    state = self._publish(decided, published)
                    if state.phase != "canary":
                        break
        return published

    def _publish(self, decided: Sequence[ModelUpdate], published: list[ModelUpdate]) -> Rollout:
        on_topic = {u.update_id for u in self.topic.updates(self.model)}
        state = None
        for update in decided:
            if update.update_id not in on_topic:
                self.topic.publish(update)
                published.append(update)
            state = self._replay()
            self.serving.apply(self.model, *state.desired())
            self._record(update)
        return state if state is not None else self._replay()

    def _replay(self) -> Rollout:
        return replay(self.model, self.initial_stable, self.topic.updates(self.model), self.controller.policy.steps)

    def _record(self, update: ModelUpdate) -> None:
        """Write a transition to ``deployments`` once per process (the table's key absorbs a repeat)."""
        if update.kind in STATUS_KINDS and update.update_id not in self._recorded:
            self.deployments.record(update)
            self._recorded.add(update.update_id)
