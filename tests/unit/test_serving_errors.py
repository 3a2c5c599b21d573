"""Model-server errors: the status table, tensor decoding/encoding and input validation."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import (
    InvalidInputError,
    InvalidOutputFilterError,
    InvalidRequestError,
    ModelExecutionError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
    ServerStartError,
    ServingError,
    SignatureNotFoundError,
    grpc_code_number,
    status_of,
)
from serving.tensors import MAX_ELEMENTS, TensorSpec, decode_inputs, rows_of, to_ndarray, to_tensor_proto

# -- the status table ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "http"),
    [
        (ModelNotFoundError("ranker"), grpc.StatusCode.NOT_FOUND, 404),
        (ModelNotFoundError("ranker", 3), grpc.StatusCode.NOT_FOUND, 404),
        (SignatureNotFoundError("ranker", "x", ["serving_default"]), grpc.StatusCode.FAILED_PRECONDITION, 400),
        (InvalidInputError("features", "missing"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (InvalidOutputFilterError("logits", "unknown"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (InvalidRequestError("Missing ModelSpec"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (OverloadedError("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (ModelExecutionError("boom"), grpc.StatusCode.INTERNAL, 500),
        (ModelLoadError("/m/1", "bad"), grpc.StatusCode.INTERNAL, 500),
        (ServerStartError("127.0.0.1:1", "in use"), grpc.StatusCode.INTERNAL, 500),
        (ServingError("other"), grpc.StatusCode.INTERNAL, 500),
        (ValueError("not ours"), grpc.StatusCode.INTERNAL, 500),
        (KeyError("not ours"), grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_status_table(error, code, http):
    status = status_of(error)
    assert (status.grpc, status.http) == (code, http)


def test_subclasses_inherit_their_parents_status():
    class LabelNotFoundError(ModelNotFoundError):
        pass

    assert status_of(LabelNotFoundError("ranker")).grpc == grpc.StatusCode.NOT_FOUND


def test_grpc_code_numbers_are_the_wire_values():
    assert grpc_code_number(grpc.StatusCode.OK) == 0
    assert grpc_code_number(grpc.StatusCode.INVALID_ARGUMENT) == 3
    assert grpc_code_number(grpc.StatusCode.NOT_FOUND) == 5
    assert grpc_code_number(grpc.StatusCode.RESOURCE_EXHAUSTED) == 8


def test_errors_carry_structured_fields():
    error = InvalidInputError("item_id", "missing")
    assert (error.input_name, error.reason) == ("item_id", "missing")
    assert "'item_id'" in str(error)
    not_found = ModelNotFoundError("ranker", 7)
    assert (not_found.model, not_found.version) == ("ranker", 7)
    assert "ranker" in str(not_found) and "7" in str(not_found)


# -- validation against a signature ---------------------------------------------------------------------------

SPECS = {
    "user_id": TensorSpec(types_pb2.DT_INT64, (None,)),
    "item_id": TensorSpec(types_pb2.DT_INT64, (None,)),
    "features": TensorSpec(types_pb2.DT_FLOAT, (None, 8)),
}


def _request(rows: int = 3, **arrays: np.ndarray) -> dict[str, tensor_pb2.TensorProto]:
    values = {
        "user_id": np.arange(rows, dtype=np.int64),
        "item_id": np.arange(rows, dtype=np.int64) + 100,
        "features": np.ones((rows, 8), np.float32),
        **arrays,
    }
    return {name: tf.make_tensor_proto(v) for name, v in values.items()}


def test_valid_inputs_decode_to_arrays():
    arrays = decode_inputs(SPECS, _request(4))
    assert arrays["user_id"].dtype == np.int64 and arrays["user_id"].tolist() == [0, 1, 2, 3]
    assert arrays["features"].shape == (4, 8) and arrays["features"].dtype == np.float32


@pytest.mark.parametrize(
    ("protos", "name", "reason"),
    [
        ({k: v for k, v in _request().items() if k != "item_id"}, "item_id", "missing"),
        (_request(features=np.ones((3, 8), np.float64)), "features", "expected dtype float32, got float64"),
        (_request(user_id=np.arange(3, dtype=np.int32)), "user_id", "expected dtype int64, got int32"),
        (_request(features=np.ones((3, 8, 1), np.float32)), "features", "expected shape [None, 8], got [3, 8, 1]"),
        (_request(features=np.ones((3, 9), np.float32)), "features", "expected shape [None, 8], got [3, 9]"),
        (_request(item_id=np.array(5, dtype=np.int64)), "item_id", "expected shape [None], got []"),
        (_request(extra=np.ones(3, np.float32)), "extra", "not an input of the signature"),
    ],
    ids=["missing", "float64", "int32", "rank", "dim", "scalar", "unexpected"],
)
def test_invalid_inputs_name_the_input(protos, name, reason):
    with pytest.raises(InvalidInputError) as info:
        decode_inputs(SPECS, protos)
    assert info.value.input_name == name
    assert reason in info.value.reason


def test_unknown_rank_spec_accepts_any_shape():
    spec = {"x": TensorSpec(types_pb2.DT_FLOAT, None)}
    assert decode_inputs(spec, {"x": tf.make_tensor_proto(np.ones((2, 3, 4), np.float32))})["x"].shape == (2, 3, 4)


def test_rows_is_the_largest_leading_dimension():
    assert rows_of([(3,), (3, 8), ()]) == 3
    assert rows_of([(1,), (32,)]) == 32
    assert rows_of([(), ()]) == 0


# -- decoding rules ------------------------------------------------------------------------------------------


def test_typed_values_follow_tensorflow_padding_rules():
    one = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.5])
    one.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(to_ndarray(one), tf.make_ndarray(one))  # [2.5, 2.5, 2.5]
    none = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64)
    none.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(to_ndarray(none), [0, 0])


def test_more_values_than_the_shape_holds_is_invalid():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0, 3.0])
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(InvalidInputError, match="3 values"):
        to_ndarray(proto, "features")


def test_a_huge_shape_is_refused_before_allocating():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    proto.tensor_shape.dim.add(size=MAX_ELEMENTS)
    proto.tensor_shape.dim.add(size=MAX_ELEMENTS)
    with pytest.raises(InvalidInputError, match="exceed"):
        to_ndarray(proto, "features")


def test_strings_decode_to_bytes_and_round_trip():
    array = np.array([b"sku-1", "sku-\u00e9".encode(), b""], dtype=object)
    decoded = to_ndarray(tf.make_tensor_proto(array))
    assert decoded.tolist() == array.tolist()
    assert tf.make_ndarray(to_tensor_proto(decoded)).tolist() == array.tolist()


_ARRAY_DTYPES = st.sampled_from(
    [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.bool_]
)
_ARRAYS = _ARRAY_DTYPES.flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
)


@settings(max_examples=200, deadline=None)
@given(_ARRAYS)
def test_to_ndarray_reads_what_tensorflow_writes(array):
    decoded = to_ndarray(tf.make_tensor_proto(array))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@settings(max_examples=200, deadline=None)
@given(_ARRAYS)
def test_tensorflow_reads_what_to_tensor_proto_writes(array):
    proto = to_tensor_proto(array)
    assert not proto.tensor_content  # typed fields, as TF Serving answers
    back = tf.make_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(to_ndarray(proto), array)


# -- fuzzing: malformed TensorProtos --------------------------------------------------------------------------

_DTYPE_VALUES = st.one_of(st.sampled_from(sorted(types_pb2.DataType.values())), st.integers(-5, 300))
_DIMS = st.one_of(st.integers(-3, 6), st.sampled_from([MAX_ELEMENTS, MAX_ELEMENTS + 1, 2**40, 2**62, -(2**62)]))
_SMALL_INTS = st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)


@st.composite
def _tensor_protos(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=draw(_DTYPE_VALUES))
    proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    for size in draw(st.lists(_DIMS, max_size=draw(st.sampled_from([4, 70])))):
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = draw(st.binary(max_size=48))
    proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=8)))
    proto.double_val.extend(draw(st.lists(st.floats(), max_size=8)))
    proto.int_val.extend(draw(_SMALL_INTS))
    proto.half_val.extend(draw(_SMALL_INTS))
    proto.int64_val.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8)))
    proto.uint32_val.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=8)))
    proto.uint64_val.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=8)))
    proto.bool_val.extend(draw(st.lists(st.booleans(), max_size=8)))
    proto.string_val.extend(draw(st.lists(st.binary(max_size=8), max_size=8)))
    return proto


def _decodes_or_rejects(proto: tensor_pb2.TensorProto) -> None:
    try:
        array = to_ndarray(proto, "x")
    except InvalidInputError as exc:
        assert exc.input_name == "x"
        return
    assert isinstance(array, np.ndarray)
    assert array.shape == tuple(d.size for d in proto.tensor_shape.dim)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tensor_protos())
def test_fuzz_structured_tensor_protos_decode_or_raise_invalid_input(proto):
    _decodes_or_rejects(proto)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_wire_bytes_decode_or_raise_invalid_input(data):
    try:
        proto = tensor_pb2.TensorProto.FromString(data)
    except DecodeError:
        return  # gRPC rejects such a request before it reaches the server's code
    _decodes_or_rejects(proto)
