"""The worker's core: takes of Kafka records -> a sink -> the store, and the delivery rule. No Faust here.

**The delivery rule** (owned here and nowhere else): a take's offsets are marked done, i.e. handed back to its
``Source`` to commit, only once every row derived from them is stored (``Sink.complete`` returned) and the
take's rejected messages are on the dead-letter topic (``DeadLetters.send`` returned). On any store error
nothing is marked, and the sinks' state of the affected partitions is dropped (it is read back from the store).

How a take goes through (``Pipeline.process``): it is cut into store batches of at most ``max_rows`` records;
each batch is *staged* on the ingest thread (``Sink.stage``: on chDB the engine parses, stores the raw rows and
computes the window deltas) and then *completed* on the sink thread (``Sink.complete``: window rows, the feedback
join). Batch k + 1 is staged while batch k completes; at most ``ahead`` staged batches wait. ``process`` returns
once the take is staged, so the next take's staging overlaps this one's completion; its offsets are marked done
later, in take order.

Faults are waited out, never crashed on:

- a store that cannot be reached or answers errors (``StoreError``): every batch in flight is settled, the
  sinks forget the batches' partitions, and the batches are retried in order, one at a time, after a capped
  exponential backoff (``Backoff``; logged once per outage, counted in ``PipelineStats``). The source is not
  read meanwhile (its partitions stay paused: ``process`` does not return) and nothing is marked;
- a batch whose data the store refuses (``RejectedDataError`` ``poison_after`` times in a row: a type mismatch, a
  value it cannot hold; retrying will not fix it) is split in halves until the rejected record is alone; that
  record goes to the dead-letter topic with the store's reason (``store-rejected: ...``), awaited, and then counts
  as done. Any other ``QueryError`` (a server still loading, a limit hit) is retried like an outage: a store
  error never dead-letters data unless the store blames the data;
- a rebalance (``revoke``): queued batches that are not done are dropped unmarked (the partitions' new owner, or
  this worker after the reassignment, reads them again from the committed offsets: Kafka's eager rebalance
  protocol revokes every partition) and the sinks forget the partitions.

Redelivery is harmless because the sinks skip what the store already holds (``stream_processors.inference_sink``).

Anything else (a bug) propagates: the worker must stop rather than go on past records it did not store.

>>> import asyncio
>>> from stream_processors.testing import TestingSink, TestingSource, TestingClock
>>> source = TestingSource({0: [b"a", b"b", b"c"]}, take_size=2)
>>> sink = TestingSink()
>>> pipeline = Pipeline(sink, topic="t", clock=TestingClock())
>>> asyncio.run(pipeline.run(source)); pipeline.close()
>>> sink.stored, source.committed
([(0, 0, b'a'), (0, 1, b'b'), (0, 2, b'c')], {0: 3})
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from store.base import RejectedDataError, StoreError
from stream_processors.decode import Rejected
from stream_processors.records import Record

__all__ = [
    "Backoff",
    "Clock",
    "DeadLetters",
    "Pipeline",
    "PipelineStats",
    "Sink",
    "Source",
    "SystemClock",
    "Take",
    "Written",
]

log = logging.getLogger(__name__)

S = TypeVar("S")


class Clock(Protocol):
    """Time for backoff and health (tests inject ``stream_processors.testing.TestingClock``)."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(eq=False)
class Take:
    """Records fetched together from one topic (offsets increasing within each partition). ``token`` is the
    source's own handle, for ``Source.done``."""

    records: Sequence[Record]
    token: Any = None

    def last_offsets(self) -> dict[int, int]:
        return {r.partition: r.offset for r in self.records}


class Source(Protocol):
    """Where takes come from (the Faust adapter, ``stream_processors.testing.TestingSource``)."""

    def takes(self) -> AsyncIterator[Take]: ...

    def done(self, take: Take) -> None:
        """Every record of ``take`` (and of every take before it) is stored: its offsets may be committed."""
        ...


