"""The Faust adapter: the only module that imports Faust. It feeds ``stream_processors.pipeline`` takes of
Kafka records and commits what the pipeline marks done; nothing else of the worker knows Faust.

- ``create_app(settings, worker)``: a ``faust.App`` with two agents (inference, feedback), each running one
  ``Pipeline`` over a ``FaustSource``; the rebalance signals go to ``Worker.revoke``; the group leader's timers
  publish closed windows and apply retention. ``run_worker`` runs it until SIGTERM.
- ``FaustSource``: takes of whole partition fetches (``take_ready``); a take's events are acknowledged only when
  the pipeline calls ``done`` (Faust commits acknowledged offsets every ``broker_commit_interval``), never when
  the agent's generator closes; events fetched before a rebalance are dropped unacknowledged.

Fetch-batch delivery (faust-streaming 0.15.x, aiokafka driver): an agent receives one event per (partition,
fetch) whose value is the list of aiokafka ``ConsumerRecord`` s, instead of one event per record.

Why: per record, stock Faust runs ``Consumer.getmany`` (a ConsumerMessage, a highwater lookup, a monitor call),
``Consumer._drain_messages`` (``Service.wait_first`` = 4 tasks + ``asyncio.wait``), the conductor (an
``asyncio.Lock``, flow control, decode, an ``Event``, a queue put), the stream iterator (``sleep(0)``, queue get,
sensors, a contextvar, the ack under a lock). Here all of that happens once per fetched partition batch.

How (three small subclasses, installed on a normal ``faust.App``):

- :class:`BatchingConsumer` overrides ``_drain_messages`` (the fetcher's loop) to hand the conductor one
  :class:`BatchMessage` per partition per fetch. Its ``offset`` is the batch's last offset, so Faust's own
  ack/commit path (stream auto-ack after the agent body, ``_acked``, ``_committed_offset``, commit on
  ``broker_commit_interval``/``broker_commit_every``, revoked partitions dropped from commits) keeps working;
  ``_new_offset`` expands an acked batch end back to every offset of the batch at commit time, so a commit
  never gets ahead of processing (at-least-once, as with per-record acks).
- :class:`BatchTopic` decodes a BatchMessage with no serializer (the value is already the record list).
- :func:`install` puts a transport using BatchingConsumer on the app (``app.transport`` has a public setter;
  the transport's ``Consumer`` class attribute is the documented extension point).

Only topics created with :class:`BatchTopic` should be consumed by an app using this consumer: every topic the
app subscribes to is delivered in batches. Relies on faust internals (``_drain_messages``,
``_wait_next_records``, ``_read_offset``, ``_acked``, ``_new_offset``): pin faust-streaming and keep the
test that checks committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ConsumerMessage

from store.base import Store, StoreError
from stream_processors.decode import Rejected
from stream_processors.pipeline import Clock, Take
from stream_processors.worker import Worker, WorkerSettings

log = logging.getLogger(__name__)

__all__ = ["FaustSource", "create_app", "run_worker", "take_ready"]


class BatchMessage(ConsumerMessage):
    """One partition's share of one fetch: ``value`` is the list of records, ``offset`` the last one's."""

    __slots__ = ("first_offset",)

    first_offset: int


class BatchingConsumer(faust_aiokafka.Consumer):
    """Delivers one BatchMessage per (partition, fetch) to the conductor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # tp -> {last offset of a delivered batch: its first offset}; consumed at commit time.
        self._batch_spans: dict[Any, dict[int, int]] = {}

    async def _drain_messages(self, fetcher: Any) -> None:  # the Fetcher service's loop
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        app = self.app
        spans = self._batch_spans
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:  # as Consumer.getmany: rebalancing, go back to the committed offsets
                    try:
                        await self.perform_seek()
                    except Exception as exc:  # same as faust's getmany
                        self.log.warning("seek when flow not active failed: %r", exc)
                    continue
                generation_id = app.consumer_generation_id
                for tp, recs in records.items():
                    if not self.flow_active or app.consumer_generation_id != generation_id:
                        break
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    r_offset = read_offset[tp]
                    if r_offset is not None and recs[0].offset < r_offset:
                        recs = [r for r in recs if r.offset >= r_offset]
                        if not recs:
                            continue
                    first, last = recs[0], recs[-1]
                    if acks_enabled_for(tp.topic):
                        # Offsets Kafka will never deliver (compaction, transaction markers) count as done,
                        # as in Consumer._drain_messages.
                        if r_offset and first.offset - r_offset > 1:
                            await self._add_gap(tp, r_offset + 1, first.offset - 1)
                        if last.offset - first.offset + 1 != len(recs):
                            prev = first.offset
                            for r in recs[1:]:
                                if r.offset - prev > 1:
                                    await self._add_gap(tp, prev + 1, r.offset - 1)
                                prev = r.offset
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    message = BatchMessage(
                        tp.topic,
                        tp.partition,
                        last.offset,
                        last.timestamp / 1000.0,
                        last.timestamp_type,
                        None,
                        None,
                        recs,  # type: ignore[arg-type]  # Message.value is typed bytes
                        None,
                        0,
                        0,
                        tp,
                        generation_id=generation_id,
                    )
                    message.first_offset = first.offset
                    spans.setdefault(tp, {})[last.offset] = first.offset
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                    read_offset[tp] = last.offset
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    def _new_offset(self, tp: Any) -> int | None:
        """Faust's commit offset, after widening each acked batch end to all the batch's offsets."""
        tp_spans = self._batch_spans.get(tp)
        if tp_spans:
            acked = self._acked[tp]
            extra: list[int] = []
            for off in acked:
                start = tp_spans.pop(off, None)
                if start is not None and start < off:
                    extra.extend(range(start, off))
            if extra:
                acked.extend(extra)
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        for tp in revoked:
            self._batch_spans.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        for tp in assigned:
            self._batch_spans.pop(tp, None)
        await super().on_partitions_assigned(assigned, generation_id)


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer


