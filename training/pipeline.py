"""Train one model on a behaviour log, export it as a model version, and measure it on the holdout.

The same path serves ``python -m training train`` and ``python -m training report``. Metrics are computed
through the exported SavedModel's signature, i.e. on exactly what the model server will run.
Keras is imported only when a model is trained.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from training.evaluate import Quality, RankingTask, SavedModelScorer, evaluate, ranking_task
from training.export import write_version
from training.samples import CtrSamples, ItemVocab, ctr_samples
from training.synthetic import generate
from training.taobao import Behaviors, holdout_cutoff, load_userbehavior, split_by_time

ModelKind = Literal["ctr", "sasrec"]
MODELS: Final[tuple[ModelKind, ...]] = ("ctr", "sasrec")
HOLDOUT_FRACTION: Final = 0.2


@dataclass(frozen=True)
class Holdout:
    """A time split and the evaluation sets built on it (fixed seeds, so every model sees the same ones)."""

    train: Behaviors
    holdout: Behaviors
    cutoff: int
    task: RankingTask
    ctr: CtrSamples

    @classmethod
    def build(cls, behaviors: Behaviors, *, fraction: float = HOLDOUT_FRACTION, max_len: int = 50) -> Holdout:
        cutoff = holdout_cutoff(behaviors, fraction)
        train, holdout = split_by_time(behaviors, cutoff)
        task = ranking_task(
            train, holdout, ItemVocab.from_behaviors(train), rng=np.random.default_rng(0), max_len=max_len
        )
        ctr = ctr_samples(holdout, negatives=4, rng=np.random.default_rng(1))
        return cls(train, holdout, cutoff, task, ctr)


@dataclass(frozen=True)
class Trained:
    model: ModelKind
    path: Path
    params: int
    train_rows: int  # training examples: CTR samples, or sequence windows
    seconds: float  # building samples and fitting, not exporting
    quality: Quality | None


def load_data(spec: str, *, seed: int = 0, synthetic_users: int = 20_000) -> tuple[Behaviors, str]:
    """``spec`` is ``synthetic`` or a UserBehavior.csv file or directory; returns the rows and a one-line summary."""
    if spec == "synthetic":
        b = generate(synthetic_users, seed=seed)
        return b, f"synthetic: {synthetic_users} users, {len(b)} events (seed {seed})"
    result = load_userbehavior(spec)
    summary = f"{spec}: {len(result.behaviors)} events"
    if result.malformed:
        summary += f", {result.malformed} malformed lines skipped (first: {result.examples[0]})"
    if result.duplicates:
        summary += f", {result.duplicates} duplicate rows dropped"
    return result.behaviors, summary


def train_and_export(
    kind: ModelKind,
    train: Behaviors,
    base_path: Path,
    model_name: str,
    version: int,
    *,
    seed: int = 0,
    epochs: int | None = None,
    verbose: int | str = "auto",
    holdout: Holdout | None = None,
) -> Trained:
    """Train ``kind`` on ``train``, write ``<base_path>/<model_name>/<version>/`` and evaluate it on ``holdout``."""
    started = time.monotonic()
    params, rows, write = fit_model(kind, train, seed=seed, epochs=epochs, verbose=verbose)
    seconds = time.monotonic() - started
    path = write_version(base_path, model_name, version, write)
    quality = None
    if holdout is not None:
        scorer = SavedModelScorer(path)
        quality = evaluate(scorer.rank_scores, scorer.ctr_scores if scorer.is_ctr else None, holdout.task, holdout.ctr)
    return Trained(kind, path, params, rows, seconds, quality)


def fit_model(
    kind: ModelKind,
    train: Behaviors,
    *,
    seed: int = 0,
    epochs: int | None = None,
    verbose: int | str = "auto",
    callbacks: Sequence[Any] = (),
) -> tuple[int, int, Callable[[Path], None]]:
    """Train ``kind`` on ``train`` (``callbacks``: Keras callbacks, e.g. progress per epoch); returns the
    parameter count, the training examples and ``write(directory)``, which exports the SavedModel there."""
    if kind == "ctr":
        return _train_ctr(train, seed=seed, epochs=epochs, verbose=verbose, callbacks=callbacks)
    if kind == "sasrec":
        return _train_sasrec(train, seed=seed, epochs=epochs, verbose=verbose, callbacks=callbacks)
    raise ValueError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")


def _train_ctr(
    train: Behaviors, *, seed: int, epochs: int | None, verbose: int | str, callbacks: Sequence[Any]
) -> tuple[int, int, Any]:
    from training.ctr import CtrConfig, build_ctr_model, export_ctr, fit_ctr
    from training.features import CountFeatures

    config = CtrConfig() if epochs is None else dataclasses.replace(CtrConfig(), epochs=epochs)
    # Counts from the first half, samples from the second (training.features says why).
    counted, sampled = split_by_time(train, holdout_cutoff(train, 0.5))
    samples = ctr_samples(sampled, negatives=config.negatives, rng=np.random.default_rng(seed))
    model = build_ctr_model(config, seed=seed)
    fit_ctr(model, samples, CountFeatures(counted), config, verbose=verbose, callbacks=callbacks)
    return _count_params(model), len(samples), lambda d: export_ctr(model, CountFeatures(train), d)


def _train_sasrec(
    train: Behaviors, *, seed: int, epochs: int | None, verbose: int | str, callbacks: Sequence[Any]
) -> tuple[int, int, Any]:
    from training.samples import next_item_windows, user_sequences
    from training.sasrec import SasrecConfig, build_sasrec, export_sasrec, fit_sasrec

    config = SasrecConfig() if epochs is None else dataclasses.replace(SasrecConfig(), epochs=epochs)
    vocab = ItemVocab.from_behaviors(train)
    inputs, targets = next_item_windows(user_sequences(train), vocab, config.max_len)
    if len(inputs) == 0:
        raise ValueError("no user has two or more distinct consecutive items to learn from")
    model = build_sasrec(vocab, config, seed=seed)
    fit_sasrec(model, inputs, targets, verbose=verbose, callbacks=callbacks)
    return _count_params(model), len(inputs), lambda d: export_sasrec(model, vocab, d)


def _count_params(model: Any) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))
