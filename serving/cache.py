"""A result cache: a repeated request is answered from memory instead of running the model.

Opt-in per model: only the models named at construction are cached; a request to any other misses at once,
without hashing its inputs, and is not counted. For a cached model the key is a BLAKE2b digest of the model
name, version, signature name, the requested output names (in request order) and each input's name, dtype,
shape and C-contiguous bytes, inputs sorted by name. Two requests share an entry only if all of these are
equal, so a different ``output_filter``, an ``int32`` instead of an ``int64`` input, or another version misses.

Bounds and lifetime:

- **Bytes**: the entries' output arrays (``nbytes``; string tensors also count their values' lengths) plus
  their keys never exceed ``max_bytes``; the least recently used entries are evicted to make room. An answer
  larger than ``max_bytes`` is not stored.
- **TTL**: an entry is served for ``ttl_s`` seconds after it was stored (``None``: until evicted), measured
  with the injected monotonic ``clock``.
- **Unload**: :meth:`LruResultCache.forget` (wired to ``ModelManager(on_unload=...)``) drops a version's
  entries; an answer computed by that version and stored afterwards (a request in flight during the unload) is
  not kept.

Stored outputs are read-only copies, so callers can neither change an entry nor see their own later writes in
it. All methods are thread-safe; hashing and copying happen outside the lock::

    cache = LruResultCache(64 << 20, ttl_s=30.0, models={"ranker"})
    predictor = Predictor(manager, publisher, replica="r", cache=cache)
    cache.stats().hits
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from serving.model_repository import LoadedModel, Signature

__all__ = ["CacheStats", "LruResultCache"]

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class CacheStats:
    """Counters since construction (hits, misses, evictions, expirations) and the current size."""

    hits: int
    misses: int
    evictions: int  # entries dropped to stay within max_bytes
    expirations: int  # entries found past their TTL
    bytes: int
    entries: int


@dataclass(frozen=True, eq=False)
class _Entry:
    model: str
    version: int
    outputs: Arrays
    size: int
    expires_at: float


class LruResultCache:
    """A :class:`~serving.predict.ResultCache` bounded in bytes, with a TTL, for the models in ``models``
    (every model if ``None``)."""

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float | None = None,
        *,
        models: Iterable[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0 or None, got {ttl_s}")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.models = None if models is None else frozenset(models)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._expirations = 0
        self._last_seen: dict[tuple[str, int], weakref.ref[LoadedModel]] = {}
        self._unloaded: dict[int, weakref.ref[LoadedModel]] = {}  # id -> forgotten model objects still alive
        self._memo = threading.local()

    def applies_to(self, model_name: str) -> bool:
        return self.models is None or model_name in self.models

    def get(self, model: LoadedModel, signature: Signature, names: Sequence[str], inputs: Arrays) -> Arrays | None:
        if not self.applies_to(model.name):
            return None
        key = cache_key(model.name, model.version, signature.name, names, inputs)
        self._memo.last = (model, signature, names, inputs, key)  # put() after a miss reuses the key
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key) if key is not None else None
            if key is None or entry is None:
                self._misses += 1
                return None
            if entry.expires_at <= now:
                self._drop(key, entry)
                self._expirations += 1
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return dict(entry.outputs)

    def put(
        self, model: LoadedModel, signature: Signature, names: Sequence[str], inputs: Arrays, outputs: Arrays
    ) -> None:
        if not self.applies_to(model.name):
            return
        last = getattr(self._memo, "last", None)
        self._memo.last = None
        if last is not None and all(a is b for a, b in zip(last, (model, signature, names, inputs), strict=False)):
            key = last[4]  # the same call's get() hashed these very objects (Predictor never changes them between)
        else:
            key = cache_key(model.name, model.version, signature.name, names, inputs)
        if key is None:
            return
        stored = {name: _frozen_copy(outputs[name]) for name in names}
        size = len(key) + sum(_size(a) for a in stored.values())
        if size > self.max_bytes:
            return
        now = self._clock()
        expires_at = now + self.ttl_s if self.ttl_s is not None else float("inf")
        with self._lock:
            unloaded = self._unloaded.get(id(model))
            if unloaded is not None and unloaded() is model:
                return  # computed by a version that has been unloaded meanwhile
            seen = self._last_seen.get((model.name, model.version))
            if seen is None or seen() is not model:
                self._last_seen[(model.name, model.version)] = weakref.ref(model)
            old = self._entries.get(key)
            if old is not None:
                self._drop(key, old)
            self._entries[key] = _Entry(model.name, model.version, stored, size, expires_at)
            self._bytes += size
            while self._bytes > self.max_bytes:
                lru_key, lru = next(iter(self._entries.items()))
                self._drop(lru_key, lru)
                if lru.expires_at <= now:
                    self._expirations += 1
                else:
                    self._evictions += 1
            for _ in range(2):  # expired entries at the LRU end go early, a few per put
                lru_key, lru = next(iter(self._entries.items()))
                if lru.expires_at > now:
                    break
                self._drop(lru_key, lru)
                self._expirations += 1

    def forget(self, model_name: str, version: int) -> None:
        """Drop the entries of an unloaded version (``ModelManager(on_unload=...)``)."""
        with self._lock:
            for key, entry in [
                (k, e) for k, e in self._entries.items() if (e.model, e.version) == (model_name, version)
            ]:
                self._drop(key, entry)
            ref = self._last_seen.pop((model_name, version), None)
            model = ref() if ref is not None else None
            if model is not None:
                model_id = id(model)
                self._unloaded[model_id] = weakref.ref(model, lambda _: self._unloaded.pop(model_id, None))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits, self._misses, self._evictions, self._expirations, self._bytes, len(self._entries)
            )

    def _drop(self, key: bytes, entry: _Entry) -> None:  # holding self._lock
        del self._entries[key]
        self._bytes -= entry.size


def cache_key(model: str, version: int, signature: str, output_names: Sequence[str], inputs: Arrays) -> bytes | None:
    """The 32-byte key of a request, or None if an input holds objects other than ``bytes``/``str``."""
    names = sorted(inputs)
    arrays = [inputs[name] for name in names]
    # repr() of str/int tuples is unambiguous, and the shapes and dtypes fix every numeric input's byte length.
    meta = (model, version, signature, tuple(output_names), [(n, inputs[n].dtype.str, inputs[n].shape) for n in names])
    h = hashlib.blake2b(repr(meta).encode(), digest_size=32)
    for array in arrays:
        if array.dtype.kind != "O":
            h.update(np.ascontiguousarray(array).data.cast("B"))
            continue
        for value in array.ravel().tolist():  # string tensors: length-prefixed values
            if isinstance(value, bytes):
                data = b"b" + value
            elif isinstance(value, str):
                data = b"s" + value.encode()
            else:
                return None
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.digest()


def _frozen_copy(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    copy = np.array(array, copy=True, order="C")
    copy.flags.writeable = False
    return copy


def _size(array: npt.NDArray[Any]) -> int:
    if array.dtype.kind == "O":
        return int(array.nbytes) + sum(len(v) for v in array.ravel().tolist() if isinstance(v, bytes | str))
    return int(array.nbytes)
