"""The supervisor: starts and watches the worker, schedules sampling and analysis, decides.

It outlives what it watches: a worker that crashes, hangs or floods its output ends the run with
a verdict and a report, never with a supervisor traceback. Every scheduled job is bounded in time
(a hung job in APScheduler 3 blocks every later run of itself), and blocking calls (psutil, SQLite
reads) run in threads so sampling never stalls the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import psutil
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from soakd import rundir, summary
from soakd.channel import Channel, ChannelClosed, Message, WorkerLink
from soakd.config import Config, SamplingConfig
from soakd.detection import DetectionParams, Detector, Finding, SiteInfo
from soakd.errors import EXIT_INTERNAL, EXIT_USAGE, CommandError
from soakd.rules import RuleEngine, rules_from_config
from soakd.sinks.alerts import AlertSender
from soakd.sinks.base import RunObserver
from soakd.sinks.events import EventLog
from soakd.sinks.notify import Notifier, child_environment
from soakd.sinks.store import SampleStore

Job = Callable[[], Awaitable[None]]
FAST_SITES_S = 60.0  # sites sampled at the heap cadence this long after tracing starts
STALL_ENV = "SOAKD_FAULT_STALL_SAMPLING_AFTER"  # test hook: process sampling hangs after N s


def _fast_analysis(s: SamplingConfig) -> float:
    """The analysis cadence while a verdict is near: twice the usual, no faster than heap
    samples arrive."""
    return min(s.analysis_interval, max(s.heap_interval, s.analysis_interval / 2))


def detection_params(config: Config) -> DetectionParams:
    d = config.detection
    return DetectionParams(
        warmup_floor_s=d.warmup,
        warmup_max_s=d.warmup_max,
        warmup_settle_s=d.warmup,  # a warm-up end is accepted after as much data as the floor
        window_s=d.window,
        min_window_s=min(60.0, d.window / 2),
        min_heap_slope_bytes_per_h=float(d.min_heap_slope),
        min_native_slope_bytes_per_h=float(d.min_native_slope),
        native_min_window_s=d.native_window,
        min_count_slope_per_h=d.min_count_slope,
        min_object_slope_per_h=d.min_object_slope,
        confidence=d.confidence,
        confirm_after=d.confirm_after,
    )


class WorkerLog:
    """Keeps the first ``limit`` bytes of the target's output; counts the rest."""

    def __init__(self, path: Path, limit: int) -> None:
        self._fh = path.open("ab")
        self._left = limit
        self.dropped = 0

    def write(self, data: bytes) -> None:
        keep = data[: max(0, self._left)]
        if keep:
            try:
                self._fh.write(keep)
                self._fh.flush()
            except OSError:
                pass
            self._left -= len(keep)
        self.dropped += len(data) - len(keep)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.dropped:
                self._fh.write(f"\n[soakd: {self.dropped} more bytes of output dropped]\n".encode())
            self._fh.close()


