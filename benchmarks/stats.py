"""Paired comparisons over seeds: the gain, its 95% interval, the detectable effect.

Two methods run on the same seeds see the same split and the same client
sampling, so their difference per seed removes most of what the seed
changes. Over n seeds with paired differences d_1..d_n (mean d, sample
standard deviation s):

- the 95% confidence interval of the mean gain is ``d ± t(0.975, n-1) s/√n``
  (Student t);
- the minimum detectable effect at 80% power (two-sided, 5% level) is
  ``(t(0.975, n-1) + t(0.80, n-1)) s/√n``: a true gain of that size would be
  resolved in four of five such experiments;
- a gain is *resolved* only when its interval excludes 0.

numpy has no t quantile and scipy is not a dependency, so the t
distribution is computed here from its CDF (the regularised incomplete beta
function, evaluated by its continued fraction) and inverted by bisection;
tests check it against tabulated values.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
POWER = 0.80


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), for x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        + a * math.log(x) + b * math.log1p(-x)
    )  # fmt: skip
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PairedGain:
    """The mean of paired differences over seeds, its interval and the MDE.

    ``low``/``high``/``mde`` are None with fewer than 2 seeds (no spread).
    """

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    mde: float | None

    @property
    def resolved(self) -> bool:
        """Whether the 95% interval excludes 0."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    @property
    def verdict(self) -> str:
        """``better``, ``worse`` or ``not resolved``."""
        if not self.resolved:
            return "not resolved"
        return "better" if self.mean > 0 else "worse"


def minimum_detectable_effect(
    std: float, n: int, confidence: float = CONFIDENCE, power: float = POWER
) -> float:
    """Smallest true mean gain a paired t test over ``n`` seeds resolves with
    probability ``power`` at two-sided level ``1 - confidence``."""
    if n < 2:
        raise ValueError(f"the MDE needs at least 2 seeds, got {n}")
    df = n - 1
    z = t_quantile(1 - (1 - confidence) / 2, df) + t_quantile(power, df)
    return z * std / math.sqrt(n)


def seeds_for_mde(std: float, target: float, max_seeds: int = 100) -> int | None:
    """How many seeds bring the MDE to ``target`` at paired spread ``std``."""
    for n in range(2, max_seeds + 1):
        if minimum_detectable_effect(std, n) <= target:
            return n
    return None


def paired_gain(
    values: dict[int, float],
    reference: dict[int, float],
    confidence: float = CONFIDENCE,
) -> PairedGain:
    """Gain of ``values`` over ``reference`` (seed -> metric), paired by seed.

    Every seed of ``values`` must be in ``reference``: an unpaired seed would
    silently turn the comparison into an unpaired one.
    """
    missing = sorted(set(values) - set(reference))
    if missing:
        raise ValueError(f"seeds {missing} have no reference run to pair with")
    diffs = [values[s] - reference[s] for s in sorted(values)]
    n = len(diffs)
    if n == 0:
        raise ValueError("no seeds to compare")
    mean = statistics.fmean(diffs)
    if n < 2:
        return PairedGain(n, mean, None, None, None, None)
    std = statistics.stdev(diffs)
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * std / math.sqrt(n)
    mde = minimum_detectable_effect(std, n, confidence)
    return PairedGain(n, mean, std, mean - half, mean + half, mde)
