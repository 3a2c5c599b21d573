"""The gRPC PredictionService end to end: a ModelServer on a loopback port, the official client stub."""

from __future__ import annotations

import threading
import uuid

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

from schemas import InferenceEvent
from serving.errors import ServerStartError
from serving.server import ModelServer, ServeOptions

pytest_plugins = ["tests.serving_fixtures"]
pytestmark = pytest.mark.integration


def _call_error(serving, request, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        serving.stub.Predict(request, timeout=10, **kwargs)
    return info.value


def _only_event(serving) -> InferenceEvent:
    events: list[InferenceEvent] = serving.publisher.events
    assert len(events) == 1, events
    return events[0]


def test_predict_matches_direct_call_of_the_signature(serving, reference_scores, predict_request):
    request, inputs = predict_request(32, seed=1)

    response = serving.stub.Predict(request, timeout=10)

    assert list(response.outputs) == ["scores"]
    scores = tf.make_ndarray(response.outputs["scores"])
    assert scores.dtype == np.float32
    assert scores.shape == (32,)
    np.testing.assert_allclose(scores, reference_scores(inputs), rtol=1e-6, atol=1e-7)
    # TF Serving writes typed fields, so clients reading float_val directly work too.
    np.testing.assert_allclose(np.array(response.outputs["scores"].float_val, np.float32), scores)
    assert response.model_spec.name == serving.model_name
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_predict_accepts_typed_value_fields_and_explicit_version(serving, reference_scores, predict_request):
    request, inputs = predict_request(3, seed=2, version=1, signature_name="serving_default")
    for name, array in inputs.items():  # rewrite tensor_content as float_val / int64_val, like other clients
        proto = request.inputs[name]
        proto.tensor_content = b""
        field = proto.float_val if array.dtype == np.float32 else proto.int64_val
        field.extend(array.ravel().tolist())

    response = serving.stub.Predict(request, timeout=10)

    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), reference_scores(inputs), rtol=1e-6)


def test_each_predict_publishes_exactly_one_event_with_its_fields(serving, predict_request):
    sizes = [1, 5, 32, 100, 7]
    responses = []
    for i, rows in enumerate(sizes):
        request, inputs = predict_request(rows, seed=10 + i)
        response = serving.stub.Predict(request, timeout=10)
        responses.append((rows, inputs, tf.make_ndarray(response.outputs["scores"])))

    events = serving.publisher.events
    assert len(events) == len(sizes)
    assert len({e.event_id for e in events}) == len(sizes)
    for event, (rows, inputs, scores) in zip(events, responses, strict=True):
        assert len(event.event_id) == 32 and int(event.event_id, 16) >= 0
        assert len(event.request_id) == 32  # generated: no x-request-id was sent
        assert serving.clock_start_us < event.received_us < event.sent_us
        assert (event.model, event.version, event.replica) == (serving.model_name, 1, serving.replica)
        assert (event.api, event.signature, event.label) == ("predict", "serving_default", "")
        assert (event.status_code, event.error) == (0, "")
        assert event.rows == rows and event.batch_size == rows
        assert not event.cache_hit
        latency = event.latency
        assert latency.queue_us == 0 and latency.batch_us == 0
        assert 0 < latency.compute_us <= latency.total_us
        assert [(t.name, t.dtype, list(t.shape)) for t in event.inputs] == [
            ("features", "float32", [rows, 8]),
            ("item_id", "int64", [rows]),
            ("user_id", "int64", [rows]),
        ]
        (out,) = event.outputs
        assert out.name == "scores" and out.count == rows
        assert out.mean == pytest.approx(float(scores.mean()), rel=1e-5)
        assert (out.min, out.max) == (pytest.approx(scores.min()), pytest.approx(scores.max()))
        np.testing.assert_allclose(list(out.head), scores[:64])
        assert event.user_id == str(inputs["user_id"][0])
        assert list(event.item_ids) == [str(v) for v in inputs["item_id"][:64]]
    dropped = [e.producer.dropped for e in events]  # the logger's totals, read once per event
    assert dropped == sorted(dropped) and len(set(dropped)) == len(events)
    assert min(e.process_rss_bytes for e in events) > 10 * 2**20  # the serving process's RSS, stamped by default
    assert {e.producer.spooled for e in events} == {7}


def test_request_id_from_metadata_propagates(serving, predict_request):
    request, _ = predict_request(4)
    request_id = f"req-{uuid.uuid4()}"

    _, call = serving.stub.Predict.with_call(request, timeout=10, metadata=[("x-request-id", request_id)])

    assert _only_event(serving).request_id == request_id
    assert ("x-request-id", request_id) in tuple(call.trailing_metadata())


def test_unknown_model_is_not_found_and_still_publishes_an_event(serving, predict_request):
    request, _ = predict_request(4, model_name="no-such-model")

    error = _call_error(serving, request, metadata=[("x-request-id", "r-404")])

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in error.details()
    event = _only_event(serving)
    assert event.status_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-model" in event.error
    assert (event.model, event.version, event.request_id) == ("no-such-model", 0, "r-404")
    assert event.rows == 4 and len(event.inputs) == 3 and not event.outputs
    assert serving.clock_start_us < event.received_us < event.sent_us


