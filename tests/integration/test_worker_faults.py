"""Nothing lost, nothing counted twice, through the faults a user meets: under a steady Predict load through
``recwatch serve``, the worker is killed (SIGKILL) and restarted, then the Kafka broker is killed and brought
back with ``recwatch infra up``, then the store (the chDB daemon; the ClickHouse server process) is killed and
brought back the same way. The worker never exits on its own, and at the end

    count(DISTINCT event_id) = count() FINAL = sum(requests) of the 10 s windows = requests answered.

The stack is private (its own home, broker, store and ports: this test kills them). The time the worker needed to
resume after each fault is printed, with the counts; the worker's ``/metrics`` shows the lag rising while the
store is down and falling after.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.tensors import to_tensor_proto
from store import StoreError, open_store
from tests.ports import free_ports

pytestmark = pytest.mark.integration

RATE = 40  # requests/s, 8 rows each
ROWS = 8


def _recwatch(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "recwatch.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"recwatch {' '.join(args)}: {done.stdout[-2000:]} {done.stderr[-3000:]}"
    return done.stdout


class Load:
    """Predict calls at a steady rate until stopped; counts what was answered."""

    def __init__(self, port: int, model: str) -> None:
        self.port, self.model = port, model
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        rng = np.random.default_rng(3)
        start = time.monotonic()
        i = 0
        while not self._stop.is_set():
            req = predict_pb2.PredictRequest()
            req.model_spec.name = self.model
            req.inputs["user_id"].CopyFrom(to_tensor_proto(np.full(ROWS, 7, dtype=np.int64)))
            req.inputs["item_id"].CopyFrom(to_tensor_proto(rng.integers(1, 1000, size=ROWS, dtype=np.int64)))
            req.inputs["features"].CopyFrom(to_tensor_proto(rng.random((ROWS, 8), dtype=np.float32)))
            try:
                stub.Predict(req, timeout=30, metadata=[("x-request-id", f"{self.model}-{i}")])
                self.ok += 1
            except grpc.RpcError as exc:
                self.failed.append(str(exc.code()))
            i += 1
            ahead = i / RATE - (time.monotonic() - start)
            if ahead > 0:
                self._stop.wait(ahead)
        channel.close()


class Watch:
    """The store as a user's own client sees it (reconnecting by itself), and the worker's /metrics."""

    def __init__(self, env: dict[str, str], home: Path, model: str, group: str) -> None:
        self.env, self.home, self.model, self.group = env, home, model, group
        self._store: Any = None

    def count(self) -> int | None:
        """Stored events of this test's model, or None while the store does not answer."""
        try:
            if self._store is None:
                status = json.loads(_recwatch(self.env, "infra", "status"))
                self._store = open_store(status["store"]["url"])
                self._store.connect()
            return int(self._store.query(f"SELECT count() FROM inference_events WHERE model = '{self.model}'").scalar())
        except StoreError:
            return None

    def wait_count_above(self, n: int, timeout_s: float) -> float:
        """Seconds until more than ``n`` events are stored."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            c = self.count()
            if c is not None and c > n:
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"no progress past {n} events within {timeout_s} s; {self.logs()}")

    def lag(self, pid: int) -> float:
        address = (self.home / "worker" / self.group / f"metrics-{pid}.address").read_text().strip()
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        found = re.findall(
            r'^recwatch_worker_consumer_lag\{partition="\d+",topic="recwatch.inference.v1"\} (\S+)$', text, flags=re.M
        )
        assert found, text[:2000]
        return sum(float(v) for v in found)

    def logs(self) -> str:
        return " ".join(f"\n--- {p.name}: {p.read_text()[-3000:]}" for p in self.home.glob("*.log"))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _start(env: dict[str, str], home: Path, log: str, *args: str) -> subprocess.Popen[bytes]:
    out = open(home / log, "ab")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen([sys.executable, "-m", "recwatch.cli", *args], env=env, stdout=out, stderr=out)


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.split(")")[-1].split()[0] == "Z":
            break
        time.sleep(0.05)


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.clickhouse_server)])
def private_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "RECWATCH_HOME": str(home),
        "RECWATCH_KAFKA_PORT": str(free_ports(2)),
        "RECWATCH_CLICKHOUSE_PORT": str(free_ports(2)),
        "RECWATCH_ALERTMANAGER_PORT": str(free_ports(2)),
        "RECWATCH_TOPIC_PARTITIONS": "3",
        "RECWATCH_WORKER_METRICS_PORT": "0",
    }
    for name in ("RECWATCH_KAFKA", "RECWATCH_STORE"):
        env.pop(name, None)
    up = ["infra", "up", *(["--clickhouse", "server"] if request.param == "server" else [])]
    _recwatch(env, *up)
    try:
        yield env, request.param
    finally:
        subprocess.run([sys.executable, "-m", "recwatch.cli", "infra", "down"], env=env, timeout=300)


def test_kills_of_worker_broker_and_store_under_load_lose_and_double_count_nothing(
    private_stack: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    from training.tiny_model import export_tiny_ranker

    env, kind = private_stack
    home = Path(env["RECWATCH_HOME"])
    up = ["infra", "up", *(["--clickhouse", "server"] if kind == "server" else [])]
    model = f"faults_{uuid.uuid4().hex[:8]}"
    export_tiny_ranker(tmp_path / "models", model_name=model, version=1)
    port = free_ports(1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    procs = [
        _start(
            env,
            home,
            "serve.log",
            "serve",
            "--model_name",
            model,
            "--model_base_path",
            str(tmp_path / "models" / model),
            "--port",
            str(port),
            "--rest_api_port",
            "0",
        ),
    ]
    worker = _start(env, home, "worker.log", "worker", "--group", group)
    procs.append(worker)
    watch = Watch(env, home, model, group)
    load = Load(port, model)
    resumed: dict[str, float] = {}
    try:
        load.start()
        watch.wait_count_above(300, 180)

        # 1. the worker, killed and restarted by its supervisor (here: the test)
        _kill(worker.pid)
        at = watch.count() or 0
        worker = _start(env, home, "worker.log", "worker", "--group", group)
        procs.append(worker)
        resumed["worker SIGKILL"] = watch.wait_count_above(at, 120)

        # 2. the broker, killed and brought back with `recwatch infra up`
        status = json.loads(_recwatch(env, "infra", "status"))
        _kill(int(status["kafka"]["brokers"][0]["pid"]))
        time.sleep(3)
        _recwatch(env, *up)
        at = watch.count() or 0
        resumed["broker SIGKILL"] = watch.wait_count_above(at, 120)
        assert worker.poll() is None, watch.logs()

        # 3. the store, killed and brought back with `recwatch infra up`; the lag rises meanwhile and falls after
        status = json.loads(_recwatch(env, "infra", "status"))
        store_pid = (
            status["store"]["chdb_daemon_pid"] if kind == "embedded" else status["store"]["clickhouse_server"]["pid"]
        )
        deadline = time.monotonic() + 60
        while (lag_before := watch.lag(worker.pid)) > 2 * RATE and time.monotonic() < deadline:
            time.sleep(0.5)  # caught up with the spool the servers replayed after the broker outage
        _kill(int(store_pid))
        time.sleep(2)
        lag_down = [watch.lag(worker.pid)]
        time.sleep(3)
        lag_down.append(watch.lag(worker.pid))
        assert lag_down[1] > lag_down[0] > lag_before, (lag_before, lag_down)
        _recwatch(env, *up)
        at = watch.count() or 0
        resumed["store SIGKILL"] = watch.wait_count_above(at, 120)
        assert worker.poll() is None, watch.logs()
        deadline = time.monotonic() + 60
        while watch.lag(worker.pid) >= lag_down[1] and time.monotonic() < deadline:
            time.sleep(0.5)
        lag_after = watch.lag(worker.pid)
        assert lag_after < lag_down[1], (lag_before, lag_down, lag_after)

        load.stop()
        sent = load.ok
        assert not load.failed, load.failed[:5]
        watch.wait_count_above(sent - 1, 240)
        store = watch._store
        m = f"model = '{model}'"
        deadline = time.monotonic() + 120
        while True:  # the windows of the last events are written once their batch completes
            windows = int(store.query(f"SELECT sum(requests) FROM inference_metrics_10s WHERE {m}").scalar() or 0)
            if windows >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        late = int(store.query(f"SELECT sum(late_events) FROM inference_metrics_10s WHERE {m}").scalar() or 0)
        distinct = int(store.query(f"SELECT count(DISTINCT event_id) FROM inference_events WHERE {m}").scalar())
        rows = int(store.query(f"SELECT count() FROM inference_events FINAL WHERE {m}").scalar())
        raw = int(store.query(f"SELECT count() FROM inference_events WHERE {m}").scalar())
        print(
            f"\n[{kind}] requests answered {sent}, failed {len(load.failed)}; stored: distinct event_id {distinct}, "
            f"count() FINAL {rows} (without FINAL {raw}), sum(requests) of the 10 s windows {windows} (late {late}); "
            f"lag on /metrics: {lag_before:.0f} before the store kill, {lag_down[0]:.0f} -> {lag_down[1]:.0f} while "
            f"down, {lag_after:.0f} after; resumed after: " + ", ".join(f"{k} {v:.1f} s" for k, v in resumed.items())
        )
        assert distinct == rows == windows == sent, watch.logs()
        assert worker.poll() is None, watch.logs()
    finally:
        load.stop()
        watch.close()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
