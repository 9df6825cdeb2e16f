"""Prometheus ``/metrics`` (text format 0.0.4) for the worker and the run, served by aiohttp.

``process_*`` describe the WORKER (the process under soak), not soakd itself, so the fleet's
standard process dashboards and alerts apply to the target unchanged. ``soakd_*`` are the run.

Latency: when an ``on_workload`` interval carries ``latency_hist`` / ``first_event_hist``
(``soakd.hist/1``, ``LatencyHistogram.to_dict()``), its counts are added to the cumulative
histograms ``soakd_latency_seconds`` / ``soakd_first_event_seconds`` in fixed buckets, which
Prometheus can aggregate across boxes (``histogram_quantile``). Percentiles cannot be summed
into a histogram, so intervals without one only set the gauges
``soakd_latency_p50_seconds`` / ``_p99_`` and ``soakd_first_event_p50_seconds`` / ``_p99_``
(the last interval's values; always exposed when known).

Cardinality is bounded: per-site and per-type series are never exported (they are in
``samples.db``); error classes keep the first ``MAX_ERROR_CLASSES`` names, the rest count as
``other``; rule and leak-kind label sets are capped the same way.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from soakd.config import LEAK_KINDS
from soakd.errors import EXIT_USAGE, CommandError
from soakd.sinks.base import RunObserver

__all__ = [
    "BUCKETS_S",
    "CONTENT_TYPE",
    "MAX_ERROR_CLASSES",
    "MetricsServer",
    "escape_label",
    "parse_bind",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) into a host and a port."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CommandError(
            f"metrics.bind {bind!r}: expected HOST:PORT such as 127.0.0.1:9464", EXIT_USAGE
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, str]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs.items())
    return "{" + inner + "}"


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


class _Histogram:
    """Cumulative fixed-bucket histogram fed from sparse ``soakd.hist/1`` interval histograms."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)  # the last one is +Inf
        self.sum_s = 0.0
        self.count = 0

    def add(self, data: Mapping[str, Any]) -> bool:
        """Add an interval's histogram; False (and nothing added) when it is not one."""
        if data.get("schema") != "soakd.hist/1":
            return False
        try:
            gamma = float(data["gamma"])
            low_ms = float(data["low_ms"])
            pairs = [(int(i), int(c)) for i, c in data["buckets"]]
            total_ms = float(data["sum"])
            lo_ms = float(data.get("min", 0.0))
            hi_ms = float(data.get("max", math.inf))
        except (KeyError, TypeError, ValueError):
            return False
        if gamma <= 1.0 or low_ms <= 0.0 or any(i < 0 or c < 0 for i, c in pairs):
            return False
        for i, c in pairs:
            # Bucket i >= 1 spans [low·γ^(i-1), low·γ^i) ms; its representative is within 1 %,
            # far finer than the fixed buckets it is sorted into. Clamping to the exact min and
            # max puts a lone value (or the extremes) on the right side of a bound.
            rep_ms = 0.0 if i == 0 else 2.0 * low_ms * gamma**i / (1.0 + gamma)
            rep_s = min(max(rep_ms, lo_ms), hi_ms) / 1000.0
            self.counts[bisect.bisect_left(BUCKETS_S, rep_s)] += c
            self.count += c
        self.sum_s += total_ms / 1000.0
        return True


