"""Online anomaly detectors for one numeric series: score a value, then learn it.

The interface is one call, ``update(ts, value) -> score``: the score of ``value`` is computed from the state
learned on earlier rows only, then the value is learned. So a score never depends on later rows (no look-ahead),
and a worker or ``detect_file`` drives every detector the same way. ``ts`` is epoch seconds.

Scores are in [0, 1], and strictly monotone in the underlying evidence: none saturates at exactly 1.0, so a
corpus-wide threshold can still tell a huge deviation from a large one (River's ``GaussianScorer`` and
``PredictiveAnomalyDetection`` cap at 1.0 and the ties make "never fire" the best threshold).

During warm-up (the first ``warmup`` rows) every detector returns 0.0. Each detector is a plain object whose
state pickles (workers checkpoint it per series).

>>> det = DETECTORS["seasonal_shift"]()
>>> scores = [det.update(60.0 * i, 1.0 + 0.01 * (i % 7)) for i in range(600)]
>>> scores[0], scores[-1] < 0.9
(0.0, True)
>>> det.update(60.0 * 600, 50.0) > 0.8  # seasonal_shift blends in a likelihood, so one point stays below ~0.9
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, Protocol, runtime_checkable

from detection.live import LiveDetector

__all__ = ["DETECTORS", "Detector", "make_detector"]


@runtime_checkable
class Detector(Protocol):
    """Scores one value against what was learned from earlier rows, then learns it."""

    def update(self, ts: float, value: float) -> float:
        """Return the anomaly score of ``value`` at ``ts`` (epoch s) in [0, 1], then learn the value."""
        ...


def _unit(x: float) -> float:
    """Map x >= 0 to [0, 1) strictly increasingly (no saturation at 1.0 for any realistic x)."""
    return x / (1.0 + x) if x > 0.0 else 0.0


def _signed_unit(z: float) -> float:
    """Map z in R to (0, 1) strictly increasingly; z = 0 gives 0.5."""
    return 0.5 + 0.5 * z / (1.0 + abs(z))


class _Ewm:
    """Exponentially weighted mean and variance."""

    __slots__ = ("alpha", "mean", "n", "var")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.mean = 0.0
        self.var = 0.0
        self.n = 0

    def z(self, x: float, floor: float) -> float:
        return abs(x - self.mean) / max(math.sqrt(self.var), floor)

    def learn(self, x: float) -> None:
        self.n += 1
        a = max(self.alpha, 1.0 / self.n)  # exact mean/var while n < 1/alpha
        d = x - self.mean
        self.mean += a * d
        self.var = (1.0 - a) * (self.var + a * d * d)


class _Range:
    """Running min/max of the learned values; the scale used to floor deviations on near-constant series."""

    __slots__ = ("hi", "lo")

    def __init__(self) -> None:
        self.lo = math.inf
        self.hi = -math.inf

    def learn(self, x: float) -> None:
        self.lo = min(self.lo, x)
        self.hi = max(self.hi, x)

    @property
    def span(self) -> float:
        return self.hi - self.lo if self.hi >= self.lo else 0.0


class _Season:
    """Residual against a daily profile: an EW mean/variance per time-of-day bin."""

    __slots__ = ("bin_s", "bins")

    def __init__(self, bin_s: float, alpha: float) -> None:
        self.bin_s = bin_s
        self.bins = [_Ewm(alpha) for _ in range(int(86400 // bin_s))]

    def _bin(self, ts: float) -> _Ewm:
        return self.bins[int((ts % 86400.0) // self.bin_s) % len(self.bins)]

    def z(self, ts: float, x: float, floor: float) -> float:
        b = self._bin(ts)
        return b.z(x, floor) if b.n >= 3 else 0.0

    def learn(self, ts: float, x: float) -> None:
        self._bin(ts).learn(x)


class ResidualScorer:
    """Raw score: the largest standardised residual against several EW means and a daily profile.

    Residuals are floored at ``rel_floor`` x the observed range so that a near-constant series does not turn
    its rounding noise into huge z-scores. Returns z >= 0 (unbounded).
    """

    def __init__(self, alphas: tuple[float, ...] = (0.3, 0.05, 0.005), rel_floor: float = 0.01) -> None:
        self.ewms = [_Ewm(a) for a in alphas]
        self.diff = _Ewm(0.01)  # first differences: catches sudden jumps on trending series
        self.range = _Range()
        self.season = _Season(3600.0, 0.1)
        self.rel_floor = rel_floor
        self.last: float | None = None

    def score(self, ts: float, x: float) -> float:
        floor = max(self.rel_floor * self.range.span, 1e-9)
        z = max(e.z(x, floor) for e in self.ewms)
        if self.last is not None:
            z = max(z, self.diff.z(x - self.last, floor))
        return max(z, self.season.z(ts, x, floor))

    def learn(self, ts: float, x: float) -> None:
        for e in self.ewms:
            e.learn(x)
        if self.last is not None:
            self.diff.learn(x - self.last)
        self.last = x
        self.range.learn(x)
        self.season.learn(ts, x)


class AnomalyLikelihood:
    """Numenta-style anomaly likelihood over raw scores in [0, 1].

    The mean of the last ``short`` raw scores is compared with the mean/std of raw scores over the last
    ``long`` rows: a rise that is rare for this series gives a high z. Returns the z (unbounded, may be < 0).
    """

    def __init__(self, long: int = 8640, short: int = 10, min_std: float = 0.02) -> None:
        self.long: deque[float] = deque(maxlen=long)
        self.short: deque[float] = deque(maxlen=short)
        self.min_std = min_std
        self._sum = 0.0
        self._sq = 0.0
        self._short_sum = 0.0

    def z(self, raw: float) -> float:
        n = len(self.long)
        short_mean = (self._short_sum + raw - (self.short[0] if len(self.short) == self.short.maxlen else 0.0)) / min(
            len(self.short) + 1, self.short.maxlen or 1
        )
        if n < 2:
            return 0.0
        mean = self._sum / n
        var = max(self._sq / n - mean * mean, 0.0)
        return (short_mean - mean) / max(math.sqrt(var), self.min_std)

    def learn(self, raw: float) -> None:
        if len(self.short) == self.short.maxlen:
            self._short_sum -= self.short[0]
        self.short.append(raw)
        self._short_sum += raw
        if len(self.long) == self.long.maxlen:
            old = self.long[0]
            self._sum -= old
            self._sq -= old * old
        self.long.append(raw)
        self._sum += raw
        self._sq += raw * raw


class LikelihoodDetector:
    """Residual z-scores squashed to raw scores, then an anomaly likelihood over them (Numenta-style).

    Score = max(likelihood, spike) where spike is the raw residual itself: a single huge point shows at once,
    a sustained moderate change shows through the likelihood.
    """

    def __init__(self, warmup: int = 150, raw_scale: float = 4.0, spike_weight: float = 0.5) -> None:
        self.warmup = warmup
        self.raw_scale = raw_scale
        self.spike_weight = spike_weight
        self.residuals = ResidualScorer()
        self.likelihood = AnomalyLikelihood()
        self.n = 0

    def update(self, ts: float, value: float) -> float:
        z = self.residuals.score(ts, value)
        raw = _unit(z / self.raw_scale)
        lz = self.likelihood.z(raw)
        score = max(_signed_unit(lz), self.spike_weight * raw) if self.n >= self.warmup else 0.0
        self.residuals.learn(ts, value)
        self.likelihood.learn(raw)
        self.n += 1
        return score


class ResidualDetector:
    """The raw residual score alone (no likelihood post-processing)."""

    def __init__(self, warmup: int = 150, raw_scale: float = 4.0) -> None:
        self.warmup = warmup
        self.raw_scale = raw_scale
        self.residuals = ResidualScorer()
        self.n = 0

    def update(self, ts: float, value: float) -> float:
        z = self.residuals.score(ts, value)
        self.residuals.learn(ts, value)
        self.n += 1
        return _unit(z / self.raw_scale) if self.n > self.warmup else 0.0


class GaussianDetector:
    """River's ``GaussianScorer`` (rolling window), scored by the uncapped z instead of its capped CDF score."""

    def __init__(self, window_size: int = 1000, warmup: int = 100) -> None:
        from river import anomaly

        self.model: Any = anomaly.GaussianScorer(  # type: ignore[no-untyped-call]
            window_size=window_size, grace_period=warmup
        )
        self.warmup = warmup
        self.n = 0

    def update(self, ts: float, value: float) -> float:
        g = self.model.gaussian
        score = 0.0
        if self.n >= self.warmup:
            score = _unit(abs(value - g.mu) / max(g.sigma, 1e-9) / 4.0)
        self.model.learn_one(None, value)
        self.n += 1
        return score


