"""Judging one series on its window: the newest ``window_s`` and, for a late onset, its newest
half and quarter. Pure functions over a :class:`~soakd.detection.tracks.Track`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from soakd.analysis.series import downsample
from soakd.analysis.trend import ols_fit, robust_scale
from soakd.analysis.verdicts import SeriesVerdict, VerdictParams, classify
from soakd.detection.kinds import SignalKind
from soakd.detection.params import HOUR, DetectionParams
from soakd.detection.sampled import judge_sampled, unseen_allowance
from soakd.detection.tracks import Track

__all__ = ["SUB_WINDOWS", "Thresholds", "judge_window"]

# Sub-windows (fractions of the window, newest part) also judged, for leaks that start late.
SUB_WINDOWS = (0.5, 0.25)


@dataclass(frozen=True)
class Thresholds:
    """The verdict parameters of each kind of series, derived once from the params.

    The window and its sub-windows share the significance level (Bonferroni).
    """

    heap: VerdictParams
    native: VerdictParams
    count: VerdictParams
    objects: VerdictParams
    suspect_rss: VerdictParams  # suspicion from RSS or malloc: a low bar, only starts tracing

    @classmethod
    def from_params(cls, p: DetectionParams) -> Thresholds:
        alpha = (1.0 - p.confidence) / (1 + len(SUB_WINDOWS))
        heap = VerdictParams(
            alpha=alpha, min_slope=p.min_heap_slope_bytes_per_h / HOUR, min_duration_s=0.0
        )
        native = VerdictParams(
            alpha=alpha, min_slope=p.min_native_slope_bytes_per_h / HOUR, min_duration_s=0.0
        )
        count = VerdictParams(
            alpha=alpha,
            min_slope=p.min_count_slope_per_h / HOUR,
            min_growth=p.min_count_growth,
            min_duration_s=0.0,
        )
        return cls(
            heap=heap,
            native=native,
            count=count,
            objects=replace(
                count, min_slope=p.min_object_slope_per_h / HOUR, min_growth=p.min_object_growth
            ),
            suspect_rss=replace(native, min_slope=p.suspect_rss_slope_bytes_per_h / HOUR),
        )

    def for_signal(self, signal: SignalKind, p: DetectionParams) -> tuple[VerdictParams, float]:
        """The verdict parameters and the shortest window judged for ``signal``'s series."""
        if signal == "site":
            return self.heap, min(p.site_min_window_s, p.min_window_s)
        if signal == "heap":
            return self.heap, p.min_window_s
        if signal == "rss":
            return self.native, max(p.min_window_s, p.native_min_window_s)
        if signal == "type":
            return self.objects, p.min_window_s
        return self.count, p.min_window_s


def judge_window(
    track: Track,
    now: float,
    warmup: float,
    vp: VerdictParams,
    min_window: float,
    p: DetectionParams,
    zoom: tuple[float, float] | None = None,
) -> SeriesVerdict:
    """Verdict on the track's window, then on its newest half and quarter (late onset).

    ``zoom``: the sampled profile's latest change to a finer interval (when, the interval
    before), for sampled sites.
    """
    start = max(warmup, now - p.window_s, track.segment_start)
    ts, ys = track.series.window(start, now)
    if not ts:
        return SeriesVerdict("insufficient", 0.0, 0.0, 1.0, 0.0, "no samples in window")
    stale = max(p.gap_s, 5.0 * track.typical_dt)
    if now - ts[-1] > stale:
        # The series stopped (site left the top N, tracing off): no news is no verdict.
        return SeriesVerdict("insufficient", 0.0, 0.0, 1.0, 0.0, "no recent samples")
    # A window one or two sampling intervals short of the minimum is long enough: samples
    # and analyses tick on separate schedules.
    min_window = max(min_window - 2.0 * track.typical_dt, 0.75 * min_window)
    if track.variances is not None:
        sampled = _judge_sampled_track(track, ts, ys, start, now, vp, min_window, zoom)
        if sampled is not None:
            return sampled
    full = prescreen(ts, ys, vp, min_window) or classify(ts, ys, vp)
    if full.pattern not in ("flat", "noise"):
        # Only a window flat or noisy overall may hide a late leak; a sawtooth or a step
        # seen whole must not be re-judged on a part that shows only one rising tooth.
        return full
    span = ts[-1] - ts[0]
    floor = full.noise
    for fraction in SUB_WINDOWS:
        if span * fraction < min_window:
            break
        cut = ts[-1] - span * fraction
        first = next(i for i, t in enumerate(ts) if t >= cut)
        sub_ts, sub_ys = ts[first:], ys[first:]
        if prescreen(sub_ts, sub_ys, vp, min_window) is not None:
            continue
        if floor == 0.0:
            # Computed only now: most series are screened out above and never need it.
            floor = residual_noise(ts, ys, vp.max_points)
        sub = classify(sub_ts, sub_ys, vp, noise_floor=floor)
        # A leak that starts late makes the newest part grow faster than the whole window;
        # a structure still filling (a pool turning over since tracing started) slower.
        if sub.is_leak and sub.slope > full.slope and new_high(ys[:first], sub_ys):
            return sub
    return full


