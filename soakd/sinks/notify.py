"""systemd notification: READY, a one-line STATUS, WATCHDOG while sampling progresses, STOPPING.

The sender is the sd_notify(3) protocol in the standard library: one datagram to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace).
Without ``$NOTIFY_SOCKET`` (not under systemd) everything here is a no-op.

The watchdog pings only when a process sample (one carrying ``rss_bytes``) arrived since the
previous ping, so a hung sampler or a stuck event loop lets systemd's ``WatchdogSec=`` fire
instead of a soak that silently measures nothing. Workload stats and heap samples do not count:
they come from the worker and keep flowing when the supervisor's own sampling is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping
from typing import Any

from soakd.leaks import LeakLedger, leak_label
from soakd.sinks.base import RunObserver
from soakd.units import format_size

__all__ = [
    "NOTIFY_ENV",
    "Notifier",
    "SdNotify",
    "child_environment",
    "format_status",
    "watchdog_period",
]

# Variables that describe the supervisor's own service manager link; a worker must not
# inherit them (it would report to systemd as if it were the service).
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
DEFAULT_WATCHDOG_PERIOD = 5.0  # seconds, when NOTIFY_SOCKET is set but WatchdogSec= is not
_MAX_STATUS = 200  # systemctl status shows one line; keep it short


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the service manager's notify and watchdog variables."""
    return {k: v for k, v in env.items() if k not in NOTIFY_ENV}


def watchdog_period(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), None when not wanted.

    Like sd_watchdog_enabled(3): ``$WATCHDOG_PID``, when set, must name this process.
    """
    if not env.get("NOTIFY_SOCKET"):
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(pid):
        return None
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return DEFAULT_WATCHDOG_PERIOD
    try:
        value = int(usec)
    except ValueError:
        return DEFAULT_WATCHDOG_PERIOD
    if value <= 0:
        return None
    return value / 2_000_000.0


def _socket_address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # vsock: and other transports are not supported; stay silent


class SdNotify:
    """One AF_UNIX datagram socket to the service manager; every failure is swallowed."""

    def __init__(self, notify_socket: str | None) -> None:
        self.address = _socket_address(notify_socket) if notify_socket else None
        self._sock: socket.socket | None = None
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False when not sent (never raises)."""
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a full manager queue must not stall the loop
            self._sock.sendto(payload, self.address)
        except OSError:
            self.failures += 1
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _duration(seconds: float) -> str:
    s = max(int(seconds), 0)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def format_status(
    elapsed_s: float,
    iterations: int | None,
    errors: int | None,
    rss_bytes: float | None,
    verdict: str,
) -> str:
    """The one-line STATUS systemctl shows, e.g. ``1h02m03s, 1200 iterations (3 errors), ...``."""
    parts = [f"elapsed {_duration(elapsed_s)}"]
    if iterations is not None:
        text = f"{iterations} iterations"
        if errors:
            text += f" ({errors} errors)"
        parts.append(text)
    if rss_bytes is not None:
        parts.append(f"worker rss {format_size(rss_bytes)}")
    parts.append(f"verdict so far: {verdict}")
    line = ", ".join(parts).replace("\n", " ").replace("\r", " ")
    return line[:_MAX_STATUS]


