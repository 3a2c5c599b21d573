"""REST vs gRPC on the tiny ranker, the JSON codec, and the cost of ServingMetrics.observe().

Run from the repository root::

    python -m benchmarks.serving.rest_microbench                 # ~3 minutes
    python -m benchmarks.serving.rest_microbench --seconds 3 --rounds 7 --clients 1 4

The servers run in this process (one gRPC ModelServer, REST servers over the same ModelManager, events to a
NullPublisher); each client runs in its own process (so clients do not take the servers' GIL), sends 32-row
requests in a closed loop over one keep-alive connection / channel and counts answers. Configurations are
interleaved round by round and the median round is reported, so a burst of other load on a shared machine hits
all of them alike. On a 2-core machine clients and servers share the cores: compare the rows with each other,
not with other machines.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import numpy as np

ROWS = 32


def _inputs(rows: int = ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_id": np.full(rows, rng.integers(0, 10**9), dtype=np.int64),
        "item_id": rng.integers(0, 10**12, size=rows, dtype=np.int64),
        "features": rng.normal(size=(rows, 8)).astype(np.float32),
    }


def _row_body(inputs: dict[str, np.ndarray]) -> bytes:
    rows = len(inputs["item_id"])
    instances = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(rows)]
    return json.dumps({"instances": instances}).encode()


def _columnar_body(inputs: dict[str, np.ndarray]) -> bytes:
    return json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()


# ---------------------------------------------------------------------------------------------- clients


def _client(commands: Any, results: Any) -> None:
    """A client process: runs ``(kind, port, body, seconds)`` commands until it gets None."""
    from tensorflow_serving.apis import predict_pb2

    from serving.tensors import to_tensor_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ranker"
    for name, array in _inputs().items():
        to_tensor_proto(array, request.inputs[name])
    while (command := commands.get()) is not None:
        kind, port, body, seconds = command
        results.put(_grpc_loop(port, request, seconds) if kind == "grpc" else _rest_loop(port, body, seconds))


def _grpc_loop(port: int, request: Any, seconds: float) -> list[float]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return _closed_loop(lambda: stub.Predict(request, timeout=30), seconds)


def _rest_loop(port: int, body: bytes, seconds: float) -> list[float]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}

    def once() -> None:
        connection.request("POST", "/v1/models/ranker:predict", body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status} {data[:200]!r}")
        json.loads(data)

    try:
        return _closed_loop(once, seconds)
    finally:
        connection.close()


def _closed_loop(once: Any, seconds: float) -> list[float]:
    warmup_end = time.perf_counter() + 0.3
    while time.perf_counter() < warmup_end:
        once()
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        once()
        latencies.append(time.perf_counter() - start)
    return latencies


class _Clients:
    """Client processes started once (imports are slow), driven round after round."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self._commands = [ctx.Queue() for _ in range(count)]
        self._results = ctx.Queue()
        self._processes = [ctx.Process(target=_client, args=(q, self._results), daemon=True) for q in self._commands]
        for p in self._processes:
            p.start()

    def run(self, clients: int, command: tuple[Any, ...]) -> list[list[float]]:
        for q in self._commands[:clients]:
            q.put(command)
        return [self._results.get(timeout=600) for _ in range(clients)]

    def close(self) -> None:
        for q in self._commands:
            q.put(None)
        for p in self._processes:
            p.join(30)


# ---------------------------------------------------------------------------------------------- in-process


def _us(fn: Any, number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))
    return best / number * 1e6


