"""The run over OTLP (the ``otel`` extra): metrics, sampled iteration spans, a run span.

- Metrics: the same facts as ``/metrics`` (one :class:`~soakd.sinks.run_metrics.RunMetrics`
  fed by the same callbacks), as OpenTelemetry instruments pushed every
  ``otel.export_interval``. Semantic-convention names where they exist (``process.*`` describe
  the WORKER, as ``process_*`` do on ``/metrics``); ``soakd.*`` for the rest.
- Traces: the worker records sampled iterations as plain data
  (:mod:`soakd.workload.spans`: it runs in the target's interpreter, standard library only);
  here they become SDK ``ReadableSpan``s with the worker's trace and span ids, so the spans the
  service itself made under the ``traceparent`` it was given join the same trace. Each links to
  the run span (one trace per iteration: a 24 h soak as one trace would not be readable).
- The run span lasts the run; leak confirmations, clearances and threshold breaches are its
  events. It is exported when the run ends.

Exports run on the SDK's own threads (batch span processor, periodic metric reader), never on
the supervisor's event loop; their queues are bounded by the SDK (spans beyond
``max_queue_size`` are dropped, as the SDK documents).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from soakd.config import OtelConfig
from soakd.errors import ConfigError
from soakd.sinks.base import RunObserver
from soakd.sinks.run_metrics import BUCKETS_S, Histogram, RunMetrics, supervisor_usage

__all__ = ["SCOPE", "OtelExporter", "require_extra"]

SCOPE = "soakd"
_EXTRA = "opentelemetry.exporter.otlp.proto.http"
# Breaches and leak findings that become run-span events (the rest are in events.jsonl).
_RUN_EVENTS = frozenset({"leak.confirmed", "leak.cleared", "threshold.breached"})
_MAX_RUN_EVENTS = 1000  # events offered to the run span (the SDK keeps the latest 128)


def require_extra() -> None:
    """Exit 2 with the fix when ``otel.enabled`` is set without the ``otel`` extra."""
    try:
        found = importlib.util.find_spec(_EXTRA) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ConfigError(
            "otel.enabled = true needs the otel extra (OpenTelemetry SDK and OTLP exporter): "
            "pip install 'soakd[otel]', or set otel.enabled = false"
        )


def _url(base: str | None, path: str) -> str | None:
    """``base`` + ``path`` (as OTEL_EXPORTER_OTLP_ENDPOINT is read); None: the SDK's env."""
    return None if base is None else base.rstrip("/") + path


# on_samples series -> (instrument, kind, unit, description, scale)
_SAMPLE_INSTRUMENTS: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("rss_bytes", "process.memory.usage", "updown", "By", "Worker resident memory.", 1.0),
    ("vms_bytes", "process.memory.virtual", "updown", "By", "Worker virtual memory.", 1.0),
    ("fds", "process.open_file_descriptor.count", "updown", "{fd}", "Worker open fds.", 1.0),
    ("threads", "process.thread.count", "updown", "{thread}", "Worker OS threads.", 1.0),
    ("cpu_seconds", "process.cpu.time", "counter", "s", "Worker user+system CPU time.", 1.0),
    ("cpu_percent", "process.cpu.utilization", "gauge", "1", "Worker CPU use, of one core.", 0.01),
    ("heap_bytes", "soakd.heap.size", "gauge", "By", "Python heap in use in the worker.", 1.0),
    ("uss_bytes", "soakd.memory.uss", "gauge", "By", "Worker unique set size.", 1.0),
    ("tasks", "soakd.tasks", "gauge", "{task}", "asyncio tasks alive in the worker.", 1.0),
    ("children", "soakd.children", "gauge", "{process}", "Child processes of the worker.", 1.0),
    ("gc_garbage", "soakd.gc.garbage", "gauge", "{object}", "Objects in gc.garbage.", 1.0),
    ("traced_bytes", "soakd.traced.size", "gauge", "By", "Bytes traced by tracemalloc.", 1.0),
    ("profiler_bytes", "soakd.profiler.size", "gauge", "By", "Profiler tables' memory.", 1.0),
    (
        "system_memory_percent",
        "system.memory.utilization",
        "gauge",
        "1",
        "Memory in use on the box, fraction.",
        0.01,
    ),
    (
        "system_available_bytes",
        "soakd.system.memory.available",
        "gauge",
        "By",
        "Memory available on the box.",
        1.0,
    ),
    ("load_avg", "soakd.system.load_average.1m", "gauge", "1", "1-minute load average.", 1.0),
)


