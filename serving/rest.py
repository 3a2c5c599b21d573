"""TF Serving's REST API (``--rest_api_port``, 8501 by default) and Prometheus ``/metrics`` on the same port.

Endpoints, as https://www.tensorflow.org/tfx/serving/api_rest describes them (see ``docs/rest.md``)::

    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]             model status (GetModelStatusResponse as JSON)
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata    signature_defs (GetModelMetadataResponse as JSON)
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict     {"instances": [...]} or {"inputs": ...}
    GET  /metrics                                               Prometheus text format (when metrics are given)

Every ``:predict`` call, answered or not (malformed JSON, a body too large, an unknown model), goes through
:meth:`Predictor.run` and so publishes exactly one InferenceEvent. Errors answer TF Serving's
``{"error": "<message>"}`` with the HTTP code of :func:`serving.errors.status_of`. The request id comes from
the ``X-Request-Id`` header (generated when absent or unusable) and is echoed in every answer's
``X-Request-Id`` header. ``:classify`` and ``:regress`` answer 501, as the gRPC methods answer UNIMPLEMENTED.

Example::

    server = RestServer(predictor, port=0, metrics=ServingMetrics())
    server.start()                      # binds; construction does no I/O
    print(server.port)
    server.stop(grace_s=5.0)            # drains requests in progress
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import replace
from types import TracebackType
from typing import Any, Final, Protocol
from urllib.parse import unquote

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from schemas import TensorSummary
from serving.errors import InvalidRequestError, ServingError, status_of
from serving.manager import ModelManager
from serving.model_repository import Signature
from serving.predict import Arrays, PredictCall, Predictor
from serving.rest_decode import (
    PredictBody,
    array_summaries,
    declared_rows,
    decode_predict_inputs,
    json_summaries,
    parse_predict_body,
)
from serving.rest_encode import encode_predict_response, error_json
from serving.rest_http import HttpLimits, HttpRequest, HttpResponse, HttpServer

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8501
REQUEST_ID_HEADER: Final = "X-Request-Id"
MAX_REQUEST_ID: Final = 256  # characters; a longer or non-printable id is replaced by a generated one
_INT64_MAX: Final = 2**63 - 1
_NOT_IMPLEMENTED: Final = 501  # not a ServingError: nothing in the status table means "no such method"

# TF Serving's URL patterns (http_rest_api_util.cc), matched against the whole path, case-insensitively.
_PREDICT: Final = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS: Final = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?", re.IGNORECASE
)


class MetricsExporter(Protocol):
    """What ``GET /metrics`` serves (:class:`serving.metrics.ServingMetrics`)."""

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The current metrics and their content type, in the format ``accept`` asks for."""
        ...


