"""The ingest fast path (chDB parses, stores and aggregates the Kafka bytes) against the Python path, on a real
in-process chDB store: the same events and feedback must give the same rows a user queries."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from benchmarks.pipeline.events import synthetic_events
from schemas import FeedbackEvent, InferenceEvent
from store import Store
from stream_processors.feedback_sink import FeedbackSink
from stream_processors.inference_sink import InferenceSink
from stream_processors.protobuf_ingest import sketch_key_sql
from stream_processors.records import Message
from stream_processors.sketch import GAMMA, key_of
from tests.store_fixtures import chdb_store

__all__ = ["chdb_store"]

Batch = tuple[list[Message], list[Message]]  # inference messages, feedback messages


def _empty(store: Store) -> None:
    """Every table back to no rows (one chDB per process: the two paths take turns on one store)."""
    for name, engine in store.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()").rows:
        if engine != "View" and name != "schema_migrations":
            store.execute(f"TRUNCATE TABLE {name}")


def _scenario(n: int = 3000, partitions: int = 3, seed: int = 11) -> list[Batch]:
    """Synthetic ranking events (errors included) over 3 partitions, some arriving minutes late, and shop feedback:
    clicks, carts and impressions of ranked items, an unranked item, duplicates, and feedback read a batch before
    its prediction (held until it comes); cut into batches of uneven size."""
    rng = random.Random(seed)
    values = [value for _, value in synthetic_events(n, seed=seed, span_s=120)]
    order = list(range(n))
    for i in [i for i in range(n) if rng.random() < 0.02]:  # delivered long after its time: past the lateness
        order.remove(i)
        order.insert(min(len(order), order.index(i - 1) + 1500) if i else 0, i)
    inference: dict[int, list[Message]] = {p: [] for p in range(partitions)}
    plan: list[tuple[list[Message], list[tuple[int, bytes]]]] = [([], [])]  # feedback as (partition, bytes)
    for k, i in enumerate(order):
        ev = InferenceEvent.FromString(values[i])
        p = i % partitions
        msg = Message(p, len(inference[p]), values[i])
        inference[p].append(msg)
        plan[-1][0].append(msg)
        if ev.status_code == 0 and rng.random() < 0.3:
            item = rng.choice(ev.item_ids) if rng.random() < 0.9 else "not-ranked"
            behavior = rng.choice(
                [FeedbackEvent.CLICK, FeedbackEvent.CLICK, FeedbackEvent.CART, FeedbackEvent.IMPRESSION]
            )
            fb = FeedbackEvent(
                event_id=f"f{i}",
                request_id=ev.request_id,
                user_id="u",
                item_id=item,
                behavior=behavior,
                ts_us=ev.received_us + 2_000_000,
            ).SerializeToString()
            for _ in range(2 if rng.random() < 0.05 else 1):  # the shop sends some twice
                early = len(plan) > 1 and rng.random() < 0.1
                plan[-2 if early else -1][1].append((p, fb))
        if len(plan[-1][0]) >= rng.choice([150, 400, 900]) and k < len(order) - 1:
            plan.append(([], []))
    feedback: dict[int, int] = {p: 0 for p in range(partitions)}
    batches: list[Batch] = []
    for inf, fbs in plan:  # feedback offsets in the order the batches are read
        messages = []
        for p, fb in fbs:
            messages.append(Message(p, feedback[p], fb))
            feedback[p] += 1
        batches.append(
            (
                sorted(inf, key=lambda m: (m.partition, m.offset)),
                sorted(messages, key=lambda m: (m.partition, m.offset)),
            )
        )
    return batches


def _run(store: Store, batches: list[Batch], *, fast: bool) -> InferenceSink:
    sink = InferenceSink(store, topic="t", fast_path=fast)
    business = FeedbackSink(store, inference_topic="t", feedback_topic="f", pending_grace_s=600)
    for inf, fbs in batches:
        if inf:
            business.prepare({m.partition for m in inf})
            result = sink.write_batch(inf)
            business.write_batch(inference=result.decoded, predictions=result.predictions)
        if fbs:
            business.write_batch(feedback=fbs)
    return sink


def _rows(store: Store) -> dict[str, Any]:
    def q(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(round(x, 6) if isinstance(x, float) else x for x in r) for r in store.query(sql).rows]

    return {
        "raw": q(
            "SELECT count(), count(DISTINCT event_id), sum(total_us), sum(length(item_ids)), sum(arraySum(scores)), "
            "groupBitXor(cityHash64(event_id, input_shapes, output_name, error, kafka_partition, kafka_offset, "
            "producer_dropped, process_rss)) FROM inference_events"
        ),
        "windows": q(  # the partial rows themselves, per Kafka partition
            "SELECT toUInt32(window_start), model, version, label, replica, kafka_partition, requests, errors, "
            "error_codes, error_counts, latency_sum_us, latency_max_us, latency_keys, latency_counts, queue_sum_us, "
            "score_count, round(score_sum, 6), score_hist, late_events, cache_hits, rows_sum, last_offset, "
            "producer_dropped, process_rss_max FROM inference_metrics_10s_parts FINAL "
            "ORDER BY window_start, model, version, label, replica, kafka_partition"
        ),
        "p99": q(
            "SELECT model, version, label, round(latency_p99_us, 3), round(score_mean, 6) "
            "FROM inference_metrics_1m_by_version ORDER BY window_start, model, version, label"
        ),
        "business": q(
            "SELECT toUInt32(window_start), model, version, label, impressions, clicks, carts, clicked_impressions, "
            "not_shown, duplicates FROM business_metrics_1m ORDER BY window_start, model, version, label"
        ),
        "unattributed": q("SELECT reason, sum(events) FROM feedback_unattributed GROUP BY reason ORDER BY reason"),
    }


def test_the_fast_path_writes_what_the_python_path_writes(chdb_store: Store) -> None:
    batches = _scenario()
    fast = _run(chdb_store, batches, fast=True)
    assert fast.parse_fallbacks == 0
    got = _rows(chdb_store)
    _empty(chdb_store)
    _run(chdb_store, batches, fast=False)
    want = _rows(chdb_store)
    assert got["raw"][0][0] == 3000
    assert sum(r[18] for r in want["windows"]) > 0, "the scenario has late events"
    assert sum(r[5] for r in want["business"]) > 0 and want["unattributed"], "and attributed / unattributed feedback"
    for table in want:
        assert got[table] == want[table], table


def test_window_rows_are_rebuilt_from_stored_events_when_a_worker_stopped_before_writing_them(
    chdb_store: Store,
) -> None:
    """The worker acknowledges offsets once a batch's raw rows are stored; it may stop before the window rows are
    written. Kafka does not deliver those offsets again: the next worker folds the stored rows in itself."""
    store = chdb_store
    batches = [b for b in _scenario(n=1500) if b[0]]
    stopped = InferenceSink(store, topic="t")
    for inf, _ in batches[:3]:
        stopped.complete(stopped.stage(inf))
    stopped.stage(batches[3][0])  # raw rows stored, window rows never written
    resumed = InferenceSink(store, topic="t")
    for inf, _ in batches[4:]:
        resumed.write_batch(inf)
    assert resumed.repaired == len(batches[3][0])
    got = _rows(store)
    _empty(store)
    uninterrupted = InferenceSink(store, topic="t")
    for inf, _ in batches:
        uninterrupted.write_batch(inf)
    want = _rows(store)
    assert (got["windows"], got["raw"]) == (want["windows"], want["raw"])


def _event(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "event_id": "e",
        "request_id": "r",
        "model": "m",
        "version": 1,
        "received_us": time.time_ns() // 1000,
        "item_ids": ["a", "b"],
    }
    return InferenceEvent(**{**base, **fields}).SerializeToString()


def test_bad_messages_get_the_python_paths_reasons_and_the_batch_goes_on(chdb_store: Store) -> None:
    not_utf8 = _event(event_id="x").replace(b"\x12\x01r", b"\x12\x01\xff")  # request_id = b"\xff"
    values = [
        _event(event_id="ok1"),
        b"",
        _event(event_id=""),
        _event(event_id="nm", model=""),
        _event(event_id="old", received_us=1_000),
        _event(event_id="future", received_us=time.time_ns() // 1000 + 3 * 86_400_000_000),
        not_utf8,
        _event(event_id="ok2"),
    ]
    batch = [Message(0, i, v) for i, v in enumerate(values)]
    results = {}
    store = chdb_store
    for name, fast in (("fast", True), ("python", False)):
        _empty(store)
        sink = InferenceSink(store, topic="t", fast_path=fast)
        result = sink.write_batch(batch)
        results[name] = [(r.offset, r.reason) for r in result.rejected]
        assert result.events_written == 2
        assert store.query(
            "SELECT groupArray(event_id) FROM (SELECT event_id FROM inference_events ORDER BY event_id)"
        ).scalar() == ["ok1", "ok2"]
        assert sink.parse_fallbacks == 0
    assert (
        results["fast"]
        == results["python"]
        == [
            (1, "empty"),
            (2, "missing_event_id"),
            (3, "missing_model"),
            (4, "received_us_too_old"),
            (5, "received_us_in_future"),
            (6, "undecodable"),
        ]
    )


def test_bytes_the_engine_cannot_parse_send_the_batch_through_the_python_path(chdb_store: Store) -> None:
    sink = InferenceSink(chdb_store, topic="t")
    batch = [
        Message(0, 0, _event(event_id="ok1")),
        Message(0, 1, b"\xff\xff\xff garbage"),
        Message(0, 2, _event(event_id="ok2")),
    ]
    result = sink.write_batch(batch)
    assert sink.parse_fallbacks == 1
    assert [(r.offset, r.reason) for r in result.rejected] == [(1, "undecodable")]
    assert (result.events_written, chdb_store.query("SELECT sum(requests) FROM inference_metrics_10s").scalar()) == (
        2,
        2,
    )
    # the next batch takes the fast path again, from where the Python path left the partition
    after = sink.write_batch([Message(0, 3, _event(event_id="ok3"))])
    assert (sink.parse_fallbacks, after.events_written) == (1, 1)
    assert chdb_store.query("SELECT sum(requests) FROM inference_metrics_10s").scalar() == 3


def test_the_sql_sketch_key_is_the_python_key_at_every_bucket_boundary(chdb_store: Store) -> None:
    """Latencies up to an hour: the smallest value of each bucket and the one below it land in the same buckets."""
    bounds = sorted({b for k in range(2, 1200) for b in (int(GAMMA ** (k - 2)), int(GAMMA ** (k - 2)) + 1)})
    values = [v for v in bounds if v < 3_600_000_000] + [0, 1, 2]
    sql = f"SELECT v, {sketch_key_sql('v')} FROM (SELECT arrayJoin([{', '.join(map(str, values))}]) :: UInt32 AS v)"
    got = {int(v): int(k) for v, k in chdb_store.query(sql).rows}
    assert got == {v: key_of(v) for v in values}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "python"])
def test_an_event_is_late_exactly_when_its_window_closed_before_it_came(chdb_store: Store, fast: bool) -> None:
    """Window [t0, t0 + 10 s), allowed lateness 30 s: the partition's latest event time must reach t0 + 40 s to
    close it. One µs short, an event for it still counts; at t0 + 40 s the next one is late. The late flag crosses
    batches (the running maximum is carried from one batch to the next)."""
    t0 = (time.time_ns() // 1000 - 3_600_000_000) // 10_000_000 * 10_000_000
    times = [t0, t0 + 39_999_999, t0 + 1_000_000, t0 + 40_000_000, t0 + 2_000_000, t0 + 9_999_999]
    values = [_event(event_id=f"e{i}", received_us=t) for i, t in enumerate(times)]
    sink = InferenceSink(chdb_store, topic="t", fast_path=fast)
    sink.write_batch([Message(0, i, v) for i, v in enumerate(values[:3])])
    sink.write_batch([Message(0, i, v) for i, v in enumerate(values[3:], start=3)])
    rows = chdb_store.query(
        "SELECT toUInt32(window_start), requests, late_events FROM inference_metrics_10s ORDER BY window_start"
    ).rows
    w0 = t0 // 1_000_000
    assert [tuple(int(x) for x in r) for r in rows] == [(w0, 2, 2), (w0 + 30, 1, 0), (w0 + 40, 1, 0)]
