"""Findings: the per-series state machine (suspected → confirmed → cleared), the
:class:`Finding` it reports, its evidence and the certainty order findings are listed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from soakd.analysis.verdicts import SeriesVerdict
from soakd.detection.kinds import KIND_RANK, LeakKind, SignalKind
from soakd.detection.params import HOUR, DetectionParams
from soakd.detection.tracks import Track, TrackTable
from soakd.detection.windows import Thresholds

__all__ = [
    "Finding",
    "FindingState",
    "StateMachine",
    "certainty",
    "finding_of",
    "refresh_evidence",
]

FindingState = Literal["suspected", "confirmed", "cleared"]

_MAX_EVIDENCE = 8


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
    # Why the latest verdict said what it did: for a cleared finding, what turned it.
    reason: str = ""

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


class StateMachine:
    """Advances each track's finding on a decisive verdict.

    A finding is suspected on the first leak verdict, confirmed after ``confirm_after``
    consecutive ones spanning a quarter of the shortest window judged, and cleared after
    ``confirm_after`` consecutive decisive non-leak verdicts. Collaborators: the
    :class:`TrackTable` (other findings hold back ``objects`` and the bare heap level),
    :class:`DetectionParams` and :class:`Thresholds` (the shortest windows).
    """

    def __init__(self, tracks: TrackTable, params: DetectionParams, th: Thresholds) -> None:
        self._tracks = tracks
        self._params = params
        self._th = th

    def step(
        self, track: Track, verdict: SeriesVerdict, now: float, *, hold: bool = False
    ) -> FindingState | None:
        """Advance one track's state machine; returns the new state when it changed. With
        ``hold`` (the warm-up end is not decided yet) a finding is at most suspected."""
        if not verdict.decisive:
            return None
        confirm = self._params.confirm_after
        if verdict.is_leak:
            track.streak += 1
            last = track.series.last
            if track.streak == 1:
                track.streak_since = now
                track.streak_data_t = last[0] if last is not None else now
            track.misses = 0
            track.leak_verdict = verdict
            # Persistence in time too, however often analyses run: a one-off step near the
            # window's end reads as growth for a few analyses, until the flat part after it shows.
            # And on data newer than what started it: analyses outpace slow series (object
            # counts), and re-judging one sample thrice is not three agreeing analyses.
            persisted = self._persisted(track, now)
            if persisted and track.signal == "heap":
                since = track.first_detected_s if track.state != "none" else now
                persisted = not self._awaiting_attribution(since, now)
            if persisted and track.signal in ("heap", "site", "type"):
                persisted = not self._awaiting_collection(track, now)
            persisted = persisted and not hold
            track.stopped_since = None
            if track.state == "none":
                if track.signal == "type" and self._heap_active():
                    return None
                track.state = "confirmed" if persisted else "suspected"
                if persisted:
                    track.confirmed_s = now
                # A suspicion dropped moments ago and back: the same episode, its first sign.
                if now - track.dropped_s > self._episode_gap(track.signal):
                    track.first_detected_s = now
                    track.leak_analyses = 0
                track.leak_analyses += 1
                return track.state
            track.leak_analyses += 1
            if track.state == "suspected" and persisted:
                track.state = "confirmed"
                track.confirmed_s = now
                return "confirmed"
            return None
        track.streak = 0
        if track.state == "none":
            return None
        if track.state == "confirmed":
            return self._maybe_clear_confirmed(track, verdict, now)
        track.misses += 1
        if track.misses >= confirm:
            track.state = "none"
            track.misses = 0
            track.dropped_s = now
            return "cleared"
        return None

    def _maybe_clear_confirmed(
        self, track: Track, verdict: SeriesVerdict, now: float
    ) -> FindingState | None:
        """Hysteresis: a confirmed leak whose window merely fails the test again (a weak leak
        near the noise, a sawtooth riding on it) is still the same leak. Only evidence that the
        growth stopped or slowed clears it, and only once that evidence has held for a whole
        shortest window: then a window lies entirely after the growth stopped."""
        span = self._clear_span(track.signal)
        if not (
            _stopped(verdict, track.leak_verdict)
            or growth_turned(track, track.leak_verdict, now, self._th.heap.alpha)
        ):
            track.misses = 0
            track.stopped_since = None
            return None
        if track.stopped_since is None:
            track.stopped_since = now
        track.misses += 1
        if track.misses < self._params.confirm_after:
            return None
        if now - track.stopped_since < span:
            return None
        track.state = "none"
        track.misses = 0
        track.stopped_since = None
        return "cleared"

    def _heap_active(self) -> bool:
        heap_kind: tuple[SignalKind, ...] = ("site", "heap")
        return any(t.active for s in heap_kind for t in self._tracks.of(s))

    def _persisted(self, track: Track, now: float) -> bool:
        """The streak of leak verdicts is long enough to confirm: in analyses, in time, and on
        data newer than what started it."""
        confirm = self._params.confirm_after
        last = track.series.last
        return track.streak >= confirm and (
            confirm == 1
            or (
                now - track.streak_since >= self._confirm_span(track.signal)
                and last is not None
                and last[0] > track.streak_data_t
            )
        )

    def established(self, track: Track, now: float) -> bool:
        """Confirmed, or its growth has persisted as a confirmed finding's must, through a full
        collection (cyclic garbage is not it), and only a site to explain it is awaited."""
        return track.state == "confirmed" or (
            track.state == "suspected"
            and self._persisted(track, now)
            and not self._awaiting_collection(track, now)
        )

    def _awaiting_attribution(self, since: float, now: float) -> bool:
        """True while sites are traced, none is confirmed, and the wait has not run out: a
        suspected site is the explanation coming, not a reason to report the level alone."""
        if now - since >= self._params.attribution_wait_s:
            return False
        if any(t.state == "confirmed" for t in self._tracks.of("site")):
            return False
        return any(
            (last := t.series.last) is not None and now - last[0] <= self._params.gap_s
            for t in self._tracks.of("site")
        )

    def _awaiting_collection(self, track: Track, now: float) -> bool:
        """True while no full collection has run since the streak began (and the wait for
        one has not run out)."""
        if not self._params.collection_check:
            return False
        if self._tracks.collected_at >= track.streak_since:
            return False
        return now - track.streak_since < self._params.attribution_wait_s

    def _shortest_window(self, signal: SignalKind) -> float:
        _, min_window = self._th.for_signal(signal, self._params)
        return min(min_window, self._params.min_window_s)

    def _clear_span(self, signal: SignalKind) -> float:
        """How long a confirmed leak must look stopped before it is cleared."""
        return self._shortest_window(signal)

    def _episode_gap(self, signal: SignalKind) -> float:
        """A suspicion back within this long of being dropped continues its episode."""
        _, min_window = self._th.for_signal(signal, self._params)
        return max(min_window, self._params.min_window_s)

    def _confirm_span(self, signal: SignalKind) -> float:
        """How long a streak of leak verdicts must last before it confirms a finding."""
        return 0.25 * self._shortest_window(signal)


def finding_of(track: Track, state: FindingState) -> Finding:
    """The finding a track reports, from its latest leak verdict."""
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
        slope_per_h=v.slope * HOUR,
        slope_low_per_h=v.slope_low * HOUR,
        unit=unit,
        growth=v.growth,
        p_value=v.p_value,
        first_detected_s=track.first_detected_s,
        analyses=track.leak_analyses,
        signals=track.signals,
        reason=(track.verdict or v).reason,
    )


def certainty(f: Finding) -> tuple[int, int, float, float]:
    """Sort key: confirmed first, then kind; most-grown first for bytes, lowest p for counts."""
    rank = KIND_RANK[f.kind] + (1 if f.kind == "heap" and f.site is None else 0)
    if f.unit == "bytes":
        return (0 if f.state == "confirmed" else 1, rank, -f.growth, f.p_value)
    return (0 if f.state == "confirmed" else 1, rank, f.p_value, -f.growth)


def refresh_evidence(tracks: TrackTable) -> None:
    """Each active finding's ``signals``: its own verdict plus agreeing series."""
    leaking = [t for t in tracks if t.verdict is not None and t.verdict.is_leak]
    for track in tracks:
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
            heap = tracks.get("heap")
            if heap is not None and heap.verdict is not None:
                others = [_describe(heap)]
        track.signals = tuple((own + others)[:_MAX_EVIDENCE])


