"""Writes shop feedback and the business metrics it yields (CTR, add-to-cart, conversion per model version and label,
1 min windows) to the store, exactly once per Kafka offset of either topic.

One :class:`~stream_processors.attribution.Attribution` per partition joins ``recwatch.feedback.v1`` to the
predictions of ``recwatch.inference.v1`` (co-partitioned by ``request_id``). Per batch and partition the sink feeds
the batch's new predictions (offset order), then its new feedback (offset order), and writes:

1. ``feedback_events``: one raw row per feedback offset, with ``inference_offset``, the partition's inference
   high-water at the moment the event was fed. That records the interleaving of the two topics, so the partition's
   history can be replayed from the raw tables in exactly the order it was processed.
2. ``business_metrics_1m_parts``: the dirty windows, cumulative (one insert).
3. ``feedback_unattributed_parts``: cumulative unattributed counts per (minute, partition, reason) for the minute
   of the partition's prediction watermark, plus a marker row (``reason = ''``, 0 events) per touched partition so
   the table always holds the partition's latest committed point (one insert).

Every aggregate row carries ``(last_inference_offset, last_feedback_offset)`` of its partition and
``progress = (last_inference_offset + 1) + (last_feedback_offset + 1)``, the ReplacingMergeTree version. Both
offsets only grow, so ``progress`` only grows, and it grows strictly whenever anything new was folded in: a newer
row always replaces an older one.

**Redelivery.** Offsets at or below a partition's high-water of their topic are skipped (as in
``inference_sink``); rejected feedback goes to the dead-letter topic once and counts as done.

**Restart, rebalance, failed insert.** On first sight of a partition (after a start, ``forget_partitions``, or a
``StoreError`` in a batch, which forgets the batch's partitions) its state is rebuilt from the store:

- high-waters: the highest offsets in the raw tables (and in the aggregate rows, for rejected tail messages);
- cut points: the newest ``(last_inference_offset, last_feedback_offset)`` of each aggregate table, i.e. how far
  its rows have counted;
- replay: the stored predictions from the first one within ``keep = attribution_window_s + allowed_lateness_s``
  before ``K``'s event time, where ``K`` is the first prediction within ``keep`` of the partition's latest one
  (earlier if a cut point is earlier): feedback read after ``K`` may still have joined a prediction live at ``K``.
  Then the stored feedback read since, and older feedback that was held for its prediction and was still pending
  at the replay start, all fed in the recorded order (``inference_offset``; ``held`` says whether an event
  waited). At each table's cut point the replayed counts are replaced by the stored rows (windows that began
  before the replay start are only partly replayed); what is replayed after a cut point was never written and is
  written with the next batch.

So a crash between the raw insert and the aggregate inserts is repaired: the raw rows are there, the aggregate
rows stop at the previous batch, and the replay folds the missing batch in. Totals neither double (every offset is
either skipped or folded in once after the cut) nor drop (everything after the cut is replayed). What the replay
cannot reproduce, because it does not start at the beginning of time, are decisions that depended on events
before it: a ``request_id`` reused within the attribution window, a pending request whose feedback events had
different deadlines, the ``max_pending`` overflow order, and shop duplicates (same ``event_id``, behaviour and
``ts_us``) already collapsed by a background merge of ``feedback_events``. These can change the ``duplicates``
and unattributed counts of such feedback; ``tests/feedback_sink_checks.py`` checks that random restarts,
rebalances and redeliveries give row-for-row the same windows and unattributed counts as an uninterrupted run.

**Requirements.** Pass inference messages only after ``InferenceSink.write_batch`` stored them (the worker does
both in the same thread, inference first): the replay reads predictions from ``inference_events``. One thread
owns the sink. The Attribution parameters must stay the same across restarts.

**Memory.** Per partition: one Attribution (bounded by its rules: about ``prediction rate x
(attribution_window_s + allowed_lateness_s)`` predictions plus ``max_pending`` feedback events; 150-550 MB at 100
predictions/s with 32 candidates and the defaults, see ``stream_processors/attribution.py``) and the current
minute's unattributed counts. A rebuild holds the replayed rows (up to ``2 x keep`` of predictions) transiently.

**Cost** (measured, 32 candidates per prediction, 2 feedback events per prediction, batches of 3,000 events): 6 µs
per event in Python, 20 µs per event with the inserts into in-process chDB. A rebuild replays about 20 µs per
stored row: 1.2 s for 20,000 predictions and 40,000 feedback events; with the defaults (70 min of predictions) at
100 predictions/s per partition, about 25 s per partition when a worker starts or gets a partition.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from schemas import FeedbackEvent, InferenceEvent, topics
from store.base import Store, StoreError
from store.sql import string_literal
from stream_processors.attribution import Attribution, BusinessWindow
from stream_processors.decode import Rejected, decode_feedback, decode_inference
from stream_processors.records import Record

if TYPE_CHECKING:
    from stream_processors.protobuf_ingest import PredictionColumns

WINDOW_S: Final = 60  # business_metrics_1m
COUNT_COLUMNS: Final = tuple(f.name for f in fields(BusinessWindow))[4:]
Prediction = Record | tuple[Record, InferenceEvent]  # a message, or one already decoded by the caller

_BEHAVIOR_NAMES: Final = {v: n.lower() for n, v in FeedbackEvent.Behavior.items()}
_BEHAVIOR_VALUES: Final = {n: v for v, n in _BEHAVIOR_NAMES.items()}
_MINUTE_US: Final = 60_000_000


@dataclass
class FeedbackBatchResult:
    feedback_written: int = 0
    duplicates_skipped: int = 0  # redelivered feedback offsets
    predictions_added: int = 0
    windows_written: int = 0
    unattributed_written: int = 0  # rows, including one progress marker per partition
    rejected: list[Rejected] = field(default_factory=list)


class _Cut(NamedTuple):
    """How far an aggregate table's rows of one partition have counted."""

    inference: int = -1
    feedback: int = -1

    @property
    def progress(self) -> int:
        return self.inference + 1 + self.feedback + 1


