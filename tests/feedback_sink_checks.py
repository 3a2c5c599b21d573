"""Checks of the feedback sink that run on any store (unit tests: in-process chDB; integration: both stores through
``store_url``). Each writes predictions and feedback through the sink and reads the views, as a user would."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas import FeedbackEvent, InferenceEvent
from store import Store
from store.base import StoreUnavailableError
from stream_processors.decode import decode_inference
from stream_processors.feedback_sink import FeedbackSink
from stream_processors.inference_sink import _event_columns
from stream_processors.records import Message

S = 1_000_000
IMPRESSION, CLICK, CART, FAV, BUY = (
    FeedbackEvent.IMPRESSION,
    FeedbackEvent.CLICK,
    FeedbackEvent.CART,
    FeedbackEvent.FAV,
    FeedbackEvent.BUY,
)
ITEMS = ("a", "b", "c", "d")


_BASE_MINUTE = (int(time.time()) // 60) * 60 - 3600


def base_minute() -> int:
    """A whole minute an hour before the session started (fixed: a check never straddles a minute boundary):
    inside every retention TTL, and feedback ts_us is plausible."""
    return _BASE_MINUTE


def prediction(rid: str, t_us: int, *, version: int = 1, label: str = "stable", status: int = 0) -> bytes:
    return InferenceEvent(
        event_id=f"e-{rid}",
        request_id=rid,
        model="ranker",
        version=version,
        label=label,
        replica="r0",
        received_us=t_us,
        status_code=status,
        item_ids=list(ITEMS),
    ).SerializeToString()


def feedback(fid: str, rid: str, item: str, behavior: int, t_us: int) -> bytes:
    return FeedbackEvent(
        event_id=fid,
        request_id=rid,
        user_id="u",
        item_id=item,
        behavior=behavior,  # type: ignore[arg-type]
        ts_us=t_us,
    ).SerializeToString()


def store_predictions(store: Store, messages: Sequence[Message]) -> None:
    """What ``InferenceSink.write_batch`` stores in ``inference_events`` (once per offset); the worker calls it
    before the feedback sink."""
    fresh = []
    for msg in messages:
        high = store.query(
            f"SELECT count(), max(kafka_offset) FROM inference_events WHERE kafka_partition = {msg.partition}"
        ).rows[0]
        ev = decode_inference(msg.value)
        if (not high[0] or msg.offset > int(high[1])) and not isinstance(ev, str):
            fresh.append((msg, ev))
    if fresh:
        store.insert("inference_events", _event_columns(fresh))


@dataclass
class Topics:
    """Messages of both topics per partition, offsets assigned in append order."""

    inference: dict[int, list[Message]] = field(default_factory=dict)
    feedback: dict[int, list[Message]] = field(default_factory=dict)

    def predict(self, p: int, value: bytes) -> Message:
        log = self.inference.setdefault(p, [])
        log.append(Message(p, len(log), value))
        return log[-1]

    def give(self, p: int, value: bytes) -> Message:
        log = self.feedback.setdefault(p, [])
        log.append(Message(p, len(log), value))
        return log[-1]


def write(sink: FeedbackSink, inference: Sequence[Message] = (), fb: Sequence[Message] = ()) -> Any:
    store_predictions(sink.store, inference)
    return sink.write_batch(inference, fb)


def metrics(store: Store) -> list[tuple[Any, ...]]:
    """(minute offset from base, version, label, impressions, clicks, clicked impressions, carts, buys, ctr)"""
    base = base_minute()
    return [
        (int(r[0]) - base, int(r[1]), str(r[2]), *(int(x) for x in r[3:8]), round(float(r[8]), 6))
        for r in store.query(
            "SELECT toUInt32(window_start), version, label, impressions, clicks, clicked_impressions, carts, buys, ctr "
            "FROM business_metrics_1m ORDER BY window_start, version, label"
        ).rows
    ]


def unattributed(store: Store) -> dict[str, int]:
    rows = store.query("SELECT reason, sum(events) FROM feedback_unattributed GROUP BY reason").rows
    return {str(r): int(n) for r, n in rows}


def check_ctr_per_version_and_label_canary_vs_stable(store: Store) -> None:
    """Stable v1 gets 1 click per 4 impressions, canary v2 2 distinct clicked items per 4; a second click on the
    same item counts as a click but not as another clicked impression. Two partitions, summed by the view."""
    base = base_minute() * S
    t = Topics()
    for i in range(20):
        p, rid = i % 2, f"r{i}"
        canary = i % 4 >= 2
        t.predict(p, prediction(rid, base + i * S, version=2 if canary else 1, label="canary" if canary else "stable"))
        t.give(p, feedback(f"f{i}a", rid, "a", CLICK, base + (i + 2) * S))
        if canary:
            t.give(p, feedback(f"f{i}b", rid, "b", CLICK, base + (i + 3) * S))
            t.give(p, feedback(f"f{i}c", rid, "b", CLICK, base + (i + 4) * S))
        if i % 5 == 0:
            t.give(p, feedback(f"f{i}d", rid, "c", BUY, base + (i + 9) * S))
    sink = FeedbackSink(store)
    write(sink, [m for p in (0, 1) for m in t.inference[p]], [m for p in (0, 1) for m in t.feedback[p]])
    # i % 4 in (0, 1): stable (10 requests); (2, 3): canary (10); buys at i = 0, 5, 10, 15: 2 stable, 2 canary
    assert metrics(store) == [(0, 1, "stable", 40, 10, 10, 0, 2, 0.25), (0, 2, "canary", 40, 30, 20, 0, 2, 0.5)]
    [(conversion,)] = store.query("SELECT conversion_rate FROM business_metrics_1m WHERE label = 'canary'").rows
    assert float(conversion) == 2 / 40


def check_feedback_before_its_prediction_and_unattributed_reasons(store: Store) -> None:
    """Feedback read before its prediction waits for it; feedback for a request never seen, for an item not ranked
    or far outside the attribution window is visible by reason in ``feedback_unattributed``."""
    base = base_minute() * S
    t = Topics()
    sink = FeedbackSink(store, pending_grace_s=60)
    write(sink, fb=[t.give(0, feedback("f1", "r1", "b", CLICK, base + 5 * S))])
    assert metrics(store) == []
    write(
        sink,
        [t.predict(0, prediction("r1", base + 4 * S))],
        [
            t.give(0, feedback("f2", "r1", "z", CLICK, base + 6 * S)),  # not ranked
            t.give(0, feedback("f3", "r1", "c", CLICK, base + 4000 * S)),  # an hour later: outside the window
            t.give(0, feedback("f4", "nobody", "a", CLICK, base + 6 * S)),
        ],
    )
    assert metrics(store) == [(0, 1, "stable", 4, 1, 1, 0, 0, 0.25)]
    # the predictions' watermark passes the unknown request's deadline (6 s + 5 s skew + 60 s grace)
    write(sink, [t.predict(0, prediction("r2", base + 100 * S))])
    assert unattributed(store) == {"item_not_shown": 1, "outside_window": 1, "unknown_request": 1}
    [(not_shown, outside)] = store.query(
        f"SELECT not_shown, outside_window FROM business_metrics_1m WHERE toUInt32(window_start) = {base // S}"
    ).rows
    assert (int(not_shown), int(outside)) == (1, 1)


def check_late_feedback_updates_an_old_window(store: Store) -> None:
    """A click 20 minutes after the prediction counts in the prediction's minute, which is rewritten."""
    base = base_minute() * S
    t = Topics()
    sink = FeedbackSink(store)
    write(sink, [t.predict(0, prediction("r1", base + 1 * S))])
    write(sink, [t.predict(0, prediction(f"q{m}", base + m * 60 * S)) for m in range(1, 20)])
    assert metrics(store)[0] == (0, 1, "stable", 4, 0, 0, 0, 0, 0.0)
    write(sink, fb=[t.give(0, feedback("f1", "r1", "d", CART, base + 20 * 60 * S))])
    write(sink, fb=[t.give(0, feedback("f2", "r1", "d", CLICK, base + 20 * 60 * S))])
    assert metrics(store)[0] == (0, 1, "stable", 4, 1, 1, 1, 0, 0.25)
    assert len(metrics(store)) == 20


