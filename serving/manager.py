"""Which model versions are loaded, which labels point where, and how unversioned requests are routed.

A :class:`ModelManager` keeps an immutable snapshot of the served state and swaps it atomically, so a
request that resolved a version keeps using it until it finishes, while new requests see the new state:

- **New versions** under a model's base path are found by :meth:`ModelManager.poll_once` (run by the polling
  thread every ``--file_system_poll_wait_seconds``), loaded and *warmed up* before the snapshot includes
  them, so no request pays for TensorFlow's first-call tracing.
- **A version that fails to load** is reported (GetModelStatus) and not retried; the versions already loaded
  keep serving until a wanted version is up (availability first, as TF Serving's default policy).
- **Old versions** leave the snapshot first; in-flight requests still hold them and finish normally; the
  ``on_unload`` hook (the result cache) runs after the swap. Nothing is torn down under a running request.
- **Routing** of a request that names neither a version nor a label: if the model has ``stable`` and
  ``canary`` labels and a canary weight w > 0, a deterministic hash of the request id sends a share w of
  requests to ``canary`` and the rest to ``stable`` (the same request id always lands on the same arm);
  otherwise ``stable`` if labelled, else the latest loaded version.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from serving.config import ModelConfig
from serving.errors import ModelLoadError, ModelNotFoundError
from serving.model_repository import LoadedModel, list_versions, load_version

log = logging.getLogger(__name__)

STABLE: Final = "stable"
CANARY: Final = "canary"

# TF Serving's ModelVersionStatus.State numbers (get_model_status.proto)
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50


@dataclass(frozen=True)
class ModelState:
    config: ModelConfig
    versions: Mapping[int, LoadedModel] = field(default_factory=dict)
    labels: Mapping[str, int] = field(default_factory=dict)
    canary_weight: float = 0.0


@dataclass(frozen=True)
class Resolved:
    """The version a request is served by, and the label that routed it ("" if none did)."""

    model: LoadedModel
    label: str


Loader = Callable[[Path, str], LoadedModel]


def _default_loader(path: Path, name: str) -> LoadedModel:
    return load_version(path, model_name=name)


def route_fraction(request_id: str) -> float:
    """A deterministic number in [0, 1) for a request id, uniform even for sequential ids."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class ModelManager:
    def __init__(
        self,
        configs: Iterable[ModelConfig],
        *,
        loader: Loader = _default_loader,
        warmup: Callable[[LoadedModel], None] | None = None,
        on_unload: Callable[[str, int], None] | None = None,
    ) -> None:
        self._configs = {c.name: c for c in configs}
        self._loader = loader
        self._warmup = warmup
        self._on_unload = on_unload
        self._snapshot: dict[str, ModelState] = {name: ModelState(c) for name, c in self._configs.items()}
        self._status: dict[tuple[str, int], tuple[int, str]] = {}  # (model, version) -> (state, error)
        self._weights: dict[str, float] = {}
        self._failed: set[tuple[str, int]] = set()
        self._lock = threading.Lock()  # one poll/reload at a time; readers never take it

    # ------------------------------------------------------------------ requests (lock-free reads)

    def resolve(self, name: str, version: int | None = None, label: str = "", request_id: str = "") -> Resolved:
        state = self._snapshot.get(name)
        if state is None:
            raise ModelNotFoundError(name)
        if version is not None:
            model = state.versions.get(version)
            if model is None:
                raise ModelNotFoundError(name, version)
            return Resolved(model, "")
        if label:
            labelled = state.labels.get(label)
            if labelled is None or labelled not in state.versions:
                raise ModelNotFoundError(name, detail=f"unknown version label {label!r}")
            return Resolved(state.versions[labelled], label)
        if not state.versions:
            raise ModelNotFoundError(name, detail="no version is loaded yet")
        arm = self._arm(state, request_id)
        if arm:
            return Resolved(state.versions[state.labels[arm]], arm)
        return Resolved(state.versions[max(state.versions)], "")

    @staticmethod
    def _arm(state: ModelState, request_id: str) -> str:
        labels, versions = state.labels, state.versions
        has_stable = labels.get(STABLE) in versions
        has_canary = labels.get(CANARY) in versions
        if (
            has_canary
            and state.canary_weight > 0
            and (not has_stable or route_fraction(request_id) < state.canary_weight)
        ):
            return CANARY
        return STABLE if has_stable else ""

    def models(self) -> dict[str, ModelState]:
        return dict(self._snapshot)

    def version_status(self, name: str, version: int | None = None) -> list[tuple[int, int, str]]:
        """``(version, state, error)`` of a model's versions (one version if given), as GetModelStatus reports."""
        if name not in self._snapshot:
            raise ModelNotFoundError(name)
        rows = sorted((v, s, e) for (m, v), (s, e) in self._status.items() if m == name)
        if version is not None:
            rows = [r for r in rows if r[0] == version]
            if not rows:
                raise ModelNotFoundError(name, version)
        return rows

    # ------------------------------------------------------------------ changes

    def set_canary_weight(self, name: str, weight: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"canary weight must be in [0, 1], got {weight}")
        with self._lock:
            if name not in self._snapshot:
                raise ModelNotFoundError(name)
            self._weights[name] = weight
            self._swap({name: replace(self._snapshot[name], canary_weight=weight)})
        log.info("model %s: canary weight %.3f", name, weight)

    def reload_config(self, configs: Iterable[ModelConfig]) -> None:
        """Serve exactly these models from now on (TF Serving's HandleReloadConfigRequest semantics)."""
        new = {c.name: c for c in configs}
        with self._lock:
            self._configs = new
            self._poll_locked()

    def poll_once(self) -> list[str]:
        """Load new versions, unload ones the policy no longer wants, re-point labels. Returns what changed."""
        with self._lock:
            return self._poll_locked()

    def _poll_locked(self) -> list[str]:
        changes: list[str] = []
        unloaded: list[tuple[str, int]] = []
        snapshot: dict[str, ModelState] = {}
        for name, config in self._configs.items():
            current = self._snapshot.get(name) or ModelState(config)
            available = [v for v in list_versions(config.base_path) if (name, v) not in self._failed]
            wanted = config.policy.select(available)
            versions = {v: m for v, m in current.versions.items() if v in wanted}
            for version in wanted:
                if version in versions:
                    continue
                loaded = self._load(config, version)
                if loaded is not None:
                    versions[version] = loaded
                    changes.append(f"{name}: version {version} loaded")
            if not versions:  # availability first: keep what serves until a wanted version is up
                versions = dict(current.versions)
            for version in current.versions:
                if version not in versions:
                    unloaded.append((name, version))
                    changes.append(f"{name}: version {version} unloaded")
            labels = {}
            for label, version in config.labels.items():
                if version in versions:
                    labels[label] = version
                elif current.labels.get(label) in versions:
                    labels[label] = current.labels[label]  # keep serving the old target until the new one loads
                    log.warning("model %s: label %r -> %d not loaded; keeping %d", name, label, version, labels[label])
                else:
                    log.warning("model %s: label %r points at version %d, which is not loaded", name, label, version)
            if labels != dict(current.labels):
                changes.append(f"{name}: labels {labels}")
            weight = self._weights.get(name, current.canary_weight)
            snapshot[name] = ModelState(config, versions, labels, weight)
        for name in self._snapshot:
            if name not in snapshot:
                unloaded.extend((name, v) for v in self._snapshot[name].versions)
                changes.append(f"{name}: removed")
        self._snapshot = snapshot  # the atomic switch: requests from now on see the new state
        for name, version in unloaded:
            self._status[(name, version)] = (END, "")
            if self._on_unload is not None:
                self._on_unload(name, version)
        for change in changes:
            log.info("%s", change)
        return changes

    def _load(self, config: ModelConfig, version: int) -> LoadedModel | None:
        key = (config.name, version)
        self._status[key] = (LOADING, "")
        started = time.monotonic()
        try:
            model = self._loader(config.base_path / str(version), config.name)
            if self._warmup is not None:
                self._warmup(model)
        except (ModelLoadError, ModelNotFoundError) as exc:
            self._status[key] = (END, str(exc))
            self._failed.add(key)  # not retried: publish the fixed model under a new version number
            log.error("model %s version %d not loaded: %s", config.name, version, exc)
            return None
        self._status[key] = (AVAILABLE, "")
        log.info("model %s version %d loaded and warmed up in %.2f s", config.name, version, time.monotonic() - started)
        return model

    def _swap(self, changed: Mapping[str, ModelState]) -> None:
        snapshot = dict(self._snapshot)
        snapshot.update(changed)
        self._snapshot = snapshot


def synthesized_warmup(model: LoadedModel, runs: int = 2, batch_sizes: tuple[int, ...] = (1, 32)) -> None:
    """Call each signature on zero inputs built from its specs, with a few batch sizes, so TensorFlow traces
    and sets up its kernels before traffic (a ranking request typically carries 32 candidates).

    A failure here is logged, not raised: synthesized zeros may be outside what a model accepts, and the
    model may still serve real requests.
    """
    import numpy as np

    for signature in model.signatures.values():
        for rows in batch_sizes:
            inputs: dict[str, Any] = {}
            for name, spec in signature.inputs.items():
                dims = spec.shape if spec.shape is not None else (None,)
                shape = tuple((rows if i == 0 else 1) if d is None or d < 0 else d for i, d in enumerate(dims))
                dtype = spec.numpy_dtype if spec.numpy_dtype is not None else np.dtype(np.float32)
                inputs[name] = np.zeros(shape, dtype=dtype) if dtype.kind != "O" else np.full(shape, b"", dtype=object)
            try:
                for _ in range(runs):
                    signature(inputs)
            except Exception as exc:
                log.warning("warm-up of %s v%d signature %s failed: %s", model.name, model.version, signature.name, exc)
                break
