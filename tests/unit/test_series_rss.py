"""The ``process_rss_bytes`` series: scored per replica from the per-replica WindowAggregates, so a leak in one
server process alerts for that replica (labels and fingerprint carry it) and a clean replica stays quiet."""

from __future__ import annotations

from alerting.rules import AlertRules, fingerprint
from detection.series import SeriesMonitor, series_key
from schemas import WindowAggregate
from tests.unit.test_live_detector import EXPECTED_MAX_DELAY, FAULT_AT, SEEDS, THRESHOLD, WINDOWS, simulate

US = 1_000_000
T0 = 1_700_000_000
METRIC = "process_rss_bytes"


def windows(leaking: list[float], clean: list[float]) -> list[WindowAggregate]:
    """Per 10 s window, as the emitter publishes them: replica r1's row, r2's row and the roll-up (max RSS)."""
    out = []
    for i, (a, b) in enumerate(zip(leaking, clean, strict=True)):
        for replica, rss in (("r1", a), ("r2", b), ("", max(a, b))):
            out.append(
                WindowAggregate(
                    window_start_us=(T0 + 10 * i) * US,
                    model="ranker",
                    version=1,
                    label="stable",
                    replica=replica,
                    requests=100,
                    process_rss_max_bytes=rss,
                )
            )
    return out


def test_a_leaking_replica_alerts_within_3_windows_and_the_other_replica_does_not() -> None:
    worst = 0
    for seed in SEEDS:
        monitor, rules = SeriesMonitor(threshold=THRESHOLD), AlertRules(threshold=THRESHOLD)
        fired = []
        first: int | None = None
        for w in windows(simulate(METRIC, seed, fault=True), simulate(METRIC, 500 + seed, fault=False)):
            for p in monitor.evaluate(w):
                if p.metric != METRIC:
                    continue
                assert p.replica == w.replica != ""  # never scored on the roll-up row
                if p.anomaly is not None:
                    assert (p.anomaly.replica, p.series) == ("r1", series_key("ranker", 1, "stable", METRIC, "r1"))
                    if first is None:
                        first = (w.window_start_us // US - T0) // 10
                fired += [e.alert for e in rules.step(p) if e.kind == "fired"]
        assert first is not None and first >= FAULT_AT, seed
        worst = max(worst, first - FAULT_AT)
        [alert] = fired
        assert alert.labels["replica"] == "r1" and alert.labels["alertname"] == "RecwatchProcessRssGrowing"
        assert alert.fingerprint == fingerprint("RecwatchProcessRssGrowing", "ranker", 1, "stable", METRIC, "r1")
        assert "replica = 'r1'" in alert.annotations["sql"] and "process_rss_max_bytes" in alert.annotations["sql"]
    assert worst <= EXPECTED_MAX_DELAY[METRIC] <= 3


def test_clean_replicas_raise_no_anomaly_in_50_runs_of_15_minutes() -> None:
    for seed in SEEDS:
        monitor = SeriesMonitor(threshold=THRESHOLD)
        ws = windows(simulate(METRIC, 1000 + seed, fault=False), simulate(METRIC, 2000 + seed, fault=False))
        anomalies = [a for w in ws for a in monitor.observe(w) if a.metric == METRIC]
        assert anomalies == [], seed
        assert len([k for k in monitor.detectors if k.endswith(("@r1", "@r2"))]) == 2  # one detector per replica


def test_windows_without_a_known_rss_are_skipped() -> None:
    monitor = SeriesMonitor()
    unknown = WindowAggregate(window_start_us=T0 * US, model="ranker", version=1, replica="r1", requests=50)
    assert monitor.evaluate(unknown) == [] and monitor.detectors == {}
    known = WindowAggregate(window_start_us=(T0 + 10) * US, model="ranker", version=1, replica="r1", requests=50,
                            process_rss_max_bytes=2e9)  # fmt: skip
    assert [p.metric for p in monitor.evaluate(known)] == [METRIC]


def test_per_replica_progress_and_detectors_checkpoint_and_restore() -> None:
    values = simulate(METRIC, 7, fault=False)
    ws = windows(values[:WINDOWS], values[:WINDOWS])
    monitor = SeriesMonitor()
    for w in ws[:30]:
        monitor.evaluate(w)
    restored = SeriesMonitor()
    restored.restore(monitor.checkpoint(0, everything=True))
    assert restored.evaluate(ws[27]) == []  # r1's last window again: a replay
    key = series_key("ranker", 1, "stable", METRIC, "r1")
    assert restored.detectors[key].n == monitor.detectors[key].n
    assert [p.score for p in restored.evaluate(ws[30])] == [p.score for p in monitor.evaluate(ws[30])]
    rows = {r["series"]: r["through_us"] for r in monitor.checkpoint(0, everything=True)}
    assert rows[key] == rows["through:metrics/ranker/1/stable@r1"] == ws[30].window_start_us
