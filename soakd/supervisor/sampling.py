"""The samplers: the target process, the box, the heap, live object types, allocation sites.

Each is a small callable the scheduler runs at its cadence (``supervisor/schedule.py``).
Blocking reads (psutil) run in threads; statistics from inside the target come through the
:class:`StatsSource`, which is None until the target (or its agent) can answer.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable

import anyio
import psutil

from soakd.agent.protocol import SitesResult
from soakd.agent.stats import StatsSource
from soakd.config import SamplingConfig
from soakd.detection import SampledNoise, SiteInfo
from soakd.rundir import RunDir
from soakd.supervisor.analysis import AnalysisLoop
from soakd.supervisor.recorder import RunRecorder
from soakd.supervisor.schedule import types_every
from soakd.supervisor.state import RunState
from soakd.supervisor.thresholds import Thresholds
from soakd.supervisor.tracing import TracingPolicy

STALL_ENV = "SOAKD_FAULT_STALL_SAMPLING_AFTER"  # test hook: process sampling hangs after N s
GetStats = Callable[[], StatsSource | None]


class ProcessSampler:
    """RSS, VMS, fds, threads, CPU and children of the target (USS every tenth sample).

    Collaborators: ``process`` (the psutil handle of the watched process), the recorder, the
    analysis (rss/fds/threads series), the thresholds, and ``after`` (the stall check).
    """

    def __init__(
        self,
        state: RunState,
        process: Callable[[], psutil.Process | None],
        recorder: RunRecorder,
        analysis: AnalysisLoop,
        thresholds: Thresholds,
        after: Callable[[float], None],
    ) -> None:
        self._state = state
        self._process = process
        self._recorder = recorder
        self._analysis = analysis
        self._thresholds = thresholds
        self._after = after
        self._count = 0
        self._stall_after = float(os.environ.get(STALL_ENV, "inf"))

    def read(self) -> dict[str, float]:
        p = self._process()
        assert p is not None
        with p.oneshot():
            mem = p.memory_info()
            values: dict[str, float] = {
                "rss_bytes": mem.rss,
                "vms_bytes": mem.vms,
                "fds": p.num_fds(),
                "threads": p.num_threads(),
                "cpu_percent": p.cpu_percent(),
                "cpu_seconds": sum(p.cpu_times()[:2]),
            }
            try:
                children = p.children(recursive=True)
            except psutil.Error:
                children = []
            values["children"] = len(children)
        if self._count % 10 == 0:  # USS walks smaps: affordable every tenth sample
            with contextlib.suppress(psutil.Error):
                values["uss_bytes"] = p.memory_full_info().uss
        self._count += 1
        return values

    async def __call__(self) -> None:
        if self._state.now() > self._stall_after:
            await anyio.sleep(math.inf)  # test hook: a stalled sampler must trip the watchdog
        values = await anyio.to_thread.run_sync(self.read)
        t = self._state.now()
        self._recorder.record(t, values)
        self._analysis.feed_process(t, values)
        self._thresholds.observe(t, values)
        self._thresholds.evaluate()
        self._after(t)


class SystemSampler:
    """The box: memory in use, memory available, load average."""

    def __init__(self, state: RunState, recorder: RunRecorder, thresholds: Thresholds) -> None:
        self._state = state
        self._recorder = recorder
        self._thresholds = thresholds

    @staticmethod
    def read() -> dict[str, float]:
        vm = psutil.virtual_memory()
        return {
            "system_memory_percent": 100.0 * (vm.total - vm.available) / vm.total,
            "system_available_bytes": vm.available,
            "load_avg": os.getloadavg()[0],
        }

    async def __call__(self) -> None:
        values = await anyio.to_thread.run_sync(self.read)
        t = self._state.now()
        self._recorder.record(t, values)
        self._thresholds.observe(t, values)
        self._thresholds.evaluate()


class HeapSampler:
    """The target's Python heap, malloc's bytes in use and its asyncio tasks, via the agent."""

    def __init__(
        self,
        state: RunState,
        stats: GetStats,
        recorder: RunRecorder,
        analysis: AnalysisLoop,
        thresholds: Thresholds,
    ) -> None:
        self._state = state
        self._stats = stats
        self._recorder = recorder
        self._analysis = analysis
        self._thresholds = thresholds

    async def __call__(self) -> None:
        stats = self._stats()
        if stats is None:
            return
        before = self._analysis.groupings
        result = (await stats.heap()).to_json()
        # The agent's grouping of traces holds temporary blocks: a heap sample taken while it
        # ran is stored but not judged (it would read as churn, or as growth of the target).
        judged = self._analysis.quiet(before)
        values = {k: float(v) for k, v in result.items() if isinstance(v, int | float)}
        t = self._state.now()
        self._recorder.record(t, values)
        self._analysis.feed_heap(t, values, judged)
        self._thresholds.observe(t, values)


# soakd's work in the target shorter than this cannot move a latency percentile worth judging
# (the IPC round trip alone is a fraction of it); longer spans are recorded as perturbations.
PERTURBATION_FLOOR_S = 0.005


def perturbed(recorder: RunRecorder, cause: str, start: float, end: float, **detail: float) -> None:
    """Record soakd's work in the target from ``start`` to ``end`` when it can matter."""
    if end - start >= PERTURBATION_FLOOR_S:
        recorder.perturbed(cause, start, end, **detail)