class _Known(NamedTuple):
    """What the store holds of one partition when its state is rebuilt (``FeedbackSink._known``)."""

    inference_rows: int
    inference_hw: int
    latest_prediction_us: int
    feedback_rows: int
    feedback_hw: int
    cut_windows: _Cut
    cut_unattributed: _Cut
    minute: int


class _Partition:
    __slots__ = ("attribution", "baseline", "counts", "feedback_hw", "inference_hw", "minute", "rows", "written")

    def __init__(self, attribution: Attribution) -> None:
        self.attribution = attribution
        self.inference_hw = -1
        self.feedback_hw = -1
        self.baseline: Counter[str] = Counter()  # attribution.unattributed already put into rows
        self.minute = 0  # bucket of new unattributed counts (Unix s); never goes back
        self.counts: dict[str, int] = {}  # reason -> cumulative count in the bucket
        self.rows: dict[tuple[int, str], int] = {}  # (minute, reason) -> count, to write
        self.written = -1  # progress of the last rows written

    @property
    def progress(self) -> int:
        return self.inference_hw + 1 + self.feedback_hw + 1


class FeedbackSink:
    """Feedback and business metrics to the store; see the module docstring for the guarantees.

    Construction does no I/O. The attribution parameters are those of :class:`Attribution` (window fixed at 60 s).
    ``clock_us`` is the worker's clock for the plausibility checks of ``decode_feedback`` (default: time.time).
    """

    def __init__(
        self,
        store: Store,
        *,
        inference_topic: str = topics.INFERENCE,
        feedback_topic: str = topics.FEEDBACK,
        attribution_window_s: float = 1800,
        pending_grace_s: float = 120,
        allowed_lateness_s: float = 300,
        max_clock_skew_s: float = 5,
        max_pending: int = 100_000,
        clock_us: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.inference_topic = inference_topic
        self.feedback_topic = feedback_topic
        self._params: dict[str, Any] = {
            "window_s": WINDOW_S,
            "attribution_window_s": attribution_window_s,
            "pending_grace_s": pending_grace_s,
            "allowed_lateness_s": allowed_lateness_s,
            "max_clock_skew_s": max_clock_skew_s,
            "max_pending": max_pending,
        }
        Attribution(**self._params)  # validate now, not at the first batch
        self._keep_us = round((attribution_window_s + allowed_lateness_s) * 1e6)
        self._pending_us = round((max_clock_skew_s + pending_grace_s) * 1e6)
        self._clock_us = clock_us
        self._partitions: dict[int, _Partition] = {}

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the state of partitions this worker lost (or just got): it is rebuilt from the store when seen."""
        for p in partitions:
            self._partitions.pop(p, None)

    def knows(self, partitions: Iterable[int]) -> bool:
        """Whether every one of these partitions has its state (``prepare`` would read nothing)."""
        return all(p in self._partitions for p in partitions)

    def prepare(self, partitions: Iterable[int]) -> None:
        """Rebuild the state of partitions not seen yet, *before* their next inference batch is stored: the batch's
        predictions then come in as new (cheap, from the ingest fast path) instead of being replayed from the store
        as part of the rebuild (~20 µs per prediction)."""
        missing = sorted(p for p in set(partitions) if p not in self._partitions)
        if missing:
            for p, known in self._known(missing).items():
                self._partitions[p] = self._rebuild(p, known)

    def write_batch(
        self,
        inference: Sequence[Prediction] = (),
        feedback: Sequence[Record] = (),
        predictions: PredictionColumns | None = None,
    ) -> FeedbackBatchResult:
        """Fold a batch of both topics in (offsets increasing within each partition and topic).

        ``inference`` holds the messages already given to ``InferenceSink.write_batch``, each as a ``Message`` or
        as ``(message, event)`` if the caller has decoded it; invalid ones are skipped (``InferenceSink`` rejects
        them); or, from the ingest fast path, their fields in ``predictions``. Invalid feedback is returned in
        ``rejected``. Raises ``StoreError`` if the store fails; the batch's
        partitions are then rebuilt from the store at their next batch, so retrying or redelivering the batch
        neither loses nor double-counts anything.
        """
        touched = sorted(
            {(x[0] if isinstance(x, tuple) else x).partition for x in inference}
            | {m.partition for m in feedback}
            | set(predictions.partition if predictions is not None else ())
        )
        try:
            return self._write(inference, feedback, predictions, touched)
        except StoreError:
            self.forget_partitions(touched)  # the in-memory state ran ahead of the store
            raise

    def _write(
        self,
        inference: Sequence[Prediction],
        feedback: Sequence[Record],
        fast: PredictionColumns | None,
        touched: list[int],
    ) -> FeedbackBatchResult:
        result = FeedbackBatchResult()
        parts = {p: self._partition(p) for p in touched}
        now_us = self._clock_us() if self._clock_us is not None else None
        predictions: dict[int, list[InferenceEvent]] = {}
        slices: dict[int, tuple[int, int]] = {}  # the fast path's new predictions: an index range per partition
        if fast is not None:
            for p, (start, end) in fast.partition_slices().items():
                part = parts[p]
                new = fast.first_after(start, end, part.inference_hw)
                if new < end:
                    slices[p] = (new, end)
                    part.inference_hw = fast.offset[end - 1]
        for item in inference:
            msg, ev = item if isinstance(item, tuple) else (item, None)
            part = parts[msg.partition]
            if msg.offset <= part.inference_hw:
                continue
            part.inference_hw = msg.offset
            if ev is None:
                decoded = decode_inference(msg.value, now_us)
                if isinstance(decoded, str):
                    continue
                ev = decoded
            predictions.setdefault(msg.partition, []).append(ev)
        fresh: list[tuple[Record, FeedbackEvent]] = []
        for msg in feedback:
            part = parts[msg.partition]
            if msg.offset <= part.feedback_hw:
                result.duplicates_skipped += 1
                fb = decode_feedback(msg.value, now_us)  # a rejected one again: nothing stored says it was sent
                if isinstance(fb, str):
                    result.rejected.append(
                        Rejected(self.feedback_topic, msg.partition, msg.offset, msg.value or b"", fb)
                    )
                continue
            part.feedback_hw = msg.offset
            fb = decode_feedback(msg.value, now_us)
            if isinstance(fb, str):
                result.rejected.append(Rejected(self.feedback_topic, msg.partition, msg.offset, msg.value or b"", fb))
            else:
                fresh.append((msg, fb))
        fresh.sort(key=lambda x: x[0].partition)  # stable: offsets stay in order
        by_partition: dict[int, list[FeedbackEvent]] = {}
        for msg, fb in fresh:
            by_partition.setdefault(msg.partition, []).append(fb)
        held: dict[int, list[int]] = {}
        windows: list[tuple[_Partition, int, BusinessWindow]] = []
        for p in touched:  # the Attribution changes first; a failed insert below makes it rebuilt from the store
            part = parts[p]
            a = part.attribution
            preds = predictions.get(p, ())
            for ev in preds:
                a.add_prediction(ev)
            start, end = slices.get(p, (0, 0))
            if fast is not None and end > start:
                a.add_predictions(fast, start, end, self._pending_items(a, fast, start, end))
            fbs = by_partition.get(p, ())
            unresolved = a.unresolved(fb.request_id for fb in fbs)
            if unresolved:  # predictions from the ingest fast path: their items are in the store
                found = self._items([key for _, key in unresolved])
                for request_id, (_, _, event_id, _) in unresolved:
                    a.resolve(request_id, found.get(event_id, ()))
            flags = held[p] = []
            for fb in fbs:
                before = a.pending_feedback
                a.add_feedback(fb)
                flags.append(int(a.pending_feedback > before or before >= a.max_pending))
            result.predictions_added += len(preds) + end - start
            self._collect_unattributed(part, max((fb.ts_us for fb in fbs), default=0))
            windows.extend((part, p, w) for w in a.take_dirty())
        if fresh:  # raw rows before aggregates: the replay after a crash reads them
            columns = self._feedback_columns(fresh, parts)
            columns["held"] = [flag for p in touched for flag in held[p]]  # fresh is in partition order too
            self.store.insert("feedback_events", columns)
            result.feedback_written = len(fresh)
        if windows:
            self.store.insert("business_metrics_1m_parts", _window_columns(windows))
            result.windows_written = len(windows)
        unattributed = [
            (p, part)
            for p, part in parts.items()
            if part.rows or (part.written != part.progress and part.minute)  # no marker before any event time
        ]
        if unattributed:
            columns = _unattributed_columns(unattributed)
            self.store.insert("feedback_unattributed_parts", columns)
            result.unattributed_written = len(columns["reason"])
            for _, part in unattributed:
                part.rows.clear()
                part.written = part.progress
        return result

    def _feedback_columns(
        self, fresh: list[tuple[Record, FeedbackEvent]], parts: dict[int, _Partition]
    ) -> dict[str, list[object]]:
        fbs = [fb for _, fb in fresh]
        return {
            "ts_us": [fb.ts_us for fb in fbs],
            "event_id": [fb.event_id for fb in fbs],
            "request_id": [fb.request_id for fb in fbs],
            "user_id": [fb.user_id for fb in fbs],
            "item_id": [fb.item_id for fb in fbs],
            "category_id": [fb.category_id for fb in fbs],
            "behavior": [_BEHAVIOR_NAMES[fb.behavior] for fb in fbs],
            # this batch's predictions of the partition are fed before its feedback
            "inference_offset": [parts[msg.partition].inference_hw for msg, _ in fresh],
            "kafka_partition": [msg.partition for msg, _ in fresh],
            "kafka_offset": [msg.offset for msg, _ in fresh],
        }

    def _collect_unattributed(self, part: _Partition, latest_feedback_us: int) -> None:
        """Move the bucket to the minute of the partition's watermark (server time; the shop's clock only while no
        prediction was seen) and put the unattributed counts added since the last call into it."""
        t = part.attribution.watermark_us or latest_feedback_us
        if t // _MINUTE_US * 60 > part.minute:
            part.minute, part.counts = t // _MINUTE_US * 60, {}
        current = part.attribution.unattributed
        if current == part.baseline:
            return
        for reason, n in current.items():
            delta = n - part.baseline.get(reason, 0)
            if delta:
                total = part.counts[reason] = part.counts.get(reason, 0) + delta
                part.rows[(part.minute, reason)] = total
        part.baseline = Counter(current)

    # -- rebuild -------------------------------------------------------------------------------------------------

    def _partition(self, p: int) -> _Partition:
        part = self._partitions.get(p)
        if part is None:
            part = self._partitions[p] = self._rebuild(p)
        return part

    def _rebuild(self, p: int, known: _Known | None = None) -> _Partition:
        """The partition's state from the store (see "Restart" in the module docstring)."""
        part = _Partition(Attribution(**self._params))
        q = self.store.query
        n_i, hw_i, latest_us, n_f, hw_f, cut_w, cut_u, minute = known or self._known([p])[p]
        cut_w = max(cut_w, cut_u, key=lambda c: c.progress)  # later batches changed no window
        part.inference_hw = max(int(hw_i) if n_i else -1, cut_w.inference)
        part.feedback_hw = max(int(hw_f) if n_f else -1, cut_w.feedback)
        part.written = cut_u.progress
        if not n_i and not n_f and cut_w == _Cut() and cut_u == _Cut():
            return part  # a partition the store has nothing of (a new topic): nothing to replay
        latest_us = int(latest_us) if n_i else 0
        start = part.inference_hw + 1
        if latest_us > 0:
            # K: the first prediction still live at the end; feedback read after K may still have been attributed
            # to predictions live at K, so predictions are replayed from those: the first within the retention
            # span before K's event time (which is the watermark at K).
            _, k_received_us = q(
                "SELECT min(kafka_offset), argMin(received_us, kafka_offset) FROM inference_events "
                f"WHERE kafka_partition = {p} AND request_id != '' AND received_us >= {latest_us - self._keep_us}"
            ).rows[0]
            start = int(
                q(
                    f"SELECT min(kafka_offset) FROM inference_events WHERE kafka_partition = {p} "
                    f"AND request_id != '' AND received_us >= {int(k_received_us) - self._keep_us}"
                ).scalar()
            )
        start = min(start, cut_u.inference + 1)
        preds = q(
            "SELECT kafka_offset, event_id, request_id, model, version, label, received_us, status_code, item_ids "
            f"FROM inference_events WHERE kafka_partition = {p} "
            f"AND kafka_offset >= {start} AND kafka_offset <= {part.inference_hw} ORDER BY kafka_offset"
        ).rows
        # Feedback read before the replay start that was still pending there: it waited (held), its request's
        # deadline had not passed (watermark then: the latest prediction before the start), and no prediction
        # resolved it before the start.
        watermark_before = q(
            "SELECT maxIf(received_us, request_id != '') FROM inference_events "
            f"WHERE kafka_partition = {p} AND kafka_offset < {start}"
        ).scalar()
        carried = f"held = 1 AND inference_offset < {start} AND kafka_offset <= {cut_u.feedback}"
        candidates = (
            f"SELECT request_id FROM feedback_events WHERE kafka_partition = {p} AND {carried} "
            f"GROUP BY request_id HAVING max(ts_us) >= {int(watermark_before or 0) - self._pending_us}"
        )
        fbs = q(
            "SELECT kafka_offset, inference_offset, event_id, request_id, user_id, item_id, category_id, behavior, "
            f"ts_us FROM feedback_events WHERE kafka_partition = {p} AND kafka_offset <= {part.feedback_hw} "
            f"AND (inference_offset >= {start} OR kafka_offset > {cut_u.feedback} "
            f"OR ({carried} AND request_id IN ({candidates}))) ORDER BY kafka_offset"
        ).rows
        resolved = dict(
            q(
                f"SELECT request_id, max(kafka_offset) FROM inference_events WHERE kafka_partition = {p} "
                f"AND kafka_offset < {start} AND status_code = 0 AND notEmpty(item_ids) "
                f"AND request_id IN ({candidates}) GROUP BY request_id"
            ).rows
        )
        if resolved:
            fbs = [r for r in fbs if not (int(r[1]) < start and int(resolved.get(r[3], -1)) > int(r[1]))]
        self._replay(p, part, _recorded_order(preds, fbs), cut_w, cut_u, minute)
        return part

    def _pending_items(
        self, a: Attribution, fast: PredictionColumns, start: int, end: int
    ) -> dict[str, tuple[str, ...]] | None:
        """The items of the batch's predictions whose feedback came first (it is attributed when they arrive)."""
        pending = a.pending_requests()
        if not pending:
            return None
        rows = [i for i in range(start, end) if fast.request_id[i] in pending]
        if not rows:
            return None
        found = self._items([(fast.model[i], fast.version[i], fast.event_id[i], fast.received_us[i]) for i in rows])
        return {fast.request_id[i]: found.get(fast.event_id[i], ()) for i in rows}

    def _items(self, keys: Sequence[tuple[str, int, str, int]]) -> dict[str, tuple[str, ...]]:
        """``event_id -> item_ids`` of stored predictions, looked up by ``(model, version, event_id, received_us)``
        through the table's sort key (model, version, event_time, event_id): a few granules each."""
        found: dict[str, tuple[str, ...]] = {}
        for at in range(0, len(keys), 1000):
            tuples = ", ".join(
                f"({string_literal(m)}, {int(v)}, toDateTime({int(t) // 1_000_000}), {string_literal(e)})"
                for m, v, e, t in keys[at : at + 1000]
            )
            rows = self.store.query(
                "SELECT event_id, any(item_ids) FROM inference_events "
                f"WHERE (model, version, event_time, event_id) IN ({tuples}) GROUP BY event_id"
            ).rows
            found.update((str(e), tuple(dict.fromkeys(map(str, ids)))) for e, ids in rows)
        return found

    def _known(self, partitions: Sequence[int]) -> dict[int, _Known]:
        """What the store holds of each partition, in four queries whatever their number: the raw tables' row
        counts, highest offsets and latest prediction time, and each aggregate table's cut point."""
        q = self.store.query
        where = f"kafka_partition IN ({', '.join(str(int(p)) for p in partitions)}) GROUP BY kafka_partition"
        raw_i = {
            int(r[0]): (int(r[1]), int(r[2]), int(r[3]))
            for r in q(
                "SELECT kafka_partition, count(), max(kafka_offset), maxIf(received_us, request_id != '') "
                f"FROM inference_events WHERE {where}"
            ).rows
        }
        raw_f = {
            int(r[0]): (int(r[1]), int(r[2]))
            for r in q(f"SELECT kafka_partition, count(), max(kafka_offset) FROM feedback_events WHERE {where}").rows
        }
        cuts: list[dict[int, tuple[_Cut, int]]] = []
        for table, time_column in (
            ("business_metrics_1m_parts", "window_start"),
            ("feedback_unattributed_parts", "minute"),
        ):
            rows = q(
                "SELECT kafka_partition, argMax(last_inference_offset, progress), "
                f"argMax(last_feedback_offset, progress), argMax(toUInt32({time_column}), progress) "
                f"FROM {table} WHERE {where}"
            ).rows
            cuts.append({int(r[0]): (_Cut(int(r[1]), int(r[2])), int(r[3])) for r in rows})
        known: dict[int, _Known] = {}
        for p in partitions:
            n_i, hw_i, latest_us = raw_i.get(p, (0, -1, 0))
            n_f, hw_f = raw_f.get(p, (0, -1))
            cut_w, _ = cuts[0].get(p, (_Cut(), 0))
            cut_u, minute = cuts[1].get(p, (_Cut(), 0))
            known[p] = _Known(n_i, hw_i, latest_us, n_f, hw_f, cut_w, cut_u, minute)
        return known

    def _replay(
        self,
        p: int,
        part: _Partition,
        events: Iterable[tuple[int, InferenceEvent | FeedbackEvent]],
        cut_w: _Cut,
        cut_u: _Cut,
        minute: int,
    ) -> None:
        """Feed the recorded history; at each table's cut point (``cut_u`` is not later than ``cut_w``) replace
        the replayed counts by the stored ones: what follows is not yet in that table."""
        a = part.attribution
        u_done = w_done = False
        for offset, ev in events:
            if isinstance(ev, InferenceEvent):
                if not u_done and offset > cut_u.inference:
                    u_done = self._cut_unattributed(p, part, minute)
                if not w_done and offset > cut_w.inference:
                    w_done = self._cut_windows(p, a)
                a.add_prediction(ev)
            else:
                if not u_done and offset > cut_u.feedback:
                    u_done = self._cut_unattributed(p, part, minute)
                if not w_done and offset > cut_w.feedback:
                    w_done = self._cut_windows(p, a)
                a.add_feedback(ev)
        if not u_done:
            self._cut_unattributed(p, part, minute)
        if not w_done:
            self._cut_windows(p, a)
        self._collect_unattributed(part, 0)

    def _cut_unattributed(self, p: int, part: _Partition, minute: int) -> bool:
        rows = self.store.query(
            "SELECT reason, events FROM feedback_unattributed_parts FINAL "
            f"WHERE kafka_partition = {p} AND minute = toDateTime({minute}) AND reason != ''"
        ).rows
        part.baseline = Counter(part.attribution.unattributed)
        part.minute = minute
        part.counts = {str(r): int(n) for r, n in rows}
        part.rows.clear()
        return True

    def _cut_windows(self, p: int, a: Attribution) -> bool:
        snap = a.snapshot()  # a rebuild is rare: a copy of the state is affordable, and keeps Attribution sealed
        if snap["windows"]:
            first = min(int(w[0]) for w in snap["windows"])
            stored = {
                (int(r[0]), str(r[1]), int(r[2]), str(r[3])): [int(x) for x in r[4:]]
                for r in self.store.query(
                    f"SELECT toUInt32(window_start), model, version, label, {', '.join(COUNT_COLUMNS)} "
                    f"FROM business_metrics_1m_parts FINAL WHERE kafka_partition = {p} "
                    f"AND window_start >= toDateTime({first})"
                ).rows
            }
            zeros = [0] * len(COUNT_COLUMNS)  # a window the original run never wrote (see the module docstring)
            snap["windows"] = [[*w[:4], *stored.get(tuple(w[:4]), zeros)] for w in snap["windows"]]
        snap["dirty"] = []
        a.restore(snap)
        return True


