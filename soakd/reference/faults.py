"""Faults injected on purpose: leaks of every kind soakd detects, errors, raises and hangs.

Each heap leak is allocated at exactly one line, :data:`HEAP_LEAK_SITE`, so a soak can be
checked for pointing at it. Leaks live in module-level containers on purpose: they outlive
the aggregator, as a real leak would. Only leaked tasks are cancelled and daemon threads are
left blocked at exit, so that the process can still exit cleanly.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "HEAP_LEAK_SITE",
    "FaultConfig",
    "FaultInjector",
    "LeakedRecord",
    "leak_heap",
    "leak_native",
    "leaks_active",
    "release_leaks",
]

_HEAP_LEAK: list[bytes] = []
_LEAKED_RECORDS: list[LeakedRecord] = []
_LEAKED_FDS: list[int] = []
_LEAKED_THREADS: list[threading.Thread] = []
_thread_release = threading.Event()


# The line after this def is the heap-leak site: keep the function body a single line.
def leak_heap(kib: int) -> None:
    _HEAP_LEAK.append(b"\xa5" * (kib * 1024))


HEAP_LEAK_SITE: tuple[str, int] = (__file__, leak_heap.__code__.co_firstlineno + 1)


class LeakedRecord:
    """A small object kept forever per query, so its type's live count grows."""

    __slots__ = ("created_at", "payload", "query")

    def __init__(self, query: str, created_at: float) -> None:
        self.query = query
        self.created_at = created_at
        self.payload = (query, created_at)


_PROT_READ_WRITE = 0x1 | 0x2
_MAP_PRIVATE_ANONYMOUS = 0x02 | 0x20
_MAP_FAILED = ctypes.c_void_p(-1).value


def _load_mmap() -> Callable[[int], int | None]:
    libc = ctypes.CDLL(None)  # the C library already loaded into this process
    mmap = libc.mmap
    mmap.restype = ctypes.c_void_p
    mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
    ]  # fmt: skip

    def call(size: int) -> int | None:
        pointer: int | None = mmap(None, size, _PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS, -1, 0)
        return None if pointer == _MAP_FAILED else pointer

    return call


_mmap = _load_mmap()


def leak_native(kib: int) -> None:
    """Map and touch ``kib`` KiB that are never unmapped: RSS grows, the Python heap does not.

    Fresh anonymous pages rather than ``malloc``: malloc may hand back memory the process already
    freed (and that is still resident), so RSS would not move in a long-lived process.
    """
    size = kib * 1024
    pointer = _mmap(size)
    if not pointer:
        raise MemoryError(f"mmap({size}) failed")
    # Touch every page, otherwise the kernel never backs them and RSS would not move.
    ctypes.memset(pointer, 0xA5, size)


def _open_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    _LEAKED_FDS.append(fd)
    return fd


def _start_thread(number: int) -> None:
    thread = threading.Thread(
        target=_thread_release.wait, name=f"soakd-leaked-thread-{number}", daemon=True
    )
    thread.start()
    _LEAKED_THREADS.append(thread)


def release_leaks() -> None:
    """Close leaked fds, unblock leaked threads and drop leaked objects (tests only)."""
    global _thread_release
    while _LEAKED_FDS:
        os.close(_LEAKED_FDS.pop())
    release, _thread_release = _thread_release, threading.Event()
    release.set()
    while _LEAKED_THREADS:
        _LEAKED_THREADS.pop().join(timeout=5.0)
    _HEAP_LEAK.clear()
    _LEAKED_RECORDS.clear()


def leaks_active(started_at: float, now: float, leak_after_s: float) -> bool:
    """Whether leaks have begun: only ``leak_after_s`` seconds after the start (late onset)."""
    return now - started_at >= leak_after_s


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Per-query faults; zero everywhere means none."""

    leak_kb: int = 0
    leak_objects: int = 0
    native_leak_kb: int = 0
    leak_fds: int = 0
    leak_threads: int = 0
    leak_tasks: int = 0
    leak_after_s: float = 0.0
    error_rate: float = 0.0
    raise_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 0.0
    extra_latency_ms: float = 0.0


async def _wait_forever(event: asyncio.Event) -> None:
    await event.wait()


class FaultInjector:
    """Applies a :class:`FaultConfig` to each query; the clock is passed in for tests."""

    def __init__(
        self,
        config: FaultConfig,
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._rng = rng
        self._clock = clock
        self._started_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._never_set: asyncio.Event | None = None
        self.leaking_queries = 0

    def start(self) -> None:
        """Mark time zero for ``leak_after_s``."""
        self._started_at = self._clock()

    def _draw(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def inject_leaks(self, query: str) -> bool:
        """Leak this query's share of every configured kind; False before the onset."""
        config = self.config
        now = self._clock()
        if self._started_at is None:
            self._started_at = now
        if not leaks_active(self._started_at, now, config.leak_after_s):
            return False
        self.leaking_queries += 1
        if config.leak_kb:
            leak_heap(config.leak_kb)
        if config.native_leak_kb:
            leak_native(config.native_leak_kb)
        for _ in range(config.leak_objects):
            _LEAKED_RECORDS.append(LeakedRecord(query, now))
        for _ in range(config.leak_fds):
            _open_fd()
        for _ in range(config.leak_threads):
            _start_thread(len(_LEAKED_THREADS))
        if config.leak_tasks:
            if self._never_set is None:
                self._never_set = asyncio.Event()
            loop = asyncio.get_running_loop()
            for _ in range(config.leak_tasks):
                name = f"soakd-leaked-task-{len(self._tasks)}"
                self._tasks.append(loop.create_task(_wait_forever(self._never_set), name=name))
        return True

    def should_error(self) -> bool:
        return self._draw(self.config.error_rate)

    def should_raise(self) -> bool:
        return self._draw(self.config.raise_rate)

    def hang_seconds(self) -> float:
        """How long this query hangs mid-stream: ``hang_s`` with probability ``hang_rate``."""
        return self.config.hang_s if self._draw(self.config.hang_rate) else 0.0

    async def aclose(self) -> None:
        """Cancel leaked tasks so the loop can close without 'Task was destroyed' warnings."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
