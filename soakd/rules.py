"""Threshold rules: a pure evaluator over timestamped samples (no clock, no I/O).

Semantics, per rule:

- Samples taken before the rule's grace (``rule.grace``, else the engine's ``grace_s``) are
  ignored, so warm-up never trips a rule.
- The checked value is the latest sample, or with ``window`` the arithmetic mean of the rule's
  samples in ``[t - window, t]`` (a partly filled window right after grace averages what it has).
- ``above`` fires on ``value > limit``, ``below`` on ``value < limit``.
- ``for``: the condition must hold on every sample from the one where it became true through
  one at least ``for`` seconds later; a shorter burst resets. ``for = 0`` fires on one sample.
- Gaps: soakd's own work in the target (:mod:`soakd.perturbation`) makes some workload
  intervals unfit to judge; they are not observed, and :meth:`RuleEngine.exclude` tells the
  engine the span had no data for those metrics. A gap neither confirms nor resets a breach:
  the condition still holds across it, but its seconds do not count towards ``for`` (the
  condition must be *seen* to hold ``for`` seconds). A windowed mean averages the samples
  observed in the window. Rules on other metrics (rss_bytes, fds, leak, ...) never see gaps.
- A rule fires once, then re-arms only after a sample where the condition no longer holds.
- ``throughput_drop`` is derived from ``throughput_per_s``: ``1 - throughput / reference``,
  where the reference is the median throughput over the first ``window`` (or 5 min) after grace.
- ``leak`` is 1 while a leak (of the rule's ``kind``, or of any kind) is confirmed, else 0.

Memory is bounded: a windowed rule keeps only its window's samples, and ``throughput_drop``
keeps the reference period's samples until the reference is fixed.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from soakd.config import Config, GuardConfig, Rule
from soakd.units import format_size

__all__ = ["Breach", "RuleEngine", "guard_rules", "rules_from_config"]

Action = Literal["alert", "abort"]

REFERENCE_DEFAULT_S = 300.0  # throughput_drop's reference period when the rule has no window
_RECOMPUTE_EVERY = 4096  # re-sum a window from scratch this often so float drift cannot build up
_MAX_PENDING = 1000  # breaches kept between evaluate() calls; a flapping rule cannot grow this


@dataclass(frozen=True)
class Breach:
    """A rule that fired: the value that broke the limit and when (seconds since run start)."""

    rule: str
    metric: str
    value: float
    limit: float
    action: Action
    at_s: float

    def as_dict(self) -> dict[str, object]:
        """The summary's ``breaches[]`` entry (schema ``soakd.summary/1``)."""
        return {
            "rule": self.rule,
            "value": self.value,
            "limit": self.limit,
            "action": self.action,
            "at_s": self.at_s,
        }

    def event_fields(self) -> dict[str, object]:
        """Fields of the ``threshold.breached`` event."""
        return {"metric": self.metric, **self.as_dict()}


def guard_rules(guard: GuardConfig) -> list[Rule]:
    """Built-in rules that abort before the box runs out of memory; no grace (always on)."""
    if not guard.enabled:
        return []
    return [
        Rule(
            metric="system_memory_percent",
            above=guard.system_memory_percent,
            action="abort",
            grace=0.0,
            name=f"guard: system memory above {guard.system_memory_percent:g}%",
        ),
        Rule(
            metric="rss_bytes",
            above=float(guard.worker_rss),
            action="abort",
            grace=0.0,
            name=f"guard: worker rss above {format_size(guard.worker_rss)}",
        ),
    ]


def rules_from_config(config: Config) -> list[Rule]:
    """The configured rules followed by the guard rules."""
    return [*config.rules, *guard_rules(config.guard)]


