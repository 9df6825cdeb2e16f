"""The reference aggregator's own OpenTelemetry instrumentation, as a service would have it.

With the ``opentelemetry`` API importable, every query is a ``process_query`` span with child
spans ``analyze``, ``search`` and ``synthesize``. The spans start under the current
OpenTelemetry context: under soakd, a sampled iteration's span (soakd attaches it around the
iteration), so the service's spans share soakd's trace id. Without the API: no spans, no cost.

``otel_export = true`` (a target option) makes the aggregator configure its own SDK, as a
service's bootstrap would: a tracer provider named ``soakd-reference-aggregator`` exporting over
OTLP/HTTP to where the standard ``OTEL_EXPORTER_OTLP_*`` variables point, sampling parent-based
with unsampled roots: it records exactly the queries soakd sampled. Otherwise the spans go to
the global tracer provider (a no-op unless the process configured one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["SERVICE_NAME", "Telemetry", "open_telemetry"]

SERVICE_NAME = "soakd-reference-aggregator"
_SCOPE = "soakd.reference"


class Telemetry:
    """A tracer and, when the aggregator exports itself, the provider it must shut down."""

    def __init__(self, export: bool) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        self._trace = trace
        self._error = (Status, StatusCode.ERROR)
        self._provider: Any = None
        if export:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

            self._provider = TracerProvider(
                resource=Resource.create({"service.name": SERVICE_NAME}),
                sampler=ParentBased(ALWAYS_OFF),
            )
            self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            self.tracer: Any = self._provider.get_tracer(_SCOPE)
        else:
            self.tracer = trace.get_tracer(_SCOPE)

    @contextlib.contextmanager
    def span(self, name: str, parent: Any = None, **attributes: Any) -> Iterator[Any]:
        """A span over the block, child of ``parent`` (else of the current context), ended on
        exit; an exception is recorded on it. Not made current: the block may ``yield``."""
        ctx = None if parent is None else self._trace.set_span_in_context(parent)
        span = self.tracer.start_span(name, context=ctx, attributes=attributes or None)
        try:
            yield span
        except GeneratorExit:
            raise  # the consumer stopped early: not the service's error
        except Exception as exc:
            span.record_exception(exc)
            status, error = self._error
            span.set_status(status(error, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.end()

    def shutdown(self) -> None:
        """Flush and stop the aggregator's own exporter (when it has one)."""
        if self._provider is not None:
            self._provider.shutdown()


def open_telemetry(export: bool) -> Telemetry | None:
    """The aggregator's telemetry; None when the OpenTelemetry API is not installed."""
    try:
        return Telemetry(export)
    except ImportError as exc:
        if export:
            raise ValueError(
                f"otel_export = true needs the OpenTelemetry SDK and OTLP exporter ({exc}): "
                "pip install 'soakd[otel]', or drop the option"
            ) from None
        return None
