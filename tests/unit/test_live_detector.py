"""The live detector on simulated traffic: each fault flagged within 3 windows, nothing on 15 clean minutes.

Simulations are seeded. A fault starts at window ``FAULT_AT`` after clean traffic; its *delay* is the number of
windows from the fault's first window to the first alert (0 = flagged in the fault's first window). Clean runs go
through the alert rule (``alerting.rules.AlertRules``) and must open no alert at all.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable

import numpy as np
import pytest

from alerting.rules import AlertRules
from detection import DETECTORS, make_detector
from detection.live import LiveDetector
from detection.series import SERIES, Point

WINDOWS = 90  # 15 min of 10 s windows
FAULT_AT = 60
SEEDS = range(50)
THRESHOLD = 0.9

Sim = Callable[[np.random.Generator, int, bool], float]


def _requests(rng: np.random.Generator, lam: float) -> int:
    return int(rng.poisson(lam))


def _latency(rng: np.random.Generator, n: int, fault: bool, base: float, blips: set[int], i: int) -> float:
    value = base * (1.0 + rng.uniform(-0.2, 0.2)) * (1.5 if i in blips else 1.0)
    return value * 5.0 if fault else value


def _blips(rng: np.random.Generator) -> set[int]:
    """Occasional single-window 1.5x p99 blips (never two in a row): ~3 % of windows."""
    out: set[int] = set()
    for i in range(WINDOWS):
        if rng.random() < 0.03 and i - 1 not in out:
            out.add(i)
    return out


def simulate(metric: str, seed: int, *, fault: bool) -> list[float]:
    """One series of ``WINDOWS`` values; with ``fault`` the fault runs from ``FAULT_AT`` on (6 windows for latency,
    to the end for the others)."""
    rng = np.random.default_rng(seed)
    lam = rng.uniform(100, 300)  # requests per 10 s window
    out = []
    if metric == "latency_p99_us":
        base = rng.uniform(20_000, 80_000)
        blips = _blips(rng)
        for i in range(WINDOWS):
            out.append(_latency(rng, 0, fault and FAULT_AT <= i < FAULT_AT + 6, base, blips, i))
    elif metric == "error_rate":
        p = rng.uniform(0.0, 0.01)
        for i in range(WINDOWS):
            n = _requests(rng, lam)
            rate = 0.2 if fault and i >= FAULT_AT else p
            out.append(rng.binomial(n, rate) / n)
    elif metric == "throughput_rps":
        for i in range(WINDOWS):
            drop = 0.1 if fault and i >= FAULT_AT else 1.0  # traffic collapses to 10 %
            out.append(_requests(rng, lam * drop) / 10.0)
    elif metric == "score_mean":
        for i in range(WINDOWS):
            n = _requests(rng, lam)
            mean = 0.40 if fault and i >= FAULT_AT else 0.25  # a shifted input distribution
            out.append(float(rng.normal(mean, 0.15 / math.sqrt(n))))
    elif metric == "cache_hit_rate":
        p = rng.uniform(0.3, 0.6)
        for i in range(WINDOWS):
            n = _requests(rng, lam)
            rate = 0.05 if fault and i >= FAULT_AT else p  # cache flushed / keys changed
            out.append(rng.binomial(n, rate) / n)
    elif metric in ("ctr", "conversion_rate"):  # 1 min windows
        rate = rng.uniform(0.03, 0.08) if metric == "ctr" else rng.uniform(0.01, 0.02)
        lam_imp = rng.uniform(2000, 6000)
        for i in range(WINDOWS):
            n = _requests(rng, lam_imp)
            r = rate / 2 if fault and i >= FAULT_AT else rate  # halved
            out.append(rng.binomial(n, r) / n)
    elif metric == "process_rss_bytes":  # one replica's max RSS per window
        base = rng.uniform(2e8, 2e9)
        for i in range(WINDOWS):
            leak = (1.0 + 0.02 / 6 * (i - FAULT_AT + 1)) if fault and i >= FAULT_AT else 1.0  # +2 %/min
            out.append(base * leak * (1.0 + rng.normal(0.0, 0.001)))
    else:
        raise ValueError(metric)
    return out


def detector_for(metric: str) -> LiveDetector:
    return SERIES[metric].detector()


def scores_of(metric: str, values: list[float]) -> list[float]:
    det = detector_for(metric)
    step = 60.0 if metric in ("ctr", "conversion_rate") else 10.0
    return [det.update(1.7e9 + step * i, v) for i, v in enumerate(values)]


def alerts_of(metric: str, scores: list[float], values: list[float]) -> int:
    rules = AlertRules(threshold=THRESHOLD)
    fired = 0
    for i, (s, v) in enumerate(zip(scores, values, strict=True)):
        point = Point("m/1/stable/" + metric, metric, "m", 1, "stable", i * 10_000_000, 10, v, v, s, THRESHOLD, None)
        fired += sum(e.kind == "fired" for e in rules.step(point))
    return fired


FAULTS = ["latency_p99_us", "error_rate", "score_mean", "ctr", "process_rss_bytes", "cache_hit_rate", "throughput_rps"]
# measured: the worst delay over SEEDS (windows after the fault's first one); see docs/detection.md
EXPECTED_MAX_DELAY = {
    "latency_p99_us": 0,
    "error_rate": 0,
    "score_mean": 0,
    "ctr": 2,
    "process_rss_bytes": 3,
    "cache_hit_rate": 1,
    "throughput_rps": 3,
}


def delay(metric: str, seed: int) -> int | None:
    values = simulate(metric, seed, fault=True)
    scores = scores_of(metric, values)
    for i in range(FAULT_AT, WINDOWS):
        if scores[i] >= THRESHOLD:
            return i - FAULT_AT
    return None


@pytest.mark.parametrize("metric", FAULTS)
def test_fault_is_flagged_within_3_windows(metric: str) -> None:
    delays = [delay(metric, seed) for seed in SEEDS]
    assert None not in delays
    worst = max(d for d in delays if d is not None)
    assert worst <= 3
    assert worst <= EXPECTED_MAX_DELAY[metric]


@pytest.mark.parametrize("metric", list(SERIES))
def test_clean_traffic_raises_no_alert_in_50_runs_of_15_minutes(metric: str) -> None:
    alerts = 0
    worst = 0.0
    for seed in SEEDS:
        values = simulate(metric, 1000 + seed, fault=False)
        scores = scores_of(metric, values)
        worst = max(worst, *scores)
        alerts += alerts_of(metric, scores, values)
    assert alerts == 0, f"{metric}: {alerts} alerts, worst score {worst:.3f}"


def test_a_sustained_fault_keeps_scoring_high_while_it_lasts() -> None:
    values = simulate("latency_p99_us", 3, fault=True)
    scores = scores_of("latency_p99_us", values)
    assert all(s >= THRESHOLD for s in scores[FAULT_AT : FAULT_AT + 6])  # 60 s of x5: every window
    assert all(s < THRESHOLD for s in scores[FAULT_AT + 8 :])  # and the baseline was not poisoned by it


def test_direction_is_respected() -> None:
    up, down, both = LiveDetector("up"), LiveDetector("down"), LiveDetector("both")
    for i in range(20):
        for d in (up, down, both):
            d.update(float(i), 100.0 + (i % 3))
    assert up.update(20.0, 10.0) == 0.0 and down.update(20.0, 10.0) > THRESHOLD and both.update(20.0, 10.0) > 0.9
    up2, down2 = LiveDetector("up"), LiveDetector("down")
    for i in range(20):
        up2.update(float(i), 100.0 + (i % 3))
        down2.update(float(i), 100.0 + (i % 3))
    assert up2.update(20.0, 1000.0) > THRESHOLD and down2.update(20.0, 1000.0) == 0.0


def test_relative_floor_ignores_tiny_changes_on_a_flat_series() -> None:
    det = LiveDetector("both")
    scores = [det.update(float(i), 1000.0) for i in range(20)]  # perfectly flat: MAD = 0
    scores += [det.update(20.0 + i, 1000.0 * (1.0 + 0.01 * (-1) ** i)) for i in range(30)]  # +-1 %
    assert max(scores) < 0.5


def test_warm_up_is_at_most_12_windows_and_scores_are_in_unit_interval_never_1() -> None:
    det = LiveDetector("both")
    assert det.warmup <= 12
    scores = [det.update(float(i), 10.0 + (i % 2)) for i in range(12)]
    assert scores[: det.warmup] == [0.0] * det.warmup
    for x in (11.0, 12.0, 50.0, 1e6, 1e300, -1e300, 0.0):
        s = det.update(100.0, x)
        assert 0.0 <= s < 1.0
    with pytest.raises(ValueError):
        LiveDetector("sideways")  # type: ignore[arg-type]


def test_score_is_monotone_in_the_deviation() -> None:
    def score(x: float) -> float:
        det = LiveDetector("up")
        for i in range(20):
            det.update(float(i), 100.0 + (i % 4))
        return det.update(20.0, x)

    values = [score(x) for x in (100.0, 105.0, 110.0, 130.0, 200.0, 1e4, 1e8)]
    assert values == sorted(values)
    assert values[-1] < 1.0


def test_pickled_state_scores_identically() -> None:
    values = simulate("latency_p99_us", 11, fault=True)
    det = detector_for("latency_p99_us")
    for i, v in enumerate(values[:50]):
        det.update(10.0 * i, v)
    clone = pickle.loads(pickle.dumps(det))
    rest = list(enumerate(values[50:], start=50))
    assert [clone.update(10.0 * i, v) for i, v in rest] == [det.update(10.0 * i, v) for i, v in rest]


def test_json_state_scores_identically_and_the_checkpoint_of_the_previous_format_restores() -> None:
    """A checkpoint row is versioned JSON now; a row written by the previous release (version 0, a base64 pickle)
    still restores after a deploy, and both continue exactly where the detector was."""
    import base64
    import json

    from detection.series import CHECKPOINT_VERSION, SeriesMonitor

    values = simulate("latency_p99_us", 11, fault=True)
    det = detector_for("latency_p99_us")
    for i, v in enumerate(values[:50]):
        det.update(10.0 * i, v)
    text = json.dumps({"v": CHECKPOINT_VERSION, "state": det.to_json()})
    clone = LiveDetector.from_json(json.loads(text)["state"])
    legacy = base64.b64encode(pickle.dumps(det)).decode("ascii")  # as the previous release wrote it
    restored = {}
    for name, state in (("json", text), ("v0", legacy)):
        monitor = SeriesMonitor(0.9)
        monitor.restore([{"series": "ranker/1/stable/latency_p99_us", "detector": "live", "through_us": 1,
                          "state": state}])  # fmt: skip
        restored[name] = monitor.detectors["ranker/1/stable/latency_p99_us"]
    rest = list(enumerate(values[50:], start=50))
    want = [det.update(10.0 * i, v) for i, v in rest]
    assert [clone.update(10.0 * i, v) for i, v in rest] == want
    for d in restored.values():
        assert [d.update(10.0 * i, v) for i, v in rest] == want
    monitor = SeriesMonitor(0.9)
    monitor.detectors["ranker/1/stable/latency_p99_us"] = LiveDetector.from_json(json.loads(text)["state"])
    (row,) = monitor.checkpoint(5, everything=True)
    assert json.loads(row["state"])["v"] == CHECKPOINT_VERSION  # never a pickle again


def test_registered_as_live() -> None:
    assert isinstance(make_detector("live"), LiveDetector)
    assert "live" in DETECTORS


def test_a_lasting_new_level_becomes_the_baseline() -> None:
    det = LiveDetector("up", relearn_after=30)
    for i in range(20):
        det.update(float(i), 100.0 + (i % 4))
    scores = [det.update(20.0 + i, 300.0 + (i % 4)) for i in range(60)]
    assert scores[0] > THRESHOLD and max(scores[35:]) < THRESHOLD


def report() -> dict[str, tuple[int | None, float]]:  # pragma: no cover - for docs/detection.md
    """(worst delay, mean delay) per fault over SEEDS."""
    out = {}
    for metric in FAULTS:
        delays = [delay(metric, s) for s in SEEDS]
        ok = [d for d in delays if d is not None]
        out[metric] = (max(ok) if len(ok) == len(delays) else None, sum(ok) / max(len(ok), 1))
    return out