def _codec_and_observe(manager: Any) -> list[tuple[str, float]]:
    from serving.metrics import ServingMetrics
    from serving.predict import PredictCall, Predictor
    from serving.publisher import NullPublisher
    from serving.rest_decode import decode_predict_inputs, parse_predict_body
    from serving.rest_encode import encode_predict_response

    inputs = _inputs()
    signature = manager.resolve("ranker").model.signature()
    row, columnar = _row_body(inputs), _columnar_body(inputs)
    scores = signature(inputs)
    results = [
        ("json.loads of the 32-row body (row format)", _us(lambda: json.loads(row), 2000)),
    ]
    try:
        import orjson

        results.append(("orjson.loads of the same body", _us(lambda: orjson.loads(row), 2000)))
    except ImportError:
        pass
    results += [
        (
            "decode 32 rows, row format (parse + validate + arrays)",
            _us(lambda: decode_predict_inputs(parse_predict_body(row), signature.inputs), 2000),
        ),
        (
            "decode 32 rows, columnar format",
            _us(lambda: decode_predict_inputs(parse_predict_body(columnar), signature.inputs), 2000),
        ),
        ("encode 32 float32 scores", _us(lambda: encode_predict_response(scores, "row"), 5000)),
    ]
    # a real event from a real prediction, observed again and again (its series cached after the first)
    metrics = ServingMetrics()
    predictor = Predictor(manager, NullPublisher(), replica="bench")
    call = PredictCall("ranker", None, "", "", (), "r1", "predict", lambda s: inputs, lambda: [], lambda: ROWS)
    event = predictor.run(call).event
    metrics.observe(event)
    results.append(("ServingMetrics.observe(event), series cached", _us(lambda: metrics.observe(event), 100_000)))
    fresh = [ServingMetrics(process=False) for _ in range(500)]
    start = time.perf_counter()
    for m in fresh:
        m.observe(event)
    results.append(("ServingMetrics.observe(event), first of its series", (time.perf_counter() - start) / 500 * 1e6))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving.rest_microbench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; configurations are interleaved in each")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="concurrent client processes")
    parser.add_argument("--skip-load", action="store_true", help="only the in-process costs")
    args = parser.parse_args(argv)

    from serving.metrics import ServingMetrics
    from serving.predict import Predictor
    from serving.publisher import NullPublisher
    from serving.rest import RestServer
    from serving.server import ModelServer, ServeOptions
    from training.tiny_model import export_tiny_ranker

    with tempfile.TemporaryDirectory() as tmp:
        export_tiny_ranker(Path(tmp), model_name="ranker", version=1, seed=0)
        grpc_server = ModelServer(ServeOptions("ranker", Path(tmp) / "ranker", port=0, poll_wait_s=0), NullPublisher())
        grpc_server.start()
        manager = grpc_server.manager
        metrics = ServingMetrics()
        plain = RestServer(Predictor(manager, NullPublisher(), replica="bench"), port=0)
        observed = RestServer(
            Predictor(manager, NullPublisher(), replica="bench", observers=[metrics]), port=0, metrics=metrics
        )
        plain.start()
        observed.start()
        try:
            print(f"## In-process costs (best of 5), {ROWS}-row request of the tiny ranker\n")
            print("| operation | µs |\n|---|---:|")
            for name, us in _codec_and_observe(manager):
                print(f"| {name} | {us:.1f} |")
            if args.skip_load:
                return 0
            row, columnar = _row_body(_inputs()), _columnar_body(_inputs())
            configs = [
                ("gRPC Predict", ("grpc", grpc_server.port, b"")),
                ("REST :predict, row format", ("rest", plain.port, row)),
                ("REST :predict, columnar format", ("rest", plain.port, columnar)),
                ("REST :predict, row format, ServingMetrics on", ("rest", observed.port, row)),
            ]
            print(
                f"\n## Closed-loop load, {ROWS} rows per request: {args.rounds} rounds of {args.seconds:g} s per cell, "
                "cells interleaved; req/s is the median over rounds\n"
            )
            print("| front end | clients | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
            clients = _Clients(max(args.clients))
            try:
                for count in args.clients:
                    rates: dict[str, list[float]] = {name: [] for name, _ in configs}
                    latencies: dict[str, list[float]] = {name: [] for name, _ in configs}
                    for round_ in range(args.rounds):
                        shift = round_ % len(configs)  # rotate the order: no cell always follows the same one
                        for name, (kind, port, body) in configs[shift:] + configs[:shift]:
                            per_client = clients.run(count, (kind, port, body, args.seconds))
                            rates[name].append(sum(len(x) for x in per_client) / args.seconds)
                            latencies[name].extend(x for run in per_client for x in run)
                    for name, _ in configs:
                        ordered = sorted(latencies[name])
                        p50 = statistics.median(ordered) * 1e3
                        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
                        rate = statistics.median(rates[name])
                        print(f"| {name} | {count} | {rate:.0f} | {p50:.2f} | {p99:.2f} |", flush=True)
            finally:
                clients.close()
        finally:
            plain.stop()
            observed.stop()
            grpc_server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
