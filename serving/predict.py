"""One prediction, whatever the API it came through: resolve the version, decode, compute, account.

Both the gRPC and the REST front ends call :meth:`Predictor.run`; it publishes exactly one
:class:`InferenceEvent` per call, answered or failed, and returns the outputs or the error for the front end
to encode. Errors are mapped to status codes only through :func:`serving.errors.status_of`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from schemas import InferenceEvent, OutputSummary, TensorSummary
from serving.after_response import defer
from serving.errors import InvalidOutputFilterError, ServingError, Status, grpc_code_number, status_of
from serving.manager import ModelManager, Resolved
from serving.model_repository import DEFAULT_SIGNATURE, LoadedModel, Signature
from serving.process_stats import ProcessRss
from serving.publisher import EventPublisher
from serving.tensors import rows_of

log = logging.getLogger(__name__)

HEAD_VALUES: Final = 64  # OutputSummary.head and InferenceEvent.item_ids keep at most this many values
_U32_MAX: Final = 2**32 - 1
_SMALL_OUTPUT: Final = 256

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Execution:
    """What running a signature cost; the batcher fills the queue and batch parts."""

    outputs: dict[str, npt.NDArray[Any]]
    queue_us: int = 0
    batch_us: int = 0
    compute_us: int = 0
    batch_size: int = 0  # rows in the batch the request was computed in (0: the request's own rows)


class Executor(Protocol):
    """Runs a signature on one request's inputs: directly, or batched with other requests (``batching.py``).

    Raises OverloadedError when it sheds load, or the signature's own errors.
    """

    def execute(self, model: LoadedModel, signature: Signature, inputs: Arrays) -> Execution: ...


class DirectExecutor:
    """Calls the signature on the request thread."""

    def execute(self, model: LoadedModel, signature: Signature, inputs: Arrays) -> Execution:
        start = time.perf_counter_ns()
        outputs = signature(inputs)
        return Execution(outputs, compute_us=(time.perf_counter_ns() - start) // 1000)


class ResultCache(Protocol):
    """Answers repeated requests without computing (``cache.py``). Keys cover model, version, signature,
    output filter and the canonical bytes of the inputs; entries of a version go when it unloads."""

    def get(self, model: LoadedModel, signature: Signature, names: Sequence[str], inputs: Arrays) -> Arrays | None: ...

    def put(
        self, model: LoadedModel, signature: Signature, names: Sequence[str], inputs: Arrays, outputs: Arrays
    ) -> None: ...


class RequestObserver(Protocol):
    """Sees every finished request's event, on the request thread (Prometheus metrics). Must be cheap."""

    def observe(self, event: InferenceEvent) -> None: ...


class Clock(Protocol):
    """Wall-clock time for event timestamps; injected so tests control it."""

    def now_us(self) -> int:
        """Unix time in microseconds."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1000


class InFlight:
    """Requests inside :meth:`Predictor.run` right now; the batcher reads it (``BatchingExecutor(in_flight=)``)
    to run a batch at once when no other request could join it."""

    __slots__ = ("_lock", "_n")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    def __call__(self) -> int:
        return self._n

    def __enter__(self) -> None:
        with self._lock:
            self._n += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._n -= 1


@dataclass(frozen=True)
class PredictCall:
    """A front end's request, already parsed out of its wire format (inputs are decoded lazily)."""

    model: str
    version: int | None
    label: str
    signature_name: str
    output_filter: Sequence[str]
    request_id: str
    api: str
    decode: Callable[[Signature], Arrays]  # raises InvalidInputError naming the offending input
    input_summaries: Callable[[], list[TensorSummary]]
    declared_rows: Callable[[], int]


class PredictOutcome:
    """What a front end answers with; ``event`` is the request's InferenceEvent (built on first use)."""

    __slots__ = ("_event", "_record", "error", "outputs", "resolved", "signature", "status")

    def __init__(
        self,
        resolved: Resolved | None,
        signature: Signature | None,
        outputs: dict[str, npt.NDArray[Any]],
        status: Status | None,  # None when answered
        error: str,
        record: _EventRecord,
    ) -> None:
        self.resolved = resolved
        self.signature = signature
        self.outputs = outputs
        self.status = status
        self.error = error
        self._record = record
        self._event: InferenceEvent | None = None

    @property
    def event(self) -> InferenceEvent:
        if self._event is None:
            self._event = self._record.build()
        return self._event