def _recorded_order(
    preds: Sequence[Sequence[Any]], fbs: Sequence[Sequence[Any]]
) -> Iterator[tuple[int, InferenceEvent | FeedbackEvent]]:
    """Stored rows back to events, in the order they were first fed: a feedback event right after the prediction
    at its ``inference_offset`` (and after the feedback fed before it)."""

    def predictions() -> Iterator[tuple[tuple[int, int, int], int, InferenceEvent | FeedbackEvent]]:
        for offset, event_id, request_id, model, version, label, received_us, status_code, item_ids in preds:
            ev = InferenceEvent(
                event_id=event_id,
                request_id=request_id,
                model=model,
                version=int(version),
                label=label,
                received_us=int(received_us),
                status_code=int(status_code),
                item_ids=list(item_ids),
            )
            yield (int(offset), 0, 0), int(offset), ev

    def feedback() -> Iterator[tuple[tuple[int, int, int], int, InferenceEvent | FeedbackEvent]]:
        for offset, inference_offset, event_id, request_id, user_id, item_id, category_id, behavior, ts_us in fbs:
            fb = FeedbackEvent(
                event_id=event_id,
                request_id=request_id,
                user_id=user_id,
                item_id=item_id,
                category_id=category_id,
                behavior=_BEHAVIOR_VALUES[str(behavior)],  # type: ignore[arg-type]
                ts_us=int(ts_us),
            )
            yield (int(inference_offset), 1, int(offset)), int(offset), fb

    for _, offset, ev in heapq.merge(predictions(), feedback(), key=lambda x: x[0]):
        yield offset, ev


