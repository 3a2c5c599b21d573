"""The rollout state machine: canary comparisons, steps, promotion, rollback — and a controller killed at every
step that resumes from the topic and the stored windows without doing anything twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from rollout.compare import ArmStats, ComparePolicy, compare
from rollout.controller import Rollout, RolloutController, RolloutPolicy, replay
from rollout.reconcile import Reconciler, WindowPair
from schemas import ModelUpdate

W = 10_000_000  # one 10 s window in µs


def arm(requests: int = 2000, errors: int = 2, slower: int = 10, impressions: int = 0, clicks: int = 0) -> ArmStats:
    return ArmStats(requests, errors, 20_000.0, slower, impressions, clicks)


# ---------------------------------------------------------------------------------------------- compare


def test_equal_arms_with_enough_data_are_healthy_and_small_ones_insufficient() -> None:
    p = ComparePolicy()
    assert compare(arm(), arm(), p).verdict == "healthy"
    assert compare(arm(), arm(requests=100, errors=0, slower=1), p).verdict == "insufficient"


@pytest.mark.parametrize(
    ("canary", "what"),
    [
        (arm(errors=60), "error rate"),  # 3 % vs 0.1 %
        (arm(slower=80), "slower than"),  # 4 % over stable's p99 x 1.2 where 1 % is expected
        (arm(impressions=20_000, clicks=1000), "CTR"),  # 5 % vs 8 %
    ],
)
def test_a_worse_canary_is_a_regression_naming_the_metric(canary: ArmStats, what: str) -> None:
    stable = arm(impressions=20_000, clicks=1600) if canary.impressions else arm()
    result = compare(stable, canary, ComparePolicy())
    assert result.verdict == "regression" and what in result.reasons[0]


def test_differences_inside_the_margins_are_not_regressions() -> None:
    p = ComparePolicy()
    assert compare(arm(errors=2), arm(errors=8), p).verdict == "healthy"  # 0.4 % vs 0.1 %: margin 0.5 pp
    assert compare(arm(impressions=20_000, clicks=1600), arm(impressions=20_000, clicks=1580), p).verdict == "healthy"


def test_feedback_that_has_started_but_is_thin_makes_the_comparison_wait() -> None:
    assert compare(arm(impressions=50, clicks=4), arm(impressions=40, clicks=3), ComparePolicy()).verdict == (
        "insufficient"
    )


# ---------------------------------------------------------------------------------------------- controller

POLICY = RolloutPolicy(steps=(0.1, 0.5), healthy_windows_per_step=2)


def kinds(updates: Sequence[ModelUpdate]) -> list[tuple[str, int, float]]:
    return [(ModelUpdate.Kind.Name(u.kind), u.version, round(u.canary_weight, 3)) for u in updates]


def test_a_healthy_canary_rises_step_by_step_then_is_promoted() -> None:
    c = RolloutController(POLICY)
    state = Rollout(model="ranker", stable=1)
    events = c.deploy(state, version=2, caused_by="alert:x", ts_us=0)
    state = replay("ranker", 1, events, POLICY.steps)
    for i in range(1, 5):
        state, decided = c.judge(state, window_us=i * W, stable=arm(), canary=arm())
        events += decided
        state = replay("ranker", 1, events, POLICY.steps) if decided else state
    assert kinds(events) == [("CANARY_DEPLOYED", 2, 0.1), ("WEIGHT_CHANGED", 2, 0.5), ("PROMOTED", 2, 0.0)]
    assert state.stable == 2 and state.phase == "idle" and state.desired() == (2, 0, 0.0)
    assert all(e.caused_by == "alert:x" and e.parent_version == 1 for e in events)


def test_a_regression_rolls_back_at_once_and_stable_serves_alone() -> None:
    c = RolloutController(POLICY)
    events = c.deploy(Rollout(model="ranker", stable=1), version=2, caused_by="", ts_us=0)
    state = replay("ranker", 1, events, POLICY.steps)
    state, decided = c.judge(state, window_us=W, stable=arm(), canary=arm(errors=200))
    assert kinds(decided) == [("ROLLED_BACK", 2, 0.0)] and "error rate" in decided[0].reason
    state = replay("ranker", 1, events + decided, POLICY.steps)
    assert state.desired() == (1, 0, 0.0)


def test_deploys_while_a_canary_runs_are_refused_and_repeats_ignored() -> None:
    c = RolloutController(POLICY)
    events = c.deploy(Rollout(model="ranker", stable=1), version=2, caused_by="", ts_us=0)
    state = replay("ranker", 1, events, POLICY.steps)
    assert c.deploy(state, version=2, caused_by="", ts_us=5) == []
    [refused] = c.deploy(state, version=3, caused_by="", ts_us=5)
    assert refused.kind == ModelUpdate.REJECTED and "still in canary" in refused.reason


def test_replayed_and_older_windows_are_ignored() -> None:
    c = RolloutController(POLICY)
    state = replay("ranker", 1, c.deploy(Rollout(model="ranker", stable=1), version=2, caused_by="", ts_us=0))
    state, _ = c.judge(state, window_us=W, stable=arm(), canary=arm())
    again, decided = c.judge(state, window_us=W, stable=arm(), canary=arm())
    assert again == state and decided == []


# ---------------------------------------------------------------------------------------------- kill & resume


class Crash(Exception):
    pass


@dataclass
class World:
    """The topic, the serving side, the stored windows and the deployments table, shared across restarts;
    ``crash_at`` makes the N-th side effect (publish, apply or record) raise before it happens."""

    windows: list[WindowPair]
    topic: list[ModelUpdate] = field(default_factory=list)
    serving: tuple[int, int, float] = (1, 0, 0.0)
    deployments: dict[str, str] = field(default_factory=dict)
    effects: int = 0
    crash_at: int = -1

    def _effect(self) -> None:
        self.effects += 1
        if self.effects == self.crash_at:
            raise Crash

    def updates(self, model: str) -> Sequence[ModelUpdate]:
        return [u for u in self.topic if u.model == model]

    def publish(self, update: ModelUpdate) -> None:
        self._effect()
        self.topic.append(update)

    def apply(self, model: str, stable: int, canary: int, weight: float) -> None:
        self._effect()
        self.serving = (stable, canary, weight)

    def since(self, model: str, canary: int, window_us: int) -> Sequence[WindowPair]:
        return [w for w in self.windows if w.window_us >= window_us]

    def record(self, update: ModelUpdate) -> None:
        self._effect()
        self.deployments[update.update_id] = ModelUpdate.Kind.Name(update.kind)


def scenario(bad_from: int | None) -> list[WindowPair]:
    """12 windows after the deploy; from window ``bad_from`` on the canary errs."""
    return [
        WindowPair(i * W, arm(), arm(errors=200) if bad_from is not None and i >= bad_from else arm())
        for i in range(1, 13)
    ]


def run(world: World, ticks: int = 15) -> None:
    """Deploy version 2, then tick once per window; on a crash start a new Reconciler (a restarted process)
    and go on with the same tick. The deploy command is re-sent after a crash (Kafka redelivers it)."""
    deploy = ModelUpdate(update_id="cmd-1", model="ranker", kind=ModelUpdate.DEPLOY_REQUESTED, version=2, ts_us=0)
    visible = 0
    tick = 0
    commands: list[ModelUpdate] = [deploy]
    while tick < ticks:
        loop = Reconciler("ranker", 1, RolloutController(POLICY), world, world, _Visible(world, visible), world)
        try:
            loop.tick(commands)
        except Crash:
            continue  # the process died: a new one starts, the command is redelivered
        commands = []
        tick += 1
        visible += 1


class _Visible:
    """Windows close one per tick: the store shows only those closed so far."""

    def __init__(self, world: World, count: int) -> None:
        self.world, self.count = world, count

    def since(self, model: str, canary: int, window_us: int) -> Sequence[WindowPair]:
        return [w for w in self.world.windows[: self.count] if w.window_us >= window_us]


@pytest.mark.parametrize("bad_from", [None, 1, 3])  # promoted; rolled back at weight 0.1; at weight 0.5
def test_killed_at_every_side_effect_the_controller_ends_as_if_never_killed(bad_from: int | None) -> None:
    clean = World(scenario(bad_from))
    run(clean)
    expected = kinds(clean.topic)
    assert expected[0] == ("CANARY_DEPLOYED", 2, 0.1)
    assert clean.effects >= 10  # enough side effects to kill it before each
    assert expected[-1][0] == ("PROMOTED" if bad_from is None else "ROLLED_BACK")
    for crash_at in range(1, clean.effects + 1):
        world = World(scenario(bad_from), crash_at=crash_at)
        run(world)
        assert kinds(world.topic) == expected, f"crash before side effect {crash_at}"
        assert len({u.update_id for u in world.topic}) == len(world.topic)
        assert world.serving == clean.serving
        assert world.deployments == clean.deployments


def test_hand_commands_carry_their_action_and_refuse_a_deploy_without_version() -> None:
    from rollout.commands import command

    msg = command("deploy", "ranker", version=3, reason="new features", now_us=5)
    assert (msg.kind, msg.model, msg.version, msg.ts_us, msg.actor) == (
        ModelUpdate.DEPLOY_REQUESTED, "ranker", 3, 5, "person",
    )  # fmt: skip
    assert command("rollback", "ranker").kind == ModelUpdate.ROLLBACK_REQUESTED
    with pytest.raises(ValueError, match="needs --version"):
        command("deploy", "ranker")
    with pytest.raises(ValueError, match="unknown action"):
        command("redeploy", "ranker")


def test_file_serving_writes_what_recwatch_serve_reads(tmp_path) -> None:
    from rollout.serving_files import FileServing
    from serving.config import parse_canary_weights, parse_model_server_config

    config = tmp_path / "models.config"
    config.write_text(
        'model_config_list {\n  config { name: "ranker" base_path: "/m/ranker" model_platform: "tensorflow" }\n'
        '  config { name: "seq" base_path: "/m/seq" model_platform: "tensorflow" }\n}\n'
    )
    weights = tmp_path / "weights.json"
    serving = FileServing(config, weights)

    serving.apply("ranker", 1, 2, 0.1)
    ranker, seq = parse_model_server_config(config.read_text())
    assert ranker.policy.versions == (1, 2) and dict(ranker.labels) == {"stable": 1, "canary": 2}
    assert seq.labels == {} and seq.policy.kind == "latest"  # other models untouched
    assert parse_canary_weights(weights.read_text()) == {"ranker": 0.1}

    stamp = config.stat().st_mtime_ns
    serving.apply("ranker", 1, 2, 0.1)  # reconciling an unchanged state rewrites nothing
    assert config.stat().st_mtime_ns == stamp

    serving.apply("ranker", 2, 0, 0.0)  # promoted
    [ranker, _] = parse_model_server_config(config.read_text())
    assert ranker.policy.versions == (2,) and dict(ranker.labels) == {"stable": 2}
    assert parse_canary_weights(weights.read_text()) == {"ranker": 0.0}


def _alert(name: str, *, model: str = "ranker", label: str = "stable", start_s: int = 0, fp: str = "f") -> Any:
    from schemas import Alert

    alert = Alert(fingerprint=fp, status=Alert.FIRING, starts_at_us=start_s * 1_000_000)
    alert.labels.update(alertname=name, model=model, version="3", label=label, metric="score_mean")
    return alert


def test_sustained_drift_asks_for_one_retrain_per_model_and_interval() -> None:
    from rollout.rules import RetrainRules

    rules = RetrainRules(min_firing_s=60, min_interval_s=3600)
    drift, ctr = _alert("RecwatchScoreMeanDrift", fp="a"), _alert("RecwatchCtrLow", fp="b")
    assert rules.consider(drift, now_us=59 * 10**6) is None  # a blip is not sustained
    first = rules.consider(drift, now_us=61 * 10**6)
    assert first is not None and first.caused_by == "a" and first.actor == "rules"
    assert rules.consider(drift, now_us=120 * 10**6) is None  # the same alert: answered
    assert rules.consider(ctr, now_us=120 * 10**6) is None  # another alert of the model: rate-limited
    assert rules.consider(ctr, now_us=3700 * 10**6) is not None  # an hour later it may retrain again
    assert rules.consider(_alert("RecwatchLatencyP99High", fp="c"), now_us=10**10) is None  # not a trigger
    assert rules.consider(_alert("RecwatchScoreMeanDrift", label="canary", fp="d"), now_us=10**10) is None

    restarted = RetrainRules(min_firing_s=60, min_interval_s=3600)
    restarted.replay([first])
    assert restarted.consider(drift, now_us=200 * 10**6) is None  # rebuilt from the topic: no second retrain


@pytest.mark.parametrize("module", ["rollout.compare", "rollout.controller", "rollout.rules"])
def test_the_examples_in_the_docstrings_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
