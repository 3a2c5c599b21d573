"""Dynamic batching: concurrent requests to one model version and signature run as one signature call.

Each ``(model, version, signature)`` gets a queue and ``num_batch_threads`` threads, started by its first
request. A request joins the open batch of its queue whose inputs it can be concatenated with (same input
names, dtypes and non-batch dimensions) if its rows still fit in ``max_batch_size``; otherwise it opens a new
batch. A batch runs when it is full, when the next mergeable request does not fit in it, or once
``batch_timeout_micros`` have passed since its first request and a thread is free — or at once when every
request in flight in the server is already waiting in the queue (``in_flight``: nobody else can join, so
waiting would only add latency). A request that is alone in the server while its queue is idle is computed on
its own thread, not handed to a batch thread (two thread switches less at concurrency 1). Then the signature is
called once on the inputs concatenated along dimension 0 (padded with copies of the first row up to the next
``allowed_batch_sizes`` entry, if any) and its outputs are split back by rows.

Guarantees:

- **Load shedding, not blocking**: a request that would need a new batch while ``max_enqueued_batches``
  batches already wait (batches being computed do not count) raises :class:`OverloadedError`
  (RESOURCE_EXHAUSTED / 429) at once. A caller waits only for its own batch.
- **Requests that cannot be merged run alone**, unpadded, in a batch of their own: inputs whose first
  dimensions differ (a ``user_id`` of shape ``[1]`` broadcast over ``[n]`` items), scalars, zero rows, and
  requests of more than ``max_batch_size`` rows (TF Serving rejects those unless large-batch splitting is on;
  running them alone answers them with the same result as without batching).
- **Errors of a batch's signature call go to every request in it**, as in TF Serving. Inputs are validated
  against the signature before they are submitted (:func:`serving.tensors.decode_inputs`). A batch of several
  requests whose outputs have no batch dimension (an output of shape ``[]`` or not ``rows`` long) fails with
  ModelExecutionError: its outputs cannot be split.
- **Unload**: :meth:`BatchingExecutor.forget` drops a version's queues; batches already queued still run (the
  in-flight requests hold the model), then their threads exit. A request that resolved the version before it
  was unloaded and arrives afterwards runs unbatched. :meth:`BatchingExecutor.close` drains all queues and joins
  every thread; requests after it raise OverloadedError.

Times in each request's :class:`Execution`: ``queue_us`` from submission to the start of its batch,
``batch_us`` the concatenation, padding and split, ``compute_us`` the signature call, ``batch_size`` the rows of
all requests in the batch (padding rows excluded; 0 when it ran unbatched). All are read from an injected
:class:`BatchClock`, so tests control them (and the batch timeout) with :class:`ManualBatchClock`::

    executor = BatchingExecutor(BatchingParameters(max_batch_size=32, batch_timeout_micros=1000))
    predictor = Predictor(manager, publisher, replica="r", executor=executor)
    ...
    executor.close()
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from serving.config import ConfigFileError
from serving.errors import ModelExecutionError, OverloadedError
from serving.model_repository import LoadedModel, Signature
from serving.predict import Arrays, Execution

log = logging.getLogger(__name__)

__all__ = [
    "BatchClock",
    "BatchingExecutor",
    "BatchingParameters",
    "ManualBatchClock",
    "SystemBatchClock",
    "parse_batching_parameters",
]


# ---------------------------------------------------------------------------------------------- parameters


def _default_threads() -> int:
    return os.cpu_count() or 1  # TF Serving's default: port::MaxParallelism()


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's ``BatchingParameters``, with its defaults; raises ConfigFileError when unusable.

    ``thread_pool_name`` prefixes the batch threads' names. ``pad_variable_length_inputs`` is read but not
    honoured: requests whose non-batch dimensions differ go to separate batches instead (same answers, less
    merging).
    """

    max_batch_size: int = 1000  # rows
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10  # per queue, i.e. per (model, version, signature)
    num_batch_threads: int = field(default_factory=_default_threads)  # per queue
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ConfigFileError(f"batching parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ConfigFileError(
                f"batching parameter batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}"
            )
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(s < 1 for s in sizes) or any(a >= b for a, b in itertools.pairwise(sizes)):
                raise ConfigFileError(f"allowed_batch_sizes must be positive and increasing, got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ConfigFileError(
                    f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size "
                    f"({self.max_batch_size})"
                )


