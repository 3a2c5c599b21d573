"""A detector for live monitoring series: one value per closed window (10 s, or 1 min for business metrics).

The NAB-tuned detectors warm up for 150 rows (25 min of 10 s windows) and learn every value, so a sustained fault
becomes the new normal within minutes. ``LiveDetector`` warms up in ``warmup`` (8) windows and scores each value
against a *robust baseline*: the median and MAD (median absolute deviation) of the last ``window`` (30) values it
accepted as normal. Two features, in units of the baseline's spread:

- **level**: the directional deviation ``z = (value - median) / spread`` (only upward for ``direction="up"``, only
  downward for ``"down"``, either for ``"both"``). A jump shows at once: p99 x5 scores ~0.96 in its first window.
- **drift** (the trend feature): a one-sided CUSUM of the level deviation, ``S = max(0, S + min(z, z_cap) - k)``,
  per side. A moderate shift that stays (CTR halved, score mean 0.25 -> 0.32) accumulates to an alarm in 2-3
  windows; a steady trend (memory leak) accumulates faster every window because anomalous values are not learned,
  so the deviation from the frozen baseline keeps growing. The cap keeps one huge spike from holding the alarm.

``spread = max(1.4826 x MAD x (1 + 2 / n), rel_floor x |median|, abs_floor)``: the relative floor keeps a flat
series' tiny wiggles (0.1 % of a constant) from turning into huge z-scores, the absolute floor does the same for a
rate near zero (an error rate of 0 %), and the small-sample factor widens a MAD estimated from a handful of values.

Score = u / (1 + u) with ``u = 9 x max(|z| / z_alert, S / cusum_h)``: 0.9 exactly when either feature reaches its
alarm level (``z_alert`` = 6 spreads, ``cusum_h`` = 6), strictly increasing in the evidence, in [0, 1) and never
1.0 (capped just below). Values that score below ``learn_z`` spreads and below the alarm level are learned; others
are not, so a fault keeps scoring high while it lasts. After ``relearn_after`` (30) windows in a row without
learning, the detector accepts the level as the new normal (a deploy that legitimately doubled latency alerts for
5 min, not forever).

>>> det = LiveDetector(direction="up", rel_floor=0.2)
>>> clean = [det.update(10.0 * i, 100.0 + (i % 5)) for i in range(20)]
>>> max(clean) < 0.5
True
>>> round(det.update(200.0, 500.0), 3)  # p99 x5
0.967
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

__all__ = ["Direction", "LiveDetector"]

Direction = Literal["up", "down", "both"]

_MAX_SCORE = 1.0 - 1e-9  # "never exactly 1.0": keeps a threshold of 1.0 meaningful
_MAD_TO_STD = 1.4826


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])


class LiveDetector:
    """Robust level + CUSUM drift detector for short live series; ``update(ts, value) -> score in [0, 1)``.

    After each ``update`` the attributes ``baseline`` (the median the value was compared with, in the value's
    units; ``nan`` during warm-up) and ``z`` (its signed deviation in spreads) describe the last value.
    State is plain Python and pickles.
    """

    def __init__(
        self,
        direction: Direction = "both",
        *,
        warmup: int = 8,
        window: int = 30,
        rel_floor: float = 0.05,
        abs_floor: float = 0.0,
        z_alert: float = 6.0,
        cusum_k: float = 1.0,
        cusum_h: float = 6.0,
        z_cap: float = 4.0,
        learn_z: float = 3.0,
        relearn_after: int = 30,
    ) -> None:
        if direction not in ("up", "down", "both"):
            raise ValueError(f"direction must be 'up', 'down' or 'both', not {direction!r}")
        if not 1 <= warmup <= 12:
            raise ValueError("warmup must be between 1 and 12 windows")
        self.direction: Direction = direction
        self.warmup = warmup
        self.rel_floor = rel_floor
        self.abs_floor = abs_floor
        self.z_alert = z_alert
        self.cusum_k = cusum_k
        self.cusum_h = cusum_h
        self.z_cap = z_cap
        self.learn_z = learn_z
        self.relearn_after = relearn_after
        self.normal: deque[float] = deque(maxlen=window)
        self.rejected: deque[float] = deque(maxlen=relearn_after)
        self.s_up = 0.0
        self.s_down = 0.0
        self.n = 0
        self.baseline = math.nan
        self.z = 0.0

    _PARAMS = ("direction", "warmup", "rel_floor", "abs_floor", "z_alert", "cusum_k", "cusum_h", "z_cap", "learn_z",
               "relearn_after")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The whole state as JSON-able data (``from_json`` continues identically)."""
        return {
            **{name: getattr(self, name) for name in self._PARAMS},
            "window": self.normal.maxlen,
            "normal": list(self.normal),
            "rejected": list(self.rejected),
            "s_up": self.s_up,
            "s_down": self.s_down,
            "n": self.n,
            "baseline": None if math.isnan(self.baseline) else self.baseline,
            "z": self.z,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LiveDetector:
        det = cls(**{name: data[name] for name in cls._PARAMS}, window=int(data["window"]))
        det.normal.extend(float(v) for v in data["normal"])
        det.rejected.extend(float(v) for v in data["rejected"])
        det.s_up, det.s_down, det.n = float(data["s_up"]), float(data["s_down"]), int(data["n"])
        det.baseline = math.nan if data["baseline"] is None else float(data["baseline"])
        det.z = float(data["z"])
        return det

    def spread(self) -> float:
        """The baseline's robust standard deviation, floored (see the module docstring)."""
        values = list(self.normal)
        med = _median(values)
        mad = _median([abs(v - med) for v in values])
        n = len(values)
        return max(_MAD_TO_STD * mad * (1.0 + 2.0 / n), self.rel_floor * abs(med), self.abs_floor, 1e-12)

    def update(self, ts: float, value: float) -> float:
        """Score ``value`` against the baseline learned from earlier windows, then learn it if it looked normal."""
        self.n += 1
        if not math.isfinite(value):
            return 0.0  # a window without data for this metric: neither evidence nor baseline
        if len(self.normal) < self.warmup:
            self.normal.append(value)
            self.baseline, self.z = math.nan, 0.0
            return 0.0
        med = _median(list(self.normal))
        z = (value - med) / self.spread()
        self.baseline, self.z = med, z
        up = max(z, 0.0) if self.direction != "down" else 0.0
        down = max(-z, 0.0) if self.direction != "up" else 0.0
        if self.direction != "down":
            self.s_up = min(max(0.0, self.s_up + min(z, self.z_cap) - self.cusum_k), 1.25 * self.cusum_h)
        if self.direction != "up":
            self.s_down = min(max(0.0, self.s_down + min(-z, self.z_cap) - self.cusum_k), 1.25 * self.cusum_h)
        evidence = max(up / self.z_alert, down / self.z_alert, self.s_up / self.cusum_h, self.s_down / self.cusum_h)
        u = 9.0 * evidence
        score = min(u / (1.0 + u), _MAX_SCORE)
        self._learn(value, max(up, down) < self.learn_z and evidence < 1.0)
        return score

    def _learn(self, value: float, normal: bool) -> None:
        if normal:
            self.normal.append(value)
            self.rejected.clear()
            return
        self.rejected.append(value)
        if len(self.rejected) == self.rejected.maxlen:
            # the level has been "anomalous" for relearn_after windows: it is the new normal
            self.normal.clear()
            self.normal.extend(self.rejected)
            self.rejected.clear()
            self.s_up = self.s_down = 0.0