class HoltWintersDetector:
    """Predictive residuals of River's ``HoltWinters`` (daily season inferred from the sampling interval).

    Like River's ``PredictiveAnomalyDetection`` but the squared error is divided by an EW mean of past squared
    errors without capping. Falls back to no season when the additive initialisation fails (zero-mean data).
    """

    def __init__(self, warmup: int = 150) -> None:
        self.warmup = warmup
        self.model: Any = None
        self.first_ts: float | None = None
        self.err = _Ewm(0.02)
        self.range = _Range()
        self.n = 0

    def _build(self, ts: float) -> None:
        from river import time_series

        dt = ts - (self.first_ts or ts)
        season = round(86400.0 / dt) if dt > 0 else 0
        if 2 <= season <= 1440:
            self.model = time_series.HoltWinters(  # type: ignore[no-untyped-call]
                alpha=0.3, beta=0.05, gamma=0.2, seasonality=season
            )
        else:
            self.model = time_series.HoltWinters(alpha=0.3, beta=0.05)  # type: ignore[no-untyped-call]

    def update(self, ts: float, value: float) -> float:
        if self.model is None:
            if self.first_ts is None:
                self.first_ts = ts
                self.n += 1
                self.range.learn(value)
                return 0.0
            self._build(ts)
        score = 0.0
        try:
            if self.n >= self.warmup and getattr(self.model, "_initialized", False):
                pred = self.model.forecast(horizon=1)[0]
                floor = max(0.01 * self.range.span, 1e-9)
                z = abs(value - pred) / max(math.sqrt(self.err.mean), floor)
                score = _unit(z / 4.0)
                self.err.learn((value - pred) ** 2)
            self.model.learn_one(value)
        except ZeroDivisionError:
            from river import time_series

            self.model = time_series.HoltWinters(alpha=0.3, beta=0.05)  # type: ignore[no-untyped-call]
        self.range.learn(value)
        self.n += 1
        return score