class TypeSampler:
    """Live objects per type in the target (the ``objects`` leak kind).

    Between the collector's full collections, counts include cyclic garbage and tuples and
    dicts not yet untracked: they pile up in the oldest generation for minutes and read as
    growth, of the counts and of the heap (garbage holds its blocks). While the detector
    suspects Python memory or a type of growing, every sample follows a full collection, more
    often (``COLLECTED_TYPES_INTERVAL_S``), and the detector confirms such a finding only after
    a collection (the growth survived one). The type series restart at each switch (their
    level moves by the garbage); the heap level is not restarted (that would delay every heap
    verdict). A collection costs the target about what the count does, only while suspected.
    """

    def __init__(
        self,
        state: RunState,
        stats: GetStats,
        recorder: RunRecorder,
        analysis: AnalysisLoop,
        sampling: SamplingConfig,
        workload_interval_s: float,
    ) -> None:
        self._state = state
        self._stats = stats
        self._recorder = recorder
        self._analysis = analysis
        self._interval = sampling.types_interval
        self._collected_interval = types_every(sampling.types_interval, workload_interval_s)
        self.collecting = False
        self.last_t = -math.inf

    async def __call__(self) -> None:
        now = self._state.now()
        if self.collecting != self._analysis.collect_wanted:
            self.collecting = not self.collecting
            # Also a change in the target's behaviour: its cyclic garbage is freed sooner.
            self._recorder.emit(
                "detection.collecting", on=self.collecting, interval_s=self._collected_interval
            )
            self._analysis.restart("type", now)
        every = self._collected_interval if self.collecting else self._interval
        if now - self.last_t < 0.9 * every:
            return
        stats = self._stats()
        if stats is None:
            return
        self.last_t = now
        started = now
        counts = (await stats.types(collect=self.collecting)).counts
        t = self._state.now()
        # The walk over every gc-tracked object (and the collection) holds the target's GIL.
        perturbed(self._recorder, "types", started, t)
        if self.collecting:
            self._analysis.collected(t)
        if not counts:
            return
        self._recorder.record(t, {f"type:{k}": float(v) for k, v in counts.items()})
        self._analysis.feed_types(t, {k: float(v) for k, v in counts.items()})


