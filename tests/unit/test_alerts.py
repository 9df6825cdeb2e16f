"""Alert delivery against a real aiohttp server on loopback and real commands."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from soakd.config import AlertsConfig, Webhook
from soakd.sinks.alerts import AlertSender

pytestmark = pytest.mark.anyio

SECRET_PATH = "/hooks/T0KEN-in-the-path"
SECRET_TOKEN = "Bearer very-secret-token"
BREACH = {
    "rule": "fds above 1000",
    "metric": "fds",
    "value": 1200.0,
    "limit": 1000.0,
    "action": "alert",
    "at_s": 42.0,
}
LEAK = {"kind": "heap", "site": "/srv/app/cache.py:12", "slope_per_h": 1e6, "unit": "bytes"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """The sender's ``log`` callable; lets a test wait for a logged event under a deadline."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.calls.append((event, fields))
        self._changed.set()

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            f for e, f in self.calls if e == event and all(f.get(k) == v for k, v in match.items())
        ]

    async def wait(self, event: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while not (found := self.find(event, **match)):
                self._changed.clear()
                await self._changed.wait()
        return found[0]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """A real HTTP server on an ephemeral loopback port; yields the webhook URL."""
    app = web.Application()
    app.router.add_post(SECRET_PATH, handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}{SECRET_PATH}?key=query-secret"
    finally:
        await runner.cleanup()


def assert_no_secrets(recorder: Recorder, sender: AlertSender, url: str) -> None:
    shown = repr(recorder.calls) + repr(sender)
    for secret in (url, SECRET_PATH, "T0KEN", "query-secret", SECRET_TOKEN, "very-secret"):
        assert secret not in shown


async def test_webhook_receives_payload_and_headers_only_for_alerting_events() -> None:
    received: list[tuple[dict[str, Any], dict[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        received.append((await request.json(), dict(request.headers)))
        return web.Response(status=204)

    recorder = Recorder()
    async with serve(handler) as url:
        cfg = AlertsConfig(webhooks=(Webhook(url=url, headers={"Authorization": SECRET_TOKEN}),))
        sender = AlertSender(cfg, recorder, "run-1", "soakd.reference:ReferenceAggregator")
        await sender.start()
        try:
            sender.on_event("threshold.breached", {**BREACH, "action": "abort"})
            sender.on_event("leak.suspected", LEAK)
            sender.on_event("threshold.breached", BREACH)
            # A consequence of a leak already alerted on (the heap its tasks hold): no alert.
            sender.on_event("leak.confirmed", {**LEAK, "cause": {"kind": "tasks"}})
            sender.on_event("leak.confirmed", LEAK)
            await recorder.wait("alert.sent", alert="leak.confirmed")
        finally:
            await sender.stop()
    assert [body for body, _ in received] == [
        {"run_id": "run-1", "target": "soakd.reference:ReferenceAggregator",
         "event": "threshold.breached", **BREACH},
        {"run_id": "run-1", "target": "soakd.reference:ReferenceAggregator",
         "event": "leak.confirmed", **LEAK},
    ]  # fmt: skip
    headers = received[0][1]
    assert headers["Authorization"] == SECRET_TOKEN
    assert headers["Content-Type"] == "application/json"
    assert recorder.find("alert.sent", channel="webhook[0]", attempts=1)
    assert sender.sent == 2
    assert_no_secrets(recorder, sender, url)


async def test_hanging_webhook_never_delays_the_caller_and_stop_meets_its_deadline() -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response()

    recorder = Recorder()
    async with serve(handler) as url:
        try:
            cfg = AlertsConfig(webhooks=(Webhook(url=url, timeout=60),))
            sender = AlertSender(cfg, recorder, "run-1", "t", stop_timeout=0.5)
            await sender.start()
            started = time.perf_counter()
            sender.on_event("threshold.breached", BREACH)
            sender.on_event("leak.confirmed", LEAK)
            assert time.perf_counter() - started < 0.05
            with anyio.fail_after(5):
                await arrived.wait()
            started = time.perf_counter()
            await sender.stop()
            assert time.perf_counter() - started < 2.0
        finally:
            release.set()  # let the server's handler finish so cleanup is quick
    # the alert behind the hanging one was never sent, and the log says so
    [undelivered] = recorder.find("alert.failed", channel="queue")
    assert undelivered["undelivered"] == 1
    assert not recorder.find("alert.sent")


async def test_retries_server_errors_then_succeeds() -> None:
    hits: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(1)
        return web.Response(status=500 if len(hits) < 3 else 200)

    recorder = Recorder()
    async with serve(handler) as url:
        cfg = AlertsConfig(webhooks=(Webhook(url=url, retries=2),))
        sender = AlertSender(cfg, recorder, "run-1", "t", retry_backoff=0.01)
        await sender.start()
        try:
            sender.on_event("leak.confirmed", LEAK)
            sent = await recorder.wait("alert.sent")
        finally:
            await sender.stop()
    assert sent == {"channel": "webhook[0]", "attempts": 3, "alert": "leak.confirmed"}
    assert len(hits) == 3
    assert not recorder.find("alert.failed")


async def test_client_errors_are_not_retried_and_failures_hide_the_url() -> None:
    hits: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(1)
        return web.Response(status=404, text=f"no such hook {request.path_qs}")

    with socket.socket() as sock:  # a port with nothing listening: connection refused
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    refused = f"http://127.0.0.1:{closed_port}{SECRET_PATH}?key=query-secret"
    recorder = Recorder()
    async with serve(handler) as url:
        hooks = (
            Webhook(url=url, headers={"Authorization": SECRET_TOKEN}, retries=3),
            Webhook(url=refused, headers={"Authorization": SECRET_TOKEN}, retries=1),
        )
        sender = AlertSender(AlertsConfig(webhooks=hooks), recorder, "r", "t", retry_backoff=0.01)
        await sender.start()
        try:
            sender.on_event("leak.confirmed", LEAK)
            not_found = await recorder.wait("alert.failed", channel="webhook[0]")
            unreachable = await recorder.wait("alert.failed", channel="webhook[1]")
        finally:
            await sender.stop()
    assert not_found["attempts"] == 1 and not_found["error"] == "HTTP 404"
    assert len(hits) == 1
    assert unreachable["attempts"] == 2
    assert unreachable["error"].startswith("cannot connect")
    assert_no_secrets(recorder, sender, url)
    assert_no_secrets(recorder, sender, refused)
    assert str(closed_port) not in repr(recorder.calls)


async def test_command_receives_the_payload_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "alert.json"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())"
    cfg = AlertsConfig(command=(sys.executable, "-c", script, str(out)))
    recorder = Recorder()
    sender = AlertSender(cfg, recorder, "run-7", "pkg.mod:factory")
    sender.on_event("threshold.breached", BREACH)  # queued before start: still delivered
    await sender.start()
    try:
        sent = await recorder.wait("alert.sent", timeout=10)
    finally:
        await sender.stop()
    assert sent == {"channel": "command", "attempts": 1, "alert": "threshold.breached"}
    payload = json.loads(out.read_text())
    assert payload == {
        "run_id": "run-7",
        "target": "pkg.mod:factory",
        "event": "threshold.breached",
        **BREACH,
    }


async def test_command_over_its_timeout_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    cfg = AlertsConfig(command=(sys.executable, "-c", script, str(pid_file)), command_timeout=1.0)
    recorder = Recorder()
    sender = AlertSender(cfg, recorder, "r", "t")
    await sender.start()
    try:
        started = time.perf_counter()
        sender.on_event("leak.confirmed", LEAK)
        failed = await recorder.wait("alert.failed", timeout=10)
        elapsed = time.perf_counter() - started
    finally:
        await sender.stop()
    assert failed["channel"] == "command"
    assert failed["error"] == "timed out after 1s; killed"
    assert 1.0 <= elapsed < 5.0
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_failing_command_reports_its_exit_status_and_stderr() -> None:
    script = "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"
    cfg = AlertsConfig(command=(sys.executable, "-c", script))
    recorder = Recorder()
    sender = AlertSender(cfg, recorder, "r", "t")
    await sender.start()
    try:
        sender.on_event("leak.confirmed", LEAK)
        failed = await recorder.wait("alert.failed", timeout=10)
    finally:
        await sender.stop()
    assert failed["error"] == "exit status 3: boom"


async def test_full_queue_drops_the_oldest_alerts(tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    script = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + chr(10))"
    cfg = AlertsConfig(command=(sys.executable, "-c", script, str(out)))
    recorder = Recorder()
    sender = AlertSender(cfg, recorder, "r", "t", queue_size=3)
    for i in range(5):
        sender.on_event("threshold.breached", {**BREACH, "at_s": float(i)})
    assert (sender.dropped, sender.queued) == (2, 3)
    await sender.start()
    try:
        with anyio.fail_after(15):
            while sender.sent < 3:
                await recorder.wait("alert.sent")
                recorder.calls.clear()
    finally:
        await sender.stop()
    delivered = [json.loads(line)["at_s"] for line in out.read_text().splitlines()]
    assert delivered == [2.0, 3.0, 4.0]


async def test_without_channels_nothing_is_queued_or_started() -> None:
    recorder = Recorder()
    sender = AlertSender(AlertsConfig(), recorder, "r", "t")
    await sender.start()
    sender.on_event("leak.confirmed", LEAK)
    assert sender.queued == 0
    await sender.stop()
    assert recorder.calls == []
