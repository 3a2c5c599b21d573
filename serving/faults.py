"""Faults injected into a running model server, for tests and demos (``recwatch serve --fault_file F``).

The fault file is JSON; every field is optional and an absent or empty file means no fault::

    {"latency_factor": 5, "error_rate": 0.2, "leak_bytes_per_s": 1048576, "leak_max_bytes": 268435456}

- ``latency_factor`` (>= 1): after a request's model execution, sleep (factor - 1) x that execution's measured
  time, so the execution part of the latency grows by the factor (the event's ``total_us`` >= factor x
  ``compute_us``).
- ``error_rate`` (0..1): that share of requests fails before executing, with ``ModelExecutionError("injected
  fault")``: gRPC ``INTERNAL`` / HTTP 500 (``serving.errors``), and the event's ``status_code``/``error`` say so.
- ``leak_bytes_per_s``: a background thread allocates and holds memory (pages written, so RSS grows) at that
  rate from when the fault was read, up to ``leak_max_bytes`` (default 256 MiB); clearing the field (or the
  file) releases it and ends the thread.
- ``model`` (a name) and ``version`` (> 0): limit the latency and error faults to that model, or that version of
  it (a bad canary next to a healthy stable version); empty / 0, the default: every model and version. The leak
  is the process's and ignores them.

:class:`FaultInjector` re-reads the file when its mtime or size changed, looked at no more than once per second
of its clock, from whichever request (or the leak thread) comes first: the request path pays a clock reading.
A file that does not parse keeps the previous faults (logged once per change). Time, sleeping and the error
draws are injected so tests control them::

    injector = FaultInjector(Path("faults.json"), clock=fake.now, rng_seed=1, sleep=fake.sleep)
    executor = FaultyExecutor(DirectExecutor(), injector)
"""

from __future__ import annotations

import json
import logging
import mmap
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from serving.errors import ModelExecutionError, ServingError

if TYPE_CHECKING:
    from serving.model_repository import LoadedModel, Signature
    from serving.predict import Arrays, Execution, Executor

__all__ = ["FaultFileError", "FaultInjector", "FaultSpec", "FaultyExecutor"]

log = logging.getLogger(__name__)

CHECK_EVERY_S: Final = 1.0
LEAK_CHUNK_BYTES: Final = 1 << 20
DEFAULT_LEAK_MAX_BYTES: Final = 256 << 20
INJECTED_ERROR: Final = "injected fault"


