"""From scored windows to alerts: open one alert per series, keep it while anomalies repeat, resolve it on recovery.

An alert groups the anomalies of one series; its *fingerprint* is a hash of its identifying labels
(``alertname``, ``model``, ``version``, ``label``, ``metric``, and ``replica`` for a per-replica series such as
``process_rss_bytes``), so it is the same on every alerter replica and restart.

- **fire**: a window whose score is at or above ``threshold`` on a series without an open alert opens one
  (``FIRING``, ``starts_at_us`` = that window's start): one notification.
- **dedup**: further anomalies while it is open only append their ``anomaly_ids`` (an ``updated`` event: the
  stored row changes, nobody is notified again).
- **resolve**: ``resolve_after`` (3) consecutive windows below the threshold close it (``RESOLVED``,
  ``ends_at_us`` = the start of the first of those clean windows): one notification.
  A later anomaly opens a new alert (same fingerprint, new ``starts_at_us``).
- **severity**: ``critical`` for ``error_rate`` and ``latency_p99_us`` when an anomaly of the alert scores at least
  ``critical_score`` (0.99) or its value is at least ``critical_ratio`` (5) x the detector's baseline (an error rate
  from a baseline of 0 % is critical at once); ``warning`` otherwise. An open alert's severity only rises.

Labels: ``alertname`` (one per metric, Prometheus style: ``RecwatchLatencyP99High``, ...; see ``ALERTNAMES``),
``severity``, ``model``, ``version``, ``label``, ``metric`` (and ``replica`` for per-replica series). Annotations:
``summary`` (one sentence with the numbers), ``value``, ``baseline``, ``score``, ``window`` (ISO start, length) and
``sql``: a query against the documented views (docs/tables.md) showing the series from 10 min before to 10 min
after the first anomaly.

Pure logic: time comes from the windows, state is plain data (``to_json``: checkpointed with the detectors).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from detection.series import Point
from schemas import Alert
from store.sql import string_literal

__all__ = ["ALERTNAMES", "AlertEvent", "AlertRules", "fingerprint", "series_sql"]

_US = 1_000_000
ALERTNAMES: dict[str, str] = {
    "latency_p99_us": "RecwatchLatencyP99High",
    "error_rate": "RecwatchErrorRateHigh",
    "throughput_rps": "RecwatchThroughputAnomalous",
    "score_mean": "RecwatchScoreMeanDrift",
    "cache_hit_rate": "RecwatchCacheHitRateLow",
    "ctr": "RecwatchCtrLow",
    "conversion_rate": "RecwatchConversionRateLow",
    "process_rss_bytes": "RecwatchProcessRssGrowing",
}
_CRITICAL_METRICS = frozenset({"error_rate", "latency_p99_us"})
_DESCRIPTIONS = {
    "latency_p99_us": ("p99 latency", "µs"),
    "error_rate": ("error rate", ""),
    "throughput_rps": ("throughput", "req/s"),
    "score_mean": ("mean prediction score", ""),
    "cache_hit_rate": ("cache hit rate", ""),
    "ctr": ("CTR", ""),
    "conversion_rate": ("conversion rate", ""),
    "process_rss_bytes": ("process RSS", "bytes"),
}


def fingerprint(alertname: str, model: str, version: int, label: str, metric: str, replica: str = "") -> str:
    """Stable id of an alert group: a hash of its identifying labels (roll-up series: no replica)."""
    text = "\x1f".join((alertname, model, str(version), label, metric, *((replica,) if replica else ())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AlertEvent:
    """What happened to an alert: ``fired`` and ``resolved`` are notified, ``updated`` is only stored."""

    kind: Literal["fired", "updated", "resolved"]
    alert: Alert


@dataclass
class _Open:
    alert: Alert
    clean: int = 0
    first_clean_us: int = 0
    worst_score: float = 0.0


@dataclass
class AlertRules:
    """Per fingerprint: fire on an anomaly, dedup while firing, resolve after ``resolve_after`` clean windows."""

    threshold: float = 0.9
    resolve_after: int = 3
    critical_score: float = 0.99
    critical_ratio: float = 5.0
    critical_metrics: frozenset[str] = _CRITICAL_METRICS
    open: dict[str, _Open] = field(default_factory=dict)

    def step(self, point: Point) -> list[AlertEvent]:
        """Feed one scored window of one series (in window order); returns what changed."""
        alertname = ALERTNAMES.get(point.metric, "RecwatchAnomaly")
        fp = fingerprint(alertname, point.model, point.version, point.label, point.metric, point.replica)
        current = self.open.get(fp)
        if point.score >= self.threshold:
            severity = self._severity(point)
            if current is None:
                alert = _new_alert(fp, alertname, severity, point)
                self.open[fp] = _Open(alert, worst_score=point.score)
                return [AlertEvent("fired", _copy(alert))]
            current.clean = 0
            alert = current.alert
            if point.anomaly is not None and point.anomaly.anomaly_id not in alert.anomaly_ids:
                alert.anomaly_ids.append(point.anomaly.anomaly_id)
            if severity == "critical" and alert.severity != "critical":
                alert.severity = alert.labels["severity"] = "critical"
            if point.score > current.worst_score:
                current.worst_score = point.score
                alert.annotations["peak"] = _describe(point)
            return [AlertEvent("updated", _copy(alert))]
        if current is None:
            return []
        current.clean += 1
        if current.clean == 1:
            current.first_clean_us = point.ts_us
        if current.clean < self.resolve_after:
            return []
        del self.open[fp]
        alert = current.alert
        alert.status = Alert.RESOLVED
        alert.ends_at_us = current.first_clean_us
        alert.annotations["resolved"] = (
            f"{_DESCRIPTIONS.get(point.metric, (point.metric, ''))[0]} back to {_fmt(point.value)} "
            f"for {self.resolve_after} windows"
        )
        return [AlertEvent("resolved", alert)]

    def to_json(self) -> dict[str, Any]:
        """The open alerts as JSON-able data (the parameters come from the alerter's configuration)."""
        return {
            fp: {
                "alert": o.alert.SerializeToString().hex(),
                "clean": o.clean,
                "first_clean_us": o.first_clean_us,
                "worst_score": o.worst_score,
            }
            for fp, o in self.open.items()
        }

    def restore_json(self, data: Mapping[str, Any]) -> None:
        self.open = {}
        for fp, o in data.items():
            alert = Alert.FromString(bytes.fromhex(o["alert"]))
            self.open[fp] = _Open(alert, int(o["clean"]), int(o["first_clean_us"]), float(o["worst_score"]))

    def _severity(self, p: Point) -> str:
        if p.metric not in self.critical_metrics:
            return "warning"
        ratio_hit = math.isfinite(p.baseline) and p.value >= self.critical_ratio * max(p.baseline, 0.0)
        return "critical" if p.score >= self.critical_score or ratio_hit else "warning"


def _copy(alert: Alert) -> Alert:
    out = Alert()
    out.CopyFrom(alert)
    return out


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.4g}"


