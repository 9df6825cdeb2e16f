"""What the detector is fed and when it judges: the supervisor's side of leak detection.

Samplers hand their samples here; they are queued and fed to the :class:`Detector` in a thread
at each analysis, so only that thread touches the detector. Here too is what the heap level
means: the target's Python blocks × ``block_bytes`` with soakd's own blocks left out, not judged
while the agent groups traces (its temporary blocks would read as churn or growth).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio

from soakd.causes import cause_of
from soakd.config import Config
from soakd.detection import (
    DetectionParams,
    Detector,
    Finding,
    SampledNoise,
    SignalKind,
    SiteInfo,
)
from soakd.leaks import leak_event, record_from_finding
from soakd.sources import functions_of
from soakd.supervisor.state import Emit
from soakd.supervisor.thresholds import Thresholds

MAX_PENDING = 200_000  # samples queued while analysis stalls; then the newest half is kept


@dataclass(frozen=True)
class Sample:
    """One point of one series for the detector."""

    signal: SignalKind
    key: str
    t: float
    value: float
    info: SiteInfo | None = None
    count: float | None = None  # site series: live blocks at the site
    # Site series, sampled: the estimate's variance and its cumulative churn (squared weights).
    noise: SampledNoise | None = None


@dataclass(frozen=True)
class Discontinuity:
    """The series of ``signal`` restart at ``t`` (tracing started or stopped, a module import)."""

    signal: SignalKind
    t: float


@dataclass(frozen=True)
class Collected:
    """A full collection ran in the target just before ``t``."""

    t: float


@dataclass(frozen=True)
class Analysis:
    """What one analysis at ``t`` found: the new states, and what the tracing policy needs."""

    t: float
    changes: list[Finding]
    findings: list[Finding]
    suspicious: bool


class AnalysisLoop:
    """The detector, its feed, and the events its verdicts become.

    Collaborators: the :class:`Detector` (built from the config), the clock, ``emit``
    (``detection.warmup_end`` and ``leak.*``) and the thresholds (leak rules).
    """

    def __init__(
        self, config: Config, clock: Callable[[], float], emit: Emit, thresholds: Thresholds
    ) -> None:
        self.config = config
        self.detector = Detector(DetectionParams.from_config(config.detection, config.sampling))
        self._clock = clock
        self._emit = emit
        self._thresholds = thresholds
        self._pending: list[Sample | Discontinuity | Collected] = []
        self.last_t = float("-inf")
        self.suspected = False  # a finding awaits confirmation (or clearing)
        # Python memory or object counts are suspected of growing: samples of object counts
        # follow full collections meanwhile (see TypeSampler).
        self.collect_wanted = False
        self.warmup_reported = False
        self.judged_reported = False
        self.groupings = 0  # site groupings started + finished: odd while one runs
        # soakd's own small blocks in the target (the agent's tables), as its last grouping
        # counted them from the traces: left out of the heap level the detector judges.
        self.agent_blocks = 0.0
        self.overhead_bytes = 0.0  # tracemalloc's own tables: not the target's memory

    @property
    def params(self) -> DetectionParams:
        return self.detector.params

    # -- feeding ---------------------------------------------------------------------------
    def _feed(self, item: Sample | Discontinuity | Collected) -> None:
        if len(self._pending) >= MAX_PENDING:  # analysis stalled: keep the newest half
            del self._pending[: MAX_PENDING // 2]
        self._pending.append(item)

    def restart(self, signal: SignalKind, t: float) -> None:
        self._feed(Discontinuity(signal, t))

    def collected(self, t: float) -> None:
        self._feed(Collected(t))

    def feed_process(self, t: float, values: Mapping[str, float]) -> None:
        rss = values["rss_bytes"] - self.overhead_bytes  # tracemalloc's own tables are not a leak
        self._feed(Sample("rss", "rss", t, rss))
        for key in ("fds", "threads"):
            self._feed(Sample(key, key, t, values[key]))

    def quiet(self, groupings_before: int) -> bool:
        """No site grouping ran since ``groupings_before`` was read: a heap sample is judged."""
        return groupings_before == self.groupings and groupings_before % 2 == 0

    def feed_heap(self, t: float, values: Mapping[str, float], judged: bool) -> None:
        # tracemalloc's and the profiler's tables are malloc'd: soakd's, not the target's.
        self.overhead_bytes = values.get("tracemalloc_overhead_bytes", 0.0) + values.get(
            "profiler_bytes", 0.0
        )
        # The heap level counts blocks: continuous whether tracing or not (traced bytes restart
        # at zero, then rise as replaced entries get traced: not growth).
        if judged and "heap_blocks" in values:
            blocks = values["heap_blocks"] - self.agent_blocks
            self._feed(Sample("heap", "heap", t, blocks * self.params.block_bytes))
        elif judged and "heap_bytes" in values:
            self._feed(Sample("heap", "heap", t, values["heap_bytes"]))
        if judged and "malloc_bytes" in values:  # tracemalloc's tables are malloc'd: not growth
            self._feed(Sample("malloc", "malloc", t, values["malloc_bytes"] - self.overhead_bytes))
        if "tasks" in values:
            self._feed(Sample("tasks", "tasks", t, values["tasks"]))

    def feed_types(self, t: float, counts: Mapping[str, float]) -> None:
        for name, count in counts.items():
            self._feed(Sample("type", name, t, float(count)))

    def feed_site(
        self,
        t: float,
        info: SiteInfo,
        size: float,
        count: float,
        noise: SampledNoise | None = None,
    ) -> None:
        assert info.site is not None
        self._feed(Sample("site", info.site, t, size, info, count, noise))

    # -- judging ---------------------------------------------------------------------------
    def due(self, now: float, tracing_fresh: bool) -> bool:
        """Whether to analyse now: twice as often while a verdict is near.

        That is while the warm-up end is being decided, for a while after tracing starts (the
        suspect's site gets its first verdicts) and while a finding is suspected: confirming it
        takes ``confirm_after`` analyses, which at the slow cadence add most of the time to
        detection. Persistence still spans that many analyses, each with fresh samples.
        A run at the fastest cadence 10 % early is on time (scheduler jitter).
        """
        s = self.config.sampling
        fast = (
            self.suspected
            or (not self.warmup_reported and now >= self.params.warmup_floor_s)
            or tracing_fresh
        )
        every = s.fast_analysis_interval if fast else s.analysis_interval
        return now - self.last_t >= 0.9 * every

    async def analyze(self) -> Analysis:
        """Feed what is queued, judge in a thread, emit what changed."""
        now = self._clock()
        self.last_t = now
        batch, self._pending = self._pending, []
        detector = self.detector

        def work() -> tuple[list[Finding], float | None, bool, list[Finding], bool]:
            for item in batch:
                if isinstance(item, Discontinuity):
                    detector.mark_discontinuity(item.signal, item.t)
                elif isinstance(item, Collected):
                    detector.mark_collected(item.t)
                else:
                    detector.add(
                        item.signal,
                        item.key,
                        item.t,
                        item.value,
                        item.info,
                        item.count,
                        noise=item.noise,
                    )
            changes = detector.analyze(now)
            for finding in changes:  # parse their sources here, not on the loop (cached)
                if finding.site is not None:
                    functions_of(finding.traceback)
            return (
                changes,
                detector.warmup_end(),
                detector.suspicious(now),
                detector.findings(),
                detector.objects_growing(),
            )

        changes, warmup, suspicious, findings, growing = await anyio.to_thread.run_sync(work)
        self.collect_wanted = (
            growing
            or suspicious
            or any(f.kind in ("heap", "objects") and f.state == "suspected" for f in findings)
        )
        self.suspected = any(f.state == "suspected" for f in findings)
        if not self.warmup_reported and warmup is not None:
            self.warmup_reported = True
            self._emit("detection.warmup_end", warmup_end_s=round(warmup, 3))
        judged = detector.judged
        if not self.judged_reported and judged is not None:
            self.judged_reported = True
            self._emit("detection.judged", series=judged[1], window_s=round(judged[2], 3))
        for finding in changes:
            self._emit_finding(finding, findings)
            if finding.state != "suspected":
                self._thresholds.observe_leak(
                    now, finding.kind, confirmed=finding.state == "confirmed"
                )
        self._thresholds.evaluate()
        return Analysis(now, changes, findings, suspicious)

    def confirmed(self) -> bool:
        return any(f.state == "confirmed" for f in self.detector.findings())

    def _emit_finding(self, f: Finding, findings: list[Finding]) -> None:
        event, level, record = leak_event(f)
        if f.state == "confirmed":
            # A consequence of a leak already confirmed (the heap its tasks hold, a caller of
            # its site) names that cause: alerts go out once per cause.
            others = [
                record_from_finding(g)
                for g in findings
                if g.state == "confirmed" and (g.kind, g.key) != (f.kind, f.key)
            ]
            cause = cause_of(record, others)
            if cause is not None:
                record["cause"] = {k: cause.get(k) for k in ("kind", "site", "type")}
        self._emit(event, level, **record)
