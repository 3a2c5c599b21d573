"""``recwatch bench pipeline``: events/s per worker from Kafka to rows in the store, and end-to-end lag.

One run, one fresh topic (6 partitions by default) holding ``--events`` synthetic InferenceEvents produced
ahead (``events.py``), read in turn by consumers of their own groups:

- ``raw consume`` (the limit) and ``raw consume + decode``: a bare confluent-kafka consumer (``raw.py``);
- ``recwatch worker``: the real Faust worker and sink (``worker.py``) writing raw rows and 10 s aggregates
  into a chDB store daemon of its own; done when every event is a raw row and counted in the window rows;
- ``quixstreams``: the same aggregation written with Quix Streams in its own venv (``quix_app.py``); it
  keeps windows in its own state and writes nothing to ClickHouse.

Rates leave start-up out: the raw consumers are timed from their first batch, the worker from the moment
its consumer group owns every partition, to the last event (visible in the store, for the worker). Then,
with the worker still running, ``--lag-seconds`` of new
events are produced at a fixed rate (default half the worker's measured rate, at most 20,000/s) and each
event's end-to-end lag is the time from its ``produce()`` call to the first store poll (every
``--poll-interval`` s) whose window rows of its partition have counted it (``last_offset``): an upper bound, coarse by
one poll interval. ``--profile FILE`` records the worker with py-spy over the measured span.

Time: a Kafka broker start (~15 s), generating and producing the events (~40 µs each), the consumers and the
lag phase; about 3 min for 200,000 events. Measuring stops after ``--max-minutes`` (default 8; what is left
is skipped and said so). All processes it starts are stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.pipeline import stats
from benchmarks.pipeline.stats import Row
from benchmarks.serving.processes import cpu_of

ROOT = Path(__file__).resolve().parents[2]
ENV_HELP = """\
environment variables:
  RECWATCH_CACHE  Kafka jars and the Quix Streams venv (bench-venvs/quixstreams) (default: ~/.cache/recwatch)
  RECWATCH_KAFKA  bootstrap servers of an existing cluster; without it a broker is started for the run
