"""From alerts to retrain commands: the closed loop's rules (issue 6), rate-limited and deduplicated.

An alert of one of ``RetrainRules.triggers`` (by default score drift and a CTR or conversion drop) on a model's
**stable** version asks for a retrain of that model: one ``RETRAIN_REQUESTED`` command, whose ``caused_by`` is
the alert's fingerprint (the start of the lineage alert → retrain → training → canary → promotion). Guards:

- **dedup**: one command per alert (fingerprint and start), however often the alert is seen again;
- **sustained**: the alert must still be firing ``min_firing_s`` after it started (a blip does not retrain);
- **rate limit**: at most one retrain per model per ``min_interval_s`` (default 6 h): no retrain storms when
  several series of one model alert at once, or a drift persists;
- canaries are left to the rollout controller (a canary's regression rolls it back; it is not retrained).

Pure logic: :meth:`RetrainRules.consider` takes an alert and the time, returns the command or None, and its
state (last retrain per model, alerts answered) is rebuilt from the model-updates topic by :meth:`replay`.

>>> from schemas import Alert
>>> rules = RetrainRules(min_firing_s=60)
>>> alert = Alert(fingerprint="f1", status=Alert.FIRING, starts_at_us=0)
>>> alert.labels.update(alertname="RecwatchScoreMeanDrift", model="ranker", version="3", label="stable")
>>> rules.consider(alert, now_us=30_000_000) is None  # not sustained yet
True
>>> cmd = rules.consider(alert, now_us=90_000_000)
>>> (ModelUpdate.Kind.Name(cmd.kind), cmd.model, cmd.parent_version, cmd.caused_by)
('RETRAIN_REQUESTED', 'ranker', 3, 'f1')
>>> rules.consider(alert, now_us=200_000_000) is None  # answered already
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from alerting.rules import ALERTNAMES
from schemas import Alert, ModelUpdate

DEFAULT_TRIGGERS = frozenset(ALERTNAMES[m] for m in ("score_mean", "ctr", "conversion_rate"))


@dataclass
class RetrainRules:
    triggers: frozenset[str] = DEFAULT_TRIGGERS
    min_firing_s: float = 300.0
    min_interval_s: float = 6 * 3600.0
    _last_retrain_us: dict[str, int] = field(default_factory=dict)
    _answered: set[str] = field(default_factory=set)  # alert keys (fingerprint@start) with a command

    @staticmethod
    def _key(alert: Alert) -> str:
        return f"{alert.fingerprint}@{alert.starts_at_us}"

    def replay(self, updates: Iterable[ModelUpdate]) -> None:
        """Rebuild the state from the model-updates topic (after a restart)."""
        for u in updates:
            if u.kind == ModelUpdate.RETRAIN_REQUESTED and u.actor == "rules":
                self._last_retrain_us[u.model] = max(self._last_retrain_us.get(u.model, 0), u.ts_us)
                self._answered.add(u.update_id)

    def consider(self, alert: Alert, *, now_us: int) -> ModelUpdate | None:
        labels = alert.labels
        if alert.status != Alert.FIRING or labels.get("alertname") not in self.triggers:
            return None
        if labels.get("label") == "canary":
            return None  # the rollout controller judges canaries
        model = labels.get("model", "")
        update_id = hashlib.blake2b(f"retrain/{model}/{self._key(alert)}".encode(), digest_size=12).hexdigest()
        if not model or update_id in self._answered:
            return None
        if now_us - alert.starts_at_us < self.min_firing_s * 1e6:
            return None
        last = self._last_retrain_us.get(model)
        if last is not None and now_us - last < self.min_interval_s * 1e6:
            return None
        self._answered.add(update_id)
        self._last_retrain_us[model] = now_us
        version = labels.get("version", "0")
        return ModelUpdate(
            update_id=update_id,
            ts_us=now_us,
            model=model,
            kind=ModelUpdate.RETRAIN_REQUESTED,
            parent_version=int(version) if version.isdigit() else 0,
            reason=f"{labels.get('alertname')} firing since {alert.starts_at_us} on {labels.get('metric', '')}: "
            + alert.annotations.get("summary", ""),
            actor="rules",
            caused_by=alert.fingerprint,
        )
