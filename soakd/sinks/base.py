"""The observer interface the supervisor feeds; every sink implements what it needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class RunObserver:
    """Receives a run's facts as they happen. Methods must not block (the supervisor's loop).

    They may raise: the supervisor isolates each observer (:func:`soakd.sinks.observers.fan_out`),
    so an exception costs that one call, never the run or the other observers. Register a new
    observer in :data:`soakd.sinks.observers.OBSERVERS`; event names are in :mod:`soakd.events`.
    """

    async def start(self) -> None:
        """Open resources (servers, sessions)."""

    async def stop(self) -> None:
        """Release resources; must not raise."""

    def on_samples(self, t: float, values: Mapping[str, float]) -> None:
        """A batch of numeric samples taken at ``t`` (seconds since the run started)."""

    def on_workload(self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]) -> None:
        """Per-interval workload stats and the run's cumulative totals."""

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """A structured event (leak.suspected, leak.confirmed, threshold.breached, ...)."""

    def on_spans(self, spans: Sequence[Mapping[str, Any]], dropped: int) -> None:
        """Sampled iteration spans from the worker (:mod:`soakd.workload.spans` dicts) and how
        many the worker dropped so far (its buffer was full)."""
