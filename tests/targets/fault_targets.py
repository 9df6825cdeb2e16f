"""Targets that misbehave on purpose: crash, exhaust memory or fds, flood output, fork, hang.

Each is a legitimate soakd target (factory + ``process_query``); soakd must survive all of them.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

_HOARD: list[bytearray] = []
_FILES: list[Any] = []


class _Counting:
    """Behaves like the aggregator until ``after_s`` seconds after its first iteration."""

    def __init__(self, after_s: float = 0.0) -> None:
        self.after_s = after_s
        self.first: float | None = None

    def _misbehave(self) -> bool:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        return now - self.first >= self.after_s

    async def _ok(self, query: str) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "status", "stage": "analysis_complete"}
        await asyncio.sleep(0.002)
        yield {"type": "content", "text": query}
        yield {"type": "complete"}


class Segfaults(_Counting):
    """Reads address 0 after ``after_s`` seconds: the worker dies by SIGSEGV."""

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        if self._misbehave():
            ctypes.string_at(0)
        async for event in self._ok(query):
            yield event


class Hog(_Counting):
    """Keeps ``mb`` MiB per iteration after ``after_s`` seconds: exhausts RLIMIT_AS."""

    def __init__(self, mb: int = 64, after_s: float = 0.0) -> None:
        super().__init__(after_s)
        self.mb = mb

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        if self._misbehave():
            _HOARD.append(bytearray(self.mb * 1024 * 1024))  # touched: real RSS, not just VMS
        async for event in self._ok(query):
            yield event


class FdLeaker(_Counting):
    """Lowers its own RLIMIT_NOFILE to ``limit`` and keeps one open file per iteration."""

    def __init__(self, limit: int = 96) -> None:
        super().__init__()
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        _FILES.append(open(os.devnull, "rb"))  # noqa: SIM115 - the leak, on purpose
        async for event in self._ok(query):
            yield event


class Flooder(_Counting):
    """Writes ``kb`` KiB to stdout and to stderr per iteration, with no newlines, some not UTF-8."""

    def __init__(self, kb: int = 16) -> None:
        super().__init__()
        self.chunk = (b"\xff\xfe-no-newline-" * 64)[:1024] * kb

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        sys.stdout.buffer.write(self.chunk)
        sys.stdout.buffer.flush()
        sys.stderr.buffer.write(self.chunk)
        sys.stderr.buffer.flush()
        async for event in self._ok(query):
            yield event


class Forker(_Counting):
    """Starts long-lived children (one with its own grandchild); writes their pids to ``pidfile``.

    The children stay in the worker's session and inherit its stdout, as a target's helpers
    normally do; soakd must take them all down at the end of the run. With ``crash_after_s``
    the worker itself then dies by SIGSEGV while its children live on.
    """

    def __init__(
        self, pidfile: str, per_iteration: int = 2, crash_after_s: float = float("inf")
    ) -> None:
        super().__init__(crash_after_s)
        self.pidfile = Path(pidfile)
        self.per_iteration = per_iteration
        self.procs: list[subprocess.Popen[bytes]] = []
        # a shell whose own child sleeps: the grandchild is reparented when the shell is killed
        self._spawn(["/bin/sh", "-c", f"sleep 600 & echo $! >> {self.pidfile}; wait"])

    def _spawn(self, argv: list[str]) -> None:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        with self.pidfile.open("a", encoding="ascii") as fh:
            fh.write(f"{proc.pid}\n")

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        if len(self.procs) < 1 + self.per_iteration:
            self._spawn(["sleep", "600"])
        elif self._misbehave():
            ctypes.string_at(0)
        async for event in self._ok(query):
            yield event


class BlocksLoop(_Counting):
    """After ``after_s`` seconds, blocks the worker's event loop for ``seconds`` (no await)."""

    def __init__(self, after_s: float = 1.5, seconds: float = 3600.0) -> None:
        super().__init__(after_s)
        self.seconds = seconds

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        if self._misbehave():
            time.sleep(self.seconds)  # a sync call in async code: the classic stall
        async for event in self._ok(query):
            yield event


class SlowTail(_Counting):
    """After ``after_s`` seconds every iteration takes ``seconds``: in flight at stop."""

    def __init__(self, seconds: float = 30.0, after_s: float = 1.0) -> None:
        super().__init__(after_s)
        self.seconds = seconds

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "status", "stage": "analysis_complete"}
        await asyncio.sleep(self.seconds if self._misbehave() else 0.002)
        yield {"type": "complete"}


class FailsToEnter:
    """An async context manager whose ``__aenter__`` raises (a server that cannot start)."""

    async def __aenter__(self) -> FailsToEnter:
        raise ConnectionRefusedError("backend at 127.0.0.1:9 refused the connection")

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def process_query(self, query: str) -> None:
        return None


async def async_factory_raises() -> None:
    await asyncio.sleep(0)
    raise LookupError("async factory found no backend")
