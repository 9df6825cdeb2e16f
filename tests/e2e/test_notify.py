"""Notifier against a real AF_UNIX datagram socket owned by the test (the service manager's role).

AF_UNIX datagrams are queued in the receiver synchronously by sendto(), so a non-blocking
receive right after an observer call shows exactly what was (or was not) sent.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from soakd.sinks.notify import (
    DEFAULT_WATCHDOG_PERIOD,
    Notifier,
    SdNotify,
    child_environment,
    format_status,
    watchdog_period,
)
from tests.conftest import soak_env, start_soakd, write_config

pytestmark = pytest.mark.anyio


class Manager:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name

    def messages(self) -> list[dict[str, str]]:
        """Every datagram queued so far, each parsed into its KEY=VALUE lines."""
        out: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return out
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            out.append(fields)

    def sent_keys(self) -> list[str]:
        return [key for message in self.messages() for key in message]


@pytest.fixture
def manager() -> Iterator[Manager]:
    """A datagram socket in the abstract namespace, as systemd may hand out."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"soakd-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        yield Manager(sock, "@" + name)
    finally:
        sock.close()


def env_for(manager: Manager, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": manager.name, **extra}


def test_sd_notify_to_a_filesystem_socket() -> None:
    # Short directory: AF_UNIX paths are limited to 108 bytes, pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="soakd-", dir="/tmp")
    try:
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        sender = SdNotify(path)
        assert sender.send("READY=1", "STATUS=hello")
        assert sock.recv(4096) == b"READY=1\nSTATUS=hello"
        sender.close()
        sock.close()
    finally:
        shutil.rmtree(directory)


def test_no_socket_is_a_silent_no_op() -> None:
    sender = SdNotify(None)
    assert not sender.enabled
    assert not sender.send("READY=1")
    assert watchdog_period({}, os.getpid()) is None


def test_a_vanished_manager_is_swallowed() -> None:
    sender = SdNotify("@soakd-test-nobody-listens-" + uuid.uuid4().hex)
    assert not sender.send("READY=1")
    assert sender.failures == 1
    sender.close()


def test_watchdog_period() -> None:
    pid = 4242
    assert watchdog_period({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "60000000"}, pid) == 30.0
    assert watchdog_period({"NOTIFY_SOCKET": "@x"}, pid) == DEFAULT_WATCHDOG_PERIOD
    # The watchdog belongs to another process (a variable leaked into a child).
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}
    assert watchdog_period(env, pid) is None
    env["WATCHDOG_PID"] = str(pid)
    assert watchdog_period(env, pid) == 30.0
    assert watchdog_period({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "0"}, pid) is None


def test_child_environment_drops_the_manager_link() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    assert child_environment(env) == {"PATH": "/bin"}


def test_format_status_is_one_short_line() -> None:
    line = format_status(3723.9, 1200, 3, 512 * 1024**2, "pass")
    assert line == (
        "elapsed 1h02m03s, 1200 iterations (3 errors), worker rss 512.0 MiB, verdict so far: pass"
    )
    assert format_status(5, None, None, None, "x\ny") == "elapsed 5s, verdict so far: x y"
    assert len(format_status(1, 1, 0, 1, "v" * 1000)) == 200


async def test_ready_status_stopping_sequence(manager: Manager) -> None:
    notifier = Notifier(env_for(manager))
    await notifier.start()
    try:
        assert manager.messages() == [{"STATUS": "starting"}]
        notifier.on_event("worker.ready", {"pid": 1})
        (ready,) = manager.messages()
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("elapsed 0s")

        notifier.on_samples(1.0, {"rss_bytes": 100 * 1024**2, "fds": 10})
        notifier.on_workload(
            12.0, {"iterations": 50, "errors": 1}, {"iterations": 500, "errors": 2}
        )
        statuses = [m["STATUS"] for m in manager.messages()]
        assert statuses[-1] == (
            "elapsed 12s, 500 iterations (2 errors), worker rss 100.0 MiB, "
            "verdict so far: not judged yet"
        )
        notifier.on_event("detection.judged", {"series": "heap", "window_s": 60.0})
        assert manager.messages()[-1]["STATUS"].endswith("verdict so far: no leak so far")

        notifier.on_event("leak.suspected", {"kind": "heap", "site": "/app/cache.py:12"})
        assert manager.messages()[-1]["STATUS"].endswith("no leak so far, 1 leak suspect(s)")
        notifier.on_event("leak.confirmed", {"kind": "heap", "site": "/app/cache.py:12"})
        assert manager.messages()[-1]["STATUS"].endswith("leak: heap at /app/cache.py:12")

        notifier.on_event("run.stopping", {"reason": "duration"})
        (stopping,) = manager.messages()
        assert stopping["STOPPING"] == "1"
        assert stopping["STATUS"].startswith("stopping (duration): elapsed 12s")
        notifier.on_event("run.finished", {"verdict": "leak", "exit_code": 3})
        assert manager.messages()[-1]["STATUS"].endswith("verdict so far: leak (finished)")
    finally:
        await notifier.stop()


