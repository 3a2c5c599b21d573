"""Contract checks run on every registered detector, plus detection of a spike and a level shift."""

import math
import pickle
import random

import pytest

from detection import DETECTORS, Detector, detect_file, make_detector
from detection.__main__ import main as detect_main

STEP = 300.0  # 5-minute rows, as in most NAB files
NAMES = sorted(DETECTORS)


def _series(n: int, seed: int = 7) -> list[tuple[float, float]]:
    """Daily seasonal signal plus noise."""
    rng = random.Random(seed)
    return [(1.4e9 + STEP * i, 50.0 + 10.0 * math.sin(2 * math.pi * i / 288) + rng.gauss(0.0, 1.0)) for i in range(n)]


def _run(det: Detector, rows: list[tuple[float, float]]) -> list[float]:
    return [det.update(ts, v) for ts, v in rows]


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_in_unit_interval_and_warm_up_scores_zero(name: str) -> None:
    rows = _series(800)
    rows[600] = (rows[600][0], 1e6)  # a huge spike must not push a score to 1.0 or beyond
    det = make_detector(name)
    warmup = min(getattr(det, "warmup", 100), 100)  # the live detector warms up in 8 windows, NAB's in 100+
    scores = _run(det, rows)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[:warmup] == [0.0] * warmup
    assert scores[600] < 1.0 or name == "hst"


@pytest.mark.parametrize("name", NAMES)
def test_no_look_ahead(name: str) -> None:
    rows = _series(700)
    altered = rows[:500] + [(ts, v * 3.0 + 100.0) for ts, v in rows[500:]]
    assert _run(make_detector(name), rows)[:500] == _run(make_detector(name), altered)[:500]


@pytest.mark.parametrize("name", NAMES)
def test_pickle_round_trip_continues_identically(name: str) -> None:
    rows = _series(900)
    det = make_detector(name)
    _run(det, rows[:600])
    clone = pickle.loads(pickle.dumps(det))
    assert _run(clone, rows[600:]) == _run(det, rows[600:])


@pytest.mark.parametrize("name", ["seasonal_shift", "gaussian", "holtwinters", "residual", "likelihood"])
def test_spike_scores_above_surrounding_noise(name: str) -> None:
    rows = _series(1200)
    ts, v = rows[1000]
    rows[1000] = (ts, v + 40.0)
    scores = _run(make_detector(name), rows)
    # The likelihood averages the last raw scores, so the rows right after a spike stay high: skip them.
    assert scores[1000] > max(scores[900:1000] + scores[1020:1100])


def test_level_shift_scores_above_noise_before_it() -> None:
    rows = _series(1500)
    rows = rows[:1000] + [(ts, v + 30.0) for ts, v in rows[1000:]]
    scores = _run(make_detector("seasonal_shift"), rows)
    assert max(scores[1000:1012]) > max(scores[400:1000])


def test_seasonal_shift_damps_a_spike_that_recurs_at_the_same_time_of_day() -> None:
    rng = random.Random(3)
    det = make_detector("seasonal_shift")
    scores = [
        det.update(300.0 * i, 10.0 + rng.gauss(0.0, 1.0) + (40.0 if i % 288 == 100 else 0.0)) for i in range(2000)
    ]
    first, repeat = scores[100 + 288], scores[100 + 288 * 2]  # the first scored spike (day 2), then day 3
    assert repeat < 0.6 * first


def test_seasonal_shift_day_over_day_feature_has_its_own_warm_up() -> None:
    rng = random.Random(4)
    det = make_detector("seasonal_shift")
    scores = [det.update(300.0 * i, 10.0 + rng.gauss(0.0, 1.0)) for i in range(600)]
    assert max(scores[288:450]) < 0.7  # the first day-over-day differences must not raise false alarms


def test_seasonal_shift_likelihood_credits_a_sustained_shift_over_noise() -> None:
    """The likelihood blend lifts the (repeat-damped) rows of a lasting shift relative to the worst noise score."""
    from detection.detectors import SeasonalShiftDetector

    rng = random.Random(1)
    rows = [(STEP * i, 10.0 + rng.gauss(0.0, 1.0) + (8.0 if i >= 1500 else 0.0)) for i in range(1600)]

    def contrast(weight: float) -> float:
        scores = _run(SeasonalShiftDetector(likelihood_weight=weight), rows)
        assert all(0.0 <= s < 1.0 for s in scores)
        return sum(scores[1502:1530]) / 28 / max(scores[200:1500])

    assert contrast(0.2) > contrast(0.0) + 0.05
    assert contrast(1.0) > contrast(0.2)


def test_unknown_detector_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="seasonal_shift"):
        make_detector("nope")


def test_detect_file_writes_one_score_per_row(tmp_path) -> None:
    src = tmp_path / "in.csv"
    dst = tmp_path / "out.csv"
    rows = _series(400)
    src.write_text(
        "timestamp,value\n"
        + "".join(f"2014-02-14 {i // 12 % 24:02d}:{i % 12 * 5:02d}:00,{v}\n" for i, (_, v) in enumerate(rows))
    )
    assert detect_main(["--input", str(src), "--output", str(dst), "--detector", "seasonal_shift"]) == 0
    lines = dst.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score"
    assert len(lines) == 401
    assert all(0.0 <= float(line.split(",")[2]) <= 1.0 for line in lines[1:])
    assert detect_file(src, dst) == 400
