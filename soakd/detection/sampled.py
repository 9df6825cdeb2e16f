"""Verdicts on a site series estimated from sampled allocations, with its known noise.

A sampled site's estimate is a sum over the blocks the profiler picked: each new sample adds
about one sampling interval of bytes, so the series climbs in random steps (a Poisson count
scaled by the bytes per sample), and its variance comes with every point. Residual-based trend
tests read such a random walk as noise, or a run of small steps as a plateau, and a real leak
flaps between "leak" and "noise". Here the statistics are the estimator's own:

- the growth over the window is significant when it exceeds ``z`` standard deviations of the
  difference of its end estimates. Two upper bounds of that variance are known, and the smaller
  is taken: the two ends' variances summed (blocks live at both ends cancel), and the squared
  weights of the samples allocated and freed in between (the site's churn; a steady leak's
  growth is then judged on its new samples alone, not on everything it leaked before);
- a plateau is a last third that grew significantly less than the window's rate predicts, with
  the Poisson spread of that many samples (and by more than ``plateau_ratio``);
- a step is one increment carrying ``step_fraction`` of the growth (a one-off load);
- a filling structure is a second half growing significantly slower than the first (by more
  than ``decel_ratio``), each half's growth with its own estimator spread: a cache over a
  bounded key space fills ever slower, a leak at a steady load grows at a steady rate;
- after a zoom to a finer interval, growth up to what the coarse samples may have missed is
  not evidence (:func:`unseen_allowance`): the blocks already live keep their coarse samples,
  and a site that drew none of them climbs to its true level as they are replaced by finely
  sampled ones, without holding a byte more.
"""

from __future__ import annotations

import math
from itertools import pairwise
from statistics import NormalDist

from soakd.analysis.verdicts import SeriesVerdict, VerdictParams

__all__ = ["growth_sigma", "judge_sampled", "poisson_upper", "unseen_allowance"]

_NORMAL = NormalDist()
_Z95 = _NORMAL.inv_cdf(0.95)
# Below this many coarse samples at the zoom, how many of them left says nothing of how much of
# the site's unseen mass did: all of it may be turning over.
_MIN_SAMPLES_FOR_SHARE = 3


def poisson_upper(n: float, z: float = _Z95) -> float:
    """One-sided upper confidence bound of a Poisson mean after observing ``n`` events
    (Wilson–Hilferty; within 2 % of the exact bound, which is 3.0 at n = 0 for 95 %)."""
    m = max(n, 0.0) + 1.0
    return m * (1.0 - 1.0 / (9.0 * m) + z / (3.0 * math.sqrt(m))) ** 3


def _share_upper(k: float, n: float, z: float = _Z95) -> float:
    p = k / n
    centre = p + z * z / (2.0 * n)
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return min((centre + half) / (1.0 + z * z / n), 1.0)


def unseen_allowance(n_zoom: float, left: float, interval: float, block_bytes: float) -> float:
    """Bytes a site's estimate may climb after a zoom without the site growing.

    ``n_zoom`` coarse samples (at ``interval``) were live at the zoom and ``left`` of them have
    since been freed; ``block_bytes`` is the site's mean block size (0: unknown, small). Its
    live mass then may exceed what those samples stand for by a Poisson upper bound's worth of
    missed samples; as the blocks turn over, that mass is replaced by finely sampled blocks and
    shows. The share that may show is bounded by the coarse samples seen leaving (blocks of one
    site are replaced alike); with too few of them to tell, all of it may. Blocks sampled
    almost surely hide nothing.
    """
    if interval <= 0.0:
        return 0.0
    missed = poisson_upper(n_zoom) - n_zoom
    if block_bytes > 0.0:
        p = -math.expm1(-block_bytes / interval)
        per_sample = block_bytes * (1.0 - p) / p  # weight s/p, of which a share 1-p is unseen
    else:
        per_sample = interval
    share = 1.0
    if n_zoom >= _MIN_SAMPLES_FOR_SHARE:
        # The share of the site's blocks replaced since: at most this, seeing ``left`` of
        # ``n_zoom`` go (a one-sided 95 % bound of a binomial proportion, Wilson score).
        share = _share_upper(min(max(left, 0.0), n_zoom), n_zoom)
    return missed * per_sample * share


def growth_sigma(vs: list[float], cs: list[float] | None) -> float:
    """Standard deviation of ``ys[-1] - ys[0]``: the smaller of the two upper bounds above.

    ``cs`` (cumulative churn) falling means the profiler released and restarted the site's
    stacks: then only the ends' variances count.
    """
    ends = max(vs[0], 0.0) + max(vs[-1], 0.0)
    if cs is not None and cs[-1] >= cs[0]:
        return math.sqrt(min(ends, cs[-1] - cs[0]))
    return math.sqrt(ends)


