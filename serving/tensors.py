"""TensorProto <-> numpy, and validation of request inputs against a signature.

Decoding follows TensorFlow's rules (``tensor_content`` as little-endian bytes, else the typed ``*_val``
field; fewer typed values than the shape holds repeat the last one, none means zeros) but is stricter where
TensorFlow would read garbage: more values than the shape holds, a negative or unknown dimension, an
unsupported dtype or a content of the wrong length raise :class:`InvalidInputError` naming the input. No other
exception escapes :func:`to_ndarray`.

Encoding writes the typed ``*_val`` fields, as TF Serving does by default, so clients that read
``outputs["scores"].float_val`` work as well as ``tf.make_ndarray``.

Importing this module imports TensorFlow's generated protos (and therefore TensorFlow itself).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import InvalidInputError

# Refuse before allocating: a tiny proto with a big shape and one typed value would otherwise expand into
# gigabytes (TensorFlow's "repeat the last value" rule).
MAX_ELEMENTS: Final = 1 << 26
MAX_RANK: Final = 32

TensorProto = tensor_pb2.TensorProto


@dataclass(frozen=True)
class _DType:
    name: str  # TensorFlow's dtype name, as logged in TensorSummary.dtype
    numpy: np.dtype[Any]  # little-endian, the byte order of tensor_content
    field: str  # the typed repeated field of TensorProto


_DTYPES: Final[dict[int, _DType]] = {
    types_pb2.DT_FLOAT: _DType("float32", np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: _DType("float64", np.dtype("<f8"), "double_val"),
    types_pb2.DT_INT32: _DType("int32", np.dtype("<i4"), "int_val"),
    types_pb2.DT_UINT8: _DType("uint8", np.dtype("u1"), "int_val"),
    types_pb2.DT_INT16: _DType("int16", np.dtype("<i2"), "int_val"),
    types_pb2.DT_INT8: _DType("int8", np.dtype("i1"), "int_val"),
    types_pb2.DT_STRING: _DType("string", np.dtype(object), "string_val"),
    types_pb2.DT_INT64: _DType("int64", np.dtype("<i8"), "int64_val"),
    types_pb2.DT_BOOL: _DType("bool", np.dtype("?"), "bool_val"),
    types_pb2.DT_UINT16: _DType("uint16", np.dtype("<u2"), "int_val"),
    types_pb2.DT_HALF: _DType("float16", np.dtype("<f2"), "half_val"),
    types_pb2.DT_UINT32: _DType("uint32", np.dtype("<u4"), "uint32_val"),
    types_pb2.DT_UINT64: _DType("uint64", np.dtype("<u8"), "uint64_val"),
}
_BY_NUMPY: Final[dict[np.dtype[Any], int]] = {
    d.numpy.newbyteorder("="): enum for enum, d in _DTYPES.items() if enum != types_pb2.DT_STRING
}


@dataclass(frozen=True)
class TensorSpec:
    """What a signature expects of one tensor: a DataType enum and a shape (None = unknown dim or rank)."""

    dtype: int
    shape: tuple[int | None, ...] | None

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def numpy_dtype(self) -> np.dtype[Any] | None:
        """The numpy dtype carrying values of this tensor (object for strings), None if unsupported."""
        d = _DTYPES.get(self.dtype)
        return d.numpy if d is not None else None

    @classmethod
    def from_proto(cls, dtype: int, shape: tensor_shape_pb2.TensorShapeProto) -> TensorSpec:
        """From a SignatureDef's TensorInfo (``-1`` dims are unknown)."""
        if shape.unknown_rank:
            return cls(dtype, None)
        return cls(dtype, tuple(d.size if d.size >= 0 else None for d in shape.dim))


def dtype_name(dtype: int) -> str:
    """TensorFlow's name of a DataType enum value, e.g. ``"float32"``; ``"DT_<n>"``-style for the rest."""
    known = _DTYPES.get(dtype)
    if known is not None:
        return known.name
    try:
        return str(types_pb2.DataType.Name(dtype)).removeprefix("DT_").lower()
    except ValueError:
        return f"dtype_{dtype}"


def proto_shape(name: str, proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    """The shape a request tensor declares; raises InvalidInputError if it is unknown or out of range."""
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise InvalidInputError(name, "tensor_shape has unknown rank")
    if len(shape.dim) > MAX_RANK:
        raise InvalidInputError(name, f"rank {len(shape.dim)} exceeds {MAX_RANK}")
    dims = tuple(d.size for d in shape.dim)
    for d in dims:
        if d < 0 or d > MAX_ELEMENTS:
            raise InvalidInputError(name, f"dimension {d} out of range in shape {list(dims)}")
    return dims


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "tensor") -> npt.NDArray[Any]:
    """The numpy array a request tensor holds; string tensors become object arrays of ``bytes``.

    Raises InvalidInputError (naming the input ``name``) for anything it cannot decode, and nothing else.
    """
    return _decode(name, proto, proto_shape(name, proto))


