"""A one-line live progress display on a TTY (stderr), refreshed with every sample batch."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from soakd.coerce import num
from soakd.leaks import LeakLedger
from soakd.reporting.svg import format_value
from soakd.sinks.base import RunObserver
from soakd.units import format_duration


@dataclass
class ProgressState:
    """What the line shows; updated by the observer callbacks, rendered by ``render``."""

    duration_s: float
    t: float = 0.0
    iterations: int = 0
    throughput_per_s: float | None = None
    error_rate: float | None = None
    rss_bytes: float | None = None
    heap_bytes: float | None = None
    leaks: LeakLedger = field(default_factory=LeakLedger)
    breaches: int = 0

    def render(self, width: int = 120) -> str:
        pct = min(100.0, 100.0 * self.t / self.duration_s) if self.duration_s > 0 else 0.0
        parts = [
            f"{format_duration(self.t)}/{format_duration(self.duration_s)} {pct:3.0f}%",
            f"it {self.iterations}",
            f"{format_value(self.throughput_per_s, 'per_s')}",
            f"err {format_value(self.error_rate, 'ratio')}",
            f"rss {format_value(self.rss_bytes, 'bytes')}",
            f"heap {format_value(self.heap_bytes, 'bytes')}",
            f"suspects {len(self.leaks.suspect_events())}",
        ]
        confirmed = len(self.leaks.confirmed_events())
        if confirmed:
            parts.append(f"LEAKS {confirmed}")
        if self.breaches:
            parts.append(f"breaches {self.breaches}")
        line = " | ".join(parts)
        return line if len(line) <= width else line[: max(0, width - 1)] + "…"


class Progress(RunObserver):
    """Writes ``\\r<line>`` plus clear-to-end-of-line; the lead wires it when stderr is a TTY."""

    def __init__(self, duration_s: float, stream: TextIO | None = None) -> None:
        self.state = ProgressState(duration_s=duration_s)
        self._stream = stream if stream is not None else sys.stderr
        self._dirty = False
        self._broken = False

    def _draw(self) -> None:
        if self._broken:
            return
        width = shutil.get_terminal_size((120, 24)).columns - 1
        try:
            self._stream.write("\r" + self.state.render(width) + "\x1b[K")
            self._stream.flush()
            self._dirty = True
        except (OSError, ValueError):
            self._broken = True  # a closed terminal must never stop the soak

    async def stop(self) -> None:
        if self._dirty and not self._broken:
            try:
                self._stream.write("\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass

    def on_samples(self, t: float, values: Mapping[str, float]) -> None:
        self.state.t = max(self.state.t, t)
        rss = num(values.get("rss_bytes"))
        heap = num(values.get("heap_bytes"))
        if rss is not None:
            self.state.rss_bytes = rss
        if heap is not None:
            self.state.heap_bytes = heap
        self._draw()

    def on_workload(self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]) -> None:
        self.state.t = max(self.state.t, t)
        iterations = num(totals.get("iterations"))
        if iterations is not None:
            self.state.iterations = int(iterations)
        throughput = num(interval.get("throughput_per_s"))
        error_rate = num(interval.get("error_rate"))
        if throughput is not None:
            self.state.throughput_per_s = throughput
        if error_rate is not None:
            self.state.error_rate = error_rate

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if self.state.leaks.apply(event, fields) is not None:
            pass
        elif event == "threshold.breached":
            self.state.breaches += 1
        else:
            return
        self._draw()