class MetricsServer(RunObserver):
    """Serves GET /metrics on ``bind``; ``port`` is the bound port once started (0 allowed)."""

    def __init__(self, bind: str, run_id: str, target: str) -> None:
        self.bind = bind
        self.host, self.requested_port = parse_bind(bind)
        self.run_id = run_id
        self.target = target
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._values: dict[str, float] = {}
        self._anchor: float | None = None  # monotonic time at which the run's t was 0
        self._worker_start: float | None = None
        self._iterations: float | None = None
        self._errors: float | None = None
        self._error_classes: dict[str, float] = {}
        self._throughput: float | None = None
        self._error_rate: float | None = None
        self._percentiles: dict[str, float] = {}
        self._hists = {name: _Histogram() for _, name, _ in _HISTOGRAMS}
        self._suspects: dict[str, set[str]] = {}
        self._confirmed: dict[str, set[str]] = {}
        self._breaches: dict[str, int] = {}
        self._stopping = 0.0
        self.scrapes = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        sock = self._listen()
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/", self._handle_index)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        self.port = sock.getsockname()[1]

    def _listen(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(
                self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise CommandError(
                f"metrics.bind {self.bind}: cannot resolve {self.host!r}: {exc}", EXIT_USAGE
            ) from None
        family, socktype, proto, _, address = infos[0]
        sock = socket.socket(family, socktype, proto)
        try:
            # A restarted soakd may rebind at once while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise CommandError(
                f"metrics.bind {self.bind}: cannot listen: {exc.strerror or exc}; "
                "choose a free address or set metrics.enabled = false",
                EXIT_USAGE,
            ) from None
        return sock

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()

    async def _handle_metrics(self, _request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(body=self.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    async def _handle_index(self, _request: web.Request) -> web.Response:
        return web.Response(text=f"soakd run {self.run_id}: metrics at /metrics\n")

    # -- observer --------------------------------------------------------------------------
    def _saw(self, t: float) -> None:
        self._anchor = time.monotonic() - t

    def on_samples(self, t: float, values: Mapping[str, float]) -> None:
        try:
            self._saw(t)
            for key, value in values.items():
                number = _number(value)
                if number is not None and ":" not in key:  # site:/type: series stay in the db
                    self._values[key] = number
        except Exception:
            return

    def on_workload(self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]) -> None:
        try:
            self._on_workload(t, interval, totals)
        except Exception:
            return

    def _on_workload(
        self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]
    ) -> None:
        self._saw(t)
        self._iterations = _number(totals.get("iterations"))
        self._errors = _number(totals.get("errors"))
        self._throughput = _number(interval.get("throughput_per_s"))
        self._error_rate = _number(interval.get("error_rate"))
        by_class = totals.get("errors_by_class")
        if isinstance(by_class, Mapping):
            self._set_error_classes(by_class)
        for key, prefix in (("latency_ms", "latency"), ("first_event_ms", "first_event")):
            stats = interval.get(key)
            if isinstance(stats, Mapping):
                for q in ("p50", "p99"):
                    ms = _number(stats.get(q))
                    if ms is not None:
                        self._percentiles[f"soakd_{prefix}_{q}_seconds"] = ms / 1000.0
        for key, name, _ in _HISTOGRAMS:
            data = interval.get(key)
            if isinstance(data, Mapping):
                self._hists[name].add(data)

    def _set_error_classes(self, by_class: Mapping[Any, Any]) -> None:
        # Cumulative counts: keep the first MAX_ERROR_CLASSES names for good (stable series),
        # the rest add up under "other", which therefore only grows too.
        other = 0.0
        for name, count in by_class.items():
            n = _number(count)
            if n is None:
                continue
            label = str(name)
            if label in self._error_classes or len(self._error_classes) < MAX_ERROR_CLASSES:
                self._error_classes[label] = n
            else:
                other += n
        if other or OTHER in self._error_classes:
            self._error_classes[OTHER] = max(other, self._error_classes.get(OTHER, 0.0))

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        try:
            self._on_event(event, fields)
        except Exception:
            return

    def _on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "worker.started":
            self._worker_start = time.time()
        elif event in ("leak.suspected", "leak.confirmed", "leak.cleared"):
            kind = str(fields.get("kind") or OTHER)
            kind = kind if kind in LEAK_KINDS else OTHER
            key = f"{fields.get('site')}|{fields.get('type')}"
            suspects = self._suspects.setdefault(kind, set())
            confirmed = self._confirmed.setdefault(kind, set())
            suspects.discard(key)
            if event == "leak.suspected":
                suspects.add(key)
            elif event == "leak.confirmed":
                confirmed.add(key)
            else:
                confirmed.discard(key)
        elif event == "threshold.breached":
            rule = str(fields.get("rule") or fields.get("metric") or "?")
            if rule not in self._breaches and len(self._breaches) >= MAX_RULES:
                rule = OTHER
            self._breaches[rule] = self._breaches.get(rule, 0) + 1
        elif event == "run.stopping":
            self._stopping = 1.0

    # -- exposition ------------------------------------------------------------------------
    def render(self) -> str:
        """The whole exposition in text format 0.0.4."""
        out: list[str] = []

        def family(name: str, kind: str, help_: str, rows: Iterable[tuple[str, float]]) -> None:
            rows = list(rows)
            if not rows:
                return
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{series} {_value(v)}" for series, v in rows)

        run = {"run_id": self.run_id, "target": self.target}
        family("soakd_up", "gauge", "1 while soakd serves metrics.", [("soakd_up", 1.0)])
        family(
            "soakd_run_info",
            "gauge",
            "The run being soaked.",
            [("soakd_run_info" + _labels(run), 1.0)],
        )
        if self._anchor is not None:
            elapsed = time.monotonic() - self._anchor
            family(
                "soakd_elapsed_seconds",
                "gauge",
                "Seconds since the run started.",
                [("soakd_elapsed_seconds", elapsed)],
            )
        family(
            "soakd_stopping",
            "gauge",
            "1 once the run is stopping.",
            [("soakd_stopping", self._stopping)],
        )
        for key, name, kind, help_ in _SAMPLE_METRICS:
            if key in self._values:
                family(name, kind, help_, [(name, self._values[key])])
        if self._worker_start is not None:
            family(
                "process_start_time_seconds",
                "gauge",
                "Worker start time, seconds since the epoch.",
                [("process_start_time_seconds", self._worker_start)],
            )
        if self._iterations is not None:
            errors = self._errors or 0.0
            family(
                "soakd_iterations_total",
                "counter",
                "Iterations completed, by outcome.",
                [
                    ('soakd_iterations_total{outcome="ok"}', max(self._iterations - errors, 0.0)),
                    ('soakd_iterations_total{outcome="error"}', errors),
                ],
            )
        family(
            "soakd_errors_total",
            "counter",
            f"Failed iterations by error class (first {MAX_ERROR_CLASSES} classes, then other).",
            (
                ("soakd_errors_total" + _labels({"class": cls}), n)
                for cls, n in self._error_classes.items()
            ),
        )
        if self._throughput is not None:
            family(
                "soakd_throughput_per_second",
                "gauge",
                "Iterations per second over the last workload interval.",
                [("soakd_throughput_per_second", self._throughput)],
            )
        if self._error_rate is not None:
            family(
                "soakd_error_rate",
                "gauge",
                "Failed fraction of the last workload interval's iterations.",
                [("soakd_error_rate", self._error_rate)],
            )
        for name, seconds in sorted(self._percentiles.items()):
            family(name, "gauge", "Percentile over the last workload interval.", [(name, seconds)])
        for _, name, help_ in _HISTOGRAMS:
            hist = self._hists[name]
            if hist.count:
                self._render_histogram(out, name, help_, hist)
        kinds = [*LEAK_KINDS, *(k for k in (*self._suspects, *self._confirmed) if k == OTHER)]
        family(
            "soakd_leak_suspects",
            "gauge",
            "Leak findings under suspicion, by kind.",
            (
                ("soakd_leak_suspects" + _labels({"kind": k}), len(self._suspects.get(k, ())))
                for k in dict.fromkeys(kinds)
            ),
        )
        family(
            "soakd_leaks_confirmed",
            "gauge",
            "Confirmed leaks, by kind.",
            (
                ("soakd_leaks_confirmed" + _labels({"kind": k}), len(self._confirmed.get(k, ())))
                for k in dict.fromkeys(kinds)
            ),
        )
        family(
            "soakd_breaches_total",
            "counter",
            "Threshold rule breaches, by rule.",
            (
                ("soakd_breaches_total" + _labels({"rule": rule}), n)
                for rule, n in self._breaches.items()
            ),
        )
        return "\n".join(out) + "\n"

    @staticmethod
    def _render_histogram(out: list[str], name: str, help_: str, hist: _Histogram) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} histogram")
        running = 0
        for bound, count in zip((*BUCKETS_S, math.inf), hist.counts, strict=True):
            running += count
            le = "+Inf" if math.isinf(bound) else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out.append(f"{name}_sum {_value(hist.sum_s)}")
        out.append(f"{name}_count {hist.count}")