def _describe(p: Point) -> str:
    return f"{_fmt(p.value)} at {_iso(p.ts_us)} (score {p.score:.4f})"


def _iso(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / _US, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_alert(fp: str, alertname: str, severity: str, p: Point) -> Alert:
    what, unit = _DESCRIPTIONS.get(p.metric, (p.metric, ""))
    unit = f" {unit}" if unit else ""
    vs = f"its baseline {_fmt(p.baseline)}{unit}" if math.isfinite(p.baseline) else "its baseline"
    summary = (
        f"{what} of {p.model} v{p.version}{f' ({p.label})' if p.label else ''}"
        f"{f' on replica {p.replica}' if p.replica else ''} is {_fmt(p.value)}{unit} "
        f"vs {vs} in the {p.window_s} s window at {_iso(p.ts_us)} (anomaly score {p.score:.4f})."
    )
    alert = Alert(
        fingerprint=fp,
        status=Alert.FIRING,
        severity=severity,
        starts_at_us=p.ts_us,
        ends_at_us=0,
        anomaly_ids=[p.anomaly.anomaly_id] if p.anomaly is not None else [],
    )
    alert.labels.update(
        {
            "alertname": alertname,
            "severity": severity,
            "model": p.model,
            "version": str(p.version),
            "label": p.label,
            "metric": p.metric,
        }
    )
    if p.replica:
        alert.labels["replica"] = p.replica
    alert.annotations.update(
        {
            "summary": summary,
            "value": _fmt(p.value),
            "baseline": _fmt(p.baseline),
            "score": f"{p.score:.6f}",
            "window": f"{_iso(p.ts_us)} +{p.window_s}s",
            "sql": series_sql(p.metric, p.model, p.version, p.label, p.ts_us, replica=p.replica),
        }
    )
    return alert


def series_sql(
    metric: str, model: str, version: int, label: str, ts_us: int, around_s: int = 600, *, replica: str = ""
) -> str:
    """A ready-to-run query showing ``metric`` of the series from ``around_s`` before to after ``ts_us``.

    The 10 s metrics are rolled up over replicas like the published windows: counts from
    ``inference_metrics_10s``, p99 from the latency sketches of ``inference_metrics_10s_parts`` (docs/tables.md).
    A per-replica series (``replica`` given: ``process_rss_bytes``) shows that replica's rows.
    """
    start = ts_us // _US - around_s
    end = ts_us // _US + around_s
    where = (
        f"model = {string_literal(model)} AND version = {int(version)} AND label = {string_literal(label)}\n"
        f"  AND window_start >= toDateTime({start}) AND window_start < toDateTime({end})"
    )
    if replica:
        where += f" AND replica = {string_literal(replica)}"
    if metric == "process_rss_bytes":
        return (
            "SELECT window_start, replica, requests, process_rss_max_bytes\n"
            f"FROM inference_metrics_10s\nWHERE {where}\nORDER BY window_start, replica"
        )
    if metric in ("ctr", "conversion_rate"):
        return (
            f"SELECT window_start, impressions, clicked_impressions, bought_impressions, ctr, conversion_rate\n"
            f"FROM business_metrics_1m\nWHERE {where}\nORDER BY window_start"
        )
    if metric == "latency_p99_us":
        return (
            "SELECT window_start, sum(c) AS requests,\n"
            "  quantileExactWeighted(0.99)(if(k = 0, 0., pow(1.02020202020202, k - 1) * 0.9900000000000001), c)"
            " AS latency_p99_us\n"
            f"FROM inference_metrics_10s_parts FINAL\nARRAY JOIN latency_keys AS k, latency_counts AS c\n"
            f"WHERE {where}\nGROUP BY window_start ORDER BY window_start"
        )
    if metric == "score_mean":
        return (
            "SELECT window_start, sum(requests) AS requests,\n"
            "  if(sum(score_count) = 0, 0, sum(score_sum) / sum(score_count)) AS score_mean\n"
            f"FROM inference_metrics_10s_parts FINAL\nWHERE {where}\nGROUP BY window_start ORDER BY window_start"
        )
    value = {
        "error_rate": "if(sum(requests) = 0, 0, sum(errors) / sum(requests)) AS error_rate",
        "throughput_rps": "sum(requests) / 10 AS throughput_rps",
        "cache_hit_rate": "if(sum(requests) = 0, 0, sum(cache_hit_rate * requests) / sum(requests)) AS cache_hit_rate",
    }.get(metric, "sum(errors) AS errors")
    return (
        f"SELECT window_start, sum(requests) AS requests, sum(errors) AS errors,\n  {value}\n"
        f"FROM inference_metrics_10s\nWHERE {where}\nGROUP BY window_start ORDER BY window_start"
    )