# RunMetrics histogram -> (instrument, description)
_HISTOGRAMS = (
    ("soakd_latency_seconds", "soakd.iteration.duration", "Iteration latency."),
    ("soakd_first_event_seconds", "soakd.iteration.first_event", "Time to the first event."),
)


def _histogram_point(hist: Histogram, start_ns: int, now_ns: int) -> Any:
    """The cumulative histogram as an OTLP data point (the ``/metrics`` buckets)."""
    from opentelemetry.sdk.metrics.export import HistogramDataPoint

    counts = list(hist.counts)  # a copy: the event loop keeps adding while we export
    return HistogramDataPoint(
        attributes={},
        start_time_unix_nano=start_ns,
        time_unix_nano=now_ns,
        count=sum(counts),
        sum=hist.sum_s,
        bucket_counts=counts,
        explicit_bounds=BUCKETS_S,
        min=hist.min_s,
        max=hist.max_s,
    )


def _with_histograms(inner: Any, state: RunMetrics) -> Any:
    """``inner`` (an OTLP metric exporter), plus the latency histograms as they already are.

    The worker reports each interval's latencies as a histogram, not as values; the metrics
    API can only record values one at a time (measured: 6.5–9 µs per call, seconds a minute
    at a saturated target's rate), so the cumulative fixed-bucket histograms ``/metrics``
    serves are added to each export as data points instead.
    """
    from opentelemetry.sdk.metrics.export import MetricExporter

    class WithHistograms(MetricExporter):
        def __init__(self) -> None:
            super().__init__(
                preferred_temporality=inner._preferred_temporality,
                preferred_aggregation=inner._preferred_aggregation,
            )
            self._start_ns = time.time_ns()

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **_: Any) -> Any:
            return inner.export(_add_histograms(metrics_data, state, self._start_ns),
                                timeout_millis=timeout_millis)  # fmt: skip

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return bool(inner.force_flush(timeout_millis=timeout_millis))

        def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
            inner.shutdown(timeout_millis=timeout_millis)

    return WithHistograms()


def _add_histograms(data: Any, state: RunMetrics, start_ns: int) -> Any:
    """``data`` (an SDK ``MetricsData``) with the histograms added to soakd's scope."""
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Metric,
        MetricsData,
        ResourceMetrics,
        ScopeMetrics,
    )
    from opentelemetry.sdk.metrics.export import Histogram as HistogramData

    now = time.time_ns()
    extra = [
        Metric(
            name,
            help_,
            "s",
            HistogramData(
                [_histogram_point(hist, start_ns, now)],
                AggregationTemporality.CUMULATIVE,
            ),
        )
        for key, name, help_ in _HISTOGRAMS
        if (hist := state.hists[key]).count
    ]
    if not extra:
        return data
    out = []
    for rm in data.resource_metrics:
        scopes = [
            ScopeMetrics(sm.scope, [*sm.metrics, *extra], sm.schema_url)
            if sm.scope.name == SCOPE
            else sm
            for sm in rm.scope_metrics
        ]
        out.append(ResourceMetrics(rm.resource, scopes, rm.schema_url))
    return MetricsData(out)


