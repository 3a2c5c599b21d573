"""Training and evaluation samples built from behaviour logs, which have no impressions.

- CTR samples (:func:`ctr_samples`): every distinct (user, item) pair with any behaviour (pv, cart, fav, buy) is
  a positive: the user chose to look at the item. Each positive gets ``negatives`` items drawn uniformly from
  the distinct items of the same log (the items on display in that period) that the user did not touch, as
  stand-ins for impressions that were not clicked. Predicted probabilities are therefore relative to that
  1 : ``negatives`` mix, not a real click-through rate.
- Sequences (:func:`user_sequences`): each user's items in time order, with consecutive repeats of the same
  item collapsed (pv then cart of one item is one step, not a "next item").
- :class:`ItemVocab`: the items a model knows, with index 0 for padding and 1 for unknown items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from training.taobao import Behaviors

PAD: Final = 0
OOV: Final = 1

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ItemVocab:
    """Item ids (ascending) mapped to indices ``2 .. len(ids) + 1``; ``category_index[i]`` is index ``i``'s
    category index (0 padding, 1 unknown, then ``2 ..`` for ``category_ids``)."""

    item_ids: IntArray
    item_category_ids: IntArray  # raw category of each item in item_ids
    category_ids: IntArray
    category_index: npt.NDArray[np.int32]

    @classmethod
    def from_behaviors(cls, b: Behaviors) -> ItemVocab:
        items, cats = b.catalog()
        category_ids, cat_pos = np.unique(cats, return_inverse=True)
        category_index = np.concatenate([[PAD, OOV], cat_pos + 2]).astype(np.int32)
        return cls(items, cats, category_ids, category_index)

    @property
    def size(self) -> int:
        """Number of indices including padding and unknown."""
        return len(self.item_ids) + 2

    @property
    def category_size(self) -> int:
        return len(self.category_ids) + 2

    def lookup(self, ids: npt.ArrayLike) -> IntArray:
        """Indices of raw item ids: 0 stays padding, ids not in the vocabulary become ``OOV``."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.item_ids, ids), 0, max(0, len(self.item_ids) - 1))
        found = (self.item_ids[pos] == ids) if len(self.item_ids) else np.zeros(ids.shape, dtype=bool)
        return np.where(ids == 0, PAD, np.where(found, pos + 2, OOV)).astype(np.int64)

    def category_of(self, ids: npt.ArrayLike) -> IntArray:
        """Raw category ids of raw item ids in the vocabulary (0 for unknown items)."""
        index = self.lookup(ids)
        return np.where(index >= 2, self.item_category_ids[np.maximum(index - 2, 0)], 0)


@dataclass(frozen=True)
class CtrSamples:
    """Parallel columns; ``label`` is 1 for an interaction and 0 for a sampled negative."""

    user: IntArray
    item: IntArray
    category: IntArray
    label: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.label)


def ctr_samples(b: Behaviors, *, negatives: int, rng: np.random.Generator) -> CtrSamples:
    """Positives and sampled negatives as described in the module docstring, shuffled."""
    if negatives < 0:
        raise ValueError(f"negatives must be >= 0, got {negatives}")
    touched, rows = np.unique(_pair_keys(b.user, b.item), return_index=True)
    users, items = b.user[rows], b.item[rows]
    catalog_items, catalog_cats = b.catalog()
    neg_users = np.repeat(users, negatives)
    draw = rng.integers(0, len(catalog_items), size=len(neg_users))
    # A drawn item the user did touch is redrawn a few times; the few left after that are dropped.
    for _ in range(4):
        clash = np.isin(_pair_keys(neg_users, catalog_items[draw]), touched)
        if not clash.any():
            break
        draw[clash] = rng.integers(0, len(catalog_items), size=int(clash.sum()))
    keep = ~np.isin(_pair_keys(neg_users, catalog_items[draw]), touched)
    user = np.concatenate([users, neg_users[keep]])
    item = np.concatenate([items, catalog_items[draw[keep]]])
    category = np.concatenate([b.category[rows], catalog_cats[draw[keep]]])
    label = np.concatenate([np.ones(len(users)), np.zeros(int(keep.sum()))]).astype(np.float32)
    shuffle = rng.permutation(len(label))
    return CtrSamples(user[shuffle], item[shuffle], category[shuffle], label[shuffle])


def _pair_keys(users: IntArray, items: IntArray) -> npt.NDArray[np.uint64]:
    # Taobao ids fit in 32 bits, so a pair fits in one 64-bit key.
    return (users.astype(np.uint64) << np.uint64(32)) | items.astype(np.uint64)


@dataclass(frozen=True)
class Sequences:
    """Per-user item sequences in CSR form: user ``users[k]`` has ``items[offsets[k]:offsets[k + 1]]``, oldest
    first, with the timestamp of each step in ``timestamps``."""

    users: IntArray
    offsets: IntArray
    items: IntArray
    timestamps: IntArray

    def __len__(self) -> int:
        return len(self.users)

    def lengths(self) -> IntArray:
        return np.diff(self.offsets)


def user_sequences(b: Behaviors) -> Sequences:
    """Every user's items in time order, consecutive repeats of one item collapsed to the first."""
    order = np.lexsort((b.timestamp, b.user))
    user, item, ts = b.user[order], b.item[order], b.timestamp[order]
    new_user = np.ones(len(user), dtype=bool)
    new_user[1:] = user[1:] != user[:-1]
    keep = new_user.copy()
    keep[1:] |= item[1:] != item[:-1]
    user, item, ts, new_user = user[keep], item[keep], ts[keep], new_user[keep]
    starts = np.flatnonzero(new_user)
    return Sequences(user[starts], np.append(starts, len(user)).astype(np.int64), item, ts)


def next_item_windows(seqs: Sequences, vocab: ItemVocab, max_len: int) -> tuple[IntArray, IntArray]:
    """``(inputs, targets)`` of shape ``[N, max_len]`` in vocabulary indices, left-padded with 0: position t of
    ``targets`` is the item after position t of ``inputs``. A sequence longer than ``max_len + 1`` is cut into
    windows so that every transition is a target once; sequences of one item give nothing."""
    rows_in: list[IntArray] = []
    rows_out: list[IntArray] = []
    all_idx = vocab.lookup(seqs.items)
    for k in np.flatnonzero(seqs.lengths() >= 2):
        idx = all_idx[seqs.offsets[k] : seqs.offsets[k + 1]]
        for end in range(len(idx), 1, -max_len):
            start = max(0, end - max_len - 1)
            window = idx[start:end]
            row_in = np.zeros(max_len, dtype=np.int64)
            row_out = np.zeros(max_len, dtype=np.int64)
            row_in[max_len - len(window) + 1 :] = window[:-1]
            row_out[max_len - len(window) + 1 :] = window[1:]
            rows_in.append(row_in)
            rows_out.append(row_out)
    if not rows_in:
        empty = np.zeros((0, max_len), dtype=np.int64)
        return empty, empty
    return np.stack(rows_in), np.stack(rows_out)
