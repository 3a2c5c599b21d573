"""The statistics of a behaviour log that the synthetic generator is calibrated on.

>>> from training.taobao import Behaviors
>>> b = Behaviors.from_rows([(1, 10, 7, "pv", 100), (1, 11, 7, "cart", 160), (2, 10, 7, "pv", 130)])
>>> s = behavior_stats(b)
>>> s.users, s.items, s.next_same_category, s.median_gap_seconds
(2, 2, 1.0, 60.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.taobao import BEHAVIOR_NAMES, Behaviors


@dataclass(frozen=True)
class BehaviorStats:
    """Shares are fractions in [0, 1]; "next" statistics look at consecutive events of the same user."""

    rows: int
    users: int
    items: int
    categories: int
    behavior_mix: dict[str, float]  # share of rows per behaviour name
    events_per_user_mean: float
    single_event_users: float  # share of users with exactly one event
    users_with_5_or_more: float  # share of users with at least five events
    item_singletons: float  # share of distinct items that occur once
    top1pct_item_share: float  # share of rows on the most frequent 1 % of items
    top10_category_share: float  # share of rows in the 10 most frequent categories
    items_per_category: float  # distinct items / distinct categories
    next_same_item: float  # a user's next event is on the same item
    next_same_category: float  # a user's next event is in the same category
    median_gap_seconds: float  # between a user's consecutive events


def behavior_stats(b: Behaviors) -> BehaviorStats:
    """Compute :class:`BehaviorStats`; ``b`` may be in any order (rows are ordered per user by time here)."""
    n = len(b)
    if n == 0:
        raise ValueError("no events")
    _, per_user = np.unique(b.user, return_counts=True)
    _, per_item = np.unique(b.item, return_counts=True)
    _, per_cat = np.unique(b.category, return_counts=True)
    top_items = np.sort(per_item)[::-1][: max(1, len(per_item) // 100)]
    order = np.lexsort((b.timestamp, b.user))
    user, item, cat, ts = b.user[order], b.item[order], b.category[order], b.timestamp[order]
    same_user = user[1:] == user[:-1]
    pairs = max(1, int(same_user.sum()))
    gaps = (ts[1:] - ts[:-1])[same_user]
    codes, counts = np.unique(b.behavior, return_counts=True)
    mix = {name: 0.0 for name in BEHAVIOR_NAMES.values()}
    mix.update({BEHAVIOR_NAMES[int(c)]: float(k) / n for c, k in zip(codes, counts, strict=True)})
    return BehaviorStats(
        rows=n,
        users=len(per_user),
        items=len(per_item),
        categories=len(per_cat),
        behavior_mix=mix,
        events_per_user_mean=n / len(per_user),
        single_event_users=float(np.mean(per_user == 1)),
        users_with_5_or_more=float(np.mean(per_user >= 5)),
        item_singletons=float(np.mean(per_item == 1)),
        top1pct_item_share=float(top_items.sum() / n),
        top10_category_share=float(np.sort(per_cat)[::-1][:10].sum() / n),
        items_per_category=len(per_item) / len(per_cat),
        next_same_item=float(((item[1:] == item[:-1]) & same_user).sum() / pairs),
        next_same_category=float(((cat[1:] == cat[:-1]) & same_user).sum() / pairs),
        median_gap_seconds=float(np.median(gaps)) if len(gaps) else 0.0,
    )
