"""Acceptance: Kafka stopped for 30 s in the middle of a 2-minute load: zero failed requests, and the store
ends up with exactly one event per request (count(DISTINCT event_id) = requests sent)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from infra import kafka
from recwatch.settings import Settings
from serving.tensors import to_tensor_proto
from tests.conftest import start_chdb_daemon
from tests.ports import free_ports

pytestmark = pytest.mark.integration

MODEL = "ranker"
LOAD_S = 120.0
OUTAGE_START_S = 45.0
OUTAGE_S = 30.0


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[tuple[Path, int, str]]:
    """A broker of this test's own, so stopping it disturbs no other test."""
    home = tmp_path / "kafka-home"
    port = free_ports(2)
    cluster = kafka.start(home, cache=Settings.from_env().cache, base_port=port)
    try:
        yield home, port, cluster.bootstrap
    finally:
        kafka.stop(home)


def _request(i: int) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.inputs["user_id"].CopyFrom(to_tensor_proto(np.full(8, i % 1000, dtype=np.int64)))
    req.inputs["item_id"].CopyFrom(to_tensor_proto(np.arange(i, i + 8, dtype=np.int64)))
    req.inputs["features"].CopyFrom(to_tensor_proto(np.zeros((8, 8), dtype=np.float32)))
    return req


def test_kafka_outage_loses_no_request_and_no_event(own_kafka: tuple[Path, int, str], tmp_path: Path) -> None:
    from training.tiny_model import export_tiny_ranker

    kafka_home, kafka_port, bootstrap = own_kafka
    export_tiny_ranker(tmp_path / "models", model_name=MODEL, version=1)
    store_path = tmp_path / "chdb"
    daemon = start_chdb_daemon(store_path)
    env = {
        **os.environ,
        "RECWATCH_HOME": str(tmp_path / "home"),
        "RECWATCH_KAFKA": bootstrap,
        "RECWATCH_STORE": f"chdb://{store_path}",
    }
    port = free_ports(1)
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("serve", "worker")}  # noqa: SIM115
    serve = subprocess.Popen(
        [sys.executable, "-m", "recwatch.cli", "serve", "--rest_api_port", "0", "--model_name", MODEL,
         "--model_base_path", str(tmp_path / "models" / MODEL), "--port", str(port)],
        env=env, stdout=logs["serve"], stderr=logs["serve"],
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "recwatch.cli", "worker", "--group", "outage"],
        env=env, stdout=logs["worker"], stderr=logs["worker"],
    )  # fmt: skip
    sent = 0
    failures: list[str] = []
    lock = threading.Lock()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        started = time.monotonic()
        stop = threading.Event()

        def load(worker_index: int) -> None:
            nonlocal sent
            i = worker_index
            while not stop.is_set():
                try:
                    stub.Predict(_request(i), timeout=10, metadata=[("x-request-id", f"outage-{i}")])
                    with lock:
                        sent += 1
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{exc.code()}: {exc.details()}")
                i += 4

        clients = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for c in clients:
            c.start()
        try:
            _sleep_until(started + OUTAGE_START_S)
            kafka.stop(kafka_home)  # Kafka goes away in the middle of the load...
            _sleep_until(started + OUTAGE_START_S + OUTAGE_S)
            kafka.start(kafka_home, cache=Settings.from_env().cache, base_port=kafka_port)  # ...and comes back
            _sleep_until(started + LOAD_S)
        finally:
            stop.set()
            for c in clients:
                c.join()
        channel.close()
        assert failures == []
        assert sent > 0

        from store import open_store

        store = open_store(f"chdb://{store_path}")
        store.connect()
        deadline = time.monotonic() + 180
        distinct = 0
        while time.monotonic() < deadline:
            distinct = int(
                store.query(f"SELECT count(DISTINCT event_id) FROM inference_events WHERE model = '{MODEL}'").scalar()
            )
            if distinct >= sent:
                break
            time.sleep(1)
        requests = store.query(
            f"SELECT count(DISTINCT request_id) FROM inference_events WHERE model = '{MODEL}'"
        ).scalar()
        store.close()
        print(f"\nkafka outage {OUTAGE_S:.0f} s in a {LOAD_S:.0f} s load: {sent} requests, {len(failures)} failed, "
              f"{distinct} distinct events stored")  # fmt: skip
        assert (distinct, int(requests)) == (sent, sent), (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        for proc in (serve, worker):
            proc.terminate()
            proc.wait(timeout=60)
        daemon.terminate()
        daemon.wait(timeout=30)


def _sleep_until(t: float) -> None:
    """The load runs in real time (a 2-minute load is the point of this test); this paces its phases."""
    time.sleep(max(0.0, t - time.monotonic()))
