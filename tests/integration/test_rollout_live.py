"""The rollout's live windows from the store: both labels of one model per closed minute, on both stores."""

from __future__ import annotations

import random

import pytest

from rollout.live import StoreWindows
from store import Store
from stream_processors.inference_sink import InferenceSink
from stream_processors.records import Message
from tests import window_aggregate_checks as checks

pytestmark = pytest.mark.integration


def test_each_closed_minute_pairs_stable_with_the_canary(migrated_store: Store) -> None:
    rng = random.Random(5)
    base = checks.window_now()
    sink = InferenceSink(migrated_store, topic="rollout-live-test")
    events = []
    for i in range(2400):
        minute = i % 2  # two minutes of traffic
        canary = i % 5 == 0  # a fifth to the canary, version 2, 4x slower and erring 10 %
        total = int(rng.lognormvariate(7.0, 0.3)) * (4 if canary else 1)
        events.append(
            checks.event(
                i,
                (base + 60 * minute + rng.randrange(60)) * 1_000_000,
                version=2 if canary else 1,
                label="canary" if canary else "stable",
                total_us=total,
                status=13 if canary and i % 50 == 0 else 0,
            )
        )
    events.append(checks.event(99_999, (base + 5) * 1_000_000, version=1, label="canary"))  # an older canary
    events.sort(key=lambda ev: ev.received_us)
    sink.write_batch([Message(0, i, ev.SerializeToString()) for i, ev in enumerate(events)])
    windows = StoreWindows(migrated_store)
    assert windows.since("ranker", 2, base * 1_000_000) == []  # nothing published yet: no window is closed
    migrated_store.insert("metrics_emitted", {"stream": ["inference_10s"], "through": [base + 50], "at": [base]})
    [first] = windows.since("ranker", 2, base * 1_000_000)  # the first minute only: the second is still open
    assert first.window_us == base * 1_000_000
    assert first.stable.requests + first.canary.requests == 1200
    assert first.canary.requests == 240 and first.canary.errors == 48 and first.stable.errors == 0  # even i: minute 0
    assert first.canary.canary_slower > 0.9 * first.canary.requests  # 4x slower: nearly all above 1.2x p99
    migrated_store.insert("metrics_emitted", {"stream": ["inference_10s"], "through": [base + 110], "at": [base]})
    assert [w.window_us for w in windows.since("ranker", 2, base * 1_000_000)] == [
        base * 1_000_000,
        (base + 60) * 1_000_000,
    ]