class BatchTopic(faust.Topic):
    """A topic whose events carry a BatchMessage's record list as value (no deserialization)."""

    def _compile_decode(self) -> None:
        create_event = self.app.create_event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return create_event(None, message.value, None, message)

        self.decode = decode  # type: ignore[method-assign]  # as Topic._compile_decode does


def install(app: Any) -> None:
    """Make ``app`` consume through BatchingConsumer. Call right after ``faust.App(...)``, before the app
    creates its consumer (i.e. before it starts)."""
    app.transport = BatchingTransport(app.conf.broker_consumer, app)


def batch_topic(app: Any, *topics: str, **kwargs: Any) -> Any:
    """``app.topic(...)`` for a batched topic."""
    return BatchTopic(app, topics=topics, value_serializer="raw", key_serializer="raw", **kwargs)


async def take_ready(
    stream: Any, max_records: int, within: float, busy_within: float
) -> AsyncIterator[tuple[list[Any], list[Any]]]:
    """``Stream.take`` of BatchMessage values (record lists) up to ``max_records`` records, that does not wait out
    ``within`` after a full take; yields ``(values, events)`` and acknowledges nothing (``FaustSource.done`` does).

    Full is ``max_records`` records, not a number of fetches: a live stream's fetches are small (a few hundred
    records), a backlog's large (~1,500), and a cap on fetches cut a live stream into small batches, each paying
    the store's fixed cost per batch. Faust's take waits until ``max_`` values are buffered or ``within`` seconds
    have passed since the previous take was consumed: when a backlog ends, the last take waits the whole
    ``within`` (measured: 0.5 s of a 5 s run of the pipeline benchmark) for values that are not coming. Here the
    wait is ``within`` after a take that was not full (traffic is light: batch it up, the fixed cost per batch
    stays small) and ``busy_within`` after a full one (a backlog: take what has arrived and go on). The code
    follows faust-streaming 0.15.3's ``Stream.take`` (its buffer processor and passive drain), changing when a
    take is full, the timeout, and the acknowledgements: Faust's take acknowledges a take's events when the
    caller comes back *or when the generator is closed* (an agent that crashed), which committed offsets whose
    rows were never stored.
    """
    buffer: list[Any] = []
    events: list[Any] = []
    size = 0  # records in the buffer
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future[None] | None = None
    enable_acks = stream.enable_acks
    channel_it = stream.channel.__aiter__()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming, size
        try:
            if buffer_consuming is not None:
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            buffer.append(value)
            size += len(value) if isinstance(value, list) else 1
            event = stream.current_event
            if event is None:
                raise RuntimeError("take buffer found current_event is None")
            events.append(event)
            if size >= max_records:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    timeout = within
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(buffer_full, timeout=timeout)
            if buffer:
                timeout = busy_within if size >= max_records else within
                buffer_consuming = stream.loop.create_future()
                taken = (list(buffer), list(events))
                buffer.clear()
                events.clear()
                size = 0
                try:
                    yield taken
                finally:
                    if buffer_consuming is not None and not buffer_consuming.done():
                        buffer_consuming.set_result(None)
                    buffer_full.clear()
                    buffer_consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)


