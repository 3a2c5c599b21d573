"""Scale-out, rewind and dead letters with real ``recwatch worker`` processes on both stores.

Events are produced straight to the inference topic (keyed by request_id, as servers do) under a model name of
this test's own, together with messages no worker can use. Then:

- two workers in one consumer group give the same windows, to the last percentile, as one worker writing into
  a second store, and as the same sketches computed here in Python;
- rewinding the two-worker group to the earliest offsets and reprocessing everything changes no total;
- every unusable message reaches the dead-letter topic at least once per group (again after the rewind), with its
  reason and source.
"""

from __future__ import annotations

import math
import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas import InferenceEvent, OutputSummary, topics
from store import migrate, open_store
from stream_processors.sketch import LatencySketch
from tests.conftest import fresh_store_url
from tests.integration.test_slice import Stack

pytestmark = pytest.mark.integration

N_EVENTS = 3000
GARBAGE = 5
COLUMNS = "toUInt32(window_start) AS w, version, label, replica, requests, errors, latency_p50_us, latency_p99_us, "
COLUMNS += "latency_max_us, late_events, score_mean"


@pytest.fixture
def second_store(store_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Another empty store of the same kind, for the one-worker reference."""
    kind = "chdb" if store_url.startswith("chdb://") else "clickhouse-server"
    with fresh_store_url(kind, tmp_path / "chdb-reference", request) as url:
        yield url


def _events(model: str) -> list[InferenceEvent]:
    rng = random.Random(11)
    # Just before now, over 1.5 s: events other tests left on the shared topic are older, so they cannot have
    # moved a partition's watermark past these events' windows (which would make them late).
    start_us = time.time_ns() // 1000 - 2_000_000
    out = []
    for i in range(N_EVENTS):
        ev = InferenceEvent(
            event_id=uuid.uuid4().hex,
            request_id=f"{model}-{i}",
            model=model,
            version=1 + i % 2,
            label=("stable", "canary")[i % 2],
            replica=f"r{i % 3}",
            received_us=start_us + i * 500,  # in order: nothing is late
            status_code=14 if rng.random() < 0.05 else 0,
        )
        ev.latency.total_us = int(rng.lognormvariate(7.5, 0.9)) + 1
        if ev.status_code == 0:
            ev.outputs.append(OutputSummary(name="scores", count=4, head=[rng.random() for _ in range(4)]))
        out.append(ev)
    return out


def _produce(bootstrap: str, events: list[InferenceEvent], garbage: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, ev in enumerate(events):
        producer.produce(topics.INFERENCE, ev.SerializeToString(), ev.request_id.encode())
        if i % (N_EVENTS // GARBAGE) == 0 and garbage:
            producer.produce(topics.INFERENCE, garbage.pop(), b"garbage")
    assert producer.flush(30) == 0


def _expected(events: list[InferenceEvent]) -> dict[tuple[int, int, str, str], tuple[int, int, float, float, int]]:
    """Per (10 s window, version, label, replica): requests, errors, p50, p99, max — computed here."""
    groups: dict[tuple[int, int, str, str], list[InferenceEvent]] = {}
    for ev in events:
        key = (ev.received_us // 10_000_000 * 10, ev.version, ev.label, ev.replica)
        groups.setdefault(key, []).append(ev)
    out = {}
    for key, evs in groups.items():
        sketch = LatencySketch()
        for ev in evs:
            sketch.add(ev.latency.total_us)
        p50, p99 = sketch.quantiles([0.5, 0.99])
        errors = sum(ev.status_code != 0 for ev in evs)
        out[key] = (len(evs), errors, p50, p99, max(ev.latency.total_us for ev in evs))
    return out


def _windows(stack: Stack, model: str) -> list[dict[str, Any]]:
    return stack.sql(
        f"SELECT {COLUMNS} FROM inference_metrics_10s WHERE model = '{model}' ORDER BY w, version, label, replica"
    )


def _dead_letters(bootstrap: str, payloads: set[bytes], expected: int) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"dlq-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topics.DEAD_LETTER])
    found: list[tuple[bytes, dict[str, bytes]]] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and len(found) < expected:
            _keep(consumer.poll(0.5), payloads, found)
        end = time.monotonic() + 3  # anything beyond the expected count would be a duplicate: look a bit more
        while time.monotonic() < end:
            _keep(consumer.poll(0.5), payloads, found)
    finally:
        consumer.close()
    return found


def _keep(msg: Message | None, payloads: set[bytes], found: list[tuple[bytes, dict[str, bytes]]]) -> None:
    if msg is None or msg.error():
        return
    value = msg.value()
    if isinstance(value, bytes) and value in payloads:
        found.append((value, {str(k): bytes(v or b"") for k, v in (msg.headers() or [])}))  # type: ignore[arg-type,str-unpack]


def _rewind(bootstrap: str, group: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topics.INFERENCE, timeout=30).topics[topics.INFERENCE].partitions
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topics.INFERENCE, p, 0) for p in partitions])
    for future in admin.alter_consumer_group_offsets([request]).values():
        future.result(timeout=30)


def _stack(tmp_path: Path, name: str, kafka: str, store: str) -> Stack:
    """Processes on one store, migrated up front so queries work before the workers have started."""
    s = open_store(store)
    s.connect()
    try:
        migrate(s)
    finally:
        s.close()
    home = tmp_path / name
    home.mkdir()
    return Stack(home, kafka, store)


def _wait_all_counted(stack: Stack, model: str, timeout_s: float = 180) -> None:
    query = f"SELECT sum(requests) + sum(late_events) FROM inference_metrics_10s WHERE model = '{model}'"
    got = stack.wait_for(query, N_EVENTS, timeout_s=timeout_s)
    logs = {p.name: p.read_text()[-2000:] for p in stack.home.glob("*.log")}
    assert got == N_EVENTS, logs


def test_two_workers_match_one_worker_survive_a_rewind_and_dead_letter_at_least_once(
    tmp_path: Path, kafka_bootstrap: str, store_url: str, second_store: str
) -> None:
    model = f"scale_{uuid.uuid4().hex[:8]}"
    events = _events(model)
    garbage = [f"not an event {uuid.uuid4().hex} {i}".encode() for i in range(GARBAGE)]
    _produce(kafka_bootstrap, events, list(garbage))

    pair = _stack(tmp_path, "pair", kafka_bootstrap, store_url)
    single = _stack(tmp_path, "one", kafka_bootstrap, second_store)
    try:
        group = f"g2-{uuid.uuid4().hex[:8]}"
        workers = [pair.start("worker", "--group", group, log=f"worker{i}.log") for i in range(2)]
        single.start("worker", "--group", f"g1-{uuid.uuid4().hex[:8]}", log="worker.log")
        _wait_all_counted(pair, model)
        _wait_all_counted(single, model)

        two, one = _windows(pair, model), _windows(single, model)
        assert two == one
        expected = _expected(events)
        assert len(two) == len(expected)
        for row in two:
            want = expected[(int(row["w"]), int(row["version"]), row["label"], row["replica"])]
            got = (int(row["requests"]), int(row["errors"]), row["latency_p50_us"], row["latency_p99_us"])
            assert got[:2] == want[:2]
            assert math.isclose(got[2], want[2], rel_tol=1e-9) and math.isclose(got[3], want[3], rel_tol=1e-9)
            assert int(row["latency_max_us"]) == want[4] and int(row["late_events"]) == 0

        # rewind the two-worker group to the start and let one of its workers reprocess everything
        for worker in workers:
            pair.stop(worker)
        _rewind(kafka_bootstrap, group)
        pair.start("worker", "--group", group, log="worker-rewound.log")
        pair.wait_for(f"SELECT count() FROM inference_events WHERE model = '{model}'", N_EVENTS)
        _wait_for_group_at_end(kafka_bootstrap, group)
        assert _windows(pair, model) == two
        (row,) = pair.sql(
            f"SELECT count() AS n, count(DISTINCT event_id) AS d FROM inference_events WHERE model = '{model}'"
        )
        assert row == {"n": N_EVENTS, "d": N_EVENTS}

        # at least once per group, and once more for the rewind (a reprocessed message is rejected again: nothing
        # in the store says it reached the dead-letter topic); consumers dedupe by the recwatch-source header
        letters = _dead_letters(kafka_bootstrap, set(garbage), expected=3 * GARBAGE)
        assert {value for value, _ in letters} == set(garbage)
        assert all(sum(value == g for value, _ in letters) >= 3 for g in garbage)
        assert len({headers["recwatch-source"] for _, headers in letters}) == GARBAGE
        assert {headers["recwatch-reason"] for _, headers in letters} == {b"undecodable"}
        assert all(headers["recwatch-source"].startswith(topics.INFERENCE.encode()) for _, headers in letters)
    finally:
        pair.close()
        single.close()


def _wait_for_group_at_end(bootstrap: str, group: str, timeout_s: float = 120) -> None:
    """Until the group has committed the end offset of every partition (it has seen everything again)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topics.INFERENCE, timeout=30).topics[topics.INFERENCE].partitions
        tps = [TopicPartition(topics.INFERENCE, p) for p in partitions]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = consumer.committed(tps, timeout=30)
            ends = [consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in tps]
            if all(c.offset >= end for c, end in zip(committed, ends, strict=True)):
                return
            time.sleep(0.5)
        raise AssertionError(f"group {group} did not reach the end of {topics.INFERENCE}")
    finally:
        consumer.close()


