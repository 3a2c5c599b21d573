"""Requests/s and latency of ``Predictor.run`` with batching off and on: single-row requests to the tiny
ranker from 1, 8 and 32 threads, in process (no gRPC, events discarded).

    python -m benchmarks.serving.batching_microbench                 # ~1 min
    python -m benchmarks.serving.batching_microbench --seconds 10 --threads 1 4 16 64

Prints a Markdown table (the one in docs/batching.md). Latency is ``Predictor.run`` from call to return, so it
includes the time a request waits for its batch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas import InferenceEvent
from serving.batching import BatchingExecutor, BatchingParameters
from serving.config import ModelConfig
from serving.manager import ModelManager, synthesized_warmup
from serving.model_repository import Signature
from serving.predict import Arrays, PredictCall, Predictor
from serving.publisher import NullPublisher

MODEL = "ranker"


@dataclass
class Cell:
    mode: str
    threads: int
    requests: int
    errors: int
    seconds: float
    latencies_us: list[float]
    mean_batch: float

    def row(self) -> str:
        p50, p99 = np.percentile(self.latencies_us, [50, 99]) if self.latencies_us else (0.0, 0.0)
        return (
            f"| {self.mode} | {self.threads} | {self.requests / self.seconds:,.0f} | {p50 / 1000:.2f} | "
            f"{p99 / 1000:.2f} | {self.mean_batch:.1f} | {self.errors} |"
        )


class BatchSizes:
    """A request observer adding up the batch sizes of answered requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = self.count = 0

    def observe(self, event: InferenceEvent) -> None:
        if not event.status_code:
            with self._lock:
                self.total += event.batch_size
                self.count += 1


def _returning(inputs: Arrays) -> Callable[[Signature], Arrays]:
    return lambda _signature: inputs


def _calls(n: int) -> list[PredictCall]:
    rng = np.random.default_rng(0)
    calls = []
    for _ in range(n):
        inputs: Arrays = {
            "user_id": rng.integers(0, 10**9, 1),
            "item_id": rng.integers(0, 10**12, 1),
            "features": rng.normal(size=(1, 8)).astype(np.float32),
        }
        calls.append(
            PredictCall(
                model=MODEL,
                version=None,
                label="",
                signature_name="",
                output_filter=(),
                request_id=uuid.uuid4().hex,
                api="predict",
                decode=_returning(inputs),
                input_summaries=list,
                declared_rows=lambda: 1,
            )
        )
    return calls


def measure(manager: ModelManager, mode: str, params: BatchingParameters | None, threads: int, seconds: float) -> Cell:
    executor = BatchingExecutor(params) if params is not None else None
    sizes = BatchSizes()
    predictor = Predictor(manager, NullPublisher(), replica="bench", executor=executor, observers=[sizes])
    calls = _calls(1024)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    measuring = threading.Event()
    stop = threading.Event()

    def client(t: int) -> None:
        i = t * 31
        while not stop.is_set():
            start = time.perf_counter_ns()
            outcome = predictor.run(calls[i % len(calls)])
            took = (time.perf_counter_ns() - start) / 1000
            i += 1
            if measuring.is_set():
                latencies[t].append(took)
                errors[t] += outcome.status is not None

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    try:
        for worker in workers:
            worker.start()
        time.sleep(min(1.0, seconds / 4))  # warm-up: threads started, queues and TF's thread pools busy
        sizes.total = sizes.count = 0
        measuring.set()
        started = time.perf_counter()
        time.sleep(seconds)
        measuring.clear()
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        if executor is not None:
            executor.close()
    flat = [x for per_thread in latencies for x in per_thread]
    return Cell(mode, threads, len(flat), sum(errors), elapsed, flat, sizes.total / max(sizes.count, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving.batching_microbench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--timeouts-us", type=int, nargs="+", default=[0, 1000], help="batch_timeout_micros values")
    args = parser.parse_args(argv)

    from training.tiny_model import export_tiny_ranker

    load_before = os.getloadavg()[0]  # others' load on the machine skews every cell; say how much there was

    modes: list[tuple[str, BatchingParameters | None]] = [("off", None)]
    for timeout in args.timeouts_us:
        on = BatchingParameters(max_batch_size=args.max_batch_size, batch_timeout_micros=timeout)
        modes.append((f"on, timeout {timeout} µs", on))
    with tempfile.TemporaryDirectory() as tmp:
        export_tiny_ranker(Path(tmp), model_name=MODEL)
        manager = ModelManager([ModelConfig(MODEL, Path(tmp) / MODEL)], warmup=synthesized_warmup)
        manager.poll_once()
        cells: list[Cell] = []
        for threads in args.threads:  # modes interleaved: a neighbour's load hits all modes alike
            for mode, params in modes:
                cells.append(measure(manager, mode, params, threads, args.seconds))
    print(
        f"tiny ranker, single-row requests, {os.cpu_count()} CPUs (1-min load average {load_before:.1f} before), "
        f"max_batch_size {args.max_batch_size}, num_batch_threads {BatchingParameters().num_batch_threads}, "
        f"{args.seconds:g} s per cell\n"
    )
    print("| batching | threads | requests/s | p50 ms | p99 ms | mean batch rows | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    order = [mode for mode, _ in modes]
    for cell in sorted(cells, key=lambda c: (order.index(c.mode), c.threads)):
        print(cell.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
