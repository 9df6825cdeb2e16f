"""The in-process agent: heap level, allocation sites, object types and tasks of the target.

It runs inside the target's process — the worker (``python -m soakd.worker``) creates an
:class:`Agent` and calls it; any other Python program can expose one over a unix socket with
:func:`serve` or ``python -m soakd.agent app.py`` and be watched from outside (see
:mod:`soakd.agent.server`). Every method but :meth:`Agent.tasks` may block for a while and is
meant to run in a thread (``loop.run_in_executor``); :meth:`Agent.tasks` must run on the
event loop's thread. Standard library only, Python 3.10+: it runs in the target's interpreter.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from soakd import profiler
from soakd.agent.allocations import SiteResolver, TraceGroups, collect_sampled, collect_traces
from soakd.agent.heap import HeapSampler
from soakd.agent.objects import TypeCounter, count_tasks
from soakd.agent.protocol import AgentError, HeapSample, SitesResult, TypesSample
from soakd.agent.server import AgentClient, AgentRefused, serve
from soakd.snapshots import SnapshotSite
from soakd.sources import SourceLines

__all__ = ["SNAPSHOT_SITES", "Agent", "AgentClient", "AgentError", "AgentRefused", "serve"]

# Entries (distinct tracebacks) kept in a snapshot file: enough to diff, small on disk.
SNAPSHOT_SITES = 500


class Agent:
    """Heap, allocation-site, type and task statistics of the current process.

    Holds a :class:`~soakd.agent.allocations.SiteResolver` (traces to sites), a
    :class:`~soakd.agent.heap.HeapSampler`, a :class:`~soakd.agent.objects.TypeCounter` and
    the :class:`~soakd.profiler.SampledProfiler` (allocation sites at a cost the target does not
    feel; tracemalloc is the exact mode, and wins while it traces). Answers are the typed values
    of :mod:`soakd.agent.protocol`.

    ``source_lines=False``: sites carry no source line (None); for an agent whose answers go to
    a watcher, which reads them on its side.
    """

    def __init__(
        self,
        *,
        frames: int = 8,
        max_sites: int = 50,
        max_types: int = 50,
        exclude: Sequence[str] = (),
        source_lines: bool = True,
    ) -> None:
        if not 1 <= frames <= 1000:
            raise ValueError(f"frames must be between 1 and 1000: {frames}")
        if max_sites < 1 or max_types < 1:
            raise ValueError(f"max_sites and max_types must be ≥ 1: {max_sites}, {max_types}")
        self.frames = frames
        self.max_sites = max_sites
        self.max_types = max_types
        # Reading the sites' sources is the watcher's job when there is one (soakd's worker,
        # the socket server): in the target it costs the target (see soakd.sources).
        self._resolver = SiteResolver(frames, exclude, SourceLines() if source_lines else None)
        self._heap = HeapSampler()
        self._types = TypeCounter(max_types)
        self._profiler = profiler.SampledProfiler() if profiler.AVAILABLE else None
        self._profiler_lost: str | None = profiler.UNAVAILABLE_REASON
        # The running profile has seen every allocation since the process started (not since
        # a restart at another interval): only such a profile tells the heap's mean block.
        self._profile_whole = False
        # The last interval change kept the samples (the sites' series need no restart).
        self._profile_continuous = True
        # Each site's size when it was first reported in a while: a fifth of the sites sent
        # are the most grown since, so that a slow leak far down the list by size is followed
        # from its first samples on, not only once it is among the largest.
        self._site_baseline: dict[str, int] = {}
        # Per site, the cumulative churn of its stacks the profiler released (no live block
        # left): the churn sent is the live stacks' plus this, so it never falls (its
        # difference over a window bounds the variance of the site's growth).
        self._released_churn: dict[str, float] = {}

    # -- the sampled profiler ----------------------------------------------------------------

    @property
    def sampling(self) -> bool:
        """The sampled profiler runs in this process."""
        return self._profiler is not None and self._profiler.running

    def start_profiler(self, interval: int = profiler.DEFAULT_INTERVAL) -> bool:
        """Start the sampled profiler (idempotent); False, with the reason kept, when it cannot."""
        if self._profiler is None:
            return False
        if not self._profiler.running:
            try:
                self._profiler.start(interval=interval, frames=self.frames)
            except (RuntimeError, ValueError) as exc:
                self._profiler_lost = f"sampled profiler failed to start: {exc}"
                return False
            self._profile_whole = True
        return True

    def set_profiler_interval(self, interval: int) -> bool:
        """Sample every ``interval`` bytes from now on, keeping the samples taken so far (the
        site series stay continuous: ``profiler_status()["continuous"]``); a fresh profile
        when that cannot be done. False when the profiler does not run."""
        if self._profiler is None or not self._profiler.running:
            return False
        if self._profiler.stats().interval != interval:
            try:
                self._profile_continuous = self._profiler.set_interval(interval)
                if not self._profile_continuous:
                    self._profile_whole = False
                    self._profiler.start(interval=interval, frames=self.frames)
            except (RuntimeError, ValueError) as exc:
                self._profiler_lost = f"sampled profiler failed to restart: {exc}"
                return False
        return True

    def stop_profiler(self) -> None:
        if self._profiler is not None and self._profiler.running:
            self._profiler.stop()

    def profiler_status(self) -> dict[str, Any]:
        """What attribution this process offers: ``mode`` "sampled" or "off" and why."""
        if self._profiler is not None and self._profiler.running:
            st = self._profiler.stats()
            return {
                "mode": "sampled",
                "interval_bytes": st.interval,
                "frames": st.frames,
                "memory_bytes": st.memory_bytes,
                "dropped_blocks": st.dropped_blocks,
                "continuous": self._profile_continuous,
                "lost": None,
            }
        lost = self._profiler_lost or "sampled profiler not started"
        return {"mode": "off", "interval_bytes": None, "frames": self.frames, "lost": lost}

    @property
    def tracing(self) -> bool:
        return tracemalloc.is_tracing()

    def start_tracing(self) -> None:
        """Start tracemalloc with ``frames`` frames (kept as is if already tracing)."""
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)

    def stop_tracing(self) -> None:
        """Stop tracemalloc: frees its tables and every trace."""
        if tracemalloc.is_tracing():
            tracemalloc.stop()

    def heap(self) -> HeapSample:
        """Cheap heap numbers (see :mod:`soakd.agent.heap` for what ``heap_bytes`` means)."""
        sample = self._heap.sample()
        if self._profiler is not None and self._profiler.running:
            sample = replace(sample, profiler_bytes=float(self._profiler.stats().memory_bytes))
        return sample

    def tasks(self) -> int:
        """Unfinished asyncio tasks of the running loop; call on the loop's thread."""
        return count_tasks()

    def types(self, collect: bool = False) -> TypesSample:
        """Live gc-tracked objects per type name: the top ``max_types`` plus growers.

        ``collect``: run a full collection first (unless the target disabled the collector,
        whose cyclic garbage then really stays). Between full collections the counts include
        cyclic garbage and tuples and dicts not yet untracked, which pile up in the oldest
        generation for minutes and read as growth.
        """
        if collect and gc.isenabled():
            gc.collect()
        return TypesSample(self._types.sample())

    def sites(
        self,
        snapshot_path: str | None = None,
        role: str = "latest",
        *,
        t: float | None = None,
        inline: bool = False,
    ) -> SitesResult:
        """Group the live allocations by site (top ``max_sites`` by size); optionally write a
        ``soakd.snapshot/1`` file, which records ``t`` (seconds since the run started), or
        return it in the answer (``inline``).

        While tracemalloc traces, its exact traces; otherwise the sampled profiler's estimates.
        """
        taken_at = datetime.now(timezone.utc).isoformat()  # noqa: UP017 (3.10 has no UTC)
        cpu_started = time.thread_time()
        interval: int | None = None
        if tracemalloc.is_tracing():
            groups = collect_traces(self._resolver)
        elif self._profiler is not None and self._profiler.running:
            started = time.perf_counter()
            stacks, released = self._profiler.snapshot_released()  # holds the GIL: the pause
            pause = time.perf_counter() - started
            interval = self._profiler.stats().interval
            groups = replace(collect_sampled(self._resolver, stacks, released), pause_s=pause)
            del stacks, released
        else:
            return SitesResult.not_tracing(tracemalloc.get_tracemalloc_memory())
        # The heap level is the block count times a mean block size. From a sampled profile that
        # size is taken once: re-estimated every few seconds its sampling noise would move the
        # level with no block allocated; and a profile restarted mid-run holds only recent
        # blocks (churn, not the heap's mix).
        calibrate = interval is None or (self._profile_whole and not self._heap.calibrated)
        result = self._sites_result(
            groups, interval, snapshot_path, role, t, taken_at, calibrate=calibrate, inline=inline
        )
        return replace(result, cpu_s=time.thread_time() - cpu_started)

    def _select_sites(self, by_size: list[SnapshotSite]) -> list[SnapshotSite]:
        """The ``max_sites`` largest, a fifth of the places going to the most grown since each
        site was first seen (sites no longer live are forgotten: the table stays bounded)."""
        baseline = {s.site: self._site_baseline.get(s.site, s.size) for s in by_size}
        self._site_baseline = baseline
        head = by_size[: self.max_sites - self.max_sites // 5]
        rest = by_size[len(head) :]
        grown = sorted(
            (s for s in rest if s.size > baseline[s.site]),
            key=lambda s: s.size - baseline[s.site],
            reverse=True,
        )[: self.max_sites // 5]
        taken = {s.site for s in grown}
        filler = [s for s in rest if s.site not in taken]  # places no grown site took
        return head + grown + filler[: self.max_sites - len(head) - len(grown)]

    def _with_released_churn(self, groups: TraceGroups) -> list[SnapshotSite]:
        """Sites by size, each one's churn including its released stacks' (kept for the
        sites live now only: the table stays bounded)."""
        by_size = groups.by_site()
        carried = self._released_churn
        for site, churn in groups.released_churn.items():
            carried[site] = carried.get(site, 0.0) + churn
        self._released_churn = {s.site: carried[s.site] for s in by_size if s.site in carried}
        return [
            replace(s, churn=s.churn + self._released_churn[s.site])
            if s.site in self._released_churn
            else s
            for s in by_size
        ]

    def _sites_result(
        self,
        groups: TraceGroups,
        interval: int | None,
        snapshot_path: str | None,
        role: str,
        t: float | None,
        taken_at: str,
        *,
        calibrate: bool = True,
        inline: bool = False,
    ) -> SitesResult:
        if calibrate:
            self._heap.calibrate(groups.traced_bytes, groups.blocks)
        result = SitesResult(
            sites=tuple(self._select_sites(self._with_released_churn(groups))),
            traced_bytes=groups.traced_bytes,
            overhead_bytes=tracemalloc.get_tracemalloc_memory(),
            blocks=groups.blocks,
            skipped_bytes=groups.skipped_bytes,
            own_blocks=groups.own_blocks,
            pause_s=groups.pause_s,
            group_s=groups.group_s,
            tracing=True,
            sampling_interval=interval,
        )
        if snapshot_path is not None or inline:
            from soakd.snapshots import Snapshot, write_snapshot

            started = time.perf_counter()
            snapshot = Snapshot(
                taken_at=taken_at,
                t=t,
                role=role,
                traced_bytes=groups.traced_bytes,
                frames=self.frames if interval else min(tracemalloc.get_traceback_limit(), 1000),
                sites=tuple(groups.by_traceback[:SNAPSHOT_SITES]),
                sampling_interval=interval,
            )
            del groups
            if inline:
                result = replace(result, snapshot=snapshot.to_json())
            if snapshot_path is not None:
                path = os.fspath(write_snapshot(snapshot_path, snapshot))
                result = replace(result, snapshot_path=path, write_s=time.perf_counter() - started)
        return result
