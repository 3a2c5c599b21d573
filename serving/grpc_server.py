"""TF Serving's gRPC API: ``tensorflow.serving.PredictionService``, ``ModelService`` and ``grpc.health.v1``.

``Predict`` follows TF Serving: ``model_spec`` selects a model by name and optionally a version or a version
label; ``signature_name`` defaults to ``serving_default``; ``output_filter`` selects outputs; outputs are
written to the typed ``*_val`` fields. Requests that name neither version nor label are routed by
:class:`serving.manager.ModelManager` (stable / canary split). The request id comes from the
``x-request-id`` metadata (generated when absent) and is echoed in the trailing metadata.
``GetModelMetadata`` returns the SavedModel's SignatureDefs. Classify and Regress take tf.Examples for
signatures exported with the classify / regress method (``serving.examples_api``); MultiInference answers
UNIMPLEMENTED.

``ModelService.HandleReloadConfigRequest`` replaces the served models (TF Serving semantics); recwatch reads
canary weights from the ``x-recwatch-canary-weights`` metadata of that call (``ranker=0.1,seq=0.5``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any, Final, NoReturn

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_management_pb2, predict_pb2

from schemas import TensorSummary
from serving.config import models_from_proto, parse_canary_weights
from serving.errors import InvalidRequestError, ServingError, status_of
from serving.predict import PredictCall, Predictor, PredictOutcome
from serving.tensors import decode_inputs, dtype_name, to_tensor_proto

log = logging.getLogger(__name__)

REQUEST_ID_KEY: Final = "x-request-id"
REPLICA_KEY: Final = "x-recwatch-replica"
CANARY_WEIGHTS_KEY: Final = "x-recwatch-canary-weights"


class PredictionServicer:
    """Implements ``tensorflow.serving.PredictionService``; register with
    ``prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server``."""

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor
        self._replica = predictor.replica

    def Predict(self, request: Any, context: Any) -> Any:  # gRPC's method names
        request_id = _request_id(context)
        spec = request.model_spec
        protos = request.inputs
        outcome = self._predictor.run(
            PredictCall(
                model=spec.name,
                version=spec.version.value if spec.HasField("version") else None,
                label=spec.version_label,
                signature_name=spec.signature_name,
                output_filter=list(request.output_filter),
                request_id=request_id,
                api="predict",
                decode=lambda signature: decode_inputs(signature.inputs, protos),
                input_summaries=lambda: _input_summaries(protos),
                declared_rows=lambda: _declared_rows(protos),
            )
        )
        response = predict_pb2.PredictResponse()
        self._answer(context, request_id, outcome, response)
        for name, array in outcome.outputs.items():
            to_tensor_proto(array, response.outputs[name])
        return response

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            return self._metadata(request)
        except Exception as exc:
            if not isinstance(exc, ServingError):
                log.exception("GetModelMetadata failed unexpectedly")
            _abort(context, exc)

    def Classify(self, request: Any, context: Any) -> Any:
        from tensorflow_serving.apis import classification_pb2

        from serving.examples_api import CLASSIFY_METHOD, classification_result

        return self._examples_call(
            request, context, "classify", CLASSIFY_METHOD, classification_pb2.ClassificationResponse(),
            classification_result,
        )  # fmt: skip

    def Regress(self, request: Any, context: Any) -> Any:
        from tensorflow_serving.apis import regression_pb2

        from serving.examples_api import REGRESS_METHOD, regression_result

        return self._examples_call(
            request, context, "regress", REGRESS_METHOD, regression_pb2.RegressionResponse(), regression_result
        )

    def _examples_call(self, request: Any, context: Any, api: str, method: str, response: Any, fill: Any) -> Any:
        from serving.examples_api import examples_decoder, serialized_examples

        request_id = _request_id(context)
        spec = request.model_spec
        try:
            examples = serialized_examples(request.input)
        except Exception as exc:
            _abort(context, exc)
        outcome = self._predictor.run(
            PredictCall(
                model=spec.name,
                version=spec.version.value if spec.HasField("version") else None,
                label=spec.version_label,
                signature_name=spec.signature_name,
                output_filter=(),
                request_id=request_id,
                api=api,
                decode=examples_decoder(method, examples),
                input_summaries=lambda: [TensorSummary(name="inputs", dtype="string", shape=[len(examples)])],
                declared_rows=lambda: len(examples),
            )
        )
        self._answer(context, request_id, outcome, response)
        try:
            fill(outcome.outputs, len(examples), response.result)
        except Exception as exc:
            _abort(context, exc)
        return response

    def _answer(self, context: Any, request_id: str, outcome: PredictOutcome, response: Any) -> None:
        """Trailing metadata for every call; abort with the outcome's status, else name the servable used."""
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id), (REPLICA_KEY, self._replica)))
        if outcome.status is not None:
            context.abort(outcome.status.grpc, outcome.error)
        assert outcome.resolved is not None and outcome.signature is not None
        response.model_spec.name = outcome.resolved.model.name
        response.model_spec.version.value = outcome.resolved.model.version
        response.model_spec.signature_name = outcome.signature.name

    def MultiInference(self, request: Any, context: Any) -> Any:
        _unimplemented(context, "MultiInference")

    def _metadata(self, request: Any) -> Any:
        if not request.HasField("model_spec"):
            raise InvalidRequestError("Missing ModelSpec")
        if not request.metadata_field:
            raise InvalidRequestError("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise InvalidRequestError(f"Metadata field {field} is not supported")
        spec = request.model_spec
        model = self._predictor.manager.resolve(
            spec.name, spec.version.value if spec.HasField("version") else None, spec.version_label
        ).model
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in model.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelServiceServicer:
    """Implements ``tensorflow.serving.ModelService`` (GetModelStatus, HandleReloadConfigRequest)."""

    def __init__(self, predictor: Predictor) -> None:
        self._manager = predictor.manager

    def GetModelStatus(self, request: Any, context: Any) -> Any:
        try:
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            if spec.version_label:
                version = self._manager.resolve(spec.name, None, spec.version_label).model.version
            rows = self._manager.version_status(spec.name, version)
        except Exception as exc:
            _abort(context, exc)
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, state, error in rows:
            status = response.model_version_status.add(version=v, state=state)
            if error:
                status.status.error_code = 13  # INTERNAL, as TF Serving reports a failed load
                status.status.error_message = error
        return response

    def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
        response = model_management_pb2.ReloadConfigResponse()
        try:
            weights = _metadata_value(context, CANARY_WEIGHTS_KEY)
            parsed = parse_canary_weights(weights) if weights else {}
            if request.HasField("config"):
                self._manager.reload_config(models_from_proto(request.config))
            for model, weight in parsed.items():
                self._manager.set_canary_weight(model, weight)
        except Exception as exc:
            if not isinstance(exc, ServingError):
                log.exception("HandleReloadConfigRequest failed unexpectedly")
            response.status.error_code = status_of(exc).grpc.value[0]
            response.status.error_message = str(exc)
        return response


def _metadata_value(context: Any, key: str) -> str:
    for k, value in context.invocation_metadata() or ():
        if k == key and value:
            return str(value)
    return ""


def _request_id(context: Any) -> str:
    return _metadata_value(context, REQUEST_ID_KEY) or uuid.uuid4().hex


def _input_summaries(protos: Mapping[str, Any]) -> list[TensorSummary]:
    return [
        TensorSummary(name=name, dtype=dtype_name(p.dtype), shape=[d.size for d in p.tensor_shape.dim])
        for name, p in sorted(protos.items())
    ]


def _declared_rows(protos: Mapping[str, Any]) -> int:
    """Rows as the request declares them, for events of requests that failed before decoding."""
    return max((max(p.tensor_shape.dim[0].size, 0) for p in protos.values() if p.tensor_shape.dim), default=0)


def _abort(context: Any, exc: BaseException) -> NoReturn:
    context.abort(status_of(exc).grpc, str(exc))
    raise AssertionError("grpc context.abort returned")  # abort always raises


def _unimplemented(context: Any, method: str) -> NoReturn:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this server")
    raise AssertionError("grpc context.abort returned")
