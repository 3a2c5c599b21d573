"""Probe: events/s and CPU per event through Faust, in several setups, next to raw client loops.

    python -m benchmarks.pipeline.faust_probe.probe --events 200000
    python -m benchmarks.pipeline.faust_probe.probe --variants faust-batch --profile /tmp/batch.txt

Starts one Kafka broker on free loopback ports (or uses ``--bootstrap``), creates a 6-partition topic, produces
``--events`` synthetic InferenceEvents (``benchmarks/pipeline/events.py``, ~0.7 KB, lz4) and then runs every
variant in its own subprocess and fresh consumer group. A variant only counts events (no decode, no store).
Each is measured from its first delivered event (group join and Faust start-up left out) to ``--events``
events or ``--max-seconds``, whichever comes first; CPU is the child process's own (all its threads, e.g.
Faust's aiokafka consumer thread), so on a shared, noisy machine compare CPU µs/event first. After measuring,
the child commits and exits; the parent reads the group's committed offsets and checks that they never run
ahead of what the agent processed (at-least-once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
PARTITIONS = 6
MB = 1024 * 1024


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # iter | take | channel | batch | batch-take | aiokafka | confluent
    settings: dict[str, Any] = field(default_factory=dict)
    uvloop: bool = False
    note: str = ""


BUFFERS: dict[str, Any] = {"stream_buffer_maxsize": 65_536, "consumer_max_fetch_size": 4 * MB}
NOMON: dict[str, Any] = {"Monitor": "benchmarks.pipeline.faust_probe.probe:NoopMonitor"}
CYTHON: dict[str, Any] = {"cython_optimizations": True}
TUNED: dict[str, Any] = {**BUFFERS, **NOMON, **CYTHON, "stream_wait_empty": False, "broker_commit_every": 100_000}

VARIANTS: tuple[Variant, ...] = (
    Variant("faust-iter", "iter", note="async for event in stream, default App"),
    Variant("faust-take", "take", note="take_events(10_000, 0.5), default App (recwatch today)"),
    Variant("take+buffers", "take", BUFFERS, note="stream_buffer_maxsize 64k, fetch 4 MB/partition"),
    Variant("take+nomonitor", "take", NOMON, note="Monitor replaced by a no-op sensor"),
    Variant("take+cython", "take", CYTHON, note="cython_optimizations=True (StreamIterator fast path)"),
    Variant("take+uvloop", "take", uvloop=True, note="uvloop event loop"),
    Variant("take+tuned", "take", TUNED, uvloop=True, note="all of the above + stream_wait_empty=False"),
    Variant("iter+tuned", "iter", TUNED, uvloop=True, note="async for event in stream, tuned"),
    Variant("channel+tuned", "channel", TUNED, uvloop=True, note="drain stream.channel queue, event.ack()"),
    Variant("faust-batch", "batch", note="BatchingConsumer: one event per partition fetch, default App"),
    Variant("batch+tuned", "batch", TUNED, uvloop=True, note="BatchingConsumer, tuned, uvloop"),
    Variant("aiokafka", "aiokafka", note="raw AIOKafkaConsumer.getmany() loop"),
    Variant("aiokafka+uvloop", "aiokafka", uvloop=True, note="raw getmany() loop on uvloop"),
    Variant("confluent", "confluent", note="confluent-kafka consume(num_messages=1000)"),
)
BY_NAME = {v.name: v for v in VARIANTS}


def _noop_monitor() -> type:
    from faust.sensors import Monitor

    class _NoopMonitor(Monitor):
        """The Monitor's hot per-message/per-event hooks as no-ops (other stats stay)."""

        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            pass

        def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
            return None

        def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
            pass

        def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
            pass

        def track_tp_end_offset(self, tp: Any, offset: int) -> None:
            pass

    return _NoopMonitor


def __getattr__(name: str) -> Any:  # lazy: importing this module must not import faust
    if name == "NoopMonitor":
        return _noop_monitor()
    raise AttributeError(name)


# ------------------------------------------------------------------------------------------------ child


class Meter:
    """Counts events; measures from the first delivery to ``target`` events or ``max_s`` seconds."""

    def __init__(self, target: int, max_s: float, started_file: Path | None) -> None:
        self.target, self.max_s, self.started_file = target, max_s, started_file
        self.total = 0
        self.deliveries = 0
        self.first: tuple[float, float, int] | None = None
        self.end: tuple[float, float, int] | None = None

    def add(self, n: int) -> bool:
        """Count ``n`` processed events; True once measuring is over."""
        if self.end is not None:
            return True
        self.total += n
        self.deliveries += 1
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, time.process_time(), self.total)
            if self.started_file is not None:
                self.started_file.write_text(str(os.getpid()))
        elif self.total >= self.target or now - self.first[0] >= self.max_s:
            self.end = (now, time.process_time(), self.total)
            return True
        return False

    def result(self, **extra: Any) -> dict[str, Any]:
        assert self.first is not None and self.end is not None
        return {
            "events": self.end[2] - self.first[2],
            "seconds": self.end[0] - self.first[0],
            "cpu_s": self.end[1] - self.first[1],
            "processed": self.total,
            "per_delivery": self.total / max(1, self.deliveries),
            **extra,
        }


