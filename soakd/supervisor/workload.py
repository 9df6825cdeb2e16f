"""The worker's per-interval workload reports: stored, judged by the rules, watched for stalls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from soakd.supervisor.recorder import RunRecorder
from soakd.supervisor.state import RunState
from soakd.supervisor.thresholds import Thresholds

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
        self.last_t = 0.0
        self.stalled = False

    def on_message(self, interval: Any, totals: Any) -> None:
        if not isinstance(interval, dict) or not isinstance(totals, dict):
            return
        t = self._state.now()
        self.last_t = t
        if self.stalled:
            self.stalled = False
            self._recorder.emit("workload.resumed")
        self.iterations = int(totals.get("iterations", 0) or 0)
        clean = _samples(interval)
        self._recorder.record(t, clean)
        self._recorder.record_workload(t, interval, totals)
        if interval.get("iterations", 0) or interval.get("errors", 0):
            self._thresholds.observe(t, clean)
        self._recorder.emit(
            "workload.interval",
            iterations=clean.get("iterations", 0),
            errors=clean.get("errors", 0),
            throughput_per_s=round(clean.get("throughput_per_s", 0.0), 2),
            error_rate=round(clean.get("error_rate", 0.0), 4),
            latency_p99_ms=round(clean.get("latency_p99_ms", 0.0), 2),
            first_event_p50_ms=round(clean.get("first_event_p50_ms", 0.0), 2),
        )
        self._recorder.workload_to_observers(t, interval, totals)
        self._thresholds.evaluate()

    def check_stall(self, t: float) -> None:
        """A worker whose loop is blocked stops reporting: say so rather than pass silently."""
        if self.stalled:
            return
        silent = t - max(self.last_t, self._state.ready_t)
        if silent > max(3 * self._interval_s, 10.0):
            self.stalled = True
            self._recorder.emit("workload.stalled", "warning", silent_s=round(silent, 1))


def _samples(interval: Mapping[str, Any]) -> dict[str, float]:
    """The interval's numbers as store series (missing percentiles read as 0)."""
    values: dict[str, object] = {}
    for name, key, pct in _SERIES:
        if pct is None:
            values[name] = interval.get(key, 0.0)
        else:
            values[name] = (interval.get(key) or {}).get(pct, 0.0)
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
