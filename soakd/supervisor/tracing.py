"""Where allocation sites come from, and when exact tracing starts, holds and stops: a policy.

The target's sampled profiler (:mod:`soakd.profiler`) gives sites from the start at a cost the
target does not feel; when it runs, tracemalloc runs only in its explicit exact mode
(``tracemalloc = "always"``). Where the profiler is off or unavailable, ``on-suspicion`` is the
fallback: tracing every allocation costs the target a lot, so it runs only while a suspect needs
a site: it starts on the detector's suspicion (or a heap/objects finding without a site) and
stops once every such finding is attributed or cleared, after a hold long enough for a dozen
site samples and two of the detector's shortest windows — and in any case after
``EXPIRY_HOLDS`` holds, not to start again for as long: exact tracing must end once its job is
done or cannot be done. :class:`Tracer` applies the decisions through the stats source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from soakd import profiler
from soakd.agent.stats import StatsSource
from soakd.config import SamplingConfig, TracingMode
from soakd.detection import DetectionParams, Finding
from soakd.supervisor.recorder import RunRecorder

# Sites are sampled at the heap cadence this long after tracing starts (few traces: cheap).
FAST_SITES_S = 60.0
# Tracing started on suspicion stops after this many holds whatever the findings say, and
# does not start again for as long.
EXPIRY_HOLDS = 5.0
EXPIRY_FLOOR_S = 600.0
# A zoom is held at least this long: a slow leak's site (1 KB/s: a sample every 8 s at the zoom
# interval) needs minutes of fine samples to stand out, while the heap-level suspicion that
# started the zoom may come and go meanwhile; unzoomed, the coarse samples bury it again.
ZOOM_HOLD_S = 300.0

Decision = Literal["start", "zoom", "attributed", "cleared", "expired"]


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
    sampled: bool = False  # the target's sampled profiler gives the sites
    expired_at: float | None = None
    # Sampled mode: the profiler samples at ``zoom_interval`` while a suspect needs a site
    # (the same start, hold and stop rules as exact tracing, at a small fraction of its cost).
    zoom_interval: int = 0
    zoomed: bool = False
    zoom_since: float = 0.0
    zoom_expired_at: float | None = None

    @classmethod
    def from_config(cls, sampling: SamplingConfig, params: DetectionParams) -> TracingPolicy:
        """The hold is the detector's ``tracing_hold_s`` (its derivation is documented there)."""
        return cls(
            sampling.tracemalloc,
            sampling.enabled,
            hold_s=params.tracing_hold_s,
            zoom_interval=sampling.profiler_zoom_interval,
        )

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

    @property
    def sites_available(self) -> bool:
        """Allocation sites can be sampled: tracemalloc traces or the profiler runs."""
        return self.tracing or self.sampled

    def fresh(self, now: float) -> bool:
        """Tracing (or a zoom) started less than ``FAST_SITES_S`` ago: its sites get their
        first points."""
        if self.zoomed:
            return now - self.zoom_since < FAST_SITES_S
        return self.tracing and now - self.since < FAST_SITES_S

    def decide(self, now: float, suspicious: bool, findings: Sequence[Finding]) -> Decision | None:
        """After an analysis at ``now``: start tracing (or zoom), stop it (and why), or leave it."""
        if self.sampled and not self.tracing:
            return self._decide_zoom(now, suspicious, findings)
        if self.mode != "on-suspicion":
            return None
        if not self.tracing:
            if not self.enabled:
                return None
            if self.expired_at is not None and now - self.expired_at < self._expiry_s:
                return None
            unattributed = any(f.kind in ("heap", "objects") and f.site is None for f in findings)
            return "start" if suspicious or unattributed else None
        return self._stop(now, suspicious, findings)

    @property
    def _expiry_s(self) -> float:
        # Never under ten minutes: a loaded box may need several holds to attribute.
        return max(EXPIRY_HOLDS * self.hold_s, EXPIRY_FLOOR_S)

    def _decide_zoom(
        self, now: float, suspicious: bool, findings: Sequence[Finding]
    ) -> Decision | None:
        if not self.enabled or self.zoom_interval <= 0:
            return None
        if not self.zoomed:
            if self.zoom_expired_at is not None and now - self.zoom_expired_at < self._expiry_s:
                return None
            unattributed = any(f.kind in ("heap", "objects") and f.site is None for f in findings)
            return "zoom" if suspicious or unattributed else None
        if now - self.zoom_since >= self._expiry_s:
            self.zoom_expired_at = now
            return "expired"
        return self._settled(now, self.zoom_since, suspicious, findings, ZOOM_HOLD_S)

    def zoom(self, on: bool, now: float) -> None:
        self.zoomed = on
        self.zoom_since = now

    def _stop(self, now: float, suspicious: bool, findings: Sequence[Finding]) -> Decision | None:
        if now - self.since >= self._expiry_s:
            self.expired_at = now
            return "expired"
        return self._settled(now, self.since, suspicious, findings)

    def _settled(
        self,
        now: float,
        since: float,
        suspicious: bool,
        findings: Sequence[Finding],
        hold_at_least: float = 0.0,
    ) -> Decision | None:
        """Whether a suspect's search for a site (since ``since``) is over, and how."""
        if now - since < max(self.hold_s, hold_at_least) or suspicious:
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
        recorder: RunRecorder,
        restart_sites: Callable[[float], None],
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._recorder = recorder
        self._emit = recorder.emit
        self._restart_sites = restart_sites

    def mark_always(self) -> None:
        """``always`` mode: the worker traces from its start; record that it does."""
        self.policy.started(self._clock())
        self._recorder.perturbation_open("tracemalloc", self.policy.since)
        self._emit("tracing.started", reason="always")

    def mark_sampled(self, on: bool) -> None:
        """Whether the target's sampled profiler runs (its sites need no tracemalloc)."""
        self.policy.sampled = on

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
            self._recorder.perturbation_open("tracemalloc", self.policy.since)
        else:
            since = self.policy.since
            self.policy.stopped(self._clock())
            self._recorder.perturbation_close("tracemalloc", self.policy.since)
            self._recorder.perturbed("tracemalloc", since, self.policy.since, reason=reason)
        self._emit("tracing.started" if on else "tracing.stopped", reason=reason)
        return True

    async def zoom(
        self, on: bool, reason: str, stats: StatsSource | None, normal_interval: int
    ) -> bool:
        """Sample more often (``on``) or as usual again; False when nothing changed.

        The profile keeps its samples (each weighted at the interval it was taken at), so the
        site series go on; an agent that had to start a fresh profile says so, and they
        restart. The zoom's own cost in the target is recorded as a perturbation span like any
        of soakd's work there.
        """
        policy = self.policy
        if on == policy.zoomed or stats is None:
            return False
        interval = policy.zoom_interval if on else normal_interval
        hello = await stats.profile(interval)
        now = self._clock()
        if not (hello.profiler or {}).get("continuous", False):
            self._restart_sites(now)
        if on:
            policy.zoom(True, now)
            self._recorder.perturbation_open("profiler_zoom", now)
        else:
            since = policy.zoom_since
            policy.zoom(False, now)
            self._recorder.perturbation_close("profiler_zoom", now)
            self._recorder.perturbed("profiler_zoom", since, now, reason=reason)
        status = hello.profiler or {}
        self._emit(
            "attribution.zoomed" if on else "attribution.unzoomed",
            reason=reason,
            interval_bytes=status.get("interval_bytes", interval),
        )
        return True

    def finish(self) -> None:
        """At the run's end: exact tracing still on was a perturbation up to now."""
        if self.policy.zoomed:
            now = self._clock()
            self._recorder.perturbation_close("profiler_zoom", now)
            self._recorder.perturbed("profiler_zoom", self.policy.zoom_since, now, reason="run_end")
        if self.policy.tracing:
            now = self._clock()
            self._recorder.perturbation_close("tracemalloc", now)
            self._recorder.perturbed("tracemalloc", self.policy.since, now, reason="run_end")