def _child(args: argparse.Namespace) -> None:
    variant = BY_NAME[args.child]
    if variant.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    meter = Meter(args.target, args.max_seconds, Path(args.started) if args.started else None)
    out = Path(args.out)
    if variant.kind == "confluent":
        _child_confluent(args, meter)
        out.write_text(json.dumps(meter.result()))
    elif variant.kind == "aiokafka":
        asyncio.run(_child_aiokafka(args, meter))
        out.write_text(json.dumps(meter.result()))
    else:
        _child_faust(args, variant, meter, out)


def _child_confluent(args: argparse.Namespace, meter: Meter) -> None:
    from confluent_kafka import Consumer

    from benchmarks.pipeline.raw import CONSUMER_CONFIG

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, **CONSUMER_CONFIG})
    consumer.subscribe([args.topic])
    try:
        done = False
        while not done:
            batch = consumer.consume(num_messages=1000, timeout=0.5)
            good = [m for m in batch if m.error() is None]
            if good:
                done = meter.add(len(good))
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()


async def _child_aiokafka(args: argparse.Namespace, meter: Meter) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * MB,
        fetch_max_bytes=50 * MB,
    )
    await consumer.start()
    try:
        done = False
        while not done:
            batches = await consumer.getmany(timeout_ms=500)
            n = sum(len(records) for records in batches.values())
            if n:
                done = meter.add(n)
        await consumer.commit()
    finally:
        await consumer.stop()


def _child_faust(args: argparse.Namespace, variant: Variant, meter: Meter, out: Path) -> None:
    import faust

    from stream_processors import faust_adapter as batching

    datadir = tempfile.mkdtemp(prefix="faust-probe-")
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        datadir=datadir,
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        topic_allow_declare=True,
        **variant.settings,
    )
    if variant.kind in ("batch", "batch-take"):
        batching.install(app)
        source = batching.batch_topic(app, args.topic)
    else:
        source = app.topic(args.topic, value_serializer="raw", key_serializer="raw")

    async def finish() -> None:
        # Let the stream ack what the agent processed, commit it, report, leave (no graceful group exit).
        await asyncio.sleep(1.0)
        await app.consumer.commit()
        out.write_text(json.dumps(meter.result()))
        os._exit(0)

    finishing: list[asyncio.Future[None]] = []

    async def count(n: int) -> None:
        """Count processed events; once measuring is over, park the agent for good, so that nothing is
        processed (or acked) after ``processed`` is taken and committed offsets can be checked against it."""
        if meter.add(n):
            if not finishing:
                finishing.append(asyncio.ensure_future(finish()))
            await asyncio.Event().wait()

    kind = variant.kind
    if kind == "iter":

        @app.agent(source, name="count")
        async def agent_iter(stream: Any) -> None:
            async for _value in stream:
                await count(1)

    elif kind == "take":

        @app.agent(source, name="count")
        async def agent_take(stream: Any) -> None:
            async for events in stream.take_events(10_000, within=0.5):
                await count(len(events))

    elif kind == "channel":

        @app.agent(source, name="count")
        async def agent_channel(stream: Any) -> None:
            queue = stream.channel.queue
            while True:
                batch = [await queue.get()]
                while not queue.empty() and len(batch) < 10_000:
                    batch.append(queue.get_nowait())
                done = meter.add(len(batch))  # "process" the batch ...
                for event in batch:  # ... then ack: committed offsets follow processing
                    event.ack()
                if done:
                    await count(0)

    elif kind == "batch":

        @app.agent(source, name="count")
        async def agent_batch(stream: Any) -> None:
            async for records in stream:  # one partition's records of one fetch; acked after the body
                await count(len(records))

    else:
        raise ValueError(kind)

    worker = faust.Worker(app, loglevel="warning", quiet=True, override_logging=False)
    worker.execute_from_commandline()


# ------------------------------------------------------------------------------------------------ parent


@dataclass
class Row:
    name: str
    events: int
    seconds: float
    cpu_s: float
    processed: int
    committed: int | None
    per_delivery: float
    note: str

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.events * 1e6 if self.events else float("nan")


def _committed(bootstrap: str, group: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(0, tp.offset) for tp in parts)
    finally:
        consumer.close()