@dataclass
class Written:
    """What ``Sink.complete`` stored of a batch."""

    rows: int = 0  # new rows of the topic's main table (redelivered records excluded)
    duplicates: int = 0  # records the store already held
    rejected: list[Rejected] = field(default_factory=list)  # for the dead-letter topic, before the batch is done
    detail: str = ""  # for the log line


class Sink(Protocol[S]):
    """Writes batches of one topic. Called from two threads: ``stage`` on the ingest thread, everything else on
    the sink thread; ``stage`` calls are in batch order, and so are ``complete`` calls. Every method may raise
    ``StoreError``; the pipeline then calls ``forget`` for the partitions of every batch in flight and retries
    them, so a sink must make a retried or redelivered batch harmless (skip what the store holds)."""

    def knows(self, partitions: frozenset[int]) -> bool:
        """Whether the sink holds state for these partitions (``stage`` then reads nothing else first)."""
        ...

    def prepare(self, partitions: frozenset[int]) -> None:
        """Read the state of partitions it does not know, before their first batch is staged."""
        ...

    def stage(self, records: Sequence[Record]) -> S:
        """Store what can be stored of ``records`` first (raw rows) and find the rejected ones."""
        ...

    def staged_rejects(self, staged: S) -> Sequence[Rejected]:
        """Every message of the batch ``stage`` rejects, redelivered ones too (the pipeline sends each once per run,
        before the batch is completed: a worker killed in between sends it again after its restart)."""
        ...

    def complete(self, staged: S) -> Written: ...

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop cached state of these partitions (after an error, a rebalance)."""
        ...


class DeadLetters(Protocol):
    async def send(self, rejected: Sequence[Rejected]) -> None:
        """Deliver each message with its reason; returns once the broker has them (raises if it cannot)."""
        ...


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff between retries of a failing store (seconds)."""

    initial_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1, 2, ...)."""
        return float(min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1)))


@dataclass
class PipelineStats:
    """Counters of one pipeline, for ``/metrics`` and the log (monotonic clock seconds)."""

    batches_stored: int = 0
    rows_stored: int = 0
    duplicates_skipped: int = 0
    store_errors: int = 0  # failed store calls (each retried)
    retries: int = 0
    outages: int = 0  # runs of consecutive store errors
    dead_letters: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    started_at: float = 0.0
    last_stored_at: float | None = None
    outage_since: float | None = None
    done: dict[int, int] = field(default_factory=dict)  # partition -> last offset marked done
    first_seen: dict[int, int] = field(default_factory=dict)  # partition -> first offset queued (for the lag)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Abandoned(StoreError):
    """A completion that did not run because an earlier batch's completion failed (its state is gone)."""


class _BatchFailed(Exception):
    def __init__(self, batch: _Batch, error: BaseException) -> None:
        super().__init__(str(error))
        self.batch = batch
        self.error = error


@dataclass(eq=False)
class _Progress:
    take: Take
    done: Callable[[Take], None]
    left: int  # batches not yet done


@dataclass(eq=False)
class _Batch:
    progress: _Progress
    records: Sequence[Record]
    partitions: frozenset[int]
    future: asyncio.Future[Written] | None = None  # set once staged: the completion
    rejections: int = 0  # RejectedDataErrors in a row