_WRAPPED_INT_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Parse TF Serving's ``--batching_parameters_file`` (BatchingParameters in protobuf text format)::

        max_batch_size { value: 32 }
        batch_timeout_micros { value: 1000 }
        allowed_batch_sizes: [8, 16, 32]

    Omitted fields take TF Serving's defaults. Raises ConfigFileError for text that is not a valid
    BatchingParameters (unknown fields included) or values TF Serving would refuse.
    """
    from google.protobuf import text_format

    try:
        proto = text_format.Parse(text, _batching_parameters_class()())
    except text_format.ParseError as exc:
        raise ConfigFileError(f"not a BatchingParameters in text format: {exc}") from None
    kwargs: dict[str, Any] = {name: getattr(proto, name).value for name in _WRAPPED_INT_FIELDS if proto.HasField(name)}
    if proto.HasField("thread_pool_name"):
        kwargs["thread_pool_name"] = proto.thread_pool_name.value
    params = BatchingParameters(
        **kwargs,
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
        pad_variable_length_inputs=proto.pad_variable_length_inputs,
    )
    if params.pad_variable_length_inputs:
        log.warning("pad_variable_length_inputs is not supported: requests of different shapes are batched apart")
    return params


@functools.cache
def _batching_parameters_class() -> Any:
    """TF Serving's generated class if installed (tensorflow-serving-api does not ship it), else the same
    message (fields 1-7 of ``session_bundle_config.proto``) built from a descriptor: same text format."""
    try:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="recwatch/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    for number, name in enumerate(_WRAPPED_INT_FIELDS, start=1):
        message.field.add(
            name=name,
            number=number,
            label=f.LABEL_OPTIONAL,
            type=f.TYPE_MESSAGE,
            type_name=".google.protobuf.Int64Value",
        )
    message.field.add(
        name="thread_pool_name",
        number=5,
        label=f.LABEL_OPTIONAL,
        type=f.TYPE_MESSAGE,
        type_name=".google.protobuf.StringValue",
    )
    message.field.add(name="allowed_batch_sizes", number=6, label=f.LABEL_REPEATED, type=f.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=f.LABEL_OPTIONAL, type=f.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with a generated module of the same name
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


# ---------------------------------------------------------------------------------------------- clocks


class BatchClock(Protocol):
    """Monotonic time for batch deadlines and the times in :class:`Execution`."""

    def now_ns(self) -> int: ...

    def wait(self, cond: threading.Condition, deadline_ns: int | None) -> None:
        """Wait on ``cond`` (held by the caller) until notified or until ``now_ns() >= deadline_ns``."""
        ...


class SystemBatchClock:
    def now_ns(self) -> int:
        return time.monotonic_ns()

    def wait(self, cond: threading.Condition, deadline_ns: int | None) -> None:
        cond.wait(None if deadline_ns is None else max(0, deadline_ns - time.monotonic_ns()) / 1e9)


class ManualBatchClock:
    """A clock that moves only by :meth:`advance`, for tests: batch timeouts expire without sleeping."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._lock = threading.Lock()
        self._conds: weakref.WeakSet[threading.Condition] = weakref.WeakSet()

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def advance(self, us: int) -> None:
        """Move time forward by ``us`` µs and wake the batch threads so they see expired deadlines."""
        with self._lock:
            self._now += us * 1000
            conds = list(self._conds)
        for cond in conds:
            with cond:  # the waiter holds cond until it waits, so this notify cannot be missed
                cond.notify_all()

    def wait(self, cond: threading.Condition, deadline_ns: int | None) -> None:
        with self._lock:
            self._conds.add(cond)
            if deadline_ns is not None and self._now >= deadline_ns:
                return
        cond.wait()


# ---------------------------------------------------------------------------------------------- executor

_ShapeKey = tuple[tuple[str, str, tuple[int, ...]], ...]


