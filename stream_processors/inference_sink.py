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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from schemas import InferenceEvent
from store.base import Store
from stream_processors.decode import Rejected, decode_inference

WindowKey = tuple[int, str, int, str, str, int]  # window_start (s), model, version, label, replica, partition


@dataclass
class WindowState:
    requests: int = 0
    errors: int = 0
    latency_sum_us: int = 0
    latency_max_us: int = 0
    last_offset: int = -1


@dataclass(frozen=True)
class Message:
    """What the sink needs of a Kafka message."""

    partition: int
    offset: int
    value: bytes | None


@dataclass
class BatchResult:
    events_written: int = 0
    duplicates_skipped: int = 0
    windows_written: int = 0
    rejected: list[Rejected] = field(default_factory=list)


class InferenceSink:
    def __init__(self, store: Store, *, topic: str, window_s: int = 10, state_horizon_s: int = 3600) -> None:
        self.store = store
        self.topic = topic
        self.window_s = window_s
        self.state_horizon_s = state_horizon_s
        self._high_water: dict[int, int] = {}  # partition -> highest offset stored in inference_events
        self._windows: dict[WindowKey, WindowState] = {}

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop cached state of partitions this worker lost (or just got): another worker may have written."""
        lost = set(partitions)
        for p in lost:
            self._high_water.pop(p, None)
        for key in [k for k in self._windows if k[5] in lost]:
            del self._windows[key]

    def write_batch(self, messages: Sequence[Message]) -> BatchResult:
        """Store a batch of messages (any partitions, offsets increasing within each partition).

        Raises ``StoreError`` if the store fails; nothing of the batch is then marked done, so the caller may
        retry the same batch (or let Kafka redeliver it) without double counting.
        """
        result = BatchResult()
        decoded_events: list[tuple[Message, InferenceEvent]] = []
        new_events: list[tuple[Message, InferenceEvent]] = []
        high_water = {p: self._high_water_of(p) for p in {m.partition for m in messages}}
        for msg in messages:
            seen = msg.offset <= high_water[msg.partition]
            decoded = decode_inference(msg.value)
            if isinstance(decoded, str):
                if not seen:
                    result.rejected.append(Rejected(self.topic, msg.partition, msg.offset, msg.value or b"", decoded))
                continue
            decoded_events.append((msg, decoded))
            if seen:
                result.duplicates_skipped += 1
            else:
                new_events.append((msg, decoded))
        if new_events:
            self.store.insert("inference_events", _event_columns(new_events))
            result.events_written = len(new_events)
        for msg in messages:  # rejected ones count as done too: they are on the dead-letter topic
            if msg.offset > self._high_water[msg.partition]:
                self._high_water[msg.partition] = msg.offset
        # Redelivered events still pass through here: a crash may have come between the two inserts.
        result.windows_written = self._aggregate(decoded_events)
        return result

    def _high_water_of(self, partition: int) -> int:
        high = self._high_water.get(partition)
        if high is None:
            row = self.store.query(
                f"SELECT count(), max(kafka_offset) FROM inference_events WHERE kafka_partition = {int(partition)}"
            ).rows[0]
            high = int(row[1]) if row[0] else -1
            self._high_water[partition] = high
        return high

    def _aggregate(self, fresh: list[tuple[Message, InferenceEvent]]) -> int:
        if not fresh:
            return 0
        keyed: list[tuple[WindowKey, Message, InferenceEvent]] = []
        for msg, ev in fresh:
            start = ev.received_us // 1_000_000 // self.window_s * self.window_s
            keyed.append(((start, ev.model, ev.version, ev.label, ev.replica, msg.partition), msg, ev))
        self._load_windows({k for k, _, _ in keyed})
        updated: dict[WindowKey, WindowState] = {}
        for key, msg, ev in keyed:
            state = updated.get(key) or self._windows[key]
            if msg.offset <= state.last_offset:
                continue  # already counted before a restart
            if key not in updated:
                state = updated[key] = replace(state)  # the cache changes only once the insert succeeded
            state.requests += 1
            state.errors += ev.status_code != 0
            total = ev.latency.total_us
            state.latency_sum_us += total
            state.latency_max_us = max(state.latency_max_us, total)
            state.last_offset = msg.offset
        if updated:
            self.store.insert("inference_metrics_10s_parts", _window_columns(updated))
            self._windows.update(updated)
        self._evict(max(k[0] for k, _, _ in keyed))
        return len(updated)

    def _load_windows(self, keys: set[WindowKey]) -> None:
        missing = [k for k in keys if k not in self._windows]
        if not missing:
            return
        starts = ", ".join(str(s) for s in sorted({k[0] for k in missing}))
        partitions = ", ".join(str(p) for p in sorted({k[5] for k in missing}))
        rows = self.store.query(
            "SELECT toUInt32(window_start), model, version, label, replica, kafka_partition, "
            "requests, errors, latency_sum_us, latency_max_us, last_offset "
            "FROM inference_metrics_10s_parts FINAL "
            f"WHERE toUInt32(window_start) IN ({starts}) AND kafka_partition IN ({partitions})"
        ).rows
        stored = {
            (int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), int(r[5])): WindowState(
                int(r[6]), int(r[7]), int(r[8]), int(r[9]), int(r[10])
            )
            for r in rows
        }
        for key in missing:
            self._windows[key] = stored.get(key, WindowState())

    def _evict(self, newest_start: int) -> None:
        horizon = newest_start - self.state_horizon_s
        for key in [k for k in self._windows if k[0] < horizon]:
            del self._windows[key]


def _event_columns(fresh: list[tuple[Message, InferenceEvent]]) -> dict[str, list[object]]:
    cols: dict[str, list[object]] = {name: [] for name in _EVENT_COLUMNS}
    for msg, ev in fresh:
        lat = ev.latency
        out = ev.outputs[0] if ev.outputs else None
        values = (
            ev.received_us,
            ev.sent_us,
            ev.event_id,
            ev.request_id,
            ev.model,
            ev.version,
            ev.label,
            ev.replica,
            ev.api,
            ev.signature,
            ev.status_code,
            ev.error,
            lat.queue_us,
            lat.batch_us,
            lat.compute_us,
            lat.total_us,
            ev.batch_size,
            int(ev.cache_hit),
            ev.rows,
            [t.name for t in ev.inputs],
            ["x".join(str(d) for d in t.shape) for t in ev.inputs],
            out.name if out else "",
            out.count if out else 0,
            out.mean if out else 0.0,
            out.min if out else 0.0,
            out.max if out else 0.0,
            list(out.head) if out else [],
            ev.user_id,
            list(ev.item_ids),
            msg.partition,
            msg.offset,
        )
        for name, value in zip(_EVENT_COLUMNS, values, strict=True):
            cols[name].append(value)
    return cols


_EVENT_COLUMNS = (
    "received_us",
    "sent_us",
    "event_id",
    "request_id",
    "model",
    "version",
    "label",
    "replica",
    "api",
    "signature",
    "status_code",
    "error",
    "queue_us",
    "batch_us",
    "compute_us",
    "total_us",
    "batch_size",
    "cache_hit",
    "rows",
    "input_names",
    "input_shapes",
    "output_name",
    "score_count",
    "score_mean",
    "score_min",
    "score_max",
    "scores",
    "user_id",
    "item_ids",
    "kafka_partition",
    "kafka_offset",
)


def _window_columns(windows: dict[WindowKey, WindowState]) -> dict[str, list[object]]:
    names = ("window_start", "model", "version", "label", "replica", "kafka_partition")
    cols: dict[str, list[object]] = {n: [] for n in names}
    for extra in ("requests", "errors", "latency_sum_us", "latency_max_us", "last_offset"):
        cols[extra] = []
    for key in sorted(windows):
        for name, value in zip(names, key, strict=True):
            cols[name].append(value)
        s = windows[key]
        cols["requests"].append(s.requests)
        cols["errors"].append(s.errors)
        cols["latency_sum_us"].append(s.latency_sum_us)
        cols["latency_max_us"].append(s.latency_max_us)
        cols["last_offset"].append(s.last_offset)
    return cols
