"""``Signature.__call__`` takes a fast path below TensorFlow's keyword binding; it must answer exactly as the
SavedModel's public signature call does, and leave anything unusual to that public call."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from serving.errors import InvalidRequestError
from serving.model_repository import load_version

pytest_plugins = ["tests.serving_fixtures"]
pytestmark = pytest.mark.integration


def _inputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_id": rng.integers(0, 1000, rows).astype(np.int64),
        "item_id": rng.integers(0, 1000, rows).astype(np.int64),
        "features": rng.random((rows, 8), dtype=np.float32),
    }


def test_the_fast_path_answers_as_the_public_signature_call(
    tiny_model_base: Path, reference_scores: Callable[[dict[str, np.ndarray]], np.ndarray]
) -> None:
    signature = load_version(tiny_model_base / "1").signature()
    assert signature._flat is not None, "the tiny ranker's signature should get the flat call"
    public = dataclasses.replace(signature, _flat=None)
    for rows in (1, 32, 257):
        inputs = _inputs(rows, seed=rows)
        fast, slow = signature(inputs), public(inputs)
        assert fast.keys() == slow.keys() == {"scores"}
        np.testing.assert_array_equal(fast["scores"], slow["scores"])
        np.testing.assert_allclose(fast["scores"], reference_scores(inputs), rtol=1e-6)


def test_other_dtypes_and_row_mismatches_get_the_public_calls_errors(tiny_model_base: Path) -> None:
    signature = load_version(tiny_model_base / "1").signature()
    assert signature._flat is not None
    wrong_dtype = {**_inputs(4), "features": np.zeros((4, 8), dtype=np.float64)}
    assert not signature._flat.accepts(wrong_dtype)
    with pytest.raises(Exception) as fast_error:
        signature(wrong_dtype)
    with pytest.raises(Exception) as public_error:
        dataclasses.replace(signature, _flat=None)(wrong_dtype)
    assert type(fast_error.value) is type(public_error.value)
    mismatched = {**_inputs(4), "item_id": np.arange(3, dtype=np.int64)}
    with pytest.raises(InvalidRequestError, match="rejected the inputs"):
        signature(mismatched)
