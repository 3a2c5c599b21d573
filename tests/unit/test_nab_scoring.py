"""The NAB scorer on tiny hand-computed corpora (probation of a 1000-row file: 150 rows)."""

import math

import pytest

from benchmarks.nab.scoring import (
    PROFILES,
    FileResult,
    probation_rows,
    scaled_sigmoid,
    score_corpus,
    window_rows,
)

N = 1000
WINDOW = (300, 399)  # W = 100


def _scores(hits: dict[int, float]) -> list[float]:
    s = [0.0] * N
    for i, v in hits.items():
        s[i] = v
    return s


def _raw(hits: dict[int, float], windows=(WINDOW,), profile: str = "standard") -> float:
    return score_corpus([FileResult("f", _scores(hits), list(windows))])[profile].raw


def test_sigmoid_and_probation() -> None:
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.5) == -1.0
    assert scaled_sigmoid(-1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert probation_rows(1000) == 150
    assert probation_rows(10_000) == 750


def test_detection_at_window_start_is_worth_the_tp_weight() -> None:
    # One window: S = +A_TP for a detection on its first row.
    assert _raw({300: 1.0}) == pytest.approx(1.0)


def test_later_detection_in_window_is_worth_less() -> None:
    y = -(399 - 350 + 1) / 100
    expected = scaled_sigmoid(y) / scaled_sigmoid(-1.0)
    assert _raw({350: 1.0}) == pytest.approx(expected)
    assert 0 < expected < 1
    # Only the best (earliest) detection counts.
    assert _raw({300: 1.0, 350: 1.0}) == pytest.approx(1.0)


@pytest.mark.parametrize(("profile", "a_fp"), [("standard", 0.11), ("reward_low_FP_rate", 0.22)])
def test_false_positive_before_any_window_costs_the_fp_weight(profile: str, a_fp: float) -> None:
    # TP at the window start plus an FP before it: 1 - A_FP.
    assert _raw({300: 1.0, 200: 1.0}, profile=profile) == pytest.approx(1.0 - a_fp)


def test_false_positive_after_window_is_discounted_near_it() -> None:
    just_after = _raw({300: 1.0, 401: 1.0}) - 1.0
    far_after = _raw({300: 1.0, 900: 1.0}) - 1.0
    assert just_after == pytest.approx(0.11 * scaled_sigmoid(2 / 99))
    assert far_after == pytest.approx(-0.11)
    assert far_after < just_after < 0


@pytest.mark.parametrize(("profile", "a_fn"), [("standard", 1.0), ("reward_low_FN_rate", 2.0)])
def test_missed_window_costs_the_fn_weight(profile: str, a_fn: float) -> None:
    assert _raw({}, profile=profile) == pytest.approx(-a_fn)


def test_detections_in_probation_are_ignored() -> None:
    assert _raw({100: 1.0}) == pytest.approx(-1.0)


def test_null_and_perfect_detectors_normalise_to_0_and_100() -> None:
    windows = [(300, 399), (600, 699)]
    perfect = score_corpus([FileResult("a", _scores({300: 1.0, 600: 1.0}), windows), FileResult("b", [0.0] * N, [])])
    null = score_corpus([FileResult("a", [0.0] * N, windows), FileResult("b", [0.0] * N, [])])
    for name in PROFILES:
        assert perfect[name].score == pytest.approx(100.0)
        assert null[name].score == pytest.approx(0.0)
        assert null[name].threshold == math.inf


def test_threshold_sweep_picks_the_best_corpus_wide_threshold() -> None:
    # File a: the window's first row scores 0.6; file b (no windows) has 20 FPs at 0.7 and one at 0.5.
    # T = 0.6 would find the window (+2 vs missing) but pay 20 FPs (-2.2) under standard: not worth it;
    # under reward_low_FN_rate finding gains +3 > 2.2: worth it.
    a = FileResult("a", _scores({300: 0.6}), [WINDOW])
    b_scores = [0.0] * N
    for i in range(200, 220):
        b_scores[i] = 0.7
    b_scores[500] = 0.5
    b = FileResult("b", b_scores, [])
    out = score_corpus([a, b])
    assert out["standard"].threshold == math.inf
    assert out["standard"].score == pytest.approx(0.0)
    assert out["reward_low_FN_rate"].threshold == pytest.approx(0.6)
    assert out["reward_low_FN_rate"].raw == pytest.approx(1.0 - 20 * 0.11)


def test_ties_at_the_top_are_evaluated_together() -> None:
    # Every row scores 1.0: the only thresholds are "all fire" and "never fire".
    out = score_corpus([FileResult("a", [1.0] * N, [WINDOW])])["standard"]
    assert out.threshold == math.inf


def test_window_rows_maps_timestamps_inclusively() -> None:
    ts = [0.0, 60.0, 120.0, 180.0, 240.0]
    assert window_rows(ts, [(60.0, 180.0), (1000.0, 2000.0)]) == [(1, 3)]
    assert window_rows(ts, [(59.0, 61.0)]) == [(1, 1)]
