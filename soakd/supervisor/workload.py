"""The worker's per-interval workload reports: stored, judged by the rules, watched for stalls.

An interval reported at ``t`` covers ``[t - interval_s, t]``. When soakd's own work in the
target (the recorder's :class:`~soakd.perturbation.PerturbationLog`, closed or open spans)
overlaps it, the interval is *perturbed*: stored and emitted as any other (its event says
``perturbed: true``), but not given to the rules and not merged into the unperturbed totals
(:class:`~soakd.workload.unperturbed.UnperturbedTotals`, kept in samples.db's meta as
``workload_unperturbed`` for summary.json). Intervals reported before the worker is ready are
handled as always: stored, emitted, never judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from soakd.supervisor.recorder import RunRecorder
from soakd.supervisor.state import RunState
from soakd.supervisor.thresholds import Thresholds
from soakd.workload.unperturbed import UnperturbedTotals

UNPERTURBED_META: Final = "workload_unperturbed"  # samples.db meta key (read by summary.py)

# What the store keeps of each interval: (series, interval key, percentile key or None).
_SERIES: tuple[tuple[str, str, str | None], ...] = (
    ("throughput_per_s", "throughput_per_s", None),
    ("error_rate", "error_rate", None),
    ("iterations", "iterations", None),
    ("errors", "errors", None),
    ("missed_starts", "missed_starts", None),
    ("latency_p50_ms", "latency_ms", "p50"),
    ("latency_p90_ms", "latency_ms", "p90"),
    ("latency_p99_ms", "latency_ms", "p99"),
    ("latency_max_ms", "latency_ms", "max"),
    ("first_event_p50_ms", "first_event_ms", "p50"),
    ("first_event_p99_ms", "first_event_ms", "p99"),
)


class WorkloadMonitor:
    """Turns ``workload`` messages into samples, events and rule input; notices silence.

    Collaborators: the recorder (store, events, observers), the thresholds (rules) and the
    run's state (readiness). ``iterations`` is the run's completed-iteration total so far.
    """

    def __init__(
        self, state: RunState, recorder: RunRecorder, thresholds: Thresholds, interval_s: float
    ) -> None:
        self._state = state
        self._recorder = recorder
        self._thresholds = thresholds
        self._interval_s = interval_s
        self.iterations = 0
        self.totals: dict[str, Any] = {}
        self.last_t = 0.0
        self.stalled = False
        self.unperturbed = UnperturbedTotals()

    def on_message(self, interval: Any, totals: Any) -> None:
        if not isinstance(interval, dict) or not isinstance(totals, dict):
            return
        t = self._state.now()
        self.last_t = t
        if self.stalled:
            self.stalled = False
            self._recorder.emit("workload.resumed")
        self.iterations = int(totals.get("iterations", 0) or 0)
        self.totals = totals  # the live totals: the store's copy may lag (a full disk)
        clean = _samples(interval)
        start = t - _span(interval, self._interval_s)
        perturbed = self._judge(start, t, interval)
        self._recorder.record(t, clean)
        stored = {**interval, "perturbed": True} if perturbed else interval
        self._recorder.record_workload(t, stored, totals)
        if interval.get("iterations", 0) or interval.get("errors", 0):
            if perturbed:
                self._thresholds.exclude(start, t, clean.keys())
            else:
                self._thresholds.observe(t, clean)
        self._recorder.emit(
            "workload.interval",
            iterations=clean.get("iterations", 0),
            errors=clean.get("errors", 0),
            throughput_per_s=round(clean.get("throughput_per_s", 0.0), 2),
            error_rate=round(clean.get("error_rate", 0.0), 4),
            latency_p99_ms=round(clean.get("latency_p99_ms", 0.0), 2),
            first_event_p50_ms=round(clean.get("first_event_p50_ms", 0.0), 2),
            **_flag(perturbed),
        )
        self._recorder.workload_to_observers(t, interval, totals)
        self._thresholds.evaluate()

    def on_spans(self, spans: Any, dropped: Any) -> None:
        """Sampled iteration spans (the otel extra) to the observers; malformed ones dropped."""
        if isinstance(spans, list):
            n = dropped if isinstance(dropped, int) and not isinstance(dropped, bool) else 0
            self._recorder.spans_to_observers([s for s in spans if isinstance(s, dict)], max(n, 0))

    def _judge(self, start: float, t: float, interval: Mapping[str, Any]) -> bool:
        """Whether the interval ``[start, t]`` is perturbed; into the unperturbed totals
        either way (judged or counted as left out), once the worker is ready."""
        if not self._state.ready.is_set():
            return False
        log = self._recorder.perturbation
        totals = self.unperturbed
        totals.recheck(log.overlaps)  # spans recorded since: their intervals are left out too
        perturbed = log.overlaps(start, t)
        if perturbed:
            totals.exclude(start, t, interval)
        else:
            totals.add(start, t, interval)
        totals.settle(t)
        try:
            self._recorder.store.set_meta(UNPERTURBED_META, totals.to_dict())
        except Exception as exc:  # full disk: keep watching, say so (once per kind)
            self._recorder.job_failed("store", exc)
        return perturbed

    def check_stall(self, t: float) -> None:
        """A worker whose loop is blocked stops reporting: say so rather than pass silently."""
        if self.stalled:
            return
        silent = t - max(self.last_t, self._state.ready_t)
        if silent > max(3 * self._interval_s, 10.0):
            self.stalled = True
            self._recorder.emit("workload.stalled", "warning", silent_s=round(silent, 1))


def _flag(perturbed: bool) -> dict[str, Any]:
    """The ``workload.interval`` event's ``perturbed`` field, present only when true."""
    return {"perturbed": True} if perturbed else {}


def _span(interval: Mapping[str, Any], default: float) -> float:
    """The interval's length as the worker measured it (else the configured interval)."""
    raw = interval.get("interval_s")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return default
    return max(float(raw), 0.0)


def _samples(interval: Mapping[str, Any]) -> dict[str, float]:
    """The interval's numbers as store series (missing percentiles read as 0)."""
    values: dict[str, object] = {}
    for name, key, pct in _SERIES:
        if pct is None:
            values[name] = interval.get(key, 0.0)
        else:
            values[name] = (interval.get(key) or {}).get(pct, 0.0)
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
