"""Checks of the windowed aggregates that run on any store (unit tests: in-process chDB; integration: both
stores through ``store_url``). Each builds events, writes them through the real sink and reads the views."""

from __future__ import annotations

import math
import random
import time

import numpy as np

from schemas import InferenceEvent, OutputSummary, topics
from store import Store
from stream_processors.inference_sink import InferenceSink
from stream_processors.records import Message
from stream_processors.sketch import ALPHA
from stream_processors.window_rows import STATE_SELECT, key_of_row, state_of_row

LEVELS = (0.5, 0.9, 0.95, 0.99)


def window_now() -> int:
    """The start of a whole minute a few minutes ago: inside every retention TTL, aligned to 10 s and 1 min."""
    return (int(time.time()) // 60) * 60 - 180


def event(
    i: int,
    t_us: int,
    *,
    replica: str = "r0",
    version: int = 1,
    label: str = "stable",
    total_us: int = 100,
    status: int = 0,
    scores: tuple[float, ...] = (),
    cache_hit: bool = False,
    rss_bytes: int = 0,
) -> InferenceEvent:
    ev = InferenceEvent(
        event_id=f"e{i}",
        request_id=f"q{i}",
        model="ranker",
        version=version,
        label=label,
        replica=replica,
        received_us=t_us,
        status_code=status,
        cache_hit=cache_hit,
        rows=len(scores) or 1,
        batch_size=len(scores) or 1,
        process_rss_bytes=rss_bytes,
    )
    ev.latency.total_us = total_us
    ev.latency.queue_us = total_us // 4
    ev.latency.compute_us = total_us // 2
    if scores:
        ev.outputs.append(OutputSummary(name="scores", count=len(scores), head=list(scores)))
    return ev


def exact_quantile(values: list[int], q: float) -> float:
    """The rank convention of ClickHouse's quantileExactWeighted (and of the sketch): the ceil(n*q)-th value."""
    ordered = sorted(values)
    return float(ordered[max(math.ceil(len(ordered) * q), 1) - 1])


def check_percentiles_match_exact_ones_per_replica_and_rolled_up(store: Store) -> None:
    """3 replicas x 2 partitions, heavy-tailed latencies, written in several batches: every view's percentiles
    are within the sketch's 1 % of the exact percentiles of the same events, and max is exact."""
    rng = random.Random(7)
    base = window_now()
    sink = InferenceSink(store, topic=topics.INFERENCE)
    latencies: dict[str, list[int]] = {"r0": [], "r1": [], "r2": []}
    events = []
    for i in range(3000):
        replica = f"r{i % 3}"
        total = int(rng.lognormvariate(7.0, 0.8)) + 1  # ~1.1 ms median, tail to tens of ms
        latencies[replica].append(total)
        t_us = (base + rng.randrange(0, 60)) * 1_000_000 + rng.randrange(1_000_000)
        events.append(event(i, t_us, replica=replica, total_us=total))
    events.sort(key=lambda ev: ev.received_us + rng.randrange(-5_000_000, 5_000_000))  # out of order, within lateness
    messages: list[Message] = []
    offsets = [0, 0]
    for i, ev in enumerate(events):
        p = i % 2
        messages.append(Message(p, offsets[p], ev.SerializeToString()))
        offsets[p] += 1
    for start in range(0, len(messages), 700):
        sink.write_batch(messages[start : start + 700])

    quantile_columns = ", ".join(f"latency_p{round(q * 100)}_us" for q in LEVELS)
    rows = store.query(
        f"SELECT replica, requests, {quantile_columns}, latency_max_us FROM inference_metrics_1m "
        f"WHERE toUInt32(window_start) = {base} ORDER BY replica"
    ).rows
    assert [r[0] for r in rows] == ["r0", "r1", "r2"]
    for row in rows:
        values = latencies[str(row[0])]
        assert int(row[1]) == len(values)
        for q, got in zip(LEVELS, row[2:6], strict=True):
            want = exact_quantile(values, q)
            assert abs(float(got) - want) <= ALPHA * want * (1 + 1e-9), (row[0], q, got, want)
        assert int(row[6]) == max(values)

    everything = [v for vs in latencies.values() for v in vs]
    [rolled] = store.query(
        f"SELECT requests, {quantile_columns} FROM inference_metrics_1m_by_version "
        f"WHERE toUInt32(window_start) = {base}"
    ).rows
    assert int(rolled[0]) == len(everything)
    for q, got in zip(LEVELS, rolled[1:], strict=True):
        want = exact_quantile(everything, q)
        assert abs(float(got) - want) <= ALPHA * want * (1 + 1e-9), (q, got, want)


def check_errors_scores_and_cache_per_window(store: Store) -> None:
    base = window_now()
    sink = InferenceSink(store, topic=topics.INFERENCE)
    rng = np.random.default_rng(3)
    scores = [tuple(float(x) for x in rng.beta(2, 5, 32).astype(np.float32)) for _ in range(40)]
    statuses = [0] * 30 + [3] * 6 + [8] * 4  # INVALID_ARGUMENT x6, RESOURCE_EXHAUSTED x4
    events = [
        event(i, (base + 1) * 1_000_000 + i, status=s, scores=sc if s == 0 else (), cache_hit=i % 5 == 0)
        for i, (s, sc) in enumerate(zip(statuses, scores, strict=True))
    ]
    for i, ev in enumerate(events):  # the replica's logger totals grow; the window keeps the highest
        ev.producer.dropped, ev.producer.spooled = i // 10, 3 * i
    sink.write_batch([Message(0, i, ev.SerializeToString()) for i, ev in enumerate(events)])
    [row] = store.query(
        "SELECT requests, errors, errors_by_status, cache_hit_rate, score_mean, score_std, score_hist, "
        "throughput_rps, late_events, producer_dropped_total, producer_spooled_total "
        f"FROM inference_metrics_10s WHERE toUInt32(window_start) = {base}"
    ).rows
    assert (int(row[0]), int(row[1])) == (40, 10)
    codes, counts = row[2]
    assert dict(zip(codes, counts, strict=True)) == {3: 6, 8: 4}
    assert float(row[3]) == 8 / 40
    answered = np.array([x for s, sc in zip(statuses, scores, strict=True) if s == 0 for x in sc], dtype=np.float64)
    assert math.isclose(float(row[4]), answered.mean(), rel_tol=1e-9)
    assert math.isclose(float(row[5]), answered.std(), rel_tol=1e-6)
    want_hist = np.histogram(np.clip(answered, 0, 0.9999), bins=10, range=(0, 1))[0]
    assert [int(x) for x in row[6]] == want_hist.tolist()
    assert float(row[7]) == 4.0  # 40 requests in a 10 s window
    assert int(row[8]) == 0
    assert (int(row[9]), int(row[10])) == (39 // 10, 3 * 39)


def check_late_events_are_counted_not_aggregated_and_survive_a_restart(store: Store) -> None:
    """Allowed lateness 30 s: once a partition has seen t = 100 s, events before t = 60 s are late for their
    (closed) 10 s windows. A restarted sink restores the watermark from the store and decides the same."""
    base = window_now()

    def at(i: int, second: int) -> bytes:
        return event(i, (base + second) * 1_000_000, total_us=1000).SerializeToString()

    sink = InferenceSink(store, topic=topics.INFERENCE, allowed_lateness_s=30)
    sink.write_batch([Message(0, 0, at(0, 5)), Message(0, 1, at(1, 100)), Message(0, 2, at(2, 75))])
    # watermark 100 - 30 = 70 s: [0, 10) and [60, 70) are closed, [70, 80) is open
    sink.write_batch([Message(0, 3, at(3, 8)), Message(0, 4, at(4, 72)), Message(0, 5, at(5, 69))])
    restarted = InferenceSink(store, topic=topics.INFERENCE, allowed_lateness_s=30)
    restarted.write_batch([Message(0, 6, at(6, 2)), Message(0, 7, at(7, 101))])  # 2 s: late after the restart
    restarted.write_batch([Message(0, 3, at(3, 8)), Message(0, 6, at(6, 2))])  # redelivered: no change

    rows = store.query(
        f"SELECT toUInt32(window_start) - {base} AS w, requests, late_events FROM inference_metrics_10s ORDER BY w"
    ).rows
    assert [(int(w), int(r), int(late)) for w, r, late in rows] == [(0, 1, 2), (60, 0, 1), (70, 2, 0), (100, 2, 0)]
    assert store.query("SELECT count() FROM inference_events").scalar() == 8  # raw rows keep late events too


def check_process_rss_is_the_max_per_replica_and_round_trips_through_the_store(store: Store) -> None:
    """Per replica, a window's RSS is the highest of its events' (an unknown 0 never lowers it), the by-version
    view has the highest over replicas, and a restarted sink reads the stored maximum back (``state_of_row``)."""
    base = window_now()
    mib = 2**20
    rss = [("r0", 0, 300), ("r0", 1, 0), ("r1", 0, 700), ("r0", 1, 900), ("r1", 1, 800), ("r0", 0, 500)]  # MiB
    sink = InferenceSink(store, topic=topics.INFERENCE)
    messages = []
    for i, (replica, partition, rss_mib) in enumerate(rss):
        ev = event(i, (base + 1) * 1_000_000 + i, replica=replica, rss_bytes=rss_mib * mib)
        messages.append(Message(partition, i, ev.SerializeToString()))
    sink.write_batch(messages)

    def per_replica(view: str) -> list[tuple[str, int]]:
        rows = store.query(
            f"SELECT replica, process_rss_max_bytes FROM {view} WHERE toUInt32(window_start) = {base} ORDER BY replica"
        ).rows
        return [(str(r), int(v) // mib) for r, v in rows]

    assert per_replica("inference_metrics_10s") == [("r0", 900), ("r1", 800)]
    assert per_replica("inference_metrics_1m") == [("r0", 900), ("r1", 800)]
    rolled = store.query(
        f"SELECT process_rss_max_bytes FROM inference_metrics_1m_by_version WHERE toUInt32(window_start) = {base}"
    ).scalar()
    assert int(rolled) == 900 * mib

    parts = store.query(
        f"SELECT {', '.join(STATE_SELECT)} FROM inference_metrics_10s_parts FINAL WHERE toUInt32(window_start) = {base}"
    ).rows
    stored = {key_of_row(r)[4:]: state_of_row(r).process_rss_max_bytes // mib for r in parts}
    assert stored == {("r0", 0): 500, ("r0", 1): 900, ("r1", 0): 700, ("r1", 1): 800}  # (replica, partition)

    restarted = InferenceSink(store, topic=topics.INFERENCE)  # loads the stored rows: lower values change nothing
    restarted.write_batch(
        [
            Message(0, 10, event(10, (base + 2) * 1_000_000, replica="r0", rss_bytes=100 * mib).SerializeToString()),
            Message(1, 11, event(11, (base + 2) * 1_000_000, replica="r1", rss_bytes=1000 * mib).SerializeToString()),
        ]
    )
    assert per_replica("inference_metrics_10s") == [("r0", 900), ("r1", 1000)]
