"""The first end-to-end slice, as a user runs it: ``recwatch serve`` and ``recwatch worker`` as processes,
requests through the official tensorflow-serving-api client, results through ``recwatch sql``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from schemas import topics
from serving.tensors import to_tensor_proto

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny_model import export_tiny_ranker

    base = tmp_path_factory.mktemp("models")
    export_tiny_ranker(base, model_name="ranker", version=1)
    return base / "ranker"


class Stack:
    """`recwatch` processes sharing one environment (Kafka, store, home) for one test."""

    def __init__(self, home: Path, kafka: str, store: str) -> None:
        self.env = {**os.environ, "RECWATCH_HOME": str(home), "RECWATCH_KAFKA": kafka, "RECWATCH_STORE": store}
        self.home = home
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        out = open(self.home / log, "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen([sys.executable, "-m", "recwatch.cli", *args], env=self.env, stdout=out, stderr=out)
        self.procs.append(proc)
        return proc

    def sql(self, query: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "recwatch.cli", "sql", query, "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def wait_for(self, query: str, expected: int, timeout_s: float = 120) -> int:
        """Poll a one-number query until it reaches ``expected`` (bounded); returns the last value."""
        deadline = time.monotonic() + timeout_s
        value = -1
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None and proc.returncode not in (0, -signal.SIGKILL):
                    logs = {p.name: p.read_text()[-3000:] for p in self.home.glob("*.log")}
                    raise AssertionError(f"{proc.args!r} exited with {proc.returncode}: {logs}")
            value = int(next(iter(self.sql(query)[0].values())) or 0)
            if value >= expected:
                return value
            time.sleep(0.5)
        return value

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def stack(tmp_path: Path, kafka_bootstrap: str, store_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, kafka_bootstrap, store_url)
    try:
        yield s
    finally:
        s.close()


def _send(port: int, model: str, n: int, prefix: str) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=120)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rng = np.random.default_rng(1)
    for i in range(n):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model
        req.inputs["user_id"].CopyFrom(to_tensor_proto(np.full(4, 7, dtype=np.int64)))
        req.inputs["item_id"].CopyFrom(to_tensor_proto(rng.integers(1, 1000, size=4, dtype=np.int64)))
        req.inputs["features"].CopyFrom(to_tensor_proto(rng.random((4, 8), dtype=np.float32)))
        stub.Predict(req, timeout=30, metadata=[("x-request-id", f"{prefix}-{i}")])
    channel.close()


def _serve(stack: Stack, model: str, path: Path, port: int) -> None:
    args = ["--model_name", model, "--model_base_path", str(path), "--port", str(port), "--rest_api_port", "0"]
    stack.start("serve", *args, log="serve.log")


def _model_dir(model_base: Path, tmp_path: Path) -> tuple[str, Path]:
    """A uniquely named copy of the model, so this test's aggregates are its own on the shared topic."""
    name = f"ranker_{uuid.uuid4().hex[:8]}"
    (tmp_path / "models").mkdir(exist_ok=True)
    link = tmp_path / "models" / name
    link.symlink_to(model_base, target_is_directory=True)
    return name, link


def test_n_requests_give_n_events_and_aggregates_summing_to_n(stack: Stack, model_base: Path, tmp_path: Path) -> None:
    model, path = _model_dir(model_base, tmp_path)
    port = _free_port()
    _serve(stack, model, path, port)
    stack.start("worker", "--group", f"g-{uuid.uuid4().hex[:8]}", log="worker.log")
    n = 120
    _send(port, model, n, prefix=model)

    events = f"SELECT count() FROM inference_events WHERE model = '{model}'"
    assert stack.wait_for(events, n) == n, (tmp_path / "worker.log").read_text()[-3000:]
    (row,) = stack.sql(
        f"SELECT count(DISTINCT event_id) AS distinct_events, countIf(status_code = 0) AS ok, "
        f"countIf(request_id LIKE '{model}-%') AS ours FROM inference_events WHERE model = '{model}'"
    )
    assert row == {"distinct_events": n, "ok": n, "ours": n}
    assert stack.wait_for(f"SELECT sum(requests) FROM inference_metrics_10s WHERE model = '{model}'", n) == n


def test_worker_restart_and_kill_neither_lose_nor_double_count(stack: Stack, model_base: Path, tmp_path: Path) -> None:
    model, path = _model_dir(model_base, tmp_path)
    port = _free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    _serve(stack, model, path, port)
    events = f"SELECT count() FROM inference_events WHERE model = '{model}'"
    requests = f"SELECT sum(requests) FROM inference_metrics_10s WHERE model = '{model}'"

    worker = stack.start("worker", "--group", group, log="worker.log")
    _send(port, model, 50, prefix="a")
    assert stack.wait_for(requests, 50) == 50
    stack.stop(worker)  # graceful: offsets committed

    _send(port, model, 30, prefix="b")  # produced while no worker runs
    worker = stack.start("worker", "--group", group, log="worker.log")
    assert stack.wait_for(requests, 80) == 80
    _send(port, model, 40, prefix="c")
    assert stack.wait_for(requests, 120) == 120
    stack.stop(worker, signal.SIGKILL)  # no commit: the last batches are redelivered to the next worker

    worker = stack.start("worker", "--group", group, log="worker.log")
    _send(port, model, 10, prefix="d")
    assert stack.wait_for(requests, 130) == 130
    assert stack.wait_for(events, 130) == 130
    (row,) = stack.sql(
        f"SELECT count() AS rows, count(DISTINCT event_id) AS distinct_events FROM inference_events "
        f"WHERE model = '{model}'"
    )
    assert row == {"rows": 130, "distinct_events": 130}
    # stays exact after the redelivered batches have been processed
    (total,) = stack.sql(requests)
    assert int(next(iter(total.values()))) == 130


@pytest.mark.parametrize("store_url", ["chdb"], indirect=True)
def test_a_non_python_consumer_reads_events_with_kcat_and_protoc(
    stack: Stack, model_base: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    model, path = _model_dir(model_base, tmp_path)
    port = _free_port()
    _serve(stack, model, path, port)
    _send(port, model, 3, prefix="kcat")
    # the documented recipe (docs/schemas.md): kcat lists keys and offsets, then prints one raw value for protoc
    kcat = ["kcat", "-b", kafka_bootstrap, "-C", "-t", topics.INFERENCE, "-e", "-q"]
    deadline = time.monotonic() + 60
    where = None
    while where is None and time.monotonic() < deadline:
        listing = subprocess.run([*kcat, "-f", "%p %o %k\\n"], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0, listing.stderr
        where = next((line.split()[:2] for line in listing.stdout.splitlines() if line.endswith(" kcat-2")), None)
    assert where is not None, "the event never reached the topic"
    partition, offset = where
    raw = subprocess.run([*kcat, "-p", partition, "-o", offset, "-c", "1", "-f", "%s"], capture_output=True, timeout=60)
    decoded = subprocess.run(
        ["protoc", "--decode=recwatch.v1.InferenceEvent", f"-I{REPO}", "schemas/v1/inference.proto"],
        input=raw.stdout,
        capture_output=True,
        timeout=60,
    )
    assert decoded.returncode == 0, decoded.stderr
    text = decoded.stdout.decode()
    assert f'model: "{model}"' in text and 'request_id: "kcat-2"' in text and "event_id:" in text
