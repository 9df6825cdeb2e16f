"""The detector's bounded memory: one :class:`Track` per series, held in a :class:`TrackTable`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from soakd.analysis.series import BoundedSeries
from soakd.analysis.verdicts import SeriesVerdict
from soakd.detection.kinds import SIGNALS, SignalKind
from soakd.detection.params import DetectionParams

__all__ = ["SampledNoise", "SiteInfo", "Track", "TrackState", "TrackTable"]

TrackState = Literal["none", "suspected", "confirmed"]


@dataclass(frozen=True)
class SiteInfo:
    """Where an allocation site is: reported site, traceback (innermost first), source line."""

    site: str | None
    traceback: tuple[str, ...] = ()
    line: str | None = None


class SampledNoise(NamedTuple):
    """What a site estimated from sampled allocations comes with."""

    variance: float  # of the estimate
    churn: float  # cumulative variance terms of its sampled allocations and frees
    coarse: float = 0.0  # live samples taken at an interval coarser than ``interval``
    interval: float = 0.0  # the profile's mean sampling interval then (0: unknown)


# Interval changes remembered (zooms are held for minutes: a few cover any window).
_MAX_INTERVAL_CHANGES = 16


@dataclass
class Track:
    """One series (a signal and its key), its segment bookkeeping and its finding's state.

    Written by :class:`TrackTable` (samples, gaps) and by the finding state machine
    (``state``, streaks, verdicts, evidence).
    """

    signal: SignalKind
    key: str
    series: BoundedSeries
    info: SiteInfo | None = None
    segment_start: float = -math.inf
    splice_from: float = -math.inf  # first of the latest burst of discontinuities
    typical_dt: float = 0.0
    state: TrackState = "none"
    streak: int = 0  # consecutive leak verdicts
    streak_since: float = 0.0  # when the streak began
    streak_data_t: float = 0.0  # the series' latest sample when the streak began
    misses: int = 0  # consecutive decisive non-leak verdicts while suspected/confirmed
    stopped_since: float | None = None  # a confirmed finding's growth has looked stopped since
    confirmed_s: float = 0.0  # when the finding was last confirmed
    leak_analyses: int = 0
    first_detected_s: float = 0.0  # the first suspicion of the current episode
    dropped_s: float = -math.inf  # when a suspicion was last dropped unconfirmed
    verdict: SeriesVerdict | None = None  # latest
    leak_verdict: SeriesVerdict | None = None  # latest that said leak
    signals: tuple[str, ...] = field(default_factory=tuple)
    counts: BoundedSeries | None = None  # site tracks: live blocks at the site
    # Site tracks from the sampled profiler: the variance of each size estimate, and the
    # cumulative variance terms (squared weights, less for large blocks) of the site's sampled
    # allocations and frees.
    variances: BoundedSeries | None = None
    churn: BoundedSeries | None = None
    coarse: BoundedSeries | None = None  # live samples coarser than the interval then

    @property
    def active(self) -> bool:
        return self.state != "none"

    def block_size(self) -> float | None:
        """Bytes per live block at a site: its latest byte estimate over its block count taken
        with it; None without both (not a site, or no block counted)."""
        last, count = self.series.last, self.counts.last if self.counts is not None else None
        if last is not None and count is not None and count[0] == last[0] and count[1] > 0.0:
            return last[1] / count[1]
        return None


class TrackTable:
    """Every series by signal and key, bounded per signal; gaps and discontinuities.

    Collaborator: :class:`DetectionParams` (bounds, ``gap_s``, ``max_points``). Groups keep
    insertion order, which fixes the order findings are listed in before they are sorted.
    """

    def __init__(self, params: DetectionParams) -> None:
        self.params = params
        self._groups: dict[SignalKind, dict[str, Track]] = {}
        self.restarted: dict[SignalKind, float] = {}  # latest discontinuity per signal
        self.collected_at = -math.inf  # the target's latest full collection we know of
        self.dropped = 0  # samples refused: out of order or not finite
        # The sampled profile's interval: (since, bytes) at each change, oldest first.
        self.intervals: list[tuple[float, float]] = []

    def __contains__(self, signal: SignalKind) -> bool:
        """Whether ``signal`` has ever had a series (a group outlives eviction)."""
        return signal in self._groups

    def get(self, signal: SignalKind, key: str | None = None) -> Track | None:
        """One series; ``key`` defaults to the signal's name (the level series)."""
        return self._groups.get(signal, {}).get(key if key is not None else signal)

    def of(self, signal: SignalKind) -> Iterator[Track]:
        """Every series of ``signal``."""
        yield from self._groups.get(signal, {}).values()

    def __iter__(self) -> Iterator[Track]:
        """Every series, signal by signal in the order they first appeared."""
        for group in self._groups.values():
            yield from group.values()

    def count(self, signal: SignalKind) -> int:
        return len(self._groups.get(signal, {}))

    def add(
        self,
        signal: SignalKind,
        key: str,
        t: float,
        value: float,
        info: SiteInfo | None = None,
        count: float | None = None,
        noise: SampledNoise | None = None,
    ) -> None:
        """Record one sample; out-of-order or non-finite samples are counted in ``dropped``."""
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}: expected one of {sorted(SIGNALS)}")
        if not (math.isfinite(t) and math.isfinite(value)):
            self.dropped += 1
            return
        group = self._groups.setdefault(signal, {})
        track = group.get(key)
        if track is None:
            self._drop_stale(group, t)
            track = Track(signal, key, BoundedSeries(self.params.max_points))
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
        if noise is not None and all(math.isfinite(x) for x in noise):
            noise = SampledNoise(*noise)
            if track.variances is None or track.churn is None or track.coarse is None:
                track.variances = BoundedSeries(self.params.max_points)
                track.churn = BoundedSeries(self.params.max_points)
                track.coarse = BoundedSeries(self.params.max_points)
            track.variances.append(t, noise.variance)
            track.churn.append(t, noise.churn)
            track.coarse.append(t, noise.coarse)
            if noise.interval > 0.0:
                self._note_interval(t, noise.interval)

    def _note_interval(self, t: float, interval: float) -> None:
        if self.intervals and self.intervals[-1][1] == interval:
            return
        if self.intervals and t < self.intervals[-1][0]:
            return  # out of order: the change is already known
        self.intervals.append((t, interval))
        del self.intervals[:-_MAX_INTERVAL_CHANGES]

    def latest_zoom(self, t: float) -> tuple[float, float] | None:
        """The latest change of the sampled profile to a finer interval seen by ``t``: (when,
        the coarsest interval in force before it); None when there was none, or the profile
        has since gone back to a coarser one (no block is undersampled then)."""
        seen = [(since, interval) for since, interval in self.intervals if since <= t]
        if len(seen) >= 2 and seen[-1][1] < seen[-2][1]:
            return seen[-1][0], max(interval for _, interval in seen[:-1])
        return None

    def mark_discontinuity(self, signal: SignalKind, t: float) -> None:
        """Judge ``signal``'s series only from ``t`` on (e.g. tracemalloc was restarted)."""
        self.restarted[signal] = max(self.restarted.get(signal, -math.inf), t)
        for track in self.of(signal):
            if t - track.segment_start > self.params.gap_s:
                track.splice_from = t  # a new burst (several marks while soakd's tables grow)
            track.segment_start = max(track.segment_start, t)

    def _drop_stale(self, group: dict[str, Track], now: float) -> None:
        """Forget series that stopped (their site or type left the top N) and hold no finding.

        Were one to come back, :meth:`add` would judge it from its return only (the gap
        restarts its segment), so its old points are dead weight; and each series holds its
        full capacity, so keeping every key ever seen (until the group's bound) grew the
        supervisor for hours as the sampled profiler kept finding rare sites.
        """
        stale = [
            key
            for key, track in group.items()
            if not track.active
            and (last := track.series.last) is not None
            and now - last[0] >= max(self.params.gap_s, 5.0 * track.typical_dt)
        ]
        for key in stale:
            del group[key]

    def _evict(self, group: dict[str, Track], limit: int, now: float) -> None:
        """Shrink a group to 3/4 of its limit (amortised); keep findings, fresh and big series."""
        stale_before = now - self.params.gap_s

        def keep_score(track: Track) -> tuple[bool, bool, float]:
            last = track.series.last
            fresh = last is not None and last[0] >= stale_before
            return track.active, fresh, last[1] if last is not None else -math.inf

        ranked = sorted(group.values(), key=keep_score, reverse=True)
        for track in ranked[max(1, (limit * 3) // 4) :]:
            del group[track.key]
