"""The supervisor: starts the target, schedules sampling and analysis, stops, decides.

It outlives what it watches: a target that crashes, hangs or floods its output ends the run with
a verdict and a report, never with a supervisor traceback. Every scheduled job is bounded in
time, and blocking calls (psutil, SQLite reads) run in threads so sampling never stalls the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from typing import Any

import anyio
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from soakd import run_verdict, rundir, summary
from soakd.config import Config
from soakd.errors import EXIT_INTERNAL, EXIT_USAGE, RunDirError
from soakd.supervisor import interpreter, schedule
from soakd.supervisor.analysis import AnalysisLoop
from soakd.supervisor.interpreter import TargetPython
from soakd.supervisor.recorder import RunRecorder
from soakd.supervisor.sampling import (
    HeapSampler,
    ProcessSampler,
    SiteSampler,
    SystemSampler,
    TypeSampler,
)
from soakd.supervisor.state import RunState
from soakd.supervisor.targets import (
    ExternalTarget,
    PythonTarget,
    Target,
    WorkerLog,
    WorkerProcess,
)
from soakd.supervisor.thresholds import Thresholds
from soakd.supervisor.tracing import Tracer, TracingPolicy, attribution_of, attribution_plan
from soakd.supervisor.workload import WorkloadMonitor


class Supervisor:
    """Coordinates one soak of ``duration`` seconds into the run directory ``run``.

    Its parts, each in its own module of ``soakd/supervisor/``:

    - ``state`` (:class:`RunState`): the clock, the stop request and its reason, readiness,
      the target's failure;
    - ``recorder`` (:class:`RunRecorder`): samples.db, events.jsonl, the observers;
    - ``thresholds`` (:class:`Thresholds`): the rules, and the abort they may call;
    - ``monitor`` (:class:`WorkloadMonitor`): the worker's workload reports, stalls;
    - ``analysis`` (:class:`AnalysisLoop`): the detector, its feed, ``leak.*`` events;
    - ``tracer`` (:class:`Tracer` over a :class:`TracingPolicy`): when attribution runs;
    - ``target`` (:class:`PythonTarget` or :class:`ExternalTarget`, see :meth:`set_external`);
    - the samplers (process, system, heap, types, sites), scheduled by ``schedule.jobs``.
    """

    def __init__(
        self,
        config: Config,
        run: rundir.RunDir,
        duration: float,
        python: TargetPython | None = None,
    ) -> None:
        self.config = config
        # The target's interpreter, checked; the caller checks it before creating the run
        # directory (a bad one is a config error, exit 2).
        self.python = python if python is not None else interpreter.prepare(config)
        self.run_dir = run
        self.state = RunState(duration)
        self.recorder = RunRecorder(config, run, self.state)
        self.thresholds = Thresholds(config, self.state, self.recorder.emit)
        self.monitor = WorkloadMonitor(
            self.state, self.recorder, self.thresholds, config.workload.interval
        )
        self.analysis = AnalysisLoop(config, self.state.now, self.recorder.emit, self.thresholds)
        policy = TracingPolicy.from_config(config.sampling, self.analysis.params)
        self.tracer = Tracer(
            policy, self.state.now, self.recorder, lambda t: self.analysis.restart("site", t)
        )
        self.worker_log = WorkerLog(run.worker_log, config.run.worker_log_limit)
        self.target: Target = PythonTarget(config, self._worker())
        self.process = ProcessSampler(
            self.state,
            lambda: self.target.psproc,
            self.recorder,
            self.analysis,
            self.thresholds,
            self._check_stall,
        )
        self.system = SystemSampler(self.state, self.recorder, self.thresholds)
        self.heap = HeapSampler(
            self.state, self._stats, self.recorder, self.analysis, self.thresholds
        )
        self.types = TypeSampler(
            self.state,
            self._stats,
            self.recorder,
            self.analysis,
            config.sampling,
            config.workload.interval,
        )
        self.sites = SiteSampler(
            self.state, config.sampling, run, self._stats, self.recorder, self.analysis, policy
        )
        self.attribution_known = False
        self.exit_code = EXIT_INTERNAL
        self.summary_error: str | None = None

    def _worker(self) -> WorkerProcess:
        return WorkerProcess(
            self.config,
            self.run_dir,
            self.state,
            self.recorder,
            self.monitor,
            self.worker_log,
            self.python,
        )

    def _stats(self) -> Any:
        return self.target.stats()

    def set_external(self, command: list[str] | None, pid: int | None) -> None:
        """Watch CMD (started here) or a running PID instead of a Python target."""
        if command is None and pid is None:
            return
        worker = self._worker() if self.config.target.http is not None else None
        self.target = ExternalTarget(
            self.config,
            self.run_dir,
            self.state,
            self.recorder,
            self.worker_log,
            worker,
            command,
            pid,
            self.python,
        )

    def _check_stall(self, t: float) -> None:
        worker = self.target.worker
        if self.target.driven and self.state.ready.is_set() and worker and worker.proc:
            self.monitor.check_stall(t)

    # -- analysis and tracing --------------------------------------------------------------
    async def analyze_due(self) -> None:
        """The scheduled analysis: runs when due at the current cadence."""
        if not self.attribution_known:
            await self._attribution()  # an external target's agent may connect late
        now = self.state.now()
        if self.analysis.due(now, self.tracer.policy.fresh(now)):
            await self.analyze()

    async def analyze(self) -> None:
        """Judge what was sampled, then start or stop tracing as the policy says."""
        result = await self.analysis.analyze()
        policy = self.tracer.policy
        zoomed = policy.zoomed
        decision = policy.decide(result.t, result.suspicious, result.findings)
        if decision == "zoom" or (decision is not None and zoomed):
            normal = self.config.sampling.profiler_interval
            reason = "suspicion" if decision == "zoom" else decision
            if await self.tracer.zoom(decision == "zoom", reason, self.target.stats(), normal):
                self.sites.taken = 0  # the next snapshot is the new profile's baseline
                await self.sites.sample()
        elif decision == "start":
            await self.tracer.set(True, "suspicion", self.target.stats())
            await self.sites.sample()
            # Modules the first grouping imports (snapshot writer, gzip) step the level up.
            self.analysis.restart("heap", self.state.now())
        elif decision is not None:
            await self.tracer.set(False, decision, self.target.stats())
            self.analysis.restart("heap", self.state.now())

    async def _attribution(self) -> None:
        """Ask the ready target whether its sampled profiler runs; say so if it fell back.

        Asked once there is someone to ask: an external target's agent may connect after the
        target is ready, and until it answers no site can be sampled.
        """
        if not self.config.sampling.enabled:
            self.attribution_known = True
            return
        stats = self.target.stats()
        if stats is None:
            return
        self.attribution_known = True
        try:
            hello = await stats.ping()
        except Exception as exc:  # a target that cannot answer keeps the fallback
            lost = f"the target's agent did not answer: {type(exc).__name__}: {exc}"
        else:
            status = hello.profiler or {}
            lost = str(status.get("lost") or "the target's agent has no sampled profiler")
            if hello.sampling:
                self.tracer.mark_sampled(True)
                self.recorder.emit("attribution.ready", **attribution_of(status))
                return
        if self.config.sampling.profiler_on:
            self.recorder.emit(
                "attribution.fallback",
                "warning",
                lost=lost,
                tracemalloc=self.config.sampling.tracemalloc,
            )

    async def checkpoint(self) -> None:
        await anyio.to_thread.run_sync(self.recorder.checkpoint)

    # -- lifecycle -------------------------------------------------------------------------
    def _jobs(self) -> list[schedule.JobSpec]:
        s = self.config.sampling
        return schedule.jobs(
            s,
            process=self.process,
            system=self.system,
            checkpoint=self.checkpoint,
            heap=self.heap,
            types=self.types,
            sites=self.sites.due,
            analyze=self.analyze_due,
            analysis_every_s=s.fast_analysis_interval,
            workload_interval_s=self.config.workload.interval,
        )

    def _bounded(self, name: str, job: schedule.Job) -> schedule.Job:
        return schedule.bounded(
            name,
            job,
            self.config.sampling.job_timeout,
            self.state.stop_requested,
            self.recorder.job_failed,
        )

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.recorder.emit("signal.received", signal=signal.Signals(signum).name)
                self.state.request_stop(f"signal {signal.Signals(signum).name}")

    async def _start(self) -> None:
        try:
            self.recorder.write_meta(self.target.name, self.target.driven)
        except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: nothing has started yet
            self.recorder.close()
            raise RunDirError(
                f"cannot write the run directory {self.run_dir.path}: {exc}; "
                "free some space or choose another --run-dir"
            ) from None
        self.recorder.start_observers(self.target.name)
        for obs in self.recorder.observers:
            await obs.start()
            if self.config.metrics.enabled:
                from soakd.sinks.metrics import MetricsServer  # aiohttp: only when used

                if isinstance(obs, MetricsServer) and obs.port is not None:
                    # the bound port, so that bind = "HOST:0" can be scraped at all
                    self.recorder.emit(
                        "metrics.listening", bind=self.config.metrics.bind, port=obs.port
                    )
        self.recorder.emit(
            "run.started",
            target=self.target.name,
            run_dir=str(self.run_dir.path),
            duration_s=self.state.duration,
            pid=os.getpid(),
            attribution=attribution_plan(self.config.sampling, self.python.unavailable),
            python=self.python.describe(),
        )
        # job failures and overruns are job.failed events; shutdown cancels jobs in flight
        logging.getLogger("apscheduler").setLevel(logging.CRITICAL)

    async def _wait_ready(self) -> None:
        """Until the target is ready or the run stops; a start timeout is the target's failure."""
        state = self.state
        with anyio.move_on_after(self.config.run.start_timeout) as scope:
            async with anyio.create_task_group() as wait:

                async def until(ev: anyio.Event) -> None:
                    await ev.wait()
                    wait.cancel_scope.cancel()

                wait.start_soon(until, state.ready)
                wait.start_soon(until, state.stop_requested)
        if scope.cancelled_caught and not state.ready.is_set():
            state.fail(
                self.recorder.emit,
                "target_failed",
                "start_timeout",
                f"target not ready within {self.config.run.start_timeout}s",
            )

    async def run(self) -> int:
        await self._start()
        state = self.state
        scheduler = AsyncIOScheduler()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals)
                await self.target.start(tg)
                await self._wait_ready()
                if state.ready.is_set() and not state.stop_requested.is_set():
                    if self.tracer.policy.always:
                        self.tracer.mark_always()
                    schedule.add_jobs(scheduler, self._jobs(), self._bounded)
                    scheduler.start()
                    # After the first samples are under way: asking the target takes a round
                    # trip, and site samples start once the answer says the profiler runs.
                    await self._attribution()
                    with anyio.move_on_after(max(0.0, state.duration - state.now())):
                        await state.stop_requested.wait()
                    state.request_stop("duration")
                await self._shutdown(scheduler)
                tg.cancel_scope.cancel()
        finally:
            await self._close()
        return self.exit_code

    async def _shutdown(self, scheduler: AsyncIOScheduler) -> None:
        """Last samples and a last analysis while the target still runs; then stop it."""
        self.recorder.emit("run.stopping", reason=self.state.stop_reason)
        if scheduler.running:
            scheduler.shutdown(wait=False)
        psproc = self.target.psproc
        alive = psproc is not None and psproc.is_running()
        if self.state.ready.is_set() and alive:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.process(), 5.0)
            if self.tracer.policy.sites_available:
                # Copying tracemalloc's traces may take seconds; a sampled profile takes a
                # millisecond, so a target that does not answer within 5 s is not answering.
                cap = 30.0 if self.tracer.policy.tracing else 5.0
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.sites.sample("final"), cap)
            if self.config.sampling.enabled:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.heap(), 5.0)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.analyze(), 30.0)
        self.tracer.finish()
        await self.target.stop()
        self.state.ended_epoch = time.time()

    @property
    def verdict(self) -> str:
        """The verdict from what the supervisor holds, when the summary cannot be built from
        disk: the same decision, on the facts known here."""
        facts = run_verdict.RunFacts(
            duration_s=self.state.now(),
            driven=self.target.driven,
            iterations=self.monitor.iterations,
            failed=self.state.failure,
            aborted=self.state.aborted,
            leaks=self.analysis.confirmed() and self.config.detection.on_leak == "fail",
            judged=self.analysis.judged_reported,
            stop_reason=self.state.stop_reason,
        )
        return run_verdict.decide(facts).verdict

    async def _close(self) -> None:
        """The summary from what is on disk (as `soakd report` would decide), reports, exit."""
        state, recorder = self.state, self.recorder
        verdict = self.verdict
        if state.failure is None and self.monitor.iterations == 0 and self.target.driven:
            recorder.emit(
                "target.failed",
                "error",
                reason="no_iterations",
                message="no iteration completed during the run",
            )
        duration = state.now()
        final: dict[str, Any] = {
            "duration_s": duration,
            "ended_at": summary.iso_utc(state.ended_epoch or time.time()),
            "reason": state.stop_reason,
        }
        if recorder.storage_error is not None:
            # The store missed writes: its totals may be old (or 0); these are the run's.
            final["workload_totals"] = dict(self.monitor.totals)
            final["storage_error"] = recorder.storage_error
        s: dict[str, Any] = {}
        try:
            s = await anyio.to_thread.run_sync(lambda: recorder.final_summary(final))
            s["worker_log_dropped_bytes"] = self.worker_log.dropped
            if recorder.job_failures:
                s["job_failures"] = dict(recorder.job_failures)
            verdict = str(s["verdict"])
            summary.write_summary(self.run_dir.path, s)
        except OSError as exc:  # a full or broken disk: say so plainly, exit 2 (as at start)
            self.summary_error = (
                f"cannot write summary.json in the run directory {self.run_dir.path}: "
                f"{exc.strerror or exc}; free space or choose another --run-dir"
            )
            recorder.emit("summary.failed", "error", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            recorder.emit("summary.failed", "error", error=f"{type(exc).__name__}: {exc}")
        try:
            from soakd.reporting import write_reports

            await anyio.to_thread.run_sync(lambda: write_reports(self.run_dir.path, s))
        except Exception as exc:
            recorder.emit("report.failed", "error", error=f"{type(exc).__name__}: {exc}")
        self.exit_code = summary.VERDICT_EXIT[verdict]
        if recorder.storage_error is not None:  # the cause, when summary.json failed too
            lost = recorder.job_failures.get("store", 0)
            also = "; summary.json could not be written either" if self.summary_error else ""
            self.summary_error = (
                f"storage failed in the run directory {self.run_dir.path}: "
                f"{recorder.storage_error}; {lost} write(s) lost, what was written is kept "
                f"(verdict so far: {verdict}, {self.monitor.iterations} iterations{also}); "
                "free space or choose another --run-dir"
            )
        if self.summary_error is not None:
            print(f"soakd: error: {self.summary_error}", file=sys.stderr, flush=True)
            self.exit_code = EXIT_USAGE
        recorder.emit(
            "run.finished",
            verdict=verdict,
            exit_code=self.exit_code,
            duration_s=round(duration, 3),
            ended_at=final["ended_at"],
            leaks=len(s.get("leaks", [])),
            breaches=len(s.get("breaches", [])),
        )
        await recorder.stop_observers()
        self.worker_log.close()
        recorder.close()
