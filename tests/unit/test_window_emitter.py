"""Closed windows to WindowAggregate messages: merged per replica and rolled up, exact sketches, published
once (restart included), and held back while an active partition's watermark has not passed the window."""

from __future__ import annotations

import random

from schemas import WindowAggregate, topics
from store import Store
from stream_processors.inference_sink import InferenceSink
from stream_processors.records import Message
from stream_processors.sketch import LatencySketch
from stream_processors.window_emitter import WindowEmitter, aggregate_message
from stream_processors.window_rows import WindowState
from tests.store_fixtures import chdb_store
from tests.window_aggregate_checks import event, window_now

__all__ = ["chdb_store"]

US = 1_000_000


def _write(
    store: Store, base: int, seconds: range, *, offset0: int = 0, status_every: int = 7
) -> dict[tuple[int, str], list[int]]:
    """Events at the given seconds after ``base`` on 2 partitions and 2 replicas; returns latencies per window.
    Each event's RSS is 1 KiB per µs of its latency, so a window's max RSS is 1 KiB x its max latency."""
    rng = random.Random(base + offset0)
    sink = InferenceSink(store, topic=topics.INFERENCE)
    latencies: dict[tuple[int, str], list[int]] = {}
    messages = []
    for i, second in enumerate(seconds):
        replica = f"r{i % 2}"
        total = int(rng.lognormvariate(7, 0.7)) + 1
        window = base + second // 10 * 10
        latencies.setdefault((window, replica), []).append(total)
        ev = event(offset0 + i, (base + second) * US + i, replica=replica, total_us=total,
                   status=14 if i % status_every == 0 else 0, rss_bytes=1024 * total)  # fmt: skip
        messages.append(Message(i % 2, (offset0 + i) // 2, ev.SerializeToString()))
    sink.write_batch(messages)
    return latencies


def _decode(messages: list[tuple[bytes, bytes]]) -> dict[tuple[int, str], WindowAggregate]:
    out = {}
    for key, value in messages:
        msg = WindowAggregate.FromString(value)
        assert key == f"{msg.model}/{msg.version}".encode()
        out[(msg.window_start_us // US, msg.replica)] = msg
    return out


def test_closed_windows_are_merged_per_replica_and_rolled_up_with_exact_sketches(chdb_store: Store) -> None:
    base = window_now() - 600
    latencies = _write(chdb_store, base, range(0, 30))  # windows base, base+10, base+20
    emitter = WindowEmitter(chdb_store)
    messages, through = emitter.collect(now_us=(base + 200) * US)  # partitions idle, wall clock long past
    assert through == base + 150  # the newest closed window: cutoff now - 30 s lateness - 5 s grace = base + 165
    got = _decode(messages)
    assert set(got) == {(base + w, r) for w in (0, 10, 20) for r in ("r0", "r1", "")}
    for (window, replica), msg in got.items():
        values = latencies[(window, replica)] if replica else latencies[(window, "r0")] + latencies[(window, "r1")]
        sketch = LatencySketch()
        sketch.add_many(values)
        assert msg.requests == len(values) and msg.window_end_us - msg.window_start_us == 10 * US
        assert msg.latency_p99_us == sketch.quantile(0.99) and msg.latency_max_us == max(values)
        assert LatencySketch.from_bytes(msg.latency_sketch).to_arrays() == sketch.to_arrays()
        assert msg.errors == sum(msg.errors_by_status.values())
        assert msg.process_rss_max_bytes == 1024 * max(values)  # per replica, and over replicas when rolled up
    rolled = got[(base, "")]
    assert rolled.requests == got[(base, "r0")].requests + got[(base, "r1")].requests

    emitter.mark_published(through)
    assert emitter.collect(now_us=(base + 200) * US) == ([], None)
    assert WindowEmitter(chdb_store).collect(now_us=(base + 200) * US) == ([], None)  # a restarted leader

    _write(chdb_store, base, range(160, 170), offset0=1000)  # later traffic: only its window is new
    messages, through = WindowEmitter(chdb_store).collect(now_us=(base + 300) * US)
    assert {w for w, _ in _decode(messages)} == {base + 160} and through == base + 250


def test_an_active_partition_holds_back_windows_its_watermark_has_not_passed(chdb_store: Store) -> None:
    base = window_now()
    _write(chdb_store, base, range(0, 36))  # partitions' latest events at ~base+34/35: watermark ~base+5
    emitter = WindowEmitter(chdb_store, allowed_lateness_s=30, grace_s=5, idle_s=60)
    # the wall clock alone would close [base, base+10) (cutoff base+15), the watermark does not
    messages, _ = emitter.collect(now_us=(base + 50) * US)
    assert messages == []
    # 50 s later the partitions count as idle (no event for 60 s): the wall clock decides
    messages, through = emitter.collect(now_us=(base + 100) * US)
    assert {w for w, _ in _decode(messages)} == {base, base + 10, base + 20, base + 30}
    assert through == base + 50


def test_rss_is_the_max_of_the_events_and_of_merged_rows_and_is_published() -> None:
    mib = 2**20
    r0p0, r0p1, r1 = WindowState(), WindowState(), WindowState()
    for state, rss in ((r0p0, 300), (r0p0, 0), (r0p0, 200), (r0p1, 500), (r1, 100)):
        state.add(event(0, 0, rss_bytes=rss * mib))
    assert [s.process_rss_max_bytes // mib for s in (r0p0, r0p1, r1)] == [300, 500, 100]  # a 0 (unknown) never lowers
    r0 = r0p0.copy()
    r0.merge(r0p1)  # another partition of the same replica
    rolled = r1.copy()
    rolled.merge(r0)  # the roll-up over replicas
    assert r0p0.process_rss_max_bytes == 300 * mib and r0.process_rss_max_bytes == rolled.process_rss_max_bytes
    msg = aggregate_message(1000, 10, "ranker", 1, "stable", "", rolled)
    assert WindowAggregate.FromString(msg.SerializeToString()).process_rss_max_bytes == 500 * mib
    assert aggregate_message(1000, 10, "ranker", 1, "stable", "r2", WindowState()).process_rss_max_bytes == 0.0
