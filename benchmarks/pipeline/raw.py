"""The limit: a bare confluent-kafka consumer reading the topic, with and without Protobuf decoding."""

from __future__ import annotations

import time

from benchmarks.pipeline.stats import Row

CONSUMER_CONFIG: dict[str, str | int | bool] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "fetch.max.bytes": 52_428_800,
    "max.partition.fetch.bytes": 10_485_760,
    "queued.max.messages.kbytes": 262_144,
}


def consume(bootstrap: str, topic: str, group: str, total: int, *, decode: bool, deadline: float) -> Row:
    """Read ``total`` messages with ``Consumer.consume(1000)`` in a fresh group; time from the first batch
    (group join and the first fetch excluded) to the last. ``decode``: parse each value as an InferenceEvent.

    CPU is this process's (the client's librdkafka threads included). Raises TimeoutError past ``deadline``
    (``time.monotonic()``)."""
    from confluent_kafka import Consumer

    from schemas import InferenceEvent

    parse = InferenceEvent.FromString
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **CONSUMER_CONFIG})
    consumer.subscribe([topic])
    seen = 0
    first: tuple[float, int, float] | None = None
    try:
        while seen < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consumer read {seen} of {total} messages before the deadline")
            batch = consumer.consume(num_messages=1000, timeout=0.5)
            good = [m for m in batch if m.error() is None]
            if decode:
                for m in good:
                    parse(m.value())  # type: ignore[arg-type]
            seen += len(good)
            if good and first is None:
                first = (time.perf_counter(), seen, time.process_time())
        end, cpu_end = time.perf_counter(), time.process_time()
    finally:
        consumer.close()
    assert first is not None
    name = "raw consume + decode" if decode else "raw consume"
    note = "confluent-kafka consume(1000), Protobuf parse" if decode else "confluent-kafka consume(1000), no decode"
    return Row(name, seen - first[1], end - first[0], note, cpu_s=cpu_end - first[2])