_KEY_COLUMNS: Final = ("window_start", "model", "version", "label", "kafka_partition")
_PROGRESS_COLUMNS: Final = ("last_inference_offset", "last_feedback_offset", "progress")


def _window_columns(windows: list[tuple[_Partition, int, BusinessWindow]]) -> dict[str, list[object]]:
    cols: dict[str, list[object]] = {n: [] for n in (*_KEY_COLUMNS, *COUNT_COLUMNS, *_PROGRESS_COLUMNS)}
    for part, p, w in windows:
        for name, value in (
            ("window_start", w.window_start),
            ("model", w.model),
            ("version", w.version),
            ("label", w.label),
            ("kafka_partition", p),
            *((name, getattr(w, name)) for name in COUNT_COLUMNS),
            ("last_inference_offset", part.inference_hw),
            ("last_feedback_offset", part.feedback_hw),
            ("progress", part.progress),
        ):
            cols[name].append(value)
    return cols


def _unattributed_columns(parts: list[tuple[int, _Partition]]) -> dict[str, list[object]]:
    """The changed counts, and a marker row (``reason = ''``) per partition: the table's latest progress."""
    cols: dict[str, list[object]] = {
        n: [] for n in ("minute", "kafka_partition", "reason", "events", *_PROGRESS_COLUMNS)
    }
    for p, part in parts:
        rows = [*part.rows.items(), ((part.minute, ""), 0)] if part.minute else list(part.rows.items())
        for (minute, reason), events in rows:
            for name, value in (
                ("minute", minute),
                ("kafka_partition", p),
                ("reason", reason),
                ("events", events),
                ("last_inference_offset", part.inference_hw),
                ("last_feedback_offset", part.feedback_hw),
                ("progress", part.progress),
            ):
                cols[name].append(value)
    return cols
