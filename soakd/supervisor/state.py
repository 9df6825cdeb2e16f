"""The course of one run, shared by the supervisor's parts: its clock, its stop, its failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

Emit = Callable[..., None]


class RunState:
    """Run-relative time, the stop request and its reason, readiness, and the target's failure.

    Written by the target (ready, failure), the thresholds (abort) and the coordinator (stop);
    read by everyone. No I/O.
    """

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.t0 = time.monotonic()
        self.started_epoch = time.time()
        self.ended_epoch = 0.0
        self.stop_requested = anyio.Event()
        self.stop_reason = "duration"
        self.aborted = False
        self.failure: dict[str, Any] | None = None
        self.ready = anyio.Event()
        self.ready_t = 0.0

    def now(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.t0

    def request_stop(self, reason: str) -> None:
        """Ask the run to end; the first reason given is the one recorded."""
        if not self.stop_requested.is_set():
            self.stop_reason = reason
            self.stop_requested.set()

    def mark_ready(self) -> None:
        self.ready_t = self.now()
        self.ready.set()

    def fail(
        self, emit: Emit, stop_reason: str, reason: str | None, message: str | None, **extra: Any
    ) -> None:
        """The target failed: record why, emit ``target.failed`` and stop the run."""
        self.failure = {"reason": reason, "message": message}
        emit("target.failed", "error", **extra, **self.failure)
        self.request_stop(stop_reason)
