"""Offline quality on a time-based holdout: AUC for CTR samples, HitRate@10 and NDCG@10 for next-item ranking.

Ranking uses the sampled protocol of the SASRec and BERT4Rec papers: for each holdout event of a user who has
at least one earlier event, the true item is ranked among itself and 99 negatives drawn uniformly from the
training vocabulary (excluding the true item and the items the user already interacted with). Only events
whose item is in the training vocabulary are queries, because no model can rank an item it never saw; the
history of a query is every earlier step of the user, training period and holdout alike (as at serving time).
Ties are broken uniformly at random with a seeded generator, so a constant scorer gets HitRate@10 of 10/100.

Sampled metrics are optimistic compared with ranking the full catalog and only comparable at the same number
of negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from training.samples import OOV, CtrSamples, ItemVocab, user_sequences
from training.taobao import Behaviors

K: Final = 10
NEGATIVES: Final = 99

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores count one half).

    >>> auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.4])
    0.875
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Average 1-based ranks over runs of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def rank_of_first(scores: npt.ArrayLike, rng: np.random.Generator) -> IntArray:
    """0-based rank of column 0 in each row of ``scores`` (higher is better), ties broken uniformly at random.

    >>> rank_of_first([[0.5, 0.9, 0.1], [0.7, 0.2, 0.3]], np.random.default_rng(0)).tolist()
    [1, 0]
    """
    s = np.asarray(scores, dtype=np.float64)
    target = s[:, :1]
    higher: IntArray = (s[:, 1:] > target).sum(axis=1)
    ties: IntArray = (s[:, 1:] == target).sum(axis=1)
    return (higher + rng.integers(0, ties + 1)).astype(np.int64)


def hit_rate_at_k(ranks: npt.ArrayLike, k: int = K) -> float:
    """Share of queries whose true item ranks in the top ``k`` (ranks are 0-based)."""
    return float(np.mean(np.asarray(ranks) < k))


def ndcg_at_k(ranks: npt.ArrayLike, k: int = K) -> float:
    """Mean of ``1 / log2(rank + 2)`` over queries, 0 for ranks at or beyond ``k`` (one relevant item per query).

    >>> round(ndcg_at_k([0, 1, 10]), 4)
    0.5436
    """
    r = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)))


@dataclass(frozen=True)
class RankingTask:
    """Queries of the sampled protocol, in raw ids. Column 0 of ``candidates`` is the true item."""

    users: IntArray  # [Q]
    histories: IntArray  # [Q, L], oldest first, left-padded with 0
    candidates: IntArray  # [Q, 1 + negatives]
    candidate_categories: IntArray  # [Q, 1 + negatives]

    def __len__(self) -> int:
        return len(self.users)


def ranking_task(
    train: Behaviors,
    holdout: Behaviors,
    vocab: ItemVocab,
    *,
    rng: np.random.Generator,
    max_len: int = 50,
    negatives: int = NEGATIVES,
) -> RankingTask:
    """Queries for the holdout as described in the module docstring; ``vocab`` is the training vocabulary."""
    if len(holdout) == 0:
        raise ValueError("empty holdout")
    if len(vocab.item_ids) <= negatives:
        raise ValueError(f"the vocabulary has {len(vocab.item_ids)} items, fewer than {negatives + 1} candidates")
    cutoff = int(holdout.timestamp.min())
    seqs = user_sequences(Behaviors.concat([train, holdout]))
    in_vocab = vocab.lookup(seqs.items) != OOV
    users, histories, candidates = [], [], []
    for k in range(len(seqs)):
        lo, hi = int(seqs.offsets[k]), int(seqs.offsets[k + 1])
        for p in range(lo + 1, hi):
            if seqs.timestamps[p] < cutoff or not in_vocab[p]:
                continue
            target = seqs.items[p]
            history = seqs.items[max(lo, p - max_len) : p]
            seen = np.append(seqs.items[lo:p], target)
            users.append(seqs.users[k])
            histories.append(np.pad(history, (max_len - len(history), 0)))
            candidates.append(np.concatenate([[target], _negatives(vocab.item_ids, seen, negatives, rng)]))
    if not users:
        raise ValueError("no holdout event has both an earlier event of its user and an item in the vocabulary")
    cand = np.stack(candidates).astype(np.int64)
    return RankingTask(
        users=np.asarray(users, dtype=np.int64),
        histories=np.stack(histories).astype(np.int64),
        candidates=cand,
        candidate_categories=vocab.category_of(cand),
    )


def _negatives(items: IntArray, exclude: IntArray, n: int, rng: np.random.Generator) -> IntArray:
    while True:
        draw = items[rng.choice(len(items), size=min(len(items), n + len(exclude)), replace=False)]
        draw = draw[~np.isin(draw, exclude)]
        if len(draw) >= n:
            return draw[:n]


@dataclass(frozen=True)
class Quality:
    """Holdout metrics of one model; ``None`` where the model cannot produce the metric."""

    auc: float | None
    hit_rate: float | None
    ndcg: float | None
    ctr_rows: int
    queries: int


def evaluate(
    rank_scores: Callable[[RankingTask], FloatArray] | None,
    ctr_scores: Callable[[CtrSamples], FloatArray] | None,
    task: RankingTask,
    ctr_holdout: CtrSamples,
    *,
    seed: int = 0,
) -> Quality:
    """AUC of ``ctr_scores`` on ``ctr_holdout`` and HitRate/NDCG@10 of ``rank_scores`` on ``task``."""
    hr = ndcg = auc_value = None
    if rank_scores is not None:
        ranks = rank_of_first(rank_scores(task), np.random.default_rng(seed))
        hr, ndcg = hit_rate_at_k(ranks), ndcg_at_k(ranks)
    if ctr_scores is not None:
        auc_value = auc(ctr_holdout.label, ctr_scores(ctr_holdout))
    return Quality(auc_value, hr, ndcg, len(ctr_holdout), len(task))


class Popularity:
    """The baseline: score an item by how often it occurs in the training log (0 for unseen items)."""

    def __init__(self, train: Behaviors) -> None:
        self._items, self._counts = np.unique(train.item, return_counts=True)

    def score(self, items: npt.ArrayLike) -> FloatArray:
        ids = np.asarray(items, dtype=np.int64)
        pos = np.clip(np.searchsorted(self._items, ids), 0, len(self._items) - 1)
        return np.where(self._items[pos] == ids, self._counts[pos], 0).astype(np.float64)

    def rank_scores(self, task: RankingTask) -> FloatArray:
        return self.score(task.candidates)

    def ctr_scores(self, samples: CtrSamples) -> FloatArray:
        return self.score(samples.item)


class SavedModelScorer:
    """Scores through an exported SavedModel's ``serving_default``, i.e. exactly what the model server runs.

    The signature decides the mode: ``user_id``/``item_id``/``category_id`` is a CTR model (it scores CTR samples
    and each (user, candidate) pair of a ranking task); ``history``/``item_id`` is a sequential model.
    """

    def __init__(self, path: Path, *, batch: int = 256) -> None:
        import tensorflow as tf

        self._root = tf.saved_model.load(str(path))  # keep alive: the signature needs its variables
        self._fn = self._root.signatures["serving_default"]
        self.inputs = set(self._fn.structured_input_signature[1])
        self._batch = batch

    @property
    def is_ctr(self) -> bool:
        return "category_id" in self.inputs

    def _call(self, **inputs: npt.NDArray[Any]) -> FloatArray:
        import tensorflow as tf

        out: Mapping[str, Any] = self._fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return np.asarray(out["scores"].numpy(), dtype=np.float64)

    def rank_scores(self, task: RankingTask) -> FloatArray:
        parts = []
        for lo in range(0, len(task), self._batch):
            sl = slice(lo, lo + self._batch)
            cand = task.candidates[sl]
            if self.is_ctr:
                users = np.repeat(task.users[sl], cand.shape[1])
                flat = self._call(
                    user_id=users, item_id=cand.ravel(), category_id=task.candidate_categories[sl].ravel()
                )
                parts.append(flat.reshape(cand.shape))
            else:
                parts.append(self._call(history=task.histories[sl], item_id=cand))
        return np.concatenate(parts)

    def ctr_scores(self, samples: CtrSamples) -> FloatArray:
        step = self._batch * 100
        return np.concatenate(
            [
                self._call(
                    user_id=samples.user[lo : lo + step],
                    item_id=samples.item[lo : lo + step],
                    category_id=samples.category[lo : lo + step],
                )
                for lo in range(0, len(samples), step)
            ]
        )
