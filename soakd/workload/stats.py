"""The workload's bounded statistics: counters and histograms per interval and for the run.

A :class:`Window` accumulates iterations over a span of time; the engine keeps one for the
current interval and one for the totals, merges the first into the second at each interval's
end, and renders either with :func:`interval_stats` / :func:`run_totals` (the dicts sent to the
supervisor and written to ``summary.json``). Memory is bounded: fixed-size histograms and a
capped number of error classes and query kinds, the last slot of each kept for ``"other"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from soakd.workload.histogram import LatencyHistogram

__all__ = [
    "MAX_ERROR_CLASSES",
    "MAX_KINDS",
    "OTHER",
    "KindStats",
    "Window",
    "interval_stats",
    "run_totals",
]

MAX_ERROR_CLASSES = 32  # distinct error classes kept, "other" included
MAX_KINDS = 64  # distinct query kinds kept, "other" included
OTHER = "other"
_CI_CONFIDENCE = 0.95


class KindStats:
    """Counters and histograms of one query kind within a :class:`Window`."""

    __slots__ = ("errors", "first_event", "iterations", "latency")

    def __init__(self) -> None:
        self.iterations = 0
        self.errors = 0
        self.latency = LatencyHistogram()
        self.first_event = LatencyHistogram()

    def merge(self, other: KindStats) -> None:
        self.iterations += other.iterations
        self.errors += other.errors
        self.latency.merge(other.latency)
        self.first_event.merge(other.first_event)

    def reset(self) -> None:
        self.iterations = self.errors = 0
        self.latency.reset()
        self.first_event.reset()


class Window:
    """Statistics over a span of time (one interval, or the whole run).

    Holds :class:`~soakd.workload.histogram.LatencyHistogram` instances for the whole window,
    each milestone and each query kind (:class:`KindStats`).
    """

    __slots__ = (
        "cancelled",
        "errors",
        "errors_by_class",
        "events",
        "first_event",
        "iterations",
        "kinds",
        "latency",
        "milestones",
        "missed_starts",
    )

    def __init__(self, milestones: Iterable[str]) -> None:
        self.iterations = 0
        self.errors = 0
        self.cancelled = 0
        self.missed_starts = 0
        self.events = 0
        self.errors_by_class: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.first_event = LatencyHistogram()
        self.milestones = {name: LatencyHistogram() for name in milestones}
        self.kinds: dict[str, KindStats] = {}

    def kind(self, name: str) -> KindStats:
        stats = self.kinds.get(name)
        if stats is None:
            if len(self.kinds) >= MAX_KINDS - 1 and name != OTHER:
                return self.kind(OTHER)
            stats = self.kinds[name] = KindStats()
        return stats

    def add_error(self, cls: str, n: int = 1) -> None:
        by = self.errors_by_class
        if cls not in by and len(by) >= MAX_ERROR_CLASSES - 1:
            cls = OTHER  # the last slot is kept for "other"
        by[cls] = by.get(cls, 0) + n

    def record(
        self,
        kind: str,
        error: str | None,
        elapsed: float,
        first: float | None,
        hits: dict[str, float],
        events: int,
    ) -> None:
        """One finished iteration; latency counts successes only (fast failures would flatter
        it), time to the first event and to milestones counts whenever the event was seen."""
        k = self.kind(kind)
        self.iterations += 1
        k.iterations += 1
        self.events += events
        if error is None:
            ms = elapsed * 1000.0
            self.latency.record(ms)
            k.latency.record(ms)
        else:
            self.errors += 1
            k.errors += 1
            self.add_error(error)
        if first is not None:
            ms = first * 1000.0
            self.first_event.record(ms)
            k.first_event.record(ms)
        for name, seconds in hits.items():
            self.milestones[name].record(seconds * 1000.0)

    def merge(self, other: Window) -> None:
        self.iterations += other.iterations
        self.errors += other.errors
        self.cancelled += other.cancelled
        self.missed_starts += other.missed_starts
        self.events += other.events
        for cls, n in other.errors_by_class.items():
            self.add_error(cls, n)
        self.latency.merge(other.latency)
        self.first_event.merge(other.first_event)
        for name, hist in other.milestones.items():
            self.milestones[name].merge(hist)
        for name, stats in other.kinds.items():
            self.kind(name).merge(stats)

    def reset(self) -> None:
        self.iterations = self.errors = self.cancelled = self.missed_starts = self.events = 0
        self.errors_by_class.clear()
        self.latency.reset()
        self.first_event.reset()
        for hist in self.milestones.values():
            hist.reset()
        for stats in self.kinds.values():  # kept: kinds are few and recur every interval
            stats.reset()

    def copy(self) -> Window:
        out = Window(self.milestones)
        out.merge(self)
        return out


def interval_stats(
    w: Window,
    span: float,
    *,
    in_flight: int,
    users: int,
    rate: float | None,
    histograms: bool,
) -> dict[str, Any]:
    """One interval's statistics as sent to the supervisor (``span``: its length in seconds)."""
    out: dict[str, Any] = {
        "interval_s": _r(span),
        "iterations": w.iterations,
        "errors": w.errors,
        "errors_by_class": dict(w.errors_by_class),
        "missed_starts": w.missed_starts,
        "cancelled": w.cancelled,
        "in_flight": in_flight,
        "users": users,
        "rate": rate,
        "throughput_per_s": _r(w.iterations / span) if span > 0 else 0.0,
        "error_rate": w.errors / w.iterations if w.iterations else 0.0,
        "events": w.events,
        "latency_ms": _pcts(w.latency),
        "first_event_ms": _pcts(w.first_event),
        "milestones_ms": {
            name: {
                "p50": _r(h.percentile(50)),
                "p99": _r(h.percentile(99)),
                "count": h.count,
            }
            for name, h in w.milestones.items()
        },
    }
    if histograms:
        # Sparse soakd.hist/1: lets sinks build exact cumulative histograms (Prometheus)
        # and `soakd report` re-merge stored intervals into exact run percentiles.
        out["latency_hist"] = w.latency.to_dict()
        out["first_event_hist"] = w.first_event.to_dict()
    return out


