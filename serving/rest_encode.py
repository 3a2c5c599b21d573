"""Prediction outputs -> TF Serving's JSON answers, and its error body, for the REST front end.

A row-format request (``instances``) is answered ``{"predictions": ...}``: the single output's rows, or one
object of output name -> value per row. A columnar request (``inputs``) is answered ``{"outputs": ...}``: the
single output's tensor, or an object of output name -> tensor. float16/float32 values are written in their
shortest round-trip digits (``0.1``, not ``0.10000000149011612``), non-finite ones as ``NaN``, ``Infinity``,
``-Infinity``, all as TF Serving writes them. String outputs are UTF-8 text, or ``{"b64": ...}`` when the output's
name ends in ``_bytes`` (TF Serving's rule) or the bytes are not UTF-8 (TF Serving would write invalid JSON).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from serving.errors import InvalidRequestError

Format = Literal["row", "columnar"]  # of the request, "instances" or "inputs"; the answer follows it
B64_KEY: Final = "b64"
BYTES_SUFFIX: Final = "_bytes"
_COMPACT: Final = (",", ":")


def encode_predict_response(outputs: Mapping[str, npt.NDArray[Any]], fmt: Format) -> bytes:
    """The JSON answer to a ``:predict`` request in ``fmt``; raises InvalidRequestError when the outputs cannot
    be written in the row format (a scalar output, or outputs with different batch sizes)."""
    if not outputs:
        raise InvalidRequestError("Cannot convert empty tensor map to JSON")
    if fmt == "columnar":
        if len(outputs) == 1:
            ((name, array),) = outputs.items()
            return f'{{"outputs":{tensor_json(name, array)}}}'.encode()
        members = ",".join(f"{json.dumps(name)}:{tensor_json(name, array)}" for name, array in outputs.items())
        return f'{{"outputs":{{{members}}}}}'.encode()
    batch = -1
    for name, array in outputs.items():
        if array.ndim == 0:
            raise InvalidRequestError(f"Tensor name: {name} has no shape information (use the columnar format)")
        if batch >= 0 and array.shape[0] != batch:
            raise InvalidRequestError(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch} "
                "(use the columnar format)"
            )
        batch = array.shape[0]
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return f'{{"predictions":{tensor_json(name, array)}}}'.encode()
    per_output = [(json.dumps(name), [tensor_json(name, row) for row in array]) for name, array in outputs.items()]
    objects = ",".join("{" + ",".join(f"{key}:{rows[i]}" for key, rows in per_output) + "}" for i in range(batch))
    return f'{{"predictions":[{objects}]}}'.encode()


def tensor_json(name: str, array: npt.NDArray[Any]) -> str:
    """``array`` as nested JSON lists; float16/32 in their shortest round-trip digits, as TF Serving writes."""
    kind = array.dtype.kind
    if kind in "OSU":
        as_b64 = name.endswith(BYTES_SUFFIX)
        flat = [_string_json(v, as_b64) for v in array.ravel().tolist()]
        if array.ndim == 0:
            return json.dumps(flat[0])
        nested = np.empty(len(flat), dtype=object)
        nested[:] = flat
        return json.dumps(nested.reshape(array.shape).tolist(), separators=_COMPACT)
    if kind == "f" and array.dtype.itemsize < 8:
        texts = array.astype(str)
        if not np.isfinite(array).all():
            special = np.where(np.isnan(array), "NaN", np.where(array > 0, "Infinity", "-Infinity"))
            texts = np.where(np.isfinite(array), texts, special)
        # the texts are JSON numbers (digits, '.', 'e', sign) or NaN/Infinity: dropping the quotes is safe
        return json.dumps(texts.tolist(), separators=_COMPACT).replace('"', "")
    if kind in "biuf":
        return json.dumps(array.tolist(), separators=_COMPACT)
    raise InvalidRequestError(f"output {name!r}: dtype {array.dtype} cannot be written as JSON")


def _string_json(value: Any, as_b64: bool) -> Any:
    if isinstance(value, str):
        value = value.encode()
    if not as_b64:
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass  # not text: base64 rather than lose bytes (TF Serving would write invalid UTF-8)
    return {B64_KEY: base64.b64encode(value).decode("ascii")}


def error_json(message: str) -> bytes:
    """TF Serving's error body."""
    return json.dumps({"error": message}).encode()