def run_variant(
    variant: Variant,
    *,
    bootstrap: str,
    topic: str,
    events: int,
    max_seconds: float,
    workdir: Path,
    profile: Path | None,
    say: Callable[[str], None],
) -> Row | str:
    """Run one variant in a subprocess; a Row, or the reason it has none."""
    group = f"probe-{variant.name.replace('+', '-')}-{uuid.uuid4().hex[:8]}"  # Kafka topic-name safe
    out, started = workdir / f"{group}.json", workdir / f"{group}.started"
    argv = [
        sys.executable, "-m", "benchmarks.pipeline.faust_probe.probe", "--child", variant.name,
        "--bootstrap", bootstrap, "--topic", topic, "--group", group, "--target", str(events),
        "--max-seconds", str(max_seconds), "--out", str(out), "--started", str(started),
    ]  # fmt: skip
    log = workdir / f"{group}.log"
    spy: subprocess.Popen[bytes] | None = None
    with log.open("wb") as log_f:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log_f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + max_seconds + 90
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if profile is not None and spy is None and started.exists():
                    spy_argv = [
                        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid),
                        "--format", "raw", "--nonblocking", "--duration", str(int(max_seconds)),
                        "-o", str(profile),
                    ]  # fmt: skip
                    spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if spy is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=max_seconds + 10)
                if spy.poll() is None:
                    spy.kill()
    if not out.exists():
        tail = log.read_text(errors="replace")[-2000:]
        say(f"  {variant.name}: no result (exit {proc.returncode}); log tail:\n{tail}")
        return f"no result, exit {proc.returncode}"
    data = json.loads(out.read_text())
    committed = _committed(bootstrap, group, topic)
    row = Row(
        variant.name,
        data["events"],
        data["seconds"],
        data["cpu_s"],
        data["processed"],
        committed,
        data["per_delivery"],
        variant.note,
    )
    say(
        f"  {row.name:<16} {row.rate:10,.0f} ev/s  {row.cpu_us:7.1f} CPU µs/ev  "
        f"processed {row.processed:,} committed {committed:,}"
    )
    return row


def format_table(rows: Sequence[Row], baseline: str = "confluent") -> str:
    base = next((r.rate for r in rows if r.name == baseline), None)
    head = (
        f"{'variant':<16} {'events':>8} {'seconds':>8} {'events/s':>10} {'CPU µs/ev':>10} "
        f"{'vs confluent':>12} {'processed':>10} {'committed':>10} {'ev/deliv':>8}  note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.rate / base:.3f}x" if base else "-"
        ok = "" if r.committed is None or r.committed <= r.processed else "  !! committed > processed"
        lines.append(
            f"{r.name:<16} {r.events:>8,} {r.seconds:>8.2f} {r.rate:>10,.0f} {r.cpu_us:>10.1f} {ratio:>12} "
            f"{r.processed:>10,} {'-' if r.committed is None else r.committed:>10} {r.per_delivery:>8,.0f}  "
            f"{r.note}{ok}"
        )
    return "\n".join(lines)


def _uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline.faust_probe.probe", description=__doc__.split("\n")[0]
    )
    p.add_argument("--events", type=int, default=200_000, help="events to produce and to read per variant")
    p.add_argument("--max-seconds", type=float, default=20.0, help="measuring cap per variant")
    p.add_argument("--variants", default=",".join(v.name for v in VARIANTS), help="comma-separated subset")
    p.add_argument("--bootstrap", default=os.environ.get("RECWATCH_KAFKA"), help="use this broker")
    p.add_argument("--topic", help="an existing, already produced topic (skips producing)")
    p.add_argument("--profile", type=Path, help="py-spy raw profile of the (last) variant run, to this file")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    # internal: child mode
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    p.add_argument("--target", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--started", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    chosen = [BY_NAME[n.strip()] for n in args.variants.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="faust-probe-") as tmp:
        workdir = Path(tmp)
        home: Path | None = None
        bootstrap = args.bootstrap
        try:
            from infra import kafka

            if not bootstrap:
                from recwatch.settings import Settings
                from tests.ports import free_ports

                home = workdir / "home"
                cluster = kafka.start(home, cache=Settings.from_env().cache, brokers=1, base_port=free_ports())
                bootstrap = cluster.bootstrap
                say(f"kafka at {bootstrap}")
            topic = args.topic
            if not topic:
                from benchmarks.pipeline.events import produce_all, synthetic_events

                topic = f"probe.inference.{uuid.uuid4().hex[:8]}"
                kafka.ensure_topics(bootstrap, {topic: PARTITIONS})
                started = time.monotonic()
                failed = produce_all(bootstrap, topic, synthetic_events(args.events))
                if failed:
                    raise OSError(f"{failed} events not delivered")
                say(f"produced {args.events:,} events to {topic} in {time.monotonic() - started:.1f} s")
            rows: list[Row] = []
            for i, variant in enumerate(chosen):
                if variant.uvloop and not _uvloop_available():
                    say(f"  {variant.name}: skipped (uvloop not importable; add it to PYTHONPATH)")
                    continue
                result = run_variant(
                    variant,
                    bootstrap=bootstrap,
                    topic=topic,
                    events=args.events,
                    max_seconds=args.max_seconds,
                    workdir=workdir,
                    profile=args.profile if i == len(chosen) - 1 else None,
                    say=say,
                )
                if isinstance(result, Row):
                    rows.append(result)
        finally:
            if home is not None:
                from infra import kafka

                kafka.stop(home)
    print(format_table(rows))
    if args.json:
        args.json.write_text(
            json.dumps([{**r.__dict__, "events_per_s": r.rate, "cpu_us_per_event": r.cpu_us} for r in rows], indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