class FaultFileError(ServingError):
    """The fault file is not a JSON object of known fields with valid values."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"fault file {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class FaultSpec:
    """The faults in force. The default is no fault."""

    latency_factor: float = 1.0
    error_rate: float = 0.0
    leak_bytes_per_s: float = 0.0
    leak_max_bytes: int = DEFAULT_LEAK_MAX_BYTES
    model: str = ""  # latency and errors only for this model ("": all)
    version: int = 0  # ... and only this version of it (0: all)

    def __post_init__(self) -> None:
        if not self.latency_factor >= 1.0:
            raise ValueError(f"latency_factor must be >= 1, got {self.latency_factor}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate}")
        if not self.leak_bytes_per_s >= 0.0:
            raise ValueError(f"leak_bytes_per_s must be >= 0, got {self.leak_bytes_per_s}")
        if self.leak_max_bytes < 0:
            raise ValueError(f"leak_max_bytes must be >= 0, got {self.leak_max_bytes}")
        if self.version < 0:
            raise ValueError(f"version must be >= 0, got {self.version}")

    @classmethod
    def from_json(cls, text: str, *, path: str = "<fault file>") -> FaultSpec:
        """Parse a fault file's text; blank text is no fault. Raises FaultFileError."""
        if not text.strip():
            return cls()
        try:
            raw: Any = json.loads(text)
        except ValueError as exc:
            raise FaultFileError(path, f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise FaultFileError(path, "not a JSON object")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise FaultFileError(path, f"unknown fields {unknown}")
        try:
            return cls(
                latency_factor=float(raw.get("latency_factor", 1.0)),
                error_rate=float(raw.get("error_rate", 0.0)),
                leak_bytes_per_s=float(raw.get("leak_bytes_per_s", 0.0)),
                leak_max_bytes=int(raw.get("leak_max_bytes", DEFAULT_LEAK_MAX_BYTES)),
                model=str(raw.get("model", "")),
                version=int(raw.get("version", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise FaultFileError(path, str(exc)) from None

    @property
    def leaks(self) -> bool:
        return self.leak_bytes_per_s > 0 and self.leak_max_bytes > 0

    def applies_to(self, model: str, version: int) -> bool:
        """Whether the latency and error faults hit a request served by ``model`` at ``version``."""
        return (not self.model or self.model == model) and (not self.version or self.version == version)


class FaultInjector:
    """The faults of one fault file, re-read on change; owns the leak's memory and thread.

    ``clock`` (seconds, monotonic) paces the file checks, measures executions and grows the leak; ``sleep``
    adds the latency; ``rng_seed`` seeds the error draws. ``leak_thread=False`` leaves growing the leak to
    explicit :meth:`leak_step` calls (tests). Construction does no I/O.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng_seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        leak_thread: bool = True,
        leak_tick_s: float = 0.5,
    ) -> None:
        self.path = path
        self.clock = clock
        self.sleep = sleep
        self._rng = random.Random(rng_seed)
        self._leak_thread_enabled = leak_thread
        self._leak_tick_s = leak_tick_s
        self._spec = FaultSpec()
        self._file_key: tuple[int, int] | None = None
        self._next_check = float("-inf")
        self._check_lock = threading.Lock()
        self._leak_lock = threading.Lock()
        self._leaked: list[mmap.mmap] = []
        self._leaked_bytes = 0
        self._leak_started = 0.0
        self._leak_stop = threading.Event()
        self._leak_runner: threading.Thread | None = None

    # -- the spec ------------------------------------------------------------------------------------------------

    def current(self) -> FaultSpec:
        """The faults in force, re-reading the file if it changed (checked at most once per second)."""
        now = self.clock()
        if now >= self._next_check and self._check_lock.acquire(blocking=False):
            try:  # one thread re-reads; the others go on with the spec they have
                self._next_check = now + CHECK_EVERY_S
                self._reload(now)
            finally:
                self._check_lock.release()
        return self._spec

    def _reload(self, now: float) -> None:
        try:
            st = self.path.stat()
            key: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key == self._file_key:
            return
        self._file_key = key
        try:
            spec = FaultSpec() if key is None else FaultSpec.from_json(self.path.read_text(), path=str(self.path))
        except (OSError, FaultFileError) as exc:
            log.warning("fault file not applied, the previous faults stay: %s", exc)
            return
        if spec != self._spec:
            log.warning("injecting faults from %s: %s", self.path, spec)
        self._apply(spec, now)

    def _apply(self, spec: FaultSpec, now: float) -> None:
        old, self._spec = self._spec, spec
        if spec.leaks and not old.leaks:
            with self._leak_lock:
                self._leak_started = now
            if self._leak_thread_enabled:
                self._start_leak_thread()
        elif not spec.leaks and old.leaks:
            self._release_leak()

    def should_fail(self, spec: FaultSpec) -> bool:
        """One draw of the error fault."""
        return spec.error_rate > 0 and self._rng.random() < spec.error_rate

    # -- the leak --------------------------------------------------------------------------------------------------

    @property
    def leaked_bytes(self) -> int:
        """Bytes the leak holds now."""
        return self._leaked_bytes

    def leak_step(self) -> int:
        """Grow the leak to ``rate x time since it started`` (capped); returns the bytes held."""
        spec = self.current()
        with self._leak_lock:
            if not spec.leaks:
                return self._leaked_bytes
            target = min(int(spec.leak_bytes_per_s * max(self.clock() - self._leak_started, 0.0)), spec.leak_max_bytes)
            while self._leaked_bytes < target:
                n = min(LEAK_CHUNK_BYTES, target - self._leaked_bytes)
                self._leaked.append(_resident(n))
                self._leaked_bytes += n
            return self._leaked_bytes

    def _release_leak(self) -> None:
        self._leak_stop.set()
        with self._leak_lock:
            for chunk in self._leaked:
                chunk.close()
            self._leaked.clear()
            self._leaked_bytes = 0

    def _start_leak_thread(self) -> None:
        runner = self._leak_runner
        if runner is not None and runner.is_alive():
            return
        stop = self._leak_stop = threading.Event()

        def run() -> None:
            while not stop.wait(self._leak_tick_s):
                self.leak_step()  # also re-reads the file, so a cleared leak ends without traffic
                if not self._spec.leaks:
                    return

        self._leak_runner = threading.Thread(target=run, name="fault-leak", daemon=True)
        self._leak_runner.start()

    def close(self) -> None:
        """Stop the leak thread and release what it holds (the server calls this when it stops)."""
        self._leak_stop.set()
        runner, self._leak_runner = self._leak_runner, None
        if runner is not None:
            runner.join()
        self._release_leak()


def _resident(n: int) -> mmap.mmap:
    """``n`` bytes of anonymous memory with every page written, so they count in RSS. A mapping of its own, not
    malloc's: unmapping it returns the pages to the system (freed heap memory may stay resident)."""
    chunk = mmap.mmap(-1, n)
    for offset in range(0, n, mmap.PAGESIZE):
        chunk[offset] = 0xA5
    return chunk


class FaultyExecutor:
    """An :class:`~serving.predict.Executor` that adds the injector's latency and errors to ``inner``'s."""

    def __init__(self, inner: Executor, injector: FaultInjector) -> None:
        self.inner = inner
        self.injector = injector

    def execute(self, model: LoadedModel, signature: Signature, inputs: Arrays) -> Execution:
        spec = self.injector.current()
        if (spec.model or spec.version) and not spec.applies_to(model.name, model.version):
            return self.inner.execute(model, signature, inputs)
        if self.injector.should_fail(spec):
            raise ModelExecutionError(INJECTED_ERROR)
        if spec.latency_factor <= 1.0:
            return self.inner.execute(model, signature, inputs)
        start = self.injector.clock()
        execution = self.inner.execute(model, signature, inputs)
        self.injector.sleep((spec.latency_factor - 1.0) * max(self.injector.clock() - start, 0.0))
        return execution