async def test_status_refresh_on_samples_is_throttled(manager: Manager) -> None:
    notifier = Notifier(env_for(manager), status_interval=10.0)
    notifier.on_samples(0.0, {"rss_bytes": 1.0})
    notifier.on_samples(5.0, {"rss_bytes": 2.0})
    notifier.on_samples(10.0, {"rss_bytes": 3.0})
    statuses = [m["STATUS"] for m in manager.messages()]
    assert [s.split(", ")[1] for s in statuses] == ["worker rss 1 B", "worker rss 3 B"]
    await notifier.stop()


async def test_abort_and_target_failure_show_in_the_verdict(manager: Manager) -> None:
    notifier = Notifier(env_for(manager))
    notifier.on_event("threshold.breached", {"rule": "rss_bytes above 1e+09", "action": "alert"})
    assert manager.messages() == []  # an alert-only breach does not change the verdict
    notifier.on_event("threshold.breached", {"rule": "rss_bytes above 2e+09", "action": "abort"})
    assert manager.messages()[-1]["STATUS"].endswith("aborted by rss_bytes above 2e+09")
    notifier.on_event("target.failed", {"reason": "worker_died"})
    assert manager.messages()[-1]["STATUS"].endswith("target failed (worker_died)")
    await notifier.stop()


async def test_watchdog_pings_only_after_process_samples(manager: Manager) -> None:
    notifier = Notifier(env_for(manager, WATCHDOG_USEC="60000000"))
    assert notifier.period == 30.0
    assert not notifier.watchdog_tick()  # nothing sampled yet
    # Workload stats and heap samples come from the worker: not proof that sampling works.
    notifier.on_workload(1.0, {}, {"iterations": 1, "errors": 0})
    notifier.on_samples(1.0, {"heap_bytes": 1.0})
    manager.messages()
    assert not notifier.watchdog_tick()
    assert "WATCHDOG" not in manager.sent_keys()

    notifier.on_samples(2.0, {"rss_bytes": 1.0})
    notifier.on_samples(3.0, {"rss_bytes": 1.0})
    manager.messages()
    assert notifier.watchdog_tick()
    assert manager.messages() == [{"WATCHDOG": "1"}]
    assert not notifier.watchdog_tick()  # no new sample since the last ping
    assert manager.messages() == []
    await notifier.stop()


async def test_watchdog_loop_runs_at_half_the_interval(manager: Manager) -> None:
    # 40 ms watchdog -> a tick every 20 ms.
    notifier = Notifier(env_for(manager, WATCHDOG_USEC="40000"))
    await notifier.start()
    try:
        manager.messages()
        start = notifier.ticks
        with anyio.fail_after(5):
            while notifier.ticks < start + 3:
                notifier.tick_event.clear()
                await notifier.tick_event.wait()
        assert "WATCHDOG" not in manager.sent_keys()  # three ticks, no samples: no ping

        notifier.on_samples(1.0, {"rss_bytes": 1.0})
        with anyio.fail_after(5):
            while notifier.pings == 0:
                notifier.tick_event.clear()
                await notifier.tick_event.wait()
        assert {"WATCHDOG": "1"} in manager.messages()
    finally:
        await notifier.stop()
    assert notifier._task is None


async def test_without_notify_socket_nothing_runs() -> None:
    notifier = Notifier({})
    await notifier.start()
    notifier.on_event("worker.ready", {})
    notifier.on_samples(1.0, {"rss_bytes": 1.0})
    assert notifier._task is None
    assert not notifier.watchdog_tick()
    await notifier.stop()


