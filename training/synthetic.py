"""A seeded generator of UserBehavior-style events whose statistics match the real Taobao slice.

The model behind the rows:

- a catalog of items, each in one category; category popularity is Zipf-like and each category holds items in
  proportion to its popularity; inside a category, item popularity is Zipf-like again;
- each user makes a number of events drawn from the slice's events-per-user distribution, starting at a
  uniform time in the window, with log-normal gaps;
- interest is sequential: the next event is on the same item (pv then cart), or stays in the current category,
  where it often moves to a *related* item (a neighbour in the category's item order), or jumps to a new
  category. Category stays and related items are what a sequence model can learn; popularity is what a
  popularity baseline can.

>>> from training.stats import behavior_stats
>>> b = generate(2000, seed=1)
>>> len(b) > 2000, behavior_stats(b).users
(True, 2000)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.taobao import BUY, CART, FAV, PV, Behaviors


@dataclass(frozen=True)
class Calibration:
    """The generator's constants. Each reproduces a statistic of ``UserBehavior_timeslice.csv`` (110,300 rows,
    66,454 users; see ``training.stats.BehaviorStats``), measured or fitted as the comment says."""

    # behavior_mix: pv 89.18 %, cart 5.50 %, fav 3.07 %, buy 2.26 %
    behavior_mix: tuple[float, float, float, float] = (0.8918, 0.0550, 0.0307, 0.0226)
    # single_event_users: 64.2 % of users have one event
    single_event_users: float = 0.642
    # P(n + 1) / P(n) for n >= 2, fitted to events_per_user_mean (1.66) and users_with_5_or_more (3.5 %)
    events_tail_ratio: float = 0.46
    # the most events of one user in the slice
    max_events_per_user: int = 20
    # fitted to items (84,793 seen), item_singletons (83.2 %) and top1pct_item_share (6.4 %) at the slice's size
    catalog_items: int = 550_000
    item_zipf: float = 0.65
    # Zipf-Mandelbrot category popularity 1 / (rank + offset) ** zipf, fitted to categories (3,913 seen, 27 % of
    # them once) and top10_category_share (28.1 %)
    catalog_categories: int = 9_439  # the full dataset's category count
    category_zipf: float = 1.55
    category_offset: float = 11.0
    # next_same_item: 3.2 % of a user's consecutive events are on the same item (related items add the rest)
    repeat_item: float = 0.023
    # next_same_category: 36.6 % (the rest of the same-category rate comes from chance and repeats)
    stay_in_category: float = 0.34
    # not measurable in the slice (items are too sparse): the share of same-category steps that go to one of the
    # 3 neighbours on either side in the category's item order. This is the item-level sequential signal.
    related_item: float = 0.5
    related_span: int = 3
    # median_gap_seconds: 292 s = exp(5.68); the log gaps' standard deviation over consecutive events is 1.52
    gap_log_mean: float = 5.68
    gap_log_sd: float = 1.52
    # the slice's time range: 2017-11-26 01:00:00 UTC, 131 minutes
    start: int = 1_511_658_000
    window_seconds: int = 7_811


CALIBRATION = Calibration()

_BEHAVIORS = np.array([PV, CART, FAV, BUY], dtype=np.int8)
_MAX_USER_ID = 1_018_011  # the largest ids in the full dataset, so synthetic ids look like real ones
_MAX_ITEM_ID = 5_163_070
_MAX_CATEGORY_ID = 5_162_429


def events_per_user_pmf(c: Calibration = CALIBRATION) -> npt.NDArray[np.float64]:
    """P(n events) for n = 1 .. ``max_events_per_user`` (index 0 is n = 1)."""
    n = np.arange(2, c.max_events_per_user + 1)
    tail = (1.0 - c.single_event_users) * (1.0 - c.events_tail_ratio) * c.events_tail_ratio ** (n - 2)
    pmf: npt.NDArray[np.float64] = np.concatenate([[c.single_event_users], tail])
    return pmf / float(pmf.sum())


def generate(n_users: int, *, seed: int, calibration: Calibration = CALIBRATION) -> Behaviors:
    """Events of ``n_users`` users in timestamp order; the same seed gives the same rows."""
    if n_users <= 0:
        raise ValueError(f"n_users must be positive, got {n_users}")
    c = calibration
    rng = np.random.default_rng(seed)
    catalog = _Catalog(c, rng)

    counts = rng.choice(np.arange(1, c.max_events_per_user + 1), size=n_users, p=events_per_user_pmf(c))
    total = int(counts.sum())
    user_index = np.repeat(np.arange(n_users), counts)
    first = np.zeros(total, dtype=bool)
    first[np.concatenate([[0], np.cumsum(counts)[:-1]])] = True

    # All randomness is drawn in bulk; the loop below only walks each user's chain.
    u_step, u_cat, u_rank, u_related = rng.random((4, total))
    offsets = rng.integers(1, c.related_span + 1, size=total) * rng.choice([-1, 1], size=total)
    new_cats = catalog.draw_categories(u_cat)
    positions = np.empty(total, dtype=np.int64)
    cats = np.empty(total, dtype=np.int64)
    for i in range(total):
        if first[i] or u_step[i] >= c.repeat_item + c.stay_in_category:
            cat = new_cats[i]
            pos = catalog.draw_rank(cat, u_rank[i])
        elif u_step[i] < c.repeat_item:
            cat, pos = cats[i - 1], positions[i - 1]
        else:
            cat = cats[i - 1]
            if u_related[i] < c.related_item:
                pos = min(max(positions[i - 1] + offsets[i], 0), catalog.size[cat] - 1)
            else:
                pos = catalog.draw_rank(cat, u_rank[i])
        cats[i], positions[i] = cat, pos

    starts = c.start + rng.random(n_users) * c.window_seconds
    gaps = np.where(first, 0.0, rng.lognormal(c.gap_log_mean, c.gap_log_sd, size=total))
    group_start = np.repeat(np.cumsum(gaps)[first], counts)
    timestamps = (starts[user_index] + np.cumsum(gaps) - group_start).astype(np.int64)

    user_ids = rng.choice(max(_MAX_USER_ID, 2 * n_users), size=n_users, replace=False) + 1
    return Behaviors(
        user=user_ids[user_index].astype(np.int64),
        item=catalog.item_ids[catalog.start[cats] + positions],
        category=catalog.category_ids[cats],
        behavior=rng.choice(_BEHAVIORS, size=total, p=np.asarray(c.behavior_mix) / sum(c.behavior_mix)),
        timestamp=timestamps,
    ).sorted_by_time()


class _Catalog:
    """Items grouped by category; position k in a category is its (k + 1)-th most popular item."""

    def __init__(self, c: Calibration, rng: np.random.Generator) -> None:
        weights = 1.0 / (np.arange(1, c.catalog_categories + 1) + c.category_offset) ** c.category_zipf
        weights /= weights.sum()
        item_category = rng.choice(c.catalog_categories, size=c.catalog_items, p=weights)
        self.size = np.bincount(item_category, minlength=c.catalog_categories)
        self.start = np.concatenate([[0], np.cumsum(self.size)[:-1]])
        weights[self.size == 0] = 0.0  # a category without items is never visited
        self._cumulative = np.cumsum(weights / weights.sum())
        self._zipf = c.item_zipf
        # Grouped by category, in random order inside each category.
        self.item_ids = (rng.choice(_MAX_ITEM_ID, size=c.catalog_items, replace=False) + 1)[np.argsort(item_category)]
        self.category_ids = rng.choice(_MAX_CATEGORY_ID, size=c.catalog_categories, replace=False) + 1

    def draw_categories(self, u: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        index = np.searchsorted(self._cumulative, u, side="right")
        return np.minimum(index, len(self._cumulative) - 1).astype(np.int64)

    def draw_rank(self, category: int, u: float) -> int:
        """A position in ``category`` drawn from a Zipf-like law (continuous inverse CDF, floored)."""
        n = int(self.size[category])
        s = self._zipf
        x = (n + 1) ** u if s == 1.0 else (1.0 + u * ((n + 1) ** (1.0 - s) - 1.0)) ** (1.0 / (1.0 - s))
        return min(int(x) - 1, n - 1)