class Pipeline(Generic[S]):
    """One topic's takes through ``sink``; see the module docstring for the guarantees.

    ``sink_executor`` runs ``prepare``/``complete``/``forget``: pass the same single-thread executor to pipelines
    whose sinks share state (the inference and feedback sinks share the feedback join). ``on_fatal`` is called with
    a bug (not a store error) found while finishing batches between takes, where no caller is waiting to see it.
    Construction does no I/O.
    """

    def __init__(
        self,
        sink: Sink[S],
        *,
        topic: str,
        dead_letters: DeadLetters | None = None,
        clock: Clock | None = None,
        backoff: Backoff = Backoff(),
        max_rows: int = 60_000,
        ahead: int = 2,
        poison_after: int = 3,
        sink_executor: Executor | None = None,
        ingest_executor: Executor | None = None,
        on_written: Callable[[Written], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.sink = sink
        self.topic = topic
        self.dead_letters = dead_letters
        self.clock: Clock = clock or SystemClock()
        self.backoff = backoff
        self.max_rows = max_rows
        self.ahead = ahead
        self.poison_after = poison_after
        self.stats = PipelineStats(started_at=self.clock.monotonic())
        self._sink_executor = sink_executor or ThreadPoolExecutor(1, thread_name_prefix="recwatch-sink")
        self._ingest_executor = ingest_executor or ThreadPoolExecutor(1, thread_name_prefix="recwatch-ingest")
        self._owned: list[Executor] = []
        if sink_executor is None:
            self._owned.append(self._sink_executor)
        if ingest_executor is None:
            self._owned.append(self._ingest_executor)
        self._on_written = on_written
        self._on_fatal = on_fatal  # a bug found between takes (the worker exits on it)
        self._queue: collections.deque[_Batch] = collections.deque()  # not yet done, in order
        self._busy = asyncio.Lock()
        self._epoch = 0  # bumped by revoke: work of an older epoch is dropped
        self._broken = False  # a completion failed: later ones must not run (sink thread)
        self._failures = 0  # store errors in a row
        self._lettered: set[tuple[int, int]] = set()  # (partition, offset) delivered, not yet done
        self._finisher: asyncio.Future[None] | None = None  # finishes completed batches between takes
        self._error: BaseException | None = None

    async def run(self, source: Source) -> None:
        """Process every take of ``source``, then wait until all are done."""
        async for take in source.takes():
            await self.process(take, source.done)
        await self.drain()

    async def process(self, take: Take, done: Callable[[Take], None]) -> None:
        """Queue ``take``'s batches and stage them; returns once at most ``ahead`` of them wait for completion
        (after waiting out any store outage). ``done(take)`` is called once the take is stored, in take order."""
        batches = list(self._chunks(take.records))
        if not batches:
            done(take)  # (an empty take: nothing to store)
            return
        if self._error is not None:
            raise self._error
        progress = _Progress(take, done, len(batches))
        queued = [_Batch(progress, b, frozenset(r.partition for r in b)) for b in batches]
        seen = self.stats.first_seen
        if any(not b.partitions <= seen.keys() for b in queued):
            for r in take.records:
                seen.setdefault(r.partition, r.offset)
        async with self._busy:
            self._queue.extend(queued)
            await self._run(self.ahead)

    async def drain(self) -> None:
        """Wait until every queued batch is done."""
        if self._error is not None:
            raise self._error
        async with self._busy:
            await self._run(0)

    def close(self) -> None:
        """Stop the threads this pipeline started (not those passed in)."""
        for executor in self._owned:
            executor.shutdown(wait=True)

    async def revoke(self, partitions: Iterable[int]) -> None:
        """A rebalance: drop every batch not yet done (unmarked: it is read again from the committed offsets) and
        the sinks' state of its partitions and of ``partitions``. Does not wait out a store outage."""
        self._epoch += 1
        async with self._busy:
            touched = set(partitions)
            await self._settle()
            touched.update(p for b in self._queue for p in b.partitions)
            self._queue.clear()
            if touched:
                await self._in_sink(self._forget, sorted(touched))

    # -- the loop --------------------------------------------------------------------------------------------

    async def _run(self, keep: int) -> None:
        """Stage every queued batch in order and finish (await, dead-letter, mark) the oldest until at most
        ``keep`` wait; store errors are recovered from here, and the loop goes on until that holds."""
        epoch = self._epoch
        q = self._queue
        while epoch == self._epoch:
            try:
                limit = self.ahead if self._failures == 0 else 0  # after an error: one batch at a time
                oldest = q[0] if q else None
                staged = sum(1 for b in q if b.future is not None)
                if oldest is not None and oldest.future is not None and (oldest.future.done() or staged > limit):
                    await self._finish(oldest)
                    continue
                unstaged = next((b for b in q if b.future is None), None)
                if unstaged is None:
                    if len(q) > keep:
                        await self._finish(q[0])
                        continue
                    return
                await self._stage(unstaged)
            except _BatchFailed as failed:
                if not isinstance(failed.error, StoreError):
                    raise failed.error from None
                await self._recover(failed.batch, failed.error)

    async def _stage(self, batch: _Batch) -> None:
        loop = asyncio.get_running_loop()
        try:
            if not self.sink.knows(batch.partitions):
                while self._queue[0] is not batch:  # nothing else in flight while a partition's state is read
                    await self._finish(self._queue[0])
                await self._in_sink(self.sink.prepare, batch.partitions)
            staged = await loop.run_in_executor(self._ingest_executor, self.sink.stage, batch.records)
        except _BatchFailed:
            raise
        except Exception as exc:
            raise _BatchFailed(batch, exc) from exc
        await self._send_dead_letters(self.sink.staged_rejects(staged))
        batch.future = loop.run_in_executor(self._sink_executor, self._complete, staged)
        # an error is read where the batch is finished or settled; a future dropped unread (a bug propagating, a
        # cancelled worker) must not log "exception was never retrieved" from whatever thread collects it
        batch.future.add_done_callback(_retrieve)
        batch.future.add_done_callback(self._completed)

    def _completed(self, _future: asyncio.Future[Written]) -> None:
        """A completion ended: finish it now, not when the next take comes (a quiet stream has no next take, and
        its last batches would stay unmarked, their offsets uncommitted)."""
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.ensure_future(self._finish_completed())

    async def _finish_completed(self) -> None:
        try:
            async with self._busy:
                await self._run(self.ahead)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: raised by the next process()/drain(), the caller stops
            log.critical("%s: finishing batches failed: %r", self.topic, exc)
            self._error = exc  # (raised by the next process() or drain() too)
            if self._on_fatal is not None:
                self._on_fatal(exc)

    def _complete(self, staged: S) -> Written:  # on the sink thread, in batch order
        if self._broken:
            raise _Abandoned()
        try:
            return self.sink.complete(staged)
        except BaseException:
            self._broken = True
            raise

    async def _finish(self, batch: _Batch) -> None:
        assert batch.future is not None
        try:
            written = await batch.future
        except Exception as exc:
            raise _BatchFailed(batch, exc) from exc
        await self._send_dead_letters(written.rejected)
        self._queue.popleft()
        if self._failures:
            assert self.stats.outage_since is not None
            log.warning(
                "%s: the store is back after %.1f s (%d failed attempts); going on",
                self.topic,
                self.clock.monotonic() - self.stats.outage_since,
                self._failures,
            )
            self._failures = 0
            self.stats.outage_since = None
        stats = self.stats
        stats.batches_stored += 1
        stats.rows_stored += written.rows
        stats.duplicates_skipped += written.duplicates
        stats.last_stored_at = self.clock.monotonic()
        if self._on_written is not None:
            self._on_written(written)
        self._batch_done(batch)

    def _batch_done(self, batch: _Batch) -> None:
        """The delivery rule's one place: a take is done once its last batch is (batches end in order)."""
        progress = batch.progress
        progress.left -= 1
        if progress.left == 0:
            last = progress.take.last_offsets()
            self.stats.done.update(last)
            if self._lettered:
                self._lettered = {(p, o) for p, o in self._lettered if o > last.get(p, -1)}
            progress.done(progress.take)

    async def _send_dead_letters(self, rejected: Sequence[Rejected]) -> None:
        """Deliver ``rejected`` before their batch is done, each once per run (a retried batch rejects its messages
        again); a broker that cannot take them is waited out."""
        if not rejected:
            return
        done, lettered = self.stats.done, self._lettered
        rejected = [
            r for r in rejected if r.offset > done.get(r.partition, -1) and (r.partition, r.offset) not in lettered
        ]
        if not rejected:
            return
        if self.dead_letters is None:
            raise RuntimeError(f"{len(rejected)} rejected messages of {self.topic} and no dead-letter topic")
        attempt = 0
        while True:
            try:
                await self.dead_letters.send(rejected)
                break
            except Exception as exc:  # the broker is down or timed out: the batch waits
                attempt += 1
                delay = self.backoff.delay(attempt)
                if attempt == 1:
                    log.warning("%s: dead letters not delivered (%r); retrying every <= %.1f s", self.topic, exc, delay)
                await self.clock.sleep(delay)
        for r in rejected:
            self.stats.dead_letters[r.reason.split(":", 1)[0]] += 1
            lettered.add((r.partition, r.offset))

    async def _recover(self, batch: _Batch, error: StoreError) -> None:
        """After a store error: settle what runs, forget the batches' partitions, handle a poison batch, wait."""
        stats = self.stats
        stats.store_errors += 1
        self._failures += 1
        now = self.clock.monotonic()
        if stats.outage_since is None:
            stats.outage_since = now
            stats.outages += 1
            log.warning(
                "%s: store error, retrying (backoff up to %.1f s, partitions paused, nothing acknowledged): %s",
                self.topic,
                self.backoff.max_s,
                str(error).splitlines()[0][:300] if str(error) else repr(error),
            )
        await self._settle()
        touched = sorted({p for b in self._queue for p in b.partitions})
        await self._in_sink(self._forget, touched)
        if isinstance(error, RejectedDataError) and batch in self._queue:
            batch.rejections += 1
            if batch.rejections >= self.poison_after:
                await self._isolate(batch, error)
                return  # no wait: the store answers, it rejects this batch
        else:
            batch.rejections = 0
        stats.retries += 1
        await self._sleep(self.backoff.delay(self._failures))

    async def _isolate(self, batch: _Batch, error: RejectedDataError) -> None:
        """A batch the store keeps rejecting: split it, or dead-letter its one record."""
        q = self._queue
        at = q.index(batch)
        if len(batch.records) > 1:
            half = len(batch.records) // 2
            parts = [batch.records[:half], batch.records[half:]]
            q.remove(batch)
            for i, records in enumerate(parts):
                part = _Batch(batch.progress, records, frozenset(r.partition for r in records))
                part.rejections = self.poison_after - 1  # a half that is rejected again is split at once
                q.insert(at + i, part)
            batch.progress.left += 1
            return
        (r,) = batch.records
        reason = "store-rejected: " + (str(error).splitlines()[0][:200] if str(error) else type(error).__name__)
        log.error(
            "%s: record %d/%d rejected by the store, to the dead-letter topic: %s",
            self.topic,
            r.partition,
            r.offset,
            reason,
        )
        await self._send_dead_letters([Rejected(self.topic, r.partition, r.offset, r.value or b"", reason)])
        q.remove(batch)
        self._failures = 0
        self.stats.outage_since = None
        self._batch_done(batch)  # (the batches before it are done: after an error they go one at a time)

    async def _settle(self) -> None:
        """Wait for every staged batch's completion to end (either way) and unstage them all."""
        for b in self._queue:
            if b.future is not None:
                await asyncio.wait([b.future])
                if not b.future.cancelled():
                    b.future.exception()  # retrieved: no "never retrieved" warning
                b.future = None

    def _forget(self, partitions: list[int]) -> None:  # on the sink thread, nothing else running
        self.sink.forget(partitions)
        self._broken = False

    async def _sleep(self, seconds: float) -> None:
        """Back off, letting a rebalance (``revoke``) in meanwhile."""
        self._busy.release()
        try:
            await self.clock.sleep(seconds)
        finally:
            await self._busy.acquire()

    def _in_sink(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(self._sink_executor, fn, *args)

    def _chunks(self, records: Sequence[Record]) -> Iterable[Sequence[Record]]:
        """Equal parts of at most ``max_rows``: a take just over the limit must not leave a small tail batch that
        pays the store's fixed cost per batch (~80 ms on chDB, measured) for a few hundred records."""
        if not records:
            return
        parts = -(-len(records) // self.max_rows)
        size = -(-len(records) // parts)
        for start in range(0, len(records), size):
            yield records[start : start + size]
