"""The result cache: keys, byte-bounded LRU eviction, TTL on an injected clock, unload, opt-in per model."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from serving.cache import CacheStats, LruResultCache, cache_key
from serving.model_repository import LoadedModel, Signature

KEY_BYTES = 32


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def load(version: int = 1, name: str = "ranker") -> LoadedModel:
    return LoadedModel(name, version, Path("."), {}, {}, _root=None)


V1, V2, OTHER = load(1), load(2), load(1, "other")


def signature(name: str = "serving_default") -> Signature:
    return cast(Signature, type("FakeSignature", (), {"name": name})())


SIG = signature()


def inputs(seed: int = 0, rows: int = 4, id_dtype: Any = np.int64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "item_id": rng.integers(0, 1000, rows).astype(id_dtype),
        "features": rng.normal(size=(rows, 8)).astype(np.float32),
    }


def outputs(rows: int = 4, value: float = 0.5) -> dict[str, np.ndarray]:
    return {"scores": np.full(rows, value, np.float32), "ids": np.arange(rows, dtype=np.int64)}


def entry_size(rows: int = 4, names: tuple[str, ...] = ("scores",)) -> int:
    return KEY_BYTES + sum(outputs(rows)[n].nbytes for n in names)


def test_a_repeated_request_hits_with_equal_read_only_outputs() -> None:
    cache = LruResultCache(1 << 20)
    x, y = inputs(1), outputs()

    assert cache.get(V1, SIG, ["scores", "ids"], x) is None
    cache.put(V1, SIG, ["scores", "ids"], x, y)
    y["scores"][0] = 99.0  # the caller's later writes do not reach the cache
    hit = cache.get(V1, SIG, ["scores", "ids"], {k: v.copy() for k, v in x.items()})

    assert hit is not None
    np.testing.assert_array_equal(hit["scores"], outputs()["scores"])
    np.testing.assert_array_equal(hit["ids"], outputs()["ids"])
    with pytest.raises(ValueError):
        hit["scores"][0] = 1.0
    assert cache.stats() == CacheStats(
        hits=1, misses=1, evictions=0, expirations=0, bytes=entry_size(names=("scores", "ids")), entries=1
    )


def test_only_the_requested_outputs_are_stored() -> None:
    cache = LruResultCache(1 << 20)
    cache.put(V1, SIG, ["ids"], inputs(), outputs())
    hit = cache.get(V1, SIG, ["ids"], inputs())
    assert hit is not None and list(hit) == ["ids"]


@pytest.mark.parametrize(
    "change",
    [
        "version",
        "model",
        "signature",
        "output filter",
        "output order",
        "input dtype",
        "input shape",
        "input value",
        "input name",
    ],
)
def test_anything_that_changes_the_answer_changes_the_key(change: str) -> None:
    cache = LruResultCache(1 << 20)
    names, x = ["scores", "ids"], inputs(1)
    cache.put(V1, SIG, names, x, outputs())
    model, sig = V1, SIG
    if change == "version":
        model = V2
    elif change == "model":
        model = OTHER
    elif change == "signature":
        sig = signature("other")
    elif change == "output filter":
        names = ["scores"]
    elif change == "output order":
        names = ["ids", "scores"]
    elif change == "input dtype":
        x = {**x, "item_id": x["item_id"].astype(np.int32)}
    elif change == "input shape":
        x = {**x, "features": x["features"].reshape(8, 4)}
    elif change == "input value":
        x = {**x, "features": x["features"] + np.float32(1e-3)}
    else:
        x = {"item": x["item_id"], "features": x["features"]}
    assert cache.get(model, sig, names, x) is None


def test_key_is_canonical_over_input_order_and_memory_layout() -> None:
    x = inputs(3)
    reordered = {"features": np.asfortranarray(x["features"]), "item_id": x["item_id"]}
    assert cache_key("m", 1, "s", ["scores"], x) == cache_key("m", 1, "s", ["scores"], reordered)
    strings = {"q": np.array([b"ab", b"c"], dtype=object)}
    assert cache_key("m", 1, "s", ["o"], strings) != cache_key(
        "m", 1, "s", ["o"], {"q": np.array([b"a", b"bc"], dtype=object)}
    )


def test_string_inputs_are_cached_and_arbitrary_objects_are_not() -> None:
    cache = LruResultCache(1 << 20)
    text = {"query": np.array([b"red shoes", b"socks"], dtype=object)}
    cache.put(V1, SIG, ["scores"], text, outputs(2))
    assert cache.get(V1, SIG, ["scores"], {"query": np.array([b"red shoes", b"socks"], dtype=object)}) is not None
    weird = {"query": np.array([object()], dtype=object)}
    cache.put(V1, SIG, ["scores"], weird, outputs(1))
    assert cache.get(V1, SIG, ["scores"], weird) is None
    assert cache.stats().entries == 1


def test_least_recently_used_entries_are_evicted_to_stay_within_max_bytes() -> None:
    cache = LruResultCache(3 * entry_size())
    for seed in range(3):
        cache.put(V1, SIG, ["scores"], inputs(seed), outputs())
    assert cache.get(V1, SIG, ["scores"], inputs(0)) is not None  # 0 is now the most recently used

    cache.put(V1, SIG, ["scores"], inputs(3), outputs())  # evicts 1, the least recently used

    present = [seed for seed in range(4) if cache.get(V1, SIG, ["scores"], inputs(seed)) is not None]
    assert present == [0, 2, 3]
    stats = cache.stats()
    assert (stats.evictions, stats.entries, stats.bytes) == (1, 3, 3 * entry_size())


def test_an_answer_larger_than_the_cache_is_not_stored() -> None:
    cache = LruResultCache(entry_size(rows=4) - 1)
    cache.put(V1, SIG, ["scores"], inputs(), outputs(rows=4))
    assert cache.stats().entries == 0 and cache.stats().bytes == 0


def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock()
    cache = LruResultCache(1 << 20, ttl_s=30.0, clock=clock)
    cache.put(V1, SIG, ["scores"], inputs(), outputs())
    clock.now += 29.9
    assert cache.get(V1, SIG, ["scores"], inputs()) is not None
    clock.now += 0.1

    assert cache.get(V1, SIG, ["scores"], inputs()) is None

    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.expirations, stats.entries, stats.bytes) == (1, 1, 1, 0, 0)


def test_expired_entries_are_dropped_by_later_puts_without_being_read() -> None:
    clock = FakeClock()
    cache = LruResultCache(1 << 20, ttl_s=10.0, clock=clock)
    cache.put(V1, SIG, ["scores"], inputs(0), outputs())
    clock.now += 10.0
    cache.put(V1, SIG, ["scores"], inputs(1), outputs())
    assert cache.stats().entries == 1 and cache.stats().expirations == 1


def test_forget_empties_one_version_only() -> None:
    cache = LruResultCache(1 << 20)
    for model in (V1, V2, OTHER):
        cache.put(model, SIG, ["scores"], inputs(), outputs())

    cache.forget("ranker", 1)

    assert cache.get(V1, SIG, ["scores"], inputs()) is None
    assert cache.get(V2, SIG, ["scores"], inputs()) is not None
    assert cache.get(OTHER, SIG, ["scores"], inputs()) is not None
    assert cache.stats().entries == 2 and cache.stats().bytes == 2 * entry_size()


def test_an_answer_of_an_unloaded_version_arriving_late_is_not_stored() -> None:
    cache = LruResultCache(1 << 20)
    v3 = load(3)
    cache.put(v3, SIG, ["scores"], inputs(0), outputs())
    cache.forget("ranker", 3)

    cache.put(v3, SIG, ["scores"], inputs(1), outputs())  # a request in flight during the unload

    assert cache.stats().entries == 0
    reloaded = load(3)  # the same version number loaded again is a new object: cached as usual
    cache.put(reloaded, SIG, ["scores"], inputs(1), outputs())
    assert cache.get(reloaded, SIG, ["scores"], inputs(1)) is not None


def test_models_not_opted_in_always_miss_and_are_not_counted() -> None:
    cache = LruResultCache(1 << 20, models={"ranker"})
    cache.put(OTHER, SIG, ["scores"], inputs(), outputs())
    assert cache.get(OTHER, SIG, ["scores"], inputs()) is None
    cache.put(V1, SIG, ["scores"], inputs(), outputs())
    assert cache.get(V1, SIG, ["scores"], inputs()) is not None
    assert cache.stats() == CacheStats(hits=1, misses=0, evictions=0, expirations=0, bytes=entry_size(), entries=1)
    assert not cache.applies_to("other") and cache.applies_to("ranker")


def test_concurrent_use_keeps_the_byte_bound_and_the_counts() -> None:
    cache = LruResultCache(10 * entry_size())
    requests = [inputs(seed) for seed in range(40)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(400):
                x = requests[(i * 7 + offset) % len(requests)]
                if cache.get(V1, SIG, ["scores"], x) is None:
                    cache.put(V1, SIG, ["scores"], x, outputs())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    stats = cache.stats()
    assert stats.hits + stats.misses == 4 * 400
    assert stats.entries == 10 and stats.bytes == 10 * entry_size()
    assert 0 < stats.evictions <= stats.misses - 10  # every miss stored its answer; 10 stayed


def test_put_stores_under_its_own_inputs_even_after_a_get_of_other_inputs() -> None:
    cache = LruResultCache(1 << 20)
    asked, answered = inputs(1), inputs(2)
    assert cache.get(V1, SIG, ["scores"], asked) is None
    cache.put(V1, SIG, ["scores"], answered, outputs())
    assert cache.get(V1, SIG, ["scores"], asked) is None
    assert cache.get(V1, SIG, ["scores"], answered) is not None