class HalfSpaceTreesDetector:
    """River's ``HalfSpaceTrees`` after a ``MinMaxScaler`` on the value (River defaults otherwise)."""

    def __init__(self, seed: int = 42, warmup: int = 150) -> None:
        from river import anomaly, compose, preprocessing

        self.model: Any = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=seed))
        self.warmup = warmup
        self.n = 0

    def update(self, ts: float, value: float) -> float:
        x = {"value": value}
        score = float(self.model.score_one(x)) if self.n >= self.warmup else 0.0
        self.model.learn_one(x)
        self.n += 1
        return min(max(score, 0.0), 1.0)


class _RollingStats:
    """Mean and variance over the last ``size`` values (Welford add/remove: stable for large magnitudes)."""

    __slots__ = ("m2", "mean", "values")

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.mean = 0.0
        self.m2 = 0.0

    def z(self, x: float, floor: float) -> float:
        n = len(self.values)
        if n < 2:
            return 0.0
        return abs(x - self.mean) / max(math.sqrt(max(self.m2, 0.0) / n), floor)

    def add(self, x: float) -> None:
        if len(self.values) == self.values.maxlen:
            old = self.values[0]
            n = len(self.values) - 1
            if n == 0:
                self.mean, self.m2 = 0.0, 0.0
            else:
                d = old - self.mean
                self.mean -= d / n
                self.m2 -= d * (old - self.mean)
        self.values.append(x)
        n = len(self.values)
        d = x - self.mean
        self.mean += d / n
        self.m2 += d * (x - self.mean)


