"""Per-request work that can wait until the answer is on its way: the request's event and its metrics.

A request's accounting (building its :class:`schemas.InferenceEvent`, handing it to the event logger, counting
it in the Prometheus metrics) costs tens of microseconds that the caller need not wait for. Inside a
:class:`Scope` — the gRPC front end's worker threads (:class:`DeferringThreadPoolExecutor`) and the REST front
end's connection threads enter one per request — :func:`defer` keeps a task, and the scope runs it on the same
thread once the response has been handed to the transport. Outside any scope :func:`defer` runs the task at
once, so code that calls the predictor directly (tests, benchmarks) sees its events synchronously.

At one request in flight the server's core is otherwise idle while the answer travels and the client reads it,
so the accounting is off the latency path; under load it costs the same CPU as before, on the same thread.
Nothing is lost: a scope always runs its tasks (also when the handler raised), a task's exception is logged
and does not reach the transport, and :func:`wait_idle` lets readers that must see every answered request
(``/metrics``, the tests' in-memory publisher) wait until deferred tasks have run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_local = threading.local()
_idle = threading.Condition(threading.Lock())
_outstanding = 0  # deferred tasks not yet run, over all threads; guarded by _idle


def defer(task: Callable[[], None]) -> None:
    """Run ``task`` after the current request's response is sent, or now when no scope is active."""
    pending: list[Callable[[], None]] | None = getattr(_local, "pending", None)
    if pending is None:
        task()
        return
    global _outstanding
    with _idle:
        _outstanding += 1
    pending.append(task)


class Scope:
    """``with Scope(): handle the request and send the answer``; deferred tasks run at the exit.

    Scopes do not nest: an inner one leaves the outer one's tasks alone and runs only its own.
    """

    __slots__ = ("_outer", "_pending")

    def __enter__(self) -> Scope:
        self._outer = getattr(_local, "pending", None)
        self._pending: list[Callable[[], None]] = []
        _local.pending = self._pending
        return self

    def __exit__(self, *exc: object) -> None:
        _local.pending = self._outer
        _run(self._pending)


def _run(tasks: list[Callable[[], None]]) -> None:
    if not tasks:
        return
    global _outstanding
    for task in tasks:
        try:
            task()
        except Exception:
            log.exception("a deferred per-request task failed")
    with _idle:
        _outstanding -= len(tasks)
        if not _outstanding:
            _idle.notify_all()


def wait_idle(timeout_s: float = 5.0) -> bool:
    """Wait until every deferred task has run; False if some are still pending after ``timeout_s``."""
    with _idle:
        return _idle.wait_for(lambda: _outstanding == 0, timeout_s)


def _in_scope(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    with Scope():
        return fn(*args, **kwargs)


class DeferringThreadPoolExecutor(ThreadPoolExecutor):
    """The gRPC server's thread pool: every work item runs in a scope. grpcio's unary handlers hand the
    serialized response to gRPC core before their work item returns, so deferred tasks run after the send."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return super().submit(_in_scope, fn, args, kwargs)
