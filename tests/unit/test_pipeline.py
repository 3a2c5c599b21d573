"""The worker core (``stream_processors.pipeline``) with the testing source, sink and clock: every record stored
and counted exactly once, and committed only after that, through store faults at every call, outages, poison
batches, rebalances in the middle of a batch, a crash between the raw insert and the window insert, redelivery.
"""

from __future__ import annotations

import asyncio
import copy
import doctest
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import stream_processors.pipeline
import stream_processors.testing
from store.base import RejectedDataError, query_error
from stream_processors.pipeline import Backoff, Pipeline, Take
from stream_processors.records import Record
from stream_processors.testing import (
    TestingClock,
    TestingDeadLetters,
    TestingSink,
    TestingSource,
    TestingStore,
)

PARTITIONS = 3
PER_PARTITION = 50
BAD = {(0, 7), (1, 30), (2, 49)}  # rejected by the sink (to the dead-letter topic)


def _values(poison: set[tuple[int, int]] = frozenset()) -> dict[int, list[bytes | None]]:  # type: ignore[assignment]
    out: dict[int, list[bytes | None]] = {}
    for p in range(PARTITIONS):
        out[p] = []
        for o in range(PER_PARTITION):
            if (p, o) in BAD:
                out[p].append(b"bad %d/%d" % (p, o))
            elif (p, o) in poison:
                out[p].append(b"poison %d/%d" % (p, o))
            else:
                out[p].append(b"ev %d/%d" % (p, o))
    return out


