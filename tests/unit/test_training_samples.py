"""Samples built from behaviour logs: CTR positives and negatives, sequences, windows, vocabulary, counts."""

from __future__ import annotations

import numpy as np

from training.features import CountFeatures
from training.samples import OOV, PAD, ItemVocab, ctr_samples, next_item_windows, user_sequences
from training.synthetic import generate
from training.taobao import Behaviors


def test_ctr_positives_are_distinct_interactions_and_negatives_untouched_items() -> None:
    b = generate(3000, seed=4)
    s = ctr_samples(b, negatives=4, rng=np.random.default_rng(0))
    touched = set(zip(b.user.tolist(), b.item.tolist(), strict=True))
    pos = s.label == 1
    assert pos.sum() == len(touched)
    assert set(zip(s.user[pos].tolist(), s.item[pos].tolist(), strict=True)) == touched
    negatives = set(zip(s.user[~pos].tolist(), s.item[~pos].tolist(), strict=True))
    assert not negatives & touched
    assert (~pos).sum() >= 3.9 * pos.sum()  # a few clashing draws may be dropped, not more
    items, cats = b.catalog()
    assert np.array_equal(s.category, cats[np.searchsorted(items, s.item)])  # every sample has its item's category


def test_sequences_are_in_time_order_with_consecutive_repeats_collapsed() -> None:
    b = Behaviors.from_rows(
        [(2, 30, 1, "pv", 5), (1, 10, 1, "pv", 3), (1, 10, 1, "cart", 4), (1, 20, 1, "pv", 1), (1, 10, 1, "buy", 9)]
    )
    seqs = user_sequences(b)
    assert seqs.users.tolist() == [1, 2]
    assert seqs.items[seqs.offsets[0] : seqs.offsets[1]].tolist() == [20, 10]  # 10 at t=3,4,9 is one step
    assert seqs.timestamps[seqs.offsets[0] : seqs.offsets[1]].tolist() == [1, 3]


def test_windows_make_every_transition_a_target_once() -> None:
    items = list(range(101, 113))  # 12 items, 11 transitions
    b = Behaviors.from_rows([(1, item, 1, "pv", t) for t, item in enumerate(items)])
    vocab = ItemVocab.from_behaviors(b)
    inputs, targets = next_item_windows(user_sequences(b), vocab, max_len=5)
    pairs = [
        (i, t)
        for row_in, row_out in zip(inputs, targets, strict=True)
        for i, t in zip(row_in, row_out, strict=True)
        if t
    ]
    assert len(pairs) == 11
    assert all(t == i + 1 for i, t in pairs)  # consecutive items have consecutive indices here
    assert (inputs[:, -1] != PAD).all()  # left-padded: the newest item is last


def test_vocabulary_keeps_padding_and_maps_unknown_ids_to_oov() -> None:
    b = Behaviors.from_rows([(1, 50, 7, "pv", 1), (1, 40, 8, "pv", 2)])
    vocab = ItemVocab.from_behaviors(b)
    assert vocab.lookup([0, 40, 50, 60]).tolist() == [PAD, 2, 3, OOV]
    assert vocab.category_of([40, 60]).tolist() == [8, 0]
    assert vocab.category_index[vocab.lookup([50, 40])].tolist() == [2, 3]  # categories 7 and 8 are indices 2 and 3


def test_count_features_are_per_100k_events_and_zero_for_unknown_ids() -> None:
    log = Behaviors.from_rows(
        [(1, 10, 7, "pv", 100), (2, 10, 7, "pv", 200), (3, 11, 8, "pv", 300), (4, 12, 8, "pv", 9)]
    )
    values = CountFeatures(log).values(np.array([10, 11, 99]), np.array([8, 7, 5]))
    assert np.expm1(values).round().tolist() == [[50_000, 50_000], [25_000, 50_000], [0, 0]]
