"""Robust trend statistics: Theil–Sen slope with Sen's interval, Mann–Kendall test, robust scale.

Pure functions over explicit sequences; no numpy. Sizes are small by design (the detector bins a
window to a few hundred points), so the O(n²) pairwise steps stay cheap, and pair counts are capped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist, median

__all__ = [
    "MannKendall",
    "TrendFit",
    "lag1_autocorrelation",
    "mann_kendall",
    "mk_variance",
    "normal_cdf",
    "ols_fit",
    "robust_scale",
    "theil_sen",
    "variance_inflation",
]

# 40k pairs ≈ 285 points: above that, pairs are thinned deterministically (bounded CPU per fit).
MAX_PAIRS = 40_000
# Consistency constant that makes the MAD estimate the standard deviation of normal noise.
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class TrendFit:
    """A Theil–Sen line; slopes are per unit of ``ts`` (per second for soakd series)."""

    slope: float
    intercept: float
    slope_low: float
    slope_high: float
    n: int


@dataclass(frozen=True)
class MannKendall:
    """Mann–Kendall trend test; ``s`` > 0 means rising, ``p_value`` is two-sided."""

    s: int
    var_s: float
    z: float
    p_value: float
    n: int


def normal_cdf(x: float) -> float:
    """Standard normal cumulative distribution function."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def mk_variance(ys: Sequence[float]) -> float:
    """Variance of the Mann–Kendall S statistic under no trend, corrected for tied values."""
    n = len(ys)
    ties = sum(t * (t - 1) * (2 * t + 5) for t in Counter(ys).values() if t > 1)
    return (n * (n - 1) * (2 * n + 5) - ties) / 18.0


def mann_kendall(ys: Sequence[float], variance_factor: float = 1.0) -> MannKendall:
    """Mann–Kendall test with tie correction and continuity correction.

    ``variance_factor`` (≥ 1) inflates Var(S) for serially correlated data (see
    :func:`variance_inflation`); with 1.0 this is the classic test.
    """
    if variance_factor < 1.0:
        raise ValueError(f'"variance_factor" must be >= 1: {variance_factor}')
    n = len(ys)
    if n < 3:
        return MannKendall(s=0, var_s=0.0, z=0.0, p_value=1.0, n=n)
    s = 0
    for i in range(n - 1):
        yi = ys[i]
        for yj in ys[i + 1 :]:
            if yj > yi:
                s += 1
            elif yj < yi:
                s -= 1
    var_s = mk_variance(ys) * variance_factor
    if var_s <= 0.0:
        # Every value equal: no evidence of any trend.
        return MannKendall(s=s, var_s=var_s, z=0.0, p_value=1.0, n=n)
    if s > 0:
        z = (s - 1) / math.sqrt(var_s)
    elif s < 0:
        z = (s + 1) / math.sqrt(var_s)
    else:
        z = 0.0
    # erfc keeps precision for tiny p-values where 1 - cdf would round to 0.
    p_value = min(1.0, math.erfc(abs(z) / math.sqrt(2.0)))
    return MannKendall(s=s, var_s=var_s, z=z, p_value=p_value, n=n)


def _pairwise_slopes(ts: Sequence[float], ys: Sequence[float]) -> tuple[list[float], int]:
    """Slopes of (thinned) point pairs and the number of pairs that exist in total."""
    n = len(ts)
    total = n * (n - 1) // 2
    stride = max(1, math.ceil(total / MAX_PAIRS))
    slopes: list[float] = []
    for i in range(n - 1):
        ti, yi = ts[i], ys[i]
        # A rotating offset spreads the thinned pairs over all lags instead of favouring short ones.
        start = i + 1 + (i % stride)
        slopes.extend([(ys[j] - yi) / (ts[j] - ti) for j in range(start, n, stride) if ts[j] != ti])
    return slopes, total


