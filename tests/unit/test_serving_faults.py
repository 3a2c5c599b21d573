"""serving/faults.py with a fake clock, a recorded sleep and seeded draws: nothing here waits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.errors import ModelExecutionError, status_of
from serving.faults import DEFAULT_LEAK_MAX_BYTES, FaultFileError, FaultInjector, FaultSpec, FaultyExecutor
from serving.predict import Execution


class FakeTime:
    """A monotonic clock that moves only when told to, or when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class TimedExecutor:
    """An inner executor whose every execution takes ``cost_s`` of the fake clock."""

    def __init__(self, time_: FakeTime, cost_s: float = 0.002) -> None:
        self.time = time_
        self.cost_s = cost_s
        self.calls = 0

    def execute(self, model: Any, signature: Any, inputs: Any) -> Execution:
        self.calls += 1
        self.time.now += self.cost_s
        return Execution({"scores": np.zeros(3, np.float32)}, compute_us=int(self.cost_s * 1e6))


def write(path: Path, faults: dict[str, Any] | str, *, bump_ns: int = 0) -> None:
    path.write_text(faults if isinstance(faults, str) else json.dumps(faults))
    if bump_ns:  # a distinct mtime even on coarse file systems
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump_ns))


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def make(path: Path, fake: FakeTime, seed: int = 3) -> tuple[FaultInjector, FaultyExecutor, TimedExecutor]:
    injector = FaultInjector(path, clock=fake.clock, rng_seed=seed, sleep=fake.sleep, leak_thread=False)
    inner = TimedExecutor(fake)
    return injector, FaultyExecutor(inner, injector), inner


def test_spec_parses_fields_and_defaults() -> None:
    spec = FaultSpec.from_json('{"latency_factor": 5, "error_rate": 0.2, "leak_bytes_per_s": 1024}')
    assert spec == FaultSpec(5.0, 0.2, 1024.0, DEFAULT_LEAK_MAX_BYTES)
    assert FaultSpec.from_json("  \n") == FaultSpec()
    assert not FaultSpec().leaks


@pytest.mark.parametrize(
    "text",
    ['{"latency_factor": 0.5}', '{"error_rate": 1.5}', '{"leak_bytes_per_s": -1}', '{"slowness": 2}', "[1]", "{"],
)
def test_spec_rejects_bad_files_with_a_typed_error(text: str) -> None:
    with pytest.raises(FaultFileError) as info:
        FaultSpec.from_json(text, path="f.json")
    assert info.value.path == "f.json"


def test_no_file_means_no_fault(tmp_path: Path, fake: FakeTime) -> None:
    injector, executor, inner = make(tmp_path / "absent.json", fake)

    executor.execute(None, None, {})  # type: ignore[arg-type]

    assert injector.current() == FaultSpec()
    assert inner.calls == 1 and fake.slept == []


def test_latency_factor_sleeps_factor_minus_one_times_the_execution(tmp_path: Path, fake: FakeTime) -> None:
    path = tmp_path / "faults.json"
    write(path, {"latency_factor": 5})
    _, executor, inner = make(path, fake)
    start = fake.now

    execution = executor.execute(None, None, {})  # type: ignore[arg-type]

    assert fake.slept == [pytest.approx(4 * inner.cost_s)]
    assert fake.now - start == pytest.approx(5 * inner.cost_s)  # the total is 5x the execution
    assert execution.compute_us == 2000  # the inner executor's own measurement is untouched


def test_error_rate_fails_that_share_with_an_internal_error(tmp_path: Path, fake: FakeTime) -> None:
    path = tmp_path / "faults.json"
    write(path, {"error_rate": 0.2})
    _, executor, inner = make(path, fake, seed=7)

    failures = 0
    for _ in range(2000):
        try:
            executor.execute(None, None, {})  # type: ignore[arg-type]
        except ModelExecutionError as exc:
            failures += 1
            assert str(exc) == "injected fault"
            assert status_of(exc).http == 500 and status_of(exc).grpc.name == "INTERNAL"

    assert 330 <= failures <= 470  # 20 % of 2000, +- 4 standard deviations
    assert inner.calls == 2000 - failures  # a failed request does not execute


