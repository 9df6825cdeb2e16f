"""Scenario targets for the detection suite: real async targets, each with a known truth.

Every target streams events like the aggregator (``status``, ``content``, ``complete``) and churns
memory on every query (result documents, JSON), so the detector always sees a realistic, noisy
heap. The suite drives them at a fixed arrival rate (``RATE`` per second), so a per-query leak is
a known rate. A leaking line carries a ``# LEAK[name]`` marker: the suite finds the expected
``file:line`` by that marker, so the ground truth follows the code when it is edited.

Leaky targets (kinds ``heap``, ``native``, ``objects``, ``fds``, ``threads``, ``tasks``) and
leak-free targets that look like leaks (caches filling to a bound, a ring buffer, periodic flush,
a one-off load, lazy init, heavy churn, interpreter caches, resource pools that grow to a bound).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import os
import random
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

RATE = 20.0  # queries per second the suite offers (workload.rate)

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.memset.restype = ctypes.c_void_p
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


class Base:
    """Aggregator-shaped target with per-query churn; subclasses add behaviour in ``step``."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()
        self.n = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def step(self, query: str) -> None:
        """Per-query behaviour under test (leak or leak-free look-alike)."""

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        self.n += 1
        yield {"type": "status", "stage": "analysis_complete"}
        docs = [
            {"title": f"{query} #{i}", "body": "x" * self.rng.randint(50, 400), "score": i / 10}
            for i in range(10)
        ]
        self.step(query)
        await asyncio.sleep(0.003)
        yield {"type": "status", "stage": "search_complete"}
        yield {"type": "content", "text": json.dumps(docs)[:300]}
        yield {"type": "complete"}


# -- leaky -------------------------------------------------------------------------------------


class HeapLeak(Base):
    """Keeps ``size`` bytes per query (one ``bytes`` object each), optionally from ``after_s``."""

    def __init__(self, size: int = 480, after_s: float = 0.0, seed: int = 1) -> None:
        super().__init__(seed)
        self.size = size
        self.after_s = after_s
        self.kept: list[bytes] = []

    def step(self, query: str) -> None:
        if self.elapsed() >= self.after_s:
            self.kept.append(bytes(self.size))  # LEAK[heap]


class LargeObjectLeak(Base):
    """Keeps one ``size``-byte object every ``every`` queries: few blocks, many bytes."""

    def __init__(self, size: int = 10240, every: int = 20, seed: int = 1) -> None:
        super().__init__(seed)
        self.size = size
        self.every = every
        self.kept: list[bytes] = []

    def step(self, query: str) -> None:
        if self.n % self.every == 0:
            self.kept.append(os.urandom(self.size))  # LEAK[large]


class NoisyHeapLeak(Base):
    """A steady leak under heavy memory noise: a pool whose random-size slots are replaced."""

    def __init__(self, size: int = 240, slots: int = 300, max_slot: int = 32768, seed: int = 1):
        super().__init__(seed)
        self.size = size
        self.pool: list[bytes] = [b""] * slots
        self.max_slot = max_slot
        self.kept: list[bytes] = []

    def step(self, query: str) -> None:
        for _ in range(3):
            slot = self.rng.randrange(len(self.pool))
            self.pool[slot] = bytes(self.rng.randint(0, self.max_slot))
        self.kept.append(bytes(self.size))  # LEAK[noisy]


class DictLeak(Base):
    """One dict that only grows (objgraph cannot see it: no new tracked type)."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed)
        self.seen: dict[str, int] = {}

    def step(self, query: str) -> None:
        self.seen[f"{query[:40]}:{self.n}"] = self.n  # LEAK[dict]


class Record:
    """One leaked per query by :class:`ObjectLeak`."""

    def __init__(self, query: str, n: int) -> None:
        self.query = query
        self.n = n


class ObjectLeak(Base):
    """Keeps a class instance per query: the ``Record`` live count grows."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed)
        self.records: list[Record] = []

    def step(self, query: str) -> None:
        self.records.append(Record(query, self.n))  # LEAK[objects]


