"""soakd's own work inside the target, as spans of run time: recorded, bounded, queried.

Whatever soakd does in the target (exact tracemalloc tracing, gc type walks, site groupings,
snapshot writes) costs the target, so "measuring must not change what is measured" is kept by
recording each such span and judging the workload only outside them. Pure: times are explicit,
run-relative seconds (the clock of ``RunState.now()``).

A :class:`PerturbationLog` keeps the spans merged (two that overlap or touch become one), sorted
and bounded: past ``max_spans`` the two closest neighbours are merged, so the log never drops a
span, it only grows one over the gap between two (counted in ``bridged_s``). A cause's span may
also be *open* (tracing on, end unknown): it covers everything from its start on until closed.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CAUSES",
    "MAX_CAUSES",
    "MAX_SPANS",
    "CauseTotals",
    "PerturbationLog",
]

# The causes the supervisor records (any other string is kept too, up to MAX_CAUSES).
CAUSES: Final[tuple[str, ...]] = ("tracemalloc", "profiler_zoom", "types", "snapshot", "sites")
MAX_SPANS: Final = 2000  # merged spans kept; a day of 10 s snapshots fits ~4 times over
MAX_CAUSES: Final = 16  # distinct causes counted; the rest count as "other"
OTHER: Final = "other"


@dataclass
class CauseTotals:
    """How often and how long one cause perturbed the target (its spans as recorded)."""

    spans: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"spans": self.spans, "seconds": round(self.seconds, 3)}


def _finite(*values: float) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


class PerturbationLog:
    """Spans of run time during which soakd worked in the target; merged, sorted, bounded."""

    __slots__ = ("_by_cause", "_ends", "_open", "_starts", "bridged_s", "count", "max_spans",
                 "seconds")  # fmt: skip

    def __init__(self, max_spans: int = MAX_SPANS) -> None:
        if max_spans < 1:
            raise ValueError(f"max_spans must be >= 1: {max_spans}")
        self.max_spans = max_spans
        self._starts: list[float] = []  # merged spans never overlap: both lists stay sorted
        self._ends: list[float] = []
        self._open: dict[str, float] = {}
        self._by_cause: dict[str, CauseTotals] = {}
        self.count = 0  # spans recorded (before merging)
        self.seconds = 0.0  # run time covered by recorded spans (their union, gaps excluded)
        self.bridged_s = 0.0  # gaps merged over to keep the log bounded (also "perturbed" now)

    # -- recording -------------------------------------------------------------------------
    def add(self, cause: str, start: float, end: float) -> bool:
        """Record that ``cause`` perturbed the target over ``[start, end]``; False (nothing
        recorded) when the times are not finite or ``end < start``."""
        if not _finite(start, end) or end < start:
            return False
        start, end = float(start), float(end)
        self.count += 1
        totals = self._cause(cause)
        totals.spans += 1
        totals.seconds += end - start
        starts, ends = self._starts, self._ends
        lo = bisect_left(ends, start)  # first kept span ending at or after ``start``
        hi = bisect_right(starts, end)  # kept spans starting at or before ``end``: [0, hi)
        covered = sum(max(0.0, min(end, ends[k]) - max(start, starts[k])) for k in range(lo, hi))
        # Exact unless the new span falls in a bridged gap (then it is counted as covered).
        self.seconds += (end - start) - covered
        if lo < hi:  # overlapping or touching spans: merge them into the new one
            start, end = min(start, starts[lo]), max(end, ends[hi - 1])
            del starts[lo:hi], ends[lo:hi]
        starts.insert(lo, start)
        ends.insert(lo, end)
        while len(starts) > self.max_spans:
            self._bridge_closest()
        return True

    def open(self, cause: str, start: float) -> None:
        """``cause`` perturbs the target from ``start`` on, end not known yet (tracing on)."""
        if not _finite(start):
            return
        known = self._open.get(cause)
        self._open[cause] = float(start) if known is None else min(known, float(start))

    def close(self, cause: str, end: float | None = None) -> float | None:
        """``cause``'s open span is over; its start (None when none was open). The span itself
        is recorded by :meth:`add`, which the caller does with the same times."""
        start = self._open.get(cause)
        if start is None or (end is not None and _finite(end) and end < start):
            return None
        return self._open.pop(cause)

    def _cause(self, cause: str) -> CauseTotals:
        totals = self._by_cause.get(cause)
        if totals is None:
            if len(self._by_cause) >= MAX_CAUSES - 1 and cause != OTHER:
                return self._cause(OTHER)  # the last slot is kept for "other"
            totals = self._by_cause[cause] = CauseTotals()
        return totals

    def _bridge_closest(self) -> None:
        starts, ends = self._starts, self._ends
        k = min(range(len(starts) - 1), key=lambda i: starts[i + 1] - ends[i])
        self.bridged_s += starts[k + 1] - ends[k]
        ends[k] = ends[k + 1]
        del starts[k + 1], ends[k + 1]

    # -- reading ---------------------------------------------------------------------------
    def overlaps(self, a: float, b: float) -> bool:
        """Whether ``[a, b]`` shares time with a span, closed or open (touching is not sharing)."""
        if any(start < b for start in self._open.values()):
            return True
        i = bisect_right(self._ends, a)  # first span ending after ``a``
        return i < len(self._starts) and self._starts[i] < b

    def overlap_s(self, a: float, b: float) -> float:
        """Seconds of ``[a, b]`` covered by spans, closed or open."""
        if not b > a:
            return 0.0
        cuts: list[tuple[float, float]] = []
        i = bisect_right(self._ends, a)
        while i < len(self._starts) and self._starts[i] < b:
            cuts.append((max(a, self._starts[i]), min(b, self._ends[i])))
            i += 1
        for start in self._open.values():
            if start < b:
                cuts.append((max(a, start), b))
        total, reach = 0.0, a
        for lo, hi in sorted(cuts):
            lo = max(lo, reach)
            if hi > lo:
                total += hi - lo
                reach = hi
        return total

    @property
    def spans(self) -> list[tuple[float, float]]:
        """The merged closed spans, in time order."""
        return list(zip(self._starts, self._ends, strict=True))

    @property
    def open_spans(self) -> dict[str, float]:
        """Causes perturbing the target right now, with their start."""
        return dict(self._open)

    @property
    def by_cause(self) -> dict[str, CauseTotals]:
        return {k: CauseTotals(v.spans, v.seconds) for k, v in self._by_cause.items()}

    def summary(self, duration_s: float) -> dict[str, Any]:
        """The totals for summary.json's ``perturbation`` section (exclusions are added by the
        caller, who judged the intervals)."""
        share = self.seconds / duration_s if duration_s > 0 else 0.0
        return {
            "spans": self.count,
            "seconds": round(self.seconds, 3),
            "share": round(min(share, 1.0), 4),
            "by_cause": {k: v.as_dict() for k, v in sorted(self._by_cause.items())},
            "merged_spans": len(self._starts),
            "bridged_seconds": round(self.bridged_s, 3),
        }

    def add_event(self, event: Mapping[str, Any]) -> bool:
        """Record a ``target.perturbed`` event's span (events.jsonl may be foreign: a malformed
        one is skipped, and a cause is cut to 40 characters)."""
        start, end, cause = event.get("start"), event.get("end"), event.get("cause")
        if isinstance(start, bool) or isinstance(end, bool):
            return False
        if not (isinstance(start, int | float) and isinstance(end, int | float)):
            return False
        return self.add(cause[:40] if isinstance(cause, str) else OTHER, start, end)

    @classmethod
    def from_events(
        cls, events: Iterable[Mapping[str, Any]], max_spans: int = MAX_SPANS
    ) -> PerturbationLog:
        """The log of a run from its ``target.perturbed`` events (others are skipped)."""
        log = cls(max_spans)
        for event in events:
            if event.get("event") == "target.perturbed":
                log.add_event(event)
        return log