class _RuleState:
    """One rule's running state: its window, its reference, whether it is armed."""

    __slots__ = (
        "_count",
        "_pops",
        "_ref_samples",
        "_ref_start",
        "_samples",
        "_total",
        "above",
        "action",
        "armed",
        "for_s",
        "grace_s",
        "label",
        "last_t",
        "last_value",
        "limit",
        "metric",
        "paused",
        "reference",
        "reference_s",
        "since",
        "window",
    )

    def __init__(self, rule: Rule, grace_s: float) -> None:
        self.label = rule.label
        self.metric = rule.metric
        self.action: Action = rule.action
        self.above = rule.above is not None
        limit = rule.above if rule.above is not None else rule.below
        assert limit is not None  # Rule's validator guarantees exactly one of above/below
        self.limit = limit
        self.window = rule.window
        self.for_s = rule.for_
        self.grace_s = rule.grace if rule.grace is not None else grace_s
        self.armed = True
        self.since: float | None = None
        self.paused = 0.0  # seconds since ``since`` that were excluded (no data)
        self.last_t = -math.inf
        self.last_value: float | None = None
        self._samples: deque[tuple[float, float]] = deque()
        self._total = 0.0
        self._count = 0
        self._pops = 0
        self.reference: float | None = None
        self.reference_s = rule.window or REFERENCE_DEFAULT_S
        self._ref_start: float | None = None
        self._ref_samples: list[float] = []

    def feed(self, t: float, raw: float) -> Breach | None:
        if not math.isfinite(raw) or t < self.grace_s or t < self.last_t:
            return None  # no data, warm-up, or out of order: never a reason to fire
        self.last_t = t
        value = raw
        if self.metric == "throughput_drop":
            drop = self._drop(t, raw)
            if drop is None:
                return None  # still measuring the reference level
            value = drop
        if self.window is not None:
            value = self._windowed(t, value)
        self.last_value = value
        holds = value > self.limit if self.above else value < self.limit
        if not holds:
            self.since = None
            self.paused = 0.0
            self.armed = True
            return None
        if self.since is None:
            self.since = t
            self.paused = 0.0
        if self.armed and t - self.since - self.paused >= self.for_s:
            self.armed = False
            return Breach(self.label, self.metric, value, self.limit, self.action, t)
        return None

    def exclude(self, start: float, end: float) -> None:
        """No data over ``[start, end]``: a pending ``for`` neither advances nor resets."""
        if self.since is None:
            return
        lo = max(start, self.since)
        if end > lo:
            self.paused += end - lo

    def _drop(self, t: float, throughput: float) -> float | None:
        if self.reference is None:
            if self._ref_start is None:
                self._ref_start = t
            if t < self._ref_start + self.reference_s:
                self._ref_samples.append(throughput)
                return None
            median = statistics.median(self._ref_samples) if self._ref_samples else 0.0
            self._ref_samples = []
            if median <= 0:
                # nothing to compare against (no throughput at all): measure a new reference
                self._ref_start = t
                self._ref_samples.append(throughput)
                return None
            self.reference = median
        return 1.0 - throughput / self.reference

    def _windowed(self, t: float, value: float) -> float:
        assert self.window is not None
        samples = self._samples
        samples.append((t, value))
        self._total += value
        self._count += 1
        cutoff = t - self.window
        while samples[0][0] < cutoff:
            self._total -= samples.popleft()[1]
            self._count -= 1
            self._pops += 1
        if self._pops >= _RECOMPUTE_EVERY:
            self._pops = 0
            self._total = math.fsum(v for _, v in samples)
        return self._total / self._count

    @property
    def retained(self) -> int:
        return len(self._samples) + len(self._ref_samples)


class RuleEngine:
    """Evaluates threshold rules over samples fed in time order; pure and deterministic."""

    def __init__(self, rules: Sequence[Rule], *, grace_s: float) -> None:
        self._states = [_RuleState(rule, grace_s) for rule in rules]
        self._by_metric: dict[str, list[_RuleState]] = {}
        for state in self._states:
            source = "throughput_per_s" if state.metric == "throughput_drop" else state.metric
            self._by_metric.setdefault(source, []).append(state)
        self._leak_rules = [
            (state, rule.kind)
            for state, rule in zip(self._states, rules, strict=True)
            if rule.metric == "leak"
        ]
        self._leaks: dict[str, bool] = {}
        self._pending: deque[Breach] = deque(maxlen=_MAX_PENDING)

    @property
    def rules(self) -> list[str]:
        """The labels of every rule, in order."""
        return [state.label for state in self._states]

    def observe(self, t: float, values: Mapping[str, float]) -> None:
        """Feed samples taken at ``t`` (seconds since run start), keyed by metric name."""
        for metric, value in values.items():
            states = self._by_metric.get(metric)
            if states is None or metric == "leak":
                continue  # leak is fed by observe_leak only
            for state in states:
                self._feed(state, t, value)

    def exclude(self, start: float, end: float, metrics: Iterable[str]) -> None:
        """``metrics`` had no usable sample over ``[start, end]`` (soakd perturbed the target):
        the time does not count towards a rule's ``for`` (see the module's "Gaps")."""
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            return
        for metric in metrics:
            if metric == "leak":
                continue
            for state in self._by_metric.get(metric, ()):
                state.exclude(start, end)

    def observe_leak(self, t: float, kind: str, *, confirmed: bool = True) -> None:
        """A leak of ``kind`` was confirmed (or, with ``confirmed=False``, cleared) at ``t``."""
        self._leaks[kind] = confirmed
        self._feed_leaks(t)

    def evaluate(self, now: float) -> list[Breach]:
        """New breaches up to ``now``; each is returned once."""
        if self._leaks:
            # a confirmed leak is a level, not an event: re-check it so grace and "for" apply
            self._feed_leaks(now)
        out: list[Breach] = []
        keep: list[Breach] = []
        for breach in self._pending:
            (out if breach.at_s <= now else keep).append(breach)
        self._pending.clear()
        self._pending.extend(keep)
        return out

    def active(self) -> list[str]:
        """Labels of rules that fired and whose condition still holds."""
        return [state.label for state in self._states if not state.armed]

    def retained_samples(self) -> int:
        """Samples held in windows and reference periods (bounded by the longest window)."""
        return sum(state.retained for state in self._states)

    def _feed_leaks(self, t: float) -> None:
        for state, kind in self._leak_rules:
            on = _any_leak(self._leaks.items(), kind)
            self._feed(state, t, 1.0 if on else 0.0)

    def _feed(self, state: _RuleState, t: float, value: float) -> None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return  # a missing or malformed sample is no data, never a reason to raise
        breach = state.feed(t, number)
        if breach is not None:
            self._pending.append(breach)


def _any_leak(leaks: Iterable[tuple[str, bool]], kind: str | None) -> bool:
    return any(on and (kind is None or k == kind) for k, on in leaks)
