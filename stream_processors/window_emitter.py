"""Closed windows -> ``WindowAggregate`` messages on the metrics topic, once the watermark has passed them.

The store holds partial rows per (window, model, version, label, replica, Kafka partition), written by every
worker. A window is *closed* when its end is at or before both

- the wall clock minus the allowed lateness and a grace period, and
- the lowest watermark of the partitions that are still active (a partition's latest event time, stored with
  its rows as ``max_event_us``, minus the allowed lateness; partitions without events for ``idle_s`` are left
  out, so an idle partition does not hold every window back).

Then its rows are merged here (counts add, sketches merge exactly: ``stream_processors.sketch``) per replica
and rolled up over replicas (``replica`` empty), and one ``WindowAggregate`` per series is published, keyed
``model/version``. How far it has published is recorded in ``metrics_emitted``; one process does this (the
group's leader, on a timer). Delivery is at least once: a crash between publishing and recording publishes
those windows again, with the same content — consumers deduplicate on (window_start_us, model, version,
label, replica). Events later than the window's close are counted in the store (``late_events``), not in a
published window.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from schemas import WindowAggregate
from store.base import Store
from stream_processors.window_rows import STATE_SELECT, WindowState, key_of_row, state_of_row

log = logging.getLogger(__name__)

STREAM = "inference_10s"
_US = 1_000_000

Message = tuple[bytes, bytes]  # (key, value) for the metrics topic


def aggregate_message(
    window_start_s: int, window_s: int, model: str, version: int, label: str, replica: str, s: WindowState
) -> WindowAggregate:
    """The published form of one merged window of one series."""
    n = s.requests
    msg = WindowAggregate(
        window_start_us=window_start_s * _US,
        window_end_us=(window_start_s + window_s) * _US,
        model=model,
        version=version,
        label=label,
        replica=replica,
        requests=n,
        errors=s.errors,
        throughput_rps=n / window_s,
        latency_max_us=float(s.latency_max_us),
        latency_mean_us=s.latency_sum_us / n if n else 0.0,
        latency_sketch=s.latency.to_bytes(),
        queue_mean_us=s.queue_sum_us / n if n else 0.0,
        compute_mean_us=s.compute_sum_us / n if n else 0.0,
        batch_size_mean=s.batch_size_sum / n if n else 0.0,
        cache_hit_rate=s.cache_hits / n if n else 0.0,
        late_events=s.late_events,
        process_rss_max_bytes=float(s.process_rss_max_bytes),
    )
    for code, count in s.errors_by_code.items():
        msg.errors_by_status[code] = count
    if s.latency.count:
        msg.latency_p50_us, msg.latency_p90_us, msg.latency_p95_us, msg.latency_p99_us = s.latency.quantiles(
            [0.5, 0.9, 0.95, 0.99]
        )
    if s.score_count:
        mean = s.score_sum / s.score_count
        msg.score_mean = mean
        msg.score_std = math.sqrt(max(s.score_sumsq / s.score_count - mean * mean, 0.0))
        msg.score_histogram.extend(s.score_hist)
    return msg


class WindowEmitter:
    """``collect(now)`` the closed windows' messages, send them, then ``mark_published(through)``."""

    def __init__(
        self,
        store: Store,
        *,
        window_s: int = 10,
        allowed_lateness_s: int = 30,
        grace_s: int = 5,
        idle_s: int = 60,
        first_horizon_s: int = 3600,
    ) -> None:
        """``first_horizon_s``: on a store that never published, start this far back (not at the epoch)."""
        self.store = store
        self.window_s = window_s
        self._lateness_us = allowed_lateness_s * _US
        self._grace_us = grace_s * _US
        self._idle_us = idle_s * _US
        self._first_horizon_s = first_horizon_s
        self._through: int | None = None  # window starts <= this (s) are published

    def collect(self, now_us: int | None = None) -> tuple[list[Message], int | None]:
        """Messages of the windows closed since the last :meth:`mark_published`, and the window start to mark
        (None: nothing new closed)."""
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        last_start = self._cutoff_us(now_us) // _US // self.window_s * self.window_s - self.window_s
        through = self._published_through(last_start)
        if last_start <= through:
            return [], None
        rows = self.store.query(
            f"SELECT {', '.join(STATE_SELECT)} FROM inference_metrics_10s_parts FINAL "
            f"WHERE toUInt32(window_start) > {through} AND toUInt32(window_start) <= {last_start}"
        ).rows
        messages = []
        for key, state in sorted(_series(rows).items()):
            start, model, version, label, replica = key
            msg = aggregate_message(start, self.window_s, model, version, label, replica, state)
            messages.append((f"{model}/{version}".encode(), msg.SerializeToString()))
        return messages, last_start

    def mark_published(self, through: int, now_us: int | None = None) -> None:
        """Record that every window starting at or before ``through`` (s) is on the topic."""
        now_s = (time.time_ns() // 1000 if now_us is None else now_us) // _US
        self.store.insert("metrics_emitted", {"stream": [STREAM], "through": [through], "at": [now_s]})
        self._through = through

    def _published_through(self, last_start: int) -> int:
        if self._through is None:
            stored = self.store.query(
                f"SELECT count(), max(toUInt32(through)) FROM metrics_emitted WHERE stream = '{STREAM}'"
            ).rows[0]
            self._through = int(stored[1]) if stored[0] else last_start - self._first_horizon_s
        return self._through

    def _cutoff_us(self, now_us: int) -> int:
        cutoff = now_us - self._lateness_us - self._grace_us
        since = max(0, (now_us - self._idle_us) // _US - self._first_horizon_s)
        rows = self.store.query(
            "SELECT kafka_partition, argMax(max_event_us, last_offset) FROM inference_metrics_10s_parts "
            f"WHERE toUInt32(window_start) >= {since} GROUP BY kafka_partition"
        ).rows
        active = [int(r[1]) for r in rows if int(r[1]) >= now_us - self._idle_us]
        if active:
            cutoff = min(cutoff, min(active) - self._lateness_us)
        return cutoff


def _series(rows: Iterable[tuple[object, ...]]) -> dict[tuple[int, str, int, str, str], WindowState]:
    """Partial rows merged per (window, model, version, label, replica), plus the roll-up (replica "")."""
    out: dict[tuple[int, str, int, str, str], WindowState] = {}
    for row in rows:
        start, model, version, label, replica, _partition = key_of_row(row)
        part = state_of_row(row)
        for key in ((start, model, version, label, replica), (start, model, version, label, "")):
            state = out.get(key)
            if state is None:
                out[key] = part.copy()
            else:
                state.merge(part)
    return out