class Pending:
    """A request's answer to come: set once by the batch thread, waited for by the request thread.

    ``concurrent.futures.Future`` would do, at ~3x the cost: it builds a Condition per request and a lock
    per wait. This is one lock, taken at creation and released when the answer is set.
    """

    __slots__ = ("_done", "_exception", "_result")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._result: Execution | None = None
        self._exception: BaseException | None = None

    def set_result(self, result: Execution) -> None:
        self._result = result
        self._done.release()

    def set_exception(self, exc: BaseException) -> None:
        self._exception = exc
        self._done.release()

    def done(self) -> bool:
        return not self._done.locked()

    def result(self, timeout: float | None = None) -> Execution:
        """The Execution, or the signature's error raised; TimeoutError after ``timeout`` seconds."""
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"no answer within {timeout} s")
        self._done.release()  # later calls return at once
        if self._exception is not None:
            raise self._exception
        assert self._result is not None
        return self._result


@dataclass(eq=False)
class _Task:
    inputs: Arrays
    rows: int
    key: _ShapeKey | None  # None: cannot be merged with other requests
    enqueued_ns: int
    future: Pending = field(default_factory=Pending)


@dataclass(eq=False)
class _Batch:
    key: _ShapeKey | None
    tasks: list[_Task]
    rows: int
    deadline_ns: int
    full: bool  # takes no more requests: runs as soon as a thread is free


def _shape_key(inputs: Arrays, max_rows: int) -> tuple[int, _ShapeKey | None]:
    """The request's rows and what a batch partner must match; no key if it must run alone."""
    shapes = [a.shape for a in inputs.values()]
    rows = shapes[0][0] if shapes and shapes[0] else 0
    if rows < 1 or rows > max_rows or any(not s or s[0] != rows for s in shapes):
        return max((s[0] for s in shapes if s), default=0), None
    return rows, tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()))


