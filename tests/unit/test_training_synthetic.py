"""The synthetic generator: seeded, and calibrated on the real Taobao slice's statistics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from training.stats import behavior_stats
from training.synthetic import CALIBRATION, events_per_user_pmf, generate
from training.taobao import load_userbehavior

REPO = Path(__file__).resolve().parents[2]
TIMESLICE = REPO.parent / "shared" / "data" / "taobao-userbehavior" / "UserBehavior_timeslice.csv"


def test_the_same_seed_gives_the_same_rows_and_another_seed_others() -> None:
    a, b, c = generate(500, seed=7), generate(500, seed=7), generate(500, seed=8)
    for column in ("user", "item", "category", "behavior", "timestamp"):
        assert np.array_equal(getattr(a, column), getattr(b, column))
    assert not np.array_equal(a.item, c.item)


def test_rows_look_like_userbehavior_rows() -> None:
    b = generate(2000, seed=1)
    assert (np.diff(b.timestamp) >= 0).all()
    assert len(np.unique(b.user)) == 2000
    assert min(b.user.min(), b.item.min(), b.category.min()) >= 1
    # every item has exactly one category, as in the real data
    items, first = np.unique(b.item, return_index=True)
    assert np.array_equal(b.category, b.category[first][np.searchsorted(items, b.item)])


def test_events_per_user_pmf_is_a_distribution() -> None:
    pmf = events_per_user_pmf()
    assert pmf.sum() == pytest.approx(1.0)
    assert pmf[0] == pytest.approx(CALIBRATION.single_event_users, rel=1e-6)


def test_interest_is_sequential() -> None:
    """Consecutive events stay in a category far more often than the category mix alone would give."""
    b = generate(5000, seed=2, calibration=dataclasses.replace(CALIBRATION, single_event_users=0.0))
    perm = np.random.default_rng(0).permutation(len(b))
    shuffled = dataclasses.replace(b, item=b.item[perm], category=b.category[perm])  # same users and times
    assert behavior_stats(b).next_same_category > 5 * behavior_stats(shuffled).next_same_category


@pytest.mark.skipif(not TIMESLICE.is_file(), reason=f"the real Taobao slice is not at {TIMESLICE}")
def test_statistics_match_the_real_slice() -> None:
    real = behavior_stats(load_userbehavior(TIMESLICE).behaviors)
    synthetic = behavior_stats(generate(real.users, seed=0))
    for name, share in real.behavior_mix.items():
        assert synthetic.behavior_mix[name] == pytest.approx(share, abs=0.005), name
    relative = {
        "rows": 0.05,
        "items": 0.08,
        "categories": 0.15,
        "events_per_user_mean": 0.05,
        "top1pct_item_share": 0.15,
        "items_per_category": 0.15,
        "median_gap_seconds": 0.1,
    }
    absolute = {
        "single_event_users": 0.02,
        "users_with_5_or_more": 0.01,
        "item_singletons": 0.03,
        "top10_category_share": 0.04,
        "next_same_item": 0.01,
        "next_same_category": 0.03,
    }
    for name, tolerance in relative.items():
        assert getattr(synthetic, name) == pytest.approx(getattr(real, name), rel=tolerance), name
    for name, tolerance in absolute.items():
        assert getattr(synthetic, name) == pytest.approx(getattr(real, name), abs=tolerance), name