class _EventRecord:
    """Everything an InferenceEvent says, as taken on the request path; :meth:`build` writes the protobuf."""

    __slots__ = (
        "arrays",
        "batch_size",
        "batch_us",
        "cache_hit",
        "call",
        "compute_us",
        "error",
        "outputs",
        "producer_totals",
        "queue_us",
        "received_us",
        "replica",
        "resolved",
        "rss",
        "sent_us",
        "status",
        "total_us",
    )  # fmt: skip

    def __init__(self, call: PredictCall, replica: str, received_us: int) -> None:
        self.call = call
        self.replica = replica
        self.received_us = received_us
        self.sent_us = 0
        self.total_us = 0
        self.resolved: Resolved | None = None
        self.arrays: Arrays = {}
        self.outputs: Arrays = {}
        self.status: Status | None = None
        self.error = ""
        self.cache_hit = False
        self.queue_us = self.batch_us = self.compute_us = self.batch_size = 0
        self.producer_totals: tuple[int, int] | None = None
        self.rss = 0

    def build(self) -> InferenceEvent:
        call = self.call
        event = InferenceEvent(
            event_id=uuid.uuid4().hex,
            request_id=call.request_id,
            received_us=self.received_us,
            model=call.model,
            replica=self.replica,
            api=call.api,
            signature=call.signature_name or DEFAULT_SIGNATURE,
        )
        event.inputs.extend(call.input_summaries())
        if self.resolved is not None:
            event.version = self.resolved.model.version
            event.label = self.resolved.label
        if self.status is None:
            event.cache_hit = self.cache_hit
            event.outputs.extend(_output_summary(name, array) for name, array in self.outputs.items())
        else:
            event.status_code = grpc_code_number(self.status.grpc)
            event.error = self.error
        arrays = self.arrays
        rows = rows_of(a.shape for a in arrays.values()) if arrays else call.declared_rows()
        event.rows = min(rows, _U32_MAX)
        event.batch_size = min(self.batch_size or rows, _U32_MAX)
        _set_ids(event, arrays)
        lat = event.latency
        lat.queue_us, lat.batch_us = min(self.queue_us, _U32_MAX), min(self.batch_us, _U32_MAX)
        lat.compute_us = min(self.compute_us, _U32_MAX)
        lat.total_us = min(self.total_us, _U32_MAX)
        event.sent_us = self.sent_us
        if self.producer_totals is not None:
            totals = event.producer
            totals.dropped, totals.spooled = self.producer_totals
        event.process_rss_bytes = self.rss
        return event