class BatchingExecutor:
    """An :class:`~serving.predict.Executor` that batches concurrent requests (see the module docstring)."""

    def __init__(
        self,
        params: BatchingParameters,
        *,
        clock: BatchClock | None = None,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        """``in_flight`` counts the server's requests in progress (``serving.predict.InFlight``); without it a
        batch waits for its timeout even when no other request could join it (TF Serving's behaviour)."""
        self.params = params
        self._clock: BatchClock = clock or SystemBatchClock()
        self._in_flight = in_flight
        self._lock = threading.Lock()
        self._queues: dict[tuple[str, int, str], _Queue] = {}
        self._draining: list[threading.Thread] = []  # threads of retired queues; joined by close()
        self._retired: dict[int, weakref.ref[LoadedModel]] = {}  # id -> unloaded model objects still alive
        self._closed = False

    def execute(self, model: LoadedModel, signature: Signature, inputs: Arrays) -> Execution:
        if self._in_flight is not None and self._in_flight() <= 1 and not self.params.allowed_batch_sizes:
            # The only request in the server: no partner can come. Computed here and now, without the task,
            # batch and future a queued request needs (~10 µs of Python at one request in flight).
            queue = self._queue_for(model, signature)
            if queue is not None:
                done = queue.run_direct(inputs)
                if done is not None:
                    return done
        return self.submit(model, signature, inputs).result()

    def submit(self, model: LoadedModel, signature: Signature, inputs: Arrays) -> Pending:
        """Enqueue a request; raises OverloadedError at once if its queue is full. The future holds the
        request's Execution, or the signature's error."""
        rows, key = _shape_key(inputs, self.params.max_batch_size)
        task = _Task(inputs, rows, key, self._clock.now_ns())
        while True:
            queue = self._queue_for(model, signature)
            if queue is None:
                return self._run_unbatched(signature, task)
            if queue.run_alone(task) or queue.put(task):
                return task.future
            # the queue was retired between lookup and put (its version unloaded): look again

    def queued_requests(self) -> int:
        """Requests waiting for their batch to start, over all queues (``ServingMetrics(queue_depth=...)``)."""
        with self._lock:
            queues = list(self._queues.values())
        return sum(q.waiting() for q in queues)

    def forget(self, model_name: str, version: int) -> None:
        """Drop the queues of an unloaded version (``ModelManager(on_unload=...)``). Queued batches still run."""
        with self._lock:
            self._draining = [t for t in self._draining if t.is_alive()]
            for key in [k for k in self._queues if k[:2] == (model_name, version)]:
                self._retire(self._queues.pop(key))

    def close(self) -> None:
        """Run what is queued, stop and join every batch thread. Later requests raise OverloadedError."""
        with self._lock:
            self._closed = True
            for queue in self._queues.values():
                self._retire(queue)
            self._queues.clear()
            draining, self._draining = self._draining, []
        for thread in draining:
            thread.join()

    def _queue_for(self, model: LoadedModel, signature: Signature) -> _Queue | None:
        with self._lock:
            if self._closed:
                raise OverloadedError("the batching executor is shut down")
            key = (model.name, model.version, signature.name)
            queue = self._queues.get(key)
            if queue is not None and queue.model is model:
                return queue
            ref = self._retired.get(id(model))
            if ref is not None and ref() is model:
                return None
            if queue is not None:  # the version was reloaded without forget(): the old object's queue goes
                self._retire(queue)
            name = f"{self.params.thread_pool_name}-{model.name}-{model.version}-{signature.name}"
            queue = self._queues[key] = _Queue(model, signature, self.params, self._clock, name, self._in_flight)
            queue.start()
            return queue

    def _retire(self, queue: _Queue) -> None:  # holding self._lock
        queue.retire()
        self._draining.extend(queue.threads)  # a finished Thread drops its target, so not the model
        model_id = id(queue.model)
        self._retired[model_id] = weakref.ref(queue.model, lambda _: self._retired.pop(model_id, None))

    def _run_unbatched(self, signature: Signature, task: _Task) -> Pending:
        start = self._clock.now_ns()
        try:
            outputs = signature(task.inputs)
        except Exception as exc:
            task.future.set_exception(exc)
        else:
            task.future.set_result(Execution(outputs, compute_us=(self._clock.now_ns() - start) // 1000))
        return task.future


class _Queue:
    """The batches of one (model, version, signature) and the threads that run them."""

    def __init__(
        self,
        model: LoadedModel,
        signature: Signature,
        params: BatchingParameters,
        clock: BatchClock,
        name: str,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self.model = model
        self._in_flight = in_flight
        self._signature = signature
        self._params = params
        self._clock = clock
        self._timeout_ns = params.batch_timeout_micros * 1000
        self._cond = threading.Condition(threading.Lock())
        self._batches: list[_Batch] = []  # oldest first; not yet taken by a thread
        self._running = 0  # batches being computed (by the queue's threads or a lone request's own)
        self._retired = False
        self.threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def waiting(self) -> int:
        with self._cond:
            return sum(len(b.tasks) for b in self._batches)

    def retire(self) -> None:
        """Take no more requests; the threads run what is queued, then exit."""
        with self._cond:
            self._retired = True
            self._cond.notify_all()

    def run_alone(self, task: _Task) -> bool:
        """Compute ``task`` on the calling thread if it is the only request in flight and nothing is queued or
        computing here: no partner can come, and handing it to a batch thread would cost two thread switches
        (~0.1 ms at one request in flight). False (nothing done) otherwise."""
        if self._in_flight is None or self._in_flight() > 1 or not self._claim_idle():
            return False
        try:
            self._run(_Batch(task.key, [task], task.rows, task.enqueued_ns, True))
        finally:
            self._release()
        return True

    def run_direct(self, inputs: Arrays) -> Execution | None:
        """:meth:`run_alone` for a request that needs no padding, straight to the signature; None (nothing
        done) when something is queued or computing here."""
        if not self._claim_idle():
            return None
        try:
            clock = self._clock
            start = clock.now_ns()
            outputs = self._signature(inputs)
            return Execution(outputs, compute_us=(clock.now_ns() - start) // 1000)
        finally:
            self._release()

    def _claim_idle(self) -> bool:
        """Count one computation on the caller's thread if nothing is queued or computing here (and the queue
        is not retired); the caller calls :meth:`_release` when done."""
        with self._cond:
            if self._retired or self._batches or self._running:
                return False
            self._running += 1
            return True

    def _release(self) -> None:
        with self._cond:
            self._running -= 1

    def put(self, task: _Task) -> bool:
        """Add the task to a batch; False if the queue is retired. Raises OverloadedError if full."""
        limit = self._params.max_batch_size
        with self._cond:
            if self._retired:
                return False
            if task.key is not None:
                batch = next((b for b in self._batches if b.key == task.key and not b.full), None)
                if batch is not None:
                    if batch.rows + task.rows <= limit:
                        batch.tasks.append(task)
                        batch.rows += task.rows
                        if batch.rows == limit:
                            batch.full = True
                            self._cond.notify()
                        elif self._nobody_else():
                            self._cond.notify()
                        return True
                    batch.full = True  # as TF Serving: a batch the next request does not fit in is closed
                    self._cond.notify()
            if len(self._batches) >= self._params.max_enqueued_batches:
                raise OverloadedError(
                    f"the batch queue of model {self.model.name!r} version {self.model.version} signature "
                    f"{self._signature.name!r} is full ({len(self._batches)} batches waiting)"
                )
            full = task.key is None or task.rows >= limit
            self._batches.append(_Batch(task.key, [task], task.rows, task.enqueued_ns + self._timeout_ns, full))
            self._cond.notify()
            return True

    def _work(self) -> None:
        while True:
            with self._cond:
                while (batch := self._take()) is None:
                    if self._retired:  # retired and drained
                        return
                    deadline = min((b.deadline_ns for b in self._batches), default=None)
                    self._clock.wait(self._cond, deadline)
                if self._batches:
                    self._cond.notify()  # an idle peer picks up the next batch's deadline
                self._running += 1
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._running -= 1

    def _take(self) -> _Batch | None:  # holding self._cond
        if self._batches and self._nobody_else():
            return self._batches.pop(0)
        now = self._clock.now_ns()
        for i, batch in enumerate(self._batches):
            if batch.full or batch.deadline_ns <= now or self._retired:
                return self._batches.pop(i)
        return None

    def _nobody_else(self) -> bool:  # holding self._cond
        """Every request in flight in the server already waits here: no timeout can add a partner."""
        return self._in_flight is not None and sum(len(b.tasks) for b in self._batches) >= self._in_flight()

    def _run(self, batch: _Batch) -> None:
        clock = self._clock
        try:
            start = clock.now_ns()
            inputs, run_rows = self._merge(batch)
            merged = clock.now_ns()
            outputs = self._signature(inputs)
            computed = clock.now_ns()
            parts = self._split(batch, outputs, run_rows)
            done = clock.now_ns()
        except BaseException as exc:
            for task in batch.tasks:
                task.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        batch_us = (merged - start + done - computed) // 1000
        compute_us = (computed - merged) // 1000
        for task, part in zip(batch.tasks, parts, strict=True):
            task.future.set_result(
                Execution(
                    part,
                    queue_us=(start - task.enqueued_ns) // 1000,
                    batch_us=batch_us,
                    compute_us=compute_us,
                    batch_size=batch.rows,
                )
            )

    def _merge(self, batch: _Batch) -> tuple[Arrays, int]:
        """The batch's inputs, concatenated and padded, and the rows the signature will see."""
        first = batch.tasks[0].inputs
        target = batch.rows
        if batch.key is not None and self._params.allowed_batch_sizes:
            target = next(s for s in self._params.allowed_batch_sizes if s >= batch.rows)
        if len(batch.tasks) == 1 and target == batch.rows:
            return first, batch.rows
        pad = target - batch.rows
        merged: Arrays = {}
        for name, array in first.items():
            parts = [t.inputs[name] for t in batch.tasks]
            if pad:
                parts.append(np.repeat(array[:1], pad, axis=0))  # TF Serving pads with copies of the first row
            merged[name] = np.concatenate(parts, axis=0)
        return merged, target

    def _split(self, batch: _Batch, outputs: dict[str, npt.NDArray[Any]], run_rows: int) -> list[Arrays]:
        if len(batch.tasks) == 1 and run_rows == batch.rows:
            return [outputs]
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != run_rows:
                raise ModelExecutionError(
                    f"signature {self._signature.name!r} output {name!r} has shape {list(array.shape)}: a batch of "
                    f"{run_rows} rows cannot be split back into its {len(batch.tasks)} requests"
                )
        parts: list[Arrays] = []
        offset = 0
        for task in batch.tasks:
            parts.append({name: array[offset : offset + task.rows] for name, array in outputs.items()})
            offset += task.rows
        return parts
