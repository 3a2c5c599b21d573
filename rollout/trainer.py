"""The trainer: a ``RETRAIN_REQUESTED`` command becomes a new model version, or a refusal.

For one command (:meth:`Trainer.handle`), with ``stable`` the model's version labelled ``stable`` (else its latest):

1. reads the model's recent interactions from the store (``window_s`` up to now: :mod:`training.from_store`) and
   splits them by time: the last ``holdout_fraction`` is the holdout (:class:`training.retrain.HoldoutSplit`);
2. ``TRAINING_STARTED`` (``version`` = the highest version directory + 1), trains the same kind of model as
   stable (the CTR ranker when there is none) into a hidden staging directory beside the versions, one
   ``TRAINING_PROGRESS`` per epoch, ``TRAINING_FINISHED``;
3. scores candidate and stable through their SavedModel signatures on the same holdout: ``EVALUATED`` with both
   sets of metrics (``auc``, ``hit_rate_at_10``, ``ndcg_at_10``; stable's prefixed ``stable_``);
4. if the candidate's primary metric (AUC for the CTR ranker, HitRate@10 for the sequence model) is not worse
   than stable's by more than ``margin``, renames the staging directory to ``<base_path>/<version>/`` and
   publishes ``DEPLOY_REQUESTED`` for the rollout controller; otherwise publishes ``REJECTED`` with both numbers
   and deletes the staging directory, so **a worse candidate never becomes a version directory**. Too little
   data or a failed training is a ``REJECTED`` with version 0 and the reason.

Every event has ``actor`` ``trainer``, ``caused_by`` = the command's ``update_id``, ``parent_version`` = stable,
and a deterministic ``update_id`` (command, kind, epoch). A command is done once a ``DEPLOY_REQUESTED`` or
``REJECTED`` names it. Crash safety: a trainer restarted mid-way replays the topic and resumes the command — with
the version, stable version and data period of its ``TRAINING_STARTED``; without training again if the staging
directory holds a finished SavedModel; and only publishing ``DEPLOY_REQUESTED`` if the version was already moved
into place. Events already on the topic are not published twice.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from rollout.reconcile import Topic
from schemas import ModelUpdate
from training.errors import TrainingError, VersionExistsError
from training.export import SAVED_MODEL_FILE
from training.from_store import MAX_ROWS
from training.pipeline import ModelKind
from training.retrain import (
    CHANCE,
    PRIMARY_METRIC,
    FitResult,
    HoldoutSplit,
    IncompatibleModelError,
    Progress,
    fit_candidate,
    model_kind,
    score_saved_model,
)
from training.taobao import Behaviors

log = logging.getLogger(__name__)

ACTOR: Final = "trainer"
DECISIONS: Final = frozenset((ModelUpdate.DEPLOY_REQUESTED, ModelUpdate.REJECTED))
STAGING_PREFIX: Final = ".trainer-"


@dataclass(frozen=True)
class TrainerPolicy:
    window_s: float = 24 * 3600.0  # train on the interactions of this period up to the command's handling
    holdout_fraction: float = 0.2  # the latest share of them is the holdout
    min_events: int = 1000  # fewer usable interactions: REJECTED, nothing trained
    margin: float = 0.005  # a candidate may be this much worse than stable on the primary metric (AUC, HR@10)
    epochs: int | None = None  # None: the model's default (training/ctr.py, training/sasrec.py)
    seed: int = 0
    default_kind: ModelKind = "ctr"  # when there is no stable version to copy the kind from
    max_rows: int = MAX_ROWS

    def __post_init__(self) -> None:
        if self.window_s <= 0 or not 0.0 < self.holdout_fraction < 1.0 or self.margin < 0 or self.min_events < 1:
            raise ValueError(f"invalid trainer policy: {self}")


@dataclass(frozen=True)
class ModelDir:
    """A model of the TF Serving config: its ``base_path`` (version subdirectories) and stable version (0: none)."""

    name: str
    base_path: Path
    stable: int


class BehaviorSource(Protocol):
    def behaviors(self, model: str, since_us: int, until_us: int, *, min_events: int) -> Behaviors:
        """The model's interactions in ``[since_us, until_us)``, time order; raises TrainingError if too few."""
        ...


