"""What a run leaves behind and tells as it goes: samples.db, events.jsonl, the observers.

Every sample goes to the store and to the observers; every event to events.jsonl, stdout and
the observers. A store that cannot be written (a full disk) costs a ``job.failed`` event, never
the run: soakd keeps watching and the summary says what was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from soakd import rundir, summary
from soakd.config import Config
from soakd.perturbation import PerturbationLog
from soakd.redact import redact_config
from soakd.sinks.base import RunObserver
from soakd.sinks.events import EventLog
from soakd.sinks.observers import (
    ObserverContext,
    build_observers,
    fan_out,
    samples_to,
    spans_to,
    workload_to,
)
from soakd.store import SampleStore
from soakd.supervisor import allocator
from soakd.supervisor.state import RunState


class RunRecorder:
    """The run's store, event log and observers, and the count of failed jobs.

    Collaborators: :class:`SampleStore` (``samples.db``), :class:`EventLog` (``events.jsonl`` and
    stdout), the observers built by :meth:`start_observers` (alerts, systemd notify, metrics,
    progress), and the run's :class:`RunState` for its clock and start time.
    """

    def __init__(self, config: Config, run: rundir.RunDir, state: RunState) -> None:
        self.config = config
        self.run_dir = run
        self.state = state
        self.events = EventLog(run.events, run.run_id, state.t0, console=config.output.console)
        self.store = SampleStore(run.samples)
        self.observers: list[RunObserver] = []
        self.job_failures: dict[str, int] = {}
        self.storage_error: str | None = None  # the first failed store write
        # soakd's own work in the target (what the workload is judged without); bounded
        self.perturbation = PerturbationLog()

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        self.events.emit(event, level, **fields)

    def record(self, t: float, values: Mapping[str, float]) -> None:
        """Numeric samples taken at ``t``: into the store and to every observer."""
        try:
            self.store.add(t, values)
        except Exception as exc:  # full disk: keep watching, say so once per kind
            self.job_failed("store", exc)
        samples_to(self.observers, t, values)

    def record_site(self, site: str, traceback: Sequence[str], line: str | None) -> None:
        self.store.add_site(site, traceback, line)

    def record_workload(
        self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]
    ) -> None:
        """A workload interval: its percentiles into the store, everything to the observers."""
        try:
            # the interval's histograms feed /metrics; the store keeps the percentiles (bounded)
            self.store.add_workload(t, {k: v for k, v in interval.items() if "hist" not in k})
            self.store.set_meta("workload_totals", totals)
        except Exception as exc:
            self.job_failed("store", exc)

    def workload_to_observers(
        self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]
    ) -> None:
        workload_to(self.observers, t, interval, totals)

    def spans_to_observers(self, spans: Sequence[Mapping[str, Any]], dropped: int) -> None:
        spans_to(self.observers, spans, dropped)

    # -- soakd's own work in the target ----------------------------------------------------
    def perturbed(self, cause: str, start: float, end: float, **detail: Any) -> None:
        """soakd worked in the target (``cause``: tracemalloc, types, snapshot, sites) from
        ``start`` to ``end`` (run-relative seconds): logged, and a ``target.perturbed`` event.

        Also ends an open span of ``cause`` (the work it stood for is over). Bad times (not
        finite, ``end < start``) are dropped: soakd's bookkeeping never stops the run.
        """
        self.perturbation.close(cause, end)
        if not self.perturbation.add(cause, start, end):
            return
        reserved = ("start", "end", "cause", "duration_ms")
        self.emit(
            "target.perturbed",
            cause=cause,
            start=round(start, 3),
            end=round(end, 3),
            duration_ms=round((end - start) * 1000.0, 3),
            **{k: v for k, v in detail.items() if k not in reserved},
        )

    def perturbation_open(self, cause: str, start: float) -> None:
        """``cause`` perturbs the target from ``start`` until closed (tracing on): workload
        intervals that reach past ``start`` are perturbed meanwhile, live. No event."""
        self.perturbation.open(cause, start)

    def perturbation_close(self, cause: str, end: float) -> None:
        """``cause``'s open span ended at ``end``; record it with :meth:`perturbed`."""
        self.perturbation.close(cause, end)

    def job_failed(self, name: str, exc: BaseException) -> None:
        """A scheduled job failed: counted, and told at the 1st, 10th, 100th, every 1000th."""
        if name == "store" and self.storage_error is None:
            self.storage_error = f"{type(exc).__name__}: {exc}"
        count = self.job_failures.get(name, 0) + 1
        self.job_failures[name] = count
        if count in (1, 10, 100) or count % 1000 == 0:
            frames = traceback.extract_tb(exc.__traceback__)
            at = (
                f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}"
                if frames
                else None
            )
            self.emit(
                "job.failed",
                "warning",
                job=name,
                error=f"{type(exc).__name__}: {exc}",
                at=at,  # where it was raised: enough to report it, never a whole traceback
                count=count,
            )

    # -- start -----------------------------------------------------------------------------
    def write_meta(self, target_name: str, driven: bool) -> None:
        """The run's identity and effective config, in samples.db and config.json, secrets
        redacted (the worker gets the real config through a memory file, never the disk)."""
        cfg = self.config
        dump = redact_config(cfg.model_dump(mode="json", by_alias=True))
        self.store.set_meta("run_id", self.run_dir.run_id)
        self.store.set_meta("started_epoch", repr(self.state.started_epoch))
        self.store.set_meta("started_at", summary.iso_utc(self.state.started_epoch))
        self.store.set_meta("target", target_name)
        self.store.set_meta("config", dump)
        self.store.set_meta("duration_s", repr(self.state.duration))
        self.store.set_meta("workload_totals", {})
        self.store.set_meta("driven", "1" if driven else "0")
        rundir.write_json_atomic(
            self.run_dir.config,
            {"config": dump, "base_dir": cfg.base_dir},
        )

    def start_observers(self, target_name: str) -> None:
        """Build the configured observers and route every event to them."""
        ctx = ObserverContext(
            self.run_dir.run_id, target_name, self.state.duration, self._log_from_sink
        )
        self.observers = build_observers(self.config, ctx)
        self.events.add_listener(lambda event, fields: fan_out(self.observers, event, fields))

    def _log_from_sink(self, event: str, fields: dict[str, Any]) -> None:
        self.emit(event, **dict(fields))

    # -- summary ---------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """summary.json as of now (blocking: run it in a thread)."""
        s = summary.build_summary(self.run_dir.path, on_leak=self.config.detection.on_leak)
        summary.write_summary(self.run_dir.path, s)
        allocator.trim()  # what the checkpoint read is freed: give its pages back

    def final_summary(self, final: Mapping[str, Any]) -> dict[str, Any]:
        """The summary at the end, from what is on disk plus the supervisor's final word."""
        return summary.build_summary(
            self.run_dir.path, final, on_leak=self.config.detection.on_leak
        )

    async def stop_observers(self) -> None:
        for obs in self.observers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(obs.stop(), 10.0)

    def close(self) -> None:
        self.store.close()
        self.events.close()
