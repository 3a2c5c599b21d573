"""Classify and Regress with tf.Example inputs, on a SavedModel exported with classify / regress signatures."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc, regression_pb2

from serving.publisher import InMemoryPublisher
from serving.server import ModelServer, ServeOptions

pytestmark = pytest.mark.integration
MODEL = "scorer"


def _export(path: Path) -> None:
    """y = x0 + 2 x1; classify: scores [sigmoid(y), 1 - sigmoid(y)] for classes [yes, no]; regress: y."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]
        y = tf.matmul(x, tf.constant([[1.0], [2.0]]))
        scores = tf.concat([tf.sigmoid(y), 1.0 - tf.sigmoid(y)], axis=1)
        classes = tf.tile(tf.constant([["yes", "no"]]), [tf.shape(x)[0], 1])
        builder = tf.compat.v1.saved_model.Builder(str(path))
        with tf.compat.v1.Session(graph=graph) as session:
            builder.add_meta_graph_and_variables(
                session,
                ["serve"],
                signature_def_map={
                    "serving_default": tf.compat.v1.saved_model.classification_signature_def(
                        serialized, classes, scores
                    ),
                    "regress": tf.compat.v1.saved_model.regression_signature_def(serialized, y),
                },
            )
        builder.save()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelServer, InMemoryPublisher]]:
    root = tmp_path_factory.mktemp("examples")
    _export(root / MODEL / "1")
    publisher = InMemoryPublisher()
    server = ModelServer(ServeOptions(MODEL, root / MODEL, port=0, poll_wait_s=0), publisher)
    server.start()
    yield server, publisher
    server.stop(grace_s=2.0)


def _example(x0: float, x1: float) -> example_pb2.Example:
    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.extend([x0, x1])
    return ex


def _stub(server: ModelServer) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_classify_answers_classes_and_scores_per_example(served: tuple[ModelServer, InMemoryPublisher]) -> None:
    server, publisher = served
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.input.example_list.examples.extend([_example(1, 0), _example(0, 1)])
    result = _stub(server).Classify(request, timeout=30).result
    assert [[c.label for c in r.classes] for r in result.classifications] == [["yes", "no"], ["yes", "no"]]
    assert result.classifications[0].classes[0].score == pytest.approx(_sigmoid(1.0), rel=1e-6)
    assert result.classifications[1].classes[0].score == pytest.approx(_sigmoid(2.0), rel=1e-6)
    event = publisher.events[-1]
    assert (event.api, event.status_code, event.rows) == ("classify", 0, 2)


def test_regress_with_context_features(served: tuple[ModelServer, InMemoryPublisher]) -> None:
    server, _ = served
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress"
    context = request.input.example_list_with_context.context
    context.features.feature["x"].float_list.value.extend([3.0, 3.0])  # overridden by each example's own x
    request.input.example_list_with_context.examples.extend([_example(1, 1), _example(2, 0)])
    result = _stub(server).Regress(request, timeout=30).result
    assert [r.value for r in result.regressions] == pytest.approx([3.0, 2.0])


def test_wrong_method_and_empty_input_are_invalid_argument(served: tuple[ModelServer, InMemoryPublisher]) -> None:
    server, publisher = served
    stub = _stub(server)
    regress_on_classifier = regression_pb2.RegressionRequest()
    regress_on_classifier.model_spec.name = MODEL  # serving_default is a classify signature
    regress_on_classifier.input.example_list.examples.append(_example(1, 1))
    with pytest.raises(grpc.RpcError) as wrong:
        stub.Regress(regress_on_classifier, timeout=30)
    assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "method_name" in (wrong.value.details() or "")
    assert publisher.events[-1].status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    empty = classification_pb2.ClassificationRequest()
    empty.model_spec.name = MODEL
    with pytest.raises(grpc.RpcError) as nothing:
        stub.Classify(empty, timeout=30)
    assert nothing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
