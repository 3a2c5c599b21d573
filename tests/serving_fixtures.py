"""Fixtures for model-server tests. Load with ``pytest_plugins = ["tests.serving_fixtures"]`` and take
everything through fixtures (importing this module from a test module defeats pytest's assert rewriting).

The tiny model is exported once per session (TensorFlow is slow to start); a server on a free loopback port
runs once per test module and its InMemoryPublisher is emptied before each test. Requests are built with
TensorFlow's own ``tf.make_tensor_proto``, as a real client would, not with the code under test.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving.publisher import InMemoryPublisher
from serving.server import ModelServer, ServeOptions

MODEL_NAME = "ranker"
REPLICA = "test-replica"
CLOCK_START_US = 1_700_000_000_000_000
CLOCK_STEP_US = 7


class StepClock:
    """A clock that starts at CLOCK_START_US and advances CLOCK_STEP_US µs on every reading."""

    def __init__(self, start_us: int = CLOCK_START_US, step_us: int = CLOCK_STEP_US) -> None:
        self._now = start_us
        self._step = step_us
        self._lock = threading.Lock()

    def now_us(self) -> int:
        with self._lock:
            self._now += self._step
            return self._now


@dataclass
class RunningServer:
    server: ModelServer
    publisher: InMemoryPublisher
    clock: StepClock
    stub: Any  # prediction_service_pb2_grpc.PredictionServiceStub
    model_base_path: Path
    model_name: str = MODEL_NAME
    replica: str = REPLICA
    clock_start_us: int = CLOCK_START_US


def build_predict_request(
    rows: int,
    *,
    seed: int = 0,
    model_name: str = MODEL_NAME,
    signature_name: str = "",
    version: int | None = None,
    drop: tuple[str, ...] = (),
    overrides: dict[str, np.ndarray] | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """A PredictRequest for the tiny ranker with ``rows`` random candidates, and its inputs as arrays."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {
        "user_id": np.full(rows, rng.integers(0, 10**9), dtype=np.int64),
        "item_id": rng.integers(0, 10**12, size=rows, dtype=np.int64),
        "features": rng.normal(size=(rows, 8)).astype(np.float32),
    }
    inputs.update(overrides or {})
    for name in drop:
        inputs.pop(name)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    if signature_name:
        request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return request, inputs


@pytest.fixture(scope="session")
def predict_request() -> Callable[..., tuple[Any, dict[str, np.ndarray]]]:
    """:func:`build_predict_request`: ``predict_request(rows, seed=0, drop=(), overrides={}, ...)``."""
    return build_predict_request


@pytest.fixture(scope="session")
def tiny_model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ranker's model directory (``<root>/ranker``, holding version 1)."""
    from training.tiny_model import export_tiny_ranker

    root = tmp_path_factory.mktemp("models")
    export_tiny_ranker(root, model_name=MODEL_NAME, version=1, seed=0)
    return root / MODEL_NAME


@pytest.fixture(scope="session")
def reference_scores(tiny_model_base: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Scores from calling the SavedModel's ``serving_default`` signature directly, without the server."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tiny_model_base / "1"))
    signature = loaded.signatures["serving_default"]

    def scores(inputs: dict[str, np.ndarray]) -> np.ndarray:
        _ = loaded  # keep the SavedModel object (and so its variables) alive
        return np.asarray(signature(**{k: tf.constant(v) for k, v in inputs.items()})["scores"])

    return scores


@pytest.fixture(scope="module")
def _module_server(tiny_model_base: Path) -> Iterator[RunningServer]:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    threads_before = set(threading.enumerate())
    publisher = InMemoryPublisher()
    clock = StepClock()
    options = ServeOptions(MODEL_NAME, tiny_model_base, port=0, replica=REPLICA, max_workers=4)
    totals = itertools.count()  # stands in for an event logger's (dropped, spooled) totals, growing per call
    server = ModelServer(options, publisher, clock=clock, producer_totals=lambda: (next(totals), 7))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield RunningServer(
            server, publisher, clock, prediction_service_pb2_grpc.PredictionServiceStub(channel), tiny_model_base
        )
    finally:
        channel.close()
        server.stop(grace_s=2.0)
    # grpc's shutdown helper thread may still be on its way out once stop() returned: give exiting threads a
    # moment; a thread that keeps running is a leak
    for thread in [t for t in threading.enumerate() if t not in threads_before]:
        thread.join(timeout=10)
    leftover = [t.name for t in threading.enumerate() if t not in threads_before]
    assert not leftover, f"threads left running after stop: {leftover}"


@pytest.fixture
def serving(_module_server: RunningServer) -> RunningServer:
    """A running server on a free loopback port, with an empty InMemoryPublisher."""
    _module_server.publisher.clear()
    return _module_server
