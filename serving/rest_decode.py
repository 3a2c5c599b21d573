"""TF Serving's JSON request format -> numpy arrays, for the REST front end (``serving.rest``).

Requests follow https://www.tensorflow.org/tfx/serving/api_rest: ``{"signature_name": ..., "instances": [...]}``
(row format: a list with one item per row, each item the row's value of the single input or an object of
input name -> value) or ``{"inputs": ...}`` (columnar: the single input's whole tensor, or an object of input
name -> tensor). Values are nested lists; ``{"b64": "..."}`` carries bytes of string tensors; ``NaN``,
``Infinity`` and ``-Infinity`` are accepted. Answers are written by ``serving.rest_encode``.

Validation is TF Serving's, against the signature's input specs: a JSON value must have the input's type
(``true`` is not an int, ``1.5`` is not an int, an int beyond 2^24 is not a lossless float32), nested lists
must be rectangular, every row object must hold exactly the signature's inputs, and the decoded shape must fit
the spec. Everything it refuses raises :class:`InvalidRequestError` (the body as a whole) or
:class:`InvalidInputError` naming the input; no other exception escapes :func:`parse_predict_body` or
:func:`decode_predict_inputs`. Stricter than TF Serving: a columnar ``inputs`` object naming an input the
signature lacks is refused (as the gRPC front end refuses it) rather than ignored, and integers out of the
input dtype's range are refused rather than wrapped.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import TensorSummary
from serving.errors import InvalidInputError, InvalidRequestError
from serving.rest_encode import B64_KEY, Format
from serving.tensors import MAX_ELEMENTS, MAX_RANK, TensorSpec, check_shape

_fast_loads: Callable[[bytes], Any]
try:  # ~6x faster than json.loads on a 32-row body (docs/rest.md); optional, same results
    from orjson import loads as _orjson_loads

    _fast_loads = _orjson_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = json.loads

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class PredictBody:
    """A parsed ``:predict`` body; tensors are decoded once the signature is known."""

    signature_name: str
    format: Format
    payload: Any  # the "instances" list or the "inputs" value, as json.loads returned it
    may_hold_bools: bool  # the body contains a true/false token somewhere: numeric inputs take the strict path


def parse_predict_body(body: bytes) -> PredictBody:
    """Parse the JSON of a ``:predict`` request; raises InvalidRequestError if it is not one."""
    if not body.strip():
        raise InvalidRequestError("JSON Parse error: The document is empty")
    try:
        doc = _fast_loads(body)
    except Exception:  # orjson refuses NaN/Infinity (TF Serving accepts them) and is terse: ask json
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits limit
            raise InvalidRequestError(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequestError(f"JSON Value: {_brief(doc)} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidRequestError("'signature_name' key must be a string value")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise InvalidRequestError("Not formatted correctly: expecting only one of 'inputs' or 'instances' keys")
    may_hold_bools = b"true" in body or b"false" in body
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise InvalidRequestError("Expecting 'instances' to be a list/array")
        if not instances:
            raise InvalidRequestError("No values in 'instances' array")
        return PredictBody(signature_name, "row", instances, may_hold_bools)
    if has_inputs:
        return PredictBody(signature_name, "columnar", doc["inputs"], may_hold_bools)
    raise InvalidRequestError("Missing 'inputs' or 'instances' key")


def decode_predict_inputs(body: PredictBody, specs: Mapping[str, TensorSpec]) -> Arrays:
    """The input arrays of a parsed request, checked against the signature's ``specs``.

    Raises InvalidInputError naming the input (wrong type, ragged, wrong shape, missing, unknown) or
    InvalidRequestError (the request's layout does not fit the signature at all).
    """
    if not specs:
        raise InvalidRequestError("the signature has no inputs")
    names = sorted(specs)
    columns: dict[str, Any]
    if body.format == "row":
        rows: list[Any] = body.payload
        if _is_named_object(rows[0]):
            columns = _columns_of_rows(rows, names)
        elif len(names) > 1:
            raise InvalidRequestError(
                f"instances is a plain list, but the signature has {len(names)} inputs ({', '.join(names)}): "
                "each instance must be an object of input name to value"
            )
        else:
            for i, row in enumerate(rows):
                if _is_named_object(row):
                    raise InvalidRequestError(f"Expecting value/list but got object at item {i} of 'instances'")
            columns = {names[0]: rows}
    elif _is_named_object(body.payload):
        columns = body.payload
        for name in columns:
            if name not in specs:
                raise InvalidInputError(name, f"not an input of the signature (inputs: {', '.join(names)})")
        for name in names:
            if name not in columns:
                raise InvalidInputError(name, "missing in 'inputs'")
    elif len(names) > 1:
        raise InvalidRequestError(
            f"inputs is a plain value/list, but the signature has {len(names)} inputs ({', '.join(names)}): "
            "'inputs' must be an object of input name to tensor"
        )
    else:
        columns = {names[0]: body.payload}
    where = "instances" if body.format == "row" else "inputs"
    arrays: Arrays = {}
    for name, spec in specs.items():
        array = decode_tensor(name, columns[name], spec, may_hold_bools=body.may_hold_bools, where=where)
        check_shape(name, spec, array.shape)
        arrays[name] = array
    return arrays


def _columns_of_rows(rows: list[Any], names: list[str]) -> dict[str, list[Any]]:
    wanted = set(names)
    if all(type(row) is dict and row.keys() == wanted for row in rows):
        return {name: [row[name] for row in rows] for name in names}
    for i, row in enumerate(rows):  # say what is wrong with the first bad row
        if not _is_named_object(row):
            raise InvalidRequestError(f"Expecting object but got {_json_type(row)} at item {i} of 'instances'")
        extra = sorted(set(row) - wanted)
        if extra:
            raise InvalidInputError(extra[0], f"not an input of the signature (inputs: {', '.join(names)})")
        missing = sorted(wanted - set(row))
        if missing:
            raise InvalidInputError(missing[0], f"missing in item {i} of 'instances'")
    raise AssertionError("unreachable: some row failed the check above")


def decode_tensor(
    name: str, value: Any, spec: TensorSpec, *, may_hold_bools: bool = True, where: str = "inputs"
) -> npt.NDArray[Any]:
    """One input's JSON value as an array of ``spec``'s dtype (object array of bytes for strings).

    Numbers take numpy's converter and are then range-checked; anything it does not settle (bools in the
    body, mixed types, ragged lists, strings) is walked value by value, which names the offending position.
    """
    dt = spec.numpy_dtype
    if dt is None:
        raise InvalidInputError(name, f"dtype {spec.dtype_name} is not supported by the REST API")
    array = None if dt.kind == "O" else _fast_numeric(value, dt, may_hold_bools)
    if array is None:
        array = _strict(name, value, dt, where)
    if array.size > MAX_ELEMENTS:
        raise InvalidInputError(name, f"{array.size} elements exceed the limit of {MAX_ELEMENTS}")
    return array


# ---------------------------------------------------------------------------------------------- numbers


def _float_limits(dt: np.dtype[Any]) -> tuple[float, int]:
    info = np.finfo(dt)
    return float(info.max), 2 ** (info.nmant + 1)  # largest finite value; integers up to this are exact


def _fast_numeric(value: Any, dt: np.dtype[Any], may_hold_bools: bool) -> npt.NDArray[Any] | None:
    """``value`` converted by numpy when that is provably what the strict walk would give, else None."""
    if may_hold_bools and dt.kind != "b":
        return None  # numpy would read true as 1 without a word
    try:
        array = np.asarray(value)
    except Exception:  # ragged lists, mixed objects, huge ints: the strict walk explains
        return None
    kind = array.dtype.kind
    if array.ndim > MAX_RANK or array.size == 0:
        return None
    if dt.kind == "b":
        return array if kind == "b" else None
    if dt.kind in "iu":
        if kind not in "iu":
            return None
        info = np.iinfo(dt)
        if array.min() < info.min or array.max() > info.max:
            return None
        return array.astype(dt, copy=False)
    if kind in "iu":
        _, exact = _float_limits(dt)
        if array.min() < -exact or array.max() > exact:
            return None
        return array.astype(dt)
    if kind != "f":
        return None
    largest, exact = _float_limits(dt)
    with np.errstate(invalid="ignore", over="ignore"):
        magnitude = np.abs(array)
        if not magnitude.max() <= exact:  # some value is big, infinite or NaN: look closer
            finite = np.isfinite(array)
            if np.any(finite & (magnitude > largest)):
                return None
            # a big integral value may have been a JSON int numpy widened to float: only the walk can tell
            if np.any(finite & (magnitude > exact) & (array == np.floor(array))):
                return None
        return array.astype(dt, copy=False)


# ---------------------------------------------------------------------------------------------- strict walk


class _BadValue(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _leaf_converter(dt: np.dtype[Any]) -> Callable[[Any], Any]:
    type_name = _type_name(dt)
    if dt.kind == "b":

        def to_bool(v: Any) -> Any:
            if type(v) is bool:
                return v
            raise _BadValue(f"{_brief(v)} ({_json_type(v)}) is not of expected type {type_name}")

        return to_bool
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = int(info.min), int(info.max)

        def to_int(v: Any) -> Any:
            if type(v) is not int:
                raise _BadValue(f"{_brief(v)} ({_json_type(v)}) is not of expected type {type_name}")
            if not lo <= v <= hi:
                raise _BadValue(f"{_brief(v)} is out of the range of {type_name}")
            return v

        return to_int
    if dt.kind == "f":
        largest, exact = _float_limits(dt)

        def to_float(v: Any) -> Any:
            t = type(v)
            if t is float:
                if math.isfinite(v) and abs(v) > largest:
                    raise _BadValue(f"{_brief(v)} is out of the range of {type_name}")
                return v
            if t is int:
                if abs(v) > exact:
                    raise _BadValue(f"cannot convert {_brief(v)} to {type_name} without loss of precision")
                return v
            raise _BadValue(f"{_brief(v)} ({_json_type(v)}) is not of expected type {type_name}")

        return to_float
    return _to_bytes


def _to_bytes(v: Any) -> bytes:
    if type(v) is str:
        try:
            return v.encode()
        except UnicodeEncodeError:
            raise _BadValue("string is not valid Unicode (lone surrogate)") from None
    if type(v) is dict:
        if len(v) == 1 and type(v.get(B64_KEY)) is str:
            text: str = v[B64_KEY]
            try:
                return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise _BadValue(f"{_brief(v)} is not valid base64") from None
        raise _BadValue(f'{_brief(v)} is an object, expected a string or {{"b64": <base64 string>}}')
    raise _BadValue(f"{_brief(v)} ({_json_type(v)}) is not of expected type string")


def _type_name(dt: np.dtype[Any]) -> str:
    return "string" if dt.kind == "O" else dt.name


def _strict(name: str, value: Any, dt: np.dtype[Any], where: str) -> npt.NDArray[Any]:
    """Walk ``value`` leaf by leaf: rectangular, each leaf of the right type; names the first bad position."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        if len(shape) == MAX_RANK:
            raise InvalidInputError(name, f"lists nested deeper than {MAX_RANK} levels")
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    rank = len(shape)
    convert = _leaf_converter(dt)
    flat: list[Any] = []

    def walk(v: Any, level: int, path: tuple[int, ...]) -> None:
        if isinstance(v, list):
            if level >= rank:
                raise InvalidInputError(name, f"{_at(where, path)}: a list where a value was expected")
            if len(v) != shape[level]:
                raise InvalidInputError(
                    name,
                    f"{_at(where, path)} has {len(v)} values where {shape[level]} were expected "
                    "(nested lists must be rectangular, every row of the same shape)",
                )
            for i, item in enumerate(v):
                walk(item, level + 1, (*path, i))
        elif level != rank:
            raise InvalidInputError(name, f"{_at(where, path)}: a value where a list was expected")
        else:
            try:
                flat.append(convert(v))
            except _BadValue as exc:
                raise InvalidInputError(name, f"{_at(where, path)}: {exc.reason}") from None

    walk(value, 0, ())
    if math.prod(shape) > MAX_ELEMENTS:
        raise InvalidInputError(name, f"{math.prod(shape)} elements exceed the limit of {MAX_ELEMENTS}")
    if dt.kind == "O":
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    return np.array(flat, dtype=dt).reshape(shape)