Fit = Callable[[ModelKind, Behaviors, Path, Progress], FitResult]
Score = Callable[[Path, HoldoutSplit], dict[str, float]]
KindOf = Callable[[Path], ModelKind | None]


def event_id(command_id: str, kind: int, n: int = 0) -> str:
    raw = f"trainer/{command_id}/{ModelUpdate.Kind.Name(kind)}/{n}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def answered(updates: Iterable[ModelUpdate]) -> set[str]:
    """The ``update_id`` of every command a trainer decision (DEPLOY_REQUESTED or REJECTED) names."""
    return {u.caused_by for u in updates if u.actor == ACTOR and u.kind in DECISIONS}


def pending_retrains(updates: Sequence[ModelUpdate]) -> list[ModelUpdate]:
    """The retrain commands (topic order) that no trainer decision answers yet."""
    done = answered(updates)
    return [u for u in updates if u.kind == ModelUpdate.RETRAIN_REQUESTED and u.update_id not in done]


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str


def decide(
    candidate: Mapping[str, float], stable: Mapping[str, float] | None, *, metric: str, margin: float, version: int,
    stable_version: int, rows: int, why_no_stable: str = "",
) -> Decision:  # fmt: skip
    """Publish the candidate when its ``metric`` is at least stable's minus ``margin`` — or, with nothing to
    compare with, better than chance.

    >>> d = decide({"auc": 0.61}, {"auc": 0.70}, metric="auc", margin=0.005, version=3, stable_version=2, rows=500)
    >>> d.accept
    False
    >>> print(d.reason)
    candidate v3 auc 0.6100 < stable v2 auc 0.7000 - margin 0.005 on the same holdout (500 rows): not published
    """
    value = candidate.get(metric)
    if value is None:
        return Decision(False, f"candidate v{version} has no {metric} on the holdout: not published")
    if stable is not None and metric in stable:
        base = stable[metric]
        ok = value >= base - margin
        relation = ">=" if ok else "<"
        verdict = "published" if ok else "not published"
        return Decision(
            ok,
            f"candidate v{version} {metric} {value:.4f} {relation} stable v{stable_version} {metric} {base:.4f} "
            f"- margin {margin:g} on the same holdout ({rows} rows): {verdict}",
        )
    chance = CHANCE[metric]
    ok = value > chance
    why = why_no_stable or "no stable version"
    return Decision(
        ok,
        f"{why}; candidate v{version} {metric} {value:.4f} {'>' if ok else '<='} chance {chance:g} "
        f"({rows} rows): {'published' if ok else 'not published'}",
    )