def test_error_draws_are_reproducible_with_a_seed(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write(path, {"error_rate": 0.5})

    def outcomes() -> list[bool]:
        fake = FakeTime()
        injector = FaultInjector(path, clock=fake.clock, rng_seed=11, sleep=fake.sleep, leak_thread=False)
        return [injector.should_fail(injector.current()) for _ in range(50)]

    assert outcomes() == outcomes()


def test_file_is_rechecked_at_most_once_per_second(tmp_path: Path, fake: FakeTime) -> None:
    path = tmp_path / "faults.json"
    write(path, {"latency_factor": 2})
    injector, _, _ = make(path, fake)
    assert injector.current().latency_factor == 2

    write(path, {"latency_factor": 3}, bump_ns=10**9)
    fake.now += 0.5
    assert injector.current().latency_factor == 2  # not looked at yet
    fake.now += 0.6
    assert injector.current().latency_factor == 3


def test_clearing_the_file_restores_normal_service(tmp_path: Path, fake: FakeTime) -> None:
    path = tmp_path / "faults.json"
    write(path, {"error_rate": 1.0, "latency_factor": 4})
    _, executor, inner = make(path, fake)
    with pytest.raises(ModelExecutionError):
        executor.execute(None, None, {})  # type: ignore[arg-type]

    write(path, "", bump_ns=10**9)
    fake.now += 1.0
    executor.execute(None, None, {})  # type: ignore[arg-type]

    assert inner.calls == 1 and fake.slept == []


def test_a_bad_edit_keeps_the_previous_faults(tmp_path: Path, fake: FakeTime) -> None:
    path = tmp_path / "faults.json"
    write(path, {"error_rate": 0.3})
    injector, _, _ = make(path, fake)
    assert injector.current().error_rate == 0.3

    write(path, '{"error_rate": 3}', bump_ns=10**9)
    fake.now += 1.0

    assert injector.current().error_rate == 0.3


def test_leak_grows_at_its_rate_up_to_the_cap_and_is_released_when_cleared(tmp_path: Path, fake: FakeTime) -> None:
    path = tmp_path / "faults.json"
    rate, cap = 3 << 20, 10 << 20
    write(path, {"leak_bytes_per_s": rate, "leak_max_bytes": cap})
    injector, _, _ = make(path, fake)
    assert injector.leak_step() == 0  # starts when read

    fake.now += 2.0
    assert injector.leak_step() == 2 * rate
    fake.now += 10.0
    assert injector.leak_step() == cap

    write(path, {}, bump_ns=10**9)
    fake.now += 1.0
    injector.current()
    assert injector.leaked_bytes == 0
    fake.now += 5.0
    assert injector.leak_step() == 0


def test_leak_thread_grows_memory_and_ends_when_closed(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write(path, {"leak_bytes_per_s": 1 << 30, "leak_max_bytes": 4 << 20})
    clock = iter(range(0, 10**6, 10))  # every reading is 10 s later: the cap is reached on the first tick
    injector = FaultInjector(path, clock=lambda: float(next(clock)), leak_tick_s=0.001)
    injector.current()
    runner = injector._leak_runner
    assert runner is not None
    for _ in range(2000):  # bounded: the thread's first ticks fill the leak within milliseconds
        if injector.leaked_bytes == 4 << 20:
            break
        runner.join(0.005)
    assert injector.leaked_bytes == 4 << 20

    injector.close()

    assert injector.leaked_bytes == 0 and not runner.is_alive()


def test_faults_limited_to_one_version_leave_the_others_alone(tmp_path: Path, fake: FakeTime) -> None:
    from types import SimpleNamespace

    path = tmp_path / "faults.json"
    write(path, {"model": "ranker", "version": 3, "latency_factor": 5, "error_rate": 1.0})
    _, executor, inner = make(path, fake)
    stable, other_model = SimpleNamespace(name="ranker", version=2), SimpleNamespace(name="seq", version=3)
    canary = SimpleNamespace(name="ranker", version=3)

    executor.execute(stable, None, {})  # type: ignore[arg-type]
    executor.execute(other_model, None, {})  # type: ignore[arg-type]
    assert inner.calls == 2 and fake.slept == []  # neither slowed nor failed
    with pytest.raises(ModelExecutionError):
        executor.execute(canary, None, {})  # type: ignore[arg-type]
    assert FaultSpec.from_json('{"model": "ranker"}').applies_to("ranker", 7)
    with pytest.raises(FaultFileError):
        FaultSpec.from_json('{"version": -1}')
