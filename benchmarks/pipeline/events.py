"""Synthetic InferenceEvents shaped like the model server's, and a fast confluent-kafka producer for them.

Each event is a 32-candidate ranking request as ``recwatch serve`` logs it (``serving/predict.py``): inputs
``user_id`` [32], ``item_id`` [32], ``features`` [32, 16]; one output ``score`` with count/mean/min/max and a
head of 32 floats; 32 ``item_ids``; several models, versions, labels and replicas; log-normal compute
latencies; ~0.5 % errors (no outputs, an error message); ``received_us`` spread evenly over ``span_s`` of event
time (with jitter). Key = ``request_id``. Deterministic for a seed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from schemas import InferenceEvent, Latency, OutputSummary, TensorSummary

CANDIDATES = 32
FEATURES = 16


@dataclass(frozen=True)
class Route:
    model: str
    version: int
    label: str
    weight: float
    compute_median_us: float


ROUTES: tuple[Route, ...] = (
    Route("ranker", 7, "stable", 0.55, 2400.0),
    Route("ranker", 8, "canary", 0.10, 2700.0),
    Route("reco", 3, "stable", 0.25, 1500.0),
    Route("search", 12, "stable", 0.10, 900.0),
)
REPLICAS: tuple[str, ...] = tuple(f"srv-{i}-{8500 + 10 * i}" for i in range(4))
ERROR_RATE = 0.005


def make_event(rng: random.Random, received_us: int, route: Route, replica: str) -> InferenceEvent:
    """One event; ``rng`` draws ids, latencies, scores and the outcome."""
    compute = int(rng.lognormvariate(math.log(route.compute_median_us), 0.35))
    queue = int(rng.expovariate(1 / 300.0))
    batch = rng.randrange(20, 120)
    total = compute + queue + batch + rng.randrange(80, 400)  # decode/encode around the call
    ok = rng.random() >= ERROR_RATE
    event = InferenceEvent(
        event_id=f"{rng.getrandbits(128):032x}",
        request_id=f"{rng.getrandbits(128):032x}",
        received_us=received_us,
        sent_us=received_us + total,
        model=route.model,
        version=route.version,
        label=route.label,
        replica=replica,
        api="predict",
        signature="serving_default",
        status_code=0 if ok else 3,
        error="" if ok else "features: expected shape [32,16], got [32,15]",
        latency=Latency(queue_us=queue, batch_us=batch, compute_us=compute, total_us=total),
        batch_size=CANDIDATES * rng.choice((1, 1, 2, 3, 4)),
        cache_hit=rng.random() < 0.02,
        rows=CANDIDATES,
        inputs=[
            TensorSummary(name="user_id", dtype="int64", shape=[CANDIDATES]),
            TensorSummary(name="item_id", dtype="int64", shape=[CANDIDATES]),
            TensorSummary(name="features", dtype="float32", shape=[CANDIDATES, FEATURES]),
        ],
        user_id=str(rng.randrange(1, 2_000_000)),
        item_ids=[str(rng.randrange(1, 10_000_000)) for _ in range(CANDIDATES)],
    )
    if ok:
        scores = [rng.random() for _ in range(CANDIDATES)]
        event.outputs.append(
            OutputSummary(
                name="score",
                count=CANDIDATES,
                mean=sum(scores) / CANDIDATES,
                min=min(scores),
                max=max(scores),
                head=scores,
            )
        )
    return event


def synthetic_events(
    count: int, *, seed: int = 7, end_us: int | None = None, span_s: float = 180.0
) -> Iterator[tuple[bytes, bytes]]:
    """``count`` (key, value) pairs, ``received_us`` increasing over ``span_s`` seconds up to ``end_us``
    (default: now), each with up to 50 ms of jitter (servers publish slightly out of order)."""
    rng = random.Random(seed)
    end = int(time.time() * 1e6) if end_us is None else end_us
    start = end - int(span_s * 1e6)
    step = (end - start) / max(count, 1)
    weights = [r.weight for r in ROUTES]
    routes = rng.choices(ROUTES, weights=weights, k=count)
    for i in range(count):
        received = start + int(i * step) - rng.randrange(0, 50_000)
        event = make_event(rng, received, routes[i], rng.choice(REPLICAS))
        yield event.request_id.encode(), event.SerializeToString()


PRODUCER_CONFIG: dict[str, str | int | float] = {
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "acks": "all",
    "enable.idempotence": True,
}


def produce_all(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]], *, timeout_s: float = 300.0
) -> int:
    """Produce ``messages`` as fast as the client takes them; wait until all are acknowledged.

    Returns how many were not delivered (0 on success)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    failed = 0

    def delivered(err: object, msg: object) -> None:
        nonlocal failed
        failed += err is not None

    for i, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    return failed + producer.flush(timeout_s)


@dataclass(frozen=True)
class Sent:
    """Where a paced message landed and when ``produce()`` was called for it (Unix seconds)."""

    partition: int
    offset: int
    at: float


def produce_paced(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes, bytes]],
    *,
    rate: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    tick_s: float = 0.005,
    timeout_s: float = 60.0,
) -> list[Sent]:
    """Produce ``messages`` at ``rate`` per second (in ticks of ``tick_s``), lingering at most 5 ms, and
    return the acknowledged ones with their produce time: the start of each event's end-to-end lag."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG, "linger.ms": 5})
    sent: list[Sent] = []
    began = clock()
    i = 0
    while i < len(messages):
        due = min(len(messages), int((clock() - began) * rate) + 1)
        while i < due:
            key, value = messages[i]
            at = clock()

            def delivered(err: object, msg: Any, at: float = at) -> None:
                if err is None:
                    sent.append(Sent(msg.partition(), msg.offset(), at))

            producer.produce(topic, value=value, key=key, on_delivery=delivered)
            i += 1
        producer.poll(0)
        sleep(tick_s)
    producer.flush(timeout_s)
    return sent