def _decode(name: str, proto: tensor_pb2.TensorProto, dims: tuple[int, ...]) -> npt.NDArray[Any]:
    dt = _DTYPES.get(proto.dtype)
    if dt is None:
        raise InvalidInputError(name, f"unsupported dtype {dtype_name(proto.dtype)}")
    size = math.prod(dims)
    if size > MAX_ELEMENTS:
        raise InvalidInputError(name, f"{size} elements exceed the limit of {MAX_ELEMENTS}")
    content = proto.tensor_content
    if content:
        if proto.dtype == types_pb2.DT_STRING:
            raise InvalidInputError(name, "string tensors cannot use tensor_content")
        if len(content) != size * dt.numpy.itemsize:
            raise InvalidInputError(
                name,
                f"tensor_content has {len(content)} bytes, shape {list(dims)} of {dt.name} needs "
                f"{size * dt.numpy.itemsize}",
            )
        return np.frombuffer(content, dtype=dt.numpy).reshape(dims)
    values = getattr(proto, dt.field)
    n = len(values)
    if n > size:
        raise InvalidInputError(name, f"{n} values given but shape {list(dims)} holds {size}")
    flat = _typed_values(proto.dtype, dt, values)
    if n < size:
        fill = flat[-1] if n else (b"" if dt.numpy.kind == "O" else 0)
        flat = np.concatenate([flat, np.full(size - n, fill, dtype=dt.numpy)])
    return flat.reshape(dims)


def _typed_values(dtype: int, dt: _DType, values: Any) -> npt.NDArray[Any]:
    if dtype == types_pb2.DT_STRING:
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out
    if dtype == types_pb2.DT_HALF:  # half_val holds the IEEE bit patterns in an int32 field
        return np.asarray(values, dtype=np.int64).astype("<u2").view(dt.numpy)
    if dt.field == "int_val" and dtype != types_pb2.DT_INT32:  # narrower ints: truncate like static_cast
        return np.asarray(values, dtype=np.int64).astype(dt.numpy)
    return np.asarray(values, dtype=dt.numpy)


def to_tensor_proto(array: npt.ArrayLike, out: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """Write ``array`` into ``out`` (or a new TensorProto) using the typed ``*_val`` field.

    Strings (``bytes``/``str`` arrays, object arrays) become DT_STRING; raises TypeError for numpy dtypes
    with no TensorFlow counterpart here (complex, datetime).
    """
    proto = tensor_pb2.TensorProto() if out is None else out
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(_as_bytes(v) for v in array.ravel().tolist())
    else:
        enum = _BY_NUMPY.get(array.dtype.newbyteorder("="))
        if enum is None:
            raise TypeError(f"cannot encode numpy dtype {array.dtype}")
        proto.dtype = enum
        flat = array.ravel()
        if enum == types_pb2.DT_HALF:
            flat = flat.view(np.uint16)
        getattr(proto, _DTYPES[enum].field).extend(flat.tolist())
    dims = proto.tensor_shape.dim
    for d in array.shape:
        dims.add(size=d)
    return proto


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def decode_inputs(
    specs: Mapping[str, TensorSpec], protos: Mapping[str, tensor_pb2.TensorProto]
) -> dict[str, npt.NDArray[Any]]:
    """Decode a request's inputs, checking them against the signature's: every input present and no other,
    dtype equal, rank equal and every known dimension equal. Raises InvalidInputError naming the input."""
    for name in protos:
        if name not in specs:
            raise InvalidInputError(name, f"not an input of the signature (inputs: {', '.join(sorted(specs))})")
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, spec in specs.items():
        proto = protos.get(name)
        if proto is None:
            raise InvalidInputError(name, "missing")
        if proto.dtype != spec.dtype:
            raise InvalidInputError(name, f"expected dtype {dtype_name(spec.dtype)}, got {dtype_name(proto.dtype)}")
        dims = proto_shape(name, proto)
        check_shape(name, spec, dims)
        arrays[name] = _decode(name, proto, dims)
    return arrays


def check_shape(name: str, spec: TensorSpec, shape: tuple[int, ...]) -> None:
    """Raise InvalidInputError unless ``shape`` fits ``spec.shape`` (same rank, known dims equal)."""
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape) or any(
        want is not None and want != got for want, got in zip(spec.shape, shape, strict=True)
    ):
        expected = ["None" if d is None else str(d) for d in spec.shape]
        raise InvalidInputError(name, f"expected shape [{', '.join(expected)}], got {list(shape)}")


def rows_of(shapes: Iterable[tuple[int, ...]]) -> int:
    """Rows (candidates) of a request: the largest leading dimension of its inputs, 0 if all are scalars."""
    return max((s[0] for s in shapes if s), default=0)
