"""The ``tensorflow.serving.PredictionService`` gRPC API over one loaded model.

``Predict`` follows TF Serving: ``model_spec.name`` must name the served model, ``version`` is optional
(the loaded, latest one), ``signature_name`` defaults to ``serving_default``, ``output_filter`` selects
outputs, outputs are written to the typed ``*_val`` fields. Every Predict call, answered or failed,
publishes exactly one :class:`InferenceEvent` before it returns. ``GetModelMetadata`` returns the
SavedModel's SignatureDefs. Classify, Regress and MultiInference answer UNIMPLEMENTED.

Errors are mapped to status codes only through :func:`serving.errors.status_of`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final, NoReturn, Protocol

import grpc
import numpy as np
import numpy.typing as npt
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from schemas import InferenceEvent, OutputSummary, TensorSummary
from serving.errors import (
    InvalidOutputFilterError,
    InvalidRequestError,
    ModelNotFoundError,
    ServingError,
    Status,
    grpc_code_number,
    status_of,
)
from serving.model_repository import DEFAULT_SIGNATURE, LoadedModel, Signature
from serving.publisher import EventPublisher
from serving.tensors import decode_inputs, dtype_name, rows_of, to_tensor_proto

log = logging.getLogger(__name__)

REQUEST_ID_KEY: Final = "x-request-id"
HEAD_VALUES: Final = 64  # OutputSummary.head and InferenceEvent.item_ids keep at most this many values
_U32_MAX: Final = 2**32 - 1


class Clock(Protocol):
    """Wall-clock time for event timestamps; injected so tests control it."""

    def now_us(self) -> int:
        """Unix time in microseconds."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1000


class PredictionServicer:
    """Implements ``tensorflow.serving.PredictionService`` for ``model``; register it with
    ``prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server``."""

    def __init__(
        self, model: LoadedModel, publisher: EventPublisher, *, replica: str = "", clock: Clock | None = None
    ) -> None:
        self._model = model
        self._publisher = publisher
        self._replica = replica
        self._clock: Clock = clock or SystemClock()

    @property
    def model(self) -> LoadedModel:
        return self._model

    def Predict(self, request: Any, context: Any) -> Any:  # gRPC's method names
        received_us = self._clock.now_us()
        start_ns = time.perf_counter_ns()
        request_id = _request_id(context)
        spec = request.model_spec
        event = InferenceEvent(
            event_id=uuid.uuid4().hex,
            request_id=request_id,
            received_us=received_us,
            model=spec.name,
            replica=self._replica,
            api="predict",
            signature=spec.signature_name or DEFAULT_SIGNATURE,
        )
        event.inputs.extend(_input_summaries(request.inputs))
        arrays: dict[str, npt.NDArray[Any]] = {}
        compute_ns = 0
        response = predict_pb2.PredictResponse()
        failure: tuple[Status, str] | None = None
        try:
            model = self._resolve(spec)
            event.version = model.version
            signature = model.signature(spec.signature_name)
            output_names = _select_outputs(signature, request.output_filter)
            arrays = decode_inputs(signature.inputs, request.inputs)
            compute_start = time.perf_counter_ns()
            outputs = signature(arrays)
            compute_ns = time.perf_counter_ns() - compute_start
            response.model_spec.name = model.name
            response.model_spec.version.value = model.version
            response.model_spec.signature_name = signature.name
            for name in output_names:
                array = outputs[name]
                to_tensor_proto(array, response.outputs[name])
                event.outputs.append(_output_summary(name, array))
        except Exception as exc:
            failure = (status_of(exc), str(exc))
            if not isinstance(exc, ServingError):
                log.exception("Predict failed unexpectedly (request_id=%s)", request_id)

        rows = rows_of(a.shape for a in arrays.values()) if arrays else _declared_rows(request.inputs)
        event.rows = event.batch_size = min(rows, _U32_MAX)
        _set_ids(event, arrays)
        if failure is not None:
            event.status_code = grpc_code_number(failure[0].grpc)
            event.error = failure[1]
            del event.outputs[:]  # a failure while encoding may have summarised some outputs already
        event.latency.compute_us = min(compute_ns // 1000, _U32_MAX)
        event.latency.total_us = min((time.perf_counter_ns() - start_ns) // 1000, _U32_MAX)
        event.sent_us = self._clock.now_us()
        self._publish(event)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        if failure is not None:
            context.abort(failure[0].grpc, failure[1])
        return response

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            return self._metadata(request)
        except Exception as exc:
            if not isinstance(exc, ServingError):
                log.exception("GetModelMetadata failed unexpectedly")
            _abort(context, exc)

    def Classify(self, request: Any, context: Any) -> Any:
        _unimplemented(context, "Classify")

    def Regress(self, request: Any, context: Any) -> Any:
        _unimplemented(context, "Regress")

    def MultiInference(self, request: Any, context: Any) -> Any:
        _unimplemented(context, "MultiInference")

    def _resolve(self, spec: Any) -> LoadedModel:
        model = self._model
        if spec.name != model.name:
            raise ModelNotFoundError(spec.name)
        if spec.HasField("version") and spec.version.value != model.version:
            raise ModelNotFoundError(spec.name, spec.version.value)
        if spec.version_label:
            raise ModelNotFoundError(spec.name, detail=f"unknown version label {spec.version_label!r}")
        return model

    def _metadata(self, request: Any) -> Any:
        if not request.HasField("model_spec"):
            raise InvalidRequestError("Missing ModelSpec")
        if not request.metadata_field:
            raise InvalidRequestError("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise InvalidRequestError(f"Metadata field {field} is not supported")
        model = self._resolve(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in model.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def _publish(self, event: InferenceEvent) -> None:
        try:
            self._publisher.publish(event)
        except Exception:  # a publisher must not raise; if one does, the caller still gets its answer
            log.exception("EventPublisher.publish raised; event %s dropped", event.event_id)


def _request_id(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)
    return uuid.uuid4().hex


def _select_outputs(signature: Signature, output_filter: Iterable[str]) -> list[str]:
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


def _input_summaries(protos: Mapping[str, Any]) -> list[TensorSummary]:
    return [
        TensorSummary(name=name, dtype=dtype_name(p.dtype), shape=[d.size for d in p.tensor_shape.dim])
        for name, p in sorted(protos.items())
    ]


def _declared_rows(protos: Mapping[str, Any]) -> int:
    """Rows as the request declares them, for events of requests that failed before decoding."""
    return max((max(p.tensor_shape.dim[0].size, 0) for p in protos.values() if p.tensor_shape.dim), default=0)


def _output_summary(name: str, array: npt.NDArray[Any]) -> OutputSummary:
    flat = array.ravel()
    summary = OutputSummary(name=name, count=min(flat.size, _U32_MAX))
    if flat.size and flat.dtype.kind in "biuf":
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


def _abort(context: Any, exc: BaseException) -> NoReturn:
    context.abort(status_of(exc).grpc, str(exc))
    raise AssertionError("grpc context.abort returned")  # abort always raises


def _unimplemented(context: Any, method: str) -> NoReturn:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this server")
    raise AssertionError("grpc context.abort returned")
