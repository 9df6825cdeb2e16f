"""The observers a run feeds: built from one table, isolated from the run in one place.

Adding an observer: subclass :class:`~soakd.sinks.base.RunObserver` and add a row to
``OBSERVERS`` (when it is wanted, how it is built). An observer may raise: :func:`fan_out`,
:func:`samples_to` and :func:`workload_to` contain its exceptions, so one failing sink never
stops the run or the other sinks.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from soakd.config import Config
from soakd.sinks.base import RunObserver

__all__ = [
    "OBSERVERS",
    "ObserverContext",
    "build_observers",
    "fan_out",
    "samples_to",
    "spans_to",
    "workload_to",
]


@dataclass(frozen=True)
class ObserverContext:
    """What observers are built from besides the config."""

    run_id: str
    target_name: str
    duration_s: float
    log: Callable[[str, dict[str, Any]], None]  # an observer's own events (alert.sent, ...)


def _alerts(cfg: Config, ctx: ObserverContext) -> RunObserver:
    from soakd.sinks.alerts import AlertSender

    return AlertSender(cfg.alerts, ctx.log, ctx.run_id, ctx.target_name)


def _notify(_cfg: Config, _ctx: ObserverContext) -> RunObserver:
    from soakd.sinks.notify import Notifier

    return Notifier()


def _metrics(cfg: Config, ctx: ObserverContext) -> RunObserver:
    from soakd.sinks.metrics import MetricsServer

    return MetricsServer(cfg.metrics.bind, ctx.run_id, cfg.target.name)


def _otel(cfg: Config, ctx: ObserverContext) -> RunObserver:
    from soakd.sinks.otel import OtelExporter  # the otel extra: imported only when enabled

    return OtelExporter(cfg.otel, ctx.run_id, ctx.target_name)


def _progress(_cfg: Config, ctx: ObserverContext) -> RunObserver:
    from soakd.reporting.progress import Progress

    return Progress(ctx.duration_s)


def _always(_cfg: Config) -> bool:
    return True


# (wanted, build), in the order observers are fed.
OBSERVERS: Final[
    tuple[tuple[Callable[[Config], bool], Callable[[Config, ObserverContext], RunObserver]], ...]
] = (
    (_always, _alerts),
    (_always, _notify),
    (lambda cfg: cfg.metrics.enabled, _metrics),
    (lambda cfg: cfg.otel.enabled, _otel),
    (lambda cfg: sys.stderr.isatty() and cfg.output.console != "json", _progress),
)


def build_observers(cfg: Config, ctx: ObserverContext) -> list[RunObserver]:
    """The observers ``cfg`` asks for, in feeding order (build them on the event loop)."""
    return [build(cfg, ctx) for wanted, build in OBSERVERS if wanted(cfg)]


def fan_out(observers: Sequence[RunObserver], event: str, fields: Mapping[str, Any]) -> None:
    """``event`` to every observer; an observer's exception is contained (the one place)."""
    for obs in observers:
        with contextlib.suppress(Exception):
            obs.on_event(event, fields)


def samples_to(observers: Iterable[RunObserver], t: float, values: Mapping[str, float]) -> None:
    """A sample batch to every observer, each one's exception contained."""
    for obs in observers:
        with contextlib.suppress(Exception):
            obs.on_samples(t, values)


def spans_to(
    observers: Iterable[RunObserver], spans: Sequence[Mapping[str, Any]], dropped: int
) -> None:
    """Sampled iteration spans to every observer, each one's exception contained."""
    for obs in observers:
        with contextlib.suppress(Exception):
            obs.on_spans(spans, dropped)


def workload_to(
    observers: Iterable[RunObserver],
    t: float,
    interval: Mapping[str, Any],
    totals: Mapping[str, Any],
) -> None:
    """A workload interval to every observer, each one's exception contained."""
    for obs in observers:
        with contextlib.suppress(Exception):
            obs.on_workload(t, interval, totals)
