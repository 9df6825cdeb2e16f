"""The run's verdict: one word and one exit code, from facts that survive on disk.

A verdict is a promise. ``pass`` means the target was healthy AND the detector judged at least
one full window of the process's memory and found no leak. Everything else says what it is:

=============== ====== ==================================================================
verdict          exit   when (first that holds)
=============== ====== ==================================================================
target_failed    5      the target failed (crash, import error, start timeout) or no
                        iteration completed
aborted          4      a threshold rule with ``action = "abort"`` fired
target_failed    5      the target was unhealthy: error rate over ``max_error_rate``, every
                        iteration timed out, no iteration completed for ``max_stall``
leak             3      a leak was confirmed (with ``on_leak = "fail"``); or the detector
                        could not judge and RSS grew from the first sample to the last by
                        more than ``max_unjudged_growth``
inconclusive     7      the detector never judged a full window (run too short, warm-up never
                        ended), or the run was interrupted before its planned end
pass             0      none of the above
=============== ====== ==================================================================

Pure: the summary builder gathers :class:`RunFacts` from samples.db and events.jsonl, so a
run rebuilt by ``soakd report`` after SIGKILL gets the verdict the live run would have given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from soakd.units import format_duration, format_size

__all__ = ["Decision", "HealthBounds", "RunFacts", "decide", "shortest_judged_run_s"]


@dataclass(frozen=True)
class HealthBounds:
    """What a healthy target stays within (``[health]`` in the config)."""

    max_error_rate: float = 0.01  # the aggregator's own bar: errors under 1 %
    max_stall_s: float = 60.0  # longest time without a completed iteration
    max_unjudged_growth_bytes: float = 10e6  # end-to-end bound when nothing was judged


@dataclass(frozen=True)
class RunFacts:
    """What the verdict is decided from; every field read from the run directory."""

    duration_s: float
    planned_s: float | None = None
    driven: bool = True
    iterations: int = 0
    errors: int = 0
    timeouts: int = 0
    failed: Mapping[str, Any] | None = None  # the first target.failed event's reason/message
    aborted: bool = False
    leaks: bool = False  # confirmed leaks that fail the run (on_leak = "fail")
    judged: bool = False  # detection.judged seen
    warmup_end_s: float | None = None
    longest_stall_s: float = 0.0
    stop_reason: str | None = None  # "duration", "signal", a rule, ...; None: killed
    finished: bool = True  # the supervisor wrote its last word
    rss_growth_bytes: float | None = None
    heap_growth_bytes: float | None = None
    warmup_floor_s: float = 60.0
    warmup_max_s: float = 600.0
    min_window_s: float = 60.0

    @property
    def interrupted(self) -> bool:
        """Killed, or stopped by a signal before its planned end."""
        return _interrupted(self) is not None


@dataclass
class Decision:
    verdict: str
    reason: str | None = None  # why not pass, in one sentence a person can act on
    health: list[dict[str, Any]] = field(default_factory=list)  # what was unhealthy
    end_to_end: dict[str, Any] | None = None  # the check used when nothing was judged
    suggested_duration_s: float | None = None  # for an inconclusive run


def shortest_judged_run_s(f: RunFacts, warmup: float | None = None) -> float:
    """The shortest run the detector can judge with these settings: warm-up (its floor, or
    its end when known), the shortest window, a quarter more to confirm a finding and half a
    minute for analyses to land; in whole minutes."""
    if warmup is None:
        warmup = f.warmup_end_s if f.warmup_end_s is not None else f.warmup_floor_s
    return math.ceil((warmup + 1.25 * f.min_window_s + 30.0) / 60.0) * 60.0


def _warmup_overdue(f: RunFacts) -> bool:
    """Warm-up had every chance to end (a window past its floor) and did not."""
    return f.warmup_end_s is None and f.duration_s >= f.warmup_floor_s + f.min_window_s


def _health(f: RunFacts, b: HealthBounds) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    if not f.driven or f.iterations <= 0:
        return problems
    rate = f.errors / f.iterations
    if f.timeouts >= f.iterations:
        problems.append(
            {
                "check": "timeouts",
                "value": f.timeouts,
                "limit": f.iterations,
                "message": f"every iteration timed out ({f.timeouts} of {f.iterations})",
            }
        )
    elif rate > b.max_error_rate:
        problems.append(
            {
                "check": "error_rate",
                "value": round(rate, 6),
                "limit": b.max_error_rate,
                "message": f"error rate {rate:.1%} ({f.errors} of {f.iterations} iterations) "
                f"is over the bound {b.max_error_rate:.1%} (health.max_error_rate)",
            }
        )
    if f.longest_stall_s > b.max_stall_s:
        problems.append(
            {
                "check": "stall",
                "value": round(f.longest_stall_s, 1),
                "limit": b.max_stall_s,
                "message": f"no iteration completed for {format_duration(f.longest_stall_s)} "
                f"(bound {format_duration(b.max_stall_s)}, health.max_stall): the target's "
                "event loop was blocked or its worker frozen",
            }
        )
    return problems


def _end_to_end(f: RunFacts, b: HealthBounds) -> dict[str, Any]:
    # RSS only: the heap level is an estimate until exact tracing calibrates it, and the
    # process's memory is what the bound (and the box) is about.
    rss = f.rss_growth_bytes
    over = ["rss"] if rss is not None and rss > b.max_unjudged_growth_bytes else []
    return {
        "rss_growth_bytes": None if f.rss_growth_bytes is None else round(f.rss_growth_bytes),
        "heap_growth_bytes": None if f.heap_growth_bytes is None else round(f.heap_growth_bytes),
        "bound_bytes": round(b.max_unjudged_growth_bytes),
        "exceeded": over,
    }


def _why_unjudged(f: RunFacts) -> str:
    if _warmup_overdue(f):
        return (
            f"warm-up had not ended after {format_duration(f.duration_s)} (it ends when memory "
            f"stops rising, at the latest at detection.warmup_max = "
            f"{format_duration(f.warmup_max_s)}), so no window was judged"
        )
    return (
        f"the run ended after {format_duration(f.duration_s)}, before the detector's first "
        f"full window (warm-up of at least {format_duration(f.warmup_floor_s)} then a "
        f"{format_duration(f.min_window_s)} window)"
    )


def decide(f: RunFacts, b: HealthBounds | None = None) -> Decision:
    """The verdict for these facts (see the module's table)."""
    b = b or HealthBounds()
    if f.failed is not None:
        reason = str(f.failed.get("message") or f.failed.get("reason") or "target failed")
        return Decision("target_failed", reason)
    if f.driven and f.iterations == 0:
        return Decision("target_failed", "no iteration completed during the run")
    health = _health(f, b)
    if f.aborted:  # the user's own rule stopped the run: its word, with the health figures
        return Decision("aborted", "a threshold rule with action = abort fired", health)
    if health:
        reason = "unhealthy: " + "; ".join(h["message"] for h in health)
        return Decision("target_failed", reason, health)
    if f.leaks:
        return Decision("leak")
    interrupted = _interrupted(f)
    if not f.judged:
        e2e = _end_to_end(f, b)
        if e2e["exceeded"]:
            grew = ", ".join(
                f"{k.upper() if k == 'rss' else k} grew {format_size(e2e[f'{k}_growth_bytes'])}"
                for k in e2e["exceeded"]
            )
            return Decision(
                "leak",
                f"{_why_unjudged(f)}; end to end, {grew}, over the bound "
                f"{format_size(b.max_unjudged_growth_bytes)} (health.max_unjudged_growth)",
                end_to_end=e2e,
            )
        need = shortest_judged_run_s(f, f.warmup_max_s if _warmup_overdue(f) else None)
        reason = f"{_why_unjudged(f)}: run at least {format_duration(need)}"
        if interrupted:
            reason = f"{interrupted}; {reason}"
        return Decision("inconclusive", reason, end_to_end=e2e, suggested_duration_s=need)
    if interrupted:
        return Decision("inconclusive", f"{interrupted}: no leak found in what was judged")
    return Decision("pass")


def _interrupted(f: RunFacts) -> str | None:
    """Why the run stopped before its planned end, or None when it ran its course."""
    if not f.finished:
        return f"the run was killed after {format_duration(f.duration_s)} (no last word)"
    if not (f.stop_reason or "").startswith("signal"):
        return None  # ran its course (aborts and target failures have verdicts of their own)
    planned = f" of {format_duration(f.planned_s)}" if f.planned_s else ""
    return f"interrupted ({f.stop_reason}) after {format_duration(f.duration_s)}{planned}"
