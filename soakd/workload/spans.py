"""Sampled iteration spans recorded in the worker as plain data (standard library only).

The worker runs in the target's interpreter and adds no third-party package to it, so an
iteration span here is a dict: W3C ids, wall-clock start and end in ns, milestone events as
offsets, the error class. The supervisor turns them into OpenTelemetry spans and exports them
(:mod:`soakd.sinks.otel`). Head sampling (``ratio``) decides at the start of an iteration;
an unsampled iteration costs one ``random()`` call.

While a sampled iteration runs, its W3C ``traceparent`` is in :data:`TRACEPARENT` (a
contextvar: the HTTP target sends it as a header, any target may read it) and, when the
``opentelemetry`` API is importable in this interpreter, the span's context is attached as the
current OpenTelemetry context, so the service's own instrumentation parents its spans under
soakd's iteration span without knowing about soakd.
"""

from __future__ import annotations

import contextvars
import random
import time
from collections import deque
from typing import Any

__all__ = ["TRACEPARENT", "SpanRecorder", "current_traceparent", "traceparent"]

# The W3C traceparent of the sampled iteration running in this context, or None.
TRACEPARENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "soakd_traceparent", default=None
)


def current_traceparent() -> str | None:
    """The running sampled iteration's ``traceparent`` header value, or None."""
    return TRACEPARENT.get()


def traceparent(trace_id: int, span_id: int) -> str:
    """The W3C ``traceparent`` of a sampled span (version 00, flags 01)."""
    return f"00-{trace_id:032x}-{span_id:016x}-01"


class _OtelBridge:
    """Attaches a remote parent span context to the OpenTelemetry API's current context."""

    def __init__(self) -> None:
        # Optional and in the target's interpreter: absent is the normal case.
        from opentelemetry import context, trace

        self._context = context
        self._trace = trace

    def attach(self, trace_id: int, span_id: int) -> object:
        trace = self._trace
        ctx = trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(1))
        return self._context.attach(trace.set_span_in_context(trace.NonRecordingSpan(ctx)))

    def detach(self, token: object) -> None:
        self._context.detach(token)  # type: ignore[arg-type]


def _bridge() -> _OtelBridge | None:
    try:
        return _OtelBridge()
    except Exception:  # not installed, or broken in the target's environment
        return None


class _Open:
    """A sampled iteration in flight."""

    __slots__ = ("mono_ns", "otel_token", "span_id", "start_ns", "token", "trace_id")

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        # Wall clock for where the span sits in time, the monotonic clock for how long it lasts
        # (the milestones are monotonic offsets too): a wall clock step never skews a span.
        self.start_ns = time.time_ns()
        self.mono_ns = time.monotonic_ns()
        self.token: contextvars.Token[str | None] | None = None
        self.otel_token: object = None


class SpanRecorder:
    """Head-samples iterations and keeps the finished spans until :meth:`drain` (bounded).

    Finished spans wait in a deque of at most ``max_spans``; when the supervisor does not drain
    it in time the oldest are dropped and counted (``dropped``), so a slow exporter never makes
    the worker grow.
    """

    def __init__(self, ratio: float, max_spans: int, *, seed: int | None = None) -> None:
        self.ratio = ratio
        self._rng = random.Random(seed)
        self._ids = random.SystemRandom() if seed is None else self._rng
        self._done: deque[dict[str, Any]] = deque(maxlen=max_spans)
        self.sampled = 0
        self.dropped = 0
        self._otel = _bridge() if ratio > 0 else None

    def begin(self) -> _Open | None:
        """Start an iteration: a sampled one gets ids, the traceparent and the OTel context."""
        if self._rng.random() >= self.ratio:
            return None
        ids = self._ids
        span = _Open(ids.getrandbits(128) or 1, ids.getrandbits(64) or 1)
        span.token = TRACEPARENT.set(traceparent(span.trace_id, span.span_id))
        if self._otel is not None:
            try:
                span.otel_token = self._otel.attach(span.trace_id, span.span_id)
            except Exception:
                span.otel_token = None
        return span

    def _release(self, span: _Open) -> None:
        if span.otel_token is not None and self._otel is not None:
            try:
                self._otel.detach(span.otel_token)
            except Exception:
                pass  # the target changed the context under us: its own business
        if span.token is not None:
            try:
                TRACEPARENT.reset(span.token)
            except ValueError:
                TRACEPARENT.set(None)  # ended in another context: clear ours anyway

    def discard(self, span: _Open) -> None:
        """A cancelled iteration (the run stopping): no span."""
        self._release(span)

    def end(
        self,
        span: _Open,
        *,
        kind: str,
        error: str | None,
        first_s: float | None,
        milestones: dict[str, float],
        events: int,
    ) -> None:
        """Finish ``span``: milestone times are seconds from its start."""
        duration = max(time.monotonic_ns() - span.mono_ns, 0)
        self._release(span)

        def offset(seconds: float) -> int:  # measured from just before begin(): clamp
            return min(max(int(seconds * 1e9), 0), duration)

        marks: list[tuple[str, int]] = []
        if first_s is not None:
            marks.append(("first_event", offset(first_s)))
        marks.extend((name, offset(s)) for name, s in milestones.items())
        if len(self._done) == self._done.maxlen:
            self.dropped += 1
        self.sampled += 1
        self._done.append(
            {
                "trace_id": f"{span.trace_id:032x}",
                "span_id": f"{span.span_id:016x}",
                "start_ns": span.start_ns,
                "end_ns": span.start_ns + duration,
                "kind": kind,
                "error": error,
                "events": events,
                "marks": marks,
            }
        )

    def drain(self) -> list[dict[str, Any]]:
        """The spans finished since the last call, oldest first."""
        out = list(self._done)
        self._done.clear()
        return out
