"""The rollout state machine: a new version goes live as ``canary`` at a small weight, rises in steps while it
compares healthy with ``stable`` on the same live windows, and is promoted, or rolled back on a regression.

Pure logic. The state of a model's rollout is a fold of its status events on ``recwatch.model-updates.v1``
(:func:`replay`), plus the count of healthy windows at the current step, which is recomputed from the stored
windows since the step began (the runner feeds them again after a restart). Every decision is a
:class:`schemas.ModelUpdate` status event with a **deterministic** ``update_id`` (model, version, kind, step),
so a controller killed at any point and restarted decides the same events again, and an event already on the
topic is recognised and not published twice. Applying an event's effect (labels, canary weight) is idempotent:
:meth:`Rollout.desired` says what the serving side must look like in the current state, and the runner sets it
after every restart (reconcile), whatever step the crash interrupted.

States: ``idle`` (only stable serves) → ``canary`` (step i: weight ``steps[i]``) → ``promoted`` (the canary is
the new stable) or ``rolled_back`` (stable serves alone again); then ``idle`` for the next deployment.

>>> c = RolloutController(RolloutPolicy(steps=(0.1, 0.5), healthy_windows_per_step=1))
>>> state = Rollout(model="ranker", stable=1)
>>> [u] = c.deploy(state, version=2, caused_by="alert:abc", ts_us=1)
>>> (ModelUpdate.Kind.Name(u.kind), u.canary_weight)
('CANARY_DEPLOYED', 0.1)
>>> state = replay("ranker", 1, [u])
>>> (state.phase, state.canary, state.desired())
('canary', 2, (1, 2, 0.1))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from rollout.compare import ArmStats, ComparePolicy, compare
from schemas import ModelUpdate

Phase = Literal["idle", "canary"]
ACTOR = "controller"


@dataclass(frozen=True)
class RolloutPolicy:
    steps: tuple[float, ...] = (0.05, 0.25, 0.5)  # canary weights, rising
    healthy_windows_per_step: int = 3  # consecutive healthy comparisons before the next step (or promotion)
    compare: ComparePolicy = field(default_factory=ComparePolicy)

    def __post_init__(self) -> None:
        if not self.steps or any(not 0.0 < w <= 1.0 for w in self.steps) or list(self.steps) != sorted(self.steps):
            raise ValueError(f"steps must be rising weights in (0, 1], got {self.steps}")
        if self.healthy_windows_per_step < 1:
            raise ValueError("healthy_windows_per_step must be >= 1")


@dataclass(frozen=True)
class Rollout:
    """One model's rollout state."""

    model: str
    stable: int
    phase: Phase = "idle"
    canary: int = 0
    step: int = -1
    healthy: int = 0
    last_window_us: int = -1  # windows starting at or before this were judged (replays are ignored)
    step_started_us: int = 0  # the current step's windows start after this (re-read after a restart)
    caused_by: str = ""  # lineage of the deployment in progress
    weights: tuple[float, ...] = ()

    def desired(self) -> tuple[int, int, float]:
        """(stable version, canary version or 0, canary weight) the serving side must show in this state."""
        if self.phase == "canary":
            return self.stable, self.canary, self.weights[self.step]
        return self.stable, 0, 0.0


def update_id(model: str, version: int, kind: int, step: int = 0) -> str:
    raw = f"{model}/{version}/{ModelUpdate.Kind.Name(kind)}/{step}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _event(
    state: Rollout, kind: int, version: int, ts_us: int, reason: str, *, weight: float = 0.0, step: int = 0
) -> ModelUpdate:
    return ModelUpdate(
        update_id=update_id(state.model, version, kind, step),
        ts_us=ts_us,
        model=state.model,
        kind=kind,  # type: ignore[arg-type]  # an int of the enum
        version=version,
        parent_version=state.stable,
        reason=reason,
        actor=ACTOR,
        caused_by=state.caused_by,
        canary_weight=weight,
    )