def attribution_plan(sampling: SamplingConfig, unavailable: str | None = None) -> dict[str, Any]:
    """How allocation sites will be found, as far as this installation can tell (``run.started``).

    ``unavailable``: why the target's interpreter cannot load the profiler, when soakd already
    knows (it checked that interpreter). The target's own answer follows once it is ready
    (``attribution.ready``, or ``attribution.fallback`` when it cannot run the profiler).
    """
    lost = None
    available = profiler.AVAILABLE if unavailable is None else False
    if not sampling.enabled:
        mode = "off"
    elif sampling.profiler_on and available:
        mode = "sampled"
    else:
        if sampling.profiler_on:
            lost = unavailable or profiler.UNAVAILABLE_REASON
        mode = "off" if sampling.tracemalloc == "off" else "tracemalloc"
    return {
        "mode": mode,
        "interval_bytes": sampling.profiler_interval if mode == "sampled" else None,
        "frames": sampling.frames,
        "tracemalloc": sampling.tracemalloc if sampling.enabled else "off",
        "lost": lost,
    }


def attribution_of(status: Mapping[str, Any]) -> dict[str, Any]:
    """The target's profiler status, as events carry it."""
    return {k: status.get(k) for k in ("mode", "interval_bytes", "frames", "memory_bytes")}
