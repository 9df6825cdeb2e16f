"""Cross-series checks on a leak verdict: RSS growth must exceed what the Python heap explains
(``native``), and a site's growth must show in the process as a whole (``site``).
"""

from __future__ import annotations

import math
from dataclasses import replace

from soakd.analysis.series import downsample
from soakd.analysis.trend import theil_sen
from soakd.analysis.verdicts import SeriesVerdict
from soakd.detection.kinds import SignalKind
from soakd.detection.params import HOUR, DetectionParams
from soakd.detection.sampled import growth_sigma
from soakd.detection.tracks import Track, TrackTable
from soakd.detection.windows import Thresholds

__all__ = ["native_verdict", "site_verdict"]

# CPython serves requests up to this size from pymalloc (counted as blocks), larger from malloc.
_PYMALLOC_MAX_BYTES = 512.0
# A site whose mean block size lies within this factor of 512 B may hold blocks of both kinds.
_SIZE_AMBIGUITY = 1.25


def native_verdict(
    tracks: TrackTable, v: SeriesVerdict, now: float, th: Thresholds
) -> SeriesVerdict:
    """RSS's verdict, turned flat when Python heap growth (or leaking sites) explains it."""
    if not v.is_leak:
        return v
    heap_slope = _heap_slope(tracks, now - v.duration_s, now, th)
    if heap_slope is None:
        return v
    # Leaking sites explain RSS growth too (few large blocks barely move the block count).
    sites = math.fsum(
        t.verdict.slope for t in tracks.of("site") if t.verdict is not None and t.verdict.is_leak
    )
    heap_slope = max(heap_slope, sites)
    excess = v.slope_low - max(0.0, heap_slope)
    if excess <= th.native.min_slope:
        return replace(
            v,
            pattern="flat",
            reason=f"RSS growth explained by Python heap growth ({heap_slope * HOUR:.3g}/h)",
        )
    return v


def site_verdict(
    tracks: TrackTable,
    track: Track,
    v: SeriesVerdict,
    now: float,
    p: DetectionParams,
    th: Thresholds,
) -> SeriesVerdict:
    """A site leak must show in the whole process: its blocks in the block count, or its
    bytes in malloc's bytes in use (in RSS where those are unknown). Tracing sees only blocks
    allocated since it started, so every structure whose entries are replaced (a full LRU
    cache, a pool) seems to grow at its site until all its entries are new ones, while the
    process stays flat.
    """
    if not v.is_leak:
        return v
    noisy = _within_sampling_noise(track, v, now, p)
    if noisy is not None:
        return noisy
    if track.counts is None:
        return v
    start = now - v.duration_s
    cts, cys = track.counts.window(start, now)
    if len(cts) < 4 or cts[-1] == cts[0]:
        return v
    share = p.corroboration
    site_blocks = theil_sen(*downsample(cts, cys, th.heap.max_points)).slope
    # The process must still grow in the newest part: a cache that filled while the site's
    # window began (and turns over since) grew the process early on, then no more.
    recent = max(start, now - max(v.duration_s / 2.0, p.site_min_window_s))
    heap = _level_slope(tracks, "heap", recent, now, th, low=True)
    if heap is None and "rss" not in tracks and "malloc" not in tracks:
        return v  # nothing to compare with (e.g. an agent without process numbers)
    malloc = _level_slope(tracks, "malloc", recent, now, th, low=True)
    # Blocks over pymalloc's 512 B come from malloc, and its bytes in use are exact: they
    # must show there, in bytes (in the block count a 1 KiB block weighs as much as any, and
    # the heap's own slow drift would corroborate a turnover's random walk); small ones must
    # show in the block count (malloc moves by more than they weigh). The site's mean block
    # size decides, from its latest estimates (a ratio of two slopes fitted apart strays by
    # 10 % and more); near 512 B the blocks may be either, and either corroborates.
    size = _mean_block_size(track, v, site_blocks)
    large = size > _PYMALLOC_MAX_BYTES
    either = _PYMALLOC_MAX_BYTES / _SIZE_AMBIGUITY <= size <= _PYMALLOC_MAX_BYTES * _SIZE_AMBIGUITY
    by_malloc = malloc is not None and malloc >= share * v.slope
    needed = share * site_blocks * p.block_bytes
    # The heap level's own leak verdict (its whole window) shows it too: the site is where
    # that growth is, and refusing it would leave the leak reported without its line.
    level = tracks.get("heap")
    judged = level.verdict if level is not None else None
    by_blocks = (heap is not None and heap >= needed) or (
        judged is not None and judged.is_leak and judged.slope_low >= needed
    )
    if large and malloc is not None:
        if by_malloc or (either and by_blocks):
            return v
    elif by_blocks or (either and by_malloc):
        return v
    elif malloc is None:
        # Without malloc's numbers, RSS: it creeps by itself (allocator) and climbs with
        # tracing's own work for a while, so only growth above suspicion's bar, once
        # tracing has settled, corroborates.
        settled = tracks.restarted.get("site", -math.inf) + p.tracing_settle_s
        rss = _level_slope(tracks, "rss", max(recent, settled), now, th)
        if rss is not None and rss >= max(share * v.slope, th.suspect_rss.min_slope):
            return v
    return replace(
        v,
        pattern="flat",
        reason=(
            f"turnover: the process grows less than the site ({site_blocks * HOUR:.3g} "
            "blocks/h): entries allocated since tracing started replace older ones"
        ),
    )


