"""The decision on one series window: leak, or one of the leak-free shapes that mimic one.

A leak is *sustained* growth. Every check below rejects a known leak-free shape that a plain
trend test would flag: plateau (a cache filling to its bound), step (a one-off load), sawtooth
(buffers that flush), noise (churn that wanders), and slopes too small to matter.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from soakd.analysis.series import downsample
from soakd.analysis.trend import (
    mann_kendall,
    ols_fit,
    robust_scale,
    theil_sen,
    variance_inflation,
)

__all__ = ["Pattern", "SeriesVerdict", "VerdictParams", "classify", "warmup_end"]

Pattern = Literal["leak", "plateau", "sawtooth", "step", "flat", "noise", "insufficient"]

# A drop must exceed this many per-sample noise σ so that churn alone never looks like a flush.
_DROP_SIGMAS = 8.0
# Samples (after binning) within which a fall counts as one sudden drop.
_DROP_SPAN = 3


@dataclass(frozen=True)
class VerdictParams:
    """Thresholds for :func:`classify`; slopes are per second in the series' own unit."""

    min_points: int = 8
    min_duration_s: float = 30.0
    alpha: float = 0.01  # Mann–Kendall significance, and 1 - confidence of the slope interval
    min_slope: float = 0.0  # the Theil–Sen lower bound must exceed this
    min_growth: float = 0.0  # fitted growth over the window must reach this (e.g. 3 fds)
    plateau_ratio: float = 0.25  # last third's slope below this × overall slope → plateau
    step_fraction: float = 0.6  # one jump carrying this share of the rise → step
    drop_fraction: float = 0.5  # a fall of this share of the range → a flush (sawtooth)
    noise_ratio: float = 2.0  # growth must be this many robust noise σ
    # Second half's slope below this × the first half's, their intervals apart → saturating.
    decel_ratio: float = 0.75
    # Longer windows are averaged into this many time bins (bounds the O(n²) statistics).
    max_points: int = 120

    def __post_init__(self) -> None:
        if self.min_points < 8:
            raise ValueError(f'"min_points" must be >= 8: {self.min_points}')
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f'"alpha" must be in (0, 0.5): {self.alpha}')
        if self.max_points < self.min_points:
            raise ValueError(f'"max_points" must be >= min_points: {self.max_points}')
        for name in ("plateau_ratio", "step_fraction", "drop_fraction", "decel_ratio"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f'"{name}" must be in (0, 1): {value}')


@dataclass(frozen=True)
class SeriesVerdict:
    """What one window of one series looks like; ``growth`` = fitted slope × duration."""

    pattern: Pattern
    slope: float
    slope_low: float
    p_value: float
    growth: float
    reason: str
    n: int = 0
    duration_s: float = 0.0
    noise: float = 0.0  # robust σ of the residuals around the fitted line
    slope_high: float | None = None  # upper confidence bound of the slope, when known

    @property
    def upper_slope(self) -> float:
        """The slope's upper confidence bound (the point estimate when none is known)."""
        return self.slope if self.slope_high is None else self.slope_high

    @property
    def is_leak(self) -> bool:
        return self.pattern == "leak"

    @property
    def decisive(self) -> bool:
        """True when the window held enough data to say anything."""
        return self.pattern != "insufficient"


def _insufficient(reason: str, n: int, duration: float) -> SeriesVerdict:
    return SeriesVerdict("insufficient", 0.0, 0.0, 1.0, 0.0, reason, n, duration)


