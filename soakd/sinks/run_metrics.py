"""The run's metrics as state: fed by the observer callbacks, read as ``prometheus_client``
metric families (a custom collector: the values are the worker's and the run's, not this
process's, so they are set from the reports rather than kept in client-side instruments).

``process_*`` describe the WORKER (the process under soak), not soakd itself; ``soakd_*`` are
the run. See :mod:`soakd.sinks.metrics` for the histograms and the cardinality bounds.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import psutil
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from soakd.config import LEAK_KINDS
from soakd.leaks import LeakLedger

__all__ = [
    "BUCKETS_S",
    "MAX_ERROR_CLASSES",
    "MAX_RULES",
    "OTHER",
    "RunMetrics",
    "interval_values",
    "supervisor_families",
    "supervisor_usage",
]

# Upper bounds in seconds; covers a search aggregator's 5 ms cache hit to a 2 min synthesis.
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
MAX_ERROR_CLASSES = 20
MAX_RULES = 50
OTHER = "other"

# on_samples series -> (metric, type, help). A series may feed more than one metric.
_SAMPLE_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("rss_bytes", "process_resident_memory_bytes", "gauge", "Worker resident memory in bytes."),
    ("vms_bytes", "process_virtual_memory_bytes", "gauge", "Worker virtual memory in bytes."),
    ("fds", "process_open_fds", "gauge", "Worker open file descriptors."),
    ("threads", "process_threads", "gauge", "Worker OS threads."),
    ("cpu_seconds", "process_cpu_seconds_total", "counter", "Worker user+system CPU seconds."),
    ("heap_bytes", "soakd_heap_bytes", "gauge", "Python heap in use in the worker, bytes."),
    ("traced_bytes", "soakd_traced_bytes", "gauge", "Bytes traced by tracemalloc."),
    (
        "tracemalloc_overhead_bytes",
        "soakd_tracemalloc_overhead_bytes",
        "gauge",
        "Memory tracemalloc itself uses in the worker, bytes.",
    ),
    (
        "profiler_bytes",
        "soakd_profiler_bytes",
        "gauge",
        "Memory the sampled allocation profiler's tables use in the target, bytes (bounded).",
    ),
    ("uss_bytes", "soakd_uss_bytes", "gauge", "Worker unique set size in bytes."),
    ("fds", "soakd_fds", "gauge", "Worker open file descriptors."),
    ("threads", "soakd_threads", "gauge", "Worker OS threads."),
    ("tasks", "soakd_tasks", "gauge", "asyncio tasks alive in the worker."),
    ("children", "soakd_children", "gauge", "Child processes of the worker."),
    ("cpu_percent", "soakd_cpu_percent", "gauge", "Worker CPU use, percent of one core."),
    ("gc_garbage", "soakd_gc_garbage", "gauge", "Objects in the worker's gc.garbage."),
    (
        "system_memory_percent",
        "soakd_system_memory_percent",
        "gauge",
        "Memory in use on the box, percent.",
    ),
    (
        "system_available_bytes",
        "soakd_system_available_bytes",
        "gauge",
        "Memory available on the box, bytes.",
    ),
    ("load_avg", "soakd_load_average", "gauge", "1-minute load average of the box."),
)

_HISTOGRAMS = (
    ("latency_hist", "soakd_latency_seconds", "Iteration latency."),
    ("first_event_hist", "soakd_first_event_seconds", "Time to an iteration's first event."),
)


def interval_values(data: Mapping[str, Any]) -> tuple[list[tuple[float, int]], float] | None:
    """A ``soakd.hist/1`` interval histogram as (value in seconds, count) pairs and its sum in
    seconds; None when it is not one."""
    if data.get("schema") != "soakd.hist/1":
        return None
    try:
        gamma = float(data["gamma"])
        low_ms = float(data["low_ms"])
        pairs = [(int(i), int(c)) for i, c in data["buckets"]]
        total_ms = float(data["sum"])
        lo_ms = float(data.get("min", 0.0))
        hi_ms = float(data.get("max", math.inf))
    except (KeyError, TypeError, ValueError):
        return None
    if gamma <= 1.0 or low_ms <= 0.0 or any(i < 0 or c < 0 for i, c in pairs):
        return None
    out: list[tuple[float, int]] = []
    for i, c in pairs:
        # Bucket i >= 1 spans [low·γ^(i-1), low·γ^i) ms; its representative is within 1 %,
        # far finer than the fixed buckets it is sorted into. Clamping to the exact min and
        # max puts a lone value (or the extremes) on the right side of a bound.
        rep_ms = 0.0 if i == 0 else 2.0 * low_ms * gamma**i / (1.0 + gamma)
        out.append((min(max(rep_ms, lo_ms), hi_ms) / 1000.0, c))
    return out, total_ms / 1000.0


class Histogram:
    """Cumulative fixed-bucket histogram fed from sparse ``soakd.hist/1`` interval histograms."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)  # the last one is +Inf
        self.sum_s = 0.0
        self.count = 0
        self.min_s = math.inf  # of the values added (their representatives), for OTLP
        self.max_s = 0.0

    def add(self, data: Mapping[str, Any]) -> bool:
        """Add an interval's histogram; False (and nothing added) when it is not one."""
        parsed = interval_values(data)
        if parsed is None:
            return False
        values, sum_s = parsed
        for rep_s, c in values:
            self.counts[bisect.bisect_left(BUCKETS_S, rep_s)] += c
            self.count += c
            if c:
                self.min_s = min(self.min_s, rep_s)
                self.max_s = max(self.max_s, rep_s)
        self.sum_s += sum_s
        return True


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _gauge(name: str, help_: str, value: float) -> Metric:
    return GaugeMetricFamily(name, help_, value=value)