class Repository:
    """One model's version directories; candidates are staged in hidden siblings that servers ignore."""

    def __init__(self, base_path: Path) -> None:
        self.base_path = base_path

    def version_path(self, version: int) -> Path:
        return self.base_path / str(version)

    def has(self, version: int) -> bool:
        return version > 0 and (self.version_path(version) / SAVED_MODEL_FILE).is_file()

    def next_version(self) -> int:
        """One above every numbered directory (complete or not): never an existing name."""
        try:
            names = [p.name for p in self.base_path.iterdir()]
        except FileNotFoundError:
            names = []
        return max((int(n) for n in names if n.isascii() and n.isdigit()), default=0) + 1

    def staging(self, command_id: str) -> Path:
        return self.base_path / (STAGING_PREFIX + hashlib.blake2b(command_id.encode(), digest_size=8).hexdigest())

    @staticmethod
    def complete(staging: Path) -> bool:
        return (staging / SAVED_MODEL_FILE).is_file()

    def publish(self, staging: Path, version: int) -> Path:
        """Rename the staged SavedModel to the version directory (atomic: the same directory)."""
        target = self.version_path(version)
        if target.exists():
            raise VersionExistsError(target)
        staging.rename(target)
        return target

    def sweep(self, keep: set[Path]) -> None:
        """Delete staging directories (and their partial exports) of commands that are no longer pending."""
        try:
            entries = list(self.base_path.iterdir())
        except FileNotFoundError:
            return
        for p in entries:
            if p.name.startswith(STAGING_PREFIX) and p.with_name(p.name.removesuffix(".partial")) not in keep:
                shutil.rmtree(p, ignore_errors=True)


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class Trainer:
    def __init__(
        self,
        topic: Topic,
        data: BehaviorSource,
        models: Callable[[], Mapping[str, ModelDir]],
        *,
        policy: TrainerPolicy | None = None,
        fit: Fit | None = None,
        score: Score = score_saved_model,
        kind_of: KindOf = model_kind,
        clock: Callable[[], int] = wall_clock_us,
    ) -> None:
        self.topic = topic
        self.data = data
        self.models = models
        self.policy = policy or TrainerPolicy()
        self.fit: Fit = fit or self._default_fit
        self.score = score
        self.kind_of = kind_of
        self.clock = clock

    def _default_fit(self, kind: ModelKind, train: Behaviors, directory: Path, progress: Progress) -> FitResult:
        return fit_candidate(kind, train, directory, progress, epochs=self.policy.epochs, seed=self.policy.seed)

    def tick(self, model: str) -> list[ModelUpdate]:
        """Handle the model's pending retrain commands in topic order; returns what was published."""
        pending = pending_retrains(self.topic.updates(model))
        target = self.models().get(model)
        if target is not None:
            repo = Repository(target.base_path)
            repo.sweep({repo.staging(c.update_id) for c in pending})
        published: list[ModelUpdate] = []
        for command in pending:
            published += self.handle(command)
        return published

    def handle(self, command: ModelUpdate) -> list[ModelUpdate]:
        """Answer one retrain command (see the module docstring); returns the events published now."""
        run = _Run(self, command)
        run.go()
        return run.published


