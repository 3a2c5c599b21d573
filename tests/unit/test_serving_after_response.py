"""serving.after_response: deferred per-request tasks run after the scope's work, always, and can be awaited."""

from __future__ import annotations

import logging
import threading

import pytest

from serving.after_response import DeferringThreadPoolExecutor, Scope, defer, wait_idle


def test_outside_a_scope_a_task_runs_at_once() -> None:
    ran: list[int] = []
    defer(lambda: ran.append(1))
    assert ran == [1]


def test_in_a_scope_tasks_run_at_its_exit_in_order() -> None:
    ran: list[str] = []
    with Scope():
        defer(lambda: ran.append("a"))
        defer(lambda: ran.append("b"))
        ran.append("answer sent")
    assert ran == ["answer sent", "a", "b"]


def test_tasks_run_even_when_the_handler_raised_and_a_failing_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("publisher bug")

    with caplog.at_level(logging.ERROR, logger="serving.after_response"), pytest.raises(ValueError), Scope():
        defer(boom)
        defer(lambda: ran.append("next"))
        raise ValueError("handler failed")
    assert ran == ["next"]
    assert "deferred per-request task failed" in caplog.text
    assert wait_idle(0)


def test_an_inner_scope_leaves_the_outer_scopes_tasks_alone() -> None:
    ran: list[str] = []
    with Scope():
        defer(lambda: ran.append("outer"))
        with Scope():
            defer(lambda: ran.append("inner"))
        assert ran == ["inner"]
    assert ran == ["inner", "outer"]


def test_executor_work_items_run_their_tasks_after_the_work_and_wait_idle_sees_them() -> None:
    answered, started, release = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def slow_task() -> None:
        started.set()
        release.wait(10)
        order.append("task")

    def work() -> str:  # as grpcio's handler: the answer is handed to the transport inside the work item
        defer(slow_task)
        order.append("work")
        answered.set()
        return "done"

    with DeferringThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(work)
        assert answered.wait(10) and started.wait(10)
        assert order == ["work"]  # answered, and the task is still running
        assert not wait_idle(0.01)
        release.set()
        assert wait_idle(10)
        assert future.result(timeout=10) == "done"
    assert order == ["work", "task"]
