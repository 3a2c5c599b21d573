"""Columns of plain Python values -> an Arrow table typed after the ClickHouse column types.

Used to hand blocks to chDB (``INSERT … SELECT … FROM Python(table)``) and to ship them to the chDB daemon.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

_SCALARS: dict[str, pa.DataType] = {
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "String": pa.string(),
    "DateTime": pa.uint32(),  # Unix seconds; ClickHouse casts on INSERT … SELECT
    "Date": pa.uint16(),  # days since epoch
    "Bool": pa.bool_(),
}


def arrow_type(clickhouse_type: str) -> pa.DataType | None:
    """The Arrow type carrying values of ``clickhouse_type``, or None to let Arrow infer it."""
    t = clickhouse_type.strip()
    for wrapper in ("LowCardinality(", "Nullable("):
        if t.startswith(wrapper):
            return arrow_type(t[len(wrapper) : -1])
    if t.startswith("Array("):
        inner = arrow_type(t[len("Array(") : -1])
        return pa.list_(inner) if inner is not None else None
    if t.startswith("DateTime"):
        return pa.uint32()
    return _SCALARS.get(t)


def to_arrow(columns: Mapping[str, Sequence[Any]], types: Mapping[str, str]) -> pa.Table:
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
    arrays = {}
    for name, values in columns.items():
        ch_type = types.get(name)
        if ch_type is None:
            raise KeyError(name)
        arrays[name] = pa.array(values, type=arrow_type(ch_type))
    return pa.table(arrays)
