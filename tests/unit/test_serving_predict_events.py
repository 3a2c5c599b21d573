"""What an event says about a request's outputs: the summary a drift detector and a SQL user read."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.predict import HEAD_VALUES, _output_summary


@pytest.mark.parametrize(
    "array",
    [
        np.linspace(0.01, 0.99, 32, dtype=np.float32),
        np.arange(300, dtype=np.float64) / 7,  # above the small-output size: numpy's reductions
        np.array([5, -3, 9], dtype=np.int64),
        np.array([2**63 + 5, 7], dtype=np.uint64),
        np.array([True, False, True]),
        np.array([[0.5, 0.25], [1.0, 0.0]], dtype=np.float32),
    ],
)
def test_mean_min_max_and_head_are_those_of_the_values(array: np.ndarray) -> None:
    summary = _output_summary("scores", array)
    flat = array.ravel()
    assert summary.count == flat.size
    assert summary.mean == pytest.approx(float(flat.astype(np.float64).mean()), rel=1e-6)  # a float field
    assert summary.min == pytest.approx(float(flat.min()))
    assert summary.max == pytest.approx(float(flat.max()))
    np.testing.assert_allclose(list(summary.head), flat[:HEAD_VALUES].astype(np.float32), rtol=1e-7)


def test_a_nan_makes_min_and_max_nan_wherever_it_is() -> None:
    for array in (np.array([np.nan, 1.0, 2.0]), np.array([1.0, 2.0, np.nan])):
        summary = _output_summary("scores", array)
        assert math.isnan(summary.mean) and math.isnan(summary.min) and math.isnan(summary.max)


def test_infinities_stay_infinite_in_min_and_max() -> None:
    summary = _output_summary("scores", np.array([np.inf, -np.inf, 0.0]))
    assert summary.min == -math.inf and summary.max == math.inf and math.isnan(summary.mean)


def test_outputs_that_are_not_numbers_are_counted_only() -> None:
    summary = _output_summary("labels", np.array([b"a", b"b"], dtype=object))
    assert summary.count == 2 and not summary.head and summary.mean == 0.0
