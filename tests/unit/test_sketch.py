"""LatencySketch: quantiles within ALPHA of the exact ones (same rank convention), exact merges, encodings."""

from __future__ import annotations

import doctest
import math
import random
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_processors import sketch as sketch_module
from stream_processors.sketch import (
    ALPHA,
    GAMMA,
    LatencySketch,
    SketchDecodeError,
    key_of,
    representative,
    sql_merge_quantiles,
    sql_quantile,
    sql_quantiles,
)

LEVELS = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)
TOLERANCE = ALPHA * (1 + 1e-9)  # the bound holds up to float rounding at bucket edges


def exact_quantile(values: list[float], q: float) -> float:
    """ClickHouse ``quantileExactWeighted`` ranks on raw values: the ceil(n*q)-th smallest (at least the 1st)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(len(ordered) * q), 1) - 1]


def sketch_of(values: list[float]) -> LatencySketch:
    s = LatencySketch()
    s.add_many(values)
    return s


def _distribution(kind: str, seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    if kind == "lognormal":
        values = [rng.lognormvariate(7, 1.5) for _ in range(n)]
    elif kind == "pareto":  # heavy tail
        values = [100 * rng.paretovariate(1.1) for _ in range(n)]
    elif kind == "bimodal":
        values = [rng.gauss(500, 50) if rng.random() < 0.9 else rng.gauss(200_000, 30_000) for _ in range(n)]
    elif kind == "repeated":
        values = [float(rng.choice((1, 2, 1000, 1000, 1000, 5_000_000))) for _ in range(n)]
    else:  # integer microseconds, as the serving events carry them
        values = [float(rng.randint(1, 10_000_000)) for _ in range(n)]
    return [min(max(v, 1.0), 10_000_000.0) for v in values]


latencies = st.one_of(
    st.floats(min_value=1.0, max_value=10_000_000.0),
    st.integers(min_value=1, max_value=10_000_000),
    st.floats(min_value=0.0, max_value=7.0).map(lambda e: 10.0**e),  # log-uniform: every decade equally
)
samples = st.lists(latencies, min_size=1, max_size=300)


def _assert_within_alpha(values: list[float], s: LatencySketch) -> None:
    for q in LEVELS:
        exact = exact_quantile(values, q)
        got = s.quantile(q)
        assert abs(got - exact) <= TOLERANCE * exact, (q, exact, got)
        # stronger: the answer is the representative of the bucket holding the exact quantile
        assert got == representative(key_of(exact))


@given(samples)
def test_quantiles_within_alpha_of_exact(values: list[float]) -> None:
    _assert_within_alpha(values, sketch_of(values))


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["lognormal", "pareto", "bimodal", "repeated", "uniform_int"]),
    st.integers(0, 2**32),
    st.integers(1, 5000),
)
def test_quantiles_within_alpha_on_distributions(kind: str, seed: int, n: int) -> None:
    values = _distribution(kind, seed, n)
    _assert_within_alpha(values, sketch_of(values))


@given(st.lists(st.tuples(latencies, st.integers(1, 1000)), min_size=1, max_size=50))
def test_add_with_count_equals_repeated_adds(pairs: list[tuple[float, int]]) -> None:
    weighted, repeated = LatencySketch(), LatencySketch()
    for value, n in pairs:
        weighted.add(value, n)
        for _ in range(n):
            repeated.add(value)
    assert weighted == repeated
    _assert_within_alpha([v for v, n in pairs for _ in range(n)], weighted)


@given(samples, samples)
def test_merge_equals_sketch_of_concatenation(a: list[float], b: list[float]) -> None:
    merged = sketch_of(a)
    merged.merge(sketch_of(b))
    whole = sketch_of(a + b)
    assert merged == whole
    assert merged.to_arrays() == whole.to_arrays()
    assert merged.count == len(a) + len(b)
    assert (merged.min, merged.max) == (min(a + b), max(a + b))


@given(samples, samples, samples)
def test_merge_is_associative_and_commutative(a: list[float], b: list[float], c: list[float]) -> None:
    sa, sb, sc = sketch_of(a), sketch_of(b), sketch_of(c)
    left = sa.copy()
    left.merge(sb)
    left.merge(sc)
    bc = sb.copy()
    bc.merge(sc)
    right = sa.copy()
    right.merge(bc)
    swapped = sc.copy()
    swapped.merge(sb)
    swapped.merge(sa)
    assert left == right == swapped
    assert sa == sketch_of(a)  # copies were merged into, not the originals


def test_merge_with_empty_is_identity() -> None:
    s = sketch_of([3.0, 70.0])
    s.merge(LatencySketch())
    assert s == sketch_of([3.0, 70.0])
    empty = LatencySketch()
    empty.merge(s)
    assert empty == s


@given(st.lists(st.one_of(latencies, st.just(0), st.floats(0.0, 0.999)), max_size=200))
def test_bytes_and_arrays_round_trip(values: list[float]) -> None:
    s = sketch_of(values)
    assert LatencySketch.from_bytes(s.to_bytes()) == s
    keys, counts = s.to_arrays()
    assert keys == sorted(set(keys))
    assert all(n >= 1 for n in counts)
    assert sum(counts) == s.count == len(values)
    assert LatencySketch.from_arrays(keys, counts, min_value=s.min, max_value=s.max) == s
    restored = LatencySketch.from_arrays(keys, counts)  # min/max estimated from the buckets
    assert restored.to_arrays() == (keys, counts)
    if values:
        assert restored.quantiles(LEVELS) == s.quantiles(LEVELS)


def test_binary_format_is_as_documented() -> None:
    s = LatencySketch()
    s.add(0)
    s.add(1, 2)
    s.add(10, 300)
    k = key_of(10)
    assert k < 128  # one varint byte
    expected = bytes([1, 3]) + struct.pack("<dd", 0, 10) + bytes([0, 1, k - 1]) + bytes([1, 2]) + bytes([0xAC, 0x02])
    assert s.to_bytes() == expected
    assert LatencySketch().to_bytes() == b"\x01\x00"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x02\x00", b"\x01\x00\x00", b"\x01\x01", b"\x01\x01" + b"\x00" * 16, b"\x01\x80"],
    ids=["empty", "version", "trailing", "no-minmax", "truncated", "varint"],
)
def test_from_bytes_rejects_malformed_input(data: bytes) -> None:
    with pytest.raises(SketchDecodeError):
        LatencySketch.from_bytes(data)


def test_from_bytes_rejects_non_increasing_keys_and_zero_counts() -> None:
    minmax = struct.pack("<dd", 1, 2)
    with pytest.raises(SketchDecodeError, match="increase"):
        LatencySketch.from_bytes(b"\x01\x02" + minmax + b"\x01\x00\x01\x01")
    with pytest.raises(SketchDecodeError, match="counts"):
        LatencySketch.from_bytes(b"\x01\x01" + minmax + b"\x01\x00")


def test_from_arrays_validates_and_merges_repeated_keys() -> None:
    with pytest.raises(SketchDecodeError):
        LatencySketch.from_arrays([1, 2], [1])
    with pytest.raises(SketchDecodeError):
        LatencySketch.from_arrays([-1], [1])
    s = LatencySketch.from_arrays([5, 3, 5, 9], [1, 2, 3, 0])
    assert s.to_arrays() == ([3, 5], [2, 4])
    assert (s.min, s.max) == (representative(3), representative(5))


def test_empty_sketch() -> None:
    s = LatencySketch()
    assert s.count == 0 and len(s) == 0
    assert math.isnan(s.quantile(0.5))
    assert all(math.isnan(v) for v in s.quantiles([0.0, 1.0]))
    assert math.isnan(s.min) and math.isnan(s.max)
    assert s.to_arrays() == ([], [])
    assert s == LatencySketch()


def test_sub_microsecond_values_go_to_the_zero_bucket() -> None:
    s = sketch_of([0, 0.0, 0.5, 0.999])
    assert s.to_arrays() == ([0], [4])
    assert s.quantile(0.5) == 0.0 and s.quantile(1.0) == 0.0
    assert s.min == 0 and s.max == 0.999
    s.add(1)
    assert s.to_arrays() == ([0, 1], [4, 1])
    assert s.quantile(1.0) == pytest.approx(1.0, rel=ALPHA)


def test_bucket_convention() -> None:
    assert key_of(0) == 0 and key_of(0.99) == 0
    assert key_of(1) == 1
    assert key_of(GAMMA * 1.000001) == 3  # just above the upper edge of key 2, which is GAMMA**1
    assert key_of(10_000_000) == 807
    for key in range(1, 2000):
        upper = GAMMA ** (key - 1)
        rep = representative(key)
        assert abs(rep - upper) <= TOLERANCE * upper  # upper edge of the bucket
        assert abs(rep - upper / GAMMA) <= TOLERANCE * upper / GAMMA  # lower edge


def test_huge_values_do_not_overflow() -> None:
    s = sketch_of([sys.float_info.max])
    assert s.quantile(0.5) == math.inf  # the bucket's representative is beyond float64, as in SQL
    assert s.max == sys.float_info.max


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf])
def test_rejects_values_that_are_not_latencies(bad: float) -> None:
    s = LatencySketch()
    with pytest.raises(ValueError):
        s.add(bad)
    with pytest.raises(ValueError):
        key_of(bad)
    assert s == LatencySketch()


def test_rejects_bad_counts_and_levels() -> None:
    s = sketch_of([10.0])
    with pytest.raises(ValueError):
        s.add(5, 0)
    for level in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            s.quantile(level)
        with pytest.raises(ValueError):
            sql_quantile(level, "k", "c")
    with pytest.raises(ValueError):
        sql_quantiles([], "k", "c")


def test_rank_convention_matches_clickhouse_examples() -> None:
    # quantilesExactWeighted(0, .3, .5, .9, 1) over [1.5, 1.5, 10, 100] is [1.5, 1.5, 1.5, 100, 100] in
    # ClickHouse 18.16 and 26.x: the smallest value whose running weight reaches ceil(n * level).
    values = [1.5, 1.5, 10.0, 100.0]
    s = sketch_of(values)
    got = s.quantiles([0.0, 0.3, 0.5, 0.9, 1.0])
    assert got == [representative(key_of(v)) for v in (1.5, 1.5, 1.5, 100.0, 100.0)]


def test_sql_fragments() -> None:
    assert sql_quantile(0.99, "k", "c") == (
        f"quantileExactWeighted(0.99)(if(k = 0, 0., pow({GAMMA!r}, k - 1) * {2 / (GAMMA + 1)!r}), c)"
    )
    sql = sql_merge_quantiles("t", "ks", "cs", [0.5, 0.99], group_by=["model"], where="model != ''")
    assert sql.startswith("SELECT model, quantilesExactWeighted(0.5, 0.99)(")
    assert sql.endswith(
        "AS quantiles FROM t ARRAY JOIN ks AS _sketch_key, cs AS _sketch_count WHERE model != '' "
        "GROUP BY model ORDER BY model"
    )


def test_docstring_examples() -> None:
    result = doctest.testmod(sketch_module)
    assert result.attempted > 0
    assert result.failed == 0


def test_count_above_matches_the_exact_count_outside_the_error_band() -> None:
    import random

    from stream_processors.sketch import LatencySketch

    rng = random.Random(3)
    values = [rng.lognormvariate(9.0, 0.6) for _ in range(20_000)]
    sketch = LatencySketch()
    sketch.add_many(values)
    for threshold in (2_000.0, 8_000.0, 20_000.0, 60_000.0):
        exact_lo = sum(v > threshold * 1.02 for v in values)
        exact_hi = sum(v > threshold * 0.98 for v in values)
        assert exact_lo <= sketch.count_above(threshold) <= exact_hi
    assert sketch.count_above(0.0) == len(values) and sketch.count_above(1e12) == 0
