"""The event catalogue: every event name soakd emits, and the payloads that have a schema.

Producers emit through :class:`soakd.sinks.events.EventLog` (``events.jsonl``, stdout, the
observers); consumers (summary, reports, ``status``, the observers) match on these names.
Every event also carries ``run_id``, ``timestamp``, ``t`` (seconds since the run started) and
``level``, added by the log. The ``leak.*`` payload is :class:`soakd.leaks.LeakRecord`.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict, get_args

__all__ = [
    "ALERT_EVENTS",
    "EVENT_NAMES",
    "LEAK_EVENTS",
    "REPORT_EVENTS",
    "TIMELINE_EVENTS",
    "AlertOutcome",
    "BreachRecord",
    "EventName",
    "RunFinished",
    "TargetFailed",
    "TargetPerturbed",
]

EventName = Literal[
    # the run
    "run.started",
    "run.stopping",
    "run.finished",
    "signal.received",
    "summary.failed",
    "report.failed",
    "job.failed",
    "metrics.listening",
    # the target
    "worker.started",
    "worker.ready",
    "worker.exited",
    "target.started",
    "target.attached",
    "target.failed",
    "agent.connected",
    "target.perturbed",
    # the workload
    "workload.interval",
    "workload.stalled",
    "workload.resumed",
    # detection and attribution
    "detection.warmup_end",
    "detection.judged",
    "detection.collecting",
    "attribution.ready",
    "attribution.fallback",
    "attribution.zoomed",
    "attribution.unzoomed",
    "tracing.started",
    "tracing.stopped",
    "snapshot.saved",
    "leak.suspected",
    "leak.confirmed",
    "leak.cleared",
    # rules and alerts
    "threshold.breached",
    "alert.sent",
    "alert.failed",
]

EVENT_NAMES: Final[frozenset[str]] = frozenset(get_args(EventName))

# A finding's state changes, in the order the detector can move through them.
LEAK_EVENTS: Final[tuple[EventName, ...]] = ("leak.suspected", "leak.confirmed", "leak.cleared")

# What alerting sinks forward (an ``alert`` breach or a confirmed leak).
ALERT_EVENTS: Final[tuple[EventName, ...]] = ("threshold.breached", "leak.confirmed")

# Events a report keeps in memory; the rest (workload.interval, ...) live in samples.db too.
REPORT_EVENTS: Final[frozenset[EventName]] = frozenset(
    {
        "run.started",
        "run.stopping",
        "run.finished",
        "worker.started",
        "worker.ready",
        "worker.exited",
        "target.failed",
        "tracing.started",
        "tracing.stopped",
        "snapshot.saved",
        "leak.suspected",
        "leak.confirmed",
        "leak.cleared",
        "threshold.breached",
        "alert.sent",
        "alert.failed",
        "detection.warmup_end",
        "detection.judged",
        "target.perturbed",
    }
)

# The HTML report's event table, in this order of names (a subset of REPORT_EVENTS).
TIMELINE_EVENTS: Final[tuple[EventName, ...]] = (
    "run.started",
    "worker.started",
    "worker.ready",
    "worker.exited",
    "target.failed",
    "tracing.started",
    "tracing.stopped",
    "alert.failed",
    "run.stopping",
    "run.finished",
)


class BreachRecord(TypedDict):
    """A ``threshold.breached`` event (and, without ``metric``, summary.json ``breaches[]``)."""

    metric: str
    rule: str
    value: float
    limit: float
    action: Literal["alert", "abort"]
    at_s: float


class TargetFailed(TypedDict):
    """A ``target.failed`` event: why the target is considered failed, for a person."""

    reason: str | None
    message: str | None


class TargetPerturbed(TypedDict):
    """A ``target.perturbed`` event: soakd worked in the target from ``start`` to ``end``
    (run-relative seconds) because of ``cause`` (tracemalloc, types, snapshot, sites); the
    workload intervals it overlaps are not judged. Extra detail fields may follow."""

    cause: str
    start: float
    end: float
    duration_ms: float


class RunFinished(TypedDict):
    """The ``run.finished`` event, the supervisor's final word."""

    verdict: str
    exit_code: int
    duration_s: float
    ended_at: str
    leaks: int
    breaches: int


class AlertOutcome(TypedDict, total=False):
    """An ``alert.sent`` / ``alert.failed`` event (``alert`` is the event that was forwarded)."""

    channel: str
    attempts: int
    alert: str
    error: str
    undelivered: int
