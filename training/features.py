"""Popularity features of the CTR model: how often an item and its category occur in a log.

Id embeddings cannot learn popularity on a log where most items occur once, so the ranker also gets
``log1p(events per 100k events)`` of the item and of its category. The counts must come from a *different*
period than the samples they describe: negatives are drawn from the items of the sample period, so counting
that period would tell the model which items were drawn (an item on display but never chosen still has the
event that put it in the log). Training therefore takes counts from the first half of the training period and
samples from the second half; the exported model holds the counts of the whole training log in lookup tables
(frozen at export time, keyed by raw ids, 0 for unknown ids) and scores events that come after it.

>>> from training.taobao import Behaviors
>>> log = Behaviors.from_rows([(1, 10, 7, "pv", 100), (2, 10, 7, "pv", 200), (3, 11, 8, "pv", 300)])
>>> np.expm1(CountFeatures(log, per=3).values(np.array([10, 12]), np.array([7, 8]))).round().tolist()
[[2.0, 2.0], [0.0, 1.0]]
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from training.taobao import Behaviors

NUM_FEATURES: Final = 2
PER: Final = 100_000  # counts are rescaled to "events per this many events", so logs of any size compare

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class CountFeatures:
    """Event counts per item and per category of one log (see the module docstring)."""

    def __init__(self, log: Behaviors, *, per: int = PER) -> None:
        self.item_ids, item_counts = np.unique(log.item, return_counts=True)
        self.category_ids, category_counts = np.unique(log.category, return_counts=True)
        scale = per / max(1, len(log))
        self.item_values = np.log1p(item_counts * scale).astype(np.float32)
        self.category_values = np.log1p(category_counts * scale).astype(np.float32)

    def values(self, items: IntArray, categories: IntArray) -> FloatArray:
        """``[N, 2]``: the item's and the category's feature (0 for ids the log does not have)."""
        return np.stack(
            [
                _lookup(self.item_ids, self.item_values, items),
                _lookup(self.category_ids, self.category_values, categories),
            ],
            axis=1,
        )


def _lookup(ids: IntArray, values: FloatArray, query: IntArray) -> FloatArray:
    if len(ids) == 0:
        return np.zeros(len(query), dtype=np.float32)
    pos = np.clip(np.searchsorted(ids, query), 0, len(ids) - 1)
    return np.where(ids[pos] == query, values[pos], np.float32(0.0)).astype(np.float32)
