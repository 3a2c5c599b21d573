"""The NAB score (see ``data/nab/SCORING.md``), pure and vectorised over the threshold sweep.

A row is a detection when its score >= T. For every profile one corpus-wide T is chosen that maximises
the raw score S; S is normalised so that a detector that never fires scores 0 and one that fires on the
first row of every window scores 100.

The sweep is exact and O(n log n): each file contributes (threshold, delta S) events — a false positive
adds its weight once T drops to its score; a window's best detection moves earlier each time T drops below
a new prefix maximum of the window's scores — and S(T) is a cumulative sum over events sorted by threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "PROFILES",
    "CostProfile",
    "FileResult",
    "ProfileScore",
    "probation_rows",
    "scaled_sigmoid",
    "score_corpus",
    "window_rows",
]


@dataclass(frozen=True, slots=True)
class CostProfile:
    """Weights of one NAB profile (``profiles.json``)."""

    tp: float
    fp: float
    fn: float


PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": CostProfile(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": CostProfile(tp=1.0, fp=0.11, fn=2.0),
}


@dataclass(frozen=True, slots=True)
class FileResult:
    """One file's detector output: per-row scores and its labelled windows as inclusive row ranges."""

    name: str
    scores: Sequence[float]
    windows: Sequence[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class ProfileScore:
    """The outcome of the threshold sweep for one profile."""

    profile: str
    score: float  # normalised: 0 = null detector, 100 = perfect
    raw: float  # S at the chosen threshold
    threshold: float  # math.inf when never firing is best
    null: float
    perfect: float


def scaled_sigmoid(y: float) -> float:
    """NAB's s(y) = 2 / (1 + e^(5y)) - 1, and -1 for y > 3."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_rows(n: int) -> int:
    """Rows at the start of an n-row file that are not scored."""
    return min(n * 15 // 100, 750)


def window_rows(timestamps: Sequence[float], windows: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """Map windows given as (start, end) timestamps to inclusive row ranges; windows with no rows are dropped."""
    ts = np.asarray(timestamps, dtype=np.float64)
    out: list[tuple[int, int]] = []
    for start, end in windows:
        lo = int(np.searchsorted(ts, start, side="left"))
        hi = int(np.searchsorted(ts, end, side="right")) - 1
        if lo <= hi:
            out.append((lo, hi))
    return out


def _window_value(i: int, left: int, right: int) -> float:
    """Unit-weight value (x A_TP) of a detection at row i of window [left, right]."""
    width = right - left + 1
    return scaled_sigmoid(-(right - i + 1) / width) / scaled_sigmoid(-1.0)


def _fp_value(i: int, previous: tuple[int, int] | None) -> float:
    """Unit-weight value (x A_FP) of a detection at row i outside every window: in [-1, 0]."""
    if previous is None:
        return -1.0
    left, right = previous
    width = right - left + 1
    if width <= 1:
        return -1.0
    return scaled_sigmoid(abs(i - right) / (width - 1))


def _events(
    result: FileResult,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Events of one file: thresholds and the per-unit deltas of (A_TP part, A_FP part, A_FN part)."""
    scores = result.scores
    n = len(scores)
    first = probation_rows(n)
    windows = sorted(result.windows)
    thr: list[float] = []
    d_tp: list[float] = []
    d_fp: list[float] = []
    d_fn: list[float] = []
    in_window = np.zeros(n, dtype=bool)
    for left, right in windows:
        in_window[left : right + 1] = True
        best_score = -math.inf
        current: float | None = None  # unit TP value of the current best detection
        records: list[tuple[float, float]] = []  # (score, value) for new prefix maxima, left to right
        for i in range(max(left, first), min(right, n - 1) + 1):
            s = float(scores[i])
            if s > best_score:
                best_score = s
                records.append((s, _window_value(i, left, right)))
        # Walking T down from +inf: the best detection is the rightmost record first, then earlier ones.
        for s, value in reversed(records):
            thr.append(s)
            if current is None:
                d_tp.append(value)
                d_fn.append(1.0)  # the window stops counting as missed
            else:
                d_tp.append(value - current)
                d_fn.append(0.0)
            d_fp.append(0.0)
            current = value
    window_iter = 0
    previous: tuple[int, int] | None = None
    for i in range(first, n):
        while window_iter < len(windows) and windows[window_iter][1] < i:
            previous = windows[window_iter]
            window_iter += 1
        if in_window[i]:
            continue
        thr.append(float(scores[i]))
        d_tp.append(0.0)
        d_fp.append(_fp_value(i, previous))
        d_fn.append(0.0)
    return thr, d_tp, d_fp, d_fn


def score_corpus(
    results: Sequence[FileResult], profiles: dict[str, CostProfile] | None = None
) -> dict[str, ProfileScore]:
    """Score a corpus for each profile with the corpus-wide threshold sweep and the null/perfect normalisation."""
    profiles = PROFILES if profiles is None else profiles
    thr: list[float] = []
    d_tp: list[float] = []
    d_fp: list[float] = []
    d_fn: list[float] = []
    n_windows = 0
    for result in results:
        n_windows += len(result.windows)
        t, a, b, c = _events(result)
        thr += t
        d_tp += a
        d_fp += b
        d_fn += c
    thresholds: npt.NDArray[np.float64] = np.asarray(thr, dtype=np.float64)
    order = np.argsort(-thresholds, kind="stable")
    t_sorted = thresholds[order]
    # Group ties: S(T) is only defined after all events with score >= T are in.
    last_of_group = np.ones(len(t_sorted), dtype=bool)
    if len(t_sorted) > 1:
        last_of_group[:-1] = t_sorted[:-1] != t_sorted[1:]
    out: dict[str, ProfileScore] = {}
    for name, p in profiles.items():
        null = -p.fn * n_windows
        perfect = p.tp * n_windows
        delta = p.tp * np.asarray(d_tp) + p.fp * np.asarray(d_fp) + p.fn * np.asarray(d_fn)
        best_raw, best_t = null, math.inf
        if len(t_sorted):
            curve = null + np.cumsum(delta[order])
            curve = np.where(last_of_group, curve, -np.inf)
            k = int(np.argmax(curve))
            if curve[k] > best_raw:
                best_raw, best_t = float(curve[k]), float(t_sorted[k])
        span = perfect - null
        normalised = 100.0 * (best_raw - null) / span if span > 0 else 0.0
        out[name] = ProfileScore(name, normalised, best_raw, best_t, null, perfect)
    return out