def _at(where: str, path: tuple[int, ...]) -> str:
    return f"value at {where}{''.join(f'[{i}]' for i in path)}" if path else "value"


def _is_named_object(value: Any) -> bool:
    """An object of input names (not a ``{"b64": ...}`` value)."""
    return type(value) is dict and not (len(value) == 1 and B64_KEY in value)


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    return {bool: "Bool", int: "Number", float: "Number", str: "String", list: "Array", dict: "Object"}.get(
        type(value), type(value).__name__
    )


def _brief(value: Any, limit: int = 80) -> str:
    """A short rendering of a JSON value for error messages."""
    try:
        text = json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- summaries


def json_summaries(body: PredictBody) -> list[TensorSummary]:
    """Input names and shapes as the JSON declares them (dtype unknown: the signature decides it). For
    events of requests that fail before their inputs decode; a plain ``instances`` list has no input name."""
    if body.format == "row":
        rows: list[Any] = body.payload
        first = rows[0]
        if _is_named_object(first):
            return [
                TensorSummary(name=str(k), dtype="", shape=[len(rows), *_dense_shape(v)])
                for k, v in sorted(first.items())
            ]
        return [TensorSummary(name="", dtype="", shape=[len(rows), *_dense_shape(first)])]
    if _is_named_object(body.payload):
        return [TensorSummary(name=str(k), dtype="", shape=_dense_shape(v)) for k, v in sorted(body.payload.items())]
    return [TensorSummary(name="", dtype="", shape=_dense_shape(body.payload))]


def array_summaries(arrays: Mapping[str, npt.NDArray[Any]], specs: Mapping[str, TensorSpec]) -> list[TensorSummary]:
    """Summaries of decoded inputs, as the gRPC front end reports them."""
    return [
        TensorSummary(name=name, dtype=specs[name].dtype_name, shape=list(a.shape))
        for name, a in sorted(arrays.items())
    ]


def declared_rows(body: PredictBody) -> int:
    """Rows as the JSON declares them: instances, or the largest leading dimension of the columnar inputs."""
    if body.format == "row":
        return len(body.payload)
    values = body.payload.values() if _is_named_object(body.payload) else [body.payload]
    return max((len(v) for v in values if isinstance(v, list)), default=0)


def _dense_shape(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list) and len(shape) < MAX_RANK:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape
