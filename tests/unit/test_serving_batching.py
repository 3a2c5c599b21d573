"""Dynamic batching with a stand-in signature that records the batches it is called with (no TensorFlow).

Time is a ManualBatchClock: a batch's timeout passes when the test advances the clock, never by sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.batching import BatchingExecutor, BatchingParameters, ManualBatchClock, parse_batching_parameters
from serving.config import ConfigFileError
from serving.errors import ModelExecutionError, OverloadedError, status_of
from serving.model_repository import LoadedModel, Signature
from serving.predict import Execution, InFlight

WAIT_S = 10.0  # upper bound for a result that is due now; never reached unless the code under test hangs


class RecordingSignature:
    """``scores = 2 * sum(features) + item_id`` and ``ids = item_id`` per row; keeps a copy of every batch."""

    def __init__(self, name: str = "serving_default", clock: ManualBatchClock | None = None) -> None:
        self.name = name
        self.calls: list[dict[str, np.ndarray]] = []
        self.clock = clock
        self.compute_us = 0
        self.error: Exception | None = None
        self.extra_outputs: dict[str, np.ndarray] = {}
        self.entered = threading.Event()
        self.gate: threading.Event | None = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append({k: np.array(v) for k, v in inputs.items()})
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S)
        if self.clock is not None and self.compute_us:
            self.clock.advance(self.compute_us)
        if self.error is not None:
            raise self.error
        return {**expected(inputs), **self.extra_outputs}

    @property
    def batch_rows(self) -> list[int]:
        return [len(c["item_id"]) for c in self.calls]


def expected(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    scores = 2 * inputs["features"].sum(axis=1) + inputs["item_id"]
    return {"scores": scores.astype(np.float32), "ids": np.broadcast_to(inputs["item_id"], scores.shape).copy()}


def request(rows: int, seed: int = 0, *, width: int = 8, id_dtype: Any = np.int64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "item_id": rng.integers(0, 1000, rows).astype(id_dtype),
        "features": rng.normal(size=(rows, width)).astype(np.float32),
    }


def load(version: int = 1, name: str = "ranker") -> LoadedModel:
    return LoadedModel(name, version, Path("."), {}, {}, _root=None)


_LOADED = {1: load(1), 2: load(2)}


def model(version: int = 1) -> LoadedModel:
    """The loaded object of a version: the manager hands every request of a version the same object."""
    return _LOADED[version]


def sig(fake: RecordingSignature) -> Signature:
    return cast(Signature, fake)


def assert_answers(execution: Execution, inputs: dict[str, np.ndarray]) -> None:
    want = expected(inputs)
    assert set(execution.outputs) == set(want)
    for name, array in want.items():
        np.testing.assert_array_equal(execution.outputs[name], array)


Make = Callable[..., tuple[BatchingExecutor, ManualBatchClock]]


@pytest.fixture
def make() -> Iterator[Make]:
    """``make(**params)`` -> a BatchingExecutor on a ManualBatchClock (one batch thread unless given);
    every executor is closed afterwards and no thread may outlive it."""
    before = set(threading.enumerate())
    made: list[BatchingExecutor] = []

    def build(**params: Any) -> tuple[BatchingExecutor, ManualBatchClock]:
        clock = ManualBatchClock()
        executor = BatchingExecutor(BatchingParameters(**{"num_batch_threads": 1, **params}), clock=clock)
        made.append(executor)
        return executor, clock

    yield build
    for executor in made:
        executor.close()
    leftover = [t.name for t in threading.enumerate() if t not in before]
    assert not leftover, f"threads left running after close(): {leftover}"


# ---------------------------------------------------------------------------------------------- parameters


def test_batching_parameters_file_parses_with_tf_serving_defaults() -> None:
    assert parse_batching_parameters("") == BatchingParameters()
    defaults = BatchingParameters()
    assert (defaults.max_batch_size, defaults.batch_timeout_micros, defaults.max_enqueued_batches) == (1000, 0, 10)
    assert defaults.num_batch_threads >= 1
    params = parse_batching_parameters(
        """
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 4 }
        thread_pool_name { value: "ranker_batch" }
        allowed_batch_sizes: 8
        allowed_batch_sizes: [16, 32]
        pad_variable_length_inputs: false
        """
    )
    assert params == BatchingParameters(32, 2000, 100, 4, "ranker_batch", (8, 16, 32), False)


@pytest.mark.parametrize(
    "text",
    [
        "max_batch_size: 32",  # TF Serving's fields are wrappers: max_batch_size { value: 32 }
        "max_batch_sizes { value: 32 }",
        "max_batch_size { value: 0 }",
        "num_batch_threads { value: 0 }",
        "batch_timeout_micros { value: -1 }",
        "max_batch_size { value: 32 } allowed_batch_sizes: [8, 16]",  # the last must equal max_batch_size
        "max_batch_size { value: 32 } allowed_batch_sizes: [16, 8, 32]",
    ],
)
def test_batching_parameters_tf_serving_would_refuse_are_refused(text: str) -> None:
    with pytest.raises(ConfigFileError):
        parse_batching_parameters(text)


# ---------------------------------------------------------------------------------------------- merging


def test_concurrent_requests_run_as_one_call_and_each_gets_its_own_rows(make: Make) -> None:
    executor, _ = make(max_batch_size=6, batch_timeout_micros=10_000_000)
    fake = RecordingSignature()
    inputs = [request(1, seed=1), request(2, seed=2), request(3, seed=3)]

    futures = [executor.submit(model(), sig(fake), x) for x in inputs]  # 6 rows: the batch is full and runs

    results = [f.result(WAIT_S) for f in futures]
    assert fake.batch_rows == [6]
    np.testing.assert_array_equal(fake.calls[0]["item_id"], np.concatenate([x["item_id"] for x in inputs]))
    for result, x in zip(results, inputs, strict=True):
        assert_answers(result, x)
        assert result.batch_size == 6


def test_a_batch_runs_when_its_timeout_passes_since_its_first_request(make: Make) -> None:
    executor, clock = make(max_batch_size=32, batch_timeout_micros=1000)
    fake = RecordingSignature()
    first = executor.submit(model(), sig(fake), request(1, seed=1))
    clock.advance(999)
    second = executor.submit(model(), sig(fake), request(2, seed=2))
    assert not first.done() and fake.calls == []
    assert executor.queued_requests() == 2

    clock.advance(1)

    a, b = first.result(WAIT_S), second.result(WAIT_S)
    assert fake.batch_rows == [3] and executor.queued_requests() == 0
    assert (a.queue_us, b.queue_us) == (1000, 1)
    assert a.batch_size == b.batch_size == 3


def test_a_batch_runs_at_once_when_every_request_in_flight_is_in_it(make: Make) -> None:
    executor, clock = make(max_batch_size=32, batch_timeout_micros=1000)
    in_flight = InFlight()
    executor = BatchingExecutor(executor.params, clock=clock, in_flight=in_flight)
    fake = RecordingSignature()
    try:
        with in_flight:  # a lone request: nobody can join its batch, so it does not wait for the timeout
            alone = executor.submit(model(), sig(fake), request(1, seed=1)).result(WAIT_S)
        assert alone.queue_us == 0 and fake.batch_rows == [1]

        with in_flight, in_flight, in_flight:  # three in flight, two submitted: the batch waits for the third
            first = executor.submit(model(), sig(fake), request(1, seed=2))
            second = executor.submit(model(), sig(fake), request(2, seed=3))
            assert not first.done() and executor.queued_requests() == 2
            third = executor.submit(model(), sig(fake), request(3, seed=4))  # now all three wait: it runs
            results = [f.result(WAIT_S) for f in (first, second, third)]
        assert fake.batch_rows == [1, 6] and {r.batch_size for r in results} == {6}
        assert all(r.queue_us == 0 for r in results)  # the clock never moved: no timeout was needed
    finally:
        executor.close()


def test_a_request_alone_in_the_server_is_computed_on_its_own_thread(make: Make) -> None:
    executor, clock = make(max_batch_size=32, batch_timeout_micros=1000)
    in_flight = InFlight()
    executor = BatchingExecutor(executor.params, clock=clock, in_flight=in_flight)
    threads: list[threading.Thread] = []

    class ThreadRecording(RecordingSignature):
        def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            threads.append(threading.current_thread())
            return super().__call__(inputs)

    fake = ThreadRecording()
    try:
        with in_flight:
            alone = executor.submit(model(), sig(fake), request(2, seed=1))
            assert alone.done()  # answered before submit returned: no batch thread was involved
            assert_answers(alone.result(WAIT_S), request(2, seed=1))
        assert threads == [threading.current_thread()] and alone.result().batch_size == 2

        fake.gate = threading.Event()  # a batch computing on the batch thread: the next request must queue
        with in_flight, in_flight:
            first = executor.submit(model(), sig(fake), request(1, seed=2))
            second = executor.submit(model(), sig(fake), request(1, seed=3))
            fake.gate.set()
            first.result(WAIT_S), second.result(WAIT_S)
        assert threads[1] is not threading.current_thread() and fake.batch_rows == [2, 2]
    finally:
        executor.close()


def test_a_batch_runs_when_full_or_when_the_next_request_does_not_fit(make: Make) -> None:
    executor, _ = make(max_batch_size=4, batch_timeout_micros=10_000_000)
    fake = RecordingSignature()
    three = executor.submit(model(), sig(fake), request(3, seed=1))
    two = executor.submit(model(), sig(fake), request(2, seed=2))  # 3 + 2 > 4: the first batch closes with 3

    assert three.result(WAIT_S).batch_size == 3
    assert not two.done()
    fill = executor.submit(model(), sig(fake), request(2, seed=3))  # 2 + 2 = 4: full, runs without the timeout
    assert two.result(WAIT_S).batch_size == fill.result(WAIT_S).batch_size == 4
    assert fake.batch_rows == [3, 4]


def test_requests_whose_shapes_or_dtypes_differ_are_batched_apart(make: Make) -> None:
    executor, clock = make(max_batch_size=32, batch_timeout_micros=1000)
    fake = RecordingSignature()
    inputs = [
        request(2, seed=1),
        request(2, seed=2, width=4),  # another non-batch dimension
        request(2, seed=3, id_dtype=np.int32),  # another dtype
        request(3, seed=4),  # merges with the first
    ]
    futures = [executor.submit(model(), sig(fake), x) for x in inputs]

    clock.advance(1000)

    results = [f.result(WAIT_S) for f in futures]
    for result, x in zip(results, inputs, strict=True):
        assert_answers(result, x)
    assert sorted(fake.batch_rows) == [2, 2, 5]
    assert [r.batch_size for r in results] == [5, 2, 2, 5]


def test_requests_that_cannot_be_merged_run_alone_and_unpadded(make: Make) -> None:
    executor, clock = make(max_batch_size=4, batch_timeout_micros=1000, allowed_batch_sizes=(2, 4))
    fake = RecordingSignature()
    broadcast: dict[str, np.ndarray] = {"item_id": np.arange(3), "features": np.ones((1, 8), np.float32)}
    oversized = request(6, seed=1)  # more rows than max_batch_size
    empty = request(0, seed=2)
    mergeable = request(1, seed=3)
    inputs = [broadcast, oversized, empty, mergeable]
    futures = [executor.submit(model(), sig(fake), x) for x in inputs]

    clock.advance(1000)

    for future, x in zip(futures, inputs, strict=True):
        assert_answers(future.result(WAIT_S), x)
    assert sorted(fake.batch_rows) == [0, 2, 3, 6]  # only the mergeable request is padded (1 -> 2 rows)


def test_padding_to_the_next_allowed_batch_size_repeats_the_first_row(make: Make) -> None:
    executor, clock = make(max_batch_size=8, batch_timeout_micros=1000, allowed_batch_sizes=(2, 4, 8))
    fake = RecordingSignature()
    a, b = request(2, seed=1), request(1, seed=2)
    futures = [executor.submit(model(), sig(fake), x) for x in (a, b)]

    clock.advance(1000)

    for future, x in zip(futures, (a, b), strict=True):
        result = future.result(WAIT_S)
        assert_answers(result, x)
        assert result.batch_size == 3  # rows of requests; padding is not counted
    assert fake.batch_rows == [4]
    np.testing.assert_array_equal(fake.calls[0]["features"][3], a["features"][0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=7), min_size=1, max_size=10),
    max_batch_size=st.integers(min_value=1, max_value=16),
    pad=st.booleans(),
    threads=st.integers(min_value=1, max_value=3),
)
def test_concatenated_then_split_outputs_equal_per_request_outputs(
    sizes: list[int], max_batch_size: int, pad: bool, threads: int
) -> None:
    allowed = tuple(sorted({max(1, max_batch_size // 2), max_batch_size})) if pad else ()
    clock = ManualBatchClock()
    params = BatchingParameters(
        max_batch_size=max_batch_size,
        batch_timeout_micros=500,
        max_enqueued_batches=len(sizes),
        num_batch_threads=threads,
        allowed_batch_sizes=allowed,
    )
    executor = BatchingExecutor(params, clock=clock)
    fake = RecordingSignature()
    try:
        inputs = [request(rows, seed=i) for i, rows in enumerate(sizes)]
        futures = [executor.submit(model(), sig(fake), x) for x in inputs]
        clock.advance(500)
        results = [f.result(WAIT_S) for f in futures]
    finally:
        executor.close()
    for result, x in zip(results, inputs, strict=True):
        assert_answers(result, x)
    assert sum(fake.batch_rows) >= sum(sizes)
    for rows in fake.batch_rows:
        assert rows <= max(max_batch_size, *sizes)


# ---------------------------------------------------------------------------------------------- load, time, errors


def test_beyond_max_enqueued_batches_a_request_is_refused_at_once(make: Make) -> None:
    executor, _ = make(max_batch_size=1, max_enqueued_batches=1)
    fake = RecordingSignature()
    fake.gate = threading.Event()
    running = executor.submit(model(), sig(fake), request(1, seed=1))
    assert fake.entered.wait(WAIT_S)  # the thread computes the first batch; batches taken do not count
    waiting = executor.submit(model(), sig(fake), request(1, seed=2))

    with pytest.raises(OverloadedError) as info:
        executor.submit(model(), sig(fake), request(1, seed=3))

    assert status_of(info.value).http == 429
    fake.gate.set()
    assert_answers(running.result(WAIT_S), request(1, seed=1))
    assert_answers(waiting.result(WAIT_S), request(1, seed=2))
    assert_answers(executor.execute(model(), sig(fake), request(1, seed=4)), request(1, seed=4))


def test_execution_reports_queue_and_compute_time_from_the_clock(make: Make) -> None:
    executor, clock = make(max_batch_size=8, batch_timeout_micros=1000)
    fake = RecordingSignature(clock=clock)
    fake.compute_us = 250
    future = executor.submit(model(), sig(fake), request(2))

    clock.advance(1000)

    result = future.result(WAIT_S)
    assert (result.queue_us, result.compute_us, result.batch_size) == (1000, 250, 2)


def test_an_error_of_the_signature_goes_to_every_request_of_the_batch(make: Make) -> None:
    executor, clock = make(max_batch_size=8, batch_timeout_micros=1000)
    fake = RecordingSignature()
    fake.error = ModelExecutionError("the model failed")
    futures = [executor.submit(model(), sig(fake), request(2, seed=i)) for i in range(3)]

    clock.advance(1000)

    for future in futures:
        with pytest.raises(ModelExecutionError, match="the model failed"):
            future.result(WAIT_S)
    assert fake.batch_rows == [6]
    fake.error = None  # the queue keeps serving
    later = executor.submit(model(), sig(fake), request(1, seed=9))
    clock.advance(1000)
    assert_answers(later.result(WAIT_S), request(1, seed=9))


def test_outputs_without_a_batch_dimension_cannot_be_split_back(make: Make) -> None:
    executor, clock = make(max_batch_size=8, batch_timeout_micros=1000)
    fake = RecordingSignature()
    fake.extra_outputs = {"loss": np.float32(0.5) * np.ones(())}
    futures = [executor.submit(model(), sig(fake), request(2, seed=i)) for i in range(2)]
    clock.advance(1000)
    for future in futures:
        with pytest.raises(ModelExecutionError, match="'loss'"):
            future.result(WAIT_S)

    alone = executor.submit(model(), sig(fake), request(2, seed=5))  # a batch of one is returned unsplit
    clock.advance(1000)
    assert alone.result(WAIT_S).outputs["loss"].shape == ()


# ---------------------------------------------------------------------------------------------- queues, unload, close


def test_each_version_and_signature_has_its_own_queue(make: Make) -> None:
    executor, clock = make(max_batch_size=2, batch_timeout_micros=1000)
    v1, v2 = model(1), model(2)
    fakes = {key: RecordingSignature(name=key[1]) for key in [(1, "a"), (1, "b"), (2, "a")]}
    futures = [
        executor.submit(v1 if version == 1 else v2, sig(fake), request(1, seed=i))
        for i, ((version, _), fake) in enumerate(fakes.items())
    ]
    clock.advance(1000)
    for future in futures:
        assert future.result(WAIT_S).batch_size == 1
    assert [f.batch_rows for f in fakes.values()] == [[1], [1], [1]]


def _threads_named(part: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if part in t.name]


def test_forget_drops_a_version_queue_after_running_what_it_holds(make: Make) -> None:
    executor, clock = make(max_batch_size=8, batch_timeout_micros=1000, thread_pool_name="bt")
    fake = RecordingSignature()
    v1 = load(1)
    queued = executor.submit(v1, sig(fake), request(2, seed=1))
    assert _threads_named("bt-ranker-1-")

    executor.forget("ranker", 1)

    assert_answers(queued.result(WAIT_S), request(2, seed=1))  # ran at once: the queue drains without waiting
    for thread in _threads_named("bt-ranker-1-"):
        thread.join(WAIT_S)
    assert not _threads_named("bt-ranker-1-")
    late = executor.submit(v1, sig(fake), request(1, seed=2))  # resolved v1 before the unload: runs unbatched
    assert late.done() and late.result().batch_size == 0
    assert not _threads_named("bt-ranker-1-")
    reloaded = executor.submit(load(1), sig(fake), request(1, seed=3))  # the same version loaded again
    clock.advance(1000)
    assert reloaded.result(WAIT_S).batch_size == 1
    assert _threads_named("bt-ranker-1-")


def test_close_runs_queued_batches_joins_threads_and_refuses_later_requests(make: Make) -> None:
    executor, _ = make(max_batch_size=8, batch_timeout_micros=10_000_000, num_batch_threads=2, thread_pool_name="bc")
    fake = RecordingSignature()
    queued = executor.submit(model(), sig(fake), request(3))
    assert len(_threads_named("bc-ranker-1-")) == 2

    executor.close()

    assert queued.done()
    assert_answers(queued.result(), request(3))
    assert not _threads_named("bc-ranker-1-")
    with pytest.raises(OverloadedError):
        executor.submit(model(), sig(fake), request(1))


def test_execute_blocks_callers_until_their_batch_ran(make: Make) -> None:
    executor, _ = make(max_batch_size=4, batch_timeout_micros=10_000_000, num_batch_threads=2)
    fake = RecordingSignature()
    inputs = [request(1, seed=i) for i in range(4)]
    results: dict[int, Execution] = {}

    def call(i: int) -> None:
        results[i] = executor.execute(model(), sig(fake), inputs[i])

    callers = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(WAIT_S)
    assert sorted(results) == [0, 1, 2, 3]
    assert fake.batch_rows == [4]
    for i, x in enumerate(inputs):
        assert_answers(results[i], x)


def test_a_pending_answer_times_out_then_arrives_and_can_be_read_twice() -> None:
    from serving.batching import Pending

    pending = Pending()
    assert not pending.done()
    with pytest.raises(TimeoutError):
        pending.result(0.01)
    execution = Execution({"scores": np.zeros(1, np.float32)}, batch_size=1)
    pending.set_result(execution)
    assert pending.done()
    assert pending.result(WAIT_S) is execution and pending.result() is execution
    failed = Pending()
    failed.set_exception(ModelExecutionError("boom"))
    for _ in range(2):
        with pytest.raises(ModelExecutionError, match="boom"):
            failed.result(WAIT_S)