class Predictor:
    def __init__(
        self,
        manager: ModelManager,
        publisher: EventPublisher,
        *,
        replica: str,
        clock: Clock | None = None,
        executor: Executor | None = None,
        cache: ResultCache | None = None,
        observers: Sequence[RequestObserver] = (),
        in_flight: InFlight | None = None,
        producer_totals: Callable[[], tuple[int, int]] | None = None,
        process_rss: Callable[[], int] | None = None,
    ) -> None:
        """``producer_totals``: the event logger's (dropped, spooled) totals, stamped into every event so the
        stream workers can count events that never reached Kafka (``producers.EventLogger.totals``).
        ``process_rss``: the process's RSS in bytes (0 = unknown), stamped into every event; must be cheap, it
        runs per request. Default: ``serving.process_stats.ProcessRss()``, refreshed once a second."""
        self.manager = manager
        self._producer_totals = producer_totals
        self._process_rss: Callable[[], int] = process_rss if process_rss is not None else ProcessRss()
        self.in_flight = in_flight or InFlight()
        self.replica = replica
        self._publisher = publisher
        self._clock: Clock = clock or SystemClock()
        self._executor: Executor = executor or DirectExecutor()
        self._cache = cache
        self._observers = tuple(observers)

    def run(self, call: PredictCall) -> PredictOutcome:
        with self.in_flight:
            return self._run(call)

    def _run(self, call: PredictCall) -> PredictOutcome:
        record = _EventRecord(call, self.replica, self._clock.now_us())
        start_ns = time.perf_counter_ns()
        outputs: Arrays = {}
        signature: Signature | None = None
        try:
            resolved = record.resolved = self.manager.resolve(call.model, call.version, call.label, call.request_id)
            signature = resolved.model.signature(call.signature_name)
            names = _select_outputs(signature, call.output_filter)
            arrays = record.arrays = call.decode(signature)
            cached = self._cache.get(resolved.model, signature, names, arrays) if self._cache is not None else None
            if cached is not None:
                record.cache_hit = True
                outputs = cached
            else:
                execution = self._executor.execute(resolved.model, signature, arrays)
                outputs = {name: execution.outputs[name] for name in names}
                record.queue_us, record.batch_us = execution.queue_us, execution.batch_us
                record.compute_us, record.batch_size = execution.compute_us, execution.batch_size
                if self._cache is not None:
                    self._cache.put(resolved.model, signature, names, arrays, outputs)
        except Exception as exc:
            outputs = {}
            record.status, record.error = status_of(exc), str(exc)
            if not isinstance(exc, ServingError):
                log.exception("prediction failed unexpectedly (request_id=%s)", call.request_id)
        record.outputs = outputs
        record.total_us = (time.perf_counter_ns() - start_ns) // 1000
        record.sent_us = self._clock.now_us()
        if self._producer_totals is not None:
            record.producer_totals = self._producer_totals()
        record.rss = self._process_rss()
        outcome = PredictOutcome(record.resolved, signature, outputs, record.status, record.error, record)
        defer(lambda: self._publish(outcome.event))
        return outcome

    def _publish(self, event: InferenceEvent) -> None:
        try:
            self._publisher.publish(event)
        except Exception:  # a publisher must not raise; if one does, the caller still gets its answer
            log.exception("EventPublisher.publish raised; event %s dropped", event.event_id)
        for observer in self._observers:
            try:
                observer.observe(event)
            except Exception:
                log.exception("request observer %r raised", observer)


def _select_outputs(signature: Signature, output_filter: Sequence[str]) -> list[str]:
    wanted = list(output_filter)
    if not wanted:
        return signature.output_names
    for name in wanted:
        if name not in signature.outputs:
            raise InvalidOutputFilterError(
                name, f"not an output of the signature (outputs: {', '.join(signature.output_names)})"
            )
    if len(set(wanted)) != len(wanted):
        duplicate = next(n for n in wanted if wanted.count(n) > 1)
        raise InvalidOutputFilterError(duplicate, "listed twice in output_filter")
    return wanted


def _output_summary(name: str, array: npt.NDArray[Any]) -> OutputSummary:
    flat = array.ravel()
    summary = OutputSummary(name=name, count=min(flat.size, _U32_MAX))
    if flat.size <= _SMALL_OUTPUT and flat.size and flat.dtype.kind in "biuf":
        # a ranking request's scores: Python's sum/min/max on a list beat numpy's reductions below ~256 values
        values = flat.tolist()
        total = sum(values)
        summary.mean = total / len(values)
        if total == total:
            summary.min, summary.max = min(values), max(values)
        else:  # a NaN (or inf - inf): numpy's NaN-propagating min and max, not Python's order-dependent ones
            summary.min, summary.max = float(flat.min()), float(flat.max())
        summary.head.extend(values[:HEAD_VALUES] if flat.dtype.kind == "f" else map(float, values[:HEAD_VALUES]))
    elif flat.size and flat.dtype.kind in "biuf":
        summary.mean = float(flat.mean(dtype=np.float64))
        summary.min = float(flat.min())
        summary.max = float(flat.max())
        summary.head.extend(flat[:HEAD_VALUES].astype(np.float32).tolist())
    return summary


def _set_ids(event: InferenceEvent, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    user = arrays.get("user_id")
    if user is not None and user.size:
        event.user_id = _id_text(user.flat[0])
    items = arrays.get("item_id")
    if items is not None and items.size:
        head = items.ravel()[:HEAD_VALUES].tolist()
        event.item_ids.extend(map(str, head) if items.dtype.kind in "iu" else map(_id_text, head))


def _id_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