"""
CONSUMERS = ("raw", "decode", "worker", "quix")
MAX_LAG_RATE = 20_000.0


def build_parser(prog: str = "recwatch bench pipeline") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(__doc__ or "").split("\n\n")[0],
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=200_000, help="events produced ahead (default 200000)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the topic (default 6)")
    parser.add_argument(
        "--consumers", default=",".join(CONSUMERS), help=f"comma-separated, of: {', '.join(CONSUMERS)} (default all)"
    )
    parser.add_argument("--lag-seconds", type=float, default=10.0, help="length of the lag phase (0: none)")
    parser.add_argument("--lag-rate", type=float, help="events/s in the lag phase (default: half the worker's)")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="store poll interval, s (default 0.1)")
    parser.add_argument("--profile", type=Path, help="py-spy raw (collapsed) profile of the worker to this file")
    parser.add_argument("--max-minutes", type=float, default=8.0, help="stop measuring after this (default 8)")
    parser.add_argument(
        "--workdir", type=Path, help="logs, Kafka and store data (default: a temporary dir, removed after a good run)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also run the worker of another checkout (e.g. `git worktree add /tmp/before HEAD~3`), alternating "
        "with this one's --worker-runs times each on the same events: before/after in one run (no lag phase)",
    )
    parser.add_argument("--worker-runs", type=int, default=1, help="worker runs (each; with --baseline: ABAB...)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--save", type=Path, help="also write the JSON object to this file")
    return parser


@dataclass
class Lag:
    rate: float
    sent: int
    seen: int
    p50_s: float
    p99_s: float
    max_s: float


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    lag: Lag | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    worker_startup_s: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # worker span: worker, store daemon, broker
    produce_s: float | None = None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it measured, 2 on bad options, 1 on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    consumers = [c.strip() for c in args.consumers.split(",") if c.strip()]
    if args.events < 1000 or args.partitions < 1 or any(c not in CONSUMERS for c in consumers):
        parser.error(f"--events >= 1000, --partitions >= 1, --consumers of {', '.join(CONSUMERS)}")
    cache = Path(os.environ.get("RECWATCH_CACHE") or Path.home() / ".cache" / "recwatch").absolute()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="recwatch-bench-pipeline-"))).absolute()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    bench = Bench(args, consumers, cache, workdir, say)
    try:
        result = bench.run()
    except KeyboardInterrupt:
        say("interrupted: stopping every process this run started")
        return 130
    except Exception as exc:
        from benchmarks.pipeline.quix_venv import QuixVenvError
        from benchmarks.serving.processes import ServerStartError
        from infra.errors import InfraError
        from store.base import StoreError

        if not isinstance(exc, InfraError | StoreError | ServerStartError | QuixVenvError | OSError):
            raise
        say(f"pipeline benchmark failed: {type(exc).__name__}: {exc} (logs in {workdir}/logs)")
        return 1
    finally:
        bench.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.workdir is None:  # Kafka's log and the store: ~570 MB a run (the logs are kept when a run fails)
        shutil.rmtree(workdir, ignore_errors=True)
    document = as_json(result, args)
    if args.save:
        args.save.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2) if args.json else report(result, args), end="\n" if args.json else "")
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Bench:
    """The services and consumers of one run; ``stop()`` ends every process it started (idempotent)."""

    def __init__(self, args: Any, consumers: list[str], cache: Path, workdir: Path, say: Callable[[str], None]):
        self.args, self.consumers, self.cache, self.workdir, self.say = args, consumers, cache, workdir, say
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.home = workdir / "home"
        self.run_id = uuid.uuid4().hex[:8]
        self.topic = f"bench.inference.{self.run_id}"
        self.kafka_managed = False
        self.procs: list[Any] = []
        self.result = Result()

    # ------------------------------------------------------------------------------------------ services

    def run(self) -> Result:
        from infra import kafka

        quix_python = None
        if "quix" in self.consumers:
            from benchmarks.pipeline.quix_venv import ensure_venv

            self.say("quixstreams venv: building once under bench-venvs/ (reused while its pins match)")
            quix_python = ensure_venv(self.cache)
        bootstrap = os.environ.get("RECWATCH_KAFKA")
        if not bootstrap:
            started = time.monotonic()
            self.kafka_managed = True
            cluster = kafka.start(self.home, cache=self.cache, brokers=1, base_port=_free_port_pair())
            bootstrap = cluster.bootstrap
            self.say(f"kafka {cluster.version} at {bootstrap} ({time.monotonic() - started:.1f} s)")
        self.bootstrap = bootstrap
        from schemas import topics

        kafka.ensure_topics(bootstrap, {self.topic: self.args.partitions, topics.DEAD_LETTER: 1})
        self._produce_ahead()
        for name in ("raw", "decode"):
            if name in self.consumers:
                self._raw(decode=name == "decode")
        if "worker" in self.consumers:
            baseline, runs = self.args.baseline, max(1, self.args.worker_runs)
            for i in range(runs):
                if baseline is not None:
                    self._worker(baseline.absolute(), f"baseline worker #{i + 1}", lag=False, run=2 * i)
                label = "recwatch worker" if baseline is None and runs == 1 else f"recwatch worker #{i + 1}"
                self._worker(ROOT, label, lag=i == runs - 1 and baseline is None, run=2 * i + 1)
        if quix_python is not None:
            self._quix(quix_python)
        return self.result

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.kafka_managed:
            from infra import kafka

            kafka.stop(self.home)
            self.kafka_managed = False

    def _left(self, phase: str) -> bool:
        if time.monotonic() < self.deadline:
            return True
        self.result.skipped[phase] = f"--max-minutes ({self.args.max_minutes:g}) reached before it"
        self.say(f"  skipping {phase}: --max-minutes reached")
        return False

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> Any:
        from benchmarks.serving import processes

        proc = processes.start(name, argv, log=self.workdir / "logs" / f"{name}.log", cpus=None, env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def _stop_proc(self, proc: Any) -> None:
        proc.stop()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    # ------------------------------------------------------------------------------------------ phases

    def _produce_ahead(self) -> None:
        from benchmarks.pipeline.events import produce_all, synthetic_events

        n = self.args.events
        self.say(f"producing {n:,} events to {self.topic} ({self.args.partitions} partitions)")
        started = time.monotonic()
        failed = produce_all(self.bootstrap, self.topic, synthetic_events(n, seed=random.randrange(1 << 30)))
        if failed:
            raise OSError(f"{failed} of {n} events were not delivered to {self.topic}")
        self.result.produce_s = time.monotonic() - started
        self.say(f"  produced in {self.result.produce_s:.1f} s (generation included)")

    def _raw(self, *, decode: bool) -> None:
        from benchmarks.pipeline.raw import consume

        name = "raw+decode" if decode else "raw"
        if not self._left(name):
            return
        row = consume(
            self.bootstrap,
            self.topic,
            f"bench-{name}-{self.run_id}",
            self.args.events,
            decode=decode,
            deadline=self.deadline,
        )
        self.result.rows.append(row)
        self.say(f"  {row.name:<22} {row.events_per_s:10,.0f} events/s")

    def _worker(self, tree: Path = ROOT, label: str = "recwatch worker", lag: bool = True, run: int = 0) -> None:
        """One worker run of ``tree``'s code (its own store daemon too) over the events, in a fresh store."""
        from store import migrate, open_store
        from store.daemon import find_daemon

        if not self._left(label):
            return
        path = self.home / "store" / f"chdb-{run}"
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {"PYTHONPATH": str(tree)}
        daemon = self._start(
            f"store-daemon-{run}", [sys.executable, "-m", "store.daemon", "--path", str(path)], env=env, cwd=tree
        )
        _wait(lambda: find_daemon(path) is not None, daemon, 60)
        url = f"chdb://{path}"
        store = open_store(url)
        store.connect()
        migrate(store)
        argv = [sys.executable, "-m", "benchmarks.pipeline.worker", "--bootstrap", self.bootstrap, "--store", url]
        group = f"bench-worker-{self.run_id}-{run}"
        argv += ["--topic", self.topic, "--group", group, "--data-dir", str(self.home / f"w{run}")]
        spawned = time.monotonic()
        worker = self._start(f"worker-{run}", argv, env=env, cwd=tree)
        broker_pid = _broker_pid(self.home) if self.kafka_managed else None

        def cpu() -> tuple[float, float, float]:
            return worker.cpu_seconds(), daemon.cpu_seconds(), cpu_of(broker_pid) if broker_pid else 0.0

        samples: list[tuple[float, int, tuple[float, float, float]]] = []
        profiler: subprocess.Popen[bytes] | None = None
        total = self.args.events
        try:
            # The clock starts when the group owns every partition (start-up excluded): the worker may take the
            # whole backlog in a few large batches, so "first rows visible" would come too late to start it.
            while not _group_assigned(self.bootstrap, group, self.topic):
                if not worker.alive():
                    raise OSError(f"the worker exited (code {worker.popen.returncode}); see {worker.log}")
                if time.monotonic() > self.deadline:
                    raise OSError(f"the worker did not join its group in time; see {worker.log}")
                time.sleep(0.05)
            self.result.worker_startup_s = time.monotonic() - spawned
            samples.append((time.perf_counter(), 0, cpu()))
            profiler = self._profile(worker.pid)
            while True:
                if not worker.alive():
                    raise OSError(f"the worker exited (code {worker.popen.returncode}); see {worker.log}")
                n = _visible(store, total)
                samples.append((time.perf_counter(), n, cpu()))
                if n >= total or time.monotonic() > self.deadline:
                    break
                time.sleep(self.args.poll_interval)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    profiler.wait(timeout=60)
            reached = samples[-1][1]
            if reached < total:
                self.say(f"  worker: only {reached:,} of {total:,} rows visible by the deadline")
            first = samples[0]
            last = next(s for s in samples if s[1] >= min(reached, total))
            events, seconds = min(reached, total), last[0] - first[0]
            spent = [b - a for a, b in zip(first[2], last[2], strict=True)]
            self.result.cpu_s = {"worker": spent[0], "store_daemon": spent[1], "broker": spent[2]}
            note = "Faust + sink: raw rows and 10 s aggregates inserted into chDB (daemon)"
            if tree != ROOT:
                note = f"the same, code of {tree}"
            row = Row(label, events, seconds, note, cpu_s=spent[0])
            self.result.rows.append(row)
            self.say(
                f"  {row.name:<22} {row.events_per_s:10,.0f} events/s (start-up {self.result.worker_startup_s:.1f} s;"
                f" cpu s: worker {spent[0]:.1f}, store daemon {spent[1]:.1f}, broker {spent[2]:.1f})"
            )
            if lag and self.args.lag_seconds > 0 and self._left("lag"):
                rate = self.args.lag_rate or min(MAX_LAG_RATE, max(500.0, row.events_per_s / 2))
                self.result.lag = self._lag(store, rate)
        finally:
            if profiler is not None and profiler.poll() is None:
                profiler.kill()
                profiler.wait()
            self._stop_proc(worker)
            store.close()
            self._stop_proc(daemon)

    def _profile(self, pid: int) -> subprocess.Popen[bytes] | None:
        if self.args.profile is None:
            return None
        py_spy = Path(sys.executable).parent / "py-spy"
        argv = [str(py_spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking"]
        argv += ["-o", str(self.args.profile)]
        log = open(self.workdir / "logs" / "py-spy.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _lag(self, store: Any, rate: float) -> Lag:
        from benchmarks.pipeline.events import produce_paced, synthetic_events

        count = max(1, int(rate * self.args.lag_seconds))
        end_us = int((time.time() + self.args.lag_seconds + 5) * 1e6)
        messages = list(synthetic_events(count, seed=1, end_us=end_us, span_s=self.args.lag_seconds))
        polls: list[tuple[float, dict[int, int]]] = []
        stop = threading.Event()
        # how far each partition's window rows have counted (the worker writes them after the raw rows)
        query = "SELECT kafka_partition, max(last_offset) FROM inference_metrics_10s_parts GROUP BY kafka_partition"

        def poll() -> None:
            while not stop.is_set():
                rows = store.query(query).rows
                polls.append((time.time(), {int(p): int(o) for p, o in rows}))
                stop.wait(self.args.poll_interval)

        self.say(f"  lag: {count:,} events at {rate:,.0f}/s")
        poller = threading.Thread(target=poll, name="lag-poller", daemon=True)
        poller.start()
        try:
            sent = produce_paced(self.bootstrap, self.topic, messages, rate=rate)
            want: dict[int, int] = {}
            for s in sent:
                want[s.partition] = max(want.get(s.partition, -1), s.offset)
            wait_until = min(self.deadline, time.monotonic() + 60)
            while time.monotonic() < wait_until:
                if polls and all(polls[-1][1].get(p, -1) >= o for p, o in want.items()):
                    break
                time.sleep(self.args.poll_interval)
        finally:
            stop.set()
            poller.join(timeout=30)
        lags = stats.visibility_lags(sent, polls)
        lag = Lag(
            rate,
            len(sent),
            len(lags),
            stats.percentile(lags, 50),
            stats.percentile(lags, 99),
            max(lags, default=math.nan),
        )
        self.say(f"  lag p50 {lag.p50_s:.3f} s, p99 {lag.p99_s:.3f} s ({lag.seen:,} of {lag.sent:,} seen)")
        return lag

    def _quix(self, python: Path) -> None:
        if not self._left("quixstreams"):
            return
        argv = [str(python), str(ROOT / "benchmarks" / "pipeline" / "quix_app.py"), "--bootstrap", self.bootstrap]
        argv += ["--topic", self.topic, "--group", f"bench-quix-{self.run_id}", "--events", str(self.args.events)]
        argv += ["--state-dir", str(self.home / "quix-state")]
        proc = self._start("quixstreams", argv, env={"PYTHONPATH": str(ROOT)})
        try:
            while proc.alive():
                if time.monotonic() > self.deadline:
                    self.result.skipped["quixstreams"] = "--max-minutes reached while it ran"
                    self.say("  quixstreams: --max-minutes reached; stopped")
                    return
                time.sleep(0.2)
        finally:
            self._stop_proc(proc)
        lines = [line for line in proc.log.read_text().splitlines() if line.startswith("{")]
        if proc.popen.returncode != 0 or not lines:
            self.result.skipped["quixstreams"] = f"exited with code {proc.popen.returncode}; see {proc.log}"
            self.say(f"  quixstreams failed; see {proc.log}")
            return
        out = json.loads(lines[-1])
        note = "decode, group_by (repartition), 10 s tumbling window, RocksDB state; no ClickHouse writes"
        row = Row("quixstreams", int(out["events"]), float(out["seconds"]), note, cpu_s=float(out["cpu_s"]))
        self.result.rows.append(row)
        self.say(f"  {row.name:<22} {row.events_per_s:10,.0f} events/s ({out['windows_closed']} windows closed)")


def _wait(ready: Callable[[], bool], proc: Any, timeout_s: float) -> None:
    from benchmarks.serving.processes import ServerStartError

    deadline = time.monotonic() + timeout_s
    while not ready():
        if not proc.alive():
            raise ServerStartError(proc.name, f"exited with code {proc.popen.returncode}", proc.log)
        if time.monotonic() > deadline:
            raise ServerStartError(proc.name, f"not ready after {timeout_s:.0f} s", proc.log)
        time.sleep(0.05)


def _free_port_pair(low: int = 20000, high: int = 32000) -> int:
    """A port ``p`` with ``p`` and ``p + 1`` free (broker and controller), below the ephemeral range."""
    from infra.processes import port_free

    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(low, high - 2, 2)
        if port_free(p) and port_free(p + 1):
            return p
    raise OSError(f"no two free adjacent ports in [{low}, {high})")


def _broker_pid(home: Path) -> int | None:
    from infra import kafka

    cluster = kafka.status(home)
    return cluster.nodes[0].pid if cluster and cluster.nodes else None


# ---------------------------------------------------------------------------------------------- output


def _rate(result: Result, name: str) -> float | None:
    """The row's events/s; for a worker measured several times (``name #1``, ``#2``, ...), the median."""
    rates = sorted(r.events_per_s for r in result.rows if r.name == name or r.name.startswith(f"{name} #"))
    if not rates:
        return None
    mid = len(rates) // 2
    return round(rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2, 1)


def as_json(result: Result, args: Any) -> dict[str, Any]:
    lag = result.lag
    return {
        "worker_events_per_s": _rate(result, "recwatch worker"),
        "baseline_worker_events_per_s": _rate(result, "baseline worker"),
        "raw_consume_events_per_s": _rate(result, "raw consume"),
        "raw_decode_events_per_s": _rate(result, "raw consume + decode"),
        "quixstreams_events_per_s": _rate(result, "quixstreams"),
        "lag_p50_s": lag.p50_s if lag else None,
        "lag_p99_s": lag.p99_s if lag else None,
        "target_events_per_s": stats.TARGET_EVENTS_PER_S,
        "lag": asdict(lag) if lag else None,
        "rows": [
            {**asdict(r), "events_per_s": r.events_per_s, "events_per_cpu_s": r.events_per_cpu_s} for r in result.rows
        ],
        "worker_startup_s": result.worker_startup_s,
        "worker_span_cpu_s": result.cpu_s,
        "produce_ahead_s": result.produce_s,
        "skipped": result.skipped,
        "options": {"events": args.events, "partitions": args.partitions, "poll_interval_s": args.poll_interval},
    }


def report(result: Result, args: Any) -> str:
    out = [stats.format_table(result.rows)]
    if result.lag:
        lag = result.lag
        out.append(
            f"end-to-end lag at {lag.rate:,.0f} events/s ({lag.seen:,} of {lag.sent:,} events seen): "
            f"p50 {lag.p50_s:.3f} s, p99 {lag.p99_s:.3f} s, max {lag.max_s:.3f} s "
            f"(produce() to the store poll that saw it; polls every {args.poll_interval:g} s)"
        )
    if result.cpu_s:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in result.cpu_s.items())
        out.append(f"CPU over the worker's measured span: {parts}; worker start-up {result.worker_startup_s:.1f} s")
    worker = _rate(result, "recwatch worker")
    if worker is not None:
        verdict = "PASS" if worker >= stats.TARGET_EVENTS_PER_S else "FAIL"
        out.append(f"{verdict}: recwatch worker {worker:,.0f} events/s vs target {stats.TARGET_EVENTS_PER_S:,.0f}")
    baseline = _rate(result, "baseline worker")
    if worker is not None and baseline is not None:
        change = worker / baseline - 1
        out.append(
            f"{'within 5 %' if change >= -0.05 else 'SLOWER by more than 5 %'}: recwatch worker {worker:,.0f} "
            f"events/s (median of its runs) vs the baseline's {baseline:,.0f} ({change:+.1%}), runs alternated on "
            "the same events"
        )
    for name, reason in result.skipped.items():
        out.append(f"skipped {name}: {reason}")
    out.append(
        "events/s: from the moment a consumer is ready (the worker: its group owns every partition) to its last event. "
        "ev/cpu-s: events per CPU-second of the consumer's own process."
    )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())


def _visible(store: Any, total: int) -> int:
    """Events a user can see: stored as raw rows *and* counted in the window rows (the worker writes those after
    the raw rows: on chDB, while it stores the next batch). The window rows are only read once every raw row is
    there (``count()`` is free; a ``FINAL`` read every 0.1 s would take the store's time from the worker)."""
    raw = int(store.query("SELECT count() FROM inference_events").scalar())
    if raw < total:
        return raw
    counted = store.query("SELECT sum(requests) + sum(late_events) FROM inference_metrics_10s_parts FINAL").scalar()
    return min(raw, int(counted or 0))


def _group_assigned(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` is stable with every partition of ``topic`` assigned to a member."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        [future] = admin.describe_consumer_groups([group], request_timeout=5).values()
        description = future.result(timeout=10)
    except Exception:  # the group does not exist yet, or the broker is slow to answer: not ready
        return False
    if description.state != ConsumerGroupState.STABLE:
        return False
    assigned = sum(
        1
        for member in description.members
        for tp in (member.assignment.topic_partitions if member.assignment else [])
        if tp.topic == topic
    )
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    return assigned >= len(partitions) > 0
