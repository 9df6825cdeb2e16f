"""The :class:`Detector` facade: feed samples, analyse at a run-relative time, read findings."""

from __future__ import annotations

from dataclasses import replace

from soakd.analysis.verdicts import SeriesVerdict, VerdictParams
from soakd.detection.corroboration import native_verdict, site_verdict
from soakd.detection.findings import (
    Finding,
    FindingState,
    StateMachine,
    certainty,
    finding_of,
    refresh_evidence,
)
from soakd.detection.kinds import SignalKind
from soakd.detection.params import DetectionParams
from soakd.detection.tracks import SampledNoise, SiteInfo, Track, TrackTable
from soakd.detection.warmup import WarmupJudge
from soakd.detection.windows import Thresholds, judge_window

__all__ = ["Detector", "native_wait"]

# Heap-kind signals first: native and objects decisions look at them.
_ANALYSIS_ORDER: tuple[SignalKind, ...] = (
    "site",
    "heap",
    "rss",
    "fds",
    "threads",
    "tasks",
    "type",
)

# The process-wide memory levels: a decisive verdict on one is a judged run.
_LEVELS: tuple[SignalKind, ...] = ("heap", "rss")


def native_wait(slope_low: float, bar: float, p: DetectionParams, ceiling: float) -> float:
    """How long RSS-only growth must be seen: the whole ``ceiling`` at the bar, a quarter of
    it at twice the bar (the wait falls with the square of the lower bound's excess), never
    less than the shortest window."""
    if slope_low <= bar or bar <= 0.0:
        return ceiling
    return max(p.min_window_s, ceiling * (bar / slope_low) ** 2)