def check_redelivered_batches_change_no_total(store: Store) -> None:
    base = base_minute() * S
    t = Topics()
    preds = [t.predict(i % 2, prediction(f"r{i}", base + i * S)) for i in range(10)]
    fbs = [t.give(i % 2, feedback(f"f{i}", f"r{i}", "a", CLICK, base + (i + 1) * S)) for i in range(10)]
    sink = FeedbackSink(store)
    write(sink, preds[:6], fbs[:6])
    first = metrics(store)
    again = write(sink, preds[:6], fbs[:6])
    assert (again.feedback_written, again.duplicates_skipped, again.windows_written) == (0, 6, 0)
    assert metrics(store) == first
    write(sink, preds, fbs)  # overlapping redelivery plus new messages
    assert metrics(store) == [(0, 1, "stable", 40, 10, 10, 0, 0, 0.25)]
    assert store.query("SELECT count() FROM feedback_events").scalar() == 10


def _random_topics(
    seed: int, n: int = 300, partitions: int = 2
) -> tuple[list[tuple[list[Message], list[Message]]], int]:
    """Batches of both topics over 12 minutes: feedback mostly after its prediction, some before it, some late,
    some for unknown requests, shop duplicates; returned as (inference, feedback) batches and the base."""
    rng = random.Random(seed)
    base = base_minute() * S
    t = Topics()
    batches: list[tuple[list[Message], list[Message]]] = []
    queued_fb: list[tuple[int, int, bytes]] = []  # (due batch, partition, value)
    for b in range(n // 10):
        inf: list[Message] = []
        fb: list[Message] = []
        for j in range(10):
            i = b * 10 + j
            p, rid = i % partitions, f"r{i}"
            t_us = base + i * 12 * S // 5  # 2.4 s apart: 12 minutes
            version = 1 + i % 3 // 2
            inf.append(t.predict(p, prediction(rid, t_us, version=version, label=("stable", "canary")[version - 1])))
            for k in range(rng.randrange(4)):
                item = rng.choice((*ITEMS, "z"))
                behavior = rng.choice((IMPRESSION, CLICK, CLICK, CART, FAV, BUY))
                value = feedback(f"f{i}-{k}", rid, item, behavior, t_us + rng.randrange(-2 * S, 120 * S))
                due = b + rng.choice((-1, 0, 0, 1, 2, 8))  # -1: before its prediction, 8: a few minutes late
                queued_fb.append((due, p, value))
                if rng.random() < 0.05:
                    queued_fb.append((due + 1, p, value))  # the shop sends it again
            if rng.random() < 0.05:
                queued_fb.append((b, p, feedback(f"x{i}", f"nobody{i}", "a", CLICK, t_us)))
        for due, p, value in sorted(queued_fb, key=lambda x: x[0]):
            if due <= b:
                fb.append(t.give(p, value))
        queued_fb = [q for q in queued_fb if q[0] > b]
        batches.append((inf, fb))
    return batches, base


def _partition_rows(store: Store, first: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Window and unattributed rows of partitions ``first`` and ``first + 1``, partitions renumbered from 0."""
    counts = "impressions, clicks, carts, favs, buys, clicked_impressions, carted_impressions, faved_impressions, "
    windows = store.query(
        f"SELECT kafka_partition - {first} AS p, toUInt32(window_start) AS w, model, version, label, {counts}"
        f"bought_impressions, not_shown, outside_window, duplicates FROM business_metrics_1m_parts FINAL "
        f"WHERE kafka_partition IN ({first}, {first + 1}) ORDER BY p, w, model, version, label"
    ).rows
    lost = store.query(
        f"SELECT kafka_partition - {first} AS p, toUInt32(minute) AS m, reason, events "
        f"FROM feedback_unattributed_parts FINAL WHERE kafka_partition IN ({first}, {first + 1}) AND reason != '' "
        "ORDER BY p, m, reason"
    ).rows
    return [tuple(r) for r in windows], [tuple(r) for r in lost]


def _moved(batch: tuple[list[Message], list[Message]], by: int) -> tuple[list[Message], list[Message]]:
    inf, fb = batch
    return [Message(m.partition + by, m.offset, m.value) for m in inf], [
        Message(m.partition + by, m.offset, m.value) for m in fb
    ]


def check_restarts_and_redeliveries_give_the_same_totals(store: Store) -> None:
    """The same topics through one uninterrupted sink (partitions 0 and 1) and through sinks restarted at random
    points (fresh instance: caches empty, Kafka redelivers the last few batches) and rebalanced
    (``forget_partitions``) (the same messages as partitions 2 and 3): every window row and every unattributed
    count is the same."""
    params: dict[str, Any] = {"attribution_window_s": 60, "allowed_lateness_s": 30, "pending_grace_s": 20}
    batches, _ = _random_topics(seed=11)
    sink = FeedbackSink(store, **params)
    for batch in batches:
        write(sink, *batch)
    rng = random.Random(5)
    sink = FeedbackSink(store, **params)
    b = restarts = 0
    while b < len(batches):
        write(sink, *_moved(batches[b], 2))
        b += 1
        r = rng.random()
        if r < 0.15:
            sink = FeedbackSink(store, **params)
            b = max(0, b - rng.randrange(1, 4))  # uncommitted batches come again
            restarts += 1
        elif r < 0.25:
            sink.forget_partitions([2 + rng.randrange(2)])
    reference, restarted = _partition_rows(store, 0), _partition_rows(store, 2)
    assert restarts >= 3
    assert restarted[0] == reference[0]
    assert restarted[1] == reference[1]
    assert sum(int(row[6]) for row in reference[0]) > 30  # clicks: the check is not vacuous
    assert {row[2] for row in reference[1]} >= {"unknown_request", "item_not_shown", "duplicate"}


class FailingStore:
    """Delegates to a real store but fails the first insert into ``table`` (a crash between inserts)."""

    def __init__(self, inner: Store, table: str) -> None:
        self.inner = inner
        self.table = table
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def insert(self, table: str, columns: Any) -> int:
        if table == self.table and not self.failed:
            self.failed = True
            raise StoreUnavailableError("injected failure")
        return int(self.inner.insert(table, columns))


def check_a_failure_between_inserts_is_repaired_by_redelivery(store: Store, table: str, *, restart: bool) -> None:
    """Raw feedback rows land, ``table``'s insert fails; the batch comes again (to a restarted sink, or to the
    same one retrying): the totals are those of a run without failure."""
    base = base_minute() * S
    t = Topics()
    sink = FeedbackSink(store, pending_grace_s=10)
    write(sink, [t.predict(0, prediction(f"r{i}", base + i * S)) for i in range(4)])
    batch = (
        [t.predict(0, prediction("r9", base + 70 * S))],
        [
            t.give(0, feedback("f1", "r1", "a", CLICK, base + 3 * S)),
            t.give(0, feedback("f2", "r2", "b", CLICK, base + 3 * S)),
            t.give(0, feedback("f3", "nobody", "b", CLICK, base + 3 * S)),
        ],
    )
    flaky = FeedbackSink(FailingStore(store, table), pending_grace_s=10)
    flaky.write_batch([])  # nothing: no state yet
    with pytest.raises(StoreUnavailableError):
        write(flaky, *batch)
    assert store.query("SELECT count() FROM feedback_events").scalar() == 3
    again = FeedbackSink(store, pending_grace_s=10) if restart else flaky
    write(again, *batch)
    write(again, *batch)
    assert metrics(store) == [(0, 1, "stable", 16, 2, 2, 0, 0, 0.125), (60, 1, "stable", 4, 0, 0, 0, 0, 0.0)]
    assert unattributed(store) == {}  # the unknown request waits for the next prediction
    write(again, [t.predict(0, prediction("r10", base + 75 * S))], [t.give(0, feedback("f4", "r3", "a", CLICK, base))])
    assert metrics(store) == [(0, 1, "stable", 16, 3, 3, 0, 0, 0.1875), (60, 1, "stable", 8, 0, 0, 0, 0, 0.0)]
    assert unattributed(store) == {"unknown_request": 1}  # 3 s + 5 s skew + 10 s grace < the watermark, 75 s


def check_invalid_feedback_is_rejected_with_a_reason(store: Store) -> None:
    base = base_minute() * S
    t = Topics()
    sink = FeedbackSink(store)
    good = t.give(0, feedback("f1", "r1", "a", CLICK, base + 2 * S))
    bad = [
        t.give(0, b"\xff\xff not protobuf"),
        t.give(0, b""),
        t.give(0, feedback("", "r1", "a", CLICK, base)),
        t.give(0, feedback("f2", "", "a", CLICK, base)),
        t.give(0, feedback("f3", "r1", "", CLICK, base)),
        t.give(0, feedback("f4", "r1", "a", FeedbackEvent.BEHAVIOR_UNSPECIFIED, base)),
        t.give(0, feedback("f5", "r1", "a", 42, base)),
        t.give(0, feedback("f6", "r1", "a", CLICK, base // 1000)),  # milliseconds
        t.give(0, feedback("f7", "r1", "a", CLICK, base + 10 * 86_400 * S)),
    ]
    result = write(sink, [t.predict(0, prediction("r1", base + S))], [good, *bad])
    assert [(r.offset, r.reason) for r in result.rejected] == [
        (1, "undecodable"),
        (2, "empty"),
        (3, "missing_event_id"),
        (4, "missing_request_id"),
        (5, "missing_item_id"),
        (6, "missing_behavior"),
        (7, "unknown_behavior"),
        (8, "ts_us_too_old"),
        (9, "ts_us_in_future"),
    ]
    assert {r.topic for r in result.rejected} == {"recwatch.feedback.v1"}
    assert metrics(store) == [(0, 1, "stable", 4, 1, 1, 0, 0, 0.25)]
    assert store.query("SELECT count() FROM feedback_events").scalar() == 1
    # redelivered: reported again (at least once on the dead-letter topic; the pipeline sends each once per run),
    # also by a restarted sink, and nothing is stored or counted twice
    first = sorted((r.offset, r.reason) for r in result.rejected)
    assert sorted((r.offset, r.reason) for r in write(sink, fb=[good, *bad]).rejected) == first
    assert sorted((r.offset, r.reason) for r in write(FeedbackSink(store), fb=[good, *bad]).rejected) == first
    assert store.query("SELECT count() FROM feedback_events").scalar() == 1
    assert metrics(store) == [(0, 1, "stable", 4, 1, 1, 0, 0, 0.25)]