class SiteSampler:
    """Traced bytes and blocks per allocation site, and a snapshot of them, while tracing.

    Scheduled at the heap cadence but run at ``sites_interval``, except for a while after
    tracing starts: the traces are few then (only allocations made since), so a sample is
    cheap, and a leaking line gets enough points for a verdict in well under a minute.
    """

    def __init__(
        self,
        state: RunState,
        sampling: SamplingConfig,
        run: RunDir,
        stats: GetStats,
        recorder: RunRecorder,
        analysis: AnalysisLoop,
        tracing: TracingPolicy,
    ) -> None:
        self._state = state
        self._sampling = sampling
        self._run = run
        self._stats = stats
        self._recorder = recorder
        self._analysis = analysis
        self._tracing = tracing
        self.last_t = -math.inf
        self.snapshot_t = -math.inf
        self.taken = 0  # snapshots written

    @property
    def _exact(self) -> bool:
        """Sites come from tracemalloc's traces (else from the sampled profiler)."""
        return self._tracing.tracing

    async def due(self) -> None:
        """The scheduled run: sample if due at the current cadence (10 % early is on time).

        Sites are sampled every ``sites_interval``, and at the heap cadence while that speeds
        a verdict: for a while after tracing or a zoom starts, and for the sampled profile
        while the detector suspects something or the profiler is zoomed (a snapshot file is
        still written every ``sites_interval``). The sampled grouping takes a few milliseconds
        in the target, yet grouped at the heap cadence all run long the saturated reference
        aggregator ran at 0.92 of sampling off in whole runs, 0.94 with this cadence: a steady
        soak must not pay that for verdicts that are not near.
        """
        s = self._sampling
        now = self._state.now()
        near = self._analysis.suspected or self._analysis.collect_wanted or self._tracing.zoomed
        fast = self._tracing.fresh(now) or (not self._exact and near)
        every = min(s.sites_interval, s.heap_interval) if fast else s.sites_interval
        if now - self.last_t >= 0.9 * every:
            await self.sample(snapshot=now - self.snapshot_t >= 0.9 * s.sites_interval)

    async def sample(self, role: str = "latest", *, snapshot: bool = True) -> None:
        if not self._tracing.sites_available:
            return
        self.last_t = self._state.now()
        # Exact groupings allocate per trace in the target: heap samples taken meanwhile are not
        # judged (odd while one runs). A sampled grouping allocates next to nothing.
        step = 1 if self._exact else 0
        self._analysis.groupings += step
        try:
            await self._sample(role, snapshot)
        finally:
            self._analysis.groupings += step

    async def _sample(self, role: str, snapshot: bool) -> None:
        stats = self._stats()
        if stats is None:
            return
        if self.taken == 0 and role == "latest":
            role = "baseline"
        path = self._run.snapshots / f"{role}.json.gz"
        result = await stats.sites(
            str(path) if snapshot else None, role, round(self._state.now(), 3)
        )
        t = self._state.now()
        # The agent's work in the target: its CPU time, or the copy of tracemalloc's tables that
        # holds the GIL throughout. The round trip and the wall-clock times also wait for the
        # target's busy loop and GIL, which is the target running, not soakd's work.
        work = max(result.cpu_s, result.pause_s)
        perturbed(
            self._recorder,
            "sites" if result.sampling_interval is not None else "snapshot",
            t - work,
            t,
            pause_ms=round(result.pause_s * 1000.0, 3),
        )
        self._feed(result, t)
        if not snapshot:
            return
        self.snapshot_t = t
        self.taken += 1
        self._recorder.emit(
            "snapshot.saved",
            path=str(path),
            role=role,
            traced_bytes=float(result.traced_bytes),
            pause_s=float(result.pause_s),
        )

    def _feed(self, result: SitesResult, t: float) -> None:
        values: dict[str, float] = {}
        for site in result.sites:
            key = site.site
            values[f"site:{key}"] = float(site.size)
            values[f"site_count:{key}"] = float(site.count)
            self._recorder.record_site(key, site.traceback, site.line)
            info = SiteInfo(site=key, traceback=site.traceback, line=site.line)
            if result.sampling_interval is None:
                self._analysis.feed_site(t, info, float(site.size), float(site.count))
            else:
                noise = SampledNoise(
                    site.variance, site.churn, float(site.coarse), float(result.sampling_interval)
                )
                self._analysis.feed_site(t, info, float(site.size), float(site.count), noise)
        values["traced_bytes"] = float(result.traced_bytes)
        # Counted by the agent from the traces, so that the target's allocations made while
        # the grouping ran stay in the heap level.
        self._analysis.agent_blocks = float(result.own_blocks)
        values["agent_blocks"] = self._analysis.agent_blocks
        values["heap_pause_s"] = float(result.pause_s)
        self._recorder.record(t, values)
