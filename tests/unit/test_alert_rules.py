"""Alert rules: fire once per series, dedup while firing, resolve after N clean windows, refire, severity and
annotations."""

from __future__ import annotations

import math
import pickle

from alerting.rules import AlertRules, fingerprint
from detection.series import Point, anomaly_id
from schemas import Alert, Anomaly

W = 10_000_000  # 10 s in µs
T0 = 1_700_000_000 * 1_000_000


def point(i: int, score: float, *, metric: str = "latency_p99_us", value: float = 50_000.0, base: float = 40_000.0,
          model: str = "ranker", version: int = 3, label: str = "canary") -> Point:  # fmt: skip
    series = f"{model}/{version}/{label}/{metric}"
    ts = T0 + i * W
    anomaly = None
    if score >= 0.9:
        anomaly = Anomaly(anomaly_id=anomaly_id(series, ts), ts_us=ts, metric=metric, model=model, version=version,
                          label=label, value=value, score=score, threshold=0.9, detector="live")  # fmt: skip
    return Point(series, metric, model, version, label, ts, 10, value, base, score, 0.9, anomaly)


def run(rules: AlertRules, scores: list[float], **kw: object) -> list[tuple[int, str, Alert]]:
    out: list[tuple[int, str, Alert]] = []
    for i, s in enumerate(scores):
        out += [(i, e.kind, e.alert) for e in rules.step(point(i, s, **kw))]  # type: ignore[arg-type]
    return out


def test_fires_once_dedups_while_firing_and_resolves_after_three_clean_windows() -> None:
    rules = AlertRules()
    events = run(rules, [0.1, 0.2, 0.95, 0.97, 0.3, 0.96, 0.2, 0.1, 0.1, 0.1])
    kinds = [(i, k) for i, k, _ in events]
    assert kinds == [(2, "fired"), (3, "updated"), (5, "updated"), (8, "resolved")]
    fired, resolved = events[0][2], events[-1][2]
    assert fired.status == Alert.FIRING and fired.ends_at_us == 0 and fired.starts_at_us == T0 + 2 * W
    assert resolved.status == Alert.RESOLVED
    assert resolved.fingerprint == fired.fingerprint
    assert resolved.ends_at_us == T0 + 6 * W  # the first of the three clean windows
    assert len(resolved.anomaly_ids) == 3  # windows 2, 3 and 5: appended, not new alerts
    assert not rules.open


def test_refires_after_resolve_with_the_same_fingerprint_and_a_new_start() -> None:
    rules = AlertRules(resolve_after=2)
    events = run(rules, [0.95, 0.1, 0.1, 0.1, 0.99, 0.1])
    fired = [a for _, k, a in events if k == "fired"]
    assert len(fired) == 2
    assert fired[0].fingerprint == fired[1].fingerprint
    assert fired[1].starts_at_us == T0 + 4 * W


def test_series_are_independent() -> None:
    rules = AlertRules()
    a = rules.step(point(0, 0.95, label="canary"))
    b = rules.step(point(0, 0.95, label="stable"))
    c = rules.step(point(1, 0.95, metric="error_rate", value=0.2, base=0.01))
    assert [e.kind for e in a + b + c] == ["fired"] * 3
    assert len({e.alert.fingerprint for e in a + b + c}) == 3
    assert a[0].alert.fingerprint == fingerprint("RecwatchLatencyP99High", "ranker", 3, "canary", "latency_p99_us")


def test_severity() -> None:
    def severity(score: float, metric: str, value: float, base: float) -> str:
        return AlertRules().step(point(0, score, metric=metric, value=value, base=base))[0].alert.severity

    assert severity(0.95, "latency_p99_us", 80_000, 40_000) == "warning"  # x2, score < 0.99
    assert severity(0.95, "latency_p99_us", 200_000, 40_000) == "critical"  # x5
    assert severity(0.995, "latency_p99_us", 80_000, 40_000) == "critical"  # score >= 0.99
    assert severity(0.95, "error_rate", 0.2, 0.0) == "critical"  # from 0 %: any anomalous rate is >= 5x
    assert severity(0.999, "score_mean", 0.4, 0.25) == "warning"  # only errors and latency page
    assert severity(0.95, "latency_p99_us", 80_000, math.nan) == "warning"  # no baseline yet


def test_severity_rises_while_firing_without_a_new_notification() -> None:
    rules = AlertRules()
    first = rules.step(point(0, 0.95, value=80_000))
    later = rules.step(point(1, 0.95, value=300_000))
    assert first[0].alert.severity == "warning"
    assert [e.kind for e in later] == ["updated"] and later[0].alert.severity == "critical"
    assert later[0].alert.labels["severity"] == "critical"


def test_labels_and_annotations_carry_numbers_and_runnable_sql() -> None:
    alert = AlertRules().step(point(0, 0.96, value=200_000, base=40_000))[0].alert
    assert dict(alert.labels) == {
        "alertname": "RecwatchLatencyP99High",
        "severity": "critical",
        "model": "ranker",
        "version": "3",
        "label": "canary",
        "metric": "latency_p99_us",
    }
    ann = alert.annotations
    assert "2e+05" in ann["summary"] and "4e+04" in ann["summary"] and "ranker v3" in ann["summary"]
    assert ann["value"] == "2e+05" and ann["baseline"] == "4e+04" and ann["score"].startswith("0.96")
    assert ann["window"].endswith("+10s")
    sql = ann["sql"]
    assert sql.startswith("SELECT window_start")
    assert "inference_metrics_10s_parts" in sql and "latency_keys" in sql
    assert "model = 'ranker' AND version = 3 AND label = 'canary'" in sql
    assert f"toDateTime({T0 // 1_000_000 - 600})" in sql


def test_sql_names_the_right_view_per_metric_and_escapes_literals() -> None:
    def sql(metric: str, model: str = "ranker") -> str:
        return (
            AlertRules()
            .step(point(0, 0.95, metric=metric, model=model, value=1.0, base=2.0))[0]
            .alert.annotations["sql"]
        )

    assert "FROM business_metrics_1m" in sql("ctr") and "ctr" in sql("ctr")
    assert "FROM business_metrics_1m" in sql("conversion_rate")
    assert "FROM inference_metrics_10s\n" in sql("error_rate") and "sum(errors) / sum(requests)" in sql("error_rate")
    assert "FROM inference_metrics_10s\n" in sql("throughput_rps")
    assert "score_sum" in sql("score_mean")
    assert "model = 'o\\'brien\\\\x'" in sql("error_rate", model="o'brien\\x")


def test_state_round_trips_through_json_and_continues() -> None:
    import json

    rules = AlertRules()
    run(rules, [0.95, 0.2])
    clone = AlertRules()
    clone.restore_json(json.loads(json.dumps(rules.to_json())))
    kinds = [e.kind for e in clone.step(point(2, 0.1))] + [e.kind for e in clone.step(point(3, 0.1))]
    assert kinds == ["resolved"]


def test_state_pickles_and_continues() -> None:
    rules = AlertRules()
    run(rules, [0.95, 0.2])
    clone = pickle.loads(pickle.dumps(rules))
    kinds = [e.kind for e in clone.step(point(2, 0.1))] + [e.kind for e in clone.step(point(3, 0.1))]
    assert kinds == ["resolved"]