def _describe(track: Track) -> str:
    v = track.verdict
    name = track.signal if track.key == track.signal else f"{track.signal}:{track.key}"
    if v is None:
        return name
    return f"{name} {v.pattern} {v.slope * HOUR:+.3g}/h p={v.p_value:.2g}"


def _stopped(verdict: SeriesVerdict, confirmed: SeriesVerdict | None) -> bool:
    """True when ``verdict`` shows that the growth confirmed in ``confirmed`` stopped: a
    plateau, a fall, or a slope whose upper bound lies below the confirmed slope's lower bound."""
    if verdict.pattern == "plateau" or verdict.slope <= 0.0 or confirmed is None:
        return True
    return verdict.upper_slope < max(confirmed.slope_low, 0.0) or verdict.upper_slope <= 0.0


def growth_turned(track: Track, confirmed: SeriesVerdict | None, now: float, alpha: float) -> bool:
    """A one-sided CUSUM since the confirmation: evidence that the growth fell below half the
    confirmed rate's lower bound, accumulated over every sample since, not re-decided per window.

    With ``k`` that half rate, ``z(t) = y(t) - k·t`` keeps rising while the leak goes on at
    its confirmed rate and falls at ``k`` once it stops; the statistic is the fall of ``z``
    from its highest point since the confirmation (Page's CUSUM of the increments). It counts
    once the fall exceeds what noise explains: ``z`` quantiles of the level's residual noise
    (twice: the peak is a noisy point too) or, for a sampled site, of the Poisson spread of the
    samples expected at rate ``k`` over the fall. The stronger the confirmed leak, the sooner a
    stop shows.
    """
    if confirmed is None or confirmed.slope_low <= 0.0:
        return False
    ts, ys = track.series.window(max(track.confirmed_s, track.segment_start), now)
    if len(ts) < 4:
        return False
    k = 0.5 * confirmed.slope_low
    # The latest highest point of z (ties: the newer one, the shorter fall).
    peak = max(range(len(ts)), key=lambda i: (ys[i] - k * ts[i], i))
    fall = (ys[peak] - k * ts[peak]) - (ys[-1] - k * ts[-1])
    if fall <= 0.0:
        return False
    if track.variances is not None:
        last = track.variances.last
        per_sample = last[1] / ys[-1] if last is not None and ys[-1] > 0.0 else 0.0
        if per_sample <= 0.0:
            return False
        # Samples seen since the peak against those a rate of k would bring: too few expected
        # and a silence proves nothing.
        seen = max(ys[-1] - ys[peak], 0.0) / per_sample
        return _poisson_cdf(math.floor(seen), k * (ts[-1] - ts[peak]) / per_sample) < alpha
    return fall > 2.0 * NormalDist().inv_cdf(1.0 - alpha) * confirmed.noise


def _poisson_cdf(n: int, mean: float) -> float:
    """P(N ≤ n) for N ~ Poisson(mean); normal approximation for large counts."""
    if mean <= 0.0:
        return 1.0
    if n > 200:
        return NormalDist(mean, math.sqrt(mean)).cdf(n + 0.5)
    term = math.exp(-mean)
    total = term
    for i in range(1, n + 1):
        term *= mean / i
        total += term
    return min(total, 1.0)
