"""TF Serving's JSON tensor format: request decoding against a signature, answers, and fuzzed bodies."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.framework import types_pb2

from serving.errors import InvalidInputError, InvalidRequestError
from serving.rest_decode import (
    PredictBody,
    array_summaries,
    declared_rows,
    decode_predict_inputs,
    decode_tensor,
    json_summaries,
    parse_predict_body,
)
from serving.rest_encode import encode_predict_response
from serving.tensors import TensorSpec

RANKER = {
    "features": TensorSpec(types_pb2.DT_FLOAT, (None, 8)),
    "item_id": TensorSpec(types_pb2.DT_INT64, (None,)),
    "user_id": TensorSpec(types_pb2.DT_INT64, (None,)),
}
DTYPES = {
    "float16": types_pb2.DT_HALF,
    "float32": types_pb2.DT_FLOAT,
    "float64": types_pb2.DT_DOUBLE,
    "int8": types_pb2.DT_INT8,
    "int16": types_pb2.DT_INT16,
    "int32": types_pb2.DT_INT32,
    "int64": types_pb2.DT_INT64,
    "uint8": types_pb2.DT_UINT8,
    "uint16": types_pb2.DT_UINT16,
    "uint32": types_pb2.DT_UINT32,
    "uint64": types_pb2.DT_UINT64,
    "bool": types_pb2.DT_BOOL,
}


def _decode(document: object, specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    return decode_predict_inputs(parse_predict_body(json.dumps(document).encode()), specs)


def _input_error(document: object, specs: dict[str, TensorSpec]) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        _decode(document, specs)
    return info.value


def _row(user: int, item: int, value: float = 0.5) -> dict[str, object]:
    return {"user_id": user, "item_id": item, "features": [value] * 8}


# -- request decoding -----------------------------------------------------------------------------------------


def test_row_format_objects_become_one_batched_array_per_input():
    arrays = _decode({"instances": [_row(7, 100, 0.25), _row(7, 101, -1.5)]}, RANKER)

    assert arrays["user_id"].dtype == np.int64 and arrays["user_id"].tolist() == [7, 7]
    assert arrays["item_id"].dtype == np.int64 and arrays["item_id"].tolist() == [100, 101]
    assert arrays["features"].dtype == np.float32 and arrays["features"].shape == (2, 8)
    np.testing.assert_array_equal(arrays["features"][1], np.full(8, -1.5, np.float32))


def test_columnar_format_allows_different_leading_dimensions():
    arrays = _decode({"inputs": {"user_id": [7], "item_id": [1, 2, 3], "features": [[0.0] * 8] * 3}}, RANKER)

    assert {k: v.shape for k, v in arrays.items()} == {"user_id": (1,), "item_id": (3,), "features": (3, 8)}


@pytest.mark.parametrize("fmt", ["instances", "inputs"])
def test_a_single_input_signature_takes_the_plain_value(fmt):
    specs = {"x": TensorSpec(types_pb2.DT_FLOAT, (None, 2))}

    arrays = _decode({fmt: [[1, 2], [3.5, 4]]}, specs)

    np.testing.assert_array_equal(arrays["x"], np.array([[1, 2], [3.5, 4]], np.float32))


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_each_numeric_dtype_decodes_to_its_numpy_dtype(name):
    dtype = np.dtype(name)
    values = [[True, False], [False, True]] if dtype.kind == "b" else [[0, 1], [2, 3]]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [[int(info.min), 0], [1, int(info.max)]]
    specs = {"x": TensorSpec(DTYPES[name], (None, 2))}

    array = _decode({"inputs": values}, specs)["x"]

    assert array.dtype == dtype
    assert array.tolist() == values


def test_floats_accept_nan_and_infinities_as_tf_serving_does():
    specs = {"x": TensorSpec(types_pb2.DT_FLOAT, (None,))}

    array = decode_predict_inputs(parse_predict_body(b'{"inputs": [1.0, NaN, Infinity, -Infinity, 2]}'), specs)["x"]

    assert math.isnan(array[1]) and array[2] == np.inf and array[3] == -np.inf and array[4] == 2.0


def test_strings_become_utf8_bytes_and_b64_objects_their_bytes():
    specs = {"query": TensorSpec(types_pb2.DT_STRING, (None,))}
    raw = bytes(range(256))

    array = _decode({"instances": ["shoes", "größe", {"b64": base64.b64encode(raw).decode()}]}, specs)["query"]

    assert array.dtype == object
    assert array.tolist() == [b"shoes", "größe".encode(), raw]


def test_b64_without_padding_is_accepted():
    specs = {"q": TensorSpec(types_pb2.DT_STRING, (None,))}

    assert _decode({"inputs": [{"b64": "YWI"}]}, specs)["q"].tolist() == [b"ab"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"b64": "not base64!"}, "base64"),
        ({"b64": "YQ==", "other": 1}, "object"),
        ({"b64": 5}, "object"),
        (5, "expected type string"),
    ],
)
def test_bad_string_values_name_the_input(value, reason):
    error = _input_error({"inputs": {"q": [value]}}, {"q": TensorSpec(types_pb2.DT_STRING, (None,))})

    assert error.input_name == "q"
    assert reason in error.reason


def test_ragged_rows_name_the_input_and_the_row():
    rows = [_row(1, 1), _row(1, 2), {"user_id": 1, "item_id": 3, "features": [0.5] * 7}]

    error = _input_error({"instances": rows}, RANKER)

    assert error.input_name == "features"
    assert "instances[2]" in error.reason and "7 values where 8" in error.reason


def test_ragged_columnar_tensor_names_the_input():
    error = _input_error({"inputs": {"user_id": [1], "item_id": [1, 2], "features": [[0.0] * 8, [0.0]]}}, RANKER)

    assert error.input_name == "features"


@pytest.mark.parametrize(
    ("column", "values", "reason"),
    [
        ("item_id", [1, 2.5], "not of expected type int64"),
        ("item_id", [1, True], "not of expected type int64"),
        ("item_id", [1, "2"], "not of expected type int64"),
        ("item_id", [1, None], "not of expected type int64"),
        ("item_id", [1, 2**63], "out of the range of int64"),
        ("user_id", [{"b64": "AA=="}], "not of expected type int64"),
        ("features", [[0.5] * 7 + [True]], "not of expected type float32"),
        ("features", [[0.5] * 7 + [2**24 + 1]], "loss of precision"),
        ("features", [[0.5] * 7 + [1e39]], "out of the range of float32"),
        ("features", [[0.5] * 7 + ["x"]], "not of expected type float32"),
    ],
)
def test_values_of_the_wrong_type_name_the_input(column, values, reason):
    columns: dict[str, object] = {"user_id": [1], "item_id": [1], "features": [[0.5] * 8]}
    columns[column] = values

    error = _input_error({"inputs": columns}, RANKER)

    assert error.input_name == column
    assert reason in error.reason


@pytest.mark.parametrize(
    ("name", "value"), [("int8", 128), ("uint8", -1), ("int32", 2**31), ("uint64", -1), ("bool", 1)]
)
def test_integers_outside_the_dtype_are_refused(name, value):
    error = _input_error({"inputs": [value]}, {"x": TensorSpec(DTYPES[name], (None,))})

    assert error.input_name == "x"


def test_shape_must_fit_the_signature():
    error = _input_error({"instances": [{"user_id": 1, "item_id": 2, "features": [0.5] * 7}]}, RANKER)

    assert error.input_name == "features"
    assert "expected shape [None, 8]" in error.reason


@pytest.mark.parametrize(
    ("document", "name"),
    [
        ({"instances": [{"user_id": 1, "item_id": 2}]}, "features"),
        ({"instances": [{**_row(1, 2), "extra": 1}]}, "extra"),
        ({"instances": [_row(1, 2), {"user_id": 1, "features": [0.5] * 8}]}, "item_id"),
        ({"inputs": {"user_id": [1], "item_id": [2]}}, "features"),
        ({"inputs": {"user_id": [1], "item_id": [2], "features": [[0.5] * 8], "typo": [1]}}, "typo"),
    ],
)
def test_missing_and_unknown_inputs_are_named(document, name):
    assert _input_error(document, RANKER).input_name == name


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"{bad", "JSON Parse error"),
        (b"\xff\xfe\x00", "JSON Parse error"),
        (b"[1, 2]", "Is not object"),
        (b'{"signature_name": 1, "inputs": [1]}', "signature_name"),
        (b'{"instances": [1], "inputs": [1]}', "only one of"),
        (b'{"instances": {}}', "list/array"),
        (b'{"instances": []}', "No values"),
        (b'{"signature_name": "x"}', "Missing 'inputs' or 'instances'"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON Parse error"),
    ],
)
def test_malformed_bodies_are_invalid_requests(body, message):
    with pytest.raises(InvalidRequestError) as info:
        parse_predict_body(body)

    assert message in str(info.value)


@pytest.mark.parametrize(
    "document",
    [
        {"instances": [1, 2]},  # plain rows, but three inputs
        {"inputs": [1, 2]},
        {"instances": [_row(1, 2), [1]]},  # objects then a list
    ],
)
def test_a_layout_that_does_not_fit_the_signature_is_an_invalid_request(document):
    with pytest.raises(InvalidRequestError):
        _decode(document, RANKER)


def test_signature_name_and_format_are_parsed():
    body = parse_predict_body(b'{"signature_name": "rank", "inputs": {"x": [1]}}')

    assert (body.signature_name, body.format) == ("rank", "columnar")


# -- summaries for events ---------------------------------------------------------------------------------------


def test_summaries_of_decoded_inputs_match_the_grpc_front_end():
    body = parse_predict_body(json.dumps({"instances": [_row(1, 2), _row(1, 3)]}).encode())
    arrays = decode_predict_inputs(body, RANKER)

    summaries = [(s.name, s.dtype, list(s.shape)) for s in array_summaries(arrays, RANKER)]

    assert summaries == [("features", "float32", [2, 8]), ("item_id", "int64", [2]), ("user_id", "int64", [2])]
    assert declared_rows(body) == 2


def test_summaries_from_json_alone_have_names_and_declared_shapes():
    body = parse_predict_body(json.dumps({"inputs": {"item_id": [1, 2, 3], "features": [[1.0] * 8] * 3}}).encode())

    assert [(s.name, s.dtype, list(s.shape)) for s in json_summaries(body)] == [
        ("features", "", [3, 8]),
        ("item_id", "", [3]),
    ]
    assert declared_rows(body) == 3


# -- answers ------------------------------------------------------------------------------------------------------


def test_row_answer_with_one_output_is_the_list_of_its_rows():
    scores = np.array([0.1, 0.25, 1 / 3], np.float32)

    answer = encode_predict_response({"scores": scores}, "row")

    # float32 in its shortest round-trip digits, as TF Serving writes it (not 0.10000000149011612)
    assert answer == b'{"predictions":[0.1,0.25,0.33333334]}'
    np.testing.assert_array_equal(np.array(json.loads(answer)["predictions"], np.float32), scores)


def test_row_answer_with_several_outputs_is_a_list_of_objects():
    outputs: dict[str, np.ndarray] = {
        "scores": np.array([0.5, 1.0], np.float32),
        "ids": np.array([[1, 2], [3, 4]], np.int64),
    }

    answer = json.loads(encode_predict_response(outputs, "row"))

    assert answer == {"predictions": [{"scores": 0.5, "ids": [1, 2]}, {"scores": 1.0, "ids": [3, 4]}]}


def test_columnar_answer_with_several_outputs_is_an_object():
    outputs = {"scores": np.array([0.5], np.float32), "count": np.array(3, np.int32)}

    assert json.loads(encode_predict_response(outputs, "columnar")) == {"outputs": {"scores": [0.5], "count": 3}}


def test_non_finite_floats_are_written_as_tf_serving_writes_them():
    outputs = {"x": np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)}

    assert encode_predict_response(outputs, "columnar") == b'{"outputs":[NaN,Infinity,-Infinity,1.5]}'


def test_bytes_outputs_are_b64_and_text_outputs_strings():
    outputs = {"label": np.array([b"red", b"blue"], object), "image_bytes": np.array([b"\x00\x01"], object)}

    answer = json.loads(encode_predict_response(outputs, "columnar"))

    assert answer == {"outputs": {"label": ["red", "blue"], "image_bytes": [{"b64": "AAE="}]}}


def test_undecodable_text_output_is_b64_rather_than_lost():
    answer = json.loads(encode_predict_response({"label": np.array([b"\xff"], object)}, "columnar"))

    assert answer == {"outputs": [{"b64": "/w=="}]}


@pytest.mark.parametrize(
    "outputs",
    [
        {"count": np.array(3, np.int32)},
        {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)},
    ],
)
def test_outputs_the_row_format_cannot_carry_are_an_invalid_request(outputs):
    with pytest.raises(InvalidRequestError):
        encode_predict_response(outputs, "row")


# -- properties -------------------------------------------------------------------------------------------------

_NUMERIC = [np.dtype(n) for n in sorted(DTYPES)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_NUMERIC).flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=3))))
def test_arrays_written_as_json_lists_decode_to_themselves(array):
    spec = TensorSpec(DTYPES[array.dtype.name], (None,) * array.ndim)
    document = json.dumps({"inputs": array.tolist()})

    decoded = _decoded_or_refused(document.encode(), {"x": spec})

    if array.dtype.kind == "f" and np.isfinite(array).all():
        # finite floats always come back (integral float64 values beyond 2^53 stay floats in JSON)
        assert decoded is not None
    if decoded is not None:
        np.testing.assert_array_equal(decoded["x"], array)
        assert decoded["x"].dtype == array.dtype


def _decoded_or_refused(body: bytes, specs: dict[str, TensorSpec]) -> dict[str, np.ndarray] | None:
    try:
        return decode_predict_inputs(parse_predict_body(body), specs)
    except (InvalidRequestError, InvalidInputError):
        return None


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.builds(lambda s: {"b64": s}, st.text(alphabet="QUJD=+/ab!", max_size=8)),
)
_json_values = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=30,
)
_SPECS = [
    RANKER,
    {"x": TensorSpec(types_pb2.DT_STRING, None)},
    {"x": TensorSpec(types_pb2.DT_BOOL, (None,))},
    {"x": TensorSpec(types_pb2.DT_UINT8, (None, 2))},
    {"x": TensorSpec(types_pb2.DT_DOUBLE, None), "y": TensorSpec(types_pb2.DT_INT32, (None,))},
]


def _documents() -> st.SearchStrategy[object]:
    names = st.sampled_from(["user_id", "item_id", "features", "x", "y", "z"])
    named = st.dictionaries(names, _json_values, max_size=4)
    return st.one_of(
        _json_values,
        st.fixed_dictionaries({"instances": st.lists(named | _json_values, max_size=4)}),
        st.fixed_dictionaries({"inputs": named | _json_values}),
        st.fixed_dictionaries({"signature_name": _json_values, "inputs": _json_values}),
    )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents(), st.sampled_from(_SPECS))
def test_any_json_body_decodes_to_arrays_of_the_signature_or_is_refused_with_a_serving_error(document, specs):
    arrays = _decoded_or_refused(json.dumps(document).encode(), specs)

    if arrays is not None:
        assert arrays.keys() == specs.keys()
        for name, array in arrays.items():
            assert array.dtype == specs[name].numpy_dtype


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(_SPECS))
def test_any_bytes_decode_or_are_refused_with_a_serving_error(body, specs):
    _decoded_or_refused(body, specs)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.one_of(st.booleans(), st.integers(-(2**66), 2**66), st.floats(allow_nan=True)),
        lambda children: st.lists(children, min_size=1, max_size=3),
        max_leaves=12,
    ),
    st.sampled_from(_NUMERIC),
)
def test_numpy_fast_path_agrees_with_the_value_by_value_walk(value, dtype):
    spec = TensorSpec(DTYPES[dtype.name], None)

    def decoded(may_hold_bools: bool) -> np.ndarray | str:
        try:
            return decode_tensor("x", value, spec, may_hold_bools=may_hold_bools)
        except InvalidInputError:
            return "refused"

    text = json.dumps(value)
    fast = decoded("true" in text or "false" in text)  # as parse_predict_body sets it
    strict = decoded(True)  # sends numbers through the walk
    if isinstance(fast, str) or isinstance(strict, str):
        assert isinstance(fast, str) and isinstance(strict, str), (fast, strict)
    else:
        assert fast.dtype == strict.dtype == dtype
        np.testing.assert_array_equal(fast, strict)


def test_predict_body_is_immutable_data():
    body = PredictBody("", "row", [1], False)

    with pytest.raises(AttributeError):
        body.format = "columnar"  # type: ignore[misc]