class _Run:
    """One command's handling: the events it publishes, each at most once."""

    def __init__(self, trainer: Trainer, command: ModelUpdate) -> None:
        self.t = trainer
        self.cmd = command
        self.on_topic = {u.update_id: u for u in trainer.topic.updates(command.model)}
        self.published: list[ModelUpdate] = []
        self.version = 0
        self.stable = 0

    def emit(self, kind: int, reason: str, *, version: int | None = None, n: int = 0,
             metrics: Mapping[str, float] | None = None, ts_us: int | None = None) -> ModelUpdate:  # fmt: skip
        uid = event_id(self.cmd.update_id, kind, n)
        existing = self.on_topic.get(uid)
        if existing is not None:
            return existing
        update = ModelUpdate(
            update_id=uid,
            ts_us=self.t.clock() if ts_us is None else ts_us,
            model=self.cmd.model,
            kind=kind,  # type: ignore[arg-type]  # an int of the enum
            version=self.version if version is None else version,
            parent_version=self.stable,
            reason=reason,
            actor=ACTOR,
            caused_by=self.cmd.update_id,
        )
        update.metrics.update(metrics or {})
        self.t.topic.publish(update)
        self.on_topic[uid] = update
        self.published.append(update)
        log.info("%s %s v%d: %s", ModelUpdate.Kind.Name(kind), update.model, update.version, reason)
        return update

    def go(self) -> None:
        cmd, policy = self.cmd, self.t.policy
        if cmd.update_id in answered(self.on_topic.values()):
            return
        target = self.t.models().get(cmd.model)
        if target is None:
            self.emit(ModelUpdate.REJECTED, f"no retraining: model {cmd.model!r} is not in the model config file")
            return
        repo = Repository(target.base_path)
        started = self.on_topic.get(event_id(cmd.update_id, ModelUpdate.TRAINING_STARTED))
        self.version = started.version if started else repo.next_version()
        self.stable = started.parent_version if started else target.stable
        evaluated = self.on_topic.get(event_id(cmd.update_id, ModelUpdate.EVALUATED))
        if evaluated is not None and evaluated.metrics.get("accepted") == 1.0 and repo.has(self.version):
            self.emit(ModelUpdate.DEPLOY_REQUESTED, evaluated.reason)  # moved into place, then the crash
            return
        until_us = started.ts_us if started else self.t.clock()
        since_us = until_us - int(policy.window_s * 1_000_000)
        stable_path = repo.version_path(self.stable) if repo.has(self.stable) else None
        kind = (self.t.kind_of(stable_path) if stable_path else None) or policy.default_kind
        try:
            behaviors = self.t.data.behaviors(cmd.model, since_us, until_us, min_events=policy.min_events)
            split = HoldoutSplit.build(behaviors, fraction=policy.holdout_fraction, seed=policy.seed)
        except TrainingError as exc:
            self.emit(ModelUpdate.REJECTED, f"no retraining: {exc}", version=0)
            return
        self.emit(
            ModelUpdate.TRAINING_STARTED,
            f"training {kind} v{self.version} on {len(split.train)} events; holdout: {len(split.holdout)} events "
            f"from {split.cutoff} (Unix s)",
            metrics={"train_events": len(split.train), "holdout_events": len(split.holdout)},
            ts_us=until_us,  # the end of the data period: a resumed run reads the same period
        )
        staging = repo.staging(cmd.update_id)
        if not self._train(kind, split, staging):
            return
        self._evaluate_and_decide(kind, split, repo, staging, stable_path)

    def _train(self, kind: ModelKind, split: HoldoutSplit, staging: Path) -> bool:
        if Repository.complete(staging):  # trained before a restart
            self.emit(ModelUpdate.TRAINING_FINISHED, f"{kind} v{self.version} trained (found after a restart)")
            return True

        def progress(epoch: int, epochs: int, logs: Mapping[str, float]) -> None:
            metrics = {"epoch": float(epoch), "epochs": float(epochs), **{f"train_{k}": v for k, v in logs.items()}}
            shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items())
            self.emit(ModelUpdate.TRAINING_PROGRESS, f"epoch {epoch}/{epochs}: {shown}", n=epoch, metrics=metrics)

        shutil.rmtree(staging, ignore_errors=True)
        try:
            result = self.t.fit(kind, split.train, staging, progress)
        except (TrainingError, ValueError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.emit(ModelUpdate.REJECTED, f"training failed: {exc}", version=0)
            return False
        self.emit(
            ModelUpdate.TRAINING_FINISHED,
            f"{kind} v{self.version}: {result.rows} examples, {result.params} parameters, {result.seconds:.1f} s",
            metrics={"train_rows": result.rows, "params": result.params, "seconds": result.seconds},
        )
        return True

    def _evaluate_and_decide(
        self, kind: ModelKind, split: HoldoutSplit, repo: Repository, staging: Path, stable_path: Path | None
    ) -> None:
        policy = self.t.policy
        candidate = self.t.score(staging, split)
        baseline: dict[str, float] | None = None
        why_no_stable = "" if stable_path else "no stable version"
        if stable_path is not None:
            try:
                baseline = self.t.score(stable_path, split)
            except IncompatibleModelError as exc:
                why_no_stable = f"stable v{self.stable} cannot be compared ({exc})"
        metric = PRIMARY_METRIC[kind]
        rows = len(split.ctr) if metric == "auc" else len(split.task or ())
        decision = decide(
            candidate, baseline, metric=metric, margin=policy.margin, version=self.version,
            stable_version=self.stable, rows=rows, why_no_stable=why_no_stable,
        )  # fmt: skip
        metrics = {**candidate, **{f"stable_{k}": v for k, v in (baseline or {}).items()}}
        metrics.update(
            accepted=float(decision.accept), margin=policy.margin, holdout_ctr_rows=len(split.ctr),
            holdout_queries=len(split.task or ()),
        )  # fmt: skip
        self.emit(ModelUpdate.EVALUATED, decision.reason, metrics=metrics)
        if not decision.accept:
            self.emit(ModelUpdate.REJECTED, decision.reason)
            shutil.rmtree(staging, ignore_errors=True)
            return
        try:
            repo.publish(staging, self.version)
        except VersionExistsError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.emit(ModelUpdate.REJECTED, f"not published: {exc} (made by someone else meanwhile)")
            return
        self.emit(ModelUpdate.DEPLOY_REQUESTED, decision.reason)
