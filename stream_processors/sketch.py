"""A mergeable latency sketch (DDSketch-style, log-bucketed) whose partial rows merge in Python and in SQL.

Latency percentiles of a window have to merge across windows, server replicas and Kafka partitions: the store
keeps one partial row per (window, model, version, label, replica, partition) and users merge rows in SQL. A
sketch is a sparse histogram over fixed logarithmic buckets, so merging is adding counts per bucket: exact,
associative and commutative, whatever the order rows arrive in.

Buckets (values in µs, int or float; relative accuracy ``ALPHA`` = 1 %, ``GAMMA`` = (1 + ALPHA) / (1 - ALPHA)):

- ``v < 1`` (sub-microsecond, including 0) goes to key 0, the zero bucket; its representative value is 0.
- ``v >= 1`` goes to key ``k = ceil(log(v) / log(GAMMA)) + 1`` (so ``k >= 1``; v = 1 µs is key 1). Key ``k``
  holds the values in ``(GAMMA**(k-2), GAMMA**(k-1)]`` and its representative value is
  ``GAMMA**(k-1) * 2 / (GAMMA + 1)``, within ``ALPHA`` relative error of every value in the bucket (up to
  floating-point rounding). 10 s is key 807; every finite float64 has a key below 35 500, so keys fit ``UInt16``.
- Negative, NaN and infinite values are rejected with ``ValueError``.

Quantiles use ClickHouse's ``quantileExactWeighted`` rank convention, so Python and SQL give the same answer:
with ``n`` values in total, ``quantile(q)`` is the representative of the first bucket (in key order) at which
the running count reaches ``ceil(n * q)`` (computed in float64, as ClickHouse does); ``q = 0`` gives the
smallest bucket. Because buckets are ordered like values, this is the representative of the bucket that holds
the exact quantile ``sorted(values)[max(ceil(n * q), 1) - 1]``, hence within ``ALPHA`` of it. The quantile of an
empty sketch is NaN (ClickHouse returns nan over no rows). ``min`` and ``max`` are tracked exactly in Python,
but quantiles are not clamped to them, so that SQL (which only sees the buckets) agrees.

Merging in SQL: store the sketch as two columns, ``latency_keys Array(UInt16)`` and ``latency_counts
Array(UInt64)`` (:meth:`LatencySketch.to_arrays`), and expand them with ``ARRAY JOIN``. Only ``ARRAY JOIN``,
``if``, ``pow`` and ``quantilesExactWeighted`` are used: all exist in ClickHouse 18.16 and in chDB::

    SELECT model, quantilesExactWeighted(0.5, 0.99)(
               if(_sketch_key = 0, 0., pow(1.02020202020202, _sketch_key - 1) * 0.9900000000000001),
               _sketch_count) AS latency_us
    FROM window_aggregates
    ARRAY JOIN latency_keys AS _sketch_key, latency_counts AS _sketch_count
    WHERE window_start >= now() - 3600
    GROUP BY model

:func:`sql_merge_quantiles` writes that statement. ``ARRAY JOIN`` repeats each row once per bucket, so other
aggregates (``sum(requests)``) belong in a separate query or subquery. ``sumMap(latency_keys, latency_counts)``
merges rows into one ``(keys, counts)`` tuple that :meth:`LatencySketch.from_arrays` reads back.

>>> s = LatencySketch()
>>> for v in (120, 130, 150, 900, 15_000):
...     s.add(v)
>>> s.count, s.max, round(s.quantile(0.5), 1)
(5, 15000, 149.9)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "ALPHA",
    "FORMAT_VERSION",
    "GAMMA",
    "LatencySketch",
    "SketchDecodeError",
    "key_of",
    "representative",
    "sql_merge_quantiles",
    "sql_quantile",
    "sql_quantiles",
    "sql_representative",
]

ALPHA: Final = 0.01
GAMMA: Final = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA: Final = math.log(GAMMA)
_REP_FACTOR: Final = 2.0 / (GAMMA + 1.0)  # representative = GAMMA**(key-1) * _REP_FACTOR

FORMAT_VERSION: Final = 1
_FLOAT64_PAIR: Final = struct.Struct("<dd")


class SketchDecodeError(ValueError):
    """Bytes or arrays that are not a valid sketch (unknown version, truncated, bad keys or counts)."""


def key_of(value: float) -> int:
    """The bucket key of a latency in µs (0 for values below 1 µs); ``ValueError`` for negative/NaN/inf."""
    if value >= 1.0:
        try:
            return math.ceil(math.log(value) / _LOG_GAMMA) + 1
        except OverflowError:
            raise ValueError(f"latency must be finite, got {value!r}") from None
    if value >= 0.0:
        return 0
    raise ValueError(f"latency must be >= 0, got {value!r}")


def representative(key: int) -> float:
    """The value a bucket stands for: 0 for key 0, else ``GAMMA**(key-1) * 2/(GAMMA+1)`` (same formula as SQL)."""
    if key == 0:
        return 0.0
    try:
        return math.pow(GAMMA, key - 1) * _REP_FACTOR
    except OverflowError:  # keys of values within 2 % of the float64 maximum; SQL's pow gives inf too
        return math.inf


class LatencySketch:
    """Counts of latencies (µs) per logarithmic bucket, with the exact count, min and max.

    Not thread-safe; one sketch per window and key in a single stream processor.
    """

    __slots__ = ("_buckets", "_count", "_max", "_min")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self._count = 0
        self._min: float = math.inf
        self._max: float = -math.inf

    # ------------------------------------------------------------------------------------------ updates

    def add(self, value: float, count: int = 1) -> None:
        """Record ``count`` occurrences of latency ``value`` (µs). Hot path: one log, one dict update."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count!r}")
        if value >= 1.0:
            try:
                key = math.ceil(math.log(value) / _LOG_GAMMA) + 1
            except OverflowError:
                raise ValueError(f"latency must be finite, got {value!r}") from None
        elif value >= 0.0:
            key = 0
        else:
            raise ValueError(f"latency must be >= 0, got {value!r}")
        buckets = self._buckets
        buckets[key] = buckets.get(key, 0) + count
        self._count += count
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value

    def add_many(self, values: Iterable[float]) -> None:
        """Record each latency of ``values`` once (same result as calling :meth:`add` per value)."""
        for value in values:
            self.add(value)

    def merge(self, other: LatencySketch) -> None:
        """Add ``other``'s counts into this sketch (in place). Exact: equals the sketch of both inputs."""
        buckets = self._buckets
        for key, n in other._buckets.items():
            buckets[key] = buckets.get(key, 0) + n
        self._count += other._count
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def copy(self) -> LatencySketch:
        """An independent sketch equal to this one."""
        new = LatencySketch()
        new._buckets = dict(self._buckets)
        new._count, new._min, new._max = self._count, self._min, self._max
        return new

    # ------------------------------------------------------------------------------------------ answers

    @property
    def count(self) -> int:
        """How many values were added (sum of counts)."""
        return self._count

    @property
    def min(self) -> float:
        """The exact smallest value added; NaN when empty."""
        return self._min if self._count else math.nan

    @property
    def max(self) -> float:
        """The exact largest value added; NaN when empty."""
        return self._max if self._count else math.nan

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 <= q <= 1) under ClickHouse's ``quantileExactWeighted`` ranks; NaN when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """Several quantiles with one sort of the buckets (as ``quantilesExactWeighted``)."""
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile level must be in [0, 1], got {q!r}")
        if not self._count:
            return [math.nan for _ in qs]
        keys = sorted(self._buckets)
        cumulative: list[int] = []
        running = 0
        for key in keys:
            running += self._buckets[key]
            cumulative.append(running)
        out: list[float] = []
        for q in qs:
            threshold = math.ceil(self._count * q)  # float64 product, like ClickHouse's UInt64 * Float64
            i = 0
            while cumulative[i] < threshold:
                i += 1
            out.append(representative(keys[i]))
        return out

    def count_above(self, value: float) -> int:
        """How many values exceed ``value``, to the sketch's resolution: the counts of the buckets whose
        representative is above it (a value within the relative error of ``value`` may fall either side)."""
        return sum(n for key, n in self._buckets.items() if representative(key) > value)

    # --------------------------------------------------------------------------------------- encodings

    def to_arrays(self) -> tuple[list[int], list[int]]:
        """Sparse ``(keys, counts)`` sorted by key, for the ``Array(UInt16)`` / ``Array(UInt64)`` columns."""
        keys = sorted(self._buckets)
        return keys, [self._buckets[k] for k in keys]

    @classmethod
    def from_arrays(
        cls,
        keys: Sequence[int],
        counts: Sequence[int],
        *,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> LatencySketch:
        """A sketch from sparse arrays (any key order; zero counts are dropped; repeated keys add up).

        Arrays do not carry the exact min and max: pass them if known, else they are estimated as the
        representatives of the smallest and largest non-empty buckets (within ``ALPHA``).
        """
        if len(keys) != len(counts):
            raise SketchDecodeError(f"{len(keys)} keys but {len(counts)} counts")
        sketch = cls()
        buckets = sketch._buckets
        for key, n in zip(keys, counts, strict=True):
            key, n = int(key), int(n)
            if key < 0 or n < 0:
                raise SketchDecodeError(f"bucket keys and counts must be >= 0, got key {key} count {n}")
            if n:
                buckets[key] = buckets.get(key, 0) + n
        sketch._count = sum(buckets.values())
        if sketch._count:
            sketch._min = min_value if min_value is not None else representative(min(buckets))
            sketch._max = max_value if max_value is not None else representative(max(buckets))
            if sketch._min > sketch._max:
                raise SketchDecodeError(f"min {sketch._min!r} > max {sketch._max!r}")
        return sketch

    def to_bytes(self) -> bytes:
        """The compact binary form (``WindowAggregate.latency_sketch``); format version 1:

        ``version: u8 = 1``, ``n: varint`` (non-empty buckets), then when ``n > 0``: ``min, max: float64 LE``,
        ``n`` key deltas (varint; the first is the key itself, keys strictly increase) and ``n`` counts (varint).
        Varints are unsigned LEB128. An empty sketch is ``b"\\x01\\x00"``. Version 1 implies ``ALPHA = 0.01`` and
        the key mapping of this module.
        """
        keys, counts = self.to_arrays()
        out = bytearray((FORMAT_VERSION,))
        _put_varint(out, len(keys))
        if keys:
            out += _FLOAT64_PAIR.pack(self._min, self._max)
            previous = 0
            for key in keys:
                _put_varint(out, key - previous)
                previous = key
            for n in counts:
                _put_varint(out, n)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencySketch:
        """Decode :meth:`to_bytes` output; ``SketchDecodeError`` for anything else."""
        if not data:
            raise SketchDecodeError("empty input: not a sketch")
        if data[0] != FORMAT_VERSION:
            raise SketchDecodeError(f"unknown sketch format version {data[0]}")
        n, pos = _get_varint(data, 1)
        if n == 0:
            if pos != len(data):
                raise SketchDecodeError(f"{len(data) - pos} trailing bytes")
            return cls()
        if pos + _FLOAT64_PAIR.size > len(data):
            raise SketchDecodeError("truncated sketch: min/max missing")
        min_value, max_value = _FLOAT64_PAIR.unpack_from(data, pos)
        pos += _FLOAT64_PAIR.size
        keys: list[int] = []
        key = 0
        for i in range(n):
            delta, pos = _get_varint(data, pos)
            if i and delta == 0:
                raise SketchDecodeError("bucket keys must strictly increase")
            key += delta
            keys.append(key)
        counts: list[int] = []
        for _ in range(n):
            count, pos = _get_varint(data, pos)
            if count == 0:
                raise SketchDecodeError("bucket counts must be >= 1")
            counts.append(count)
        if pos != len(data):
            raise SketchDecodeError(f"{len(data) - pos} trailing bytes")
        return cls.from_arrays(keys, counts, min_value=min_value, max_value=max_value)

    # ------------------------------------------------------------------------------------------ dunder

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencySketch):
            return NotImplemented
        return (
            self._buckets == other._buckets
            and self._count == other._count
            and self._min == other._min
            and self._max == other._max
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __len__(self) -> int:
        """Number of non-empty buckets (the length of the stored arrays)."""
        return len(self._buckets)

    def __repr__(self) -> str:
        return f"LatencySketch(count={self._count}, buckets={len(self._buckets)}, min={self.min}, max={self.max})"


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise SketchDecodeError("truncated sketch: varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise SketchDecodeError("varint longer than 64 bits")


# ------------------------------------------------------------------------------------------------- SQL


def _check_level(level: float) -> str:
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"quantile level must be in [0, 1], got {level!r}")
    return repr(float(level))


def sql_representative(key: str) -> str:
    """SQL for the representative value of bucket key expression ``key``; equals :func:`representative`."""
    return f"if({key} = 0, 0., pow({GAMMA!r}, {key} - 1) * {_REP_FACTOR!r})"


def sql_quantile(level: float, key: str, count: str) -> str:
    """SQL aggregate merging ARRAY-JOINed sketch buckets (``key``, ``count``) into the ``level`` quantile (µs)."""
    return f"quantileExactWeighted({_check_level(level)})({sql_representative(key)}, {count})"


def sql_quantiles(levels: Sequence[float], key: str, count: str) -> str:
    """Like :func:`sql_quantile` for several levels at once; the result is an ``Array(Float64)``."""
    if not levels:
        raise ValueError("at least one quantile level is needed")
    params = ", ".join(_check_level(level) for level in levels)
    return f"quantilesExactWeighted({params})({sql_representative(key)}, {count})"


def sql_merge_quantiles(
    table: str,
    keys_column: str,
    counts_column: str,
    levels: Sequence[float],
    group_by: Sequence[str] = (),
    where: str | None = None,
    alias: str = "quantiles",
) -> str:
    """A whole SELECT merging the sketches of all rows per ``group_by`` into quantiles (column ``alias``).

    Rows with empty sketches drop out (``ARRAY JOIN`` skips empty arrays); groups come back ordered.
    """
    key, count = "_sketch_key", "_sketch_count"
    columns = [*group_by, f"{sql_quantiles(levels, key, count)} AS {alias}"]
    sql = f"SELECT {', '.join(columns)} FROM {table} ARRAY JOIN {keys_column} AS {key}, {counts_column} AS {count}"
    if where:
        sql += f" WHERE {where}"
    if group_by:
        sql += f" GROUP BY {', '.join(group_by)} ORDER BY {', '.join(group_by)}"
    return sql