def replay(model: str, stable: int, updates: Iterable[ModelUpdate], steps: tuple[float, ...] = ()) -> Rollout:
    """The state after the status events of ``model`` (in topic order), from ``stable`` before any of them.
    Commands and other models' events are skipped; an event seen twice changes nothing the second time."""
    state = Rollout(model=model, stable=stable, weights=steps)
    seen: set[str] = set()
    for u in updates:
        if u.model != model or u.update_id in seen:
            continue
        seen.add(u.update_id)
        if u.kind == ModelUpdate.CANARY_DEPLOYED:
            weights = state.weights or (u.canary_weight,)
            step = next((i for i, w in enumerate(weights) if abs(w - u.canary_weight) < 1e-9), 0)
            state = replace(
                state, phase="canary", canary=u.version, step=step, healthy=0, step_started_us=u.ts_us,
                last_window_us=u.ts_us, caused_by=u.caused_by, weights=weights,
            )  # fmt: skip
        elif u.kind == ModelUpdate.WEIGHT_CHANGED and state.phase == "canary" and u.version == state.canary:
            weights = state.weights
            found = next((i for i, w in enumerate(weights) if abs(w - u.canary_weight) < 1e-9), None)
            if found is None:
                weights, found = (*weights, u.canary_weight), len(weights)
            state = replace(
                state, step=found, healthy=0, step_started_us=u.ts_us, last_window_us=u.ts_us, weights=weights
            )
        elif u.kind == ModelUpdate.PROMOTED and u.version == state.canary:
            state = Rollout(model=model, stable=u.version, weights=steps)
        elif u.kind == ModelUpdate.ROLLED_BACK and u.version == state.canary:
            state = Rollout(model=model, stable=state.stable, weights=steps)
    return state


class RolloutController:
    def __init__(self, policy: RolloutPolicy | None = None) -> None:
        self.policy = policy or RolloutPolicy()

    def deploy(self, state: Rollout, *, version: int, caused_by: str, ts_us: int) -> list[ModelUpdate]:
        """A DEPLOY_REQUESTED for ``version``: CANARY_DEPLOYED at the first step, or REJECTED while another
        canary is in progress or when it is already the stable version."""
        if state.phase == "canary" and state.canary == version:
            return []  # already rolling out (a repeated command)
        if state.phase == "canary" or version == state.stable:
            why = f"version {state.canary} is still in canary" if state.phase == "canary" else "already stable"
            rejected = replace(state, caused_by=caused_by)
            return [_event(rejected, ModelUpdate.REJECTED, version, ts_us, f"deploy of {version} refused: {why}")]
        weight = self.policy.steps[0]
        started = replace(state, caused_by=caused_by)
        return [
            _event(started, ModelUpdate.CANARY_DEPLOYED, version, ts_us, f"canary at weight {weight:g}", weight=weight)
        ]

    def judge(
        self, state: Rollout, *, window_us: int, stable: ArmStats, canary: ArmStats
    ) -> tuple[Rollout, list[ModelUpdate]]:
        """Fold one live window (both arms' counts of the same window) into the state; returns the new state and
        the status events to publish (empty while the rollout holds). Windows at or before the last judged
        one, or from before the current step began, are ignored."""
        if state.phase != "canary" or window_us <= state.last_window_us or window_us < state.step_started_us:
            return state, []
        state = replace(state, last_window_us=window_us)
        result = compare(stable, canary, self.policy.compare)
        if result.verdict == "regression":
            reason = "regression: " + "; ".join(result.reasons)
            return state, [_event(state, ModelUpdate.ROLLED_BACK, state.canary, window_us, reason, step=state.step)]
        if result.verdict == "insufficient":
            return state, []
        state = replace(state, healthy=state.healthy + 1)
        if state.healthy < self.policy.healthy_windows_per_step:
            return state, []
        steps = self.policy.steps
        if state.step + 1 < len(steps):
            weight = steps[state.step + 1]
            reason = f"{state.healthy} healthy windows at weight {steps[state.step]:g}"
            kind = ModelUpdate.WEIGHT_CHANGED
            return state, [_event(state, kind, state.canary, window_us, reason, weight=weight, step=state.step + 1)]
        reason = f"{state.healthy} healthy windows at the last step (weight {steps[state.step]:g})"
        return state, [_event(state, ModelUpdate.PROMOTED, state.canary, window_us, reason, step=state.step)]

    def command(self, state: Rollout, cmd: ModelUpdate) -> list[ModelUpdate]:
        """A person's PROMOTE_REQUESTED / ROLLBACK_REQUESTED for the canary in progress."""
        if state.phase != "canary" or (cmd.version and cmd.version != state.canary):
            return []
        who = replace(state, caused_by=cmd.update_id)
        if cmd.kind == ModelUpdate.PROMOTE_REQUESTED:
            return [_event(who, ModelUpdate.PROMOTED, state.canary, cmd.ts_us, cmd.reason or "promoted by request")]
        if cmd.kind == ModelUpdate.ROLLBACK_REQUESTED:
            return [
                _event(who, ModelUpdate.ROLLED_BACK, state.canary, cmd.ts_us, cmd.reason or "rolled back by request")
            ]
        return []
