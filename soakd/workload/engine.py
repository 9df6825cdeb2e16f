"""The load generator: virtual users (closed model) or an arrival rate (open model) driving one
iteration function, with bounded statistics per interval and for the whole run.

Models:

- closed: ``users`` virtual users each loop *pick a query → run one iteration → think*.
- open (``rate`` set): arrivals are evenly spaced at ``1/rate`` (deterministic, so a soak is
  reproducible and a rate the target cannot sustain shows as a clean, steady miss count rather
  than Poisson noise). An arrival starts at once unless ``max_concurrency`` iterations are
  already in flight, in which case it is counted as a *missed start* and dropped — never queued,
  so an overloaded target cannot silently slow the offered load down. Arrivals whose time passed
  while the event loop was stalled are issued at once (and missed beyond the cap).

Stages run in sequence by elapsed time; each sets ``users`` or ``rate`` (a step, not a ramp) and
the last stage's level holds until the run stops. Latency is recorded for successful iterations
only (fast failures would otherwise flatter it); time to first event and to milestones is
recorded whenever the event was seen. Memory is bounded: fixed-size histograms, a capped number
of error classes and kinds, nothing kept per iteration; the counting and the dicts it is reported
in are :mod:`soakd.workload.stats`.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import sys
import time
from collections.abc import AsyncIterable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from soakd.workload.corpus import Corpus, CorpusEntry
from soakd.workload.matchers import EventMatcher, MatcherSet
from soakd.workload.settings import ThinkSpec, WorkloadSettings
from soakd.workload.spans import SpanRecorder
from soakd.workload.stats import MAX_ERROR_CLASSES, Window, interval_stats, run_totals

__all__ = [
    "MAX_ERROR_CLASSES",
    "Engine",
    "IterationFn",
    "Level",
    "classify_exception",
    "error_event_class",
    "level_at",
    "think_delay",
]

# Runs inside the target's interpreter (Python 3.10+, standard library only): plain asyncio,
# no anyio, and none of 3.11's TaskGroup, asyncio.timeout or Task.cancelling.

IterationFn = Callable[[str], Any]

_MAX_LABEL = 64
_STAGE_POLL_S = 0.1  # stage boundaries are re-checked at least this often
_ARRIVAL_BURST = 64  # arrivals issued back to back before yielding to the event loop


class StopSignal(Protocol):
    """What ends the run: an ``asyncio.Event`` (or anything awaitable the same way)."""

    async def wait(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Level:
    """The offered load at one moment: ``users`` (closed model) or ``rate`` (open model)."""

    users: int | None = None
    rate: float | None = None


def level_at(cfg: WorkloadSettings, elapsed: float) -> tuple[Level, float]:
    """The level in effect ``elapsed`` seconds into the run and seconds until it next changes."""
    if not cfg.stages:
        base = Level(rate=cfg.rate) if cfg.rate is not None else Level(users=cfg.users)
        return base, math.inf
    end = 0.0
    for stage in cfg.stages:
        end += stage.duration
        if elapsed < end:
            return Level(stage.users, stage.rate), end - elapsed
    last = cfg.stages[-1]
    return Level(last.users, last.rate), math.inf


def think_delay(think: ThinkSpec, rng: random.Random) -> float:
    """One think time in seconds: none, constant(mean), uniform(min, max), exponential(mean)
    clipped to max."""
    dist = think.distribution
    if dist == "none":
        return 0.0
    if dist == "constant":
        return think.mean
    if dist == "uniform":
        return rng.uniform(think.min, think.max)
    if think.mean <= 0:
        return 0.0
    return min(rng.expovariate(1.0 / think.mean), think.max)


def classify_exception(exc: BaseException) -> str:
    """Class name; an exception group whose leaves share one class is named by that class."""
    names: set[str] = set()
    if _leaf_names(exc, names) and len(names) == 1:
        return names.pop()
    return type(exc).__name__


def _leaf_names(exc: BaseException, out: set[str]) -> bool:
    """Collect the leaves' class names when ``exc`` is an exception group (3.11+ only)."""
    if sys.version_info < (3, 11) or not isinstance(exc, BaseExceptionGroup):
        return False
    for leaf in exc.exceptions:
        if not _leaf_names(leaf, out):
            out.add(type(leaf).__name__)
    return True


