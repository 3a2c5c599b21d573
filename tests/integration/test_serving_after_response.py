"""A request's accounting runs after its answer is sent: a publisher that has not finished does not hold the
answer back, over gRPC and REST, and every event is still published (at the latest when the server stops)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from schemas import InferenceEvent
from serving.server import ModelServer, ServeOptions

pytest_plugins = ["tests.serving_fixtures"]


class GatedPublisher:
    """Holds every publish() until the gate opens, as a stalled sink would if it ran on the request path."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.events: list[InferenceEvent] = []
        self._lock = threading.Lock()

    def publish(self, event: InferenceEvent) -> None:
        self.entered.release()
        self.gate.wait(30)
        with self._lock:
            self.events.append(event)


@pytest.fixture
def gated(tiny_model_base: Path) -> Iterator[tuple[ModelServer, GatedPublisher]]:
    publisher = GatedPublisher()
    options = ServeOptions("ranker", tiny_model_base, port=0, rest_api_port=0, replica="r", max_workers=4)
    server = ModelServer(options, publisher)
    server.start()
    try:
        yield server, publisher
    finally:
        publisher.gate.set()
        server.stop(grace_s=5.0)


def test_grpc_answer_arrives_while_its_event_is_still_being_published(gated: Any, predict_request: Any) -> None:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    server, publisher = gated
    request, _ = predict_request(4)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=10, metadata=(("x-request-id", "after-1"),))
    assert len(response.outputs["scores"].float_val) == 4
    assert publisher.entered.acquire(timeout=10), "the event was never published"
    assert publisher.events == []  # the answer came back while publish() was still held
    publisher.gate.set()
    server.stop(grace_s=5.0)  # stop returns once every deferred event is published
    assert [e.request_id for e in publisher.events] == ["after-1"]
    assert publisher.events[0].rows == 4 and publisher.events[0].status_code == 0


def test_rest_answer_arrives_while_its_event_is_still_being_published(gated: Any) -> None:
    server, publisher = gated
    body = json.dumps({"instances": [{"user_id": 1, "item_id": 2, "features": [0.0] * 8}]})
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    connection.request(
        "POST",
        "/v1/models/ranker:predict",
        body=body,
        headers={"Content-Type": "application/json", "X-Request-Id": "r1"},
    )
    answer = connection.getresponse()
    assert answer.status == 200 and len(json.loads(answer.read())["predictions"]) == 1
    connection.close()
    assert publisher.entered.acquire(timeout=10)
    assert publisher.events == []
    publisher.gate.set()
    server.stop(grace_s=5.0)
    assert [e.request_id for e in publisher.events] == ["r1"]
