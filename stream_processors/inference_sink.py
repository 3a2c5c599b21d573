"""Writes inference events and their 10-second aggregates to the store, exactly once per Kafka offset.

Kafka delivers at least once: after a crash or a rebalance the worker sees offsets again. The sink makes
that harmless by storing the offsets with the data:

- ``inference_events`` rows carry ``(kafka_partition, kafka_offset)``; per partition, offsets at or below the
  highest one already stored are skipped.
- ``inference_metrics_10s_parts`` holds one *cumulative* row per (window, model, version, label, replica,
  partition) whose ``last_offset`` says how far into the partition it has counted. A redelivered event whose
  offset is at or below that is skipped, and a newer row replaces the older one (ReplacingMergeTree).

Each batch is one insert per table, so a crash leaves every row either fully written or absent. State for
keys the worker has not seen since it started (or since it got the partition) is read back from the store.

Partitions are identified within one topic; recreating a topic under the same name resets its offsets and
needs a fresh database (documented in docs/tables.md).

Two paths, the same rows (``tests/unit/test_protobuf_ingest.py``): on a store that can parse Protobuf itself
(chDB: ``store.base.InputStore``) ``stage`` hands the message bytes to the engine, which stores the raw rows
and returns each window's delta (``stream_processors.protobuf_ingest``), and ``complete`` adds the deltas to the
cumulative rows; elsewhere (ClickHouse 18.16), or for a batch the engine cannot parse, ``complete`` decodes,
stores and folds the batch in Python. On the fast path a partition whose raw rows go further than its window
rows when the sink first sees it has the difference folded in from the table (``_repair``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from schemas import InferenceEvent
from store.base import InputStore, Store, StoreError
from store.sql import string_literal
from stream_processors.decode import Rejected, decode_inference
from stream_processors.protobuf_ingest import ParseFailed, PredictionColumns, ingest, rebuild_deltas
from stream_processors.records import Record, replayed
from stream_processors.window_rows import (
    EVENT_COLUMNS,
    STATE_SELECT,
    WindowKey,
    WindowState,
    key_of_row,
    state_of_row,
    window_columns,
)
from stream_processors.windows import Watermark, WindowSpec

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    events_written: int = 0
    duplicates_skipped: int = 0
    windows_written: int = 0
    decoded: list[tuple[Record, InferenceEvent]] = field(default_factory=list)  # for the feedback sink ...
    predictions: PredictionColumns | None = None  # ... or this, from the ingest fast path
    # every unusable message of the batch, redelivered ones too: nothing in the store says a rejected message
    # reached the dead-letter topic (the pipeline sends each at least once, and once per worker run)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class Staged:
    """A batch between ``InferenceSink.stage`` (its raw rows stored, ``result.rejected`` found) and ``complete``."""

    messages: Sequence[Record]
    result: BatchResult
    deltas: dict[WindowKey, WindowState]
    max_event_us: dict[int, int] = field(default_factory=dict)
    decoded: bool = False  # the Python path: ``result.decoded`` holds the events, complete folds them


class InferenceSink:
    def __init__(
        self,
        store: Store,
        *,
        topic: str,
        window_s: int = 10,
        allowed_lateness_s: int = 30,
        state_horizon_s: int = 3600,
        fast_path: bool | None = None,
    ) -> None:
        """``fast_path``: hand the message bytes to the store engine (``protobuf_ingest``); None (the default)
        when the store can (chDB), False to decode in Python always."""
        if fast_path and not isinstance(store, InputStore):
            raise ValueError(f"the store at {store.url} cannot parse Protobuf itself: no fast path")
        self.store = store
        self.topic = topic
        self.window_s = window_s
        self.allowed_lateness_s = allowed_lateness_s
        self._input: InputStore | None = store if fast_path is not False and isinstance(store, InputStore) else None
        self.parse_fallbacks = 0  # batches the engine could not parse, decoded in Python instead
        self.repaired = 0  # stored events folded into window rows at a restart (``_repair``)
        self.state_horizon_s = state_horizon_s
        self._high_water: dict[int, int] = {}  # partition -> highest offset stored in inference_events
        self._windows: dict[WindowKey, WindowState] = {}
        self._watermark = Watermark(WindowSpec(window_s, allowed_lateness_s=allowed_lateness_s))
        self._progress: dict[int, int] = {}  # partition -> highest offset folded into window rows
        self._max_event_us: dict[int, int] = {}  # partition -> latest event time folded in (restores the watermark)
        self._newest_start: dict[int, int] = {}  # partition -> no stored window row of it starts later

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop cached state of partitions this worker lost (or just got): another worker may have written."""
        lost = set(partitions)
        for p in lost:
            self._high_water.pop(p, None)
            self._progress.pop(p, None)
            self._newest_start.pop(p, None)
            self._max_event_us.pop(p, None)
            self._watermark.forget(p)
        for key in [k for k in self._windows if k[5] in lost]:
            del self._windows[key]

    def write_batch(self, messages: Sequence[Record]) -> BatchResult:
        """Store a batch of messages (any partitions, offsets increasing within each partition).

        Raises ``StoreError`` if the store fails; nothing of the batch is then marked done, so the caller may
        retry the same batch (or let Kafka redeliver it) without double counting.
        """
        try:
            return self.complete(self.stage(messages))
        except StoreError:
            self.forget_partitions({m.partition for m in messages})  # the cache may be behind the store
            raise

    # The two halves of write_batch, for a worker that overlaps them across batches (``pipeline.Pipeline``):
    # stage(k + 1) stores batch k + 1's raw rows (on the fast path the store engine parses them and computes their
    # window deltas) in one thread while complete(k) writes batch k's window rows in another, provided every
    # partition of batch k + 1 has been seen before (``knows``), stage calls are in batch order, complete calls
    # are in batch order, and after a StoreError from either the caller stops, waits for both and calls
    # ``forget_partitions`` for both batches (neither half forgets anything itself: the other may be running).
    # ``Staged.result.rejected`` is known once stage(k) returns. Offsets may be acknowledged once complete(k)
    # has returned.

    def knows(self, partitions: Iterable[int]) -> bool:
        """Whether the sink has cached state for all these partitions (stage then reads nothing else)."""
        return all(p in self._progress and p in self._high_water for p in partitions)

    def prepare(self, partitions: Iterable[int]) -> None:
        """Read the state of partitions not seen yet (their high-water and window progress), in one query each."""
        self._high_waters(set(partitions))
        self._restore_progress(set(partitions))

    def stage(self, messages: Sequence[Record]) -> Staged:
        """The first half: the raw rows stored and the rejected messages found (on the fast path the engine parses,
        stores and aggregates the batch; else it is decoded here)."""
        if self._input is not None and messages:
            try:
                return self._stage_ingested(self._input, messages)
            except ParseFailed as exc:
                self.parse_fallbacks += 1
                log.warning(
                    "the store could not parse a batch of %d messages, decoding it in Python: %s",
                    len(messages),
                    str(exc).splitlines()[0][:300],
                )
        return Staged(messages, self._stage_decoded(messages), {}, decoded=True)

    def complete(self, staged: Staged) -> BatchResult:
        """The second half: fold the deltas (or, on the Python path, the decoded events) into the cumulative
        window rows and write them."""
        result = staged.result
        if staged.decoded:
            # Redelivered events still pass through here: a crash may have come between the two inserts.
            result.windows_written = self._aggregate(result.decoded)
        else:
            result.windows_written = self._merge_deltas(staged.deltas, staged.max_event_us)
        return result

    def _stage_ingested(self, store: InputStore, messages: Sequence[Record]) -> Staged:
        result = BatchResult()
        partitions = {m.partition for m in messages}
        high_water = self._high_waters(partitions)
        self._restore_progress(partitions)
        behind = {p: (self._progress[p], high_water[p]) for p in partitions if high_water[p] > self._progress[p]}
        if behind:
            self._repair(behind)
        framed = [m for m in messages if m.value]
        if len(framed) < len(messages):
            for m in messages:
                if not m.value:
                    result.rejected.append(Rejected(self.topic, m.partition, m.offset, b"", "empty"))
        out = None
        if framed:
            out = ingest(
                store,
                framed,
                high_water=high_water,
                progress={p: self._progress[p] for p in partitions},
                max_event_us={p: self._max_event_us.get(p, 0) for p in partitions},
                window_s=self.window_s,
                allowed_lateness_s=self.allowed_lateness_s,
                now_us=time.time_ns() // 1000,
            )
        hw = self._high_water
        last = {m.partition: m.offset for m in messages}  # offsets increase within a partition
        for p, offset in last.items():  # rejected ones count as done too: they are on the dead-letter topic
            hw[p] = max(hw[p], offset)
        if out is None:
            return Staged(messages, result, {})
        if out.rejected:
            values = {(m.partition, m.offset): m.value or b"" for m in framed}
            result.rejected.extend(Rejected(self.topic, p, o, values[(p, o)], r) for p, o, r in out.rejected)
            result.rejected.sort(key=lambda r: (r.partition, r.offset))
        result.events_written, result.duplicates_skipped = out.written, out.seen  # (copies are among the seen)
        result.predictions = out.predictions
        for p, (event_us, offset) in out.folded.items():  # what the next stage() starts from
            if event_us > self._max_event_us.get(p, -1):
                self._max_event_us[p] = event_us
            self._progress[p] = max(self._progress[p], offset)
            self._watermark.restore(p, self._max_event_us[p])  # for a batch the Python path takes
        return Staged(messages, result, out.deltas, {p: self._max_event_us[p] for p in out.folded})

    def _repair(self, behind: dict[int, tuple[int, int]]) -> None:
        """Fold stored raw rows that no window row counts yet (offsets in ``(progress, high-water]``) into the
        window rows. A worker that stopped between storing a batch and writing its window rows left them, and may
        have acknowledged their offsets already: Kafka will not redeliver them (see the worker's pipeline)."""
        deltas, folded = rebuild_deltas(
            self.store,
            behind,
            max_event_us={p: self._max_event_us.get(p, 0) for p in behind},
            window_s=self.window_s,
            allowed_lateness_s=self.allowed_lateness_s,
        )
        for p, (event_us, _) in folded.items():
            if event_us > self._max_event_us.get(p, -1):
                self._max_event_us[p] = event_us
        n = self._merge_deltas(deltas, {p: self._max_event_us[p] for p in folded})
        for p, (_, stored) in behind.items():
            self._progress[p] = stored
            if p in self._max_event_us:
                self._watermark.restore(p, self._max_event_us[p])
        self.repaired += sum(s.requests + s.late_events for s in deltas.values())
        log.warning("window rows rebuilt from stored events of partitions %s: %d windows", sorted(behind), n)

    def _merge_deltas(self, deltas: dict[WindowKey, WindowState], max_event_us: dict[int, int]) -> int:
        """Add the batch's per-window deltas to the cumulative rows and write those (with each partition's latest
        event time as of this batch)."""
        if not deltas:
            return 0
        self._load_windows(set(deltas))
        updated: dict[WindowKey, WindowState] = {}
        for key, delta in deltas.items():
            state = updated[key] = self._windows[key].copy()  # the cache changes only once the insert succeeded
            state.merge(delta)
            state.last_offset = max(state.last_offset, delta.last_offset)
        self.store.insert("inference_metrics_10s_parts", window_columns(updated, max_event_us))
        self._windows.update(updated)
        self._evict(max(k[0] for k in deltas))
        return len(updated)

    def _stage_decoded(self, messages: Sequence[Record]) -> BatchResult:
        """The Python path's first half: decode, reject, store the new raw rows (``complete`` folds the windows)."""
        result = BatchResult()
        decoded_events: list[tuple[Record, InferenceEvent]] = []
        new_events: list[tuple[Record, InferenceEvent]] = []
        high_water = self._high_waters({m.partition for m in messages})
        for msg in messages:
            decoded = decode_inference(msg.value)
            if isinstance(decoded, str):  # (also when redelivered: see ``BatchResult.rejected``)
                result.rejected.append(Rejected(self.topic, msg.partition, msg.offset, msg.value or b"", decoded))
                continue
            decoded_events.append((msg, decoded))
        copies = self._copies(decoded_events)
        if copies:
            decoded_events = [(m, ev) for m, ev in decoded_events if (m.partition, m.offset) not in copies]
            result.duplicates_skipped += len(copies)
        for msg, ev in decoded_events:
            if msg.offset <= high_water[msg.partition]:
                result.duplicates_skipped += 1
            else:
                new_events.append((msg, ev))
        if new_events:
            self.store.insert("inference_events", _event_columns(new_events))
            result.events_written = len(new_events)
        for msg in messages:  # rejected ones count as done too: they are on the dead-letter topic
            if msg.offset > self._high_water[msg.partition]:
                self._high_water[msg.partition] = msg.offset
        result.decoded = decoded_events
        return result

    def _copies(self, events: Sequence[tuple[Record, InferenceEvent]]) -> set[tuple[int, int]]:
        """(partition, offset) of the events that are a later copy of an event: the same ``event_id`` in the same
        partition at a lower offset, stored or in this batch (a model server that lost Kafka's acknowledgement of
        an event it had sent spools it and sends it again, with the ``recwatch-replayed`` header). As
        ``protobuf_ingest._copies_sql``: only the replayed events are looked up."""
        suspects = replayed(m for m, _ in events)
        if not suspects:
            return set()
        first: dict[tuple[int, str], int] = {}
        for msg, ev in events:
            first.setdefault((msg.partition, ev.event_id), msg.offset)
        copies: set[tuple[int, int]] = set()
        looked_up: list[tuple[Record, InferenceEvent]] = []
        for msg, ev in events:
            if (msg.partition, msg.offset) not in suspects:
                continue
            if first[(msg.partition, ev.event_id)] < msg.offset:
                copies.add((msg.partition, msg.offset))  # (an earlier copy in this batch)
            else:
                looked_up.append((msg, ev))
        for start in range(0, len(looked_up), 1000):  # (18.16's query size limit: 256 KiB)
            chunk = looked_up[start : start + 1000]
            times = [ev.received_us // 1_000_000 for _, ev in chunk]
            models = ", ".join(string_literal(m) for m in sorted({ev.model for _, ev in chunk}))
            ids = ", ".join(string_literal(ev.event_id) for _, ev in chunk)
            partitions = ", ".join(str(p) for p in sorted({m.partition for m, _ in chunk}))
            rows = self.store.query(
                "SELECT kafka_partition, event_id, min(kafka_offset) FROM inference_events "
                f"WHERE model IN ({models}) AND event_time >= toDateTime({min(times)}) "
                f"AND event_time <= toDateTime({max(times)}) AND event_id IN ({ids}) "
                f"AND kafka_partition IN ({partitions}) GROUP BY kafka_partition, event_id"
            ).rows
            stored = {(int(p), str(i)): int(o) for p, i, o in rows}
            for msg, ev in chunk:
                if stored.get((msg.partition, ev.event_id), msg.offset) < msg.offset:
                    copies.add((msg.partition, msg.offset))
        return copies

    def _high_waters(self, partitions: set[int]) -> dict[int, int]:
        """The highest offset stored in ``inference_events`` per partition (read once per partition, together)."""
        missing = sorted(p for p in partitions if p not in self._high_water)
        if missing:
            rows = self.store.query(
                "SELECT kafka_partition, max(kafka_offset) FROM inference_events "
                f"WHERE kafka_partition IN ({', '.join(str(p) for p in missing)}) GROUP BY kafka_partition"
            ).rows
            stored = {int(r[0]): int(r[1]) for r in rows}
            for p in missing:
                self._high_water[p] = stored.get(p, -1)
        return {p: self._high_water[p] for p in partitions}

    def _aggregate(self, fresh: list[tuple[Record, InferenceEvent]]) -> int:
        """Fold events into their windows; an event whose window the partition's watermark already closed
        counts as late in that window's row instead. Only offsets past the partition's progress count."""
        if not fresh:
            return 0
        self._restore_progress({msg.partition for msg, _ in fresh})
        progress, watermark, window_s = self._progress, self._watermark, self.window_s
        keyed: list[tuple[WindowKey, Record, InferenceEvent, bool]] = []
        for msg, ev in fresh:
            p = msg.partition
            if msg.offset <= progress[p]:
                continue  # folded in before a restart or a rebalance
            t = ev.received_us
            late = watermark.observe(p, t).is_late
            if t > self._max_event_us.get(p, -1):
                self._max_event_us[p] = t
            start = t // 1_000_000 // window_s * window_s
            keyed.append(((start, ev.model, ev.version, ev.label, ev.replica, p), msg, ev, late))
        if not keyed:
            return 0
        self._load_windows({k for k, _, _, _ in keyed})
        updated: dict[WindowKey, WindowState] = {}
        for key, msg, ev, late in keyed:
            state = updated.get(key)
            if state is None:
                state = self._windows[key]
                if msg.offset <= state.last_offset:
                    continue  # already counted (a crash between this row's insert and the progress one)
                state = updated[key] = state.copy()  # the cache changes only once the insert succeeded
            elif msg.offset <= state.last_offset:
                continue
            if late:
                state.late_events += 1
            else:
                state.add(ev)
            state.last_offset = msg.offset
        if updated:
            max_event = self._max_event_us
            self.store.insert("inference_metrics_10s_parts", window_columns(updated, max_event))
            self._windows.update(updated)
        for key, msg, _, _ in keyed:
            if msg.offset > progress[key[5]]:
                progress[key[5]] = msg.offset
        self._evict(max(k[0] for k, _, _, _ in keyed))
        return len(updated)

    def _restore_progress(self, partitions: set[int]) -> None:
        """Read back, for partitions not seen since start (or since assignment), how far their window rows got
        and the latest event time folded in: the watermark resumes where it was."""
        missing = sorted(p for p in partitions if p not in self._progress)
        if not missing:
            return
        rows = self.store.query(
            "SELECT kafka_partition, max(last_offset), argMax(max_event_us, last_offset), max(toUInt32(window_start)) "
            "FROM inference_metrics_10s_parts "
            f"WHERE kafka_partition IN ({', '.join(str(p) for p in missing)}) GROUP BY kafka_partition"
        ).rows
        stored = {int(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}
        for p in missing:
            offset, max_event_us, newest = stored.get(p, (-1, 0, -1))
            self._progress[p] = offset
            self._newest_start[p] = newest
            if offset >= 0 and max_event_us > 0:
                self._max_event_us[p] = max_event_us
                self._watermark.restore(p, max_event_us)

    def _load_windows(self, keys: set[WindowKey]) -> None:
        """Put the stored rows of these keys (or empty states) in the cache. A window newer than any the
        partition's rows hold (read at restore, then those this sink wrote) cannot be stored: no query for it."""
        newest = self._newest_start
        missing = []
        for k in keys:
            if k in self._windows:
                continue
            p = k[5]
            if p in newest and k[0] > newest[p]:
                self._windows[k] = WindowState()
            else:
                missing.append(k)
        for k in keys:  # (a failed insert leaves it high: the next load of such a key only queries)
            if k[5] in newest:
                newest[k[5]] = max(newest[k[5]], k[0])
        if not missing:
            return
        starts = ", ".join(str(s) for s in sorted({k[0] for k in missing}))
        partitions = ", ".join(str(p) for p in sorted({k[5] for k in missing}))
        rows = self.store.query(
            f"SELECT {', '.join(STATE_SELECT)} FROM inference_metrics_10s_parts FINAL "
            f"WHERE toUInt32(window_start) IN ({starts}) AND kafka_partition IN ({partitions})"
        ).rows
        stored = {key_of_row(r): state_of_row(r) for r in rows}
        for key in missing:
            self._windows[key] = stored.get(key) or WindowState()

    def _evict(self, newest_start: int) -> None:
        horizon = newest_start - self.state_horizon_s
        for key in [k for k in self._windows if k[0] < horizon]:
            del self._windows[key]


def _event_columns(fresh: Sequence[tuple[Record, InferenceEvent]]) -> dict[str, list[object]]:
    """Column lists for ``inference_events``, built column by column (one comprehension per column costs a
    third of building a row tuple per event and transposing it)."""
    evs = [ev for _, ev in fresh]
    lats = [ev.latency for ev in evs]
    outs = [ev.outputs[0] if ev.outputs else None for ev in evs]
    answered = [o for o in outs if o is not None]
    if len(answered) == len(outs):
        out_cols: tuple[list[object], ...] = (
            [o.name for o in answered],
            [o.count for o in answered],
            [o.mean for o in answered],
            [o.min for o in answered],
            [o.max for o in answered],
            [list(o.head) for o in answered],
        )
    else:
        out_cols = (
            [o.name if o else "" for o in outs],
            [o.count if o else 0 for o in outs],
            [o.mean if o else 0.0 for o in outs],
            [o.min if o else 0.0 for o in outs],
            [o.max if o else 0.0 for o in outs],
            [list(o.head) if o else [] for o in outs],
        )
    columns: tuple[list[object], ...] = (
        [ev.received_us for ev in evs],
        [ev.sent_us for ev in evs],
        [ev.event_id for ev in evs],
        [ev.request_id for ev in evs],
        [ev.model for ev in evs],
        [ev.version for ev in evs],
        [ev.label for ev in evs],
        [ev.replica for ev in evs],
        [ev.api for ev in evs],
        [ev.signature for ev in evs],
        [ev.status_code for ev in evs],
        [ev.error for ev in evs],
        [lat.queue_us for lat in lats],
        [lat.batch_us for lat in lats],
        [lat.compute_us for lat in lats],
        [lat.total_us for lat in lats],
        [ev.batch_size for ev in evs],
        [int(ev.cache_hit) for ev in evs],
        [ev.rows for ev in evs],
        [[t.name for t in ev.inputs] for ev in evs],
        [["x".join(map(str, t.shape)) for t in ev.inputs] for ev in evs],
        *out_cols,
        [ev.user_id for ev in evs],
        [list(ev.item_ids) for ev in evs],
        [msg.partition for msg, _ in fresh],
        [msg.offset for msg, _ in fresh],
        [ev.producer.dropped for ev in evs],
        [ev.producer.spooled for ev in evs],
        [ev.process_rss_bytes for ev in evs],
    )
    return dict(zip(EVENT_COLUMNS, columns, strict=True))
