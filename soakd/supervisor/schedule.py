"""The run's scheduled jobs, each at its cadence, each bounded in time.

A hung job in APScheduler 3 blocks every later run of itself, so every job is wrapped: it is
abandoned after ``job_timeout`` and counted as failed, and a sampler's exception is a
``job.failed`` event, never the end of the soak. Jobs scheduled at their fastest cadence
(sites, analysis) decide themselves whether they are due.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from soakd.config import SamplingConfig

Job = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: its name, what it runs, how often, and how late its first run is."""

    name: str
    job: Job
    every_s: float
    offset_s: float = 0.0


def bounded(
    name: str,
    job: Job,
    timeout: float,
    stopping: anyio.Event,
    failed: Callable[[str, BaseException], None],
) -> Job:
    """``job`` bounded by ``timeout``; failures reported to ``failed``; skipped once stopping
    (except the checkpoint, which records the end)."""

    async def run() -> None:
        if stopping.is_set() and name != "checkpoint":
            return
        try:
            await asyncio.wait_for(job(), timeout)
        except Exception as exc:  # a timeout, a gone process, a sampler's bug: not the end
            failed(name, exc)
        except asyncio.CancelledError:
            # scheduler.shutdown() cancels a job in flight: the end of the run, not a failure
            # (APScheduler would print it to stderr as a traceback)
            return

    run.__name__ = name
    return run


# While object counts are suspected, each types sample follows a full collection, this often.
COLLECTED_TYPES_INTERVAL_S = 10.0


def types_every(types_interval: float, workload_interval_s: float) -> float:
    """The types job's period: the collected cadence, on workload-interval boundaries."""
    fast = max(COLLECTED_TYPES_INTERVAL_S, workload_interval_s)
    return min(types_interval, fast)


def jobs(
    s: SamplingConfig,
    *,
    process: Job,
    system: Job,
    checkpoint: Job,
    heap: Job,
    types: Job,
    sites: Job,
    analyze: Job,
    analysis_every_s: float,
    workload_interval_s: float = 0.0,
) -> list[JobSpec]:
    """Every job of a run: the samplers, the analysis and the summary checkpoint.

    The types walk holds the target's GIL for a while, and the workload interval it falls in is
    left out of the judged figures: it runs halfway through a workload interval (which starts
    with the run, as the jobs do), so that it spoils one interval rather than two.
    """
    specs = [
        JobSpec("sample_process", process, s.process_interval),
        JobSpec("sample_system", system, s.system_interval),
        JobSpec("checkpoint", checkpoint, s.checkpoint_interval),
    ]
    if s.enabled:
        specs += [
            JobSpec("sample_heap", heap, s.heap_interval),
            # Run at the faster of its two cadences; the sampler decides which one is due.
            JobSpec(
                "sample_types",
                types,
                types_every(s.types_interval, workload_interval_s),
                offset_s=workload_interval_s / 2,
            ),
            # Site samples halfway between heap samples: a heap sample taken during a grouping
            # (the agent's temporary blocks) is not judged, and must not be every one of them.
            JobSpec(
                "sample_sites",
                sites,
                min(s.sites_interval, s.heap_interval),
                offset_s=s.heap_interval / 2,
            ),
            JobSpec("analyze", analyze, analysis_every_s),
        ]
    return specs


def add_jobs(
    scheduler: AsyncIOScheduler,
    specs: list[JobSpec],
    wrap: Callable[[str, Job], Job],
) -> None:
    first = dt.datetime.now()
    for spec in specs:
        start = first + dt.timedelta(seconds=spec.offset_s)
        every = spec.every_s
        scheduler.add_job(
            wrap(spec.name, spec.job),
            "interval",
            seconds=every,
            id=spec.name,
            name=spec.name,
            start_date=start,
            next_run_time=start,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(every)),
        )