class Detector:
    """Bounded per-series state and the leak findings derived from it.

    Collaborators, built from ``params``: the :class:`TrackTable` (series), the
    :class:`WarmupJudge` (warm-up end), the :class:`StateMachine` (findings) and the
    :class:`Thresholds` (verdict parameters per kind of series).
    """

    def __init__(self, params: DetectionParams | None = None) -> None:
        self.params = params or DetectionParams()
        self._th = Thresholds.from_params(self.params)
        self._tracks = TrackTable(self.params)
        self._warmup = WarmupJudge(self._tracks, self.params, self._th)
        self._machine = StateMachine(self._tracks, self.params, self._th)
        self._judged: tuple[float, SignalKind, float] | None = None

    @property
    def judged(self) -> tuple[float, SignalKind, float] | None:
        """When the process's memory was first judged on a full window: ``(t, signal,
        window span)``; None until then. A verdict of "no leak" means something only after."""
        return self._judged

    @property
    def dropped(self) -> int:
        """Samples refused: out of order or not finite."""
        return self._tracks.dropped

    # -- feeding ---------------------------------------------------------------------------

    def add(
        self,
        signal: SignalKind,
        key: str,
        t: float,
        value: float,
        info: SiteInfo | None = None,
        count: float | None = None,
        *,
        noise: SampledNoise | None = None,
    ) -> None:
        """Record one sample; out-of-order or non-finite samples are counted in ``dropped``.

        ``count``: for a site, its live blocks (checks that its growth shows in the process).
        ``noise``: for a site estimated from sampled allocations, the estimate's variance, the
        cumulative squared weights of its sampled allocations and frees (its growth must stand
        out of the sampling noise), and its samples coarser than the profile's interval.
        """
        self._tracks.add(signal, key, t, value, info, count, noise)

    def mark_collected(self, t: float) -> None:
        """A full collection ran in the target just before ``t`` (see ``collection_check``)."""
        self._tracks.collected_at = max(self._tracks.collected_at, t)

    def mark_discontinuity(self, signal: SignalKind, t: float) -> None:
        """Judge ``signal``'s series only from ``t`` on (e.g. tracemalloc was restarted)."""
        self._tracks.mark_discontinuity(signal, t)

    # -- judging ---------------------------------------------------------------------------

    def warmup_end(self) -> float | None:
        """When warm-up ended (seconds since start), or None while it has not been decided."""
        return self._warmup.end

    def analyze(self, now: float) -> list[Finding]:
        """Judge every series at ``now``; returns the findings whose state changed."""
        decided_before = self._warmup.end is not None
        warmup = self._warmup.decide(now)
        # Sites are judged from the floor on while the warm-up end is undecided, their
        # findings only suspected: a leak's streak is then long enough to be confirmed the
        # moment the level has settled, instead of a streak's length later.
        provisional = warmup is None
        if warmup is None:
            if now < self.params.warmup_floor_s:
                return []
            warmup = self.params.warmup_floor_s
        elif not decided_before and warmup > self.params.warmup_floor_s:
            # Warm-up lasted past the floor: streaks judged on windows that held it start over.
            for track in self._tracks.of("site"):
                track.streak = 0
        signals: tuple[SignalKind, ...] = ("site",) if provisional else _ANALYSIS_ORDER
        changes: list[tuple[Track, FindingState]] = []
        for signal in signals:
            for track in self._tracks.of(signal):
                vp, min_window = self._th.for_signal(signal, self.params)
                if signal == "rss":
                    rss_warmup = self._warmup.decide_rss(now)
                    if rss_warmup is None:
                        continue
                    verdict = self._judge_rss(track, now, max(warmup, rss_warmup), vp, min_window)
                    verdict = native_verdict(self._tracks, verdict, now, self._th)
                else:
                    verdict = self._judge(track, now, warmup, vp, min_window)
                if signal == "site":
                    verdict = site_verdict(self._tracks, track, verdict, now, self.params, self._th)
                track.verdict = verdict
                if self._judged is None and signal in _LEVELS and verdict.decisive:
                    self._judged = (now, signal, verdict.duration_s)
                change = self._machine.step(track, verdict, now, hold=provisional)
                if change is not None:
                    changes.append((track, change))
        refresh_evidence(self._tracks)
        if any(t.state == "confirmed" for t in self._tracks.of("site")):
            # The bare heap level is hidden behind the site that explains it (as in
            # findings()): its coming back is not news, and would read as a flapping leak.
            changes = [(t, st) for t, st in changes if t.signal != "heap" or st == "cleared"]
        return [finding_of(track, state) for track, state in changes]

    def _judge(
        self, track: Track, now: float, warmup: float, vp: VerdictParams, min_window: float
    ) -> SeriesVerdict:
        zoom = None
        if track.signal == "site":
            # A zoom's turnover keeps the process flat: once the heap level's own growth has
            # persisted as a confirmed leak's must (confirmed, or waiting for a site to explain
            # it), a site's climb is that growth, not blocks the coarse interval missed (a slow
            # leak's site holds few coarse samples and would wait minutes, and be reported
            # after its level, in a second alert).
            level = self._tracks.get("heap")
            if level is None or not self._machine.established(level, now):
                zoom = self._tracks.latest_zoom(now)
        return judge_window(track, now, warmup, vp, min_window, self.params, zoom)

    def _judge_rss(
        self, track: Track, now: float, warmup: float, vp: VerdictParams, ceiling: float
    ) -> SeriesVerdict:
        """RSS growth must persist for a while (allocator creep fades), but less the further
        its slope's lower bound lies above the bar: the native window is a ceiling."""
        p = self.params
        v = self._judge(track, now, warmup, vp, min(p.min_window_s, ceiling))
        if v.duration_s >= ceiling or not v.decisive:
            return v
        if v.is_leak and v.duration_s >= native_wait(v.slope_low, vp.min_slope, p, ceiling):
            return v
        return replace(
            v,
            pattern="insufficient",
            reason=f"RSS judged on {v.duration_s:.0f}s; its slope needs a longer window",
        )

    # -- reading ---------------------------------------------------------------------------

    def findings(self) -> list[Finding]:
        """Current suspected and confirmed findings, most certain first."""
        active = [t for t in self._tracks if t.active]
        site_active = any(t.signal == "site" for t in active)
        out = [
            finding_of(t, "confirmed" if t.state == "confirmed" else "suspected")
            for t in active
            if not (site_active and t.signal == "heap")
        ]
        out.sort(key=certainty)
        return out

    def last_verdict(self, signal: SignalKind, key: str | None = None) -> SeriesVerdict | None:
        """The latest verdict on one series (``key`` defaults to the signal's name)."""
        track = self._tracks.get(signal, key)
        return track.verdict if track is not None else None

    def tracked(self, signal: SignalKind) -> int:
        """How many series of ``signal`` are held."""
        return self._tracks.count(signal)

    def objects_growing(self) -> bool:
        """True when some object type's latest verdict is growth (a finding or not yet)."""
        return any(t.verdict is not None and t.verdict.is_leak for t in self._tracks.of("type"))

    def suspicious(self, now: float) -> bool:
        """True when heap, malloc, RSS or object counts rise and no site explains it yet.

        Meant for starting tracemalloc on suspicion: more eager than a confirmed finding (a
        shorter window, from the floor on; malloc and RSS at ``suspect_rss_slope_bytes_per_h``).
        """
        p = self.params
        if now < p.warmup_floor_s:
            return False
        if any(t.active for t in self._tracks.of("site")):
            return False
        window = min(p.suspect_window_s, p.min_window_s)
        # Until the warm-up end is decided, the window just before now: waiting for a full
        # window after the floor would start tracing (and so attribution) that much later.
        warmup = self._warmup.end if self._warmup.end is not None else now - window
        levels: tuple[tuple[SignalKind, VerdictParams], ...] = (
            ("heap", self._th.heap),
            ("malloc", self._th.suspect_rss),  # large objects barely move the block count
            ("rss", self._th.suspect_rss),
        )
        for signal, vp in levels:
            track = self._tracks.get(signal)
            if track is None:
                continue
            if self._judge(track, now, warmup, vp, window).is_leak:
                return True
        return any(t.verdict is not None and t.verdict.is_leak for t in self._tracks.of("type"))