class NativeLeak(Base):
    """mallocs and touches ``kib`` KiB per query, never freed: RSS grows, the Python heap not."""

    def __init__(self, kib: float = 2, seed: int = 1) -> None:
        super().__init__(seed)
        self.kib = kib

    def step(self, query: str) -> None:
        size = int(self.kib * 1024)
        pointer = _libc.malloc(size)
        if pointer:
            _libc.memset(pointer, 1, size)


class FdLeak(Base):
    """Opens ``/dev/null`` every ``every`` queries and keeps it."""

    def __init__(self, every: int = 50, seed: int = 1) -> None:
        super().__init__(seed)
        self.every = every
        self.fds: list[int] = []

    def step(self, query: str) -> None:
        if self.n % self.every == 0:
            self.fds.append(os.open(os.devnull, os.O_RDONLY))


class ThreadLeak(Base):
    """Starts a thread every ``every`` queries that waits forever."""

    def __init__(self, every: int = 200, seed: int = 1) -> None:
        super().__init__(seed)
        self.every = every
        self.never = threading.Event()

    def step(self, query: str) -> None:
        if self.n % self.every == 0:
            threading.Thread(target=self.never.wait, daemon=True).start()


class TaskLeak(Base):
    """Creates an asyncio task every ``every`` queries that waits forever."""

    def __init__(self, every: int = 20, seed: int = 1) -> None:
        super().__init__(seed)
        self.every = every
        self.never = asyncio.Event()
        self.tasks: list[asyncio.Task[bool]] = []  # the loop holds tasks weakly

    def step(self, query: str) -> None:
        if self.n % self.every == 0:
            self.tasks.append(asyncio.get_running_loop().create_task(self.never.wait()))


# -- leak-free look-alikes ---------------------------------------------------------------------


class LruCache(Base):
    """An LRU cache over a large key space: fills linearly for ``capacity / RATE`` s, then holds."""

    def __init__(self, capacity: int = 2000, value_size: int = 1024, seed: int = 1) -> None:
        super().__init__(seed)
        self.capacity = capacity
        self.value_size = value_size
        self.cache: OrderedDict[int, bytes] = OrderedDict()

    def step(self, query: str) -> None:
        key = self.rng.randrange(10_000_000)
        self.cache[key] = bytes(self.value_size)
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)


class RandomKeyCache(Base):
    """An unbounded cache over a bounded key space: fills ever slower (time constant N/RATE)."""

    def __init__(self, keys: int = 2500, value_size: int = 1024, seed: int = 1) -> None:
        super().__init__(seed)
        self.keys = keys
        self.value_size = value_size
        self.cache: dict[int, bytes] = {}

    def step(self, query: str) -> None:
        key = self.rng.randrange(self.keys)
        if key not in self.cache:
            self.cache[key] = bytes(self.value_size)


class RingBuffer(Base):
    """A deque with ``maxlen``: recent results kept for debugging."""

    def __init__(self, maxlen: int = 1200, size: int = 512, seed: int = 1) -> None:
        super().__init__(seed)
        self.size = size
        self.ring: deque[bytes] = deque(maxlen=maxlen)

    def step(self, query: str) -> None:
        self.ring.append(bytes(self.size))


class PeriodicFlush(Base):
    """Buffers ``size`` bytes per query and flushes the buffer every ``period_s`` (sawtooth)."""

    def __init__(self, size: int = 512, period_s: float = 30.0, seed: int = 1) -> None:
        super().__init__(seed)
        self.size = size
        self.period_s = period_s
        self.buffer: list[bytes] = []
        self.flushed_at = 0.0

    def step(self, query: str) -> None:
        self.buffer.append(bytes(self.size))
        if self.elapsed() - self.flushed_at >= self.period_s:
            self.flushed_at = self.elapsed()
            self.buffer = []


class OneOffLoad(Base):
    """Loads a large table once, ``at_s`` into the run (after warm-up): a step, not a leak."""

    def __init__(self, at_s: float = 150.0, entries: int = 40_000, seed: int = 1) -> None:
        super().__init__(seed)
        self.at_s = at_s
        self.entries = entries
        self.table: dict[int, str] | None = None

    def step(self, query: str) -> None:
        if self.table is None and self.elapsed() >= self.at_s:
            self.table = {i: f"entry {i:08d} " * 4 for i in range(self.entries)}