def error_event_class(event: dict[Any, Any]) -> str:
    """``error_event:<error | code | type>`` for an event that matched an error matcher."""
    for key in ("error", "code", "type"):
        value = event.get(key)
        if value is not None and value != "":
            return "error_event:" + _label(str(value))
    return "error_event"


def _label(text: str) -> str:
    text = " ".join(text.split())  # one line: labels end up in logs and metrics
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"


async def _wait_changed(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` seconds pass."""
    if event.is_set():
        return
    try:
        await asyncio.wait_for(event.wait(), max(timeout, 0.0))
    except asyncio.TimeoutError:  # noqa: UP041 (on 3.10 it is not the builtin TimeoutError)
        pass


class _Deadline:
    """An iteration's timeout: cancels the iteration's task once, and remembers it did.

    The task is the virtual user's own (no task per iteration). The cancellation can only be
    delivered at an await between :meth:`arm` and :meth:`disarm`, both in ``_iterate``, since
    the timer's callback runs only while the task is suspended there.
    """

    __slots__ = ("_handle", "_task", "expired")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self.expired = False

    def arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handle = loop.call_at(when, self._fire, task)

    def _fire(self, task: asyncio.Task[Any]) -> None:
        self.expired = True
        self._task = task
        task.cancel()

    def swallowed(self) -> None:
        """Our cancellation was caught here: on 3.11+ take it back, or the target's own
        ``asyncio.timeout`` blocks would see a cancellation request that is not theirs."""
        if sys.version_info >= (3, 11) and self._task is not None:
            self._task.uncancel()

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


class Engine:
    """Drives ``call(query)`` under the configured load and keeps bounded statistics.

    Collaborators: the :class:`~soakd.workload.settings.WorkloadSettings` (levels, stages, think
    time, timeouts, matchers), the iteration function ``call``, the :class:`Corpus` it picks queries
    from, and ``clock`` for measurements and stage timing. Statistics go to two
    :class:`~soakd.workload.stats.Window`: the current interval's and the run's totals.
    """

    _changed: asyncio.Event  # set and replaced whenever the level changes or the run stops

    def __init__(
        self,
        cfg: WorkloadSettings,
        call: IterationFn,
        corpus: Corpus,
        *,
        clock: Callable[[], float] = time.monotonic,
        spans: SpanRecorder | None = None,
    ) -> None:
        self._cfg = cfg
        self._spans = spans  # sampled iteration spans (the otel extra), else None
        self._call = call
        self._corpus = corpus
        self._clock = clock
        # Think times get their own stream so the query sequence stays the same for a seed.
        self._rng = random.Random(None if cfg.seed is None else cfg.seed ^ 0x5EED)
        self._error_matchers = MatcherSet(cfg.error_events)
        self._milestones = tuple(
            (name, EventMatcher(spec)) for name, spec in cfg.milestones.items()
        )
        self._window = Window(cfg.milestones)
        self._totals = Window(cfg.milestones)
        self._interval_start = clock()
        self._run_start: float | None = None
        self._run_end: float | None = None
        self._stopping = False
        self._in_flight = 0
        self._alive: set[int] = set()
        self._users_target = 0
        self._rate: float | None = None
        self._rate_gen = 0
        self._arrivals_running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._halt: asyncio.Event | None = None
        self._crash: BaseException | None = None
        self._cancelling = False  # the engine itself cancels its tasks (drain time is over)

    # -- public ----------------------------------------------------------------------------

    @property
    def completed(self) -> int:
        """Iterations completed so far, any outcome (cancelled ones excluded)."""
        return self._totals.iterations + self._window.iterations

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def users(self) -> int:
        """Live virtual users (closed model); 0 in the open model."""
        return len(self._alive)

    async def run(self, stop: StopSignal, drain_timeout: float) -> None:
        """Issue load until ``stop`` is set, then let in-flight iterations finish for up to
        ``drain_timeout`` seconds and cancel the rest (cancelled iterations are not errors).

        An unexpected exception in the engine's own tasks stops the run and is raised here."""
        if self._run_start is not None:
            raise RuntimeError("Engine.run() can be called only once")
        self._run_start = self._interval_start = self._clock()
        self._changed = asyncio.Event()
        self._halt = halt = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def until_stopped() -> None:
            await stop.wait()
            halt.set()

        watcher = loop.create_task(until_stopped())
        try:
            self._spawn(self._control())
            await halt.wait()
            self._stopping = True
            self._notify()
            # Everything winds down by itself (users finish their iteration, arrivals stop);
            # whatever still runs after the drain time is cancelled below.
            deadline = loop.time() + max(drain_timeout, 0.0)
            while self._tasks and self._crash is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait(set(self._tasks), timeout=remaining)
        finally:
            self._stopping = True
            self._cancelling = True
            watcher.cancel()
            pending = [*self._tasks, watcher]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._run_end = self._clock()
        if self._crash is not None:
            raise self._crash

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._crash is None:
            self._crash = exc  # a bug in the engine: the run stops and run() raises it
            if self._halt is not None:
                self._halt.set()

    def take_interval(self, *, histograms: bool = True) -> dict[str, Any]:
        """Statistics since the previous call (or the run's start), then start a new interval.

        With ``histograms``, ``latency_hist`` and ``first_event_hist`` carry the interval's
        histograms (``LatencyHistogram.to_dict()``, a few hundred bytes)."""
        now = self._clock()
        w = self._window
        out = interval_stats(
            w,
            max(now - self._interval_start, 0.0),
            in_flight=self._in_flight,
            users=len(self._alive),
            rate=self._rate,
            histograms=histograms,
        )
        self._totals.merge(w)
        w.reset()
        self._interval_start = now
        return out

    def totals(self, *, histograms: bool = False) -> dict[str, Any]:
        """Cumulative statistics for the run: the summary's ``workload`` section plus extras."""
        t = self._totals.copy()
        t.merge(self._window)
        if self._run_start is None:
            duration = 0.0
        else:
            end = self._run_end if self._run_end is not None else self._clock()
            duration = max(end - self._run_start, 0.0)
        return run_totals(t, duration, histograms=histograms)

    # -- load ------------------------------------------------------------------------------

    def _notify(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    async def _control(self) -> None:
        assert self._run_start is not None
        current: Level | None = None
        while not self._stopping:
            level, until_next = level_at(self._cfg, self._clock() - self._run_start)
            if level != current:
                current = level
                self._apply(level)
            changed = self._changed
            if math.isinf(until_next):
                await changed.wait()
            else:
                # Polled, not slept through: the clock may be a test's, not the event loop's.
                await _wait_changed(changed, min(until_next, _STAGE_POLL_S))

    def _apply(self, level: Level) -> None:
        if level.users is not None:
            self._rate = None
            self._users_target = level.users
            for uid in range(level.users):
                if uid not in self._alive:
                    self._alive.add(uid)
                    self._spawn(self._user(uid))
        else:
            self._users_target = 0
            self._rate = level.rate
            self._rate_gen += 1
            if not self._arrivals_running:
                self._arrivals_running = True
                self._spawn(self._arrivals())
        self._notify()

    def _retired(self, uid: int) -> bool:
        return self._stopping or uid >= self._users_target

    async def _user(self, uid: int) -> None:
        try:
            while not self._retired(uid):
                entry = self._corpus.pick()
                self._in_flight += 1
                try:
                    await self._iterate(entry)
                finally:
                    self._in_flight -= 1
                await self._think(uid)
        finally:
            self._alive.discard(uid)

    async def _think(self, uid: int) -> None:
        delay = think_delay(self._cfg.think_time, self._rng)
        if delay <= 0:
            # A target that never awaits would otherwise starve every other task in the worker.
            await asyncio.sleep(0)
            return
        now = asyncio.get_running_loop().time
        deadline = now() + delay
        while not self._retired(uid):
            remaining = deadline - now()
            if remaining <= 0:
                return
            await _wait_changed(self._changed, remaining)

    async def _arrivals(self) -> None:
        # Paced on the event loop's clock, the one its sleeps use; the injected clock is for
        # measurements and stage timing only.
        now = asyncio.get_running_loop().time
        try:
            gen, rate, origin, k, burst = -1, 0.0, 0.0, 0, 0
            while not self._stopping and self._rate is not None:
                if gen != self._rate_gen:
                    gen, rate, origin, k = self._rate_gen, self._rate, now(), 0
                if rate <= 0:
                    await self._changed.wait()
                    continue
                delay = origin + k / rate - now()
                if delay > 0:
                    burst = 0
                    await _wait_changed(self._changed, delay)
                    continue
                k += 1
                if self._in_flight >= self._cfg.max_concurrency:
                    self._window.missed_starts += 1
                else:
                    self._in_flight += 1  # counted now: the cap must hold before the task runs
                    self._spawn(self._open_iteration(self._corpus.pick()))
                burst += 1
                if burst >= _ARRIVAL_BURST:
                    burst = 0
                    await asyncio.sleep(0)
        finally:
            self._arrivals_running = False

    async def _open_iteration(self, entry: CorpusEntry) -> None:
        try:
            await self._iterate(entry)
        finally:
            self._in_flight -= 1

    # -- one iteration ---------------------------------------------------------------------

    async def _iterate(self, entry: CorpusEntry) -> None:
        clock = self._clock
        t0 = clock()
        first: float | None = None
        error: str | None = None
        events = 0
        hits: dict[str, float] = {}  # milestone → seconds from start to its first event
        milestones = self._milestones
        n_milestones = len(milestones)
        errors = self._error_matchers
        loop = asyncio.get_running_loop()
        timer = _Deadline()
        timer.arm(loop, loop.time() + self._cfg.timeout)
        spans = self._spans
        span = spans.begin() if spans is not None else None
        try:
            try:
                result = self._call(entry.text)
                if inspect.isawaitable(result) and not hasattr(result, "__aiter__"):
                    result = await result
                if hasattr(result, "__aiter__"):
                    iterable: AsyncIterable[Any] = result
                    iterator = iterable.__aiter__()
                    abandoned = False
                    try:
                        async for event in iterator:
                            events += 1
                            if first is None:
                                first = clock() - t0
                            if error is None and errors and errors.first(event) is not None:
                                error = error_event_class(event)
                            if len(hits) < n_milestones:
                                for name, matcher in milestones:
                                    if name not in hits and matcher(event):
                                        hits[name] = clock() - t0
                            if timer.expired:
                                # The target swallowed the timeout and keeps yielding.
                                abandoned = True
                                break
                    finally:
                        aclose = getattr(iterator, "aclose", None)
                        if abandoned and aclose is not None:
                            await aclose()
            finally:
                timer.disarm()
        except BaseException as exc:
            if self._cancelling:
                self._window.cancelled += 1
                if span is not None and spans is not None:
                    spans.discard(span)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return  # the engine's cancellation is delivered at the caller's next await
            if timer.expired and isinstance(exc, asyncio.CancelledError):
                timer.swallowed()
            if error is None:
                error = "timeout" if timer.expired else classify_exception(exc)
        else:
            if error is None and timer.expired:
                error = "timeout"
        self._window.record(entry.kind, error, clock() - t0, first, hits, events)
        if span is not None and spans is not None:
            spans.end(
                span, kind=entry.kind, error=error, first_s=first, milestones=hits, events=events
            )
