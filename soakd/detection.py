"""Stateful, bounded leak detector: feeds on samples, judges windows, tracks findings.

Pure: no clocks, no I/O. The supervisor calls :meth:`Detector.add` for every sample and
:meth:`Detector.analyze` every 10–30 s with the run-relative time; both are cheap enough to call
on the event loop (flat series are screened out in O(n) before the O(n²) statistics run).

Decisions, in short:

* Nothing is judged before the warm-up ends: at least ``warmup_floor_s``, then automatically
  when the growth rate of ``heap`` and ``rss`` has settled, never later than ``warmup_max_s``.
* Each series is judged on the latest ``window_s`` after warm-up (and after its last gap);
  when that window looks flat or noisy, also on its latest half and quarter, so that a leak
  that starts late is found before the flat part leaves the window, provided the recent part
  makes new highs (churn wanders within its range). The three tests share the significance
  level (Bonferroni).
* A finding is ``suspected`` on the first leak verdict, ``confirmed`` after ``confirm_after``
  consecutive ones spanning at least a quarter of the shortest window judged, and ``cleared``
  after ``confirm_after`` consecutive decisive non-leak verdicts (a plateau reached, a flush
  seen). Windows without enough fresh data change nothing.
* ``native``: RSS grows by at least ``min_native_slope_bytes_per_h`` more than the Python heap
  does, over at least ``native_min_window_s``: allocator creep (2–5 KB/s for minutes in a
  leak-free process) must not look like a leak.
* ``objects``: a type's live count grows. Not raised while a ``heap`` finding is active: the
  leaking site is the better pointer and a leak of one kind of object drags others along
  (a leaked instance also leaks its ``dict``). Growing types are listed in the heap finding's
  evidence (``signals``) instead.
* The heap-level finding (key ``heap``, no site) is hidden from :meth:`Detector.findings` while
  a site finding is active: the site says the same thing more precisely. While sites are
  traced and none has a finding, it waits ``attribution_wait_s`` before it is confirmed. The
  supervisor feeds the heap level as Python blocks × ``block_bytes`` (soakd's own blocks left
  out): continuous whether tracing or not.
* ``site`` (``heap`` kind with a line): judged on windows from ``site_min_window_s`` (traced
  bytes at one line are exact), but a site leak must show in the process as a whole, in the
  newest part of its window: its block rate in the process's block count, or, for blocks
  over 512 B, its byte rate in malloc's bytes in use (RSS, once tracing has settled, where
  those are unknown).
  Tracing sees only blocks allocated since it started, so any structure whose entries are
  replaced (a full LRU cache, a pool) seems to grow at its site until all entries are new.
* Suspicion (:meth:`Detector.suspicious`, which only turns tracing on) is judged from the
  warm-up floor on a ``suspect_window_s`` window, before the warm-up end is decided, on the
  heap level or on RSS with a low bar: the leaking site then has data when judging begins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from soakd.analysis.series import BoundedSeries, downsample
from soakd.analysis.trend import ols_fit, robust_scale, theil_sen
from soakd.analysis.verdicts import SeriesVerdict, VerdictParams, classify, warmup_end

__all__ = [
    "DetectionParams",
    "Detector",
    "Finding",
    "FindingState",
    "LeakKind",
    "SignalKind",
    "SiteInfo",
]

# ``malloc`` (bytes malloc has handed out) is kept to corroborate sites, never judged alone.
SignalKind = Literal["rss", "heap", "malloc", "site", "type", "fds", "threads", "tasks"]
LeakKind = Literal["heap", "native", "objects", "fds", "threads", "tasks"]
FindingState = Literal["suspected", "confirmed", "cleared"]
_TrackState = Literal["none", "suspected", "confirmed"]

_SIGNALS: frozenset[str] = frozenset(get_args(SignalKind))
_MIB = 1024.0 * 1024.0
_HOUR = 3600.0
# Sub-windows (fractions of the window, newest part) also judged, for leaks that start late.
_SUB_WINDOWS = (0.5, 0.25)
# Most certain first: a site names the line; counts of OS resources are unambiguous.
KIND_RANK: dict[str, int] = {
    "heap": 0,
    "native": 2,
    "fds": 3,
    "tasks": 4,
    "threads": 5,
    "objects": 6,
}
_MAX_EVIDENCE = 8
# CPython serves requests up to this size from pymalloc (counted as blocks), larger from malloc.
_PYMALLOC_MAX_BYTES = 512.0


@dataclass(frozen=True)
class DetectionParams:
    """Detector settings; slopes are per hour, durations in seconds since run start."""

    warmup_floor_s: float = 60.0  # never judge before this
    warmup_max_s: float = 600.0  # automatic warm-up end never later than this
    warmup_settle_s: float = 60.0  # data needed after a candidate warm-up end to accept it
    window_s: float = 1800.0  # analysis window: the latest N seconds after warm-up
    # Shortest window judged: a cache filling for less than this is never even suspected.
    min_window_s: float = 60.0
    min_heap_slope_bytes_per_h: float = 1.0 * _MIB
    # Allocator creep of a leak-free process reaches 2–5 KB/s (7–18 MiB/h) early on.
    min_native_slope_bytes_per_h: float = 64.0 * _MIB
    native_min_window_s: float = 600.0  # RSS-only growth must persist this long
    min_count_slope_per_h: float = 20.0  # fds, threads, tasks
    min_object_slope_per_h: float = 600.0  # live objects of one type: churn is large
    min_count_growth: float = 3.0  # a count must grow by at least this over the window
    confidence: float = 0.99
    confirm_after: int = 3  # consecutive analyses agreeing before "confirmed"
    max_sites: int = 200
    max_types: int = 200  # also the bound for keys of each other signal
    max_points: int = 512  # per series; older points are merged, recent ones kept exact
    gap_s: float = 60.0  # a pause in a series at least this long (and 5× its interval) restarts it
    # Suspicion (it only turns tracing on) is judged from the warm-up floor on, on this short a
    # window, before the warm-up end is decided: the site then has data by the time it is.
    suspect_window_s: float = 20.0
    # RSS growth that raises suspicion: far below the native bar, above most allocator creep.
    suspect_rss_slope_bytes_per_h: float = 16.0 * _MIB
    # Site series are exact (traced bytes at one line): a shorter window suffices.
    site_min_window_s: float = 30.0
    # Bytes per block for the heap level fed as blocks (``heap_blocks`` × this): a site's block
    # rate is compared with the process's block rate in these units.
    block_bytes: float = 80.0
    # A site's growth must show in the process as a whole at this share of its rate (blocks or
    # RSS), or it is turnover: blocks allocated since tracing started replacing older ones.
    corroboration: float = 0.5
    # RSS settles this long after tracing starts (tracemalloc and the agent's own tables grow):
    # before that, RSS cannot corroborate a site.
    tracing_settle_s: float = 60.0
    # While sites are traced, a heap-level finding waits this long for one to explain it before
    # it is confirmed on its own: a cache still filling shows at its exact site series as
    # slowing down (no leak) while the noisier block count still looks straight. A leak spread
    # thinly over many sites is confirmed after the wait.
    attribution_wait_s: float = 120.0

    def __post_init__(self) -> None:
        if self.warmup_max_s < self.warmup_floor_s:
            raise ValueError(
                f'"warmup_max_s" must be >= warmup_floor_s: {self.warmup_max_s} '
                f"< {self.warmup_floor_s}"
            )
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f'"confidence" must be in (0.5, 1): {self.confidence}')
        if self.confirm_after < 1:
            raise ValueError(f'"confirm_after" must be >= 1: {self.confirm_after}')
        if self.window_s < self.min_window_s:
            raise ValueError(
                f'"window_s" must be >= min_window_s: {self.window_s} < {self.min_window_s}'
            )
        for name in ("max_sites", "max_types"):
            if getattr(self, name) < 1:
                raise ValueError(f'"{name}" must be >= 1: {getattr(self, name)}')


@dataclass(frozen=True)
class SiteInfo:
    """Where an allocation site is: reported site, traceback (innermost first), source line."""

    site: str | None
    traceback: tuple[str, ...] = ()
    line: str | None = None


@dataclass(frozen=True)
class Finding:
    """A suspected, confirmed or cleared leak of one series."""

    state: FindingState
    kind: LeakKind
    key: str
    site: str | None
    traceback: tuple[str, ...]
    line: str | None
    type: str | None
    slope_per_h: float
    slope_low_per_h: float
    unit: Literal["bytes", "count"]
    growth: float
    p_value: float
    first_detected_s: float
    analyses: int
    signals: tuple[str, ...]

    def as_leak(self) -> dict[str, object]:
        """The summary.json ``leaks[]`` entry (schema soakd.summary/1)."""
        return {
            "kind": self.kind,
            "site": self.site,
            "traceback": list(self.traceback),
            "type": self.type,
            "slope_per_h": self.slope_per_h,
            "unit": self.unit,
            "growth": self.growth,
            "p_value": self.p_value,
            "first_detected_s": self.first_detected_s,
        }


@dataclass
class _Track:
    signal: SignalKind
    key: str
    series: BoundedSeries
    info: SiteInfo | None = None
    segment_start: float = -math.inf
    splice_from: float = -math.inf  # first of the latest burst of discontinuities
    typical_dt: float = 0.0
    state: _TrackState = "none"
    streak: int = 0  # consecutive leak verdicts
    streak_since: float = 0.0  # when the streak began
    misses: int = 0  # consecutive decisive non-leak verdicts while suspected/confirmed
    leak_analyses: int = 0
    first_detected_s: float = 0.0
    verdict: SeriesVerdict | None = None  # latest
    leak_verdict: SeriesVerdict | None = None  # latest that said leak
    signals: tuple[str, ...] = field(default_factory=tuple)
    counts: BoundedSeries | None = None  # site tracks: live blocks at the site

    @property
    def active(self) -> bool:
        return self.state != "none"


class Detector:
    """Bounded per-series state and the leak findings derived from it."""

    def __init__(self, params: DetectionParams | None = None) -> None:
        self.params = params or DetectionParams()
        self._groups: dict[SignalKind, dict[str, _Track]] = {}
        self._warmup: float | None = None
        self._latest_t = -math.inf
        self._restarted: dict[SignalKind, float] = {}  # latest discontinuity per signal
        self._rss_warmup: float | None = None
        self.dropped = 0  # samples refused: out of order or not finite
        alpha = (1.0 - self.params.confidence) / (1 + len(_SUB_WINDOWS))
        p = self.params
        self._heap_vp = VerdictParams(
            alpha=alpha, min_slope=p.min_heap_slope_bytes_per_h / _HOUR, min_duration_s=0.0
        )
        self._native_vp = VerdictParams(
            alpha=alpha, min_slope=p.min_native_slope_bytes_per_h / _HOUR, min_duration_s=0.0
        )
        self._count_vp = VerdictParams(
            alpha=alpha,
            min_slope=p.min_count_slope_per_h / _HOUR,
            min_growth=p.min_count_growth,
            min_duration_s=0.0,
        )
        self._object_vp = replace(self._count_vp, min_slope=p.min_object_slope_per_h / _HOUR)
        self._suspect_rss_vp = replace(
            self._native_vp, min_slope=p.suspect_rss_slope_bytes_per_h / _HOUR
        )

    # -- feeding ---------------------------------------------------------------------------

    def add(
        self,
        signal: SignalKind,
        key: str,
        t: float,
        value: float,
        info: SiteInfo | None = None,
        count: float | None = None,
    ) -> None:
        """Record one sample; out-of-order or non-finite samples are counted in ``dropped``.

        ``count``: for a site, its live blocks (checks that its growth shows in the process).
        """
        if signal not in _SIGNALS:
            raise ValueError(f"unknown signal {signal!r}: expected one of {sorted(_SIGNALS)}")
        if not (math.isfinite(t) and math.isfinite(value)):
            self.dropped += 1
            return
        group = self._groups.setdefault(signal, {})
        track = group.get(key)
        if track is None:
            track = _Track(signal, key, BoundedSeries(self.params.max_points))
            group[key] = track
            limit = self.params.max_sites if signal == "site" else self.params.max_types
            if len(group) > limit:
                self._evict(group, limit, t)
                if key not in group:
                    return
        last = track.series.last
        if last is not None:
            dt = t - last[0]
            if dt < 0.0:
                self.dropped += 1
                return
            if dt >= max(self.params.gap_s, 5.0 * track.typical_dt):
                # A long pause (tracing restarted, site back in the top N): bytes counted before
                # it are not comparable with those after, so judge only the new segment.
                track.segment_start = t
            else:
                track.typical_dt = (
                    dt if track.typical_dt == 0.0 else 0.8 * track.typical_dt + 0.2 * dt
                )
        if info is not None:
            track.info = info
        track.series.append(t, value)
        if count is not None and math.isfinite(count):
            if track.counts is None:
                track.counts = BoundedSeries(self.params.max_points)
            track.counts.append(t, count)
        self._latest_t = max(self._latest_t, t)

    def mark_discontinuity(self, signal: SignalKind, t: float) -> None:
        """Judge ``signal``'s series only from ``t`` on (e.g. tracemalloc was restarted)."""
        self._restarted[signal] = max(self._restarted.get(signal, -math.inf), t)
        for track in self._groups.get(signal, {}).values():
            if t - track.segment_start > self.params.gap_s:
                track.splice_from = t  # a new burst (several marks while soakd's tables grow)
            track.segment_start = max(track.segment_start, t)

    def _evict(self, group: dict[str, _Track], limit: int, now: float) -> None:
        """Shrink a group to 3/4 of its limit (amortised); keep findings, fresh and big series."""
        stale_before = now - self.params.gap_s

        def keep_score(track: _Track) -> tuple[bool, bool, float]:
            last = track.series.last
            fresh = last is not None and last[0] >= stale_before
            return track.active, fresh, last[1] if last is not None else -math.inf

        ranked = sorted(group.values(), key=keep_score, reverse=True)
        for track in ranked[max(1, (limit * 3) // 4) :]:
            del group[track.key]

    # -- judging ---------------------------------------------------------------------------

    def warmup_end(self) -> float | None:
        """When warm-up ended (seconds since start), or None while it has not been decided."""
        return self._warmup

    def _decide_warmup(self, now: float) -> float | None:
        """The warm-up end: from the Python heap level (RSS when there is none)."""
        p = self.params
        if self._warmup is not None or now < p.warmup_floor_s:
            return self._warmup
        signal: SignalKind = "heap" if "heap" in self._groups else "rss"
        end = self._settled(signal, now)
        if end is not None:
            self._warmup = end
            if signal == "rss":
                self._rss_warmup = end
        return self._warmup

    def _decide_rss_warmup(self, now: float) -> float | None:
        """When RSS settled, decided on its own: RSS also climbs for a minute after tracing
        starts (the agent's and tracemalloc's tables), which must not hold back every verdict.
        """
        if self._rss_warmup is None and now >= self.params.warmup_floor_s:
            self._rss_warmup = self._settled("rss", now)
        return self._rss_warmup

    def _settled(self, signal: SignalKind, now: float) -> float | None:
        """When ``signal``'s level stopped warming up, or None while undecided."""
        p = self.params
        track = self._groups.get(signal, {}).get(signal)
        if track is None:
            return p.warmup_floor_s if now >= p.warmup_floor_s + p.warmup_settle_s else None
        vp = self._heap_vp if signal == "heap" else self._native_vp
        ts, ys = track.series.window(-math.inf, now)
        ts, ys = _splice(ts, ys, track.splice_from, track.segment_start)
        # A sample or two short of the span is enough: samples and analyses tick separately.
        span = max(p.warmup_settle_s - 2.0 * track.typical_dt, 0.75 * p.warmup_settle_s)
        end = warmup_end(
            ts, ys, p.warmup_floor_s, p.warmup_max_s, min_span_s=span, min_slope=vp.min_slope
        )
        if end < p.warmup_max_s or now >= p.warmup_max_s:
            return end
        return None

    def _params_for(self, signal: SignalKind) -> tuple[VerdictParams, float]:
        p = self.params
        if signal == "site":
            return self._heap_vp, min(p.site_min_window_s, p.min_window_s)
        if signal == "heap":
            return self._heap_vp, p.min_window_s
        if signal == "rss":
            return self._native_vp, max(p.min_window_s, p.native_min_window_s)
        if signal == "type":
            return self._object_vp, p.min_window_s
        return self._count_vp, p.min_window_s

    def _judge(
        self, track: _Track, now: float, warmup: float, vp: VerdictParams, min_window: float
    ) -> SeriesVerdict:
        """Verdict on the track's window, then on its newest half and quarter (late onset)."""
        start = max(warmup, now - self.params.window_s, track.segment_start)
        ts, ys = track.series.window(start, now)
        if not ts:
            return SeriesVerdict("insufficient", 0.0, 0.0, 1.0, 0.0, "no samples in window")
        stale = max(self.params.gap_s, 5.0 * track.typical_dt)
        if now - ts[-1] > stale:
            # The series stopped (site left the top N, tracing off): no news is no verdict.
            return SeriesVerdict("insufficient", 0.0, 0.0, 1.0, 0.0, "no recent samples")
        # A window one or two sampling intervals short of the minimum is long enough: samples
        # and analyses tick on separate schedules.
        min_window = max(min_window - 2.0 * track.typical_dt, 0.75 * min_window)
        full = _prescreen(ts, ys, vp, min_window) or classify(ts, ys, vp)
        if full.pattern not in ("flat", "noise"):
            # Only a window flat or noisy overall may hide a late leak; a sawtooth or a step
            # seen whole must not be re-judged on a part that shows only one rising tooth.
            return full
        span = ts[-1] - ts[0]
        floor = full.noise
        for fraction in _SUB_WINDOWS:
            if span * fraction < min_window:
                break
            cut = ts[-1] - span * fraction
            first = next(i for i, t in enumerate(ts) if t >= cut)
            sub_ts, sub_ys = ts[first:], ys[first:]
            if _prescreen(sub_ts, sub_ys, vp, min_window) is not None:
                continue
            if floor == 0.0:
                # Computed only now: most series are screened out above and never need it.
                floor = _residual_noise(ts, ys, vp.max_points)
            sub = classify(sub_ts, sub_ys, vp, noise_floor=floor)
            # A leak that starts late makes the newest part grow faster than the whole window;
            # a structure still filling (a pool turning over since tracing started) slower.
            if sub.is_leak and sub.slope > full.slope and _new_high(ys[:first], sub_ys):
                return sub
        return full

    def _heap_slope(self, start: float, now: float) -> float | None:
        """Python heap slope (per second) over the same span, for the native test."""
        track = self._groups.get("heap", {}).get("heap")
        if track is None:
            return None
        ts, ys = track.series.window(start, now)
        if len(ts) < 2 or ts[-1] == ts[0]:
            return None
        return theil_sen(*downsample(ts, ys, self._heap_vp.max_points)).slope

    def _native_verdict(self, track: _Track, v: SeriesVerdict, now: float) -> SeriesVerdict:
        if not v.is_leak:
            return v
        heap_slope = self._heap_slope(now - v.duration_s, now)
        if heap_slope is None:
            return v
        # Leaking sites explain RSS growth too (few large blocks barely move the block count).
        sites = math.fsum(
            t.verdict.slope
            for t in self._groups.get("site", {}).values()
            if t.verdict is not None and t.verdict.is_leak
        )
        heap_slope = max(heap_slope, sites)
        excess = v.slope_low - max(0.0, heap_slope)
        if excess <= self._native_vp.min_slope:
            return replace(
                v,
                pattern="flat",
                reason=f"RSS growth explained by Python heap growth ({heap_slope * _HOUR:.3g}/h)",
            )
        return v

    def _slope(
        self, signal: SignalKind, start: float, now: float, *, low: bool = False
    ) -> float | None:
        """Theil–Sen slope (per second) of a level series (``signal`` is its own key); with
        ``low``, its lower 95 % bound: a small expected rate must not be met by noise alone."""
        track = self._groups.get(signal, {}).get(signal)
        if track is None:
            return None
        # From its last discontinuity on: a step there (soakd's own tables) is not growth.
        ts, ys = track.series.window(max(start, track.segment_start), now)
        if len(ts) < 4 or ts[-1] == ts[0]:
            return None
        fit = theil_sen(*downsample(ts, ys, self._heap_vp.max_points))
        return fit.slope_low if low else fit.slope

    def _site_verdict(self, track: _Track, v: SeriesVerdict, now: float) -> SeriesVerdict:
        """A site leak must show in the whole process: its blocks in the block count, or its
        bytes in malloc's bytes in use (in RSS where those are unknown). Tracing sees only blocks
        allocated since it started, so every structure whose entries are replaced (a full LRU
        cache, a pool) seems to grow at its site until all its entries are new ones, while the
        process stays flat.
        """
        if not v.is_leak or track.counts is None:
            return v
        p = self.params
        start = now - v.duration_s
        cts, cys = track.counts.window(start, now)
        if len(cts) < 4 or cts[-1] == cts[0]:
            return v
        share = p.corroboration
        site_blocks = theil_sen(*downsample(cts, cys, self._heap_vp.max_points)).slope
        # The process must still grow in the newest part: a cache that filled while the site's
        # window began (and turns over since) grew the process early on, then no more.
        recent = max(start, now - max(v.duration_s / 2.0, p.site_min_window_s))
        heap = self._slope("heap", recent, now, low=True)
        if heap is None and "rss" not in self._groups and "malloc" not in self._groups:
            return v  # nothing to compare with (e.g. an agent without process numbers)
        if heap is not None and heap >= share * site_blocks * p.block_bytes:
            return v
        malloc = self._slope("malloc", recent, now, low=True)
        if malloc is not None:
            # Blocks over pymalloc's 512 B come from malloc, and its bytes in use are exact;
            # small ones must show in the block count (malloc moves by more than they weigh).
            large = v.slope > _PYMALLOC_MAX_BYTES * max(site_blocks, 0.0)
            if large and malloc >= share * v.slope:
                return v
        else:
            # Without malloc's numbers, RSS: it creeps by itself (allocator) and climbs with
            # tracing's own work for a while, so only growth above suspicion's bar, once
            # tracing has settled, corroborates.
            settled = self._restarted.get("site", -math.inf) + p.tracing_settle_s
            rss = self._slope("rss", max(recent, settled), now)
            if rss is not None and rss >= max(share * v.slope, self._suspect_rss_vp.min_slope):
                return v
        return replace(
            v,
            pattern="flat",
            reason=(
                f"turnover: the process grows less than the site ({site_blocks * _HOUR:.3g} "
                "blocks/h): entries allocated since tracing started replace older ones"
            ),
        )

    def analyze(self, now: float) -> list[Finding]:
        """Judge every series at ``now``; returns the findings whose state changed."""
        warmup = self._decide_warmup(now)
        if warmup is None:
            return []
        # Heap-kind signals first: native and objects decisions look at them.
        order: tuple[SignalKind, ...] = ("site", "heap", "rss", "fds", "threads", "tasks", "type")
        changes: list[tuple[_Track, FindingState]] = []
        for signal in order:
            for track in self._groups.get(signal, {}).values():
                vp, min_window = self._params_for(signal)
                if signal == "rss":
                    rss_warmup = self._decide_rss_warmup(now)
                    if rss_warmup is None:
                        continue
                    verdict = self._judge(track, now, max(warmup, rss_warmup), vp, min_window)
                    verdict = self._native_verdict(track, verdict, now)
                else:
                    verdict = self._judge(track, now, warmup, vp, min_window)
                if signal == "site":
                    verdict = self._site_verdict(track, verdict, now)
                track.verdict = verdict
                change = self._step(track, verdict, now)
                if change is not None:
                    changes.append((track, change))
        self._refresh_evidence()
        return [self._finding(track, state) for track, state in changes]

    def _heap_active(self) -> bool:
        heap_kind: tuple[SignalKind, ...] = ("site", "heap")
        return any(t.active for s in heap_kind for t in self._groups.get(s, {}).values())

    def _awaiting_attribution(self, since: float, now: float) -> bool:
        """True while sites are traced, none has a finding, and the wait has not run out."""
        if now - since >= self.params.attribution_wait_s:
            return False
        sites = self._groups.get("site", {}).values()
        if any(t.active for t in sites):
            return False
        return any(
            (last := t.series.last) is not None and now - last[0] <= self.params.gap_s
            for t in sites
        )

    def _confirm_span(self, signal: SignalKind) -> float:
        """How long a streak of leak verdicts must last before it confirms a finding."""
        _, min_window = self._params_for(signal)
        return 0.25 * min(min_window, self.params.min_window_s)

    def _step(self, track: _Track, verdict: SeriesVerdict, now: float) -> FindingState | None:
        """Advance one track's state machine; returns the new state when it changed."""
        if not verdict.decisive:
            return None
        confirm = self.params.confirm_after
        if verdict.is_leak:
            track.streak += 1
            if track.streak == 1:
                track.streak_since = now
            track.misses = 0
            track.leak_verdict = verdict
            # Persistence in time too, however often analyses run: a one-off step near the
            # window's end reads as growth for a few analyses, until the flat part after it shows.
            persisted = track.streak >= confirm and (
                confirm == 1 or now - track.streak_since >= self._confirm_span(track.signal)
            )
            if persisted and track.signal == "heap":
                since = track.first_detected_s if track.state != "none" else now
                persisted = not self._awaiting_attribution(since, now)
            if track.state == "none":
                if track.signal == "type" and self._heap_active():
                    return None
                track.state = "confirmed" if persisted else "suspected"
                track.first_detected_s = now
                track.leak_analyses = 1
                return track.state
            track.leak_analyses += 1
            if track.state == "suspected" and persisted:
                track.state = "confirmed"
                return "confirmed"
            return None
        track.streak = 0
        if track.state == "none":
            return None
        track.misses += 1
        if track.misses >= confirm:
            track.state = "none"
            track.misses = 0
            return "cleared"
        return None

    def _refresh_evidence(self) -> None:
        """Each active finding's ``signals``: its own verdict plus agreeing series."""
        leaking = [
            t
            for group in self._groups.values()
            for t in group.values()
            if t.verdict is not None and t.verdict.is_leak
        ]
        for group in self._groups.values():
            for track in group.values():
                if not track.active and track.leak_verdict is None:
                    continue
                own = [_describe(track)]
                related: tuple[str, ...]
                if track.signal in ("site", "heap"):
                    related = ("site", "heap", "rss", "type")
                elif track.signal == "rss":
                    related = ("heap",)
                else:
                    related = (track.signal,)
                others = [_describe(t) for t in leaking if t is not track and t.signal in related]
                if track.signal == "rss" and track.verdict is not None:
                    heap = self._groups.get("heap", {}).get("heap")
                    if heap is not None and heap.verdict is not None:
                        others = [_describe(heap)]
                track.signals = tuple((own + others)[:_MAX_EVIDENCE])

    # -- reading ---------------------------------------------------------------------------

    def _finding(self, track: _Track, state: FindingState) -> Finding:
        v = track.leak_verdict or track.verdict
        assert v is not None  # a state change always follows a verdict
        info = track.info
        kind: LeakKind
        site: str | None = None
        traceback: tuple[str, ...] = ()
        line: str | None = None
        type_name: str | None = None
        unit: Literal["bytes", "count"] = "count"
        if track.signal == "site":
            kind, unit = "heap", "bytes"
            site = (info.site if info is not None else None) or track.key
            traceback = info.traceback if info is not None and info.traceback else (track.key,)
            line = info.line if info is not None else None
        elif track.signal == "heap":
            kind, unit = "heap", "bytes"
        elif track.signal == "rss" or track.signal == "malloc":  # (malloc is never judged)
            kind, unit = "native", "bytes"
        elif track.signal == "type":
            kind, type_name = "objects", track.key
        else:
            kind = track.signal  # fds, threads, tasks: the leak kind is the signal's name
        return Finding(
            state=state,
            kind=kind,
            key=track.key,
            site=site,
            traceback=traceback,
            line=line,
            type=type_name,
            slope_per_h=v.slope * _HOUR,
            slope_low_per_h=v.slope_low * _HOUR,
            unit=unit,
            growth=v.growth,
            p_value=v.p_value,
            first_detected_s=track.first_detected_s,
            analyses=track.leak_analyses,
            signals=track.signals,
        )

    def findings(self) -> list[Finding]:
        """Current suspected and confirmed findings, most certain first."""
        active = [t for group in self._groups.values() for t in group.values() if t.active]
        site_active = any(t.signal == "site" for t in active)
        out = [
            self._finding(t, "confirmed" if t.state == "confirmed" else "suspected")
            for t in active
            if not (site_active and t.signal == "heap")
        ]
        out.sort(key=_certainty)
        return out

    def last_verdict(self, signal: SignalKind, key: str | None = None) -> SeriesVerdict | None:
        """The latest verdict on one series (``key`` defaults to the signal's name)."""
        track = self._groups.get(signal, {}).get(key if key is not None else signal)
        return track.verdict if track is not None else None

    def tracked(self, signal: SignalKind) -> int:
        """How many series of ``signal`` are held."""
        return len(self._groups.get(signal, {}))

    def suspicious(self, now: float) -> bool:
        """True when heap, malloc, RSS or object counts rise and no site explains it yet.

        Meant for starting tracemalloc on suspicion: more eager than a confirmed finding (a
        shorter window, from the floor on; malloc and RSS at ``suspect_rss_slope_bytes_per_h``).
        """
        p = self.params
        if now < p.warmup_floor_s:
            return False
        if any(t.active for t in self._groups.get("site", {}).values()):
            return False
        window = min(p.suspect_window_s, p.min_window_s)
        # Until the warm-up end is decided, the window just before now: waiting for a full
        # window after the floor would start tracing (and so attribution) that much later.
        warmup = self._warmup if self._warmup is not None else now - window
        levels: tuple[tuple[SignalKind, VerdictParams], ...] = (
            ("heap", self._heap_vp),
            ("malloc", self._suspect_rss_vp),  # large objects barely move the block count
            ("rss", self._suspect_rss_vp),
        )
        for signal, vp in levels:
            track = self._groups.get(signal, {}).get(signal)
            if track is None:
                continue
            if self._judge(track, now, warmup, vp, window).is_leak:
                return True
        return any(
            t.verdict is not None and t.verdict.is_leak
            for t in self._groups.get("type", {}).values()
        )


def _prescreen(
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


def _splice(
    ts: list[float], ys: list[float], start: float, end: float
) -> tuple[list[float], list[float]]:
    """The series without its samples in [start, end) and with the step across them removed.

    For the warm-up decision, which looks at the whole series: soakd's own tables growing
    when tracing starts must not read as a level still warming up.
    """
    cut = next((i for i, t in enumerate(ts) if t >= start), len(ts))
    resume = next((i for i, t in enumerate(ts) if t >= end), len(ts))
    if cut < 3 or len(ts) - resume < 3:
        return ts, ys
    before = sorted(ys[cut - 3 : cut])[1]
    after = sorted(ys[resume : resume + 3])[1]
    return ts[:cut] + ts[resume:], ys[:cut] + [y - (after - before) for y in ys[resume:]]


def _residual_noise(ts: list[float], ys: list[float], max_points: int) -> float:
    """Robust σ around the least-squares line, on the binned window (as classify sees it)."""
    bt, by = downsample(ts, ys, max_points)
    slope, icpt = ols_fit(bt, by)
    return robust_scale([y - (icpt + slope * t) for t, y in zip(bt, by, strict=True)])


def _new_high(before: list[float], recent: list[float]) -> bool:
    """True when the recent part ends above everything before it.

    A leak keeps making new highs; churn that wanders up inside a short stretch stays within
    the range it has already visited.
    """
    if not before:
        return True
    tail = sorted(recent[-max(3, len(recent) // 10) :])
    return tail[len(tail) // 2] > max(before)


def _certainty(f: Finding) -> tuple[int, int, float, float]:
    """Sort key: confirmed first, then kind; most-grown first for bytes, lowest p for counts."""
    rank = KIND_RANK[f.kind] + (1 if f.kind == "heap" and f.site is None else 0)
    if f.unit == "bytes":
        return (0 if f.state == "confirmed" else 1, rank, -f.growth, f.p_value)
    return (0 if f.state == "confirmed" else 1, rank, f.p_value, -f.growth)


def _describe(track: _Track) -> str:
    v = track.verdict
    name = track.signal if track.key == track.signal else f"{track.signal}:{track.key}"
    if v is None:
        return name
    return f"{name} {v.pattern} {v.slope * _HOUR:+.3g}/h p={v.p_value:.2g}"
