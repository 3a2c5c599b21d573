"""The floor of any grpcio server: ``python -m benchmarks.serving.echo_floor [--nice -10]``.

Starts a grpcio sync server of ``tensorflow.serving.PredictionService/Predict`` that does nothing: it answers a
canned 32-score ``PredictResponse`` without decoding the request or calling a model (pinned to core 0, as the
benchmark's servers), and drives it with the benchmark's own load generator (core 1) at 32 rows and 1 and 8
requests in flight. What it answers is the most any server on grpcio's Python stack can answer with this
generator. With ``--model-dir DIR`` (a SavedModel version directory) the handler also calls the model on one
pre-decoded 32-row request (``serving.model_repository``'s flat call) before answering: the cost of the model
call inside a gRPC handler, without recwatch's decoding and accounting. ``docs/benchmarks.md`` uses both to
show where a round trip goes at one request in flight.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.serving import processes
from benchmarks.serving.loadgen import REPLY_PREFIX


def serve(port: int, model_dir: Path | None = None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    scores = response.outputs["scores"]
    scores.dtype = types_pb2.DT_FLOAT
    scores.tensor_shape.dim.add(size=32)
    scores.float_val.extend([0.5] * 32)
    body: bytes = response.SerializeToString()
    compute = _model_call(model_dir) if model_dir is not None else None

    def predict(request: bytes, context: object) -> bytes:
        if compute is not None:
            compute()
        return body

    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(predict)}
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=16))  # as recwatch's server
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _model_call(model_dir: Path) -> Callable[[], object]:
    from benchmarks.serving.workload import make_pool
    from serving.model_repository import load_version

    signature = load_version(model_dir, model_name="echo").signature()
    inputs = make_pool(32)[0]
    for _ in range(100):  # warm up, as the servers are before they are measured
        signature(inputs)
    return lambda: signature(inputs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving.echo_floor", description=__doc__)
    parser.add_argument("--nice", type=int, default=0, help="niceness of server and generator (negative: root)")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell")
    parser.add_argument("--model-dir", type=Path, help="also call this SavedModel version in the handler")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process itself
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.model_dir)
        return 0
    port = processes.free_port()
    log = Path(tempfile.mkdtemp(prefix="recwatch-echo-")) / "echo.log"
    server = processes.start(
        "echo",
        [sys.executable, "-m", "benchmarks.serving.echo_floor", "--serve", str(port)]
        + (["--model-dir", str(args.model_dir.absolute())] if args.model_dir else []),
        log=log,
        nice=args.nice,
    )
    try:
        processes.wait_ready(server, lambda: _listening(port), deadline_s=120)
        commands = "".join(
            json.dumps(
                {
                    "op": "run",
                    "endpoint": {"protocol": "tfs-grpc", "address": f"127.0.0.1:{port}", "model": "echo"},
                    "rows": 32,
                    "concurrency": c,
                    "warmup_s": 1.0,
                    "duration_s": args.duration,
                }
            )
            + "\n"
            for c in (1, 8)
        )
        gen = subprocess.run(
            processes.pinned([sys.executable, "-m", "benchmarks.serving.loadgen"], "1", args.nice),
            input=commands + '{"op": "quit"}\n',
            capture_output=True,
            text=True,
            check=True,
        )
        what = "the model called on a fixed request" if args.model_dir else "nothing"
        print(f"in flight  req/s   p50 ms  p99 ms   (grpcio sync server doing {what}, 32-score answer)")
        replies = [
            json.loads(line[len(REPLY_PREFIX) :]) for line in gen.stdout.splitlines() if line.startswith(REPLY_PREFIX)
        ]
        for c, reply in zip((1, 8), replies, strict=True):
            m = reply["measurement"]
            lat = sorted(m["latencies_us"])
            p50, p99 = lat[len(lat) // 2] / 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000
            print(f"{c:9d}  {m['completed'] / m['window_s']:6,.0f}  {p50:7.2f} {p99:7.2f}")
    finally:
        server.stop()
    return 0


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    raise SystemExit(main())