class LazyInit(Base):
    """Components built on first use; rarer features are first used later in the run."""

    def __init__(self, at_s: tuple[float, ...] = (0.0, 40.0, 110.0), seed: int = 1) -> None:
        super().__init__(seed)
        self.at_s = at_s
        self.components: list[list[str]] = []

    def step(self, query: str) -> None:
        while (
            len(self.components) < len(self.at_s)
            and self.elapsed() >= self.at_s[len(self.components)]
        ):
            self.components.append(
                [f"component {len(self.components)} row {i}" for i in range(20_000)]
            )


class HeavyChurn(Base):
    """Large temporary allocations, and a pool whose slots hold random-length lists replaced at
    random: the number of live blocks wanders (±~400 blocks on a ~100 s timescale) without trend.
    """

    def __init__(self, slots: int = 4000, max_items: int = 20, seed: int = 1) -> None:
        super().__init__(seed)
        self.max_items = max_items
        # Filled at its stationary level from the start: churn, not a cache filling.
        self.pool: list[list[str]] = [self._items("init") for _ in range(slots)]

    def _items(self, query: str) -> list[str]:
        return [f"{query}:{i}" for i in range(self.rng.randint(0, self.max_items))]

    def step(self, query: str) -> None:
        temp = [bytes(self.rng.randint(100, 4000)) for _ in range(50)]
        for _ in range(2):
            self.pool[self.rng.randrange(len(self.pool))] = self._items(query)
        del temp


@functools.lru_cache(maxsize=1024)
def _normalise(key: int) -> str:
    return f"normalised:{key}:" + "n" * 200


class InterpreterCaches(Base):
    """Warms bounded interpreter and library caches: re, functools.lru_cache, sys.intern."""

    def step(self, query: str) -> None:
        k = self.rng.randrange(3000)
        re.compile(rf"(?:{k})\s+word{k % 700}\b").search(query)
        _normalise(self.rng.randrange(5000))
        import sys  # an import statement per query: the import cache

        sys.intern(f"token-{k % 500}")


class _Session:
    def __init__(self, n: int) -> None:
        self.n = n
        self.state: dict[str, Any] = {"owner": self, "seen": n}  # a cycle, as real ones are


class CyclicGarbage(Base):
    """Per-query sessions with reference cycles, kept a while in a bounded deque, then dropped.

    A dropped session survived the young collections: it is garbage in the oldest generation,
    freed only by a full collection. Beside a large long-lived heap those are rare (pending
    objects must reach a quarter of it), so gc-tracked counts rise for many minutes: not a leak.
    """

    def __init__(self, long_lived: int = 400_000, recent: int = 500, seed: int = 1) -> None:
        super().__init__(seed)
        self.heap = [{"row": [i]} for i in range(long_lived // 2)]  # dict + list each
        self.recent: deque[_Session] = deque(maxlen=recent)

    def step(self, query: str) -> None:
        self.recent.append(_Session(self.n))


class BoundedPools(Base):
    """Resource pools that grow with load to a bound: fds, threads, tasks (not leaks)."""

    def __init__(self, max_fds: int = 30, max_threads: int = 8, max_tasks: int = 40, seed: int = 1):
        super().__init__(seed)
        self.max_fds, self.max_threads, self.max_tasks = max_fds, max_threads, max_tasks
        self.fds: list[int] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.tasks: list[asyncio.Task[bool]] = []
        self.never = asyncio.Event()

    def step(self, query: str) -> None:
        # Grows one resource every few seconds until each pool is full (about 2-3 minutes).
        if self.n % 60 == 0 and len(self.fds) < self.max_fds:
            self.fds.append(os.open(os.devnull, os.O_RDONLY))
        if self.n % 300 == 0 and len(self.threads) < self.max_threads:
            thread = threading.Thread(target=self.stop.wait, daemon=True)
            thread.start()
            self.threads.append(thread)
        if self.n % 50 == 0 and len(self.tasks) < self.max_tasks:
            self.tasks.append(asyncio.get_running_loop().create_task(self.never.wait()))