def run_totals(t: Window, duration: float, *, histograms: bool) -> dict[str, Any]:
    """The run's cumulative statistics: the summary's ``workload`` section plus extras."""
    out: dict[str, Any] = {
        "iterations": t.iterations,
        "errors": t.errors,
        "error_rate": t.errors / t.iterations if t.iterations else 0.0,
        "throughput_per_s": _r(t.iterations / duration) if duration > 0 else 0.0,
        "latency_ms": _pcts(t.latency),
        "first_event_ms": _pcts(t.first_event),
        "duration_s": _r(duration),
        "missed_starts": t.missed_starts,
        "cancelled": t.cancelled,
        "events": t.events,
        "errors_by_class": dict(t.errors_by_class),
        "latency_ci_ms": _ci(t.latency),
        "first_event_ci_ms": _ci(t.first_event),
        "milestones_ms": {name: {**_pcts(h), "count": h.count} for name, h in t.milestones.items()},
        "by_kind": {
            kind: {
                "iterations": k.iterations,
                "errors": k.errors,
                "error_rate": k.errors / k.iterations if k.iterations else 0.0,
                "latency_ms": {
                    "p50": _r(k.latency.percentile(50)),
                    "p99": _r(k.latency.percentile(99)),
                },
                "first_event_ms": {
                    "p50": _r(k.first_event.percentile(50)),
                    "p99": _r(k.first_event.percentile(99)),
                },
            }
            for kind, k in t.kinds.items()
            if k.iterations
        },
    }
    if histograms:
        out["latency_hist"] = t.latency.to_dict()
        out["first_event_hist"] = t.first_event.to_dict()
    return out


def _r(x: float) -> float:
    return round(x, 3)


def _pcts(h: LatencyHistogram) -> dict[str, float]:
    return {
        "p50": _r(h.percentile(50)),
        "p90": _r(h.percentile(90)),
        "p99": _r(h.percentile(99)),
        "max": _r(h.max),
    }


def _ci(h: LatencyHistogram) -> dict[str, list[float] | None]:
    out: dict[str, list[float] | None] = {}
    for q in (50, 99):
        ci = h.percentile_ci(q, _CI_CONFIDENCE)
        out[f"p{q}"] = None if ci is None else [_r(ci[0]), _r(ci[1])]
    return out