class OtelExporter(RunObserver):
    """Pushes the run's metrics and spans to an OTLP/HTTP endpoint (``[otel]``).

    Collaborators: a :class:`RunMetrics` (the state the metric callbacks read), the SDK's
    ``MeterProvider`` with a periodic OTLP reader, a ``BatchSpanProcessor`` over an OTLP span
    exporter, and a ``TracerProvider`` on the same processor for the run span.
    """

    def __init__(self, cfg: OtelConfig, run_id: str, target: str) -> None:
        require_extra()
        self.cfg = cfg
        self.run_id = run_id
        self.target = target
        self.state = RunMetrics(run_id, target)
        self.spans_received = 0
        self._dropped = 0  # the worker's count so far (cumulative)
        self._run_events = 0
        self._meter_provider: Any = None
        self._tracer_provider: Any = None
        self._processor: Any = None
        self._run_span: Any = None
        self._build()

    # -- setup -----------------------------------------------------------------------------
    def _resource_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "service.name": self.cfg.service_name or self.target,
            "host.name": socket.gethostname(),
            "soakd.run.id": self.run_id,
            "soakd.target": self.target,
        }
        attrs.update(self.cfg.resource)  # the config wins over the defaults
        return attrs

    def _build(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        cfg = self.cfg
        # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME; ours win.
        self.resource = Resource.create(self._resource_attributes())
        headers = dict(cfg.headers) or None  # None: OTEL_EXPORTER_OTLP_HEADERS, if set
        metric_exporter = _with_histograms(
            OTLPMetricExporter(
                endpoint=_url(cfg.endpoint, "/v1/metrics"), headers=headers, timeout=cfg.timeout
            ),
            self.state,
        )
        reader = PeriodicExportingMetricReader(
            metric_exporter,
            export_interval_millis=cfg.export_interval * 1000,
            export_timeout_millis=cfg.timeout * 1000,
        )
        self._meter_provider = MeterProvider(resource=self.resource, metric_readers=[reader])
        self._processor = BatchSpanProcessor(
            OTLPSpanExporter(
                endpoint=_url(cfg.endpoint, "/v1/traces"), headers=headers, timeout=cfg.timeout
            ),
            max_queue_size=max(2048, cfg.max_spans * 4),
            export_timeout_millis=cfg.timeout * 1000,
        )
        self._tracer_provider = TracerProvider(resource=self.resource, sampler=ALWAYS_ON)
        self._tracer_provider.add_span_processor(self._processor)
        from soakd import __version__

        self._scope_version = __version__
        self._instruments(self._meter_provider.get_meter(SCOPE, __version__))

    def _instruments(self, meter: Any) -> None:
        from opentelemetry.metrics import Observation

        state = self.state

        def sample(key: str, scale: float) -> Callable[[Any], Iterable[Observation]]:
            def read(_options: Any) -> Iterable[Observation]:
                if key in state.values:
                    yield Observation(state.values[key] * scale)

            return read

        makers = {
            "updown": meter.create_observable_up_down_counter,
            "counter": meter.create_observable_counter,
            "gauge": meter.create_observable_gauge,
        }
        for key, name, kind, unit, help_, scale in _SAMPLE_INSTRUMENTS:
            makers[kind](name, callbacks=[sample(key, scale)], unit=unit, description=help_)

        def iterations(_options: Any) -> Iterable[Observation]:
            if state.iterations is not None:
                errors = state.errors or 0.0
                yield Observation(max(state.iterations - errors, 0.0), {"outcome": "ok"})
                yield Observation(errors, {"outcome": "error"})

        def errors(_options: Any) -> Iterable[Observation]:
            for cls, n in list(state.error_classes.items()):
                yield Observation(n, {"error.type": cls})

        def last(attr: str) -> Callable[[Any], Iterable[Observation]]:
            def read(_options: Any) -> Iterable[Observation]:
                value = getattr(state, attr)
                if value is not None:
                    yield Observation(value)

            return read

        def leaks(confirmed: bool) -> Callable[[Any], Iterable[Observation]]:
            def read(_options: Any) -> Iterable[Observation]:
                counts = state.leak_counts()[1 if confirmed else 0]
                for kind, n in counts.items():
                    yield Observation(n, {"soakd.leak.kind": kind})

            return read

        def breaches(_options: Any) -> Iterable[Observation]:
            for rule, n in list(state.breaches.items()):
                yield Observation(n, {"soakd.rule": rule})

        def supervisor(index: int) -> Callable[[Any], Iterable[Observation]]:
            def read(_options: Any) -> Iterable[Observation]:
                usage = supervisor_usage()
                if usage is not None:
                    yield Observation(usage[index])

            return read

        def dropped(_options: Any) -> Iterable[Observation]:
            yield Observation(self._dropped)

        meter.create_observable_counter(
            "soakd.iterations", [iterations], "{iteration}", "Iterations completed, by outcome."
        )
        meter.create_observable_counter(
            "soakd.errors", [errors], "{iteration}", "Failed iterations by error class."
        )
        meter.create_observable_gauge(
            "soakd.throughput", [last("throughput")], "{iteration}/s", "Iterations per second."
        )
        meter.create_observable_gauge(
            "soakd.error_rate", [last("error_rate")], "1", "Failed fraction of iterations."
        )
        meter.create_observable_gauge(
            "soakd.leak.suspects", [leaks(False)], "{finding}", "Leak findings under suspicion."
        )
        meter.create_observable_gauge(
            "soakd.leaks.confirmed", [leaks(True)], "{leak}", "Confirmed leaks, by kind."
        )
        meter.create_observable_counter(
            "soakd.breaches", [breaches], "{breach}", "Threshold rule breaches, by rule."
        )
        meter.create_observable_up_down_counter(
            "soakd.supervisor.memory.usage", [supervisor(0)], "By", "soakd's own resident memory."
        )
        meter.create_observable_counter(
            "soakd.supervisor.cpu.time", [supervisor(1)], "s", "soakd's own CPU time."
        )
        meter.create_observable_counter(
            "soakd.spans.dropped", [dropped], "{span}", "Sampled spans the worker dropped."
        )

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        from opentelemetry.trace import SpanKind

        tracer = self._tracer_provider.get_tracer(SCOPE, self._scope_version)
        self._run_span = tracer.start_span(
            "soak run",
            kind=SpanKind.INTERNAL,
            attributes={"soakd.run.id": self.run_id, "soakd.target": self.target},
        )

    async def stop(self) -> None:
        span, self._run_span = self._run_span, None
        if span is not None:
            with contextlib.suppress(Exception):
                span.end()

        def shut() -> None:
            # Final export of both; each bounded by the SDK's own timeouts.
            with contextlib.suppress(Exception):
                self._meter_provider.shutdown(timeout_millis=self.cfg.timeout * 1000)
            with contextlib.suppress(Exception):
                self._tracer_provider.shutdown()

        await asyncio.to_thread(shut)

    # -- observer --------------------------------------------------------------------------
    def on_samples(self, t: float, values: Mapping[str, float]) -> None:
        self.state.on_samples(t, values)

    def on_workload(self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]) -> None:
        self.state.on_workload(t, interval, totals)

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        self.state.on_event(event, fields)
        span = self._run_span
        if span is None or event not in _RUN_EVENTS or self._run_events >= _MAX_RUN_EVENTS:
            return
        self._run_events += 1
        attrs: dict[str, Any] = {}
        for key, value in fields.items():
            if isinstance(value, str | bool | int | float) and len(attrs) < 32:
                attrs[f"soakd.{key}"] = value
        span.add_event(event, attrs)

    def on_spans(self, spans: Sequence[Mapping[str, Any]], dropped: int) -> None:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self._dropped = max(self._dropped, dropped)
        run = self._run_span.get_span_context() if self._run_span is not None else None
        links = (Link(run),) if run is not None else ()
        scope = InstrumentationScope(SCOPE, self._scope_version)
        for raw in spans:
            try:
                trace_id = int(str(raw["trace_id"]), 16)
                span_id = int(str(raw["span_id"]), 16)
                start = int(raw["start_ns"])
                end = int(raw["end_ns"])
                marks = [(str(name), int(offset)) for name, offset in raw.get("marks") or ()]
            except (KeyError, TypeError, ValueError):
                continue  # the worker runs the target's code: never trust its messages blindly
            if not (0 < trace_id < 2**128 and 0 < span_id < 2**64 and 0 <= start <= end):
                continue
            error = raw.get("error")
            kind = raw.get("kind")
            attrs: dict[str, Any] = {"soakd.run.id": self.run_id}
            if isinstance(kind, str):
                attrs["soakd.query.kind"] = kind
            if isinstance(raw.get("events"), int):
                attrs["soakd.events"] = raw["events"]
            status = Status(StatusCode.UNSET)
            if isinstance(error, str):
                attrs["error.type"] = error
                status = Status(StatusCode.ERROR, error)
            span = ReadableSpan(
                "iteration",
                context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)),
                parent=None,
                resource=self.resource,
                attributes=attrs,
                events=[Event(name, timestamp=start + offset) for name, offset in marks[:32]],
                links=links,
                kind=SpanKind.CLIENT,
                status=status,
                start_time=start,
                end_time=end,
                instrumentation_scope=scope,
            )
            self._processor.on_end(span)
            self.spans_received += 1