def test_a_killed_worker_never_committed_past_what_it_stored_and_a_restart_loses_nothing(
    tmp_path: Path, kafka_bootstrap: str, store_url: str
) -> None:
    """The batching consumer acks a fetch only after the store holds it: killed mid-stream, the group's committed
    offsets are never beyond the rows stored, and the next worker completes the count exactly."""
    model = f"kill_{uuid.uuid4().hex[:8]}"
    events = _events(model)
    _produce(kafka_bootstrap, events, [])
    stack = _stack(tmp_path, "kill", kafka_bootstrap, store_url)
    group = f"gk-{uuid.uuid4().hex[:8]}"
    try:
        worker = stack.start("worker", "--group", group, log="worker.log")
        stack.wait_for("SELECT count() FROM inference_events", 1)  # the first batch of the (shared) topic is in
        stack.stop(worker, signal.SIGKILL)
        stored = {
            int(row["p"]): int(row["o"])
            for row in stack.sql("SELECT kafka_partition AS p, max(kafka_offset) AS o FROM inference_events GROUP BY p")
        }
        for partition, committed in _committed(kafka_bootstrap, group).items():
            assert committed <= stored.get(partition, -1) + 1, (partition, committed, stored)

        stack.start("worker", "--group", group, log="worker2.log")
        _wait_all_counted(stack, model)
        (row,) = stack.sql(
            f"SELECT count() AS n, count(DISTINCT event_id) AS d FROM inference_events WHERE model = '{model}'"
        )
        assert row == {"n": N_EVENTS, "d": N_EVENTS}
        # the windows count every event once, also those whose window rows the killed worker had not written
        # (on chDB it acknowledges a batch once its raw rows are stored; the restart rebuilds the rest from them)
        counted = f"SELECT sum(requests) + sum(late_events) FROM inference_metrics_10s WHERE model = '{model}'"
        assert stack.wait_for(counted, N_EVENTS) == N_EVENTS
    finally:
        stack.close()


def _committed(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offsets (next offset to read) per partition of the inference topic; -1001 = none."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topics.INFERENCE, timeout=30).topics[topics.INFERENCE].partitions
        committed = consumer.committed([TopicPartition(topics.INFERENCE, p) for p in partitions], timeout=30)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()