def theil_sen(
    ts: Sequence[float],
    ys: Sequence[float],
    confidence: float = 0.95,
    *,
    variance_factor: float = 1.0,
) -> TrendFit:
    """Theil–Sen slope (median of pairwise slopes) with Sen's distribution-free interval.

    The interval's rank bounds come from the Mann–Kendall variance of S (tie-corrected,
    times ``variance_factor``); when pairs are thinned the ranks are scaled accordingly.
    """
    if len(ts) != len(ys):
        raise ValueError(f"ts and ys differ in length: {len(ts)} != {len(ys)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f'"confidence" must be in (0, 1): {confidence}')
    n = len(ts)
    if n < 2:
        raise ValueError(f"theil_sen needs at least 2 points: {n}")
    slopes, total = _pairwise_slopes(ts, ys)
    if not slopes:
        raise ValueError("theil_sen needs at least 2 distinct timestamps")
    slopes.sort()
    m = len(slopes)
    slope = _sorted_median(slopes)
    intercept = median(y - slope * t for t, y in zip(ts, ys, strict=True))
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    c = z * math.sqrt(max(mk_variance(ys), 0.0) * variance_factor) * (m / total)
    low_rank = round((m - c) / 2.0)  # 1-based rank M1
    high_rank = round((m + c) / 2.0) + 1  # 1-based rank M2 + 1
    slope_low = slopes[min(max(low_rank - 1, 0), m - 1)]
    slope_high = slopes[min(max(high_rank - 1, 0), m - 1)]
    return TrendFit(
        slope=slope, intercept=intercept, slope_low=slope_low, slope_high=slope_high, n=n
    )


def slope_per_hour(points: Sequence[tuple[float, float]], max_points: int = 300) -> float | None:
    """Theil–Sen slope per hour of ``(t, value)`` points, or None for fewer than 3 points or
    no time span. Thinned evenly to ``max_points`` first: the pairs are O(n²), and the slope
    needs the shape, not every point (24 h of 1 Hz samples)."""
    if len(points) < 3 or points[-1][0] <= points[0][0]:
        return None
    if len(points) > max_points:
        step = len(points) / max_points
        points = [points[int(i * step)] for i in range(max_points)] + [points[-1]]
    try:
        fit = theil_sen([t for t, _ in points], [v for _, v in points])
    except ValueError:  # every timestamp equal
        return None
    return fit.slope * 3600.0


def _sorted_median(xs: Sequence[float]) -> float:
    m = len(xs)
    mid = m // 2
    return xs[mid] if m % 2 else (xs[mid - 1] + xs[mid]) / 2.0


def ols_fit(ts: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` in O(n); slope 0 when all timestamps are equal."""
    n = len(ts)
    if n == 0:
        raise ValueError("ols_fit needs at least 1 point")
    mt = math.fsum(ts) / n
    my = math.fsum(ys) / n
    sxx = math.fsum((t - mt) ** 2 for t in ts)
    if sxx == 0.0:
        return 0.0, my
    sxy = math.fsum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True))
    slope = sxy / sxx
    return slope, my - slope * mt


def robust_scale(xs: Sequence[float]) -> float:
    """Noise scale as 1.4826 × median absolute deviation (the σ of normal noise, outlier-proof)."""
    if not xs:
        return 0.0
    mid = median(xs)
    return _MAD_TO_SIGMA * median(abs(x - mid) for x in xs)


def lag1_autocorrelation(xs: Sequence[float]) -> float:
    """Lag-1 autocorrelation coefficient; 0 for fewer than 3 points or constant input."""
    n = len(xs)
    if n < 3:
        return 0.0
    mean = math.fsum(xs) / n
    den = math.fsum((x - mean) ** 2 for x in xs)
    if den == 0.0:
        return 0.0
    num = math.fsum((xs[i] - mean) * (xs[i + 1] - mean) for i in range(n - 1))
    return num / den


def variance_inflation(residuals: Sequence[float], max_r1: float = 0.9) -> float:
    """Var(S) inflation for AR(1)-like residuals: (1 + r1) / (1 - r1), r1 clipped to [0, max_r1].

    Memory series are serially correlated (churn wanders), which makes the plain Mann–Kendall
    test far too confident; this is the lag-1 effective-sample-size correction.
    """
    r1 = min(max(lag1_autocorrelation(residuals), 0.0), max_r1)
    return (1.0 + r1) / (1.0 - r1)
