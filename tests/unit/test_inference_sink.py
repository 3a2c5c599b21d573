"""The sink's exactly-once bookkeeping, against a real (in-process) chDB store."""

from __future__ import annotations

import time
from typing import Any

import pytest

from schemas import InferenceEvent, topics
from store import Store
from store.base import StoreUnavailableError
from stream_processors.inference_sink import InferenceSink
from stream_processors.records import Message
from tests.store_fixtures import chdb_store

__all__ = ["chdb_store"]

NOW_S = (int(time.time()) // 10) * 10 - 60  # a whole window a minute ago: well inside the retention TTL


def _event(
    i: int, *, second: float, model: str = "ranker", version: int = 1, status: int = 0, total_us: int = 100
) -> bytes:
    ev = InferenceEvent(
        event_id=f"e{i}",
        request_id=f"r{i}",
        model=model,
        version=version,
        received_us=int((NOW_S + second) * 1_000_000),
        status_code=status,
        replica="r0",
    )
    ev.latency.total_us = total_us
    return ev.SerializeToString()


def _batch(n: int, partitions: int = 2, start: int = 0, **kw: Any) -> list[Message]:
    """n events spread over partitions; offsets count up per partition from start // partitions."""
    msgs = []
    for i in range(start, start + n):
        p = i % partitions
        msgs.append(Message(p, i // partitions, _event(i, second=(i % 25), **kw)))
    return msgs


def _totals(store: Store) -> tuple[int, int, int]:
    events = store.query("SELECT count(), count(DISTINCT event_id) FROM inference_events").rows[0]
    requests = store.query("SELECT sum(requests) FROM inference_metrics_10s").scalar()
    return int(events[0]), int(events[1]), int(requests or 0)


def test_every_event_is_stored_once_and_counted_in_its_window(chdb_store: Store) -> None:
    sink = InferenceSink(chdb_store, topic=topics.INFERENCE)
    result = sink.write_batch(_batch(100))
    assert result.events_written == 100 and not result.rejected
    assert _totals(chdb_store) == (100, 100, 100)
    windows = chdb_store.query(
        f"SELECT toUInt32(window_start) - {NOW_S} AS w, requests FROM inference_metrics_10s ORDER BY w"
    ).rows
    # seconds 0..24 of the minute: windows [0,10) [10,20) [20,30) get 40, 40, 20 of the 100 events
    assert windows == [(0, 40), (10, 40), (20, 20)]


def test_redelivered_batches_change_no_total(chdb_store: Store) -> None:
    sink = InferenceSink(chdb_store, topic=topics.INFERENCE)
    first = _batch(60)
    sink.write_batch(first)
    again = sink.write_batch(first)
    assert again.events_written == 0 and again.duplicates_skipped == 60
    # a restarted worker (fresh sink, empty caches) sees an overlapping range again, plus new events
    restarted = InferenceSink(chdb_store, topic=topics.INFERENCE)
    restarted.write_batch(_batch(40, start=40))
    assert _totals(chdb_store) == (80, 80, 80)


class _FailingMetricsStore:
    """Delegates to a real store but fails the first insert into the metrics table (a crash between inserts)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def insert(self, table: str, columns: Any) -> int:
        if table == "inference_metrics_10s_parts" and not self.failed:
            self.failed = True
            raise StoreUnavailableError("injected failure")
        return self.inner.insert(table, columns)


def test_a_failure_between_the_two_inserts_is_repaired_by_redelivery(chdb_store: Store) -> None:
    flaky = _FailingMetricsStore(chdb_store)
    sink = InferenceSink(flaky, topic=topics.INFERENCE)
    batch = _batch(50)
    with pytest.raises(StoreUnavailableError):
        sink.write_batch(batch)
    assert _totals(chdb_store) == (50, 50, 0)  # raw rows landed, aggregates did not
    InferenceSink(chdb_store, topic=topics.INFERENCE).write_batch(batch)  # Kafka redelivers after the crash
    assert _totals(chdb_store) == (50, 50, 50)


def test_bad_messages_are_rejected_with_a_reason_and_do_not_stop_the_batch(chdb_store: Store) -> None:
    sink = InferenceSink(chdb_store, topic=topics.INFERENCE)
    batch = _batch(10, partitions=1)
    batch += [
        Message(0, 10, b"\xff\xff not protobuf"),
        Message(0, 11, None),
        Message(0, 12, InferenceEvent(event_id="x", received_us=1).SerializeToString()),  # no model
    ]
    result = sink.write_batch(batch)
    assert sorted(r.reason for r in result.rejected) == ["empty", "missing_model", "undecodable"]
    assert [r.offset for r in result.rejected] == [10, 11, 12]
    assert _totals(chdb_store) == (10, 10, 10)
    # redelivered, the bad messages are reported again (nothing in the store says they reached the dead-letter
    # topic: a worker killed before that sends them after its restart; the pipeline sends each once per run),
    # and nothing is stored twice
    again = sink.write_batch(batch)
    assert [(r.offset, r.reason) for r in again.rejected] == [(r.offset, r.reason) for r in result.rejected]
    assert again.events_written == 0
    assert _totals(chdb_store) == (10, 10, 10)


def test_errors_and_latency_per_model_version(chdb_store: Store) -> None:
    sink = InferenceSink(chdb_store, topic=topics.INFERENCE)
    msgs = [
        Message(0, 0, _event(0, second=1, version=1, total_us=100)),
        Message(0, 1, _event(1, second=2, version=1, total_us=300, status=8)),
        Message(0, 2, _event(2, second=3, version=2, total_us=50)),
    ]
    sink.write_batch(msgs)
    rows = chdb_store.query(
        "SELECT version, requests, errors, latency_mean_us, latency_max_us FROM inference_metrics_10s ORDER BY version"
    ).rows
    assert rows == [(1, 2, 1, 200.0, 300), (2, 1, 0, 50.0, 50)]


@pytest.mark.parametrize("fast_path", [None, False], ids=["engine", "python"])
def test_a_copy_of_an_event_at_a_new_offset_is_neither_stored_nor_counted_again(
    chdb_store: Store, fast_path: bool | None
) -> None:
    """A model server that lost Kafka's acknowledgement of an event it had sent (the broker killed mid-request)
    spools it and sends the same bytes again: a copy at a later offset of the same partition, in a later batch
    or in the same one. One stored row and one window count per event_id, also after a redelivery."""
    sink = InferenceSink(chdb_store, topic=topics.INFERENCE, fast_path=fast_path)
    first = [Message(0, o, _event(o, second=o % 25)) for o in range(40)]
    sink.write_batch(first)
    # offsets 40..: live events interleaved with copies of events 5, 17 (earlier batch) and 41 (this batch)
    replay = ((topics.REPLAYED_HEADER, b"1"),)
    later = [
        Message(0, 40, _event(40, second=20)),
        Message(0, 41, _event(41, second=21)),
        Message(0, 42, _event(5, second=5), replay),
        Message(0, 43, _event(42, second=22)),
        Message(0, 44, _event(17, second=17), replay),
        Message(0, 45, _event(41, second=21), replay),
        Message(0, 46, _event(43, second=10), replay),  # replayed, but no copy: stored
    ]
    result = sink.write_batch(later)
    assert result.events_written == 4
    assert _totals(chdb_store) == (44, 44, 44)
    assert sink.write_batch(later).events_written == 0  # redelivered: the same
    assert InferenceSink(chdb_store, topic=topics.INFERENCE, fast_path=fast_path).write_batch(later).events_written == 0
    assert _totals(chdb_store) == (44, 44, 44)