class RunMetrics:
    """What ``/metrics`` shows, kept up to date by the ``on_*`` callbacks.

    Collaborators: a :class:`LeakLedger` (the leak gauges) and one :class:`Histogram` per
    latency histogram; :meth:`families` reads the state as ``prometheus_client`` families.
    """

    def __init__(self, run_id: str, target: str) -> None:
        self.run_id = run_id
        self.target = target
        self.values: dict[str, float] = {}
        self.anchor: float | None = None  # monotonic time at which the run's t was 0
        self.worker_start: float | None = None
        self.iterations: float | None = None
        self.errors: float | None = None
        self.error_classes: dict[str, float] = {}
        self.throughput: float | None = None
        self.error_rate: float | None = None
        self.percentiles: dict[str, float] = {}
        self.hists = {name: Histogram() for _, name, _ in _HISTOGRAMS}
        self.leaks = LeakLedger()
        self.other_kind_seen = False  # a leak of an unknown kind: its "other" series stays
        self.breaches: dict[str, int] = {}
        self.stopping = 0.0

    # -- feeding ---------------------------------------------------------------------------
    def _saw(self, t: float) -> None:
        self.anchor = time.monotonic() - t

    def on_samples(self, t: float, values: Mapping[str, float]) -> None:
        self._saw(t)
        for key, value in values.items():
            number = _number(value)
            if number is not None and ":" not in key:  # site:/type: series stay in the db
                self.values[key] = number

    def on_workload(self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]) -> None:
        self._saw(t)
        self.iterations = _number(totals.get("iterations"))
        self.errors = _number(totals.get("errors"))
        self.throughput = _number(interval.get("throughput_per_s"))
        self.error_rate = _number(interval.get("error_rate"))
        by_class = totals.get("errors_by_class")
        if isinstance(by_class, Mapping):
            self._set_error_classes(by_class)
        for key, prefix in (("latency_ms", "latency"), ("first_event_ms", "first_event")):
            stats = interval.get(key)
            if isinstance(stats, Mapping):
                for q in ("p50", "p99"):
                    ms = _number(stats.get(q))
                    if ms is not None:
                        self.percentiles[f"soakd_{prefix}_{q}_seconds"] = ms / 1000.0
        for key, name, _ in _HISTOGRAMS:
            data = interval.get(key)
            if isinstance(data, Mapping):
                self.hists[name].add(data)

    def _set_error_classes(self, by_class: Mapping[Any, Any]) -> None:
        # Cumulative counts: keep the first MAX_ERROR_CLASSES names for good (stable series),
        # the rest add up under "other", which therefore only grows too.
        other = 0.0
        for name, count in by_class.items():
            n = _number(count)
            if n is None:
                continue
            label = str(name)
            if label in self.error_classes or len(self.error_classes) < MAX_ERROR_CLASSES:
                self.error_classes[label] = n
            else:
                other += n
        if other or OTHER in self.error_classes:
            self.error_classes[OTHER] = max(other, self.error_classes.get(OTHER, 0.0))

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "worker.started":
            self.worker_start = time.time()
        elif self.leaks.apply(event, fields) is not None:
            if _kind(fields) == OTHER:
                self.other_kind_seen = True
        elif event == "threshold.breached":
            rule = str(fields.get("rule") or fields.get("metric") or "?")
            if rule not in self.breaches and len(self.breaches) >= MAX_RULES:
                rule = OTHER
            self.breaches[rule] = self.breaches.get(rule, 0) + 1
        elif event == "run.stopping":
            self.stopping = 1.0

    # -- reading ---------------------------------------------------------------------------
    def families(self) -> Iterator[Metric]:
        """Every family in exposition order; families without samples are left out."""
        for fam in self._all_families():
            if fam.samples:
                yield fam

    def _all_families(self) -> Iterator[Metric]:
        yield _gauge("soakd_up", "1 while soakd serves metrics.", 1.0)
        info = GaugeMetricFamily(
            "soakd_run_info", "The run being soaked.", labels=("run_id", "target")
        )
        info.add_metric((self.run_id, self.target), 1.0)
        yield info
        if self.anchor is not None:
            elapsed = time.monotonic() - self.anchor
            yield _gauge("soakd_elapsed_seconds", "Seconds since the run started.", elapsed)
        yield _gauge("soakd_stopping", "1 once the run is stopping.", self.stopping)
        for key, name, kind, help_ in _SAMPLE_METRICS:
            if key in self.values:
                if kind == "counter":
                    yield CounterMetricFamily(name, help_, value=self.values[key])
                else:
                    yield _gauge(name, help_, self.values[key])
        if self.worker_start is not None:
            yield _gauge(
                "process_start_time_seconds",
                "Worker start time, seconds since the epoch.",
                self.worker_start,
            )
        yield from self._workload_families()
        for _, name, help_ in _HISTOGRAMS:
            hist = self.hists[name]
            if hist.count:
                yield _histogram(name, help_, hist)
        yield from self._leak_families()
        breaches = CounterMetricFamily(
            "soakd_breaches_total", "Threshold rule breaches, by rule.", labels=("rule",)
        )
        for rule, n in self.breaches.items():
            breaches.add_metric((rule,), float(n))
        yield breaches
        yield from supervisor_families()

    def _workload_families(self) -> Iterator[Metric]:
        if self.iterations is not None:
            errors = self.errors or 0.0
            iterations = CounterMetricFamily(
                "soakd_iterations_total", "Iterations completed, by outcome.", labels=("outcome",)
            )
            iterations.add_metric(("ok",), max(self.iterations - errors, 0.0))
            iterations.add_metric(("error",), errors)
            yield iterations
        by_class = CounterMetricFamily(
            "soakd_errors_total",
            f"Failed iterations by error class (first {MAX_ERROR_CLASSES} classes, then other).",
            labels=("class",),
        )
        for cls, n in self.error_classes.items():
            by_class.add_metric((cls,), n)
        yield by_class
        if self.throughput is not None:
            yield _gauge(
                "soakd_throughput_per_second",
                "Iterations per second over the last workload interval.",
                self.throughput,
            )
        if self.error_rate is not None:
            yield _gauge(
                "soakd_error_rate",
                "Failed fraction of the last workload interval's iterations.",
                self.error_rate,
            )
        for name, seconds in sorted(self.percentiles.items()):
            yield _gauge(name, "Percentile over the last workload interval.", seconds)

    def leak_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Suspected and confirmed findings by kind, every known kind present (0 or more)."""
        suspects = _count_by_kind(self.leaks.suspect_events())
        confirmed = _count_by_kind(self.leaks.confirmed_events())
        kinds = [*LEAK_KINDS, *([OTHER] if self.other_kind_seen else [])]
        return (
            {k: suspects.get(k, 0) for k in kinds},
            {k: confirmed.get(k, 0) for k in kinds},
        )

    def _leak_families(self) -> Iterator[Metric]:
        suspects, confirmed = self.leak_counts()
        for name, help_, counts in (
            ("soakd_leak_suspects", "Leak findings under suspicion, by kind.", suspects),
            ("soakd_leaks_confirmed", "Confirmed leaks, by kind.", confirmed),
        ):
            fam = GaugeMetricFamily(name, help_, labels=("kind",))
            for k, n in counts.items():
                fam.add_metric((k,), float(n))
            yield fam


_SELF = psutil.Process()


def supervisor_usage() -> tuple[float, float] | None:
    """soakd's own (the supervisor's) resident memory in bytes and CPU seconds."""
    try:
        with _SELF.oneshot():
            cpu = _SELF.cpu_times()
            return float(_SELF.memory_info().rss), cpu.user + cpu.system
    except (psutil.Error, OSError):
        return None


def supervisor_families() -> Iterator[Metric]:
    """``soakd_supervisor_*``: so that the fleet can alert when soakd itself grows."""
    usage = supervisor_usage()
    if usage is None:
        return
    rss, cpu = usage
    yield _gauge(
        "soakd_supervisor_resident_memory_bytes", "soakd supervisor resident memory, bytes.", rss
    )
    yield CounterMetricFamily(
        "soakd_supervisor_cpu_seconds_total",
        "soakd supervisor user+system CPU seconds.",
        value=cpu,
    )


def _kind(fields: Mapping[str, Any]) -> str:
    """The leak gauges' kind label: a known leak kind, else ``other`` (bounded cardinality)."""
    kind = str(fields.get("kind") or OTHER)
    return kind if kind in LEAK_KINDS else OTHER


def _count_by_kind(events: list[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fields in events:
        kind = _kind(fields)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _histogram(name: str, help_: str, hist: Histogram) -> Metric:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*BUCKETS_S, math.inf), hist.counts, strict=True):
        running += count
        buckets.append(("+Inf" if math.isinf(bound) else repr(bound), float(running)))
    return HistogramMetricFamily(name, help_, buckets=buckets, sum_value=hist.sum_s)
