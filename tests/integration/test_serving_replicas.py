"""Replicas behind gRPC client-side round robin, and graceful stop (drain in-flight requests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.model_repository import LoadedModel, Signature
from serving.predict import Arrays, Execution
from serving.publisher import InMemoryPublisher
from serving.replicas import round_robin_target
from serving.server import ModelServer, ServeOptions
from serving.tensors import to_tensor_proto
from tests.ports import free_ports

pytestmark = pytest.mark.integration
MODEL = "ranker"


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny_model import export_tiny_ranker

    root = tmp_path_factory.mktemp("replicas")
    export_tiny_ranker(root, model_name=MODEL, version=1)
    return root / MODEL


def _request() -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.inputs["user_id"].CopyFrom(to_tensor_proto(np.array([1, 1], dtype=np.int64)))
    req.inputs["item_id"].CopyFrom(to_tensor_proto(np.array([5, 6], dtype=np.int64)))
    req.inputs["features"].CopyFrom(to_tensor_proto(np.zeros((2, 8), dtype=np.float32)))
    return req


@pytest.fixture
def replicas(model_base: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_ports(12)  # replica i: gRPC on port + 10 i, REST on port + 10 i + 1
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "recwatch.cli", "serve", "--replicas", "2", "--no-events",
         "--port", str(port), "--rest_api_port", str(port + 1),
         "--model_name", MODEL, "--model_base_path", str(model_base), "--replica", "t"],
        stdout=log, stderr=log, env={**os.environ, "RECWATCH_HOME": str(tmp_path)},
    )  # fmt: skip
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_round_robin_spreads_calls_over_replicas_and_sigterm_stops_them(
    replicas: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = replicas
    target = round_robin_target("127.0.0.1", port, 2)
    assert target == f"ipv4:127.0.0.1:{port},127.0.0.1:{port + 10}"
    channel = grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
    # round robin only uses ready subchannels: wait (bounded) until both replicas answer
    for address in (f"127.0.0.1:{port}", f"127.0.0.1:{port + 10}"):
        with grpc.insecure_channel(address) as direct:
            grpc.channel_ready_future(direct).result(timeout=120)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    seen: Counter[str] = Counter()
    for _ in range(40):
        _, call = stub.Predict.with_call(_request(), timeout=30)
        seen[dict(call.trailing_metadata())["x-recwatch-replica"]] += 1
    channel.close()
    assert set(seen) == {"t-0", "t-1"}
    assert min(seen.values()) >= 10
    for i in range(2):  # each replica exports its own Prometheus metrics on its REST port
        with urllib.request.urlopen(f"http://127.0.0.1:{port + 10 * i + 1}/metrics", timeout=30) as answer:
            text = answer.read().decode()
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("recwatch_requests_total{") and 'status="OK"' in line
        )
        assert counted == seen[f"t-{i}"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


class _GateExecutor:
    """Holds every call until the test opens the gate: an in-flight request we control."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def execute(self, model: LoadedModel, signature: Signature, inputs: Arrays) -> Execution:
        self.entered.set()
        assert self.gate.wait(timeout=60)
        return Execution(signature(inputs))


def test_stop_drains_in_flight_requests(model_base: Path) -> None:
    gate = _GateExecutor()
    publisher = InMemoryPublisher()
    server = ModelServer(ServeOptions(MODEL, model_base, port=0, poll_wait_s=0), publisher, executor=gate)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["response"] = stub.Predict(_request(), timeout=60)
        except grpc.RpcError as exc:
            result["error"] = exc

    client = threading.Thread(target=call)
    client.start()
    assert gate.entered.wait(timeout=60)
    stopper = threading.Thread(target=server.stop, kwargs={"grace_s": 30})
    stopper.start()  # the server stops taking calls but waits for the one in flight
    stopper.join(timeout=0.5)
    assert stopper.is_alive()  # still draining: stop() has not cut the request off
    gate.gate.set()
    client.join(timeout=60)
    stopper.join(timeout=60)
    channel.close()
    assert "error" not in result
    assert result["response"].model_spec.version.value == 1
    assert len(publisher) == 1  # the drained request was accounted for
