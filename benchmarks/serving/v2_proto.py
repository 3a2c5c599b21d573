"""The Open Inference Protocol (KServe v2) gRPC messages the load generator needs, built at run time.

Only ``ModelInferRequest`` / ``ModelInferResponse`` and their tensor messages, with the field numbers of
``grpc_predict_v2.proto`` (the ``parameters`` maps are left out: unknown fields survive parsing). Building the
descriptors here keeps kserve and mlserver out of the generator's environment; both servers answer
``/inference.GRPCInferenceService/ModelInfer``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVER_READY = "/inference.GRPCInferenceService/ServerReady"


@lru_cache(maxsize=1)
def messages() -> dict[str, Any]:
    """Message classes by name: ModelInferRequest, ModelInferResponse, InferTensorContents."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="recwatch_bench_v2.proto", package="inference", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> descriptor_pb2.DescriptorProto:
        msg = descriptor_pb2.DescriptorProto(name=name)
        for field_name, number, ftype, label, type_name in fields:
            added = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                added.type_name = type_name
        return msg

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    contents = message(
        "InferTensorContents",
        [
            ("bool_contents", 1, F.TYPE_BOOL, rep, ""),
            ("int_contents", 2, F.TYPE_INT32, rep, ""),
            ("int64_contents", 3, F.TYPE_INT64, rep, ""),
            ("uint_contents", 4, F.TYPE_UINT32, rep, ""),
            ("uint64_contents", 5, F.TYPE_UINT64, rep, ""),
            ("fp32_contents", 6, F.TYPE_FLOAT, rep, ""),
            ("fp64_contents", 7, F.TYPE_DOUBLE, rep, ""),
            ("bytes_contents", 8, F.TYPE_BYTES, rep, ""),
        ],
    )

    def tensor(name: str) -> descriptor_pb2.DescriptorProto:
        return message(
            name,
            [
                ("name", 1, F.TYPE_STRING, opt, ""),
                ("datatype", 2, F.TYPE_STRING, opt, ""),
                ("shape", 3, F.TYPE_INT64, rep, ""),
                ("contents", 5, F.TYPE_MESSAGE, opt, ".inference.InferTensorContents"),
            ],
        )

    request = message(
        "ModelInferRequest",
        [
            ("model_name", 1, F.TYPE_STRING, opt, ""),
            ("model_version", 2, F.TYPE_STRING, opt, ""),
            ("id", 3, F.TYPE_STRING, opt, ""),
            ("inputs", 5, F.TYPE_MESSAGE, rep, ".inference.ModelInferRequest.InferInputTensor"),
            ("outputs", 6, F.TYPE_MESSAGE, rep, ".inference.ModelInferRequest.InferRequestedOutputTensor"),
            ("raw_input_contents", 7, F.TYPE_BYTES, rep, ""),
        ],
    )
    request.nested_type.append(tensor("InferInputTensor"))
    request.nested_type.append(message("InferRequestedOutputTensor", [("name", 1, F.TYPE_STRING, opt, "")]))
    response = message(
        "ModelInferResponse",
        [
            ("model_name", 1, F.TYPE_STRING, opt, ""),
            ("model_version", 2, F.TYPE_STRING, opt, ""),
            ("id", 3, F.TYPE_STRING, opt, ""),
            ("outputs", 5, F.TYPE_MESSAGE, rep, ".inference.ModelInferResponse.InferOutputTensor"),
            ("raw_output_contents", 6, F.TYPE_BYTES, rep, ""),
        ],
    )
    response.nested_type.append(tensor("InferOutputTensor"))
    file.message_type.extend([contents, request, response])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
        for name in ("InferTensorContents", "ModelInferRequest", "ModelInferResponse")
    }