class Supervisor:
    def __init__(self, config: Config, run: rundir.RunDir, duration: float) -> None:
        self.config = config
        self.run_dir = run
        self.duration = duration
        self.t0 = time.monotonic()
        self.started_epoch = time.time()
        self.events = EventLog(run.events, run.run_id, self.t0, console=config.output.console)
        self.store = SampleStore(run.samples)
        self.detector = Detector(detection_params(config))
        self.rules = RuleEngine(rules_from_config(config), grace_s=config.detection.warmup)
        self.stop_requested = anyio.Event()
        self.stop_reason = "duration"
        self.aborted = False
        self.failure: dict[str, Any] | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.psproc: psutil.Process | None = None
        self.link: WorkerLink | None = None
        self.external_cmd: list[str] | None = None
        self.external_pid: int | None = None
        self.ext_proc: asyncio.subprocess.Process | None = None
        self.agent_socket: str | None = None
        self._agent: Any = None
        self.ready = anyio.Event()
        self.finished = anyio.Event()
        self.worker_gone = anyio.Event()  # set once worker.exited is emitted
        self.tracing = False
        self.tracing_since = 0.0
        self._last_sites_t = -math.inf
        self._last_analysis_t = -math.inf
        self._suspected = False  # a finding awaits confirmation (or clearing)
        self._sites_ops = 0  # site samples started + finished: odd while one runs
        # soakd's own small blocks in the worker (the agent's tables), as its last grouping
        # counted them from the traces: left out of the heap level the detector judges.
        self._agent_blocks = 0.0
        self.snapshots_taken = 0
        self.overhead_bytes = 0.0
        self.iterations = 0
        self.last_values: dict[str, float] = {}
        self.job_failures: dict[str, int] = {}
        self.warmup_reported = False
        self.observers: list[RunObserver] = []
        self.worker_log = WorkerLog(run.worker_log, config.run.worker_log_limit)
        self._stall_after = float(os.environ.get(STALL_ENV, "inf"))
        self._sample_count = 0
        self.last_workload_t = 0.0
        self.stalled = False
        self._pending: list[tuple[Any, ...]] = []

    # -- helpers ---------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        self.events.emit(event, level, **fields)

    def request_stop(self, reason: str) -> None:
        if not self.stop_requested.is_set():
            self.stop_reason = reason
            self.stop_requested.set()

    def _record(self, t: float, values: Mapping[str, float]) -> None:
        try:
            self.store.add(t, values)
        except Exception as exc:  # full disk: keep watching, say so once per kind
            self._job_failed("store", exc)
        self.last_values.update(values)
        for obs in self.observers:
            with contextlib.suppress(Exception):
                obs.on_samples(t, values)

    def _job_failed(self, name: str, exc: BaseException) -> None:
        count = self.job_failures.get(name, 0) + 1
        self.job_failures[name] = count
        if count in (1, 10, 100) or count % 1000 == 0:
            self.emit("job.failed", "warning", job=name, error=f"{type(exc).__name__}: {exc}",
                      count=count)  # fmt: skip

    def _bounded(self, name: str, job: Job) -> Job:
        timeout = self.config.sampling.job_timeout

        async def run() -> None:
            if self.stop_requested.is_set() and name != "checkpoint":
                return
            try:
                await asyncio.wait_for(job(), timeout)
            except TimeoutError as exc:
                self._job_failed(name, exc)
            except (ChannelClosed, psutil.NoSuchProcess, psutil.AccessDenied) as exc:
                self._job_failed(name, exc)
            except Exception as exc:  # a sampler's bug must not end the soak
                self._job_failed(name, exc)
            except asyncio.CancelledError:
                # scheduler.shutdown() cancels a job in flight: the end of the run, not a failure
                # (APScheduler would print it to stderr as a traceback)
                return

        run.__name__ = name
        return run

    # -- external mode ---------------------------------------------------------------------
    def set_external(self, command: list[str] | None, pid: int | None) -> None:
        """Watch CMD (started here) or a running PID instead of a Python target."""
        self.external_cmd = command
        self.external_pid = pid

    @property
    def external(self) -> bool:
        return self.external_cmd is not None or self.external_pid is not None

    @property
    def target_name(self) -> str:
        if self.external_cmd is not None:
            return " ".join(self.external_cmd)
        if self.external_pid is not None:
            return f"pid:{self.external_pid}"
        return self.config.target.name

    @property
    def driven(self) -> bool:
        """Whether soakd drives a workload (then no completed iteration means failure)."""
        return not self.external or self.config.target.http is not None

    async def _start_external(self) -> None:
        cfg = self.config
        if self.external_cmd is not None:
            self.agent_socket = f"/tmp/soakd-agent-{self.run_dir.run_id}.sock"
            env = child_environment(os.environ)
            env.pop("SOAKD_AGENT_DISABLED", None)
            env["SOAKD_AGENT_SOCKET"] = self.agent_socket
            try:
                self.ext_proc = await asyncio.create_subprocess_exec(
                    *self.external_cmd, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                self.failure = {
                    "reason": "start",
                    "message": f"cannot start {self.external_cmd[0]!r}: {exc}",
                }
                self.emit("target.failed", "error", **self.failure)
                self.request_stop("target_failed")
                return
            self.psproc = psutil.Process(self.ext_proc.pid)
            self.emit("target.started", pid=self.ext_proc.pid, command=self.external_cmd)
        else:
            assert self.external_pid is not None
            self.psproc = psutil.Process(self.external_pid)
            self.agent_socket = os.environ.get(
                "SOAKD_AGENT_SOCKET", f"/tmp/soakd-agent-{self.external_pid}.sock"
            )
            self.emit("target.attached", pid=self.external_pid, name=self.psproc.name())
        if cfg.target.http is not None:
            await self._spawn_worker(watch=False)  # the worker only drives HTTP load
        else:
            self.ready.set()

    def _stats_source(self) -> Any:
        """Where heap/type/site stats come from: our worker, or an agent in the watched app."""
        if not self.external:
            return self.link
        if self._agent is None and self.agent_socket and os.path.exists(self.agent_socket):
            from soakd.agent.server import AgentClient

            self._agent = AgentClient(self.agent_socket)
            self.emit("agent.connected", socket=self.agent_socket)
        return self._agent

    async def _ask(self, op: str, timeout: float, **params: Any) -> Any:
        source = self._stats_source()
        if source is None:
            return None
        if isinstance(source, WorkerLink):
            return await source.request(op, timeout, **params)
        return await anyio.to_thread.run_sync(lambda: getattr(source, op)(**params))

    async def _watch_external(self) -> None:
        if self.ext_proc is not None:
            code = await _exited(self.ext_proc)
        else:
            assert self.psproc is not None
            while self.psproc.is_running() and self.psproc.status() != psutil.STATUS_ZOMBIE:
                await anyio.sleep(self.config.sampling.process_interval)
            code = None
        if not self.stop_requested.is_set():
            what = "exited" if code is None else f"exited with code {code}"
            self.failure = {"reason": "target_exited", "message": f"watched process {what}"}
            self.emit("target.failed", "error", **self.failure)
            self.request_stop("target_exited")

    # -- setup -----------------------------------------------------------------------------
    def _write_meta(self) -> None:
        cfg = self.config
        self.store.set_meta("run_id", self.run_dir.run_id)
        self.store.set_meta("started_epoch", repr(self.started_epoch))
        self.store.set_meta("started_at", summary._iso(self.started_epoch))
        self.store.set_meta("target", self.target_name)
        self.store.set_meta("config", cfg.model_dump(mode="json", by_alias=True))
        self.store.set_meta("duration_s", repr(self.duration))
        self.store.set_meta("workload_totals", {})
        self.store.set_meta("driven", "1" if self.driven else "0")
        rundir.write_json_atomic(
            self.run_dir.path / rundir.CONFIG,
            {"config": cfg.model_dump(mode="json", by_alias=True), "base_dir": cfg.base_dir},
        )

    def _build_observers(self) -> None:
        cfg = self.config
        self.observers.append(AlertSender(cfg.alerts, self._log_from_sink, self.run_dir.run_id,
                                          self.target_name))  # fmt: skip
        self.observers.append(Notifier())
        if cfg.metrics.enabled:
            from soakd.sinks.metrics import MetricsServer

            self.observers.append(
                MetricsServer(cfg.metrics.bind, self.run_dir.run_id, cfg.target.name)
            )
        if sys.stderr.isatty() and cfg.output.console != "json":
            from soakd.reporting.progress import Progress

            self.observers.append(Progress(self.duration))

        def fan_out(event: str, fields: dict[str, Any]) -> None:
            for obs in self.observers:
                with contextlib.suppress(Exception):
                    obs.on_event(event, fields)

        self.events.add_listener(fan_out)

    def _log_from_sink(self, event: str, fields: Mapping[str, Any]) -> None:
        self.emit(event, **dict(fields))

    # -- worker ----------------------------------------------------------------------------
    async def _spawn_worker(self, watch: bool = True) -> None:
        cfg = self.config
        parent, child = socket.socketpair()
        env = child_environment(os.environ)
        env.update(
            SOAKD_CHANNEL_FD=str(child.fileno()),
            SOAKD_CONFIG=str(self.run_dir.path / rundir.CONFIG),
            SOAKD_SUPERVISOR_PID=str(os.getpid()),
            SOAKD_AGENT_DISABLED="1",
            PYTHONUNBUFFERED="1",
        )
        limit = cfg.run.worker_memory_limit

        def preexec() -> None:
            if limit:
                import resource

                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "soakd.worker",
            pass_fds=(child.fileno(),), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=preexec if limit else None,
        )  # fmt: skip
        child.close()
        if watch:
            self.psproc = psutil.Process(self.proc.pid)
        self.link = WorkerLink(await Channel.open(parent), self._on_message)
        self.emit("worker.started", pid=self.proc.pid)

    def _on_message(self, message: Message) -> None:
        kind = message.get("msg")
        if kind == "ready":
            self.ready_t = self.now()
            self.emit("worker.ready", pid=message.get("pid"))
            self.ready.set()
        elif kind == "workload":
            self._on_workload(message)
        elif kind == "failed":
            self.failure = {"reason": message.get("reason"), "message": message.get("message")}
            self.emit("target.failed", "error", **self.failure)
            self.request_stop("target_failed")
        elif kind == "finished":
            self.finished.set()

    def _on_workload(self, message: Message) -> None:
        interval = message.get("interval") or {}
        totals = message.get("totals") or {}
        if not isinstance(interval, dict) or not isinstance(totals, dict):
            return
        t = self.now()
        self.last_workload_t = t
        if self.stalled:
            self.stalled = False
            self.emit("workload.resumed")
        self.iterations = int(totals.get("iterations", 0) or 0)
        lat = interval.get("latency_ms") or {}
        first = interval.get("first_event_ms") or {}
        values = {
            "throughput_per_s": interval.get("throughput_per_s", 0.0),
            "error_rate": interval.get("error_rate", 0.0),
            "iterations": interval.get("iterations", 0),
            "errors": interval.get("errors", 0),
            "missed_starts": interval.get("missed_starts", 0),
            "latency_p50_ms": lat.get("p50", 0.0),
            "latency_p90_ms": lat.get("p90", 0.0),
            "latency_p99_ms": lat.get("p99", 0.0),
            "latency_max_ms": lat.get("max", 0.0),
            "first_event_p50_ms": first.get("p50", 0.0),
            "first_event_p99_ms": first.get("p99", 0.0),
        }
        clean = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
        self._record(t, clean)
        try:
            # the interval's histograms feed /metrics; the store keeps the percentiles (bounded)
            self.store.add_workload(t, {k: v for k, v in interval.items() if "hist" not in k})
            self.store.set_meta("workload_totals", totals)
        except Exception as exc:
            self._job_failed("store", exc)
        if interval.get("iterations", 0) or interval.get("errors", 0):
            self.rules.observe(t, clean)
        self.emit(
            "workload.interval",
            iterations=clean.get("iterations", 0),
            errors=clean.get("errors", 0),
            throughput_per_s=round(clean.get("throughput_per_s", 0.0), 2),
            error_rate=round(clean.get("error_rate", 0.0), 4),
            latency_p99_ms=round(clean.get("latency_p99_ms", 0.0), 2),
            first_event_p50_ms=round(clean.get("first_event_p50_ms", 0.0), 2),
        )
        for obs in self.observers:
            with contextlib.suppress(Exception):
                obs.on_workload(t, interval, totals)
        self._evaluate_rules()

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while data := await proc.stdout.read(65536):
            self.worker_log.write(data)

    async def _watch_worker(self) -> None:
        assert self.proc is not None
        code = await _exited(self.proc)
        if self.failure is None and not self.finished.is_set() and not self._stopping_worker:
            sig = -code if code < 0 else None
            what = f"signal {signal.Signals(sig).name}" if sig else f"exit code {code}"
            self.failure = {"reason": "worker_died", "message": f"worker died: {what}"}
            self.emit("target.failed", "error", returncode=code, **self.failure)
            self.request_stop("worker_died")
        self.emit("worker.exited", returncode=code)
        self.worker_gone.set()

    _stopping_worker = False

    # -- samplers --------------------------------------------------------------------------
    def _process_sample(self) -> dict[str, float]:
        p = self.psproc
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
        if self._sample_count % 10 == 0:  # USS walks smaps: affordable every tenth sample
            with contextlib.suppress(psutil.Error):
                values["uss_bytes"] = p.memory_full_info().uss
        self._sample_count += 1
        return values

    async def sample_process(self) -> None:
        if self.now() > self._stall_after:
            await anyio.sleep(float("inf"))  # test hook: a stalled sampler must trip the watchdog
        values = await anyio.to_thread.run_sync(self._process_sample)
        t = self.now()
        self._record(t, values)
        rss = values["rss_bytes"] - self.overhead_bytes  # tracemalloc's own tables are not a leak
        self._feed("rss", "rss", t, rss)
        for key in ("fds", "threads"):
            self._feed(key, key, t, values[key])
        self.rules.observe(t, values)
        self._evaluate_rules()
        self._check_stall(t)

    def _check_stall(self, t: float) -> None:
        """A worker whose loop is blocked stops reporting: say so rather than pass silently."""
        if not (self.driven and self.ready.is_set()) or self.stalled or self.proc is None:
            return
        silent = t - max(self.last_workload_t, self.ready_t)
        if silent > max(3 * self.config.workload.interval, 10.0):
            self.stalled = True
            self.emit("workload.stalled", "warning", silent_s=round(silent, 1))

    async def sample_system(self) -> None:
        def read() -> dict[str, float]:
            vm = psutil.virtual_memory()
            return {
                "system_memory_percent": 100.0 * (vm.total - vm.available) / vm.total,
                "system_available_bytes": vm.available,
                "load_avg": os.getloadavg()[0],
            }

        values = await anyio.to_thread.run_sync(read)
        t = self.now()
        self._record(t, values)
        self.rules.observe(t, values)
        self._evaluate_rules()

    async def sample_heap(self) -> None:
        sites_before = self._sites_ops
        result = await self._ask("heap", self.config.sampling.job_timeout)
        # The agent's grouping of traces holds temporary blocks: a heap sample taken while it
        # ran is stored but not judged (it would read as churn, or as growth of the target).
        judged = sites_before == self._sites_ops and sites_before % 2 == 0
        if not result:
            return
        values = {k: float(v) for k, v in result.items() if isinstance(v, int | float)}
        t = self.now()
        self.overhead_bytes = values.get("tracemalloc_overhead_bytes", 0.0)
        self._record(t, values)
        # The detector's heap level counts blocks: continuous whether tracing or not (traced
        # bytes restart at zero, then rise as replaced entries get traced: not growth).
        if judged and "heap_blocks" in values:
            block_bytes = self.detector.params.block_bytes
            blocks = values["heap_blocks"] - self._agent_blocks
            self._feed("heap", "heap", t, blocks * block_bytes)
        elif judged and "heap_bytes" in values:
            self._feed("heap", "heap", t, values["heap_bytes"])
        if judged and "malloc_bytes" in values:  # tracemalloc's tables are malloc'd: not growth
            self._feed("malloc", "malloc", t, values["malloc_bytes"] - self.overhead_bytes)
        if "tasks" in values:
            self._feed("tasks", "tasks", t, values["tasks"])
        self.rules.observe(t, values)

    async def sample_types(self) -> None:
        result = await self._ask("types", self.config.sampling.job_timeout)
        if not result:
            return
        t = self.now()
        counts = {f"type:{k}": float(v) for k, v in result.items()}
        self._record(t, counts)
        for name, count in result.items():
            self._feed("type", name, t, float(count))

    async def _sample_sites_due(self) -> None:
        """The scheduled site sample: every ``heap_interval`` for a while after tracing starts.

        Right after tracing starts the traces are few (only allocations made since), so a
        sample is cheap, and a leaking line gets enough points for a verdict in well under a
        minute instead of several; later the slower ``sites_interval`` bounds the pauses.
        """
        s = self.config.sampling
        fast = self._tracing_fresh(self.now())
        every = min(s.sites_interval, s.heap_interval) if fast else s.sites_interval
        if self._due(self._last_sites_t, every):
            await self.sample_sites()

    def _tracing_fresh(self, now: float) -> bool:
        """Tracing started less than ``FAST_SITES_S`` ago: its sites get their first points."""
        return self.tracing and now - self.tracing_since < FAST_SITES_S

    def _due(self, last_t: float, every: float) -> bool:
        """For jobs scheduled at their fastest cadence that run only when due at the current
        one (10 % early is on time: scheduler jitter)."""
        return self.now() - last_t >= 0.9 * every

    async def sample_sites(self, role: str = "latest") -> None:
        if not self.tracing:
            return
        self._last_sites_t = self.now()
        self._sites_ops += 1  # odd while a grouping runs in the worker
        try:
            await self._sample_sites(role)
        finally:
            self._sites_ops += 1

    async def _sample_sites(self, role: str) -> None:
        if self.snapshots_taken == 0 and role == "latest":
            role = "baseline"
        path = self.run_dir.snapshots / f"{role}.json.gz"
        result = await self._ask(
            "sites", self.config.sampling.job_timeout, snapshot_path=str(path), role=role,
            t=round(self.now(), 3),
        )  # fmt: skip
        if result is None:
            return
        t = self.now()
        self.snapshots_taken += 1
        values: dict[str, float] = {}
        for site in result.get("sites", []):
            key = site["site"]
            values[f"site:{key}"] = float(site["size"])
            values[f"site_count:{key}"] = float(site["count"])
            tb = tuple(site.get("traceback") or ())
            self.store.add_site(key, tb, site.get("line"))
            self._feed("site", key, t, float(site["size"]),
                       SiteInfo(site=key, traceback=tb, line=site.get("line")),
                       float(site["count"]))  # fmt: skip
        values["traced_bytes"] = float(result.get("traced_bytes", 0.0))
        # Counted by the agent from the traces, so that the target's allocations made while
        # the grouping ran stay in the heap level (measuring blocks around the grouping from
        # here took them out too, and hid a leak when a loaded box made groupings slow).
        self._agent_blocks = float(result.get("own_blocks", self._agent_blocks))
        values["agent_blocks"] = self._agent_blocks
        values["heap_pause_s"] = float(result.get("pause_s", 0.0))
        self._record(t, values)
        self.emit("snapshot.saved", path=str(path), role=role,
                  traced_bytes=values["traced_bytes"], pause_s=values["heap_pause_s"])  # fmt: skip

    async def set_tracing(self, on: bool, reason: str) -> None:
        if on == self.tracing or self._stats_source() is None:
            return
        await self._ask("start_tracing" if on else "stop_tracing", 10.0)
        # Site series start over when tracing does (the detector's heap level is blocks-based).
        self._feed("discontinuity", "site", self.now())
        self.tracing = on
        self.tracing_since = self.now()
        self.emit("tracing.started" if on else "tracing.stopped", reason=reason)

    def _feed(self, *sample: Any) -> None:
        """Queue a sample for the detector; only the analysis thread touches the detector."""
        if len(self._pending) >= 200_000:  # analysis stalled: keep the newest half
            del self._pending[:100_000]
        self._pending.append(sample)

    async def _analyze_due(self) -> None:
        """The scheduled analysis: twice as often while a verdict is near.

        That is while the warm-up end is being decided, for a while after tracing starts (the
        suspect's site gets its first verdicts) and while a finding is suspected: confirming it
        takes ``confirm_after`` analyses, which at the slow cadence add most of the time to
        detection. Persistence still spans that many analyses, each with fresh samples.
        """
        s = self.config.sampling
        now = self.now()
        fast = (
            self._suspected
            or (not self.warmup_reported and now >= self.config.detection.warmup)
            or self._tracing_fresh(now)
        )
        if self._due(self._last_analysis_t, _fast_analysis(s) if fast else s.analysis_interval):
            await self.analyze()

    async def analyze(self) -> None:
        now = self.now()
        self._last_analysis_t = now
        batch, self._pending = self._pending, []
        detector = self.detector

        def work() -> tuple[list[Finding], float | None, bool, list[Finding]]:
            for sample in batch:
                if sample[0] == "discontinuity":
                    detector.mark_discontinuity(sample[1], sample[2])
                else:
                    detector.add(*sample)
            changes = detector.analyze(now)
            return changes, detector.warmup_end(), detector.suspicious(now), detector.findings()

        changes, warmup, suspicious, findings = await anyio.to_thread.run_sync(work)
        self._suspected = any(f.state == "suspected" for f in findings)
        if not self.warmup_reported and warmup is not None:
            self.warmup_reported = True
            self.emit("detection.warmup_end", warmup_end_s=round(warmup, 3))
        for finding in changes:
            self._emit_finding(finding)
            if finding.state != "suspected":
                self.rules.observe_leak(now, finding.kind, confirmed=finding.state == "confirmed")
        self._evaluate_rules()
        mode = self.config.sampling.tracemalloc
        if mode == "on-suspicion" and self.config.sampling.enabled and not self.tracing:
            unattributed = any(f.kind in ("heap", "objects") and f.site is None for f in findings)
            if suspicious or unattributed:
                await self.set_tracing(True, "suspicion")
                await self.sample_sites()
                # Modules the first grouping imports (snapshot writer, gzip) step the level up.
                self._feed("discontinuity", "heap", self.now())
        elif mode == "on-suspicion" and self.tracing:
            await self._maybe_stop_tracing(now, suspicious, findings)

    async def _maybe_stop_tracing(
        self, now: float, suspicious: bool, findings: list[Finding]
    ) -> None:
        """On suspicion, trace until the suspect is attributed or cleared: tracing costs a lot."""
        # long enough for a dozen site samples and two of the detector's shortest windows
        hold = max(
            12 * self.config.sampling.sites_interval, min(120.0, self.config.detection.window)
        )
        if now - self.tracing_since < hold or suspicious:
            return
        if any(f.kind in ("heap", "objects") and (f.state == "suspected" or f.site is None)
               for f in findings):  # fmt: skip
            return
        # A site found lately is watched a while longer: if it was only a structure turning over
        # since tracing started, its growth stops and the finding is cleared. Once tracing stops
        # no more site samples come, and a finding would stand as it is.
        if any(f.site and now - f.first_detected_s < hold for f in findings):
            return
        attributed = any(f.kind == "heap" and f.site for f in findings)
        await self.set_tracing(False, "attributed" if attributed else "cleared")
        self._feed("discontinuity", "heap", self.now())

    def _emit_finding(self, f: Finding) -> None:
        level = "warning" if f.state == "confirmed" else "info"
        self.emit(
            f"leak.{f.state}", level,
            kind=f.kind, key=f.key, site=f.site, traceback=list(f.traceback), line=f.line,
            type=f.type, slope_per_h=round(f.slope_per_h, 3),
            slope_low_per_h=round(f.slope_low_per_h, 3), unit=f.unit, growth=round(f.growth, 1),
            p_value=f.p_value, first_detected_s=round(f.first_detected_s, 3),
            analyses=f.analyses, signals=list(f.signals),
        )  # fmt: skip

    def _evaluate_rules(self) -> None:
        for breach in self.rules.evaluate(self.now()):
            self.emit("threshold.breached", "warning", **breach.event_fields())
            if breach.action == "abort":
                self.aborted = True
                self.request_stop(f"aborted: {breach.rule}")

    async def checkpoint(self) -> None:
        def write() -> None:
            s = summary.build_summary(self.run_dir.path, on_leak=self.config.detection.on_leak)
            summary.write_summary(self.run_dir.path, s)

        await anyio.to_thread.run_sync(write)

    # -- lifecycle -------------------------------------------------------------------------
    def _schedule(self, scheduler: AsyncIOScheduler) -> None:
        s = self.config.sampling
        first = dt.datetime.now()
        jobs: list[tuple[str, Job, float]] = [
            ("sample_process", self.sample_process, s.process_interval),
            ("sample_system", self.sample_system, s.system_interval),
            ("checkpoint", self.checkpoint, s.checkpoint_interval),
        ]
        if s.enabled:
            jobs += [
                ("sample_heap", self.sample_heap, s.heap_interval),
                ("sample_types", self.sample_types, s.types_interval),
                ("sample_sites", self._sample_sites_due, min(s.sites_interval, s.heap_interval)),
                ("analyze", self._analyze_due, _fast_analysis(s)),
            ]
        # Site samples halfway between heap samples: a heap sample taken during a grouping
        # (the agent's temporary blocks) is not judged, and must not be every one of them.
        offsets = {"sample_sites": dt.timedelta(seconds=s.heap_interval / 2)}
        for name, job, every in jobs:
            start = first + offsets.get(name, dt.timedelta())
            scheduler.add_job(
                self._bounded(name, job), "interval", seconds=every, id=name, name=name,
                start_date=start, next_run_time=start, max_instances=1, coalesce=True,
                misfire_grace_time=max(1, int(every)),
            )  # fmt: skip

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.emit("signal.received", signal=signal.Signals(signum).name)
                self.request_stop(f"signal {signal.Signals(signum).name}")

    async def run(self) -> int:
        try:
            self._write_meta()
        except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: nothing has started yet
            self.store.close()
            self.events.close()
            raise CommandError(
                f"cannot write the run directory {self.run_dir.path}: {exc}; "
                "free some space or choose another --run-dir"
            ) from None
        self._build_observers()
        for obs in self.observers:
            await obs.start()
        self.emit("run.started", target=self.target_name, run_dir=str(self.run_dir.path),
                  duration_s=self.duration, pid=os.getpid())  # fmt: skip
        # job failures and overruns are job.failed events; shutdown cancels jobs in flight
        logging.getLogger("apscheduler").setLevel(logging.CRITICAL)
        scheduler = AsyncIOScheduler()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals)
                if self.external:
                    await self._start_external()
                    if self.ext_proc is not None:
                        tg.start_soon(self._pump_output, self.ext_proc)
                    if self.psproc is not None:
                        tg.start_soon(self._watch_external)
                else:
                    await self._spawn_worker()
                if self.proc is not None and self.link is not None:
                    tg.start_soon(self.link.pump)
                    tg.start_soon(self._pump_output, self.proc)
                    tg.start_soon(self._watch_worker)
                with anyio.move_on_after(self.config.run.start_timeout) as scope:
                    async with anyio.create_task_group() as wait:

                        async def until(ev: anyio.Event) -> None:
                            await ev.wait()
                            wait.cancel_scope.cancel()

                        wait.start_soon(until, self.ready)
                        wait.start_soon(until, self.stop_requested)
                if scope.cancelled_caught and not self.ready.is_set():
                    self.failure = {
                        "reason": "start_timeout",
                        "message": f"target not ready within {self.config.run.start_timeout}s",
                    }
                    self.emit("target.failed", "error", **self.failure)
                    self.request_stop("target_failed")
                if self.ready.is_set() and not self.stop_requested.is_set():
                    if (
                        self.config.sampling.enabled
                        and self.config.sampling.tracemalloc == "always"
                    ):
                        self.tracing = True
                        self.tracing_since = self.now()
                        self.emit("tracing.started", reason="always")
                    self._schedule(scheduler)
                    scheduler.start()
                    with anyio.move_on_after(max(0.0, self.duration - self.now())):
                        await self.stop_requested.wait()
                    self.request_stop("duration")
                await self._shutdown(scheduler)
                tg.cancel_scope.cancel()
        finally:
            await self._close()
        return self.exit_code

    async def _shutdown(self, scheduler: AsyncIOScheduler) -> None:
        self.emit("run.stopping", reason=self.stop_reason)
        if scheduler.running:
            scheduler.shutdown(wait=False)
        alive = self.psproc is not None and self.psproc.is_running()
        if self.ready.is_set() and alive:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sample_process(), 5.0)
            if self.tracing:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.sample_sites("final"), 30.0)
            if self.config.sampling.enabled:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.sample_heap(), 5.0)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.analyze(), 30.0)
        await self._stop_worker()
        await self._stop_external()
        self.ended = time.time()

    async def _stop_external(self) -> None:
        """Stop a command we started (its whole session); never a process we only attached to."""
        proc = self.ext_proc
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, self.config.run.stop_timeout), (signal.SIGKILL, 3.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with anyio.move_on_after(wait):
                await _exited(proc)
            if proc.returncode is not None:
                return

    async def _stop_worker(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self._stopping_worker = True
        if self.link is not None and proc.returncode is None:
            await self.link.notify("stop")
        with anyio.move_on_after(self.config.run.stop_timeout + 5.0):
            await self.worker_gone.wait()
        self._kill_group(signal.SIGTERM)
        with anyio.move_on_after(3.0):
            await proc.wait()  # also until the children holding its output pipe are gone
        self._kill_group(signal.SIGKILL)
        with anyio.move_on_after(3.0):
            await proc.wait()
        with anyio.move_on_after(1.0):  # let _watch_worker record worker.exited before the end
            await self.worker_gone.wait()

    def _kill_group(self, sig: int) -> None:
        """The worker and anything the target forked: they share the worker's session."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    @property
    def verdict(self) -> str:
        leaks = any(f.state == "confirmed" for f in self.detector.findings())
        return summary.decide_verdict(
            failed=self.failure is not None,
            aborted=self.aborted,
            leaks=leaks and self.config.detection.on_leak == "fail",
            iterations=self.iterations if self.driven else -1,
        )

    exit_code = EXIT_INTERNAL
    summary_error: str | None = None
    ended = 0.0
    ready_t = 0.0

    async def _close(self) -> None:
        verdict = self.verdict
        if self.failure is None and self.iterations == 0 and self.driven:
            self.emit("target.failed", "error", reason="no_iterations",
                      message="no iteration completed during the run")  # fmt: skip
        duration = self.now()
        # the verdict comes from what is on disk (events), as `soakd report` would decide it
        final = {
            "duration_s": duration,
            "ended_at": summary._iso(self.ended or time.time()),
            "reason": self.stop_reason,
        }
        s: dict[str, Any] = {}
        try:
            s = await anyio.to_thread.run_sync(
                lambda: summary.build_summary(
                    self.run_dir.path, final, on_leak=self.config.detection.on_leak
                )
            )
            s["worker_log_dropped_bytes"] = self.worker_log.dropped
            if self.job_failures:
                s["job_failures"] = dict(self.job_failures)
            verdict = str(s["verdict"])
            summary.write_summary(self.run_dir.path, s)
        except OSError as exc:  # a full or broken disk: say so plainly, exit 2 (as at start)
            self.summary_error = (
                f"cannot write summary.json in the run directory {self.run_dir.path}: "
                f"{exc.strerror or exc}; free space or choose another --run-dir"
            )
            self.emit("summary.failed", "error", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            self.emit("summary.failed", "error", error=f"{type(exc).__name__}: {exc}")
        try:
            from soakd.reporting import write_reports

            await anyio.to_thread.run_sync(lambda: write_reports(self.run_dir.path, s))
        except Exception as exc:
            self.emit("report.failed", "error", error=f"{type(exc).__name__}: {exc}")
        self.exit_code = summary.VERDICT_EXIT[verdict]
        if self.summary_error is not None:
            print(f"soakd: error: {self.summary_error}", file=sys.stderr, flush=True)
            self.exit_code = EXIT_USAGE
        self.emit("run.finished", verdict=verdict, exit_code=self.exit_code,
                  duration_s=round(duration, 3), ended_at=final["ended_at"],
                  leaks=len(s.get("leaks", [])), breaches=len(s.get("breaches", [])))  # fmt: skip
        for obs in self.observers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(obs.stop(), 10.0)
        self.worker_log.close()
        self.store.close()
        self.events.close()


async def _exited(proc: asyncio.subprocess.Process, poll: float = 0.05) -> int:
    """The exit code as soon as ``proc`` exits.

    ``proc.wait()`` also waits until every holder of its stdout pipe closes it, so children the
    target forked would hide the worker's death (and delay every stop by the stop timeout).
    """
    while (code := proc.returncode) is None:
        await anyio.sleep(poll)
    return code
