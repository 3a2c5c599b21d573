"""One closed-loop load generator, used against every target of the serving benchmark.

``concurrency`` workers each keep exactly one request in flight: send, wait for the answer, send the next
(closed loop: the offered load adapts to the server, nothing queues in the generator). Workers run for
``warmup_s + duration_s``; a request counts, and its latency is recorded, when it *completes* inside the
measured window. Requests are pre-serialized (see :mod:`benchmarks.serving.workload`), so per request the
generator only moves bytes:

* ``tfs-grpc``: TF Serving ``PredictionService/Predict`` (recwatch), one gRPC channel (HTTP/2, multiplexed);
* ``v2-grpc``: Open Inference Protocol ``GRPCInferenceService/ModelInfer`` (KServe, MLServer), same;
* ``v2-rest``: ``POST /v2/models/<m>/infer`` over one keep-alive HTTP/1.1 connection per worker;
* ``raw``: the SavedModel's ``serving_default`` signature called in this process (numpy -> ``tf.constant`` ->
  call -> ``.numpy()``), one thread per worker.

Run as a worker process (``python -m benchmarks.serving.loadgen --model-dir DIR``, pinned with ``taskset`` to
a core of its own by ``run.py``): it reads one JSON command per line on stdin and answers one JSON line on
stdout, prefixed with ``@@ `` (TensorFlow may print to stdout too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import workload

PROTOCOLS = ("raw", "tfs-grpc", "v2-grpc", "v2-rest")
REPLY_PREFIX = "@@ "
_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Endpoint:
    """Where and how the generator sends: ``protocol`` is one of PROTOCOLS; ``address`` is host:port."""

    protocol: str
    address: str = ""
    model: str = ""


@dataclass
class Measurement:
    """One closed-loop run. ``latencies_us`` has one entry per request completed inside the window."""

    completed: int
    errors: int
    window_s: float
    latencies_us: list[int] = field(default_factory=list)
    total_completed: int = 0  # including warm-up, to divide CPU time by
    generator_cpu_s: float = 0.0
    error_sample: str = ""


class _Window:
    """Shared bookkeeping of the workers: counts only completions inside [start, end]."""

    def __init__(self, warmup_s: float, duration_s: float) -> None:
        self.t0 = time.perf_counter_ns()
        self.start = self.t0 + int(warmup_s * 1e9)
        self.end = self.start + int(duration_s * 1e9)
        self.latencies: list[int] = []
        self.errors = 0
        self.total = 0
        self.error_sample = ""
        self.lock = threading.Lock()

    def record(self, began: int, ended: int, error: BaseException | None) -> None:
        self.total += 1
        if not self.start <= ended <= self.end:
            return
        if error is None:
            self.latencies.append((ended - began) // 1000)
        else:
            self.errors += 1
            self.error_sample = self.error_sample or f"{type(error).__name__}: {error}"[:300]

    def result(self, cpu_s: float) -> Measurement:
        return Measurement(
            completed=len(self.latencies),
            errors=self.errors,
            window_s=(self.end - self.start) / 1e9,
            latencies_us=self.latencies,
            total_completed=self.total,
            generator_cpu_s=cpu_s,
            error_sample=self.error_sample,
        )


async def closed_loop_async(
    send: Callable[[int, Any], Awaitable[None]],
    payloads: Sequence[Any],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> Measurement:
    """Run ``concurrency`` workers calling ``await send(worker, payload)`` until the window ends."""
    cpu0 = time.process_time()
    window = _Window(warmup_s, duration_s)

    async def worker(index: int) -> None:
        k = index
        while time.perf_counter_ns() < window.end:
            payload = payloads[k % len(payloads)]
            k += 1
            began = time.perf_counter_ns()
            try:
                await send(index, payload)
            except Exception as exc:  # an error is a result to count, not a crash
                window.record(began, time.perf_counter_ns(), exc)
                await asyncio.sleep(0.001)  # a refusing server must not turn the loop into a busy spin
            else:
                window.record(began, time.perf_counter_ns(), None)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return window.result(time.process_time() - cpu0)


def closed_loop_threads(
    send: Callable[[Any], Any], payloads: Sequence[Any], concurrency: int, warmup_s: float, duration_s: float
) -> Measurement:
    """The same loop with one thread per worker, for blocking in-process calls."""
    cpu0 = time.process_time()
    window = _Window(warmup_s, duration_s)

    def worker(index: int) -> None:
        k = index
        while time.perf_counter_ns() < window.end:
            payload = payloads[k % len(payloads)]
            k += 1
            began = time.perf_counter_ns()
            error: BaseException | None = None
            try:
                send(payload)
            except Exception as exc:
                error = exc
            with window.lock:
                window.record(began, time.perf_counter_ns(), error)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return window.result(time.process_time() - cpu0)


class _HttpConnection:
    """A minimal keep-alive HTTP/1.1 client: one request at a time, Content-Length or chunked answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            self._writer.write(head.encode() + body)
            status_line = await self._reader.readline()
            headers: dict[str, str] = {}
            while True:
                line = await self._reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            if "content-length" in headers:
                data = await self._reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                data = await self._read_chunked()
            else:
                raise ConnectionError(f"answer without length: {status_line!r}")
            if headers.get("connection", "").lower() == "close":
                self.close()
            return int(status_line.split()[1]), data
        except BaseException:
            self.close()
            raise

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readline()).split(b";")[0], 16)
            parts.append(await self._reader.readexactly(size + 2))
            if size == 0:
                return b"".join(p[:-2] for p in parts)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class Generator:
    """Holds the event loop, gRPC channels and the in-process model across runs."""

    def __init__(self, model_dir: Path | None) -> None:
        self._model_dir = model_dir
        self._signature: Any = None
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)  # grpc.aio channels bind to the current loop
        self._channels: dict[str, Any] = {}
        self._pools: dict[int, list[workload.Inputs]] = {}

    # -- payloads -------------------------------------------------------------------------------------------
    def pool(self, rows: int) -> list[workload.Inputs]:
        if rows not in self._pools:
            self._pools[rows] = workload.make_pool(rows)
        return self._pools[rows]

    def payloads(self, endpoint: Endpoint, rows: int) -> list[Any]:
        pool = self.pool(rows)
        if endpoint.protocol == "raw":
            return pool
        if endpoint.protocol == "tfs-grpc":
            return [workload.tfs_predict_bytes(p, endpoint.model) for p in pool]
        if endpoint.protocol == "v2-grpc":
            return [workload.v2_grpc_bytes(p, endpoint.model) for p in pool]
        if endpoint.protocol == "v2-rest":
            return [workload.v2_rest_body(p) for p in pool]
        raise ValueError(f"unknown protocol {endpoint.protocol!r}")

    # -- transports -----------------------------------------------------------------------------------------
    def signature(self) -> Any:
        if self._signature is None:
            if self._model_dir is None:
                raise ValueError("the raw target needs --model-dir")
            import tensorflow as tf

            self._signature = tf.saved_model.load(str(self._model_dir)).signatures["serving_default"]
        return self._signature

    def raw_call(self, inputs: workload.Inputs) -> np.ndarray:
        import tensorflow as tf

        # tf.constant first: ~90 µs cheaper per call than letting the function convert numpy (as recwatch does).
        tensors = {name: tf.constant(array) for name, array in inputs.items()}
        return np.asarray(self.signature()(**tensors)[workload.OUTPUT].numpy())

    def _unary(self, endpoint: Endpoint) -> Any:
        import grpc

        from benchmarks.serving.v2_proto import MODEL_INFER

        method = MODEL_INFER if endpoint.protocol == "v2-grpc" else "/tensorflow.serving.PredictionService/Predict"
        if endpoint.address not in self._channels:
            self._channels[endpoint.address] = grpc.aio.insecure_channel(endpoint.address)
        return self._channels[endpoint.address].unary_unary(method)  # no serializers: bytes in, bytes out

    def _sender(self, endpoint: Endpoint, concurrency: int) -> Callable[[int, Any], Awaitable[Any]]:
        if endpoint.protocol in ("tfs-grpc", "v2-grpc"):
            call = self._unary(endpoint)

            async def send_grpc(worker: int, payload: bytes) -> Any:
                return await call(payload, timeout=_TIMEOUT_S)

            return send_grpc
        host, port = endpoint.address.rsplit(":", 1)
        path = f"/v2/models/{endpoint.model}/infer"
        connections = [_HttpConnection(host, int(port)) for _ in range(concurrency)]

        async def send_rest(worker: int, payload: bytes) -> bytes:
            status, body = await asyncio.wait_for(connections[worker].request("POST", path, payload), _TIMEOUT_S)
            if status != 200:
                raise ConnectionError(f"HTTP {status}: {body[:200]!r}")
            return body

        return send_rest

    # -- commands -------------------------------------------------------------------------------------------
    def run(self, endpoint: Endpoint, rows: int, concurrency: int, warmup_s: float, duration_s: float) -> Measurement:
        payloads = self.payloads(endpoint, rows)
        if endpoint.protocol == "raw":
            return closed_loop_threads(self.raw_call, payloads, concurrency, warmup_s, duration_s)
        send = self._sender(endpoint, concurrency)
        return self._loop.run_until_complete(closed_loop_async(send, payloads, concurrency, warmup_s, duration_s))

    def check(self, endpoint: Endpoint, rows: int) -> float:
        """Send the first request of the pool once; return the largest |score - in-process score|."""
        inputs = self.pool(rows)[0]
        expected = self.raw_call(inputs)
        if endpoint.protocol == "raw":
            return 0.0
        payload = self.payloads(endpoint, rows)[0]
        answer = self._loop.run_until_complete(self._sender(endpoint, 1)(0, payload))
        decode = {
            "tfs-grpc": workload.tfs_scores,
            "v2-grpc": workload.v2_grpc_scores,
            "v2-rest": workload.v2_rest_scores,
        }[endpoint.protocol]
        got = decode(answer)
        if got.shape != expected.shape:
            raise ValueError(f"scores shape {got.shape}, expected {expected.shape}")
        return float(np.max(np.abs(got - expected)))

    def close(self) -> None:
        async def close_all() -> None:
            for channel in self._channels.values():
                await channel.close()

        self._loop.run_until_complete(close_all())
        self._loop.close()


def serve_commands(generator: Generator, lines: Any, out: Any) -> None:
    """Answer JSON commands, one per line: ``{"op": "run"|"check"|"quit", ...}``."""
    for line in lines:
        if not line.strip():
            continue
        command = json.loads(line)
        if command["op"] == "quit":
            break
        endpoint = Endpoint(**command["endpoint"])
        try:
            if command["op"] == "run":
                m = generator.run(
                    endpoint, command["rows"], command["concurrency"], command["warmup_s"], command["duration_s"]
                )
                reply: dict[str, Any] = {"ok": True, "measurement": asdict(m)}
            elif command["op"] == "check":
                reply = {"ok": True, "max_abs_diff": generator.check(endpoint, command["rows"])}
            else:
                reply = {"ok": False, "error": f"unknown op {command['op']!r}"}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        out.write(REPLY_PREFIX + json.dumps(reply) + "\n")
        out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving.loadgen", description=__doc__)
    parser.add_argument("--model-dir", type=Path, help="SavedModel version directory, for raw calls and checks")
    args = parser.parse_args(argv)
    generator = Generator(args.model_dir)
    try:
        serve_commands(generator, sys.stdin, sys.stdout)
    finally:
        generator.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