class SeasonalShiftDetector:
    """The best detector on NAB: seasonal and level-shift residuals, self-normalised, with repeat suppression.

    Two features, each scored as |z| against its own rolling mean/std over the last ``window`` rows:

    - the day-over-day difference x_t - x_(t - P), P = rows per day inferred from the first sampling interval
      (no season when a day is not a whole number of intervals): catches broken daily patterns;
    - the mean of the last ``short`` values: catches level shifts and bursts, averaging away single-row noise.

    Each feature scores only once its rolling stats hold ``warmup`` samples (the day-over-day difference starts a
    day late, so it gets its own warm-up). The larger z is squashed to [0, 1); a score that does not exceed a
    slowly decaying maximum of recent scores (half-life ``half_life`` rows) is multiplied by ``damp``, so one event
    yields one high score, not a run of them. A score that does not exceed the largest score within ``short`` rows
    of the same time one day earlier is damped too: an event that recurs daily (a nightly job) is part of the
    pattern, not news. Deviations are floored at 0.1 % of the observed range (near-constant series).

    The output is a weighted mean: (1 - ``likelihood_weight``) x that damped score + ``likelihood_weight`` x a
    Numenta-style anomaly likelihood of the undamped score (the mean of the last 10 scores against this series' own
    score history, positive z squashed like the features). The likelihood discounts series whose scores are often
    high and credits a sustained rise in score that the repeat damping would otherwise halve. ~10 µs/row.
    """

    def __init__(
        self,
        window: int = 1000,
        short: int = 12,
        half_life: float = 1500.0,
        damp: float = 0.5,
        warmup: int = 150,
        scale: float = 4.0,
        likelihood_weight: float = 0.2,
    ) -> None:
        self.season_diff = _RollingStats(window)
        self.level = _RollingStats(window)
        self.recent: deque[float] = deque(maxlen=short)
        self.lag: deque[float] | None = None  # the last P values once P is known
        self.first_ts: float | None = None
        self.range = _Range()
        self.decay = 0.5 ** (1.0 / half_life)
        self.damp = damp
        self.warmup = warmup
        self.scale = scale
        self.recent_max = 0.0
        self.jitter = short  # rows either side of "the same time yesterday" that count as the same phase
        self.past_scores: deque[float] | None = None  # undamped scores of the last P + jitter scored rows
        self.likelihood = AnomalyLikelihood()
        self.likelihood_weight = likelihood_weight
        self.n = 0

    def _infer_period(self, ts: float) -> None:
        if self.first_ts is None:
            self.first_ts = ts
        elif ts > self.first_ts:
            period = round(86400.0 / (ts - self.first_ts))
            self.lag = deque(maxlen=period if 2 <= period <= 1440 else 1)

    def update(self, ts: float, value: float) -> float:
        if self.lag is None:
            self._infer_period(ts)
        floor = max(1e-3 * self.range.span, 1e-9)
        z = 0.0
        diff: float | None = None
        lag = self.lag
        if lag is not None and lag.maxlen is not None and lag.maxlen > 1 and len(lag) == lag.maxlen:
            diff = value - lag[0]
            # Like the detector as a whole, a feature scores only after ``warmup`` samples of its own: a std from a
            # handful of day-over-day differences is far too small and turns the first ones into false alarms.
            if len(self.season_diff.values) >= self.warmup:
                z = self.season_diff.z(diff, floor)
        recent_mean = (sum(self.recent) + value) / (len(self.recent) + 1)
        z = max(z, self.level.z(recent_mean, floor))
        # Learn: everything above used only earlier rows.
        if diff is not None:
            self.season_diff.add(diff)
        self.recent.append(value)
        self.level.add(recent_mean)
        if lag is not None:
            lag.append(value)
        self.range.learn(value)
        self.n += 1
        score = _unit(z / self.scale)
        likelihood = _unit(max(self.likelihood.z(score), 0.0) / self.scale)
        self.likelihood.learn(score)
        if self.n <= self.warmup:
            return 0.0
        reference = self.recent_max
        if lag is not None and lag.maxlen is not None and lag.maxlen > 1:
            past = self.past_scores
            if past is None:
                past = self.past_scores = deque(maxlen=lag.maxlen + self.jitter)
            if len(past) == past.maxlen:  # past[0 .. 2 * jitter] = scores around the same time yesterday
                reference = max(reference, max(islice(past, 0, 2 * self.jitter + 1)))
            past.append(score)
        out = score if score > reference else score * self.damp
        self.recent_max = max(self.recent_max * self.decay, score)
        w = self.likelihood_weight
        return (1.0 - w) * out + w * likelihood


DETECTORS: dict[str, Callable[[], Detector]] = {
    "seasonal_shift": SeasonalShiftDetector,
    "likelihood": LikelihoodDetector,
    "residual": ResidualDetector,
    "gaussian": GaussianDetector,
    "holtwinters": HoltWintersDetector,
    "hst": HalfSpaceTreesDetector,
    "live": LiveDetector,  # live 10 s / 1 min windows: warm-up 8 (detection/live.py)
}


def make_detector(name: str) -> Detector:
    """A fresh detector from the registry; raises ``KeyError`` naming the known detectors."""
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}") from None
    return factory()
