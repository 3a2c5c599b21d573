"""Offline metrics against hand-computed values, and the sampled ranking protocol's queries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate import (
    Popularity,
    auc,
    evaluate,
    hit_rate_at_k,
    ndcg_at_k,
    rank_of_first,
    ranking_task,
)
from training.samples import ItemVocab, ctr_samples
from training.taobao import Behaviors, split_by_time


def test_auc_counts_pairs_and_ties_as_half() -> None:
    # positives 0.9, 0.4; negatives 0.1, 0.4: pairs (0.9>0.1) (0.9>0.4) (0.4>0.1) (0.4=0.4 -> 1/2) = 3.5 / 4
    assert auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.4]) == pytest.approx(0.875)
    assert auc([1, 1, 0], [0.2, 0.3, 0.9]) == 0.0
    assert auc([0, 1], [5.0, 5.0]) == 0.5
    with pytest.raises(ValueError):
        auc([1, 1], [0.1, 0.2])


def test_auc_matches_the_pairwise_definition_on_random_data() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 10, 200).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auc(y, s) == pytest.approx(pairwise)


def test_rank_of_first_counts_higher_scores_and_breaks_ties_at_random() -> None:
    rng = np.random.default_rng(0)
    assert rank_of_first([[0.5, 0.9, 0.1, 0.7], [3.0, 1.0, 2.0, 0.0]], rng).tolist() == [2, 0]
    tied = rank_of_first(np.zeros((4000, 100)), rng)
    assert tied.min() >= 0 and tied.max() <= 99
    assert hit_rate_at_k(tied) == pytest.approx(0.1, abs=0.02)  # a constant scorer is random, not perfect


def test_hit_rate_and_ndcg_by_hand() -> None:
    ranks = [0, 1, 9, 10, 50]
    assert hit_rate_at_k(ranks, 10) == pytest.approx(3 / 5)
    expected = (1.0 + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert ndcg_at_k(ranks, 10) == pytest.approx(expected)
    assert ndcg_at_k([0, 0]) == 1.0


def tiny_log() -> Behaviors:
    rows = [(u, 1000 + i, 1 + i % 3, "pv", t) for t, (u, i) in enumerate([(u, i) for i in range(150) for u in (1, 2)])]
    # user 7 views 1003, then 1003 again (a repeat, not a next item), then 1005 and 9999 (unknown) after the cutoff
    rows += [(7, 1003, 1, "pv", 10), (7, 1003, 1, "cart", 11), (7, 1005, 3, "pv", 500), (7, 9999, 1, "pv", 501)]
    return Behaviors.from_rows(rows).sorted_by_time()


def test_ranking_queries_follow_the_sampled_protocol() -> None:
    train, holdout = split_by_time(tiny_log(), cutoff=400)
    vocab = ItemVocab.from_behaviors(train)
    task = ranking_task(train, holdout, vocab, rng=np.random.default_rng(0), max_len=4)
    user7 = task.users == 7
    assert user7.sum() == 1  # 9999 is not in the vocabulary; 1003 -> 1003 is collapsed
    (row,) = np.flatnonzero(user7)
    assert task.candidates[row, 0] == 1005
    assert task.histories[row].tolist() == [0, 0, 0, 1003]
    assert task.candidates.shape[1] == 100
    assert len(set(task.candidates[row].tolist())) == 100
    assert 1003 not in task.candidates[row]  # the user's own items are not negatives
    assert np.isin(task.candidates, vocab.item_ids).all()
    assert task.candidate_categories[row, 0] == vocab.category_of([1005])[0]


def test_popularity_ranks_by_training_counts() -> None:
    train = Behaviors.from_rows([(1, 10, 1, "pv", 1), (2, 10, 1, "pv", 2), (3, 11, 1, "pv", 3)])
    assert Popularity(train).score([10, 11, 12]).tolist() == [2.0, 1.0, 0.0]


def test_evaluate_reports_none_for_metrics_a_model_does_not_have() -> None:
    train, holdout = split_by_time(tiny_log(), cutoff=400)
    task = ranking_task(train, holdout, ItemVocab.from_behaviors(train), rng=np.random.default_rng(0))
    ctr = ctr_samples(holdout, negatives=1, rng=np.random.default_rng(0))
    pop = Popularity(train)
    q = evaluate(pop.rank_scores, None, task, ctr)
    assert q.auc is None and q.hit_rate is not None and q.queries == len(task)
