"""The Faust worker app: inference and feedback events from Kafka -> raw rows, windowed aggregates and
business metrics in the store; closed windows -> the metrics topic; hourly retention.

Agents: ``inference-sink`` (``InferenceSink``, then the predictions into ``FeedbackSink``'s join),
``feedback-sink`` (shop feedback into the join). Timers on the group's leader: ``publish_closed_windows``
(``WindowEmitter``: one ``WindowAggregate`` per series and closed 10 s window) and ``retention``.

Built by ``create_app(settings, store)``; there is no module-level app. Events arrive in batches: the agent
gets one Faust event per partition per fetch (``stream_processors.faust_batching``: stock Faust spends ~60 µs
of CPU per record on its per-message path, this ~3 µs) and takes them up to ``batch_max_records`` records at
once (``take_ready``: without waiting out ``batch_within_s`` when a backlog is being read).

A batch goes through two halves (``InferenceSink.stage`` / ``complete``) in two threads, so that the store engine
works on batch k + 1 while Python completes batch k:

- **stage** (ingest thread): on chDB, the engine parses the message bytes, stores the raw rows and computes the
  batch's window deltas (``stream_processors.protobuf_ingest``); rejected messages go to the dead-letter topic;
- **complete** (sink thread): the deltas become the cumulative window rows, the predictions go into the feedback
  join (``FeedbackSink``), both written to the store.

On chDB the take's offsets are acknowledged once its batches are staged (their raw rows are stored) and at most
``_AHEAD`` batches wait for completion; a worker that stops before completing them rebuilds their window rows from
the stored raw rows when it next gets the partition (``InferenceSink._repair``), and the feedback join replays
them. On ClickHouse 18.16 (no ``FORMAT Protobuf``) stage does nothing and every batch is completed, all in
Python, before its offsets are acknowledged. Either way the sinks' offset bookkeeping makes redelivery harmless
(see ``stream_processors.inference_sink``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import topics
from store.base import Store
from stream_processors import faust_batching
from stream_processors.decode import Rejected
from stream_processors.feedback_sink import FeedbackBatchResult, FeedbackSink
from stream_processors.inference_sink import BatchResult, InferenceSink, Staged
from stream_processors.window_emitter import WindowEmitter

log = logging.getLogger(__name__)

_AHEAD = 2  # batches staged (raw rows stored, deltas computed) but not yet completed, at most


@dataclass(frozen=True)
class WorkerSettings:
    bootstrap: str
    data_dir: Path
    app_id: str = "recwatch-worker"
    source_topic: str = topics.INFERENCE
    feedback_topic: str = topics.FEEDBACK
    metrics_topic: str = topics.METRICS
    dead_letter_topic: str = topics.DEAD_LETTER
    window_s: int = 10
    allowed_lateness_s: int = 30
    # Records taken together (whole partition fetches: a take may go over by one fetch) ...
    batch_max_records: int = 40_000
    batch_max_rows: int = 60_000  # ... and written to the store in (equal) inserts of at most this many rows
    batch_within_s: float = 0.5  # how long a take waits for more when traffic is light ...
    batch_busy_within_s: float = 0.05  # ... and after a full take (a backlog): ``faust_batching.take_ready``
    retention_interval_s: float = 3600.0  # how often the group's leader drops expired partitions (no-op with TTL)


def create_app(settings: WorkerSettings, store: Store) -> Any:
    """A Faust app consuming ``settings.source_topic`` into ``store`` (already connected and migrated)."""
    import faust

    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{hostport.strip()}" for hostport in settings.bootstrap.split(",")],
        datadir=str(settings.data_dir),
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        topic_allow_declare=True,
        producer_acks=-1,
    )
    faust_batching.install(app)  # the agent gets one event per partition per fetch, not one per record
    source = faust_batching.batch_topic(app, settings.source_topic)
    feedback = faust_batching.batch_topic(app, settings.feedback_topic)
    dead_letters = app.topic(settings.dead_letter_topic, value_serializer="raw", key_serializer="raw")
    metrics = app.topic(settings.metrics_topic, value_serializer="raw", key_serializer="raw")
    sink = InferenceSink(
        store,
        topic=settings.source_topic,
        window_s=settings.window_s,
        allowed_lateness_s=settings.allowed_lateness_s,
    )
    feedback_sink = FeedbackSink(store, inference_topic=settings.source_topic, feedback_topic=settings.feedback_topic)
    # One thread owns the sinks: their caches are touched by batches and by rebalances, never concurrently. The
    # ingest thread runs InferenceSink.stage (the store engine's half of a batch) of the next batch meanwhile.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recwatch-sink")
    ingest_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recwatch-ingest")
    pipeline = asyncio.Lock()  # a batch of fetches in flight, or a rebalance: not both
    totals = {"events": 0, "feedback": 0, "duplicates": 0, "rejected": 0}

    async def in_sink_thread(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def complete_inference(staged: Staged) -> tuple[BatchResult, FeedbackBatchResult]:
        result = sink.complete(staged)
        return result, feedback_sink.write_batch(inference=result.decoded, predictions=result.predictions)

    async def dead_letter(rejected: list[Rejected]) -> None:
        for r in rejected:
            await dead_letters.send(
                value=r.value,
                headers={
                    "recwatch-reason": r.reason.encode(),
                    "recwatch-source": f"{r.topic}/{r.partition}/{r.offset}".encode(),
                },
            )

    def chunks(fetches: list[Any]) -> Iterator[list[Any]]:
        """The fetched records (aiokafka ``ConsumerRecord``: partition, offset, value) in store writes of at most
        ``batch_max_rows``."""
        batch = [r for records in fetches for r in records]
        if not batch:
            return
        # equal parts: a take just over the limit (it ends on a whole fetch) must not leave a small tail batch
        # that pays the store's fixed cost per batch (~80 ms on chDB, measured) for a few hundred records
        parts = -(-len(batch) // settings.batch_max_rows)
        size = -(-len(batch) // parts)
        for start in range(0, len(batch), size):
            yield batch[start : start + size]

    # Batches staged but not yet completed, oldest first, each with its partitions and whether its offsets must
    # wait for the completion (a batch the Python path takes: nothing of it is stored before complete).
    pending: collections.deque[tuple[asyncio.Future[tuple[BatchResult, FeedbackBatchResult]], set[int], bool]]
    pending = collections.deque()

    async def finish_oldest() -> None:
        future, _, deferred = pending[0]
        try:
            result, business = await future
        except BaseException:
            await forget_pending()
            raise
        pending.popleft()
        if deferred:  # (the fast path sent its rejected messages right after staging)
            await dead_letter(result.rejected)
        totals["events"] += result.events_written
        totals["duplicates"] += result.duplicates_skipped
        totals["rejected"] += len(result.rejected)
        log.info(
            "inference batch: %d events written, %d windows, %d business windows updated, "
            "%d redelivered skipped, %d rejected (totals %s)",
            result.events_written,
            result.windows_written,
            business.windows_written,
            result.duplicates_skipped,
            len(result.rejected),
            totals,
        )

    async def forget_pending(also: Iterable[int] = ()) -> None:
        """After an error: wait until nothing runs, then drop both sinks' state of every partition in flight
        (read back from the store, and window rows rebuilt from stored events, at their next batch)."""
        touched = set(also)
        while pending:
            future, partitions, _ = pending.popleft()
            touched |= partitions
            await asyncio.wait([future])
        await in_sink_thread(forget_in_sinks, sorted(touched), sorted(touched))

    async def drain() -> None:
        while pending:
            await finish_oldest()

    async def write_inference(batches: Iterable[list[Any]]) -> None:
        """Each batch through ``sink.stage`` (ingest thread: on the fast path, the store engine parses, stores and
        aggregates it) then ``complete_inference`` (sink thread: window rows, the feedback join), in order. Up to
        ``_AHEAD`` batches may wait for completion, also after this call returns and the take acknowledges their
        offsets: their raw rows are stored, and a worker that stops before completing them rebuilds their window
        rows from those at its next start (``InferenceSink._repair``) and the feedback join replays them
        (``FeedbackSink``). A batch the Python path takes is completed before this returns."""
        loop = asyncio.get_running_loop()
        partitions: set[int] = set()
        try:
            for batch in batches:
                partitions = {r.partition for r in batch}
                if not (sink.knows(partitions) and feedback_sink.knows(partitions)):
                    await drain()  # a partition's first batch: its state is read from the store, nothing runs
                    await in_sink_thread(feedback_sink.prepare, partitions)
                staged = await loop.run_in_executor(ingest_executor, sink.stage, batch)
                deferred = staged.result is None
                if staged.result is not None:
                    await dead_letter(staged.result.rejected)
                pending.append((loop.run_in_executor(executor, complete_inference, staged), partitions, deferred))
                partitions = set()
                while len(pending) > _AHEAD or pending[0][0].done():
                    await finish_oldest()
            while any(deferred for _, _, deferred in pending):
                await finish_oldest()
        except BaseException:
            await forget_pending(partitions)
            raise

    def takes(stream: Any) -> AsyncIterator[list[Any]]:
        return faust_batching.take_ready(
            stream, settings.batch_max_records, settings.batch_within_s, settings.batch_busy_within_s
        )

    @app.agent(source, name="inference-sink")
    async def inference_sink(stream: AsyncIterable[Any]) -> None:
        async for fetches in takes(stream):
            async with pipeline:
                await write_inference(chunks(fetches))

    @app.agent(feedback, name="feedback-sink")
    async def feedback_agent(stream: AsyncIterable[Any]) -> None:
        async for fetches in takes(stream):
            for batch in chunks(fetches):
                result = await in_sink_thread(lambda b=batch: feedback_sink.write_batch(feedback=b))
                await dead_letter(result.rejected)
                totals["feedback"] += result.feedback_written
                totals["duplicates"] += result.duplicates_skipped
                totals["rejected"] += len(result.rejected)
                log.info(
                    "feedback batch: %d written, %d business windows updated, %d redelivered skipped, %d rejected",
                    result.feedback_written,
                    result.windows_written,
                    result.duplicates_skipped,
                    len(result.rejected),
                )

    emitter = WindowEmitter(store, window_s=settings.window_s, allowed_lateness_s=settings.allowed_lateness_s)

    @app.timer(interval=settings.window_s, on_leader=True)  # type: ignore[untyped-decorator]
    async def publish_closed_windows() -> None:
        messages, through = await in_sink_thread(emitter.collect)
        if through is None:
            return
        sent = [await metrics.send(key=key, value=value) for key, value in messages]
        await asyncio.gather(*sent)  # delivered (acks=all) before the progress is recorded: at least once
        await in_sink_thread(emitter.mark_published, through)
        if messages:
            log.info(
                "published %d window aggregates through %s",
                len(messages),
                time.strftime("%H:%M:%S", time.gmtime(through)),
            )

    @app.timer(interval=settings.retention_interval_s, on_leader=True)  # type: ignore[untyped-decorator]
    async def retention() -> None:
        from store.retention import apply_retention

        report = await in_sink_thread(apply_retention, store, time.time())
        if report.dropped_count:
            log.info("retention: dropped %d expired partition(s): %s", report.dropped_count, report.dropped)

    def forget_in_sinks(inference: list[int], either: list[int]) -> None:
        sink.forget_partitions(inference)
        feedback_sink.forget_partitions(either)

    async def forget(partitions: Iterable[Any]) -> None:
        tps = list(partitions)
        inference = [tp.partition for tp in tps if tp.topic == settings.source_topic]
        either = sorted({tp.partition for tp in tps if tp.topic in (settings.source_topic, settings.feedback_topic)})
        if either:
            async with pipeline:
                await drain()
                await in_sink_thread(forget_in_sinks, inference, either)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        await forget(revoked)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        await forget(assigned)

    return app


def run_worker(settings: WorkerSettings, store: Store, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT (graceful: the current batch finishes and offsets are committed)."""
    import faust

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop
    except ImportError:  # optional: ~25 % less CPU per batch on uvloop
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(ImportError):
        import pandas  # noqa: F401  (pyarrow imports it when it builds its first table: ~0.3 s, not in a batch)
    app = create_app(settings, store)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, override_logging=False)
    worker.execute_from_commandline()
