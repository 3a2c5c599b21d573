"""Sampling by request id: the same decision in every process, and the configured fraction of requests."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from producers.sampling import Sampler

IDS = [f"req-{i}" for i in range(200)] + [f"{random.Random(7).getrandbits(128):032x}"]


def test_the_decision_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "import json, sys; from producers.sampling import Sampler; s = Sampler(0.3); "
        "print(json.dumps([s.keep(i) for i in json.load(sys.stdin)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(IDS), capture_output=True, text=True, env=env, check=True
    )
    here = Sampler(0.3)
    assert json.loads(out.stdout) == [here.keep(i) for i in IDS]


def test_the_hash_is_pinned() -> None:
    # Changing the hash changes which requests every replica logs (and breaks joins with services that sample
    # the same ids): these literals pin BLAKE2b-64 of the UTF-8 request id.
    assert [Sampler(0.5).keep(f"req-{i}") for i in range(16)] == [True] * 5 + [False, True] + [False, True] * 4 + [
        False
    ]


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("kind", ["uuid", "sequential"])
def test_the_rate_is_honoured(rate: float, kind: str) -> None:
    n = 50_000
    rng = random.Random(1)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(n)] if kind == "uuid" else [f"r{i}" for i in range(n)]
    kept = sum(Sampler(rate).keep(i) for i in ids)
    sigma = (n * rate * (1 - rate)) ** 0.5
    assert abs(kept - n * rate) < 5 * sigma


def test_kept_sets_are_nested_across_rates() -> None:
    ids = [f"r{i}" for i in range(5000)]
    low = {i for i in ids if Sampler(0.1).keep(i)}
    high = {i for i in ids if Sampler(0.3).keep(i)}
    assert low < high


def test_rate_bounds() -> None:
    assert all(Sampler(1.0).keep(i) for i in IDS)
    assert not any(Sampler(0.0).keep(i) for i in IDS)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            Sampler(bad)