def classify(
    ts: Sequence[float],
    ys: Sequence[float],
    params: VerdictParams,
    *,
    noise_floor: float = 0.0,
) -> SeriesVerdict:
    """Classify one window of a series (timestamps in seconds, ascending).

    ``noise_floor`` is a noise σ known from a longer stretch of the same series: churn that
    wanders slowly looks like a trend inside a short window, and its residuals there understate
    how far it wanders.
    """
    if len(ts) != len(ys):
        raise ValueError(f"ts and ys differ in length: {len(ts)} != {len(ys)}")
    n = len(ts)
    duration = ts[-1] - ts[0] if n else 0.0
    if n < params.min_points:
        return _insufficient(f"{n} points < {params.min_points}", n, duration)
    if duration < params.min_duration_s:
        return _insufficient(f"{duration:.0f}s < {params.min_duration_s:.0f}s", n, duration)
    bt, by = downsample(list(ts), list(ys), params.max_points)
    if len(bt) < params.min_points:
        return _insufficient(f"{len(bt)} distinct times < {params.min_points}", n, duration)

    ols_slope, ols_icpt = ols_fit(bt, by)
    vif = variance_inflation([y - (ols_icpt + ols_slope * t) for t, y in zip(bt, by, strict=True)])
    fit = theil_sen(bt, by, 1.0 - params.alpha, variance_factor=vif)
    mk = mann_kendall(by, variance_factor=vif)
    growth = fit.slope * duration
    noise = robust_scale([y - (fit.intercept + fit.slope * t) for t, y in zip(bt, by, strict=True)])
    noise = max(noise, noise_floor)

    def verdict(pattern: Pattern, reason: str, slope: float = fit.slope) -> SeriesVerdict:
        return SeriesVerdict(
            pattern,
            slope,
            fit.slope_low,
            mk.p_value,
            slope * duration,
            reason,
            n,
            duration,
            noise,
            fit.slope_high,
        )

    drops = _drops(by, params.drop_fraction)
    rising = mk.s > 0 and mk.p_value < params.alpha and fit.slope > 0.0
    if not rising:
        if drops:
            return verdict("sawtooth", f"{len(drops)} large drop(s), no overall trend")
        share, jump = _step_share(bt, by)
        if share >= params.step_fraction and jump >= _DROP_SIGMAS * _noise_sigma(by):
            return verdict("step", f"one jump carries {share:.0%} of the change")
        if noise > max(params.min_slope * duration, params.min_growth):
            return verdict("noise", f"no significant trend (p={mk.p_value:.2g}), noisy")
        return verdict("flat", f"no significant trend (p={mk.p_value:.2g})")

    if drops:
        base = _rising_baseline(bt, by, drops, params.min_slope)
        if base is None:
            return verdict("sawtooth", f"{len(drops)} large drop(s) back toward baseline")
        growth = base * duration
        if growth < params.min_growth:
            return verdict("sawtooth", "baseline under the flushes rises too little", base)
        return verdict("leak", "baseline under periodic flushes keeps rising", base)

    share, _ = _step_share(bt, by)
    if share >= params.step_fraction:
        return verdict("step", f"one jump carries {share:.0%} of the rise")

    if fit.slope <= params.min_slope:
        return verdict("flat", f"slope {fit.slope:.3g}/s ≤ minimum {params.min_slope:.3g}/s")
    third = [i for i, t in enumerate(bt) if t >= bt[-1] - duration / 3.0]
    if len(third) >= 4:
        tail = theil_sen([bt[i] for i in third], [by[i] for i in third], 1.0 - params.alpha)
        if tail.slope < max(params.plateau_ratio * fit.slope, params.min_slope):
            return verdict("plateau", "growth has stopped in the last third of the window")
    slowing = _deceleration(bt, by, params)
    if slowing is not None:
        return verdict(
            "plateau", f"growth slowing down (second half at {slowing:.0%} of the first): filling"
        )

    if fit.slope_low <= params.min_slope:
        return verdict(
            "flat", f"slope lower bound {fit.slope_low:.3g}/s ≤ minimum {params.min_slope:.3g}/s"
        )
    if growth < params.min_growth:
        return verdict("flat", f"growth {growth:.3g} < minimum {params.min_growth:.3g}")
    if growth < params.noise_ratio * noise:
        return verdict("noise", f"growth {growth:.3g} within {params.noise_ratio:g}σ of noise")
    return verdict("leak", f"sustained growth, p={mk.p_value:.2g}")


def _deceleration(ts: Sequence[float], ys: Sequence[float], params: VerdictParams) -> float | None:
    """Second-half slope over the first half's when growth clearly slows down, else None.

    A cache over a bounded key space fills ever slower (each new key is rarer); a leak at a
    steady load grows at a steady rate. Both halves' slope intervals must lie apart.
    """
    mid = (ts[0] + ts[-1]) / 2.0
    first = [i for i, t in enumerate(ts) if t < mid]
    second = [i for i, t in enumerate(ts) if t >= mid]
    if len(first) < params.min_points or len(second) < params.min_points:
        return None
    conf = 1.0 - params.alpha
    a = theil_sen([ts[i] for i in first], [ys[i] for i in first], conf)
    b = theil_sen([ts[i] for i in second], [ys[i] for i in second], conf)
    if a.slope <= 0.0 or b.slope_high >= a.slope_low or b.slope >= params.decel_ratio * a.slope:
        return None
    return max(b.slope, 0.0) / a.slope


def _noise_sigma(ys: Sequence[float]) -> float:
    """Per-sample noise σ from first differences (a trend or a few jumps barely move it)."""
    diffs = [b - a for a, b in itertools.pairwise(ys)]
    return robust_scale(diffs) / math.sqrt(2.0)


def _drops(ys: Sequence[float], fraction: float) -> list[int]:
    """Indices where the series fell suddenly by a large share of its range."""
    span = max(ys) - min(ys)
    threshold = max(fraction * span, _DROP_SIGMAS * _noise_sigma(ys))
    if threshold <= 0.0:
        return []
    drops: list[int] = []
    # A flush is sudden: the fall must happen within a few samples, unlike churn that wanders.
    for i in range(1, len(ys)):
        recent = max(ys[max(0, i - _DROP_SPAN) : i])
        if recent - ys[i] >= threshold and (not drops or i - drops[-1] > _DROP_SPAN):
            drops.append(i)
    return drops


