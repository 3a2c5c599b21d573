"""Fakes for testing code built on ``stream_processors.pipeline`` without Kafka or a store (as bytewax ships
``TestingSource``/``TestingSink``): a source with commits, redelivery and rebalances, a sink over an in-memory
store with the same redelivery rule as the real sinks and injectable faults, a clock that tests drive.

>>> import asyncio
>>> from stream_processors.pipeline import Pipeline
>>> source = TestingSource({0: [b"a", b"b"], 1: [b"c"]}, take_size=2)
>>> sink = TestingSink(fail=lambda op, n: n == 1 and op == "complete")  # the first completion fails once
>>> clock = TestingClock()
>>> pipeline = Pipeline(sink, topic="t", clock=clock)
>>> asyncio.run(pipeline.run(source)); pipeline.close()
>>> sink.counted, source.committed, clock.slept
({0: 2, 1: 1}, {0: 2, 1: 1}, [0.1])
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from store.base import RejectedDataError, StoreError, StoreUnavailableError
from stream_processors.decode import Rejected
from stream_processors.pipeline import Take, Written
from stream_processors.records import Message, Record

__all__ = ["TestingClock", "TestingDeadLetters", "TestingSink", "TestingSource", "TestingStore"]


class TestingClock:
    """A clock that moves only when slept on or advanced."""

    __test__ = False  # (not a pytest test class)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class TestingSource:
    """Partitions of message values; takes of up to ``take_size`` records, partitions interleaved.

    ``committed`` is Kafka's committed offset per partition (the next offset to read). ``restart()`` and
    ``rebalance()`` go back to the committed offsets, as a consumer does after a crash or a reassignment;
    ``append`` adds records to a live partition; ``before_take(i)`` runs before take ``i`` is handed out.
    """

    __test__ = False

    def __init__(
        self,
        partitions: Mapping[int, Sequence[bytes | None]],
        *,
        take_size: int = 100,
        before_take: Callable[[int], object] | None = None,
    ) -> None:
        self.values = {p: list(v) for p, v in partitions.items()}
        self.take_size = take_size
        self.before_take = before_take
        self.committed: dict[int, int] = {p: 0 for p in self.values}
        self.position = dict(self.committed)
        self.taken = 0
        self.done_takes: list[Take] = []
        self._open: collections.deque[Take] = collections.deque()

    def append(self, partition: int, values: Iterable[bytes | None]) -> None:
        self.values.setdefault(partition, []).extend(values)
        self.committed.setdefault(partition, 0)
        self.position.setdefault(partition, 0)

    def restart(self) -> None:
        """A new consumer of the group: reads from the committed offsets; open takes are forgotten."""
        self.position = dict(self.committed)
        self._open.clear()

    rebalance = restart

    @property
    def lag(self) -> dict[int, int]:
        return {p: len(v) - self.committed[p] for p, v in self.values.items()}

    async def takes(self) -> AsyncIterator[Take]:
        while True:
            if self.before_take is not None:
                self.before_take(self.taken)
            records: list[Record] = []
            progressed = True
            while len(records) < self.take_size and progressed:
                progressed = False
                for p in sorted(self.values):
                    o = self.position[p]
                    if o < len(self.values[p]) and len(records) < self.take_size:
                        records.append(Message(p, o, self.values[p][o]))
                        self.position[p] = o + 1
                        progressed = True
            if not records:
                return
            take = Take(records, token=self.taken)
            self.taken += 1
            self._open.append(take)
            yield take

    def done(self, take: Take) -> None:
        if not self._open or self._open[0] is not take:
            raise AssertionError(f"take {take.token} marked done out of order (open: {[t.token for t in self._open]})")
        self._open.popleft()
        self.done_takes.append(take)
        for p, o in take.last_offsets().items():
            self.committed[p] = max(self.committed[p], o + 1)


@dataclass
class TestingStore:
    """The durable part: raw rows (one per offset) and per-partition window counts with their progress, each
    write atomic, as the real tables are."""

    __test__ = False

    raw: dict[tuple[int, int], bytes | None] = field(default_factory=dict)
    raw_inserts: int = 0
    counts: dict[int, int] = field(default_factory=dict)  # partition -> records counted in the windows
    progress: dict[int, int] = field(default_factory=dict)  # partition -> last offset counted

    def high_water(self, partition: int) -> int:
        return max((o for p, o in self.raw if p == partition), default=-1)


@dataclass
class _Staged:
    records: Sequence[Record]
    rejected: list[Rejected]


class TestingSink:
    """A sink in two halves like the inference sink on chDB: ``stage`` stores the raw rows above the partition's
    high-water, ``complete`` counts the records above its window progress. It caches both per partition (read on
    ``prepare``, dropped on ``forget``), so a pipeline that goes on with stale state double-counts or loses
    records, visibly in ``counted``.

    ``fail(op, n)`` is asked before the ``n``-th call (1-based, per op: "prepare", "stage", "complete") and raises
    ``StoreUnavailableError`` when true (or the ``StoreError`` it returns); records whose value starts with
    ``b"poison"`` make ``complete`` raise ``RejectedDataError`` (data the store refuses); values starting with
    ``b"bad"`` are rejected for the dead-letter topic.
    """

    __test__ = False

    def __init__(
        self, store: TestingStore | None = None, *, fail: Callable[[str, int], bool | StoreError] | None = None
    ) -> None:
        self.store = store or TestingStore()
        self.fail = fail
        self.calls: collections.Counter[str] = collections.Counter()
        self._hw: dict[int, int] = {}
        self._progress: dict[int, int] = {}

    @property
    def stored(self) -> list[tuple[int, int, bytes | None]]:
        return [(p, o, v) for (p, o), v in sorted(self.store.raw.items())]

    @property
    def counted(self) -> dict[int, int]:
        return dict(self.store.counts)

    def _call(self, op: str) -> None:
        self.calls[op] += 1
        failure = self.fail(op, self.calls[op]) if self.fail is not None else False
        if isinstance(failure, StoreError):
            raise failure
        if failure:
            raise StoreUnavailableError(f"testing store: {op} #{self.calls[op]} fails")

    def knows(self, partitions: frozenset[int]) -> bool:
        return all(p in self._hw for p in partitions)

    def prepare(self, partitions: frozenset[int]) -> None:
        self._call("prepare")
        for p in partitions:
            self._hw[p] = self.store.high_water(p)
            self._progress[p] = self.store.progress.get(p, -1)

    def stage(self, records: Sequence[Record]) -> _Staged:
        self._call("stage")
        hw = self._hw
        rejected: list[Rejected] = []
        fresh = {}
        for r in records:
            if (r.value or b"").startswith(b"bad"):  # (redelivered ones too, as the real sinks)
                rejected.append(Rejected("t", r.partition, r.offset, r.value or b"", "undecodable"))
            elif r.offset > hw[r.partition]:
                fresh[(r.partition, r.offset)] = r.value
        if any(k in self.store.raw for k in fresh):
            raise AssertionError(f"raw rows stored twice: {sorted(k for k in fresh if k in self.store.raw)}")
        self.store.raw.update(fresh)  # one atomic insert
        self.store.raw_inserts += 1
        for r in records:
            hw[r.partition] = max(hw[r.partition], r.offset)
        return _Staged(records, rejected)

    def staged_rejects(self, staged: _Staged) -> list[Rejected]:
        return staged.rejected

    def complete(self, staged: _Staged) -> Written:
        self._call("complete")
        if any((r.value or b"").startswith(b"poison") for r in staged.records):
            raise RejectedDataError("testing store: Code: 53. Type mismatch in a poison record", "INSERT ...")
        progress = self._progress
        counts = dict(self.store.counts)
        new_progress = dict(self.store.progress)
        rows = duplicates = 0
        for r in staged.records:
            p = r.partition
            if r.offset <= progress[p]:
                duplicates += 1
                continue
            if (p, r.offset) in self.store.raw:  # (a rejected one has no row)
                counts[p] = counts.get(p, 0) + 1
                rows += 1
            progress[p] = new_progress[p] = r.offset
        self.store.counts, self.store.progress = counts, new_progress  # one atomic insert
        return Written(rows=rows, duplicates=duplicates)

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._hw.pop(p, None)
            self._progress.pop(p, None)


class TestingDeadLetters:
    """Collects dead letters; the first ``fail_first`` sends raise (a broker that is down)."""

    __test__ = False

    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[Rejected] = []
        self.fail_first = fail_first
        self.attempts = 0

    async def send(self, rejected: Sequence[Rejected]) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise ConnectionError("testing broker is down")
        self.sent.extend(rejected)