class FaustSource:
    """A ``pipeline.Source`` over a Faust stream of ``BatchTopic`` events."""

    def __init__(self, app: Any, stream: Any, max_records: int, within: float, busy_within: float) -> None:
        self.app = app
        self.stream = stream
        self.max_records = max_records
        self.within = within
        self.busy_within = busy_within
        self.stale_dropped = 0  # records fetched before a rebalance, dropped unacknowledged (read again)

    async def takes(self) -> AsyncIterator[Take]:
        async for values, events in take_ready(self.stream, self.max_records, self.within, self.busy_within):
            generation = self.app.consumer_generation_id
            fresh = [e for e in events if e.message.generation_id == generation]
            if len(fresh) < len(events):
                # fetched before the latest rebalance: the consumer reads them again from the committed offsets
                self.stale_dropped += sum(len(e.value) for e in events if e.message.generation_id != generation)
                values = [e.value for e in fresh]
            if fresh:
                yield Take([r for records in values for r in records], token=fresh)

    def done(self, take: Take) -> None:
        stream = self.stream
        for event in take.token:
            last = event.ack()  # as Stream.ack (async there, with nothing to await), sensors included
            message = event.message
            stream._on_stream_event_out(message.tp, message.offset, stream, event)
            if last:
                stream._on_message_out(message.tp, message.offset, message)


class _FaustDeadLetters:
    """``pipeline.DeadLetters`` on a Faust topic: each message with its reason and source, delivered (acks=all)
    before ``send`` returns."""

    def __init__(self, topic: Any) -> None:
        self.topic = topic

    async def send(self, rejected: Sequence[Rejected]) -> None:
        futures = [
            await self.topic.send(
                force=True,  # now, not attached to the event being processed (sent when it is acked: never)
                value=r.value,
                headers={
                    "recwatch-reason": r.reason.encode(),
                    "recwatch-source": f"{r.topic}/{r.partition}/{r.offset}".encode(),
                },
            )
            for r in rejected
        ]
        await asyncio.gather(*futures)


def _exit_on_bug(exc: BaseException) -> None:
    """A bug, not a store fault (those are waited out): going on would skip what was not stored. Nothing unstored
    is acknowledged; the next worker reads it again from the committed offsets."""
    log.critical("worker pipeline failed; exiting", exc_info=exc)
    os._exit(70)


