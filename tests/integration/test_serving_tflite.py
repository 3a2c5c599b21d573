"""``--prefer_tflite_model``: a version's ``model.tflite`` answers in the TFLite interpreter, everything else
stays on the SavedModel, and clients see TF Serving's answers either way."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.errors import InvalidRequestError, ModelLoadError
from serving.model_repository import load_version
from serving.publisher import InMemoryPublisher
from serving.server import ModelServer, ServeOptions
from serving.tflite import TFLITE_FILE, TfliteCall, convert_version

pytest_plugins = ["tests.serving_fixtures"]
pytestmark = pytest.mark.integration

RTOL, ATOL = 1e-5, 1e-6  # TFLite's kernels round differently from TensorFlow's


def _inputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_id": rng.integers(0, 1000, rows).astype(np.int64),
        "item_id": rng.integers(0, 1000, rows).astype(np.int64),
        "features": rng.random((rows, 8), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def converted(tiny_model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny ranker's base path whose version 1 also holds model.tflite."""
    base = tmp_path_factory.mktemp("tflite") / "ranker"
    shutil.copytree(tiny_model_base, base)
    convert_version(base / "1")
    return base


def test_the_interpreter_answers_as_the_saved_model_for_every_batch_size(
    converted: Path, reference_scores: Callable[[dict[str, np.ndarray]], np.ndarray]
) -> None:
    assert (converted / "1" / TFLITE_FILE).stat().st_size > 0
    signature = load_version(converted / "1", prefer_tflite=True).signature()
    assert isinstance(signature._flat, TfliteCall)
    answers = []
    # the interpreter resizes its inputs both ways; a repeated shape reuses the allocation with new values
    for i, rows in enumerate((1, 32, 32, 257, 3, 3)):
        inputs = _inputs(rows, seed=i)
        scores = signature(inputs)["scores"]
        assert scores.shape == (rows,) and scores.dtype == np.float32
        np.testing.assert_allclose(scores, reference_scores(inputs), rtol=RTOL, atol=ATOL)
        answers.append(scores)
    assert not np.array_equal(answers[1], answers[2])  # a copy per call, not a view of the reused buffer


def test_without_the_flag_or_the_file_the_saved_model_answers(tiny_model_base: Path, converted: Path) -> None:
    assert not isinstance(load_version(converted / "1").signature()._flat, TfliteCall)
    assert not isinstance(load_version(tiny_model_base / "1", prefer_tflite=True).signature()._flat, TfliteCall)


def test_rows_that_do_not_pair_up_are_still_invalid_argument(converted: Path) -> None:
    signature = load_version(converted / "1", prefer_tflite=True).signature()
    mismatched = {**_inputs(4), "item_id": np.arange(3, dtype=np.int64)}
    with pytest.raises(InvalidRequestError, match="rejected the inputs"):
        signature(mismatched)


def test_a_corrupt_tflite_file_fails_the_version(converted: Path, tmp_path: Path) -> None:
    base = tmp_path / "ranker"
    shutil.copytree(converted, base)
    (base / "1" / TFLITE_FILE).write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelLoadError, match=r"model\.tflite"):
        load_version(base / "1", prefer_tflite=True)


def test_a_server_with_the_flag_answers_predict_over_grpc(
    converted: Path, predict_request, reference_scores: Callable[[dict[str, np.ndarray]], np.ndarray]
) -> None:
    publisher = InMemoryPublisher()
    options = ServeOptions("ranker", converted, port=0, max_workers=2, prefer_tflite_model=True)
    server = ModelServer(options, publisher)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        request, inputs = predict_request(32, seed=5)
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["scores"]), reference_scores(inputs), rtol=RTOL, atol=ATOL
        )
        assert response.model_spec.version.value == 1
        [event] = publisher.events
        assert event.status_code == 0 and event.rows == 32
    finally:
        channel.close()
        server.stop(grace_s=2.0)