async def test_observer_never_raises(manager: Manager) -> None:
    notifier = Notifier(env_for(manager))
    notifier.on_samples(1.0, {"rss_bytes": "not a number"})  # type: ignore[dict-item]
    notifier.on_workload(1.0, {}, {"iterations": object()})
    notifier.on_event("leak.confirmed", {"kind": object(), "site": None})
    await notifier.stop()


# -- end to end: the real CLI reporting to a socket the test owns -----------------------------

ECHO = '[target]\nfactory = "simple_targets:Echo"\n'


def collect_until_exit(
    proc: subprocess.Popen[str], manager: Manager, timeout: float
) -> list[tuple[float, dict[str, str]]]:
    """Every datagram with its arrival time (monotonic) until ``proc`` exits."""
    received: list[tuple[float, dict[str, str]]] = []
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"soakd still running after {timeout}s"
        ready, _, _ = select.select([manager.sock], [], [], 0.1)
        if ready:
            now = time.monotonic()
            received.extend((now, m) for m in manager.messages())
    received.extend((time.monotonic(), m) for m in manager.messages())
    return received


def first(received: list[tuple[float, dict[str, str]]], key: str) -> int:
    return next(i for i, (_, m) in enumerate(received) if key in m)


@pytest.mark.slow
def test_cli_reports_ready_status_watchdog_stopping(tmp_path: Path, manager: Manager) -> None:
    cfg = write_config(tmp_path, ECHO)
    env = soak_env(NOTIFY_SOCKET=manager.name, WATCHDOG_USEC="1000000")
    proc = start_soakd(
        "run", "-c", str(cfg), "-d", "4s", "--run-dir", str(tmp_path / "run"), env=env
    )
    try:
        received = collect_until_exit(proc, manager, 60)
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert proc.returncode == 7, stderr  # 4 s: inconclusive
    ready, stopping = first(received, "READY"), first(received, "STOPPING")
    assert received[0][1] == {"STATUS": "starting"}
    assert 0 < ready < stopping
    pings = [i for i, (_, m) in enumerate(received) if "WATCHDOG" in m]
    assert len(pings) >= 3  # a ping every 0.5 s over a 4 s soak
    statuses = [m["STATUS"] for _, m in received if "STATUS" in m]
    assert any(re.search(r"\d+ iterations.*worker rss [0-9.]+ MiB", s) for s in statuses)
    assert statuses[-1].endswith("verdict so far: inconclusive (finished)")
    assert not any(s.endswith("verdict so far: pass") for s in statuses)
    # The worker must not report to the service manager as if it were the service.
    assert all(m.get("READY") != "1" for _, m in received[ready + 1 :])


@pytest.mark.slow
def test_cli_watchdog_stops_when_sampling_stalls(tmp_path: Path, manager: Manager) -> None:
    stall_after = 3.0
    cfg = write_config(tmp_path, ECHO)
    env = soak_env(
        NOTIFY_SOCKET=manager.name,
        WATCHDOG_USEC="1000000",  # a ping chance every 0.5 s
        SOAKD_FAULT_STALL_SAMPLING_AFTER=str(stall_after),
    )
    proc = start_soakd(
        "run", "-c", str(cfg), "-d", "8s", "--run-dir", str(tmp_path / "run"),
        "--set", "sampling.job_timeout=2s", env=env,
    )  # fmt: skip
    try:
        received = collect_until_exit(proc, manager, 60)
    finally:
        proc.kill()
        proc.communicate()
    ready_at = received[first(received, "READY")][0]
    stopping_at = received[first(received, "STOPPING")][0]
    pings = [at for at, m in received if "WATCHDOG" in m]
    # The run started before READY, so sampling stalled at the latest stall_after after READY;
    # the sample taken just before can still earn one ping, one period later.
    stalled_by = ready_at + stall_after + 0.5 + 0.5
    assert [at for at in pings if at < stalled_by], "no ping while sampling worked"
    assert [at for at in pings if at > stalled_by] == []
    assert stopping_at - stalled_by > 2.0  # the soak went on without pings: systemd would act
