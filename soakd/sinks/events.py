"""Structured events: structlog pipeline → events.jsonl (flushed per line) and stdout.

stdout gets the same events as JSON lines when it is not a TTY (systemd, pipes) and a readable
console rendering on a TTY. Every event carries ``run_id``, an ISO ``timestamp`` and ``t``, the
seconds since the run started.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from soakd.rundir import create_file

Listener = Callable[[str, dict[str, Any]], None]


class _Sink:
    """structlog's final "logger": receives the processed event dict as keyword arguments."""

    def __init__(self, file: TextIO | None, stdout: TextIO | None, pretty: bool) -> None:
        self.file = file
        self.stdout = stdout
        self.pretty = pretty
        self._console = structlog.dev.ConsoleRenderer(colors=False) if pretty else None
        self.write_errors = 0

    def _write(self, **event: Any) -> None:
        line = json.dumps(event, default=str, separators=(",", ":"))
        if self.file is not None:
            try:
                self.file.write(line + "\n")
                self.file.flush()
            except OSError:
                self.write_errors += 1  # full disk: keep running, the summary says so
        if self.stdout is not None:
            try:
                if self._console is not None:
                    text = self._console(None, "info", dict(event))
                    # clear the live progress line (stderr, same terminal) before printing
                    self.stdout.write("\r\x1b[K" + str(text) + "\n")
                else:
                    self.stdout.write(line + "\n")
                self.stdout.flush()
            except (OSError, ValueError):
                pass

    msg = info = warning = error = debug = critical = _write


class EventLog:
    """Emits events to events.jsonl, stdout and registered listeners.

    Collaborators: structlog (the processor pipeline), a :class:`_Sink` writing the file and
    stdout, and the listeners (the supervisor's observer fan-out). Event names are catalogued
    in :mod:`soakd.events`.
    """

    def __init__(
        self,
        path: Path | None,
        run_id: str,
        started_monotonic: float,
        *,
        stdout: TextIO | None = None,
        console: str = "auto",
    ) -> None:
        out = stdout if stdout is not None else sys.stdout
        pretty = console == "pretty" or (console == "auto" and out.isatty())
        self._file: TextIO | None = None
        if path is not None:  # held open for the run, closed by close()
            self._file = open(create_file(path), "a", encoding="utf-8")  # noqa: SIM115
        self._sink = _Sink(self._file, out, pretty)
        self._t0 = started_monotonic
        self._listeners: list[Listener] = []
        self._log = structlog.wrap_logger(
            self._sink,
            processors=[self._add_t, structlog.processors.TimeStamper(fmt="iso", utc=True)],
            context_class=dict,
            cache_logger_on_first_use=False,
        ).bind(run_id=run_id)

    def _add_t(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        event.setdefault("t", round(time.monotonic() - self._t0, 3))
        return event

    @property
    def write_errors(self) -> int:
        return self._sink.write_errors

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event, fields)`` after each event is written; it must not raise."""
        self._listeners.append(listener)

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        getattr(self._log, level)(event, level=level, **fields)
        for listener in self._listeners:
            listener(event, fields)  # observers are isolated by sinks.observers.fan_out

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