def _rising_baseline(
    ts: Sequence[float], ys: Sequence[float], drops: Sequence[int], min_slope: float
) -> float | None:
    """Slope of the troughs between flushes when they rise steadily (a leak under a sawtooth).

    Needs at least three troughs that never fall back; returns None otherwise.
    """
    bounds = [0, *drops, len(ys)]
    troughs: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(bounds):
        if b > a:
            i = min(range(a, b), key=ys.__getitem__)
            troughs.append((ts[i], ys[i]))
    if len(troughs) < 3:
        return None
    sigma = _noise_sigma(ys)
    if any(b[1] < a[1] - 2.0 * sigma for a, b in itertools.pairwise(troughs)):
        return None
    fit = theil_sen([t for t, _ in troughs], [y for _, y in troughs])
    return fit.slope if fit.slope > min_slope else None


def _step_share(ts: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Share of the total rise carried by the single best step (0 for a line), and the step.

    Fits the best two-segment split (largest mean shift), then a line per segment: the jump
    between the segment lines at the split, over jump + the segments' own growth.
    """
    n = len(ys)
    m = max(3, n // 10)
    if n < 2 * m:
        return 0.0, 0.0
    prefix = [0.0]
    for y in ys:
        prefix.append(prefix[-1] + y)
    total = prefix[-1]
    best_k, best_score = -1, 0.0
    for k in range(m, n - m + 1):
        left = prefix[k] / k
        right = (total - prefix[k]) / (n - k)
        score = (right - left) * math.sqrt(k * (n - k) / n)
        if score > best_score:
            best_k, best_score = k, score
    if best_k < 0:
        return 0.0, 0.0
    k = best_k
    sl, il = ols_fit(ts[:k], ys[:k])
    sr, ir = ols_fit(ts[k:], ys[k:])
    at = (ts[k - 1] + ts[k]) / 2.0
    jump = (sr * at + ir) - (sl * at + il)
    within = max(sl, 0.0) * (ts[k - 1] - ts[0]) + max(sr, 0.0) * (ts[-1] - ts[k])
    if jump <= 0.0:
        return 0.0, 0.0
    return jump / (jump + within), jump


def warmup_end(
    ts: Sequence[float],
    ys: Sequence[float],
    floor_s: float,
    max_s: float,
    *,
    min_span_s: float = 30.0,
    min_slope: float = 0.0,
) -> float:
    """Earliest time ≥ ``floor_s`` after which growth has settled; ``max_s`` if never (yet).

    From each candidate start c, the slope over the first half of [c, c + 2·min_span_s] is
    compared with the second half's: warm-up decelerates, so it is over once the first half
    no longer grows faster than the second by more than noise (or ``min_slope``). A candidate needs
    ``min_span_s`` of data after it, so a caller that gets ``max_s`` before ``max_s`` should
    ask again later.
    """
    if max_s < floor_s:
        raise ValueError(f'"max_s" must be >= floor_s: {max_s} < {floor_s}')
    if len(ts) != len(ys):
        raise ValueError(f"ts and ys differ in length: {len(ts)} != {len(ys)}")
    if not ts:
        return max_s
    step = max((max_s - floor_s) / 40.0, 1.0)
    c = floor_s
    while c <= max_s:
        if ts[-1] - c < min_span_s:
            return max_s
        # A bounded span after c: over all remaining data a fast early rise would be diluted.
        end = min(ts[-1], c + 2.0 * min_span_s)
        idx = [i for i, t in enumerate(ts) if c <= t <= end]
        if len(idx) < 8:
            return max_s
        mid = (c + end) / 2.0
        first = [i for i in idx if ts[i] < mid]
        second = [i for i in idx if ts[i] >= mid]
        if len(first) >= 4 and len(second) >= 4:
            s1, se1 = _slope_and_error(ts, ys, first)
            s2, se2 = _slope_and_error(ts, ys, second)
            if s1 - s2 <= max(min_slope, 3.0 * math.hypot(se1, se2)):
                return c
        c += step
    return max_s


def _slope_and_error(
    ts: Sequence[float], ys: Sequence[float], idx: list[int]
) -> tuple[float, float]:
    """OLS slope of the indexed points and its standard error from the robust residual σ."""
    xs = [ts[i] for i in idx]
    vs = [ys[i] for i in idx]
    slope, icpt = ols_fit(xs, vs)
    sigma = robust_scale([v - (icpt + slope * x) for x, v in zip(xs, vs, strict=True)])
    mean = math.fsum(xs) / len(xs)
    sxx = math.fsum((x - mean) ** 2 for x in xs)
    return slope, (sigma / math.sqrt(sxx) if sxx > 0.0 else 0.0)