class RestServer:
    """The REST front end over a :class:`Predictor`. The predictor (and its manager) is the caller's."""

    def __init__(
        self,
        predictor: Predictor,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        metrics: MetricsExporter | None = None,
        *,
        limits: HttpLimits | None = None,
    ) -> None:
        self.api = RestApi(predictor, metrics)
        self._http = HttpServer(self.api.handle, host, port, limits)

    @property
    def port(self) -> int:
        """The bound port; 0 before :meth:`start`."""
        return self._http.port

    @property
    def address(self) -> str:
        return self._http.address

    def start(self) -> None:
        """Bind and serve; raises ServerStartError if the address is in use or the server already started."""
        self._http.start()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, answer the requests in progress (for up to ``grace_s`` s), close every connection."""
        self._http.stop(grace_s)

    def __enter__(self) -> RestServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RestApi:
    """Routes one HTTP request to the model server; never raises (errors become ``{"error": ...}``)."""

    def __init__(self, predictor: Predictor, metrics: MetricsExporter | None = None) -> None:
        self._predictor = predictor
        self._metrics = metrics

    def handle(self, request: HttpRequest) -> HttpResponse:
        request_id = _request_id(request.headers.get(REQUEST_ID_HEADER))
        try:
            response = self._route(request, request_id)
        except Exception as exc:
            if not isinstance(exc, ServingError):
                log.exception(
                    "REST %s %s failed unexpectedly (request_id=%s)", request.method, request.target, request_id
                )
            response = _error(exc)
        return replace(response, headers=(*response.headers, (REQUEST_ID_HEADER, request_id)))

    def _route(self, request: HttpRequest, request_id: str) -> HttpResponse:
        method = request.method
        path = request.target.split("?", 1)[0]
        if method == "POST" and (match := _PREDICT.fullmatch(path)):
            model, version, label = _model_spec(match)
            verb = match.group(4).lower()
            if verb != "predict":
                return HttpResponse(_NOT_IMPLEMENTED, error_json(f"{verb} is not implemented by this server"))
            return self._predict(request, request_id, model, version, label)
        if request.body_error is not None:
            raise request.body_error
        if method in ("GET", "HEAD"):
            if path == "/metrics" and self._metrics is not None:
                body, content_type = self._metrics.exposition(request.headers.get("Accept", ""))
                return HttpResponse(200, body, content_type)
            if match := _STATUS.fullmatch(path):
                if match.group(1) is None:
                    raise InvalidRequestError("Missing model name in request.")
                model, version, label = _model_spec(match)
                if match.group(4):
                    return _json(self._metadata(model, version, label))
                return _json(self._status(model, version, label))
        raise InvalidRequestError(f"Malformed request: {method} {path}")

    def _predict(
        self, request: HttpRequest, request_id: str, model: str, version: int | None, label: str
    ) -> HttpResponse:
        inputs = _JsonInputs(request, self._predictor.manager, model, version, label, request_id)
        outcome = self._predictor.run(
            PredictCall(
                model=model,
                version=version,
                label=label,
                signature_name=inputs.body.signature_name if inputs.body is not None else "",
                output_filter=(),
                request_id=request_id,
                api="predict",
                decode=inputs.decode,
                input_summaries=inputs.summaries,
                declared_rows=inputs.declared_rows,
            )
        )
        if outcome.status is not None:
            return HttpResponse(outcome.status.http, error_json(outcome.error))
        assert inputs.body is not None  # run() answered, so decode() succeeded
        return HttpResponse(200, encode_predict_response(outcome.outputs, inputs.body.format))

    def _status(self, model: str, version: int | None, label: str) -> dict[str, Any]:
        manager = self._predictor.manager
        if label:
            version = manager.resolve(model, None, label).model.version
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, state, error in manager.version_status(model, version):
            status = response.model_version_status.add(version=v, state=state)
            status.status.SetInParent()  # TF Serving always writes {"error_code": "OK", "error_message": ""}
            if error:
                status.status.error_code = 13  # INTERNAL, as TF Serving reports a failed load
                status.status.error_message = error
        return _proto_dict(response)

    def _metadata(self, model: str, version: int | None, label: str) -> dict[str, Any]:
        loaded = self._predictor.manager.resolve(model, version, label).model
        spec = model_pb2.ModelSpec(name=loaded.name)
        spec.version.value = loaded.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in loaded.signature_defs.items():
            signatures.signature_def[key].CopyFrom(signature_def)
        return {"model_spec": _proto_dict(spec), "metadata": {"signature_def": _proto_dict(signatures)}}


class _JsonInputs:
    """The inputs of one ``:predict`` body, decoded once.

    Predictor.run asks for input summaries before it resolves the version; decoding here, against the
    signature the request will resolve to (resolution is deterministic per request id), gives events of REST
    requests the same dtypes and shapes as gRPC ones at no extra cost: ``decode`` then returns those arrays.
    """

    def __init__(
        self,
        request: HttpRequest,
        manager: ModelManager,
        model: str,
        version: int | None,
        label: str,
        request_id: str,
    ) -> None:
        self.body: PredictBody | None = None
        self._error: InvalidRequestError | None = request.body_error
        if self._error is None:
            try:
                self.body = parse_predict_body(request.body)
            except InvalidRequestError as exc:
                self._error = exc
        self._resolve = (manager, model, version, label, request_id)
        self._decoded: tuple[Signature, Arrays] | None = None

    def summaries(self) -> list[TensorSummary]:
        if self.body is None:
            return []
        manager, model, version, label, request_id = self._resolve
        try:
            signature = manager.resolve(model, version, label, request_id).model.signature(self.body.signature_name)
            arrays = decode_predict_inputs(self.body, signature.inputs)
        except Exception:  # run() meets the same error again and reports it
            return json_summaries(self.body)
        self._decoded = (signature, arrays)
        return array_summaries(arrays, signature.inputs)

    def decode(self, signature: Signature) -> Arrays:
        if self._error is not None:
            raise self._error
        assert self.body is not None
        if self._decoded is not None and self._decoded[0] is signature:
            return self._decoded[1]
        return decode_predict_inputs(self.body, signature.inputs)

    def declared_rows(self) -> int:
        return declared_rows(self.body) if self.body is not None else 0


def _model_spec(match: re.Match[str]) -> tuple[str, int | None, str]:
    model = unquote(match.group(1))
    version_text, label = match.group(2), match.group(3)
    version = None
    if version_text is not None:
        version = int(version_text)
        if version > _INT64_MAX:
            raise InvalidRequestError(f"Failed to convert version: {version_text} to numeric.")
    return model, version, unquote(label) if label else ""


def _request_id(header: str | None) -> str:
    if header and len(header) <= MAX_REQUEST_ID and header.isascii() and header.isprintable():
        return header
    return uuid.uuid4().hex


def _proto_dict(message: Any) -> dict[str, Any]:
    # TF Serving prints with always_print_primitive_fields and proto field names
    result: dict[str, Any] = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    return result


def _json(document: dict[str, Any]) -> HttpResponse:
    return HttpResponse(200, json.dumps(document, indent=1).encode())


def _error(exc: BaseException) -> HttpResponse:
    message = str(exc) if isinstance(exc, ServingError) else f"internal error: {type(exc).__name__}"
    return HttpResponse(status_of(exc).http, error_json(message))