def _judge_sampled_track(
    track: Track,
    ts: list[float],
    ys: list[float],
    start: float,
    now: float,
    vp: VerdictParams,
    min_window: float,
    zoom: tuple[float, float] | None,
) -> SeriesVerdict | None:
    """The window (or, when flat, its newest half or quarter: a late onset) of a sampled site;
    None when its variances do not line up with its points (then the usual tests judge)."""
    assert track.variances is not None
    vts, vs = track.variances.window(start, now)
    if vts != ts:
        return None
    cs: list[float] | None = None
    if track.churn is not None:
        cts, cs = track.churn.window(start, now)
        cs = cs if cts == ts else None
    full = judge_sampled(ts, ys, vs, vp, min_window, cs, _zoom_allowance(track, ts[0], now, zoom))
    if full.pattern != "flat":
        return full
    span = ts[-1] - ts[0]
    for fraction in SUB_WINDOWS:
        if span * fraction < min_window:
            break
        first = next(i for i, t in enumerate(ts) if t >= ts[-1] - span * fraction)
        sub_cs = cs[first:] if cs is not None else None
        allowance = _zoom_allowance(track, ts[first], now, zoom)
        sub = judge_sampled(ts[first:], ys[first:], vs[first:], vp, min_window, sub_cs, allowance)
        if sub.is_leak and new_high(ys[:first], ys[first:]):
            return sub
    return full


def _zoom_allowance(
    track: Track, start: float, now: float, zoom: tuple[float, float] | None
) -> float:
    """Growth over [start, now] that a zoom to a finer interval explains (see
    :func:`~soakd.detection.sampled.unseen_allowance`); 0 without a zoom before ``now``."""
    if zoom is None or track.coarse is None:
        return 0.0
    since, interval = zoom
    cts, cs = track.coarse.window(since, now)
    if not cts:
        return 0.0
    # Its coarse samples at the zoom: all it had then (none, if it appeared since); they only
    # leave afterwards. The window's share of their leaving counts.
    n_zoom = cs[0]
    at_start = (
        n_zoom if start <= cts[0] else next(c for t, c in zip(cts, cs, strict=True) if t >= start)
    )
    left = at_start - cs[-1]
    return unseen_allowance(n_zoom, left, interval, track.block_size() or 0.0)


def prescreen(
    ts: list[float], ys: list[float], vp: VerdictParams, min_window: float
) -> SeriesVerdict | None:
    """An O(n) verdict for windows too short or clearly flat; None when classify() must run."""
    n = len(ts)
    duration = ts[-1] - ts[0] if ts else 0.0
    if n < vp.min_points or duration < min_window:
        return SeriesVerdict(
            "insufficient", 0.0, 0.0, 1.0, 0.0, f"{n} points over {duration:.0f}s", n, duration
        )
    slope, _ = ols_fit(ts, ys)
    if slope <= 0.5 * vp.min_slope or slope * duration <= 0.5 * vp.min_growth:
        return SeriesVerdict(
            "flat", slope, slope, 1.0, slope * duration, "slope far below minimum", n, duration
        )
    return None


def residual_noise(ts: list[float], ys: list[float], max_points: int) -> float:
    """Robust σ around the least-squares line, on the binned window (as classify sees it)."""
    bt, by = downsample(ts, ys, max_points)
    slope, icpt = ols_fit(bt, by)
    return robust_scale([y - (icpt + slope * t) for t, y in zip(bt, by, strict=True)])


def new_high(before: list[float], recent: list[float]) -> bool:
    """True when the recent part ends above everything before it.

    A leak keeps making new highs; churn that wanders up inside a short stretch stays within
    the range it has already visited.
    """
    if not before:
        return True
    tail = sorted(recent[-max(3, len(recent) // 10) :])
    return tail[len(tail) // 2] > max(before)