def create_app(settings: WorkerSettings, store: Store, clock: Clock | None = None) -> tuple[Any, Worker]:
    """A Faust app running a ``Worker`` over ``store`` (already connected and migrated)."""
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
        # a rebalance does not wait for every fetched event to be acknowledged: the pipeline drops what is not
        # stored (read again from the committed offsets), and during a store outage nothing is acknowledged
        stream_wait_empty=False,
        # back in the group soon after a restart or a broker outage (measured: docs/stream_processors.md)
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_request_timeout=settings.request_timeout_s,
        broker_max_poll_interval=settings.max_poll_interval_s,
        consumer_api_version="auto",
    )
    install(app)  # the agent gets one event per partition per fetch, not one per record
    source_topic = batch_topic(app, settings.source_topic)
    feedback_topic = batch_topic(app, settings.feedback_topic)
    dead_letters = _FaustDeadLetters(
        app.topic(settings.dead_letter_topic, value_serializer="raw", key_serializer="raw")
    )
    metrics = app.topic(settings.metrics_topic, value_serializer="raw", key_serializer="raw")
    worker = Worker(settings, store, dead_letters, clock=clock, on_fatal=_exit_on_bug)

    def source(stream: Any) -> FaustSource:
        return FaustSource(
            app, stream, settings.batch_max_records, settings.batch_within_s, settings.batch_busy_within_s
        )

    async def run(pipeline: Any, stream: Any) -> None:
        try:
            await pipeline.run(source(stream))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            _exit_on_bug(exc)

    @app.agent(source_topic, name="inference-sink")
    async def inference_agent(stream: Any) -> None:
        await run(worker.inference, stream)

    @app.agent(feedback_topic, name="feedback-sink")
    async def feedback_agent(stream: Any) -> None:
        await run(worker.feedback, stream)

    @app.timer(interval=settings.window_s, on_leader=True)  # type: ignore[untyped-decorator]
    async def publish_closed_windows() -> None:
        try:
            messages, through = await worker.in_sink_thread(worker.emitter.collect)
        except StoreError as exc:
            log.warning("closed windows not published (store: %s); next tick retries", exc)
            return
        if through is None:
            return
        sent = [await metrics.send(key=key, value=value) for key, value in messages]
        await asyncio.gather(*sent)  # delivered (acks=all) before the progress is recorded: at least once
        try:
            await worker.in_sink_thread(worker.emitter.mark_published, through)
        except StoreError as exc:
            log.warning("window publication progress not recorded (store: %s); republished next tick", exc)
            return
        if messages:
            log.info(
                "published %d window aggregates through %s",
                len(messages),
                time.strftime("%H:%M:%S", time.gmtime(through)),
            )

    @app.timer(interval=settings.retention_interval_s, on_leader=True)  # type: ignore[untyped-decorator]
    async def retention() -> None:
        from store.retention import apply_retention

        try:
            report = await worker.in_sink_thread(apply_retention, store, time.time())
        except StoreError as exc:
            log.warning("retention skipped (store: %s)", exc)
            return
        if report.dropped_count:
            log.info("retention: dropped %d expired partition(s): %s", report.dropped_count, report.dropped)

    def split(tps: Any) -> tuple[list[int], list[int]]:
        tps = list(tps)
        return (
            sorted(tp.partition for tp in tps if tp.topic == settings.source_topic),
            sorted(tp.partition for tp in tps if tp.topic == settings.feedback_topic),
        )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        await worker.revoke(*split(revoked))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        await worker.revoke(*split(assigned))  # (another worker may have written them meanwhile)
        worker.assigned(*split(assigned))

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def refresh_highwaters() -> None:
        """End offsets of the assigned partitions, for the lag on /metrics (a paused consumer fetches nothing, so
        the fetch responses' high-waters would stand still during a store outage)."""
        tps = list(app.consumer.assignment())
        if not tps:
            return
        try:
            ends = await app.consumer.highwaters(*tps)
        except Exception as exc:  # the broker is down: the lag stays as last read
            log.debug("end offsets not read: %r", exc)
            return
        worker.highwaters.update({(tp.topic, tp.partition): int(o) for tp, o in ends.items()})

    return app, worker


def run_worker(settings: WorkerSettings, store: Store, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT (graceful: batches in flight are dropped unacknowledged, offsets of stored ones are
    committed; the next start skips what the store holds)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop
    except ImportError:  # optional: ~25 % less CPU per batch on uvloop
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(ImportError):
        import pandas  # noqa: F401  (pyarrow imports it when it builds its first table: ~0.3 s, not in a batch)
    app, worker = create_app(settings, store)
    worker.start_metrics_server()
    faust_worker = faust.Worker(app, loglevel=loglevel, quiet=True, override_logging=False)
    try:
        faust_worker.execute_from_commandline()
    finally:
        worker.close()
