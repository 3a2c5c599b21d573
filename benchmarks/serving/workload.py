"""The benchmark's requests, encoded once per protocol, and the decoders that check the answers.

A ranking request scores ``rows`` candidates for one user: ``user_id`` (int64 [rows], one id repeated, so
that servers which batch requests along dimension 0 can), ``item_id`` (int64 [rows]) and ``features``
(float32 [rows, 8]). ``rows=1`` is the single-row request. A pool of distinct requests (seeded) is cycled
so that no server sees one request over and over (the result-cache row still hits: the pool is small).
Every payload is serialized before the clock starts; the generator sends bytes.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

NUM_FEATURES = 8
POOL_SIZE = 16
OUTPUT = "scores"
_V2_TYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}
_V2_NUMPY = {"INT64": np.int64, "FP32": np.float32, "FP64": np.float64, "INT32": np.int32}

Inputs = dict[str, np.ndarray]


def make_pool(rows: int, *, size: int = POOL_SIZE, seed: int = 0) -> list[Inputs]:
    """``size`` distinct requests of ``rows`` rows each; the same seed gives the same requests."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    rng = np.random.default_rng([seed, rows])
    pool: list[Inputs] = []
    for _ in range(size):
        user = int(rng.integers(0, 10_000_000))
        pool.append(
            {
                "user_id": np.full(rows, user, dtype=np.int64),
                "item_id": rng.integers(0, 10_000_000, size=rows, dtype=np.int64),
                "features": rng.random((rows, NUM_FEATURES), dtype=np.float32),
            }
        )
    return pool


def tfs_predict_bytes(inputs: Inputs, model: str) -> bytes:
    """A serialized ``tensorflow.serving.PredictRequest`` (tensor_content, as ``tf.make_tensor_proto`` writes)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    dtypes = {np.dtype(np.int64): types_pb2.DT_INT64, np.dtype(np.float32): types_pb2.DT_FLOAT}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    for name, array in inputs.items():
        proto = request.inputs[name]
        proto.dtype = dtypes[array.dtype]
        for size in array.shape:
            proto.tensor_shape.dim.add(size=size)
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    return bytes(request.SerializeToString())


def tfs_scores(response: bytes) -> np.ndarray:
    from tensorflow_serving.apis import predict_pb2

    parsed = predict_pb2.PredictResponse.FromString(response)
    proto = parsed.outputs[OUTPUT]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np.float32)
    return np.asarray(proto.float_val, dtype=np.float32)


def v2_grpc_bytes(inputs: Inputs, model: str) -> bytes:
    """A serialized v2 ``ModelInferRequest`` with the tensors in ``raw_input_contents`` (the binary form
    both KServe and MLServer decode with ``np.frombuffer``; it is what tritonclient sends)."""
    from benchmarks.serving.v2_proto import messages

    request = messages()["ModelInferRequest"](model_name=model)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=_V2_TYPES[array.dtype], shape=list(array.shape))
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    request.outputs.add(name=OUTPUT)
    return bytes(request.SerializeToString())


def v2_grpc_scores(response: bytes) -> np.ndarray:
    from benchmarks.serving.v2_proto import messages

    parsed = messages()["ModelInferResponse"].FromString(response)
    for i, out in enumerate(parsed.outputs):
        if out.name != OUTPUT:
            continue
        if len(parsed.raw_output_contents) > i:
            return np.frombuffer(parsed.raw_output_contents[i], dtype=_V2_NUMPY[out.datatype]).astype(np.float32)
        return np.asarray(out.contents.fp32_contents or out.contents.fp64_contents, dtype=np.float32)
    raise ValueError(f"no output {OUTPUT!r} in the response")


def v2_rest_body(inputs: Inputs) -> bytes:
    """A v2 REST infer request body (JSON, tensors as flat lists)."""
    body: dict[str, Any] = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": _V2_TYPES[a.dtype], "data": a.ravel().tolist()}
            for n, a in inputs.items()
        ],
        "outputs": [{"name": OUTPUT}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def v2_rest_scores(response: bytes) -> np.ndarray:
    for out in json.loads(response)["outputs"]:
        if out["name"] == OUTPUT:
            return np.asarray(out["data"], dtype=np.float32).ravel()
    raise ValueError(f"no output {OUTPUT!r} in the response")
