"""When attribution (tracemalloc in the target) starts, holds and stops: a pure policy.

Tracing every allocation costs the target a lot, so in ``on-suspicion`` mode it runs only
while a suspect needs a site: it starts on the detector's suspicion (or a heap/objects finding
without a site) and stops once every such finding is attributed or cleared, after a hold long
enough for a dozen site samples and two of the detector's shortest windows. :class:`Tracer`
applies the policy's decisions to the target through the stats source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from soakd.agent.stats import StatsSource
from soakd.config import SamplingConfig, TracingMode
from soakd.detection import DetectionParams, Finding

# Sites are sampled at the heap cadence this long after tracing starts (few traces: cheap).
FAST_SITES_S = 60.0

Decision = Literal["start", "attributed", "cleared"]


@dataclass
class TracingPolicy:
    """Whether tracing is on and since when, and what to do after each analysis.

    Pure: every method takes the run-relative time; nothing here talks to the target.
    """

    mode: TracingMode
    enabled: bool  # sampling.enabled: heap statistics are collected at all
    hold_s: float  # tracing started on suspicion runs at least this long
    tracing: bool = False
    since: float = 0.0

    @classmethod
    def from_config(cls, sampling: SamplingConfig, params: DetectionParams) -> TracingPolicy:
        """The hold is the detector's ``tracing_hold_s`` (its derivation is documented there)."""
        return cls(sampling.tracemalloc, sampling.enabled, hold_s=params.tracing_hold_s)

    @property
    def always(self) -> bool:
        """Tracing runs from the start to the end of the run."""
        return self.enabled and self.mode == "always"

    def started(self, now: float) -> None:
        self.tracing = True
        self.since = now

    def stopped(self, now: float) -> None:
        self.tracing = False
        self.since = now

    def fresh(self, now: float) -> bool:
        """Tracing started less than ``FAST_SITES_S`` ago: its sites get their first points."""
        return self.tracing and now - self.since < FAST_SITES_S

    def decide(self, now: float, suspicious: bool, findings: Sequence[Finding]) -> Decision | None:
        """After an analysis at ``now``: start tracing, stop it (and why), or leave it."""
        if self.mode != "on-suspicion":
            return None
        if not self.tracing:
            if not self.enabled:
                return None
            unattributed = any(f.kind in ("heap", "objects") and f.site is None for f in findings)
            return "start" if suspicious or unattributed else None
        return self._stop(now, suspicious, findings)

    def _stop(self, now: float, suspicious: bool, findings: Sequence[Finding]) -> Decision | None:
        if now - self.since < self.hold_s or suspicious:
            return None
        if any(
            f.kind in ("heap", "objects") and (f.state == "suspected" or f.site is None)
            for f in findings
        ):
            return None
        # A site found lately is watched a while longer: if it was only a structure turning over
        # since tracing started, its growth stops and the finding is cleared. Once tracing stops
        # no more site samples come, and a finding would stand as it is.
        if any(f.site and now - f.first_detected_s < self.hold_s for f in findings):
            return None
        attributed = any(f.kind == "heap" and f.site for f in findings)
        return "attributed" if attributed else "cleared"


class Tracer:
    """Turns tracing on and off in the target and says so.

    Collaborators: the policy (its state), the clock, ``emit``, and ``restart_sites`` (the
    detector's site series start over when tracing does).
    """

    def __init__(
        self,
        policy: TracingPolicy,
        clock: Callable[[], float],
        emit: Callable[..., None],
        restart_sites: Callable[[float], None],
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._emit = emit
        self._restart_sites = restart_sites

    def mark_always(self) -> None:
        """``always`` mode: the worker traces from its start; record that it does."""
        self.policy.started(self._clock())
        self._emit("tracing.started", reason="always")

    async def set(self, on: bool, reason: str, stats: StatsSource | None) -> bool:
        """Start or stop tracing in the target; False when nothing changed."""
        if on == self.policy.tracing or stats is None:
            return False
        if on:
            await stats.start_tracing()
        else:
            await stats.stop_tracing()
        # Site series start over when tracing does (the detector's heap level is blocks-based).
        self._restart_sites(self._clock())
        if on:
            self.policy.started(self._clock())
        else:
            self.policy.stopped(self._clock())
        self._emit("tracing.started" if on else "tracing.stopped", reason=reason)
        return True