def judge_sampled(
    ts: list[float],
    ys: list[float],
    vs: list[float],
    vp: VerdictParams,
    min_window: float,
    cs: list[float] | None = None,
    allowance: float = 0.0,
) -> SeriesVerdict:
    """Verdict on one window of a sampled site: ``vs`` are the variances of ``ys``, ``cs`` the
    site's cumulative churn, ``allowance`` the growth that is no evidence (see
    :func:`unseen_allowance`)."""
    n = len(ts)
    span = ts[-1] - ts[0] if ts else 0.0
    if n < 4 or span < min_window:
        return SeriesVerdict(
            "insufficient", 0.0, 0.0, 1.0, 0.0, f"{n} points over {span:.0f}s", n, span
        )
    growth = ys[-1] - ys[0]
    sigma = growth_sigma(vs, cs)
    slope = growth / span
    z_alpha = _NORMAL.inv_cdf(1.0 - vp.alpha)
    tested = growth - max(allowance, 0.0)
    p_value = 1.0 - _NORMAL.cdf(tested / sigma) if sigma > 0 else (0.0 if tested > 0 else 1.0)
    slope_low = (tested - z_alpha * sigma) / span

    def verdict(pattern: str, reason: str) -> SeriesVerdict:
        return SeriesVerdict(
            pattern,  # type: ignore[arg-type]  # one of the Pattern literals below
            slope,
            slope_low,
            p_value,
            growth,
            reason,
            n,
            span,
            noise=sigma,
            slope_high=(growth + z_alpha * sigma) / span,
        )

    if slope <= vp.min_slope or growth < vp.min_growth:
        return verdict("flat", f"slope {slope:.3g}/s ≤ minimum {vp.min_slope:.3g}/s")
    if p_value > vp.alpha:
        if allowance > 0.0 and growth - z_alpha * sigma > 0.0:
            return verdict(
                "flat",
                f"within the zoom's turnover: grew {growth:.3g} B, of which up to "
                f"{allowance:.3g} B may be blocks the coarser interval did not sample",
            )
        return verdict(
            "flat",
            f"within sampling noise: grew {growth:.3g} B, σ of the estimate {sigma:.3g} B",
        )
    if slope_low <= vp.min_slope:
        return verdict("flat", f"slope lower bound {slope_low:.3g}/s ≤ minimum")
    steps = [b - a for a, b in pairwise(ys)]
    if max(steps) >= vp.step_fraction * growth:
        return verdict("step", f"one jump carries {max(steps) / growth:.0%} of the rise")
    # Bytes one sample stands for (variance / estimate for small blocks): the Poisson scale.
    per_sample = max(vs[-1], 0.0) / ys[-1] if ys[-1] > 0 else 0.0
    cut = next(i for i, t in enumerate(ts) if t >= ts[-1] - span / 3.0)
    if cut < n - 1:
        expected = slope * (ts[-1] - ts[cut])
        tail = ys[-1] - ys[cut]
        spread = math.sqrt(per_sample * max(expected, 0.0))
        if tail < vp.plateau_ratio * expected and expected - tail > z_alpha * spread:
            return verdict(
                "plateau",
                f"growth has stopped in the last third ({tail:.3g} B of {expected:.3g} expected)",
            )
    slowing = _deceleration(ts, ys, vs, cs, vp, z_alpha)
    if slowing is not None:
        return verdict(
            "plateau", f"growth slowing down (second half at {slowing:.0%} of the first): filling"
        )
    sigmas = f"{tested / sigma:.1f} σ" if sigma > 0 else "no sampled churn"
    beyond = f" beyond the zoom's {allowance:.3g} B turnover" if allowance > 0.0 else ""
    return verdict("leak", f"sampled growth {growth:.3g} B, {sigmas} of the estimate{beyond}")


def _deceleration(
    ts: list[float],
    ys: list[float],
    vs: list[float],
    cs: list[float] | None,
    vp: VerdictParams,
    z: float,
) -> float | None:
    """The second half's rate over the first's when it is lower beyond both halves' sampling
    noise (and by more than ``decel_ratio``), else None."""
    mid_t = (ts[0] + ts[-1]) / 2.0
    mid = next(i for i, t in enumerate(ts) if t >= mid_t)
    if mid < 2 or len(ts) - mid < 2:
        return None
    d1, d2 = ts[mid] - ts[0], ts[-1] - ts[mid]
    if d1 <= 0.0 or d2 <= 0.0:  # points sharing a timestamp
        return None
    r1 = (ys[mid] - ys[0]) / d1
    r2 = (ys[-1] - ys[mid]) / d2
    if r1 <= 0.0 or r2 >= vp.decel_ratio * r1:
        return None
    s1 = growth_sigma(vs[: mid + 1], cs[: mid + 1] if cs is not None else None) / d1
    s2 = growth_sigma(vs[mid:], cs[mid:] if cs is not None else None) / d2
    if r1 - r2 <= z * math.hypot(s1, s2):
        return None
    return max(r2, 0.0) / r1
