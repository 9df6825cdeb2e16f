"""Run the mock Brave Search API as a child process of an async parent.

This module never imports :mod:`soakd.reference.mockapi`: that one runs as ``__main__`` in the
child, and importing it here too would make ``python -m`` warn about a double import.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.abc

__all__ = ["MockApiProcess"]

_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 5.0


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The worker may trace allocations; the mock must not pay for that.
    env.pop("PYTHONTRACEMALLOC", None)
    # Make ``soakd`` importable even when the parent found it through sys.path tweaks.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


class MockApiProcess:
    """Starts the mock in a child process for the length of an ``async with`` block."""

    def __init__(
        self,
        *,
        latency_ms: float = 5.0,
        latency_jitter_ms: float = 3.0,
        error_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.latency_ms = latency_ms
        self.latency_jitter_ms = latency_jitter_ms
        self.error_rate = error_rate
        self.seed = seed
        self.port: int | None = None
        self._process: anyio.abc.Process | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("mock API is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __repr__(self) -> str:
        return (
            f"MockApiProcess(latency_ms={self.latency_ms!r}, error_rate={self.error_rate!r}, "
            f"seed={self.seed!r}, pid={self.pid!r}, port={self.port!r})"
        )

    async def start(self) -> None:
        """Spawn the server and wait, bounded, for the port it bound."""
        command = [
            sys.executable,
            "-m",
            "soakd.reference.mockapi",
            "--port=0",
            f"--latency-ms={self.latency_ms}",
            f"--latency-jitter-ms={self.latency_jitter_ms}",
            f"--error-rate={self.error_rate}",
            f"--seed={self.seed}",
            f"--parent-pid={os.getpid()}",
        ]
        # stderr is inherited so a crash of the mock shows up in the worker's log.
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, env=_child_env()
        )
        self._process = process
        try:
            self.port = await self._read_port(process)
        except BaseException:
            await self.stop()
            raise

    @staticmethod
    async def _read_port(process: anyio.abc.Process) -> int:
        assert process.stdout is not None  # opened with stdout=PIPE
        buffer = b""
        with anyio.move_on_after(_START_TIMEOUT_S) as scope:
            while b"\n" not in buffer:
                try:
                    buffer += await process.stdout.receive()
                except anyio.EndOfStream:
                    code = await process.wait()
                    raise RuntimeError(
                        f"mock API process exited with code {code} before reporting its port "
                        "(its stderr is above)"
                    ) from None
        if scope.cancelled_caught:
            raise RuntimeError(f"mock API did not report its port within {_START_TIMEOUT_S} s")
        line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
        kind, _, value = line.partition(" ")
        if kind != "PORT" or not value.isdigit():
            raise RuntimeError(f"mock API printed {line!r}, expected 'PORT <n>'")
        return int(value)

    async def stop(self) -> None:
        """SIGTERM the server, SIGKILL it if it lingers, and reap it."""
        process, self._process = self._process, None
        self.port = None
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                with anyio.move_on_after(_STOP_TIMEOUT_S):
                    await process.wait()
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            await process.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