class CheckedSource(TestingSource):
    """Checks the delivery rule at every ``done``: each record of the take is stored and counted, or on the
    dead-letter topic."""

    def __init__(self, *args: object, sink: TestingSink, dead: TestingDeadLetters, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sink = sink
        self.dead = dead

    def done(self, take: Take) -> None:
        lettered = {(r.partition, r.offset) for r in self.dead.sent}
        store = self.sink.store
        for r in take.records:
            key = (r.partition, r.offset)
            assert key in store.raw or key in lettered, f"{key} marked done but neither stored nor dead-lettered"
            assert store.progress.get(r.partition, -1) >= r.offset, f"{key} marked done before it was counted"
        super().done(take)


def _expect_exact(
    sink: TestingSink, source: TestingSource, dead: TestingDeadLetters, poison: int = 0, faults: bool = True
) -> None:
    """Every good record stored and counted once, every offset committed, every bad record on the dead-letter
    topic: exactly once without faults, at least once with them (a rejected record at the end of a batch that is
    retried is rejected again: nothing in the store says it was)."""
    good = {p: sum(1 for o in range(PER_PARTITION) if (p, o) not in BAD) for p in range(PARTITIONS)}
    if poison:
        assert sum(good.values()) - sum(sink.counted.values()) == poison
    else:
        assert sink.counted == good
        assert len(sink.stored) == sum(good.values())
    assert source.committed == {p: PER_PARTITION for p in range(PARTITIONS)}
    lettered = [(r.partition, r.offset) for r in dead.sent if r.reason == "undecodable"]
    assert set(lettered) == BAD
    if not faults:
        assert len(lettered) == len(BAD)


def _run(
    sink: TestingSink,
    *,
    take_size: int = 40,
    max_rows: int = 15,
    dead: TestingDeadLetters | None = None,
    clock: TestingClock | None = None,
    poison: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
) -> tuple[CheckedSource, TestingDeadLetters, Pipeline[Any]]:
    dead = dead or TestingDeadLetters()
    source = CheckedSource(_values(poison), take_size=take_size, sink=sink, dead=dead)
    pipeline: Pipeline[Any] = Pipeline(
        sink, topic="t", dead_letters=dead, clock=clock or TestingClock(), max_rows=max_rows
    )
    try:
        asyncio.run(asyncio.wait_for(pipeline.run(source), 30))
    finally:
        pipeline.close()
    return source, dead, pipeline


def _calls_without_faults() -> dict[str, int]:
    sink = TestingSink()
    source, dead, _ = _run(sink)
    _expect_exact(sink, source, dead, faults=False)
    return dict(sink.calls)


def _cases() -> Iterator[tuple[str, int]]:
    calls = _calls_without_faults()
    for op in ("prepare", "stage", "complete"):
        for k in range(1, calls[op] + 1):
            yield op, k


@pytest.mark.parametrize(("op", "k"), list(_cases()))
def test_a_store_failing_on_the_kth_call_loses_and_doubles_nothing(op: str, k: int) -> None:
    sink = TestingSink(fail=lambda o, n: o == op and n == k)
    clock = TestingClock()
    source, dead, pipeline = _run(sink, clock=clock)
    _expect_exact(sink, source, dead)
    assert pipeline.stats.store_errors == 1
    assert clock.slept == [Backoff().initial_s]


def test_an_outage_is_waited_out_with_capped_backoff_and_nothing_is_marked_meanwhile() -> None:
    down = {"on": False}
    sink = TestingSink(fail=lambda o, n: down["on"])
    observed: list[tuple[dict[int, int], int, int]] = []

    class OutageClock(TestingClock):
        async def sleep(self, seconds: float) -> None:
            observed.append((dict(source.committed), source.taken, sum(sink.counted.values())))
            if len(self.slept) == 11:
                down["on"] = False  # the store is back after 12 failed attempts
            await super().sleep(seconds)

    clock = OutageClock()
    dead = TestingDeadLetters()

    def before_take(i: int) -> None:
        if i == 2:
            down["on"] = True

    source = CheckedSource(_values(), take_size=40, sink=sink, dead=dead, before_take=before_take)
    pipeline: Pipeline[Any] = Pipeline(
        sink, topic="t", dead_letters=dead, clock=clock, max_rows=15, backoff=Backoff(0.1, 2.0)
    )
    try:
        asyncio.run(asyncio.wait_for(pipeline.run(source), 30))
    finally:
        pipeline.close()
    _expect_exact(sink, source, dead)
    assert len(observed) == 12
    assert all(o == observed[0] for o in observed), "offsets committed, takes read or rows counted in the outage"
    assert clock.slept == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert pipeline.stats.outages == 1
    assert pipeline.stats.store_errors == 12
    assert pipeline.stats.outage_since is None


def test_a_poison_record_goes_to_the_dead_letter_topic_alone_and_the_rest_is_stored() -> None:
    sink = TestingSink()
    source, dead, pipeline = _run(sink, poison={(1, 20)})
    _expect_exact(sink, source, dead, poison=1)
    (letter,) = [r for r in dead.sent if r.reason.startswith("store-rejected")]
    assert (letter.partition, letter.offset, letter.value) == (1, 20, b"poison 1/20")
    assert "Type mismatch" in letter.reason
    assert (1, 20) not in sink.store.raw or sink.store.progress[1] >= 20
    assert sink.counted[1] == PER_PARTITION - 2  # the poison and the bad one
    assert pipeline.stats.dead_letters["store-rejected"] == 1


def test_a_store_error_that_does_not_blame_the_data_is_retried_and_dead_letters_nothing() -> None:
    limit = query_error("Code: 241. DB::Exception: Memory limit (total) exceeded", "INSERT ...")
    assert not isinstance(limit, RejectedDataError)
    sink = TestingSink(fail=lambda o, n: limit if o == "complete" and n <= 6 else False)
    source, dead, pipeline = _run(sink)
    _expect_exact(sink, source, dead)
    assert not [r for r in dead.sent if r.reason.startswith("store-rejected")]
    assert pipeline.stats.store_errors == 6


@pytest.mark.parametrize(
    ("message", "code", "rejected"),
    [
        ("Code: 53. DB::Exception: Type mismatch in IN or VALUES section", None, True),
        ("Code: 6. DB::Exception: Cannot parse string 'x' as UInt64", None, True),
        ("Code: 241. DB::Exception: Memory limit (total) exceeded", None, False),
        ("Code: 60. DB::Exception: Table recwatch.inference_events doesn't exist", None, False),
        ("Code: 252. DB::Exception: Too many parts (300)", None, False),
        ("Type mismatch", 53, True),
        ("no code at all", None, False),
    ],
)
def test_only_errors_that_blame_the_data_are_rejected_data(message: str, code: int | None, rejected: bool) -> None:
    assert isinstance(query_error(message, "SELECT 1", code), RejectedDataError) is rejected


def test_dead_letters_are_delivered_before_their_offsets_are_done_while_the_broker_is_down() -> None:
    sink = TestingSink()
    dead = TestingDeadLetters(fail_first=4)
    clock = TestingClock()
    source, dead, _ = _run(sink, dead=dead, clock=clock)  # CheckedSource.done checks the order
    _expect_exact(sink, source, dead)
    assert dead.attempts >= 5
    assert len(clock.slept) == 4


def test_a_rebalance_in_the_middle_of_a_batch_drops_it_unmarked_and_it_is_read_again() -> None:
    sink = TestingSink()
    dead = TestingDeadLetters()
    source = CheckedSource(_values(), take_size=40, sink=sink, dead=dead)
    pipeline: Pipeline[Any] = Pipeline(sink, topic="t", dead_letters=dead, clock=TestingClock(), max_rows=15)

    async def scenario() -> None:
        takes = source.takes()
        first = await anext(takes)
        await pipeline.process(first, source.done)  # staged: its last batches wait for completion
        second = await anext(takes)
        await pipeline.process(second, source.done)
        await pipeline.revoke(range(PARTITIONS))  # mid-batch: what is not done is dropped, read again below
        source.rebalance()
        await pipeline.run(source)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        pipeline.close()
    _expect_exact(sink, source, dead)
    assert sink.calls["prepare"] >= 2  # the state was read again after the rebalance


def test_a_rebalance_during_an_outage_does_not_wait_for_the_store() -> None:
    down = {"on": True}
    sink = TestingSink(fail=lambda o, n: down["on"] and o == "complete")
    dead = TestingDeadLetters()
    clock = TestingClock()
    source = CheckedSource(_values(), take_size=40, sink=sink, dead=dead)
    pipeline: Pipeline[Any] = Pipeline(sink, topic="t", dead_letters=dead, clock=clock, max_rows=15)

    async def scenario() -> None:
        takes = source.takes()
        stuck = asyncio.create_task(pipeline.process(await anext(takes), source.done))
        while len(clock.slept) < 3:
            await asyncio.sleep(0)
        await asyncio.wait_for(pipeline.revoke(range(PARTITIONS)), 5)  # the store is still down
        await asyncio.wait_for(stuck, 5)  # the take was given up, not marked
        assert source.committed == {p: 0 for p in range(PARTITIONS)}
        down["on"] = False
        source.rebalance()
        await pipeline.run(source)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        pipeline.close()
    _expect_exact(sink, source, dead)


class Killed(Exception):
    """``kill -9`` at this call: what the store and the source's commits held at that moment is all that
    survives (``KilledSink.remains``); the exception only unwinds the dead process's code."""


class KilledSink(TestingSink):
    def __init__(self, store: TestingStore, op: str, k: int) -> None:
        super().__init__(store)
        self.kill_at = (op, k)
        self.source: TestingSource | None = None
        self.remains: tuple[TestingStore, dict[int, int]] | None = None

    def _die_if(self, point: tuple[str, int]) -> None:
        if point == self.kill_at and self.remains is None:
            assert self.source is not None
            self.remains = (copy.deepcopy(self.store), dict(self.source.committed))
        if self.remains is not None:
            raise Killed()  # (and every call after it: the process is gone)

    def _call(self, op: str) -> None:
        self._die_if((op, self.calls[op] + 1))
        super()._call(op)

    def stage(self, records: Sequence[Record]) -> object:  # type: ignore[override]
        staged = super().stage(records)
        self._die_if(("after-stage", self.calls["stage"]))  # the raw rows are stored, the window rows are not
        return staged


@pytest.mark.parametrize("op", ["stage", "after-stage", "complete"])
def test_a_kill_at_any_store_call_then_a_restart_redelivers_without_loss_or_double_count(op: str) -> None:
    calls = _calls_without_faults()
    for k in range(1, calls["stage" if op == "after-stage" else op] + 1):
        dead = TestingDeadLetters()
        first = KilledSink(TestingStore(), op, k)
        source = first.source = CheckedSource(_values(), take_size=40, sink=first, dead=dead)
        pipeline: Pipeline[Any] = Pipeline(first, topic="t", dead_letters=dead, clock=TestingClock(), max_rows=15)
        with pytest.raises(Killed):
            asyncio.run(asyncio.wait_for(pipeline.run(source), 30))
        pipeline.close()
        assert first.remains is not None
        store, committed = first.remains
        # a new worker process: no state but the store's, the source from the offsets committed before the kill
        second = TestingSink(store)
        source.sink = second
        source.committed = committed
        source.restart()
        pipeline = Pipeline(second, topic="t", dead_letters=dead, clock=TestingClock(), max_rows=15)
        asyncio.run(asyncio.wait_for(pipeline.run(source), 30))
        pipeline.close()
        good = {p: sum(1 for o in range(PER_PARTITION) if (p, o) not in BAD) for p in range(PARTITIONS)}
        assert second.counted == good, (op, k)
        assert len(second.stored) == sum(good.values())
        assert source.committed == {p: PER_PARTITION for p in range(PARTITIONS)}
        assert {(r.partition, r.offset) for r in dead.sent} >= BAD  # at least once


def test_a_completion_queued_behind_a_failed_one_does_not_run() -> None:
    """Batch k's window insert fails while k + 1 waits on the sink thread: k + 1 must not be counted on top of
    the store's rows without k's (its progress would then hide k's records from the retry)."""
    for k in range(1, 12):
        sink = TestingSink(fail=lambda o, n, k=k: o == "complete" and n == k)  # type: ignore[misc]
        source, dead, _ = _run(sink, take_size=45, max_rows=15)
        _expect_exact(sink, source, dead)


def test_the_last_take_of_a_quiet_stream_is_marked_done_without_a_next_take() -> None:
    """Nothing comes after the last take (traffic stopped): its batches are finished when their completion ends,
    so its offsets are committed, not left for a next take that never comes."""
    sink = TestingSink()
    dead = TestingDeadLetters()
    source = CheckedSource(_values(), take_size=1000, sink=sink, dead=dead)
    pipeline: Pipeline[Any] = Pipeline(sink, topic="t", dead_letters=dead, clock=TestingClock(), max_rows=60)

    async def scenario() -> None:
        (take,) = [t async for t in source.takes()]
        await pipeline.process(take, source.done)  # returns with the last batches still completing
        for _ in range(2000):
            if source.done_takes:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the take was never marked done")

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        pipeline.close()
    _expect_exact(sink, source, dead, faults=False)


def test_the_doctests_run() -> None:
    for module in (stream_processors.pipeline, stream_processors.testing):
        result = doctest.testmod(module)
        assert result.attempted and not result.failed


def test_a_non_store_error_is_not_swallowed() -> None:
    class Buggy(TestingSink):
        def complete(self, staged: object) -> object:  # type: ignore[override]
            raise KeyError("a bug")

    with pytest.raises(KeyError):
        _run(Buggy())


def test_a_bug_found_between_takes_reaches_on_fatal_without_a_next_take() -> None:
    released = threading.Event()

    class Buggy(TestingSink):
        def complete(self, staged: Any) -> Any:
            released.wait(10)  # (on the sink thread) until process() has returned
            raise KeyError("a bug")

    fatal: list[BaseException] = []
    sink = Buggy()
    source = TestingSource(_values(), take_size=1000)
    pipeline: Pipeline[Any] = Pipeline(
        sink, topic="t", dead_letters=TestingDeadLetters(), clock=TestingClock(), max_rows=1000, on_fatal=fatal.append
    )

    async def scenario() -> None:
        (take,) = [t async for t in source.takes()]
        await pipeline.process(take, source.done)
        released.set()
        for _ in range(2000):
            if fatal:
                return
            await asyncio.sleep(0.005)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        pipeline.close()
    assert [type(e) for e in fatal] == [KeyError]
    assert source.committed == {p: 0 for p in range(PARTITIONS)}


def test_backoff_is_capped_exponential() -> None:
    b = Backoff(initial_s=0.5, max_s=3.0)
    assert [b.delay(i) for i in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