class Notifier(RunObserver):
    """Reports a run's state to systemd (Type=notify units); silent when not under systemd.

    Collaborators: :class:`SdNotify` (the datagram socket) and a :class:`LeakLedger` (the
    verdict so far); a watchdog task pings while process samples arrive.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        status_interval: float = 10.0,
    ) -> None:
        environ = os.environ if env is None else env
        self.sd = SdNotify(environ.get("NOTIFY_SOCKET"))
        self.period = watchdog_period(environ, os.getpid())
        self.status_interval = status_interval
        self.samples_since_ping = 0
        self.pings = 0
        self.ticks = 0  # watchdog loop iterations, pinged or not (tests wait on these)
        self.tick_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._elapsed = 0.0
        self._iterations: int | None = None
        self._errors: int | None = None
        self._rss: float | None = None
        self._leaks = LeakLedger()
        self._final: str | None = None
        self._aborting: str | None = None
        self._target_failed: str | None = None
        self._judged = False
        self._last_status_t: float | None = None
        self.stopping = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.sd.enabled:
            return
        self.sd.send("STATUS=starting")
        if self.period is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._watchdog_loop(self.period), name="soakd-watchdog"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.sd.close()

    async def _watchdog_loop(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            self.watchdog_tick()

    def watchdog_tick(self) -> bool:
        """Ping WATCHDOG=1 if a process sample arrived since the last tick; True if pinged."""
        self.ticks += 1
        pinged = False
        if self.samples_since_ping > 0:
            self.samples_since_ping = 0
            pinged = self.sd.send("WATCHDOG=1")
            if pinged:
                self.pings += 1
        self.tick_event.set()
        return pinged

    # -- observer --------------------------------------------------------------------------
    def on_samples(self, t: float, values: Mapping[str, float]) -> None:
        try:
            self._elapsed = max(self._elapsed, t)
            rss = values.get("rss_bytes")
            if rss is None:
                return  # not a process sample: no evidence that sampling progresses
            self._rss = float(rss)
            self.samples_since_ping += 1
            if self._last_status_t is None or t - self._last_status_t >= self.status_interval:
                self._send_status(t)
        except Exception:  # an observer must never raise into the supervisor
            return

    def on_workload(self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]) -> None:
        try:
            self._elapsed = max(self._elapsed, t)
            iterations = totals.get("iterations")
            errors = totals.get("errors")
            if isinstance(iterations, int | float):
                self._iterations = int(iterations)
            if isinstance(errors, int | float):
                self._errors = int(errors)
            self._send_status(t)
        except Exception:
            return

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        try:
            self._on_event(event, fields)
        except Exception:
            return

    def _on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        t = fields.get("t")
        if isinstance(t, int | float):
            self._elapsed = max(self._elapsed, float(t))
        if event == "worker.ready":
            self.sd.send("READY=1", f"STATUS={self.status_line()}")
            self._last_status_t = self._elapsed
            return
        if event == "run.stopping":
            self.stopping = True
            reason = str(fields.get("reason") or "stop")
            self.sd.send("STOPPING=1", f"STATUS=stopping ({reason}): {self.status_line()}")
            return
        changed = True
        if self._leaks.apply(event, fields) is not None:
            pass
        elif event == "threshold.breached" and fields.get("action") == "abort":
            self._aborting = str(fields.get("rule") or fields.get("metric") or "rule")
        elif event == "target.failed":
            self._target_failed = str(fields.get("reason") or "target failed")
        elif event == "run.finished":
            self._final = str(fields.get("verdict") or "?")
        elif event == "detection.judged":
            self._judged = True
        else:
            changed = False
        if changed:
            self._send_status(self._elapsed, prefix="stopping: " if self.stopping else "")

    # -- status ----------------------------------------------------------------------------
    def verdict_so_far(self) -> str:
        if self._final is not None:
            return f"{self._final} (finished)"
        if self._target_failed is not None:
            return f"target failed ({self._target_failed})"
        if self._aborting is not None:
            return f"aborted by {self._aborting}"
        confirmed = self._leaks.confirmed_events()
        if confirmed:
            more = len(confirmed) - 1
            return f"leak: {leak_label(confirmed[0])}" + (f" (+{more} more)" if more else "")
        # Never "pass" before the end: that is a verdict only a finished, judged run gets.
        so_far = "no leak so far" if self._judged else "not judged yet"
        suspects = self._leaks.suspect_events()
        if suspects:
            return f"{so_far}, {len(suspects)} leak suspect(s)"
        return so_far

    def status_line(self) -> str:
        return format_status(
            self._elapsed, self._iterations, self._errors, self._rss, self.verdict_so_far()
        )

    def _send_status(self, t: float, prefix: str = "") -> None:
        self._last_status_t = t
        self.sd.send(f"STATUS={prefix}{self.status_line()}")
