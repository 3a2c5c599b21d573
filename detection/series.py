"""The monitored series of the live pipeline and the monitor that scores them window by window.

A *series* is one metric of one (model, version, label), rolled up over replicas, or, for a metric of the
serving process itself (``process_rss_bytes``: a memory leak is one process's), of one replica. Its values come from

- the ``WindowAggregate`` messages of ``recwatch.metrics.v1`` (10 s windows; roll-up rows, ``replica == ""``, for
  most metrics, per-replica rows for the specs with ``per_replica``),
- the rows of the ``business_metrics_1m`` view (1 min windows; ``stream_processors.attribution.BusinessWindow``).

``SERIES`` says per metric where its value comes from, which direction is bad, how many requests (impressions) a
window needs to be scored and the detector's floors. ``SeriesMonitor`` keeps one ``LiveDetector`` per series
(created on its first window), scores every metric of every window it is given and turns scores at or above the
threshold into ``Anomaly`` messages. Windows arrive at least once: a window whose start is at or before the last
one scored for its (source, model, version, label[, replica]) is ignored, so a replay changes nothing. The detectors and
that progress checkpoint to rows of ``detector_checkpoints`` (pickle + base64) and restore from them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from detection.live import Direction, LiveDetector
from schemas import Anomaly, WindowAggregate
from stream_processors.attribution import BusinessWindow

__all__ = ["SERIES", "Point", "SeriesMonitor", "SeriesSpec", "series_key"]

_US = 1_000_000
Source = Literal["metrics", "business"]
DETECTOR = "live"


@dataclass(frozen=True)
class SeriesSpec:
    """How one metric is read and judged.

    ``value`` returns the metric of one window, or ``None`` when the window cannot say (fewer than ``min_count``
    requests or impressions, or the metric does not apply). ``rel_floor``/``abs_floor`` floor the detector's
    spread (``detection.live``): the smallest deviation worth ~1 "sigma" on a flat series. ``per_replica``: scored
    on the per-replica ``WindowAggregate`` rows (one detector per replica), not on the roll-up.
    """

    metric: str
    source: Source
    direction: Direction
    min_count: int
    rel_floor: float
    abs_floor: float
    value: Callable[[Any], float | None]
    per_replica: bool = False

    @property
    def window_s(self) -> int:
        return 60 if self.source == "business" else 10

    @property
    def view(self) -> str:
        """The documented view (docs/tables.md) that holds the series."""
        return "business_metrics_1m" if self.source == "business" else "inference_metrics_10s"

    def detector(self) -> LiveDetector:
        return LiveDetector(self.direction, rel_floor=self.rel_floor, abs_floor=self.abs_floor)


def _enough(count: int, minimum: int) -> bool:
    return count >= minimum and count > 0


def _latency_p99(a: WindowAggregate) -> float | None:
    return a.latency_p99_us if _enough(a.requests, 20) else None


def _error_rate(a: WindowAggregate) -> float | None:
    return a.errors / a.requests if _enough(a.requests, 20) else None


def _throughput(a: WindowAggregate) -> float | None:
    return a.throughput_rps


def _score_mean(a: WindowAggregate) -> float | None:
    return a.score_mean if _enough(a.requests, 20) and sum(a.score_histogram) > 0 else None


def _cache_hit_rate(a: WindowAggregate) -> float | None:
    return a.cache_hit_rate if _enough(a.requests, 20) else None


def _process_rss(a: WindowAggregate) -> float | None:
    return a.process_rss_max_bytes if a.process_rss_max_bytes > 0 else None  # 0: no event knew its RSS


def _ctr(b: BusinessWindow) -> float | None:
    return b.clicked_impressions / b.impressions if _enough(b.impressions, 200) else None


def _conversion_rate(b: BusinessWindow) -> float | None:
    return b.bought_impressions / b.impressions if _enough(b.impressions, 200) else None


SERIES: Mapping[str, SeriesSpec] = {
    s.metric: s
    for s in (
        # p99 jitters +-20 % and blips 1.5x: a 20 % floor; x5 is ~20 spreads
        SeriesSpec("latency_p99_us", "metrics", "up", 20, 0.2, 0.0, _latency_p99),
        # 0-1 % normally: a 2 percentage-point floor, so a few errors in a quiet window do not alert
        SeriesSpec("error_rate", "metrics", "up", 20, 0.2, 0.02, _error_rate),
        # traffic swings with the shop: only a large change (x3 up, or a sustained fall below ~40 %) counts
        SeriesSpec("throughput_rps", "metrics", "both", 0, 0.3, 0.5, _throughput),
        SeriesSpec("score_mean", "metrics", "both", 20, 0.05, 0.01, _score_mean),
        # only for models with a result cache: the monitor starts it at the first window with cache hits
        SeriesSpec("cache_hit_rate", "metrics", "down", 20, 0.1, 0.05, _cache_hit_rate),
        # per replica, the max RSS of the window: smooth (~0.1 % noise), so a 0.15 % floor; a leak of +2 %/min
        # accumulates in the CUSUM within 3 windows (tests/unit/test_series_rss.py), only growth is bad
        SeriesSpec("process_rss_bytes", "metrics", "up", 0, 0.0015, 0.0, _process_rss, per_replica=True),
        SeriesSpec("ctr", "business", "down", 200, 0.1, 0.002, _ctr),
        SeriesSpec("conversion_rate", "business", "down", 200, 0.15, 0.001, _conversion_rate),
    )
}


def series_key(model: str, version: int, label: str, metric: str, replica: str = "") -> str:
    """``model/version/label/metric`` (``@replica`` appended for a per-replica series): the key of the series'
    detector, checkpoint row and anomaly messages."""
    key = f"{model}/{version}/{label}/{metric}"
    return f"{key}@{replica}" if replica else key


def anomaly_id(series: str, ts_us: int) -> str:
    """Deterministic: the same window of the same series always gets the same id (replays do not duplicate)."""
    return hashlib.sha1(f"{series}@{ts_us}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Point:
    """One scored window of one series. ``baseline`` is the detector's median before this window (``nan`` while
    it warms up); ``anomaly`` is set when ``score >= threshold``; ``replica`` is empty for roll-up series."""

    series: str
    metric: str
    model: str
    version: int
    label: str
    ts_us: int
    window_s: int
    value: float
    baseline: float
    score: float
    threshold: float
    anomaly: Anomaly | None
    replica: str = ""


class SeriesMonitor:
    """One detector per (model, version, label, metric), created lazily; scores windows, dedups replays.

    >>> m = SeriesMonitor()
    >>> a = WindowAggregate(window_start_us=0, model="m", version=1, requests=100, throughput_rps=10.0,
    ...                     latency_p99_us=40_000.0)
    >>> [p.metric for p in m.evaluate(a)]  # no score histogram, no cache hits: those series do not apply
    ['latency_p99_us', 'error_rate', 'throughput_rps']
    >>> m.evaluate(a)  # the same window again (at-least-once delivery): ignored
    []
    >>> r = WindowAggregate(window_start_us=0, model="m", version=1, replica="r1", process_rss_max_bytes=2e9)
    >>> [(p.metric, p.replica) for p in m.evaluate(r)]  # a per-replica row: only the per-replica series
    [('process_rss_bytes', 'r1')]
    """

    def __init__(self, threshold: float = 0.9, series: Mapping[str, SeriesSpec] = SERIES) -> None:
        self.threshold = threshold
        self.series = series
        self.detectors: dict[str, LiveDetector] = {}
        self.through_us: dict[str, int] = {}  # (source/model/version/label[@replica]) -> last window start scored
        self._dirty: set[str] = set()

    def observe(self, aggregate: WindowAggregate) -> list[Anomaly]:
        """The anomalies of one window (replays give none)."""
        return [p.anomaly for p in self.evaluate(aggregate) if p.anomaly is not None]

    def evaluate(self, aggregate: WindowAggregate) -> list[Point]:
        """Every metric of one ``WindowAggregate`` scored: a roll-up row (``replica == ""``) for the roll-up series,
        a per-replica row for the ``per_replica`` ones (replayed windows: none)."""
        a = aggregate
        return self._score("metrics", a.model, a.version, a.label, a.window_start_us, a, replica=a.replica)

    def evaluate_business(self, row: BusinessWindow) -> list[Point]:
        """Every business metric of one closed ``business_metrics_1m`` row (``window_start`` in s) scored."""
        return self._score("business", row.model, row.version, row.label, row.window_start * _US, row)

    def _score(
        self, source: Source, model: str, version: int, label: str, ts_us: int, window: Any, *, replica: str = ""
    ) -> list[Point]:
        group = f"{source}/{model}/{version}/{label}" + (f"@{replica}" if replica else "")
        if ts_us <= self.through_us.get(group, -1):
            return []
        self.through_us[group] = ts_us
        self._dirty.add(group)
        points = []
        for spec in self.series.values():
            if spec.source != source or spec.per_replica != bool(replica):
                continue
            value = spec.value(window)
            if value is None or not math.isfinite(value):
                continue
            key = series_key(model, version, label, spec.metric, replica)
            det = self.detectors.get(key)
            if det is None:
                if spec.metric == "cache_hit_rate" and value <= 0.0:
                    continue  # no cache for this model (yet): a hit rate of 0 is not a fault
                det = self.detectors[key] = spec.detector()
            score = det.update(ts_us / _US, value)
            self._dirty.add(key)
            anomaly = None
            if score >= self.threshold:
                anomaly = Anomaly(
                    anomaly_id=anomaly_id(key, ts_us),
                    ts_us=ts_us,
                    metric=spec.metric,
                    model=model,
                    version=version,
                    label=label,
                    replica=replica,
                    value=value,
                    score=score,
                    threshold=self.threshold,
                    detector=DETECTOR,
                )
            point = Point(key, spec.metric, model, version, label, ts_us, spec.window_s, value, det.baseline, score,
                          self.threshold, anomaly, replica)  # fmt: skip
            points.append(point)
        return points

    def checkpoint(self, updated_us: int, *, everything: bool = False) -> list[dict[str, Any]]:
        """Rows for ``detector_checkpoints`` of what changed since the last call (all with ``everything``).

        A detector's row has ``detector = "live"`` and its pickled state; a window group's progress has
        ``series = "through:" + group`` and an empty state.
        """
        names = set(self.through_us) | set(self.detectors) if everything else self._dirty
        rows = []
        for name in sorted(names):
            det = self.detectors.get(name)
            if det is not None:
                group = _group_of(name)
                rows.append(_row(name, DETECTOR, self.through_us.get(group, 0), _dump(det), updated_us))
            elif name in self.through_us:
                rows.append(_row(f"through:{name}", "", self.through_us[name], "", updated_us))
        self._dirty.clear()
        return rows

    def restore(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Load what ``checkpoint`` wrote (the latest row per series)."""
        for row in rows:
            series = str(row["series"])
            if series.startswith("through:"):
                self.through_us[series.removeprefix("through:")] = int(row["through_us"])
            elif row["detector"] == DETECTOR and row["state"]:
                det = load_state(str(row["state"]), LiveDetector.from_json)
                if isinstance(det, LiveDetector):
                    self.detectors[series] = det
        self._dirty.clear()


