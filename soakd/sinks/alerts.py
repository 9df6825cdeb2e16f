"""Alert delivery: webhooks (HTTP POST of the event as JSON) and a local command.

``on_event`` only enqueues (a bounded queue that drops the oldest alert when full), so a slow or
hanging receiver never delays the supervisor. One background task delivers: each alert goes to
every webhook (per-webhook timeout, bounded retries with exponential backoff) and to the
command (payload on stdin, killed with its process group when over its timeout) concurrently.

Webhook URLs, headers and the command line may carry secrets: they never appear in logged
events, reprs or error texts — errors are described from the exception's type and status only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from soakd.config import AlertsConfig, Webhook
from soakd.sinks.base import RunObserver

__all__ = ["AlertSender"]

Log = Callable[[str, dict[str, Any]], None]

ALERT_EVENTS = ("threshold.breached", "leak.confirmed")
_MAX_BACKOFF_S = 30.0
_STDERR_TAIL = 200  # characters of a failing command's stderr kept for the error text


class AlertSender(RunObserver):
    """Sends alerts for alerting threshold breaches and confirmed leaks."""

    def __init__(
        self,
        cfg: AlertsConfig,
        log: Callable[[str, dict[str, Any]], None],
        run_id: str,
        target: str,
        *,
        queue_size: int = 100,
        stop_timeout: float = 10.0,
        retry_backoff: float = 1.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be ≥ 1: {queue_size}")
        self._cfg = cfg
        self._log = log
        self._run_id = run_id
        self._target = target
        self._queue: deque[dict[str, Any]] = deque(maxlen=queue_size)
        self._stop_timeout = stop_timeout
        self._backoff = retry_backoff
        self._secrets = _secrets_of(cfg)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0  # alerts pushed out of a full queue
        self.sent = 0  # successful deliveries, one per channel
        self.failed = 0  # deliveries that gave up, one per channel

    def __repr__(self) -> str:  # never the config: URLs, headers and argv may be secrets
        return (
            f"AlertSender(webhooks={len(self._cfg.webhooks)}, "
            f"command={self._cfg.command is not None}, queued={len(self._queue)})"
        )

    @property
    def enabled(self) -> bool:
        return bool(self._cfg.webhooks) or self._cfg.command is not None

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        if self._task is not None or not self.enabled:
            return
        self._wake = asyncio.Event()
        if self._queue:
            self._wake.set()  # alerts enqueued before start
        self._task = asyncio.create_task(self._run(), name="soakd-alerts")

    async def stop(self) -> None:
        """Deliver what is queued until the stop deadline, then cancel; never raises."""
        self._closing = True
        task, self._task = self._task, None
        if task is None:
            return
        assert self._wake is not None
        self._wake.set()
        try:
            done, _ = await asyncio.wait({task}, timeout=self._stop_timeout)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=2.0)
            if task.done() and not task.cancelled() and task.exception() is not None:
                self._emit(
                    "alert.failed",
                    {"channel": "sender", "attempts": 0, "error": _describe(task.exception())},
                )
        except Exception as exc:  # stop() must not raise into the supervisor's shutdown
            self._emit(
                "alert.failed", {"channel": "sender", "attempts": 0, "error": _describe(exc)}
            )
        if self._queue:
            undelivered = len(self._queue)
            self._queue.clear()
            self._emit(
                "alert.failed",
                {
                    "channel": "queue",
                    "attempts": 0,
                    "error": f"{undelivered} alert(s) not delivered before the stop deadline",
                    "undelivered": undelivered,
                },
            )

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if not self.enabled or self._closing:
            return
        if event == "threshold.breached" and fields.get("action") != "alert":
            return  # abort rules stop the run; the run's own verdict reports them
        if event not in ALERT_EVENTS:
            return
        if event == "leak.confirmed" and fields.get("cause"):
            return  # a consequence of a leak already alerted on: one alert per cause
        payload: dict[str, Any] = {"run_id": self._run_id, "target": self._target, "event": event}
        payload.update((k, v) for k, v in fields.items() if k not in payload)
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # deque(maxlen) drops the oldest on append
        self._queue.append(payload)
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        session: aiohttp.ClientSession | None = None
        if self._cfg.webhooks:
            session = aiohttp.ClientSession(raise_for_status=False)
        try:
            while True:
                while self._queue:
                    await self._deliver(session, self._queue.popleft())
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
        finally:
            if session is not None:
                await session.close()

    async def _deliver(
        self, session: aiohttp.ClientSession | None, payload: dict[str, Any]
    ) -> None:
        body = json.dumps(payload, default=str, separators=(",", ":")).encode()
        jobs = []
        if session is not None:
            for i, hook in enumerate(self._cfg.webhooks):
                jobs.append(self._post(session, i, hook, body, payload["event"]))
        if self._cfg.command is not None:
            jobs.append(self._command(self._cfg.command, body, payload["event"]))
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, Exception):  # a bug in one channel must not end delivery
                self.failed += 1
                self._emit(
                    "alert.failed",
                    {"channel": "sender", "attempts": 0, "error": _describe(result)},
                )

    async def _post(
        self, session: aiohttp.ClientSession, index: int, hook: Webhook, body: bytes, alert: str
    ) -> None:
        channel = f"webhook[{index}]"
        headers = {"Content-Type": "application/json", **hook.headers}
        timeout = aiohttp.ClientTimeout(total=hook.timeout)
        error = "not attempted"
        attempts = 0
        for attempt in range(1, hook.retries + 2):
            attempts = attempt
            retryable = True
            try:
                async with session.post(
                    hook.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.sent += 1
                        self._emit(
                            "alert.sent", {"channel": channel, "attempts": attempt, "alert": alert}
                        )
                        return
                    error = f"HTTP {resp.status}"
                    # a client error other than throttling will not change on retry
                    retryable = resp.status >= 500 or resp.status in (408, 429)
            except TimeoutError:
                error = f"timed out after {hook.timeout:g}s"
            except Exception as exc:  # any failure is reported, never raised into the loop
                error = _describe(exc)
            if not retryable or attempt > hook.retries:
                break
            await asyncio.sleep(min(self._backoff * 2 ** (attempt - 1), _MAX_BACKOFF_S))
        self.failed += 1
        self._emit(
            "alert.failed",
            {
                "channel": channel,
                "attempts": attempts,
                "alert": alert,
                "error": self._redact(error),
            },
        )

    async def _command(self, argv: tuple[str, ...], body: bytes, alert: str) -> None:
        error: str | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own group, so a timeout kills its children too
            )
        except OSError as exc:
            error = f"cannot start: {_os_reason(exc)}"
        except Exception as exc:  # e.g. ValueError for a NUL in argv
            error = f"cannot start: {_describe(exc)}"
        else:
            try:
                async with asyncio.timeout(self._cfg.command_timeout):
                    tail, returncode = await _feed_and_wait(proc, body)
                if returncode != 0:
                    error = f"exit status {returncode}" + (f": {tail}" if tail else "")
            except TimeoutError:
                error = f"timed out after {self._cfg.command_timeout:g}s; killed"
            except Exception as exc:
                error = _describe(exc)
            finally:
                if proc.returncode is None:
                    _kill_group(proc.pid)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(proc.wait(), 2.0)
        if error is None:
            self.sent += 1
            self._emit("alert.sent", {"channel": "command", "attempts": 1, "alert": alert})
        else:
            self.failed += 1
            self._emit(
                "alert.failed",
                {"channel": "command", "attempts": 1, "alert": alert, "error": self._redact(error)},
            )

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def _emit(self, event: str, fields: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # a failing logger must not stop delivery
            self._log(event, fields)


async def _feed_and_wait(proc: asyncio.subprocess.Process, body: bytes) -> tuple[str, int]:
    """Write the payload, read stderr keeping a short tail, and wait for exit."""
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(body)
        await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command need not read its stdin
    tail = b""
    while chunk := await proc.stderr.read(4096):
        tail = (tail + chunk)[-_STDERR_TAIL * 4 :]  # bounded: a chatty command cannot grow it
    returncode = await proc.wait()
    text = tail.decode("utf-8", "replace").strip()
    last = text.splitlines()[-1] if text else ""
    return last[-_STDERR_TAIL:], returncode


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _describe(exc: BaseException | None) -> str:
    """A short error text that cannot carry a URL: aiohttp's and asyncio's messages embed the
    address (``Connect call failed ('10.0.0.1', 443)``), so only types and errno names are used."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {_os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {_os_reason(exc)}"
    return type(exc).__name__


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host name"  # its text may name the host
    return os.strerror(exc.errno) if exc.errno else type(exc).__name__


def _secrets_of(cfg: AlertsConfig) -> list[str]:
    """Strings that must never be shown, longest first so a URL goes before its path."""
    found: set[str] = set()
    for hook in cfg.webhooks:
        found.add(hook.url)
        parts = urlsplit(hook.url)
        found.update(p for p in (parts.netloc, parts.path, parts.query) if len(p) > 1)
        found.update(v for v in hook.headers.values() if len(v) >= 4)
    if cfg.command:
        found.update(arg for arg in cfg.command[1:] if len(arg) >= 8)
    return sorted(found, key=len, reverse=True)
