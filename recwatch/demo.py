"""The main job, end to end on the embedded defaults (``make demo``).

infra up -> a tiny ranking SavedModel -> ``recwatch serve`` and ``recwatch worker`` as real processes ->
N Predict calls through the official tensorflow-serving-api client -> wait until the store holds every event
-> print the 10 s aggregates with SQL -> stop everything that was started.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from infra import processes, stack
from recwatch.settings import Settings
from store import open_store

MODEL = "ranker"
SEQ_MODEL = "seq"
GRPC_PORT = 8500


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(settings: Settings, *, requests: int = 200, keep: bool = False) -> int:
    _step("infra up")
    stack.up(settings)
    run_dir = settings.home / "demo"
    model_base = settings.home / "model_repository"
    started: list[Path] = []
    try:
        _step("models: a DCN-v2 CTR ranker and a SASRec sequence recommender (trained once, then reused)")
        for kind, name in (("ctr", MODEL), ("sasrec", SEQ_MODEL)):
            subprocess.run(
                [sys.executable, "-m", "training", "train", "--model", kind, "--data", "synthetic",
                 "--base-path", str(model_base), "--model-name", name, "--version", "1", "--reuse"],
                check=True,
            )  # fmt: skip
        config = run_dir / "models.config"
        run_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "model_config_list {\n"
            + "".join(
                f'  config {{ name: "{name}" base_path: "{model_base / name}" model_platform: "tensorflow" }}\n'
                for name in (MODEL, SEQ_MODEL)
            )
            + "}\n"
        )
        _step("recwatch serve and recwatch worker")
        cli = [sys.executable, "-m", "recwatch.cli"]
        serve_pid = run_dir / "serve.pid"
        worker_pid = run_dir / "worker.pid"
        processes.spawn(
            [*cli, "serve", "--model_config_file", str(config), "--port", str(GRPC_PORT), "--replica", "demo-0"],
            pid_file=serve_pid, log_file=run_dir / "serve.log",
        )  # fmt: skip
        started.append(serve_pid)
        processes.spawn([*cli, "worker"], pid_file=worker_pid, log_file=run_dir / "worker.log")
        started.append(worker_pid)
        print(f"logs: {run_dir}/serve.log, {run_dir}/worker.log")

        _step(
            f"traffic: {requests} Predict calls to {MODEL} (1 user x 32 candidates) and {requests // 4} to {SEQ_MODEL} "
            "(a 20-item history x 32 candidates) through tensorflow-serving-api"
        )
        run_id = uuid.uuid4().hex[:8]
        sent = _send_traffic(requests, run_id, serve_pid, run_dir / "serve.log")
        print(f"sent {sent} requests with request ids demo-{run_id}-*")

        _step("waiting until the store holds every event")
        store = open_store(stack.store_url(settings))
        store.connect()
        try:
            count_sql = f"SELECT count(DISTINCT event_id) FROM inference_events WHERE request_id LIKE 'demo-{run_id}-%'"
            deadline = time.monotonic() + 120
            seen = 0
            while time.monotonic() < deadline:
                seen = int(store.query(count_sql).scalar())
                if seen >= sent:
                    break
                if processes.read(worker_pid) is None:
                    print(f"the worker exited; see {run_dir / 'worker.log'}")
                    return 1
                time.sleep(0.5)
            print(f"{seen} of {sent} events in inference_events")
            _step("what the store says, while the worker keeps running (recwatch sql)")
            _sql(
                "SELECT window_start, model, version, requests, errors, round(latency_mean_us) AS mean_us, "
                "latency_max_us FROM inference_metrics_10s "
                "WHERE window_start >= now() - INTERVAL 10 MINUTE ORDER BY window_start, model"
            )
            _sql(
                "SELECT model, version, replica, count() AS requests, "
                "round(quantile(0.5)(total_us)) AS p50_us, round(quantile(0.99)(total_us)) AS p99_us, "
                "round(avg(compute_us)) AS compute_us, round(avg(score_mean), 4) AS mean_score "
                f"FROM inference_events WHERE request_id LIKE 'demo-{run_id}-%' GROUP BY model, version, replica"
            )
        finally:
            store.close()
        return 0 if seen == sent else 1
    finally:
        _step("stopping")
        for pid_file in reversed(started):
            processes.stop(pid_file)
        if not keep:
            stack.down(settings)


def _sql(query: str) -> None:
    """Run ``recwatch sql`` as a user would, in its own process, and show its output."""
    print(f'$ recwatch sql "{query}"', flush=True)
    subprocess.run([sys.executable, "-m", "recwatch.cli", "sql", query], check=True)


def _send_traffic(n: int, run_id: str, serve_pid: Path, serve_log: Path) -> int:
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.tensors import to_tensor_proto

    channel = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}")
    try:
        grpc.channel_ready_future(channel).result(timeout=120)
    except grpc.FutureTimeoutError:
        raise SystemExit(f"the model server did not come up; see {serve_log}") from None
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rng = np.random.default_rng(7)
    sent = 0
    for i in range(n + n // 4):
        request = predict_pb2.PredictRequest()
        candidates = rng.integers(1, 5_000, size=32, dtype=np.int64)
        if i % 5 == 4:  # every fifth call: the sequence model ranks candidates after a user's history
            request.model_spec.name = SEQ_MODEL
            request.inputs["history"].CopyFrom(to_tensor_proto(rng.integers(1, 5_000, size=(1, 20), dtype=np.int64)))
            request.inputs["item_id"].CopyFrom(to_tensor_proto(candidates.reshape(1, 32)))
        else:
            request.model_spec.name = MODEL
            request.inputs["user_id"].CopyFrom(to_tensor_proto(np.full(32, rng.integers(1, 10_000), dtype=np.int64)))
            request.inputs["item_id"].CopyFrom(to_tensor_proto(candidates))
            request.inputs["category_id"].CopyFrom(to_tensor_proto(candidates % 97))
        stub.Predict(request, timeout=10, metadata=[("x-request-id", f"demo-{run_id}-{i}")])
        sent += 1
    channel.close()
    return sent