def test_unknown_version_is_not_found(serving, predict_request):
    request, _ = predict_request(2, version=7)
    assert _call_error(serving, request).code() == grpc.StatusCode.NOT_FOUND
    assert _only_event(serving).status_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_unknown_signature_is_failed_precondition_as_in_tf_serving(serving, predict_request):
    request, _ = predict_request(2, signature_name="nope")
    error = _call_error(serving, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nope" in error.details()
    assert _only_event(serving).signature == "nope"


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"overrides": {"features": np.zeros((3, 8), np.float64)}}, "features"),
        ({"overrides": {"item_id": np.zeros(3, np.int32)}}, "item_id"),
        ({"drop": ("item_id",)}, "item_id"),
        ({"drop": ("user_id",)}, "user_id"),
        ({"overrides": {"features": np.zeros((3, 7), np.float32)}}, "features"),
        ({"overrides": {"user_id": np.zeros((3, 1), np.int64)}}, "user_id"),
        ({"overrides": {"extra": np.zeros(3, np.int64)}}, "extra"),
    ],
    ids=["dtype", "int-width", "missing-item", "missing-user", "dim", "rank", "unexpected"],
)
def test_bad_input_is_invalid_argument_naming_the_input(serving, change, name, predict_request):
    request, _ = predict_request(3, **change)

    error = _call_error(serving, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"'{name}'" in error.details()
    event = _only_event(serving)
    assert event.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert f"'{name}'" in event.error
    assert event.version == 1 and not event.outputs


def test_rows_that_do_not_pair_up_are_invalid_argument(serving, predict_request):
    request, _ = predict_request(3, overrides={"item_id": np.arange(5, dtype=np.int64)})
    assert _call_error(serving, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _only_event(serving).rows == 5


def test_output_filter_is_honoured(serving, predict_request):
    request, _ = predict_request(2)
    request.output_filter.append("scores")
    assert list(serving.stub.Predict(request, timeout=10).outputs) == ["scores"]

    request.output_filter[:] = ["logits"]
    error = _call_error(serving, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'logits'" in error.details()
    assert len(serving.publisher) == 2


def test_get_model_metadata_returns_the_signature(serving):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = serving.model_name

    response = serving.stub.GetModelMetadata(request, timeout=10)

    assert response.model_spec.name == serving.model_name and response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def["serving_default"]
    shapes = {k: [d.size for d in v.tensor_shape.dim] for k, v in signature.inputs.items()}
    assert shapes == {"user_id": [-1], "item_id": [-1], "features": [-1, 8]}
    assert {k: tf.as_dtype(v.dtype).name for k, v in signature.inputs.items()} == {
        "user_id": "int64",
        "item_id": "int64",
        "features": "float32",
    }
    assert list(signature.outputs) == ["scores"]
    assert tf.as_dtype(signature.outputs["scores"].dtype) == tf.float32
    assert len(serving.publisher) == 0  # only Predict publishes

    request.model_spec.name = "no-such-model"
    with pytest.raises(grpc.RpcError) as info:
        serving.stub.GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


class _BlockingPublisher:
    """Holds the request thread in publish() until released, to keep a call in flight."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[InferenceEvent] = []

    def publish(self, event: InferenceEvent) -> None:
        self.entered.set()
        self.release.wait(10)
        self.events.append(event)


def test_stop_drains_in_flight_calls_and_frees_the_port(tiny_model_base, predict_request):
    model_name = tiny_model_base.name
    threads_before = set(threading.enumerate())
    publisher = _BlockingPublisher()
    server = ModelServer(ServeOptions(model_name, tiny_model_base, port=0, max_workers=2), publisher)
    server.start()
    port = server.port
    with pytest.raises(ServerStartError):  # SO_REUSEPORT is off: a second server cannot share the port
        ModelServer(ServeOptions(model_name, tiny_model_base, port=port), publisher).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request, _ = predict_request(4)
        in_flight = stub.Predict.future(request, timeout=20)
        assert publisher.entered.wait(10)
        stopper = threading.Thread(target=server.stop, kwargs={"grace_s": 15.0})
        stopper.start()
        stopper.join(0.3)
        assert stopper.is_alive()  # waiting for the in-flight call
        publisher.release.set()
        assert in_flight.result(timeout=10).outputs["scores"].float_val
        stopper.join(10)
        assert not stopper.is_alive()
    finally:
        publisher.release.set()
        channel.close()
        server.stop(grace_s=0)
    assert len(publisher.events) == 1
    # grpc's cancel_all_calls_after_grace helper may still be on its way out once stop() returned: give exiting
    # threads a moment; one that keeps running is a leak
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(timeout=10)
    assert set(threading.enumerate()) <= threads_before  # worker threads are released
    restarted = ModelServer(ServeOptions(model_name, tiny_model_base, port=port), publisher)
    restarted.start()
    restarted.stop(grace_s=0)
