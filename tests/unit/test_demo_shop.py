"""The demo shop's shoppers: without a taste they click by score and rank (as before); with a :class:`Taste` (the
drift story) a seeded share of the items is hot and clicked far more often whatever the model scored it; the drifted
catalog of :class:`Traffic` can be a seeded sample of the training catalog."""

from __future__ import annotations

from typing import Any

import pytest

from recwatch import demo
from recwatch.demo import Shop, Taste, Traffic


class _Producer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.sent: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append(value)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


@pytest.fixture
def shop(monkeypatch: pytest.MonkeyPatch) -> Shop:
    import confluent_kafka

    monkeypatch.setattr(confluent_kafka, "Producer", _Producer)
    return Shop("unused:9092", seed=3)


def test_taste_is_a_seeded_share_of_the_items_whatever_their_order() -> None:
    items = list(range(1000, 1500))
    taste = Taste(items, share=0.1, seed=23)
    assert len(taste.hot_items) == 50 and taste.hot_items <= set(items)
    assert Taste(reversed(items), share=0.1, seed=23).hot_items == taste.hot_items
    assert Taste(items, share=0.1, seed=24).hot_items != taste.hot_items


def test_taste_keeps_the_rank_effect() -> None:
    taste = Taste(range(10), share=0.5, hot=0.9, cold=0.02, seed=1)
    hot = min(taste.hot_items)
    cold = min(set(range(10)) - taste.hot_items)
    assert taste.click_probability(hot, 0) == pytest.approx(0.9)
    assert taste.click_probability(hot, 2) == pytest.approx(0.3)
    assert taste.click_probability(cold, 1) == pytest.approx(0.01)


def test_taste_needs_items_and_a_share() -> None:
    with pytest.raises(ValueError):
        Taste([], share=0.1)
    with pytest.raises(ValueError):
        Taste([1, 2], share=0.0)


def _clicks(shop: Shop, items: list[int], scores: list[float], n: int) -> dict[int, int]:
    from schemas import FeedbackEvent

    for i in range(n):
        shop.react(f"r{i}", "7", items, scores)
    clicks: dict[int, int] = {}
    producer: _Producer = shop._producer  # type: ignore[assignment]  # the fake of the fixture
    for raw in producer.sent:
        event = FeedbackEvent.FromString(raw)
        if event.behavior == FeedbackEvent.CLICK:
            clicks[int(event.item_id)] = clicks.get(int(event.item_id), 0) + 1
    return clicks


def test_without_a_taste_shoppers_click_what_the_model_scores_high(shop: Shop) -> None:
    items = list(range(1, 11))
    scores = [0.9 if item == 1 else 0.0 for item in items]  # item 1 ranked first and scored high
    clicks = _clicks(shop, items, scores, 2000)
    assert clicks[1] > 5 * max(clicks.get(item, 0) for item in items[1:])


def test_with_a_taste_shoppers_click_the_hot_items_whatever_their_score(shop: Shop) -> None:
    items = list(range(1, 11))
    shop.taste = Taste(items, share=0.2, seed=5)
    cold_top = min(set(items) - shop.taste.hot_items)
    scores = [0.9 if item == cold_top else 0.0 for item in items]  # the model prefers a cold item
    clicks = _clicks(shop, items, scores, 2000)
    assert min(clicks.get(item, 0) for item in shop.taste.hot_items) > 3 * clicks.get(cold_top, 0)
    assert shop.counts["click"] == sum(clicks.values())


def test_the_drifted_catalog_can_be_a_seeded_sample() -> None:
    full = Traffic(seq_model=None).catalog()
    sample = Traffic(seq_model=None, drift_items=500).catalog()
    assert len(sample) == 500 and set(sample.tolist()) <= set(full.tolist())
    assert sorted(sample.tolist()) == sample.tolist() == Traffic(seed=1, drift_items=500).catalog().tolist()
    assert len(full) > 10_000
    assert demo.Traffic(drift_items=10**6).catalog().tolist() == full.tolist()
