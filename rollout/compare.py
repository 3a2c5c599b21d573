"""Is the canary worse than stable? One-sided tests on the same live windows, with minimum sample sizes.

Three questions per comparison, each answered only when both arms have enough data (else ``insufficient``):

- **errors**: a one-sided two-proportion z-test (pooled) that the canary's error rate exceeds stable's by more
  than ``error_margin`` (absolute), at significance ``alpha``.
- **latency**: with stable's p99 ``q`` (times ``latency_tolerance``), under "the canary is no slower" at most 1 %
  of its requests exceed ``q``; a one-sided binomial (normal approximation with continuity correction) test on
  how many canary requests did. Counts above ``q`` come from the canary's mergeable latency sketch, so replicas
  and windows merge exactly (``stream_processors.sketch``).
- **ctr**: a one-sided two-proportion z-test that the canary's clicked impressions per impression are lower than
  stable's by more than ``ctr_margin`` (relative), at ``alpha``.

A comparison is ``regression`` if any test rejects, ``healthy`` if every test ran and none rejected, and
``insufficient`` otherwise (the controller waits for more windows). Pure functions of the counts.

>>> p = ComparePolicy()
>>> stable = ArmStats(requests=5000, errors=5, latency_p99_us=20_000, canary_slower=0, impressions=0, clicks=0)
>>> canary = ArmStats(requests=2000, errors=60, latency_p99_us=21_000, canary_slower=15, impressions=0, clicks=0)
>>> compare(stable, canary, p).verdict, compare(stable, canary, p).reasons[0][:29]
('regression', 'error rate 3.00% vs 0.10% (z=')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["healthy", "regression", "insufficient"]


@dataclass(frozen=True)
class ComparePolicy:
    alpha: float = 0.01  # per test, one-sided
    min_requests: int = 500  # per arm, for the error and latency tests
    min_impressions: int = 2000  # per arm, for the CTR test; 0 impressions on both arms: CTR is not tested
    error_margin: float = 0.005  # absolute: 0.5 percentage points more errors is tolerated
    latency_tolerance: float = 1.2  # the canary's p99 may be up to 20 % above stable's
    ctr_margin: float = 0.05  # relative: 5 % lower CTR is tolerated
    require_ctr: bool = False  # True: no verdict without enough impressions


@dataclass(frozen=True)
class ArmStats:
    """One arm's counts over the compared windows. ``canary_slower``: for the canary arm, its requests slower
    than ``latency_tolerance`` x stable's p99 (from its sketch); unused for stable."""

    requests: int
    errors: int
    latency_p99_us: float
    canary_slower: int
    impressions: int
    clicks: int


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    reasons: tuple[str, ...] = ()
    tests: dict[str, float] = field(default_factory=dict)  # test -> z statistic


def _z_critical(alpha: float) -> float:
    """One-sided critical value of the standard normal (inverse CDF by bisection on erfc; exact enough)."""
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > alpha:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _two_proportion_z(x1: int, n1: int, x2: int, n2: int, margin: float) -> float:
    """z for H1: p2 - p1 > margin (pooled variance)."""
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n2))
    return (p2 - p1 - margin) / se


def compare(stable: ArmStats, canary: ArmStats, policy: ComparePolicy) -> Comparison:
    z_crit = _z_critical(policy.alpha)
    reasons: list[str] = []
    tests: dict[str, float] = {}
    complete = True
    if stable.requests >= policy.min_requests and canary.requests >= policy.min_requests:
        z = _two_proportion_z(stable.errors, stable.requests, canary.errors, canary.requests, policy.error_margin)
        tests["errors"] = z
        if z > z_crit:
            reasons.append(
                f"error rate {canary.errors / canary.requests:.2%} vs {stable.errors / stable.requests:.2%} "
                f"(z={z:.1f} > {z_crit:.2f})"
            )
        n, k, p0 = canary.requests, canary.canary_slower, 0.01
        z = (k - 0.5 - n * p0) / math.sqrt(n * p0 * (1 - p0))
        tests["latency"] = z
        if z > z_crit:
            reasons.append(
                f"{k / n:.1%} of canary requests slower than {policy.latency_tolerance:g}x stable's p99 "
                f"({stable.latency_p99_us / 1000:.1f} ms; expected at most 1 %, z={z:.1f})"
            )
    else:
        complete = False
    if stable.impressions >= policy.min_impressions and canary.impressions >= policy.min_impressions:
        stable_ctr = stable.clicks / stable.impressions
        # H1: stable's CTR - the canary's > ctr_margin x stable's CTR
        z = _two_proportion_z(
            canary.clicks, canary.impressions, stable.clicks, stable.impressions, stable_ctr * policy.ctr_margin
        )
        tests["ctr"] = z
        if z > z_crit:
            reasons.append(
                f"CTR {canary.clicks / canary.impressions:.2%} vs {stable_ctr:.2%} (z={z:.1f} > {z_crit:.2f})"
            )
    elif policy.require_ctr or stable.impressions or canary.impressions:
        complete = False  # feedback is coming in but not enough yet: wait for it
    if reasons:
        return Comparison("regression", tuple(reasons), tests)
    return Comparison("healthy" if complete else "insufficient", (), tests)
