"""Retraining a served model: the time-based holdout, a candidate trained into a directory, and the holdout
metrics of any exported version through its serving signature — candidate and stable on the same rows.

- :class:`HoldoutSplit`: the last ``fraction`` of the log (by time) is the holdout, everything before it trains.
  CTR samples of the holdout (interactions against 4 sampled negatives, seeded) give the AUC; when the holdout
  has ranking queries (users with an earlier event, items the training period knows, a vocabulary of at least
  100 items) the sampled next-item task of :mod:`training.evaluate` gives HitRate@10 and NDCG@10.
- :func:`fit_candidate`: the model kinds of :mod:`training.pipeline`, progress reported after every epoch, the
  SavedModel written beside ``directory`` and renamed into it, so a complete directory means a finished run.
- :func:`score_saved_model`: the metrics, computed by calling the exported ``serving_default`` signature.

TensorFlow is imported only inside the functions that train or load a model.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from training.errors import TrainingError
from training.evaluate import NEGATIVES, K, RankingTask, auc, hit_rate_at_k, ndcg_at_k, rank_of_first, ranking_task
from training.pipeline import ModelKind, fit_model
from training.samples import CtrSamples, ItemVocab, ctr_samples
from training.taobao import Behaviors, holdout_cutoff, split_by_time

PRIMARY_METRIC: Final[dict[str, str]] = {"ctr": "auc", "sasrec": "hit_rate_at_10"}
"""The metric a candidate of each kind is judged on (the others are reported)."""
CHANCE: Final[dict[str, float]] = {"auc": 0.5, "hit_rate_at_10": K / (1 + NEGATIVES)}
"""What a random scorer gets: the bar when there is no stable version to compare with."""
MAX_RANKING_USERS: Final = 2000  # ranking queries are built in Python, one per holdout step: bound the cost

Progress = Callable[[int, int, Mapping[str, float]], None]
"""``progress(epoch, epochs, logs)`` after each epoch (1-based), with Keras's logs (``loss``, ``auc``, …)."""


class UnusableHoldoutError(TrainingError):
    """The log cannot be split into a training period and a holdout that measures anything."""


class IncompatibleModelError(TrainingError):
    """A SavedModel whose signature is neither the CTR ranker's nor the sequence recommender's."""

    def __init__(self, path: Path, inputs: set[str]) -> None:
        super().__init__(f"{path}: signature inputs {sorted(inputs)} are neither a CTR ranker's nor a SASRec's")
        self.path = path
        self.inputs = inputs


@dataclass(frozen=True)
class HoldoutSplit:
    train: Behaviors
    holdout: Behaviors
    cutoff: int  # Unix s: holdout events are at or after it
    ctr: CtrSamples
    task: RankingTask | None  # None when the holdout has no usable ranking query

    @classmethod
    def build(
        cls, log: Behaviors, *, fraction: float = 0.2, seed: int = 0, max_ranking_users: int = MAX_RANKING_USERS
    ) -> HoldoutSplit:
        cutoff = holdout_cutoff(log, fraction)
        train, holdout = split_by_time(log, cutoff)
        if len(train) == 0 or len(holdout) == 0:
            raise UnusableHoldoutError(f"all {len(log)} events share one timestamp: no time to split at")
        ctr = ctr_samples(holdout, negatives=4, rng=np.random.default_rng(seed + 1))
        if not 0 < float(ctr.label.sum()) < len(ctr):
            raise UnusableHoldoutError(f"the holdout ({len(holdout)} events) has too few distinct items to sample")
        rng = np.random.default_rng(seed)
        users = np.unique(holdout.user)
        if len(users) > max_ranking_users:
            users = rng.choice(users, size=max_ranking_users, replace=False)
        try:
            task: RankingTask | None = ranking_task(
                train, holdout.take(np.isin(holdout.user, users)), ItemVocab.from_behaviors(train), rng=rng
            )
        except ValueError:  # a small vocabulary or no user with history: AUC only
            task = None
        return cls(train, holdout, cutoff, ctr, task)


@dataclass(frozen=True)
class FitResult:
    params: int
    rows: int  # training examples
    seconds: float


def fit_candidate(
    kind: ModelKind,
    train: Behaviors,
    directory: Path,
    progress: Progress,
    *,
    epochs: int | None = None,
    seed: int = 0,
) -> FitResult:
    """Train ``kind`` on ``train`` and export it to ``directory`` (which must not exist). Raises ValueError
    when the log cannot train that kind."""
    import keras

    class _Progress(keras.callbacks.Callback):  # type: ignore[misc]  # keras is untyped
        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            total = int(self.params.get("epochs") or epoch + 1)
            progress(epoch + 1, total, {k: float(v) for k, v in (logs or {}).items()})

    started = time.monotonic()
    params, rows, write = fit_model(kind, train, seed=seed, epochs=epochs, verbose=0, callbacks=[_Progress()])
    seconds = time.monotonic() - started
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    partial.rename(directory)
    return FitResult(params, rows, seconds)


def model_kind(path: Path) -> ModelKind | None:
    """``ctr`` or ``sasrec`` from the SavedModel's signature, None for anything else (e.g. the tiny test model)."""
    from training.evaluate import SavedModelScorer

    scorer = SavedModelScorer(path)
    if scorer.is_ctr:
        return "ctr"
    return "sasrec" if "history" in scorer.inputs else None


def score_saved_model(path: Path, split: HoldoutSplit) -> dict[str, float]:
    """``auc`` (CTR signatures) and ``hit_rate_at_10``/``ndcg_at_10`` (when the split has ranking queries) of the
    SavedModel at ``path`` on ``split``'s holdout. Raises :class:`IncompatibleModelError`."""
    from training.evaluate import SavedModelScorer

    scorer = SavedModelScorer(path)
    if not scorer.is_ctr and "history" not in scorer.inputs:
        raise IncompatibleModelError(path, scorer.inputs)
    out: dict[str, float] = {}
    if scorer.is_ctr:
        out["auc"] = auc(split.ctr.label, scorer.ctr_scores(split.ctr))
    if split.task is not None:
        ranks = rank_of_first(scorer.rank_scores(split.task), np.random.default_rng(0))
        out[f"hit_rate_at_{K}"] = hit_rate_at_k(ranks)
        out[f"ndcg_at_{K}"] = ndcg_at_k(ranks)
    return out