def _group_of(series: str) -> str:
    """The window group of a series key (``series_key``): ``source/model/version/label[@replica]``."""
    head, at, replica = series.partition("@")  # model and label names have no "@" (replica names may)
    model_version_label, _, metric = head.rpartition("/")
    spec = SERIES.get(metric)
    return f"{spec.source if spec else 'metrics'}/{model_version_label}{at}{replica}"


CHECKPOINT_VERSION = 1
"""Checkpoint states are ``{"v": 1, "state": ...}`` JSON. Version 0 (until 2026-12) was a base64 pickle: still
read, so a deploy restores the previous release's checkpoints; it is never written again."""


def _dump(det: LiveDetector) -> str:
    return json.dumps({"v": CHECKPOINT_VERSION, "state": det.to_json()}, separators=(",", ":"))


def load_state(text: str, from_json: Callable[[Any], Any]) -> Any:
    """A checkpoint state of any version: JSON (``from_json`` builds it) or a version-0 base64 pickle."""
    if text.startswith("{"):
        data = json.loads(text)
        if int(data.get("v", 0)) > CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint format {data['v']} is newer than this release's ({CHECKPOINT_VERSION})")
        return from_json(data["state"])
    return pickle.loads(base64.b64decode(text))  # version 0: written by an earlier release (trusted: our store)


def _row(series: str, detector: str, through_us: int, state: str, updated_us: int) -> dict[str, Any]:
    return {
        "series": series,
        "detector": detector,
        "through_us": through_us,
        "state": state,
        "updated_us": updated_us,
    }
