"""The workload as the target ran it when soakd was not working inside it.

Each workload interval (``interval_stats``: counters plus sparse ``soakd.hist/1`` histograms)
is either *judged*, merged here into run totals of its own, or *excluded*, because soakd's work
in the target (:mod:`soakd.perturbation`) overlapped it; excluded intervals are only counted,
so the summary can say how much was left out.

A span may be recorded after the interval it overlaps (a types walk is recorded when its
answer arrives, and the worker's interval report may come first). So the newest judged
intervals stay *pending* for ``settle_s``: :meth:`UnperturbedTotals.recheck` moves any that a
late span overlaps to the excluded side; older ones are merged for good. Memory is bounded:
two fixed-size histograms, at most ``max_pending`` pending intervals kept in their compact
sparse form.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from soakd.workload.histogram import LatencyHistogram

__all__ = ["MAX_PENDING", "SCHEMA", "SETTLE_S", "UnperturbedTotals"]

SCHEMA: Final = "soakd.unperturbed/1"
SETTLE_S: Final = 30.0  # longer than any soakd job in the target (sampling.job_timeout: 20 s)
MAX_PENDING: Final = 64  # pending intervals kept at most, whatever the interval length
_HISTS: Final = ("latency_hist", "first_event_hist")
_PCT: Final = ("p50", "p90", "p99", "max")

Overlaps = Callable[[float, float], bool]


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return max(int(value), 0)


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return max(float(value), 0.0)


def _hist(raw: object) -> LatencyHistogram | None:
    """A sparse histogram, or None when absent or not one of ours (hostile or foreign input)."""
    if not isinstance(raw, dict):
        return None
    try:
        return LatencyHistogram.from_dict(raw)
    except (ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class _Pending:
    """A judged interval not yet merged for good: its span, counters and sparse histograms."""

    start: float
    end: float
    iterations: int
    errors: int
    latency: Mapping[str, Any] | None
    first_event: Mapping[str, Any] | None

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "iterations": self.iterations,
            "errors": self.errors,
            "latency_hist": self.latency,
            "first_event_hist": self.first_event,
        }


def _pending(start: float, end: float, interval: Mapping[str, Any]) -> _Pending:
    hists = [interval.get(k) for k in _HISTS]
    return _Pending(
        start,
        end,
        _count(interval.get("iterations")),
        _count(interval.get("errors")),
        *(h if isinstance(h, dict) else None for h in hists),
    )


class UnperturbedTotals:
    """Judged (unperturbed) workload intervals merged; excluded ones counted."""

    def __init__(self, *, settle_s: float = SETTLE_S, max_pending: int = MAX_PENDING) -> None:
        self.settle_s = settle_s
        self.max_pending = max_pending
        self.latency = LatencyHistogram()
        self.first_event = LatencyHistogram()
        self.seconds = 0.0
        self.intervals = 0
        self.iterations = 0
        self.errors = 0
        self.missing_histograms = 0  # judged intervals with iterations but no usable histogram
        self.excluded_seconds = 0.0
        self.excluded_intervals = 0
        self.excluded_iterations = 0
        self.excluded_errors = 0
        self._pending: deque[_Pending] = deque()

    # -- intervals -------------------------------------------------------------------------
    def add(self, start: float, end: float, interval: Mapping[str, Any]) -> None:
        """A judged interval ``[start, end]`` (kept pending until it settles)."""
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            return
        self._pending.append(_pending(start, end, interval))
        while len(self._pending) > self.max_pending:
            self._merge(self._pending.popleft())

    def exclude(self, start: float, end: float, interval: Mapping[str, Any]) -> None:
        """An interval soakd perturbed: left out, and counted as such."""
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            return
        self._exclude(_pending(start, end, interval))

    def recheck(self, overlaps: Overlaps) -> int:
        """Exclude the pending intervals that ``overlaps(start, end)`` now says were perturbed
        (a span recorded after its interval was judged); how many were moved."""
        keep: deque[_Pending] = deque()
        moved = 0
        for p in self._pending:
            if overlaps(p.start, p.end):
                self._exclude(p)
                moved += 1
            else:
                keep.append(p)
        self._pending = keep
        return moved

    def settle(self, now: float) -> None:
        """Merge for good the pending intervals that ended more than ``settle_s`` before now."""
        while self._pending and self._pending[0].end < now - self.settle_s:
            self._merge(self._pending.popleft())

    def _exclude(self, p: _Pending) -> None:
        self.excluded_seconds += p.seconds
        self.excluded_intervals += 1
        self.excluded_iterations += p.iterations
        self.excluded_errors += p.errors

    def _merge(self, p: _Pending) -> None:
        self.seconds += p.seconds
        self.intervals += 1
        self.iterations += p.iterations
        self.errors += p.errors
        latency, first = _hist(p.latency), _hist(p.first_event)
        if latency is None and p.iterations > p.errors:
            self.missing_histograms += 1
        if latency is not None:
            self.latency.merge(latency)
        if first is not None:
            self.first_event.merge(first)

    # -- reading ---------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._pending)

    def settled(self) -> UnperturbedTotals:
        """A copy with every pending interval merged (what the figures are read from)."""
        out = UnperturbedTotals(settle_s=self.settle_s, max_pending=self.max_pending)
        out._absorb(self)
        for p in self._pending:
            out._merge(p)
        return out

    def _absorb(self, other: UnperturbedTotals) -> None:
        self.latency.merge(other.latency)
        self.first_event.merge(other.first_event)
        for name in ("seconds", "intervals", "iterations", "errors", "missing_histograms",
                     "excluded_seconds", "excluded_intervals", "excluded_iterations",
                     "excluded_errors"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def figures(self) -> dict[str, Any]:
        """summary.json's ``workload.unperturbed``: the workload over judged intervals only.

        Latency and first-event percentiles are left out when nothing was judged or a judged
        interval carried no histogram (they would be wrong), so readers fall back to the whole
        run's figures.
        """
        s = self.settled()
        out: dict[str, Any] = {
            "seconds": round(s.seconds, 3),
            "intervals": s.intervals,
            "iterations": s.iterations,
            "errors": s.errors,
            "throughput_per_s": round(s.iterations / s.seconds, 3) if s.seconds > 0 else 0.0,
            "error_rate": s.errors / s.iterations if s.iterations else 0.0,
            "excluded_seconds": round(s.excluded_seconds, 3),
            "excluded_intervals": s.excluded_intervals,
            "excluded_iterations": s.excluded_iterations,
        }
        if s.missing_histograms == 0 and s.iterations > 0:
            out["latency_ms"] = _pcts(s.latency)
            out["first_event_ms"] = _pcts(s.first_event)
        return out

    # -- persistence (samples.db meta) -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything, pending intervals apart, so that a late span can still exclude them
        when the summary is built from disk."""
        return {
            "schema": SCHEMA,
            "seconds": round(self.seconds, 6),
            "intervals": self.intervals,
            "iterations": self.iterations,
            "errors": self.errors,
            "missing_histograms": self.missing_histograms,
            "excluded_seconds": round(self.excluded_seconds, 6),
            "excluded_intervals": self.excluded_intervals,
            "excluded_iterations": self.excluded_iterations,
            "excluded_errors": self.excluded_errors,
            "latency_hist": self.latency.to_dict(),
            "first_event_hist": self.first_event.to_dict(),
            "pending": [p.as_dict() for p in self._pending],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnperturbedTotals:
        """Inverse of :meth:`to_dict`; ValueError when ``data`` is not one of ours."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} record")
        out = cls()
        out.seconds = _seconds(data.get("seconds"))
        out.excluded_seconds = _seconds(data.get("excluded_seconds"))
        for name in ("intervals", "iterations", "errors", "missing_histograms",
                     "excluded_intervals", "excluded_iterations", "excluded_errors"):  # fmt: skip
            setattr(out, name, _count(data.get(name)))
        for name, attr in (("latency_hist", "latency"), ("first_event_hist", "first_event")):
            hist = _hist(data.get(name))
            if hist is not None:
                setattr(out, attr, hist)
            elif name == "latency_hist" and out.iterations > out.errors:
                out.missing_histograms += 1
        pending = data.get("pending")
        for raw in (pending if isinstance(pending, list) else [])[: out.max_pending]:
            if not isinstance(raw, Mapping):
                continue
            start, end = raw.get("start"), raw.get("end")
            if isinstance(start, int | float) and isinstance(end, int | float):
                out.add(float(start), float(end), raw)
        return out


def _pcts(h: LatencyHistogram) -> dict[str, float]:
    return {
        "p50": round(h.percentile(50), 3),
        "p90": round(h.percentile(90), 3),
        "p99": round(h.percentile(99), 3),
        "max": round(h.max, 3),
    }
