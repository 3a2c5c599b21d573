"""The rows the inference path writes, one owner for their columns: the cumulative window state of
``inference_metrics_10s_parts`` (``WindowState``, read back with ``STATE_SELECT`` / ``key_of_row`` /
``state_of_row``, written with ``window_columns``) and the columns of ``inference_events`` (``EVENT_COLUMNS``).

Both ingest paths (``inference_sink``'s Python path, ``protobuf_ingest``'s engine path), the window emitter and
the rollout's live comparison read and write these rows through this module only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from schemas import InferenceEvent
from stream_processors.sketch import LatencySketch

WindowKey = tuple[int, str, int, str, str, int]  # window_start (s), model, version, label, replica, partition

SCORE_BINS = 10  # score histogram: equal bins over [0, 1]; scores outside are clamped into the end bins


@dataclass
class WindowState:
    """One cumulative partial aggregate: a window of one (model, version, label, replica) in one partition."""

    requests: int = 0
    errors: int = 0
    latency_sum_us: int = 0
    latency_max_us: int = 0
    last_offset: int = -1
    errors_by_code: dict[int, int] = field(default_factory=dict)
    latency: LatencySketch = field(default_factory=LatencySketch)
    queue_sum_us: int = 0
    compute_sum_us: int = 0
    batch_size_sum: int = 0
    rows_sum: int = 0
    cache_hits: int = 0
    score_count: int = 0
    score_sum: float = 0.0
    score_sumsq: float = 0.0
    score_hist: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    late_events: int = 0
    producer_dropped: int = 0  # the replica's logger totals: the highest seen in the window (cumulative)
    producer_spooled: int = 0
    process_rss_max_bytes: int = 0  # the serving process's RSS: the highest of the events' (0 = unknown)

    def copy(self) -> WindowState:
        return replace(
            self,
            errors_by_code=dict(self.errors_by_code),
            latency=self.latency.copy(),
            score_hist=list(self.score_hist),
        )

    def merge(self, other: WindowState) -> None:
        """Fold another partial row of the same window in (another partition or replica)."""
        self.requests += other.requests
        self.errors += other.errors
        self.latency_sum_us += other.latency_sum_us
        self.latency_max_us = max(self.latency_max_us, other.latency_max_us)
        for code, n in other.errors_by_code.items():
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + n
        self.latency.merge(other.latency)
        self.queue_sum_us += other.queue_sum_us
        self.compute_sum_us += other.compute_sum_us
        self.batch_size_sum += other.batch_size_sum
        self.rows_sum += other.rows_sum
        self.cache_hits += other.cache_hits
        self.score_count += other.score_count
        self.score_sum += other.score_sum
        self.score_sumsq += other.score_sumsq
        self.score_hist = [a + b for a, b in zip(self.score_hist, other.score_hist, strict=True)]
        self.late_events += other.late_events
        # cumulative totals of a replica's logger and its process's RSS: the highest seen, never a sum
        self.producer_dropped = max(self.producer_dropped, other.producer_dropped)
        self.producer_spooled = max(self.producer_spooled, other.producer_spooled)
        self.process_rss_max_bytes = max(self.process_rss_max_bytes, other.process_rss_max_bytes)

    def add(self, ev: InferenceEvent) -> None:
        """Fold one on-time event in (the caller sets ``last_offset``)."""
        self.requests += 1
        code = ev.status_code
        if code:
            self.errors += 1
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1
        lat = ev.latency
        total = lat.total_us
        self.latency_sum_us += total
        if total > self.latency_max_us:
            self.latency_max_us = total
        self.latency.add(total)
        self.queue_sum_us += lat.queue_us
        self.compute_sum_us += lat.compute_us
        self.batch_size_sum += ev.batch_size
        self.rows_sum += ev.rows
        self.cache_hits += ev.cache_hit
        producer = ev.producer
        if producer.dropped > self.producer_dropped:
            self.producer_dropped = producer.dropped
        if producer.spooled > self.producer_spooled:
            self.producer_spooled = producer.spooled
        if ev.process_rss_bytes > self.process_rss_max_bytes:
            self.process_rss_max_bytes = ev.process_rss_bytes
        if ev.outputs:
            head = ev.outputs[0].head
            if head:
                hist = self.score_hist
                top = SCORE_BINS - 1
                s = sq = 0.0
                for x in head:
                    s += x
                    sq += x * x
                    v = x * SCORE_BINS
                    if -1e18 < v < 1e18:
                        b = int(v)
                        hist[top if b > top else 0 if b < 0 else b] += 1
                    else:  # inf, nan (a broken model): counted, at the end they lean to (nan: the bottom)
                        hist[top if v > 0 else 0] += 1
                self.score_count += len(head)
                self.score_sum += s
                self.score_sumsq += sq


EVENT_COLUMNS = (
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
    "producer_dropped",
    "producer_spooled",
    "process_rss",
)


_KEY_COLUMNS = ("window_start", "model", "version", "label", "replica", "kafka_partition")
_STATE_COLUMNS = (
    "requests",
    "errors",
    "latency_sum_us",
    "latency_max_us",
    "last_offset",
    "error_codes",
    "error_counts",
    "latency_keys",
    "latency_counts",
    "queue_sum_us",
    "compute_sum_us",
    "batch_size_sum",
    "rows_sum",
    "cache_hits",
    "score_count",
    "score_sum",
    "score_sumsq",
    "score_hist",
    "late_events",
    "producer_dropped",
    "producer_spooled",
    "process_rss_max",
)
STATE_SELECT = ("toUInt32(window_start)", *_KEY_COLUMNS[1:], *_STATE_COLUMNS)


def key_of_row(r: Sequence[Any]) -> WindowKey:
    """The key of a row selected with :data:`STATE_SELECT`."""
    return (int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), int(r[5]))


def state_of_row(r: Sequence[Any]) -> WindowState:
    """The state of a row selected with :data:`STATE_SELECT`."""
    v = dict(zip(_STATE_COLUMNS, r[len(_KEY_COLUMNS) :], strict=True))
    return WindowState(
        requests=int(v["requests"]),
        errors=int(v["errors"]),
        latency_sum_us=int(v["latency_sum_us"]),
        latency_max_us=int(v["latency_max_us"]),
        last_offset=int(v["last_offset"]),
        errors_by_code={int(c): int(n) for c, n in zip(v["error_codes"], v["error_counts"], strict=True)},
        latency=LatencySketch.from_arrays(list(v["latency_keys"]), list(v["latency_counts"])),
        queue_sum_us=int(v["queue_sum_us"]),
        compute_sum_us=int(v["compute_sum_us"]),
        batch_size_sum=int(v["batch_size_sum"]),
        rows_sum=int(v["rows_sum"]),
        cache_hits=int(v["cache_hits"]),
        score_count=int(v["score_count"]),
        score_sum=float(v["score_sum"]),
        score_sumsq=float(v["score_sumsq"]),
        score_hist=[int(x) for x in v["score_hist"]] or [0] * SCORE_BINS,
        late_events=int(v["late_events"]),
        producer_dropped=int(v["producer_dropped"]),
        producer_spooled=int(v["producer_spooled"]),
        process_rss_max_bytes=int(v["process_rss_max"]),
    )


def window_columns(windows: dict[WindowKey, WindowState], max_event_us: dict[int, int]) -> dict[str, list[object]]:
    cols: dict[str, list[object]] = {n: [] for n in (*_KEY_COLUMNS, *_STATE_COLUMNS, "max_event_us")}
    for key in sorted(windows):
        for name, value in zip(_KEY_COLUMNS, key, strict=True):
            cols[name].append(value)
        s = windows[key]
        codes = sorted(s.errors_by_code)
        keys, counts = s.latency.to_arrays()
        for name, value in (
            ("requests", s.requests),
            ("errors", s.errors),
            ("latency_sum_us", s.latency_sum_us),
            ("latency_max_us", s.latency_max_us),
            ("last_offset", s.last_offset),
            ("error_codes", codes),
            ("error_counts", [s.errors_by_code[c] for c in codes]),
            ("latency_keys", keys),
            ("latency_counts", counts),
            ("queue_sum_us", s.queue_sum_us),
            ("compute_sum_us", s.compute_sum_us),
            ("batch_size_sum", s.batch_size_sum),
            ("rows_sum", s.rows_sum),
            ("cache_hits", s.cache_hits),
            ("score_count", s.score_count),
            ("score_sum", s.score_sum),
            ("score_sumsq", s.score_sumsq),
            ("score_hist", s.score_hist),
            ("late_events", s.late_events),
            ("producer_dropped", s.producer_dropped),
            ("producer_spooled", s.producer_spooled),
            ("process_rss_max", s.process_rss_max_bytes),
            ("max_event_us", max_event_us.get(key[5], 0)),
        ):
            cols[name].append(value)
    return cols
