"""Shared helpers: run the real CLI in a subprocess, write configs, poll with deadlines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from soakd.testing.profile import FAST

ROOT = Path(__file__).resolve().parent.parent
TARGETS = str(Path(__file__).resolve().parent / "targets")


def soakd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "soakd", *args]


def soak_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), TARGETS, env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run_soakd(
    *args: str, cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        soakd_cmd(*args), cwd=cwd, env=env or soak_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def start_soakd(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        soakd_cmd(*args), cwd=cwd, env=env or soak_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def soak_until(
    *args: str,
    until: Callable[[list[dict[str, Any]]], Any],
    timeout: float,
    cwd: Path,
    run_dir: Path,
) -> subprocess.CompletedProcess[str]:
    """Run ``soakd run ARGS`` until ``until(events)`` holds, then SIGTERM it and wait.

    For tests that wait on a detection: the run's ``-d`` is only a ceiling, so a loaded machine
    makes the test slower, never wrong. A stopped run exits with its verdict so far.
    """
    return stop_when(start_soakd(*args, cwd=cwd), until, timeout, run_dir)


def stop_when(
    proc: subprocess.Popen[str],
    until: Callable[[list[dict[str, Any]]], Any],
    timeout: float,
    run_dir: Path,
) -> subprocess.CompletedProcess[str]:
    """Poll ``run_dir``'s events until ``until(events)`` holds (bounded), then SIGTERM ``proc``
    (a started ``soakd run``) and wait for it."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if until(events(run_dir)):
                break
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def write_config(directory: Path, body: str, fast: bool = True) -> Path:
    path = directory / "soakd.toml"
    path.write_text((FAST if fast else "") + "\n" + body, encoding="utf-8")
    return path


def events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now
    return out


def event_names(run_dir: Path) -> list[str]:
    return [e["event"] for e in events(run_dir)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "run"
