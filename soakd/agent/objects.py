"""Live object counts per type (gc-tracked objects) and asyncio tasks.

Only objects the garbage collector tracks are seen (containers and instances of most classes);
``str``/``bytes``/``int`` and other atoms are not, which is why allocation sites exist too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import tracemalloc
from collections import Counter
from typing import Any

__all__ = ["TypeCounter", "count_tasks", "count_tasks_any_thread", "type_name"]

_GROWERS = 10


def type_name(cls: type) -> str:
    """``dict`` for builtins, ``package.module.Class`` for everything else."""
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", None) or cls.__name__
    if module in (None, "builtins"):
        return str(qualname)
    return f"{module}.{qualname}"


class TypeCounter:
    """Top live counts by type, stable across calls so that each type's series is continuous.

    Each call reports the ``max_types`` most numerous types, the types that grew most since
    the previous call (a leak of a rare class shows up before it is numerous), and every type
    reported before that is still alive — capped at 2 × ``max_types`` + the growers.
    """

    def __init__(self, max_types: int = 50) -> None:
        self.max_types = max_types
        self._previous: dict[str, int] = {}
        self._followed: set[str] = set()

    def sample(self) -> dict[str, int]:
        counts = self._count()
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        chosen = {name for name, _ in ranked[: self.max_types]}
        if self._previous:
            growth = sorted(
                ((n - self._previous.get(name, 0), name) for name, n in counts.items()),
                reverse=True,
            )
            chosen.update(name for delta, name in growth[:_GROWERS] if delta > 0)
        followed = [name for name in self._followed if name in counts]
        if len(followed) > 2 * self.max_types:
            followed.sort(key=lambda name: -counts[name])
            followed = followed[: 2 * self.max_types]
        chosen.update(followed)
        self._followed = chosen
        self._previous = counts
        return {name: counts[name] for name in sorted(chosen, key=lambda n: -counts[n])}

    @staticmethod
    def _count() -> dict[str, int]:
        objects = gc.get_objects()
        try:
            if tracemalloc.is_tracing():
                by_type = _count_traced(objects)
            else:
                # Counter over map() counts in C: ~50 ms at 1M objects.
                by_type = Counter(map(type, objects))
        finally:
            del objects
        counts: dict[str, int] = {}
        for cls, n in by_type.items():
            name = type_name(cls)
            counts[name] = counts.get(name, 0) + n  # same name in two places: one series
        return counts


def _count_traced(objects: list[Any]) -> dict[type, int]:
    # Under tracemalloc every new int above 256 is a traced allocation (~1 µs each), so
    # Counter's increments would cost seconds: bucket into lists and take their lengths.
    buckets: dict[type, list[Any]] = {}
    get = buckets.get
    for obj in objects:
        cls = type(obj)
        bucket = get(cls)
        if bucket is None:
            buckets[cls] = [obj]
        else:
            bucket.append(obj)
    return {cls: len(bucket) for cls, bucket in buckets.items()}


def count_tasks() -> int:
    """Unfinished tasks of the running loop; call on the loop's thread (0 without a loop)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return count_tasks_any_thread()


def count_tasks_any_thread(timeout: float = 1.0) -> int:
    """Unfinished tasks of every running loop, from any thread.

    asyncio keeps tasks in a module-level WeakSet but offers no public way to find another
    thread's loop. The loops are found through their tasks (a loop with no task counts 0);
    each running loop counts its own tasks on its thread via ``call_soon_threadsafe``. A loop
    that does not answer within ``timeout`` (blocked) is counted from the WeakSet instead,
    which may be off by tasks finishing at that moment.
    """
    tasks = _all_tasks_snapshot()
    loops: dict[int, asyncio.AbstractEventLoop] = {}
    for task in tasks:
        loop = task.get_loop()
        loops[id(loop)] = loop
    total = 0
    for loop in loops.values():
        mine = [t for t in tasks if t.get_loop() is loop and not t.done()]
        if not loop.is_running() or _loop_thread_is_current(loop):
            total += len(mine)
            continue
        answer: concurrent.futures.Future[int] = concurrent.futures.Future()

        def count(answer: concurrent.futures.Future[int] = answer) -> None:
            if not answer.done():
                answer.set_result(len(asyncio.all_tasks()))

        try:
            loop.call_soon_threadsafe(count)
            total += answer.result(timeout=timeout)
        except (RuntimeError, concurrent.futures.TimeoutError):
            answer.cancel()
            total += len(mine)
    return total


def _loop_thread_is_current(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _all_tasks_snapshot() -> list[asyncio.Task[Any]]:
    # 3.11 keeps every task in ``_all_tasks``; 3.12+ splits them into scheduled and eager.
    names = ("_all_tasks", "_scheduled_tasks", "_eager_tasks")
    registries = [r for r in (getattr(asyncio.tasks, n, None) for n in names) if r is not None]
    out: list[asyncio.Task[Any]] = []
    for registry in registries:
        # Another thread may add tasks while we copy; a WeakSet then raises: retry a few times.
        for _ in range(10):
            try:
                out.extend(list(registry))
                break
            except RuntimeError:
                continue
    return out
