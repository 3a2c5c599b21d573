"""KServe's ModelServer serving the benchmark's SavedModel; runs with the kserve venv's python (see peers.py).

KServe has no TensorFlow runtime of its own in the Python server, so this is the custom-model path its docs
describe: a ``kserve.Model`` whose ``load`` loads the SavedModel and whose ``predict`` calls the
``serving_default`` signature on the decoded v2 inputs (binary ``raw_input_contents`` over gRPC come back as
``raw_output_contents``). ModelServer binds ``0.0.0.0`` / ``[::]`` unconditionally, so the two bind calls are
wrapped to bind ``--bind_host`` (127.0.0.1) instead. Per-request latency log lines are off (the benchmark
passes ``--enable_latency_logging false``), Prometheus metrics stay on as shipped.

    python kserve_server.py --model_dir DIR/1 --model_name dcn --http_port 8080 --grpc_port 8081 \
        --enable_latency_logging false
"""

from __future__ import annotations

import argparse
from typing import Any


def _bind_only(host: str) -> None:
    import uvicorn
    from grpc.aio import _server

    config_init = uvicorn.Config.__init__

    def config_on_host(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = host
        config_init(self, *args, **kwargs)

    uvicorn.Config.__init__ = config_on_host
    add_port = _server.Server.add_insecure_port

    def port_on_host(self: Any, address: str) -> int:
        return int(add_port(self, f"{host}:{address.rsplit(':', 1)[1]}"))

    _server.Server.add_insecure_port = port_on_host


def main() -> None:
    from kserve import model_server

    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True, help="SavedModel directory (a version dir)")
    parser.add_argument("--bind_host", default="127.0.0.1")
    args, _ = parser.parse_known_args()
    _bind_only(args.bind_host)

    import kserve
    import numpy as np
    import tensorflow as tf
    from kserve import InferOutput, InferRequest, InferResponse

    class SavedModelRanker(kserve.Model):  # type: ignore[misc]  # kserve is not installed where mypy runs
        def __init__(self, name: str, model_dir: str) -> None:
            super().__init__(name)
            self.model_dir = model_dir
            self.signature: Any = None

        def load(self) -> bool:
            self.signature = tf.saved_model.load(self.model_dir).signatures["serving_default"]
            self.ready = True
            return True

        def predict(self, payload: InferRequest, headers: Any = None, response_headers: Any = None) -> InferResponse:
            inputs = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
            scores = np.asarray(self.signature(**inputs)["scores"].numpy())
            output = InferOutput(name="scores", shape=list(scores.shape), datatype="FP32")
            output.set_data_from_numpy(scores, binary_data=payload.use_binary_outputs)
            return InferResponse(
                response_id=payload.id or "",
                model_name=self.name,
                infer_outputs=[output],
                use_binary_outputs=payload.use_binary_outputs,
            )

    model = SavedModelRanker(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, enable_latency_logging=args.enable_latency_logging
    ).start([model])


if __name__ == "__main__":
    main()