def _mean_block_size(track: Track, v: SeriesVerdict, site_blocks: float) -> float:
    """Bytes per block at the site: its latest byte estimate over its latest block count, else
    the window's byte slope over its block slope."""
    size = track.block_size()
    if size is not None:
        return size
    return v.slope / site_blocks if site_blocks > 0.0 else math.inf


def _within_sampling_noise(
    track: Track, v: SeriesVerdict, now: float, p: DetectionParams
) -> SeriesVerdict | None:
    """A sampled site's growth must stand out of the estimator's noise, else flat.

    Each estimate is a sum over sampled blocks: its variance is known (≈ interval × bytes for
    small blocks). The growth over the window is compared with ``z`` standard deviations of
    the difference of its two end estimates, taken as independent: an upper bound (blocks live
    at both ends were sampled once and cancel), so a stable site whose sampled blocks turn over
    never reads as growth. A leak passes once it holds about z² samples' worth of new bytes.
    """
    if track.variances is None:
        return None
    start = now - v.duration_s
    ts, vs = track.variances.window(max(start, track.segment_start), now)
    if len(vs) < 2:
        return None
    cs: list[float] | None = None
    if track.churn is not None:
        cts, cs = track.churn.window(max(start, track.segment_start), now)
        cs = cs if cts == ts else None
    growth = v.slope * (ts[-1] - ts[0])
    noise = growth_sigma(vs, cs)
    if growth > p.site_noise_z * noise:
        return None
    return replace(
        v,
        pattern="flat",
        reason=(
            f"within sampling noise: the site grew by about {growth:.3g} B over the window, "
            f"less than {p.site_noise_z:g} standard deviations ({noise:.3g} B) of its estimate"
        ),
    )


def _heap_slope(tracks: TrackTable, start: float, now: float, th: Thresholds) -> float | None:
    """Python heap slope (per second) over the same span, for the native test."""
    track = tracks.get("heap")
    if track is None:
        return None
    ts, ys = track.series.window(start, now)
    if len(ts) < 2 or ts[-1] == ts[0]:
        return None
    return theil_sen(*downsample(ts, ys, th.heap.max_points)).slope


def _level_slope(
    tracks: TrackTable,
    signal: SignalKind,
    start: float,
    now: float,
    th: Thresholds,
    *,
    low: bool = False,
) -> float | None:
    """Theil–Sen slope (per second) of a level series (``signal`` is its own key); with
    ``low``, its lower 95 % bound: a small expected rate must not be met by noise alone."""
    track = tracks.get(signal)
    if track is None:
        return None
    # From its last discontinuity on: a step there (soakd's own tables) is not growth.
    ts, ys = track.series.window(max(start, track.segment_start), now)
    if len(ts) < 4 or ts[-1] == ts[0]:
        return None
    fit = theil_sen(*downsample(ts, ys, th.heap.max_points))
    return fit.slope_low if low else fit.slope
