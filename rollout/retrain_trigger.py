"""The retrain rules in a process: ``recwatch alerter`` hands them its open alerts, they publish
``RETRAIN_REQUESTED`` on ``recwatch.model-updates.v1`` (:class:`RetrainTrigger`).

The alerter owns each alert's lifecycle (fired, still firing, resolved), so it is where "still firing
``min_firing_s`` after it started" can be checked: every poll it passes its open alerts to
:meth:`RetrainTrigger.watch`, which asks :class:`rollout.rules.RetrainRules` and publishes what they decide through
the same topic helper as the controller (:class:`rollout.service.KafkaTopic`: idempotent producer, acknowledged
before ``watch`` returns).

Crash safety. The rules' state (alerts answered, last retrain per model) is rebuilt at :meth:`start` from the
topic read to its end, and a command's ``update_id`` is a hash of the model and the alert's fingerprint and start
(the same after a restart, since the alerter restores its alerts from its checkpoint or re-scores the same
windows). So a restarted alerter sends no second command for an alert already answered; a publish that fails is
forgotten (state rebuilt from the topic) and tried again on the next poll.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

from rollout.rules import DEFAULT_TRIGGERS, RetrainRules
from schemas import Alert, ModelUpdate

log = logging.getLogger(__name__)


class UpdatesTopic(Protocol):
    """What :class:`rollout.service.KafkaTopic` offers (fakes in tests)."""

    def start(self) -> None: ...

    def catch_up(self, timeout_s: float = 60.0) -> None: ...

    def models(self) -> list[str]: ...

    def updates(self, model: str) -> Sequence[ModelUpdate]: ...

    def publish(self, update: ModelUpdate) -> None: ...

    def close(self) -> None: ...


class RetrainTrigger:
    """An ``alerting.service.AlertWatcher``: open alerts in, at most one retrain command per alert out."""

    def __init__(
        self,
        topic: UpdatesTopic,
        *,
        min_firing_s: float = 300.0,
        min_interval_s: float = 6 * 3600.0,
        triggers: frozenset[str] = DEFAULT_TRIGGERS,
    ) -> None:
        self.topic = topic
        self.min_firing_s = min_firing_s
        self.min_interval_s = min_interval_s
        self.triggers = triggers
        self.rules = self._fresh_rules()
        self.published: list[ModelUpdate] = []

    def _fresh_rules(self) -> RetrainRules:
        return RetrainRules(triggers=self.triggers, min_firing_s=self.min_firing_s, min_interval_s=self.min_interval_s)

    def start(self) -> None:
        """Connect, read the topic to its end and rebuild the rules' state from it."""
        self.topic.start()
        self.topic.catch_up()
        self._rebuild()

    def _rebuild(self) -> None:
        self.rules = self._fresh_rules()
        self.rules.replay(u for model in self.topic.models() for u in self.topic.updates(model))

    def watch(self, alerts: Iterable[Alert], now_us: int) -> list[ModelUpdate]:
        """Ask the rules about each alert (firing or not, any name: they filter); publish and return the commands."""
        out: list[ModelUpdate] = []
        for alert in alerts:
            cmd = self.rules.consider(alert, now_us=now_us)
            if cmd is None:
                continue
            try:
                self.topic.publish(cmd)
            except Exception:
                self._rebuild()  # not on the topic: not answered, so the next poll decides it again
                raise
            log.warning(
                "RETRAIN_REQUESTED %s (parent v%d), caused by alert %s: %s",
                cmd.model, cmd.parent_version, cmd.caused_by, cmd.reason,
            )  # fmt: skip
            out.append(cmd)
        self.published += out
        return out

    def close(self) -> None:
        self.topic.close()
