"""The trainer: a retrain command becomes a new version only when the retrained model is not worse than stable on
the same time-based holdout; a worse one is REJECTED and never written into the model repository; a trainer
killed mid-way resumes from the topic without training twice. Real Keras models on small shop logs."""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from rollout.reconcile import Reconciler
from rollout.trainer import ACTOR, ModelDir, Trainer, TrainerPolicy, decide, pending_retrains
from schemas import ModelUpdate
from serving.model_repository import list_versions
from store import Store
from tests.store_fixtures import chdb_store  # noqa: F401 - fixture
from training.from_store import InsufficientDataError, store_behaviors
from training.pipeline import ModelKind
from training.retrain import FitResult, HoldoutSplit, Progress, fit_candidate, score_saved_model
from training.taobao import BUY, CART, PV, Behaviors

S = 1_000_000
START_S = 1_700_000_000  # the shop log's first second; the trainer's clock stands after its last
POLICY = TrainerPolicy(window_s=2 * 86_400, min_events=500, epochs=2, margin=0.005)


def shop_log(users: int = 300, items: int = 400, per_user: int = 20, seed: int = 0) -> Behaviors:
    """Shoppers who mostly stay in two favourite categories of a 20-category catalog with Zipf-like item
    popularity, over one day: popularity and taste are both learnable."""
    rng = np.random.default_rng(seed)
    cats = 20
    item_cat = np.arange(items) % cats
    pop = 1.0 / (rng.permutation(items) + 1.0)
    glob = pop / pop.sum()
    rows_u: list[int] = []
    rows_i: list[int] = []
    rows_t: list[int] = []
    for u in range(users):
        local = np.where(np.isin(item_cat, rng.choice(cats, size=2, replace=False)), pop, 0.0)
        local /= local.sum()
        n = int(rng.integers(per_user // 2, per_user * 3 // 2))
        chosen = np.where(rng.random(n) < 0.7, rng.choice(items, size=n, p=local), rng.choice(items, size=n, p=glob))
        rows_u += [u + 1] * n
        rows_i += chosen.tolist()
        rows_t += (START_S + rng.integers(0, 86_400, size=n)).tolist()
    i = np.asarray(rows_i)
    return Behaviors(
        user=np.asarray(rows_u, dtype=np.int64),
        item=(i + 1000).astype(np.int64),
        category=(item_cat[i] + 1).astype(np.int64),
        behavior=np.full(len(i), PV, dtype=np.int8),
        timestamp=np.asarray(rows_t, dtype=np.int64),
    ).sorted_by_time()


def scrambled(b: Behaviors, seed: int = 5) -> Behaviors:
    """The same shoppers and times with items drawn uniformly from the catalog: labels that mean nothing."""
    items, cats = b.catalog()
    pick = np.random.default_rng(seed).integers(0, len(items), size=len(b))
    return Behaviors(b.user, items[pick], cats[pick], b.behavior, b.timestamp)


LOG = shop_log()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Two real CTR rankers trained on the training period of LOG's holdout split: one on the real log, one on
    scrambled labels (AUC near chance)."""
    root = tmp_path_factory.mktemp("trained")
    train = HoldoutSplit.build(LOG).train
    fit_candidate("ctr", train, root / "good", lambda *_: None, epochs=2)
    fit_candidate("ctr", scrambled(train), root / "bad", lambda *_: None, epochs=2)
    yield {"good": root / "good", "bad": root / "bad"}


class Crash(Exception):
    pass


@dataclass
class FakeTopic:
    """``rollout.reconcile.Topic`` in memory; ``crash_on`` makes the first publish of that kind raise."""

    messages: list[ModelUpdate] = field(default_factory=list)
    crash_on: int | None = None

    def updates(self, model: str) -> Sequence[ModelUpdate]:
        return [u for u in self.messages if u.model == model]

    def publish(self, update: ModelUpdate) -> None:
        if update.kind == self.crash_on:
            self.crash_on = None
            raise Crash(ModelUpdate.Kind.Name(update.kind))
        self.messages.append(update)


@dataclass
class LogSource:
    log: Behaviors
    calls: int = 0

    def behaviors(self, model: str, since_us: int, until_us: int, *, min_events: int) -> Behaviors:
        self.calls += 1
        ts = self.log.timestamp * S
        b = self.log.take((ts >= since_us) & (ts < until_us))
        if len(b) < min_events:
            raise InsufficientDataError(model, len(b), min_events, since_us, until_us)
        return b


def retrain(update_id: str = "cmd-1") -> ModelUpdate:
    return ModelUpdate(
        update_id=update_id, ts_us=(START_S + 86_400) * S, model="ranker", kind=ModelUpdate.RETRAIN_REQUESTED,
        parent_version=1, reason="RecwatchCtrLow firing", actor="rules", caused_by="alert-fingerprint",
    )  # fmt: skip


def repository(tmp_path: Path, stable: Path) -> Path:
    base = tmp_path / "models" / "ranker"
    shutil.copytree(stable, base / "1")
    return base


def trainer(topic: FakeTopic, base: Path, **kwargs: object) -> Trainer:
    clock = itertools.count((START_S + 86_400 + 60) * S, 1000)
    dirs = {"ranker": ModelDir("ranker", base, 1)}
    return Trainer(topic, LogSource(LOG), lambda: dirs, policy=POLICY, clock=lambda: next(clock), **kwargs)  # type: ignore[arg-type]


def kinds(updates: Sequence[ModelUpdate]) -> list[str]:
    return [ModelUpdate.Kind.Name(u.kind) for u in updates]


def copy_of(model: Path, calls: list[Path]) -> object:
    """A fit that 'trains' by copying an already trained SavedModel (for the crash tests: cheap and exact)."""

    def fit(kind: ModelKind, train: Behaviors, directory: Path, progress: Progress) -> FitResult:
        calls.append(directory)
        progress(1, 1, {"loss": 0.5})
        shutil.copytree(model, directory)
        return FitResult(params=1, rows=len(train), seconds=0.0)

    return fit


def no_fit(kind: ModelKind, train: Behaviors, directory: Path, progress: Progress) -> FitResult:
    raise AssertionError("trained again")


# ---------------------------------------------------------------------------------------------- the refusal rule


def test_a_worse_retrained_model_is_rejected_and_never_becomes_a_version(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    base = repository(tmp_path, models["good"])
    topic = FakeTopic([retrain()])

    def trained_on_noise(kind: ModelKind, train: Behaviors, directory: Path, progress: Progress) -> FitResult:
        return fit_candidate(kind, scrambled(train, seed=11), directory, progress, epochs=2)  # a real, worse model

    published = trainer(topic, base, fit=trained_on_noise).tick("ranker")

    assert kinds(published) == [
        "TRAINING_STARTED", "TRAINING_PROGRESS", "TRAINING_PROGRESS", "TRAINING_FINISHED", "EVALUATED", "REJECTED",
    ]  # fmt: skip
    evaluated, rejected = published[-2:]
    assert evaluated.metrics["auc"] < evaluated.metrics["stable_auc"] - POLICY.margin
    assert evaluated.metrics["accepted"] == 0.0
    assert rejected.version == 2 and rejected.parent_version == 1 and rejected.caused_by == "cmd-1"
    assert "stable v1 auc" in rejected.reason and "not published" in rejected.reason
    assert not any(u.kind == ModelUpdate.DEPLOY_REQUESTED for u in topic.messages)
    assert list_versions(base) == [1] and sorted(p.name for p in base.iterdir()) == ["1"]  # no staging left either
    assert pending_retrains(topic.updates("ranker")) == []


def test_a_better_retrained_model_becomes_the_next_version_and_a_deploy_for_the_controller(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    base = repository(tmp_path, models["bad"])
    topic = FakeTopic([retrain()])

    published = trainer(topic, base).tick("ranker")  # the real training path, 2 epochs

    assert kinds(published) == [
        "TRAINING_STARTED", "TRAINING_PROGRESS", "TRAINING_PROGRESS", "TRAINING_FINISHED", "EVALUATED",
        "DEPLOY_REQUESTED",
    ]  # fmt: skip
    assert [u.metrics["epoch"] for u in published if u.kind == ModelUpdate.TRAINING_PROGRESS] == [1.0, 2.0]
    assert all(u.actor == ACTOR and u.caused_by == "cmd-1" and u.parent_version == 1 for u in published)
    evaluated, deploy = published[-2:]
    assert evaluated.metrics["auc"] > evaluated.metrics["stable_auc"]
    assert {"hit_rate_at_10", "ndcg_at_10", "stable_hit_rate_at_10"} <= set(evaluated.metrics)
    assert deploy.version == 2 and list_versions(base) == [1, 2]
    assert score_saved_model(base / "2", HoldoutSplit.build(LOG))["auc"] == pytest.approx(evaluated.metrics["auc"])

    # the rollout controller takes the deploy as a pending command, caused by the retrain (the lineage)
    controller_view = Reconciler("ranker", 1, None, topic, None, None, None).pending_commands()  # type: ignore[arg-type]
    assert [(u.update_id, u.version) for u in controller_view] == [(deploy.update_id, 2)]

    # a restarted trainer replays the topic: the command is answered, nothing is trained or published again
    assert trainer(topic, base, fit=no_fit).tick("ranker") == []
    assert list_versions(base) == [1, 2]


def test_the_decision_rule() -> None:
    kw = {"metric": "auc", "margin": 0.01, "version": 3, "stable_version": 2, "rows": 100}
    assert decide({"auc": 0.695}, {"auc": 0.70}, **kw).accept  # type: ignore[arg-type]  # inside the margin
    assert not decide({"auc": 0.68}, {"auc": 0.70}, **kw).accept  # type: ignore[arg-type]
    assert decide({"auc": 0.6}, None, **kw).accept  # type: ignore[arg-type]  # no stable: better than chance
    assert not decide({"auc": 0.5}, None, **kw).accept  # type: ignore[arg-type]
    assert not decide({}, {"auc": 0.70}, **kw).accept  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- no data, no model


def test_too_little_data_is_rejected_without_training(tmp_path: Path, models: dict[str, Path]) -> None:
    base = repository(tmp_path, models["good"])
    topic = FakeTopic([retrain()])
    t = trainer(topic, base, fit=no_fit)
    t.policy = TrainerPolicy(min_events=len(LOG) + 1)

    [rejected] = t.tick("ranker")

    assert rejected.kind == ModelUpdate.REJECTED and rejected.version == 0
    assert "too little data" in rejected.reason and f"need {len(LOG) + 1}" in rejected.reason
    assert list_versions(base) == [1]


def test_a_model_missing_from_the_config_is_rejected(tmp_path: Path) -> None:
    topic = FakeTopic([retrain()])
    t = Trainer(topic, LogSource(LOG), lambda: {}, policy=POLICY, fit=no_fit, clock=lambda: 1)
    [rejected] = t.tick("ranker")
    assert rejected.kind == ModelUpdate.REJECTED and "not in the model config file" in rejected.reason


# ---------------------------------------------------------------------------------------------- crash and resume


def test_killed_after_training_a_restarted_trainer_evaluates_the_staged_model_without_training_again(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    base = repository(tmp_path, models["bad"])
    topic = FakeTopic([retrain()], crash_on=ModelUpdate.EVALUATED)
    fits: list[Path] = []
    with pytest.raises(Crash):
        trainer(topic, base, fit=copy_of(models["good"], fits)).tick("ranker")
    assert len(fits) == 1 and list_versions(base) == [1]

    published = trainer(topic, base, fit=no_fit).tick("ranker")

    assert kinds(published) == ["EVALUATED", "DEPLOY_REQUESTED"] and published[-1].version == 2
    assert kinds(topic.messages).count("TRAINING_STARTED") == 1
    assert len({u.update_id for u in topic.messages}) == len(topic.messages)
    assert list_versions(base) == [1, 2] and not [p for p in base.iterdir() if p.name.startswith(".")]


def test_killed_after_moving_the_version_into_place_a_restart_only_requests_the_deploy(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    base = repository(tmp_path, models["bad"])
    topic = FakeTopic([retrain()], crash_on=ModelUpdate.DEPLOY_REQUESTED)
    with pytest.raises(Crash):
        trainer(topic, base, fit=copy_of(models["good"], [])).tick("ranker")
    assert list_versions(base) == [1, 2]

    scored: list[Path] = []

    def no_score(path: Path, split: HoldoutSplit) -> dict[str, float]:
        scored.append(path)
        return {}

    published = trainer(topic, base, fit=no_fit, score=no_score).tick("ranker")

    assert kinds(published) == ["DEPLOY_REQUESTED"] and published[0].version == 2 and scored == []
    assert list_versions(base) == [1, 2]


def test_a_rejected_candidate_interrupted_before_cleanup_leaves_no_staging_behind(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    base = repository(tmp_path, models["good"])
    topic = FakeTopic([retrain()])
    t = trainer(topic, base, fit=copy_of(models["bad"], []))
    (base / ".trainer-0123456789abcdef").mkdir()  # a staging directory of a command answered long ago
    published = t.tick("ranker")
    assert kinds(published)[-1] == "REJECTED"
    assert sorted(p.name for p in base.iterdir()) == ["1"]


# ---------------------------------------------------------------------------------------------- the store


def _feedback(rows: Sequence[tuple[str, str, str, str, str, str, int]]) -> Mapping[str, list[object]]:
    cols: dict[str, list[object]] = {k: [] for k in ("event_id", "request_id", "user_id", "item_id", "category_id")}
    cols["behavior"], cols["ts_us"] = [], []
    for event_id, request_id, user, item, category, behavior, ts_us in rows:
        for key, value in zip(cols, (event_id, request_id, user, item, category, behavior, ts_us), strict=True):
            cols[key].append(value)
    return cols


def test_store_behaviors_reads_the_interactions_with_one_models_rankings(chdb_store: Store) -> None:  # noqa: F811
    start_s = (int(time.time()) // 60) * 60 - 3600  # inside the tables' 30-day TTL (expired rows are not kept)
    t0 = start_s * S
    chdb_store.insert(
        "inference_events",
        {
            "received_us": [t0, t0, t0],
            "event_id": ["e1", "e2", "e3"],
            "request_id": ["r1", "r2", "r-other"],
            "model": ["ranker", "ranker", "other"],
            "version": [1, 1, 1],
        },
    )
    rows = [
        ("f1", "r1", "7", "1001", "3", "impression", t0 + 1 * S),  # not an interaction
        ("f2", "r1", "7", "1001", "3", "click", t0 + 2 * S),
        ("f3", "r1", "7", "1001", "3", "cart", t0 + 3 * S),
        ("f4", "r2", "8", "1002", "", "buy", t0 + 4 * S),  # no category: 0
        ("f4", "r2", "8", "1002", "", "buy", t0 + 4 * S),  # the same event again (before a merge)
        ("f5", "r2", "u-9", "1003", "3", "click", t0 + 5 * S),  # a user id the models cannot take
        ("f6", "r-other", "7", "1004", "3", "click", t0 + 6 * S),  # another model's ranking
        ("f7", "r2", "8", "1005", "3", "click", t0 + 900 * S),  # after the period
    ]
    chdb_store.insert("feedback_events", _feedback(rows))

    got = store_behaviors(chdb_store, "ranker", t0, t0 + 600 * S)

    b = got.behaviors
    assert list(zip(b.user.tolist(), b.item.tolist(), b.category.tolist(), b.behavior.tolist(), strict=True)) == [
        (7, 1001, 3, PV), (7, 1001, 3, CART), (8, 1002, 0, BUY),
    ]  # fmt: skip
    assert b.timestamp.tolist() == [start_s + 2, start_s + 3, start_s + 4] and got.skipped == 1
    with pytest.raises(InsufficientDataError) as err:
        store_behaviors(chdb_store, "ranker", t0, t0 + 600 * S, min_events=4)
    assert (err.value.model, err.value.events, err.value.required) == ("ranker", 3, 4)


def test_the_decision_rule_doctest() -> None:
    import doctest

    import rollout.trainer

    assert doctest.testmod(rollout.trainer).failed == 0


def test_the_command_line_builds_the_policy_and_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    from recwatch.cli import build_parser, main

    args = build_parser().parse_args(
        ["trainer", "--model_config_file", "m.config", "--window-minutes", "90", "--margin", "0.01", "--epochs", "2"]
    )
    assert (args.model_config_file, args.window_minutes, args.margin, args.epochs) == (Path("m.config"), 90, 0.01, 2)
    assert main(["trainer", "--model_config_file", "m.config", "--holdout-fraction", "1.5"]) == 2
    assert "trainer options" in capsys.readouterr().err
