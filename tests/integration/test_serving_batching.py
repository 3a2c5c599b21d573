"""Batching and the result cache with the real tiny SavedModel, through Predictor.run from many threads."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from serving.batching import BatchingExecutor, BatchingParameters
from serving.cache import LruResultCache
from serving.config import ModelConfig
from serving.manager import ModelManager, synthesized_warmup
from serving.predict import PredictCall, Predictor, PredictOutcome
from serving.publisher import InMemoryPublisher

pytest_plugins = ["tests.serving_fixtures"]
pytestmark = pytest.mark.integration

MODEL = "ranker"
# Rows of the tiny ranker's signature run batched and alone may differ by float rounding (other kernels).
RTOL, ATOL = 1e-5, 1e-6


@dataclass
class Stack:
    manager: ModelManager
    predictor: Predictor
    publisher: InMemoryPublisher
    batcher: BatchingExecutor
    cache: LruResultCache


def call(inputs: dict[str, np.ndarray]) -> PredictCall:
    rows = len(inputs["item_id"])
    return PredictCall(
        model=MODEL,
        version=None,
        label="",
        signature_name="",
        output_filter=(),
        request_id=uuid.uuid4().hex,
        api="predict",
        decode=lambda signature: inputs,
        input_summaries=list,
        declared_rows=lambda: rows,
    )


def direct_scores(stack: Stack, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The scores of the version now served, computed alone without batcher or cache."""
    return stack.manager.resolve(MODEL).model.signature()(inputs)["scores"]


@pytest.fixture
def make_stack() -> Iterator[Callable[[Path, BatchingParameters], Stack]]:
    threads_before = set(threading.enumerate())
    stacks: list[Stack] = []

    def make(base: Path, params: BatchingParameters) -> Stack:
        batcher = BatchingExecutor(params)
        cache = LruResultCache(1 << 20, ttl_s=300.0, models={MODEL})

        def on_unload(model: str, version: int) -> None:  # what the server composes from both hooks
            cache.forget(model, version)
            batcher.forget(model, version)

        manager = ModelManager([ModelConfig(MODEL, base)], warmup=synthesized_warmup, on_unload=on_unload)
        manager.poll_once()
        publisher = InMemoryPublisher()
        predictor = Predictor(manager, publisher, replica="r", executor=batcher, cache=cache)
        stacks.append(Stack(manager, predictor, publisher, batcher, cache))
        return stacks[-1]

    yield make
    for stack in stacks:
        stack.batcher.close()
    leftover = [t.name for t in threading.enumerate() if t not in threads_before]
    assert not leftover, f"threads left running: {leftover}"


def _batch_threads(version: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"batch_threads-{MODEL}-{version}-")]


def test_concurrent_requests_are_batched_answered_as_direct_calls_and_cached(
    make_stack, tiny_model_base, predict_request
) -> None:
    stack = make_stack(
        tiny_model_base,
        BatchingParameters(max_batch_size=32, batch_timeout_micros=5000, max_enqueued_batches=100, num_batch_threads=1),
    )
    n_threads, per_thread = 16, 6
    inputs = [
        [predict_request(1 + (t + i) % 3, seed=1000 * t + i)[1] for i in range(per_thread)] for t in range(n_threads)
    ]
    outcomes: dict[tuple[int, int], PredictOutcome] = {}
    start = threading.Barrier(n_threads)

    def client(t: int) -> None:
        start.wait()
        for i, x in enumerate(inputs[t]):
            outcomes[(t, i)] = stack.predictor.run(call(x))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(outcomes) == n_threads * per_thread
    for (t, i), outcome in outcomes.items():
        assert outcome.status is None, outcome.error
        np.testing.assert_allclose(outcome.outputs["scores"], direct_scores(stack, inputs[t][i]), rtol=RTOL, atol=ATOL)
        assert not outcome.event.cache_hit
    events = stack.publisher.events
    assert len(events) == n_threads * per_thread
    merged = [e for e in events if e.batch_size > e.rows]
    assert len(merged) > len(events) // 2, [(e.rows, e.batch_size) for e in events]
    assert all(e.batch_size <= 32 for e in events)
    assert sum(e.latency.queue_us > 0 for e in events) > len(events) // 2
    assert all(e.latency.compute_us > 0 for e in events)

    again = stack.predictor.run(call(inputs[3][2]))

    assert again.event.cache_hit and again.status is None
    np.testing.assert_array_equal(again.outputs["scores"], outcomes[(3, 2)].outputs["scores"])
    assert again.event.latency.compute_us == 0
    assert stack.cache.stats().hits == 1


def test_after_an_unload_the_version_cache_entries_and_batch_threads_are_gone(
    make_stack, tiny_model_base, tmp_path, predict_request
) -> None:
    from training.tiny_model import export_tiny_ranker

    base = tmp_path / MODEL
    base.mkdir()
    shutil.copytree(tiny_model_base / "1", base / "1")
    stack = make_stack(base, BatchingParameters(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1))
    _, x = predict_request(4, seed=7)
    first = stack.predictor.run(call(x))
    assert not first.event.cache_hit and first.event.version == 1
    assert stack.predictor.run(call(x)).event.cache_hit
    assert _batch_threads(1)

    export_tiny_ranker(tmp_path, model_name=MODEL, version=2, seed=1)
    assert stack.manager.poll_once() == [f"{MODEL}: version 2 loaded", f"{MODEL}: version 1 unloaded"]

    assert stack.cache.stats().entries == 0
    for thread in _batch_threads(1):
        thread.join(10)
    assert not _batch_threads(1)
    recomputed = stack.predictor.run(call(x))
    assert not recomputed.event.cache_hit and recomputed.event.version == 2
    np.testing.assert_allclose(recomputed.outputs["scores"], direct_scores(stack, x), rtol=RTOL, atol=ATOL)
    assert not np.allclose(recomputed.outputs["scores"], first.outputs["scores"])  # v2 has other weights
    assert stack.predictor.run(call(x)).event.cache_hit
