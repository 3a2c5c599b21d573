"""``ServeOptions.fault_file`` end to end: a ModelServer with a fault file, called through the official stub."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from serving.publisher import InMemoryPublisher
from serving.server import ModelServer, ServeOptions

pytest_plugins = ["tests.serving_fixtures"]
pytestmark = pytest.mark.integration

INTERNAL = 13


class Served:
    def __init__(self, server: ModelServer, publisher: InMemoryPublisher, stub: Any, fault_file: Path) -> None:
        self.server, self.publisher, self.stub, self.fault_file = server, publisher, stub, fault_file


@pytest.fixture
def faulty(tmp_path: Path, tiny_model_base: Path) -> Iterator[Served]:
    """A server whose fault file is written by the test before its first call (the first call reads it)."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    threads_before = set(threading.enumerate())
    fault_file = tmp_path / "faults.json"
    publisher = InMemoryPublisher()
    server = ModelServer(
        ServeOptions("ranker", tiny_model_base, port=0, max_workers=4, poll_wait_s=0, fault_file=fault_file),
        publisher,
    )
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Served(server, publisher, prediction_service_pb2_grpc.PredictionServiceStub(channel), fault_file)
    finally:
        channel.close()
        server.stop(grace_s=2.0)
    for thread in [t for t in threading.enumerate() if t not in threads_before]:
        thread.join(timeout=10)
    assert not [t.name for t in threading.enumerate() if t not in threads_before]


def test_latency_factor_multiplies_the_execution_time_in_the_event(faulty: Served, predict_request) -> None:
    faulty.fault_file.write_text(json.dumps({"latency_factor": 5}))
    for seed in range(5):
        request, _ = predict_request(64, seed=seed)
        faulty.stub.Predict(request, timeout=10)

    events = faulty.publisher.events
    assert len(events) == 5
    for event in events:
        assert event.status_code == 0
        assert event.latency.compute_us > 0
        assert event.latency.total_us >= 5 * event.latency.compute_us, event.latency


def test_error_rate_one_fails_every_request_with_internal(faulty: Served, predict_request) -> None:
    faulty.fault_file.write_text(json.dumps({"error_rate": 1.0}))
    for seed in range(5):
        request, _ = predict_request(8, seed=seed)
        with pytest.raises(grpc.RpcError) as info:
            faulty.stub.Predict(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "injected fault" in (info.value.details() or "")

    events = faulty.publisher.events
    assert len(events) == 5
    assert all(e.status_code == INTERNAL and e.error == "injected fault" and not e.outputs for e in events)


def test_clearing_the_file_restores_normal_answers(faulty: Served, predict_request) -> None:
    faulty.fault_file.write_text(json.dumps({"error_rate": 1.0}))
    request, _ = predict_request(8, seed=1)
    with pytest.raises(grpc.RpcError):
        faulty.stub.Predict(request, timeout=10)

    faulty.fault_file.write_text("{}")
    # the server looks at the file at most once per second: calls fail until it has, then all succeed
    deadline = time.monotonic() + 5.0
    while True:
        try:
            response = faulty.stub.Predict(request, timeout=10)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INTERNAL
            assert time.monotonic() < deadline, "the cleared fault file was not re-read within 5 s"
            time.sleep(0.05)
    assert len(response.outputs["scores"].float_val) == 8
    for seed in range(5):
        request, _ = predict_request(8, seed=seed)
        faulty.stub.Predict(request, timeout=10)
    assert faulty.publisher.events[-1].status_code == 0 and faulty.publisher.events[-1].error == ""


def test_stopping_the_server_ends_a_leak_and_its_thread(tmp_path: Path, tiny_model_base: Path, predict_request) -> None:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    fault_file = tmp_path / "faults.json"
    fault_file.write_text(json.dumps({"leak_bytes_per_s": 1 << 20, "leak_max_bytes": 8 << 20}))
    server = ModelServer(
        ServeOptions("ranker", tiny_model_base, port=0, max_workers=2, poll_wait_s=0, fault_file=fault_file),
        InMemoryPublisher(),
    )
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        request, _ = predict_request(4)
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)  # reads the file
    assert any(t.name == "fault-leak" for t in threading.enumerate())
    server.stop(grace_s=2.0)  # the file still asks for a leak: stop() must end it anyway, at once
    assert not any(t.name == "fault-leak" and t.is_alive() for t in threading.enumerate())
