"""What per-request logging costs a request: ``python -m benchmarks.logging.bench_publish``.

Scenarios, each publishing InferenceEvents of a ranking request with 50 candidates (~1.1 KB serialized):

* ``no-op``: ``serving.publisher.NullPublisher`` (the baseline: a method call)
* ``serialize only``: ``SerializeToString()`` and nothing else (the floor for any Kafka logger)
* ``kafka up``: ``EventLogger`` to a real broker (started here on free loopback ports unless ``--bootstrap``)
* ``kafka up, 10 % sampled``
* ``kafka down``: ``EventLogger`` to a port nobody listens on; events go to the on-disk spool (fsync'd)

Two measurements per scenario:

* paced: ``--rate`` requests/s; each request is ``--work-us`` of Python work (holding the GIL, like a request
  handler), building its event, then ``publish()``. Reports the ``publish()`` call and the whole request, in
  µs, so the delivery thread's share of the CPU and the GIL shows where users would notice it.
* burst: ``--burst`` events published back to back; reports publish calls/s and the sustained rate (events/s
  until every event is acknowledged by Kafka or fsync'd in the spool), and drops.

Shared machines are noisy, so the scenarios take turns: ``--rounds`` rounds, each running every scenario for
``--seconds / --rounds`` (a fresh logger each time); paced samples are pooled, burst rates are the median
over rounds. The load average before and after is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from producers import EventLogger, EventLoggerConfig
from schemas import InferenceEvent
from serving.publisher import NullPublisher

Publish = Callable[[InferenceEvent], None]


def make_events(n: int) -> list[InferenceEvent]:
    events = []
    for i in range(n):
        e = InferenceEvent(
            event_id=uuid.uuid4().hex,
            request_id=f"req-{uuid.uuid4().hex}",
            received_us=1_700_000_000_000_000 + i,
            sent_us=1_700_000_000_004_000 + i,
            model="ranker",
            version=3,
            label="stable",
            replica="bench-8500",
            api="predict",
            signature="serving_default",
            batch_size=8,
            rows=50,
            user_id=f"u{i % 9973}",
            item_ids=[f"item-{(i * 31 + k) % 100_000}" for k in range(50)],
        )
        e.latency.queue_us, e.latency.batch_us, e.latency.compute_us, e.latency.total_us = 120, 40, 2900, 3600
        for name, dtype, shape in (
            ("user_id", "string", [50]),
            ("item_id", "string", [50]),
            ("ctx", "float32", [50, 16]),
        ):
            t = e.inputs.add()
            t.name, t.dtype = name, dtype
            t.shape.extend(shape)
        out = e.outputs.add()
        out.name, out.count, out.mean, out.min, out.max = "scores", 50, 0.31, 0.01, 0.97
        out.head.extend((k * 0.017) % 1.0 for k in range(50))
        events.append(e)
    return events


def calibrate_work(target_us: float) -> int:
    """Loop count of :func:`work` that takes about ``target_us`` (median of several timings, warm)."""
    n = 10_000
    for _ in range(3):
        timings = []
        for _ in range(21):
            t0 = time.perf_counter_ns()
            work(n)
            timings.append((time.perf_counter_ns() - t0) / 1000)
        n = max(1, int(n * target_us / statistics.median(timings)))
    return n


def work(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i
    return x


def fresh(template: InferenceEvent, i: int) -> InferenceEvent:
    """The event a request builds just before publishing it (hot in the CPU caches, as in the server)."""
    event = InferenceEvent()
    event.CopyFrom(template)
    event.event_id = uuid.uuid4().hex
    event.request_id = f"req-{event.event_id}"
    event.received_us += i
    return event


@dataclass
class Paced:
    call_us: list[float]
    request_us: list[float]


def paced(publish: Publish, events: list[InferenceEvent], rate: float, seconds: float, work_n: int) -> Paced:
    """Requests at ``rate``/s: Python work, build the event, publish it. Times the publish call and the request."""
    calls, requests = [], []
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        t0 = time.perf_counter_ns()
        work(work_n)
        event = fresh(events[i % len(events)], i)
        t1 = time.perf_counter_ns()
        publish(event)
        t2 = time.perf_counter_ns()
        calls.append((t2 - t1) / 1000)
        requests.append((t2 - t0) / 1000)
        delay = start + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return Paced(calls, requests)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def burst(publish: Publish, events: list[InferenceEvent], n: int, logger: EventLogger | None) -> tuple[float, float]:
    """Publish ``n`` events back to back: (publish calls/s, events/s until delivered or spooled)."""
    start = time.perf_counter()
    for i in range(n):
        publish(events[i % len(events)])
    published = time.perf_counter() - start
    if logger is not None:
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            s = logger.stats
            if s.queued == 0 and s.in_flight == 0:
                break
            time.sleep(0.002)
    return n / published, n / (time.perf_counter() - start)


def serialize_only(event: InferenceEvent) -> None:
    event.SerializeToString()


@dataclass
class Scenario:
    name: str
    config: EventLoggerConfig | None = None  # None: a baseline, ``fn`` is the publisher
    fn: Publish | None = None
    calls: list[float] = field(default_factory=list)
    requests: list[float] = field(default_factory=list)
    publish_rates: list[float] = field(default_factory=list)
    sustained_rates: list[float] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)

    def run(self, events: list[InferenceEvent], args: argparse.Namespace, seconds: float, work_n: int) -> None:
        logger = None
        if self.config is None:
            assert self.fn is not None
            publish = self.fn
        else:
            logger = EventLogger(self.config)
            logger.start()
            publish = logger.publish
            burst(publish, events, 2000, logger)  # warm-up: connected (or known to be down)
        try:
            p = paced(publish, events, args.rate, seconds, work_n)
            self.calls += p.call_us
            self.requests += p.request_us
            rate, sustained = burst(publish, events, args.burst, logger)
            self.publish_rates.append(rate)
            self.sustained_rates.append(sustained)
        finally:
            if logger is not None:
                logger.close(timeout_s=30)
                self.dropped.update(logger.stats.dropped)


@contextmanager
def kafka_broker(bootstrap: str | None, pin_cpu: int | None) -> Iterator[str]:
    """An existing broker, or one started here (all its threads pinned to ``pin_cpu``, when given)."""
    if bootstrap:
        yield bootstrap
        return
    from infra import kafka
    from infra.processes import port_free
    from recwatch.settings import Settings

    port = next(p for p in range(23000, 31000, 2) if port_free(p) and port_free(p + 1))
    home = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    try:
        cluster = kafka.start(home, cache=Settings.from_env().cache, base_port=port)
        pid = cluster.nodes[0].pid
        if pin_cpu is not None and pid is not None:
            for task in Path(f"/proc/{pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), {pin_cpu})
        yield cluster.bootstrap
    finally:
        kafka.stop(home)
        shutil.rmtree(home, ignore_errors=True)


def dead_bootstrap() -> str:
    from infra.processes import port_free

    port = next(p for p in range(31000, 32000) if port_free(p))
    return f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.logging.bench_publish", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--rate", type=float, default=2000, help="paced requests per second (default 2000)")
    parser.add_argument("--seconds", type=float, default=10, help="paced seconds per scenario, over all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="scenarios take turns this many times")
    parser.add_argument("--work-us", type=float, default=200, help="Python work per paced request (default 200)")
    parser.add_argument("--burst", type=int, default=50_000, help="events published back to back per round")
    parser.add_argument("--bootstrap", help="an existing Kafka (default: start one on free loopback ports)")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the broker started here on the last CPU and this process on the others, so the broker's own "
        "CPU does not count as logging cost",
    )
    args = parser.parse_args(argv)

    import confluent_kafka

    cpus = sorted(os.sched_getaffinity(0))
    broker_cpu = None
    if args.pin and not args.bootstrap and len(cpus) > 1:
        broker_cpu = cpus[-1]
        os.sched_setaffinity(0, set(cpus[:-1]))  # before any thread starts: librdkafka's threads inherit it
    print(
        f"python {platform.python_version()}, confluent-kafka {confluent_kafka.version()[0]} "
        f"(librdkafka {confluent_kafka.libversion()[0]}), {len(cpus)} cores"
        + (f"; broker on CPU {broker_cpu}, benchmark on {sorted(os.sched_getaffinity(0))}" if broker_cpu else "")
    )
    events = make_events(2000)
    size = statistics.mean(len(e.SerializeToString()) for e in events)
    work_n = calibrate_work(args.work_us)
    print(
        f"event ~{size:.0f} B serialized; paced: {args.rate:.0f} req/s, {args.seconds:.0f} s per scenario, "
        f"~{args.work_us:.0f} µs of Python work per request; burst: {args.burst} events; {args.rounds} rounds"
    )
    load_before = os.getloadavg()[0]
    spool_root = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    try:
        with kafka_broker(args.bootstrap, broker_cpu) as bootstrap:
            from infra import kafka

            topic = f"bench-{uuid.uuid4().hex[:8]}"
            kafka.ensure_topics(bootstrap, {topic: 6})
            scenarios = [
                Scenario("no-op", fn=NullPublisher().publish),
                Scenario("serialize only", fn=serialize_only),
                Scenario("kafka up", EventLoggerConfig(bootstrap=bootstrap, topic=topic, spool_dir=spool_root / "up")),
                Scenario(
                    "kafka up, 10 % sampled",
                    EventLoggerConfig(bootstrap=bootstrap, topic=topic, spool_dir=spool_root / "s", sample_rate=0.1),
                ),
                Scenario(
                    "kafka down (spooling)",
                    EventLoggerConfig(
                        bootstrap=dead_bootstrap(),
                        topic=topic,
                        spool_dir=spool_root / "down",
                        extra={"log_level": 0},
                    ),
                ),
            ]
            for _ in range(args.rounds):
                for scenario in scenarios:
                    scenario.run(events, args, args.seconds / args.rounds, work_n)
    finally:
        shutil.rmtree(spool_root, ignore_errors=True)
    print(f"load average (1 min): {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print_table(scenarios)
    return 0


def print_table(scenarios: list[Scenario]) -> None:
    base = scenarios[0]
    base_call, base_p50, base_p99 = pct(base.calls, 0.5), pct(base.requests, 0.5), pct(base.requests, 0.99)
    print()
    print(
        "| scenario | publish() p50 µs | p99 µs | p99.9 µs | p50 vs no-op "
        "| request p50 µs (vs no-op) | request p99 µs (vs no-op) | publish calls/s | sustained events/s | dropped |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in scenarios:
        c, q = s.calls, s.requests
        p50, p99 = pct(q, 0.5), pct(q, 0.99)
        print(
            f"| {s.name} | {pct(c, 0.5):.1f} | {pct(c, 0.99):.1f} | {pct(c, 0.999):.1f} "
            f"| {pct(c, 0.5) / base_call:.0f}x "
            f"| {p50:.0f} ({p50 - base_p50:+.0f}) | {p99:.0f} ({p99 - base_p99:+.0f}) "
            f"| {statistics.median(s.publish_rates):,.0f} | {statistics.median(s.sustained_rates):,.0f} "
            f"| {dict(s.dropped) or '-'} |"
        )


if __name__ == "__main__":
    sys.exit(main())
