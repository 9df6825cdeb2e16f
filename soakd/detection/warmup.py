"""When warm-up ended: decided once from the Python heap level (RSS when there is none), and
for RSS on its own, which also climbs for a minute after tracing starts.
"""

from __future__ import annotations

import math

from soakd.analysis.verdicts import warmup_end
from soakd.detection.kinds import SignalKind
from soakd.detection.params import DetectionParams
from soakd.detection.tracks import TrackTable
from soakd.detection.windows import Thresholds

__all__ = ["WarmupJudge", "splice"]


class WarmupJudge:
    """Decides the warm-up end and RSS's own settled point; each is decided once.

    Collaborators: :class:`TrackTable` (the level series), :class:`DetectionParams` (floor,
    maximum, settle span) and :class:`Thresholds` (the slope that counts as still warming up).
    """

    def __init__(self, tracks: TrackTable, params: DetectionParams, th: Thresholds) -> None:
        self._tracks = tracks
        self._params = params
        self._th = th
        self.end: float | None = None
        self.rss_end: float | None = None

    def decide(self, now: float) -> float | None:
        """The warm-up end: from the Python heap level (RSS when there is none)."""
        p = self._params
        if self.end is not None or now < p.warmup_floor_s:
            return self.end
        signal: SignalKind = "heap" if "heap" in self._tracks else "rss"
        end = self._settled(signal, now)
        if end is not None:
            self.end = end
            if signal == "rss":
                self.rss_end = end
        return self.end

    def decide_rss(self, now: float) -> float | None:
        """When RSS settled, decided on its own: RSS also climbs for a minute after tracing
        starts (the agent's and tracemalloc's tables), which must not hold back every verdict.
        """
        if self.rss_end is None and now >= self._params.warmup_floor_s:
            self.rss_end = self._settled("rss", now)
        return self.rss_end

    def _settled(self, signal: SignalKind, now: float) -> float | None:
        """When ``signal``'s level stopped warming up, or None while undecided."""
        p = self._params
        track = self._tracks.get(signal)
        if track is None:
            return p.warmup_floor_s if now >= p.warmup_floor_s + p.warmup_settle_s else None
        vp = self._th.heap if signal == "heap" else self._th.native
        ts, ys = track.series.window(-math.inf, now)
        ts, ys = splice(ts, ys, track.splice_from, track.segment_start)
        # Four fifths of the span are enough: samples and analyses tick separately, and an
        # analysis must not find the span a few seconds short and wait a whole analysis more.
        span = 0.8 * p.warmup_settle_s
        end = warmup_end(
            ts, ys, p.warmup_floor_s, p.warmup_max_s, min_span_s=span, min_slope=vp.min_slope
        )
        if end < p.warmup_max_s or now >= p.warmup_max_s:
            return end
        return None


def splice(
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
