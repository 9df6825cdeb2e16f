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
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from soakd.config import ThinkTime, WorkloadConfig
from soakd.workload.corpus import Corpus, CorpusEntry
from soakd.workload.matchers import EventMatcher, MatcherSet
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

IterationFn = Callable[[str], Any]

_MAX_LABEL = 64
_STAGE_POLL_S = 0.1  # stage boundaries are re-checked at least this often
_ARRIVAL_BURST = 64  # arrivals issued back to back before yielding to the event loop


@dataclass(frozen=True, slots=True)
class Level:
    """The offered load at one moment: ``users`` (closed model) or ``rate`` (open model)."""

    users: int | None = None
    rate: float | None = None


def level_at(cfg: WorkloadConfig, elapsed: float) -> tuple[Level, float]:
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


def think_delay(think: ThinkTime, rng: random.Random) -> float:
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
    if isinstance(exc, BaseExceptionGroup):
        names: set[str] = set()
        _leaf_names(exc, names)
        if len(names) == 1:
            return names.pop()
    return type(exc).__name__


def _leaf_names(group: BaseExceptionGroup[BaseException], out: set[str]) -> None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            _leaf_names(exc, out)
        else:
            out.add(type(exc).__name__)


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


def _own_cancellation() -> bool:
    """True when an enclosing scope (not the target) is cancelling this task."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False
    return task is not None and task.cancelling() > 0


class Engine:
    """Drives ``call(query)`` under the configured load and keeps bounded statistics.

    Collaborators: the :class:`~soakd.config.WorkloadConfig` (levels, stages, think time,
    timeouts, matchers), the iteration function ``call``, the :class:`Corpus` it picks queries
    from, and ``clock`` for measurements and stage timing. Statistics go to two
    :class:`~soakd.workload.stats.Window`: the current interval's and the run's totals.
    """

    _changed: anyio.Event  # set and replaced whenever the level changes or the run stops

    def __init__(
        self,
        cfg: WorkloadConfig,
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

    async def run(self, stop: anyio.Event, drain_timeout: float) -> None:
        """Issue load until ``stop`` is set, then let in-flight iterations finish for up to
        ``drain_timeout`` seconds and cancel the rest (cancelled iterations are not errors)."""
        if self._run_start is not None:
            raise RuntimeError("Engine.run() can be called only once")
        self._run_start = self._interval_start = self._clock()
        self._changed = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._control, tg)
                await stop.wait()
                self._stopping = True
                self._notify()
                # Everything winds down by itself (users finish their iteration, arrivals stop);
                # the deadline cancels whatever is still running after the drain time.
                tg.cancel_scope.deadline = anyio.current_time() + max(drain_timeout, 0.0)
        finally:
            self._stopping = True
            self._run_end = self._clock()

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
        old, self._changed = self._changed, anyio.Event()
        old.set()

    async def _control(self, tg: TaskGroup) -> None:
        assert self._run_start is not None
        current: Level | None = None
        while not self._stopping:
            level, until_next = level_at(self._cfg, self._clock() - self._run_start)
            if level != current:
                current = level
                self._apply(level, tg)
            changed = self._changed
            if math.isinf(until_next):
                await changed.wait()
            else:
                # Polled, not slept through: the clock may be a test's, not the event loop's.
                with anyio.move_on_after(min(until_next, _STAGE_POLL_S)):
                    await changed.wait()

    def _apply(self, level: Level, tg: TaskGroup) -> None:
        if level.users is not None:
            self._rate = None
            self._users_target = level.users
            for uid in range(level.users):
                if uid not in self._alive:
                    self._alive.add(uid)
                    tg.start_soon(self._user, uid)
        else:
            self._users_target = 0
            self._rate = level.rate
            self._rate_gen += 1
            if not self._arrivals_running:
                self._arrivals_running = True
                tg.start_soon(self._arrivals, tg)
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
            await anyio.lowlevel.checkpoint()
            return
        deadline = anyio.current_time() + delay
        while not self._retired(uid):
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            changed = self._changed
            with anyio.move_on_after(remaining):
                await changed.wait()

    async def _arrivals(self, tg: TaskGroup) -> None:
        # Paced on the event loop's clock, the one its sleeps use; the injected clock is for
        # measurements and stage timing only.
        now = anyio.current_time
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
                    changed = self._changed
                    with anyio.move_on_after(delay):
                        await changed.wait()
                    continue
                k += 1
                if self._in_flight >= self._cfg.max_concurrency:
                    self._window.missed_starts += 1
                else:
                    self._in_flight += 1  # counted now: the cap must hold before the task runs
                    tg.start_soon(self._open_iteration, self._corpus.pick())
                burst += 1
                if burst >= _ARRIVAL_BURST:
                    burst = 0
                    await anyio.lowlevel.checkpoint()
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
        scope = anyio.CancelScope(deadline=anyio.current_time() + self._cfg.timeout)
        spans = self._spans
        span = spans.begin() if spans is not None else None
        try:
            with scope:
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
                            if scope.cancel_called:
                                # The target swallowed the timeout and keeps yielding.
                                abandoned = True
                                break
                    finally:
                        aclose = getattr(iterator, "aclose", None)
                        if abandoned and aclose is not None:
                            await aclose()
        except BaseException as exc:
            if _own_cancellation():
                self._window.cancelled += 1
                if span is not None and spans is not None:
                    spans.discard(span)
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise
                return  # the pending cancellation is delivered at the caller's next await
            if error is None:
                error = "timeout" if scope.cancel_called else classify_exception(exc)
        else:
            if error is None and scope.cancel_called:
                error = "timeout"
        self._window.record(entry.kind, error, clock() - t0, first, hits, events)
        if span is not None and spans is not None:
            spans.end(
                span, kind=entry.kind, error=error, first_s=first, milestones=hits, events=events
            )
