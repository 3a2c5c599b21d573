"""Versions, labels, canary weights and ModelService through the official gRPC stubs, on real SavedModels."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.publisher import InMemoryPublisher
from serving.server import ModelServer, ServeOptions
from serving.tensors import to_tensor_proto

pytestmark = pytest.mark.integration

MODEL = "ranker"


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny_model import export_tiny_ranker

    root = tmp_path_factory.mktemp("versions")
    export_tiny_ranker(root, model_name=MODEL, version=1, seed=0)
    export_tiny_ranker(root, model_name=MODEL, version=2, seed=1)
    return root / MODEL


def _request(rows: int = 4, *, version: int | None = None, label: str = "") -> predict_pb2.PredictRequest:
    rng = np.random.default_rng(rows)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    if version is not None:
        req.model_spec.version.value = version
    if label:
        req.model_spec.version_label = label
    req.inputs["user_id"].CopyFrom(to_tensor_proto(np.full(rows, 3, dtype=np.int64)))
    req.inputs["item_id"].CopyFrom(to_tensor_proto(np.arange(rows, dtype=np.int64)))
    req.inputs["features"].CopyFrom(to_tensor_proto(rng.random((rows, 8), dtype=np.float32)))
    return req


class Served:
    def __init__(self, server: ModelServer, publisher: InMemoryPublisher) -> None:
        self.server = server
        self.publisher = publisher
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        s.channel.close()
        s.server.stop(grace_s=2.0)


def _start(serve: list[Served], options: ServeOptions) -> Served:
    publisher = InMemoryPublisher()
    server = ModelServer(options, publisher)
    server.start()
    served = Served(server, publisher)
    serve.append(served)
    return served


def _until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    """Wait (bounded) for the load threads to make progress; never waits for a clock to pass."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)


def test_a_version_switch_under_load_fails_no_request(tmp_path: Path, two_versions: Path, serve: list[Served]) -> None:
    from training.tiny_model import export_tiny_ranker

    base = tmp_path / MODEL
    base.mkdir()
    (base / "1").symlink_to(two_versions / "1", target_is_directory=True)
    s = _start(serve, ServeOptions(MODEL, base, port=0, poll_wait_s=0))  # polled by hand below
    failures: list[BaseException] = []
    versions: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                versions.append(s.predict.Predict(_request(), timeout=10).model_spec.version.value)
            except grpc.RpcError as exc:
                failures.append(exc)

    clients = [threading.Thread(target=load) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        _until(lambda: len(versions) >= 50)
        export_tiny_ranker(tmp_path, model_name=MODEL, version=2, seed=1)  # a new version appears
        s.server.poll_once()
        seen_before = len(versions)
        _until(lambda: len(versions) >= seen_before + 50)
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert failures == []
    assert versions[0] == 1 and versions[-1] == 2
    switch = versions.index(2)
    assert set(versions[switch + 8 :]) == {2}  # after in-flight calls drained, only the new version answers
    assert len(s.publisher) == len(versions)  # one event per request, across the switch


def test_labels_canary_weight_and_model_status(tmp_path: Path, two_versions: Path, serve: list[Served]) -> None:
    config = tmp_path / "models.config"
    config.write_text(
        f"""model_config_list {{ config {{
          name: "{MODEL}" base_path: "{two_versions}" model_platform: "tensorflow"
          model_version_policy {{ all {{}} }}
          version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }} }}"""
    )
    s = _start(serve, ServeOptions(model_config_file=config, port=0, poll_wait_s=0))

    assert s.predict.Predict(_request(label="canary")).model_spec.version.value == 2
    assert s.predict.Predict(_request(version=1)).model_spec.version.value == 1
    with pytest.raises(grpc.RpcError) as missing:
        s.predict.Predict(_request(label="shadow"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    def arms(n: int) -> Counter[int]:
        return Counter(
            s.predict.Predict(_request(), metadata=[("x-request-id", f"r-{n}-{i}")]).model_spec.version.value
            for i in range(400)
        )

    assert arms(0) == Counter({1: 400})  # weight 0: every unversioned request goes to stable
    reload = model_management_pb2.ReloadConfigRequest()
    answer = s.models.HandleReloadConfigRequest(reload, metadata=[("x-recwatch-canary-weights", f"{MODEL}=0.25")])
    assert answer.status.error_code == 0, answer.status.error_message
    split = arms(1)
    assert 60 < split[2] < 140  # ~25 % of 400 to the canary
    labels = Counter(e.label for e in s.publisher.events[-400:])
    assert labels == Counter({"stable": split[1], "canary": split[2]})

    bad = s.models.HandleReloadConfigRequest(reload, metadata=[("x-recwatch-canary-weights", f"{MODEL}=7")])
    assert bad.status.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    status = s.models.GetModelStatus(status_request)
    assert [(v.version, v.state) for v in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]
    health = health_pb2_grpc.HealthStub(s.channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_batching_and_cache_through_the_server(two_versions: Path, serve: list[Served]) -> None:
    from serving.batching import BatchingParameters

    options = ServeOptions(
        MODEL,
        two_versions,
        port=0,
        poll_wait_s=0,
        batching=BatchingParameters(max_batch_size=64, batch_timeout_micros=2000, num_batch_threads=1),
        result_cache_models=frozenset({MODEL}),
    )
    s = _start(serve, options)
    single = _request(rows=1)
    expected = s.predict.Predict(single).outputs["scores"].float_val

    def call(i: int) -> None:
        req = _request(rows=1)
        req.inputs["item_id"].CopyFrom(to_tensor_proto(np.array([1000 + i], dtype=np.int64)))  # distinct: no hits
        s.predict.Predict(req, timeout=30)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batched = [e for e in s.publisher.events if e.batch_size > e.rows]
    assert batched, "concurrent single-row requests were never computed together"
    assert all(e.latency.queue_us > 0 for e in batched)

    again = s.predict.Predict(single)  # the same request again: answered from the cache
    assert list(again.outputs["scores"].float_val) == list(expected)
    assert s.publisher.events[-1].cache_hit and not s.publisher.events[0].cache_hit
