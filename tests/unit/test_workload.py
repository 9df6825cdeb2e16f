"""Workload engine, corpus and matchers, driven against small in-process async targets."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from soakd.config import Stage, WorkloadConfig
from soakd.errors import ConfigError
from soakd.workload import (
    Corpus,
    CorpusEntry,
    Engine,
    EventMatcher,
    LatencyHistogram,
    MatcherSet,
    parse_queries,
)
from soakd.workload.engine import MAX_ERROR_CLASSES, Level, level_at, think_delay
from soakd.workload.settings import ThinkSpec, WorkloadSettings

Event = dict[str, Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """A clock the test (or the target) moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def cfg(**kw: Any) -> WorkloadSettings:
    """Validated by the supervisor's model, read back as the worker does: its JSON dump."""
    kw.setdefault("think_time", {"distribution": "none"})
    return WorkloadSettings.from_json(WorkloadConfig.model_validate(kw).model_dump(mode="json"))


def corpus(*queries: str | CorpusEntry) -> Corpus:
    items = [q if isinstance(q, CorpusEntry) else CorpusEntry(q) for q in queries or ("q",)]
    return Corpus(items, seed=1)


async def drive(
    engine: Engine, until: Callable[[], bool], *, drain: float = 1.0, limit: float = 1.5
) -> None:
    """Run the engine until ``until()`` holds (polled, bounded), then stop and drain."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run, stop, drain)
        with anyio.fail_after(limit):
            while not until():
                await anyio.sleep(0.002)
        stop.set()


async def streaming(query: str) -> AsyncIterator[Event]:
    yield {"type": "status", "stage": "analysis_complete"}
    await anyio.lowlevel.checkpoint()
    yield {"type": "content", "text": query}
    yield {"type": "complete"}


# -- closed model --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_closed_model_counts_every_iteration_and_event() -> None:
    active, peak = 0, 0

    async def target(query: str) -> AsyncIterator[Event]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await anyio.lowlevel.checkpoint()
            yield {"type": "status", "stage": "analysis_complete"}
            yield {"type": "complete"}
        finally:
            active -= 1

    engine = Engine(cfg(users=3), target, corpus())
    intervals: list[dict[str, Any]] = []

    def enough() -> bool:
        if engine.completed >= 60 and len(intervals) < 2:
            intervals.append(engine.take_interval())
        return engine.completed >= 300

    await drive(engine, enough)
    intervals.append(engine.take_interval())
    totals = engine.totals()
    assert peak == 3  # exactly `users` iterations at once
    assert totals["iterations"] == engine.completed >= 300
    assert sum(i["iterations"] for i in intervals) == totals["iterations"]
    assert totals["errors"] == 0 and totals["error_rate"] == 0.0
    assert totals["events"] == 2 * totals["iterations"]
    assert totals["throughput_per_s"] > 0
    assert totals["cancelled"] == 0
    assert engine.users == 0 and engine.in_flight == 0


@pytest.mark.anyio
async def test_interval_and_totals_have_the_contract_keys() -> None:
    engine = Engine(cfg(users=1), streaming, corpus())
    await drive(engine, lambda: engine.completed >= 5)
    interval = engine.take_interval()
    assert {
        "interval_s",
        "iterations",
        "errors",
        "errors_by_class",
        "missed_starts",
        "in_flight",
        "users",
        "throughput_per_s",
        "error_rate",
        "events",
        "latency_ms",
        "first_event_ms",
        "milestones_ms",
    } <= interval.keys()
    assert set(interval["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert set(interval["milestones_ms"]) == {"first_status", "analysis_complete"}
    totals = engine.totals()
    assert {
        "iterations",
        "errors",
        "error_rate",
        "throughput_per_s",
        "latency_ms",
        "first_event_ms",
        "missed_starts",
        "errors_by_class",
        "latency_ci_ms",
        "first_event_ci_ms",
        "milestones_ms",
        "by_kind",
    } <= totals.keys()
    assert set(totals["latency_ci_ms"]) == {"p50", "p99"}
    # Interval histograms merge back into the run's exact totals (for rebuilt reports).
    assert LatencyHistogram.from_dict(interval["latency_hist"]).count == interval["iterations"]
    merged = LatencyHistogram.from_dict(interval["first_event_hist"])
    whole = LatencyHistogram.from_dict(engine.totals(histograms=True)["first_event_hist"])
    assert merged.to_dict() == whole.to_dict()
    # A second interval right away is empty and says so with zeros.
    empty = engine.take_interval()
    assert empty["iterations"] == 0
    assert empty["latency_ms"] == {"p50": 0, "p90": 0, "p99": 0, "max": 0}


def test_totals_before_run_are_zero() -> None:
    engine = Engine(cfg(), streaming, corpus())
    totals = engine.totals()
    assert totals["iterations"] == 0 and totals["throughput_per_s"] == 0.0
    assert totals["latency_ci_ms"] == {"p50": None, "p99": None}


# -- think time and stages (pure) ----------------------------------------------------------


def test_think_time_distributions() -> None:
    rng = random.Random(4)
    assert think_delay(ThinkSpec(distribution="none"), rng) == 0.0
    assert think_delay(ThinkSpec(distribution="constant", mean=0.25), rng) == 0.25
    uni = [
        think_delay(ThinkSpec(distribution="uniform", min=0.1, max=0.3), rng) for _ in range(4000)
    ]
    assert min(uni) >= 0.1 and max(uni) <= 0.3
    assert sum(uni) / len(uni) == pytest.approx(0.2, abs=0.01)
    exp = [
        think_delay(ThinkSpec(distribution="exponential", mean=0.1, max=10), rng)
        for _ in range(4000)
    ]
    assert sum(exp) / len(exp) == pytest.approx(0.1, rel=0.08)
    clipped = [
        think_delay(ThinkSpec(distribution="exponential", mean=0.1, max=0.1), rng)
        for _ in range(4000)
    ]
    assert max(clipped) == 0.1
    # P(X ≥ mean) = e^-1 ≈ 0.37 of the draws sit at the clip.
    assert sum(c == 0.1 for c in clipped) / len(clipped) == pytest.approx(0.368, abs=0.03)
    assert think_delay(ThinkSpec(distribution="exponential", mean=0.0), rng) == 0.0


def test_level_at_walks_stages_by_elapsed_time() -> None:
    staged = cfg(stages=[{"duration": 10, "users": 2}, {"duration": 5, "rate": 20.0}])
    assert level_at(staged, 0.0) == (Level(users=2), 10.0)
    assert level_at(staged, 9.5) == (Level(users=2), 0.5)
    assert level_at(staged, 10.0) == (Level(rate=20.0), 5.0)
    assert level_at(staged, 1e6) == (Level(rate=20.0), float("inf"))  # last level holds
    assert level_at(cfg(users=7), 123.0) == (Level(users=7), float("inf"))
    assert level_at(cfg(rate=3.5), 0.0) == (Level(rate=3.5), float("inf"))


@pytest.mark.anyio
async def test_stages_switch_users_and_model() -> None:
    clock = FakeClock()

    async def target(query: str) -> AsyncIterator[Event]:
        await anyio.sleep(0.001)
        yield {"type": "complete"}

    stages = [
        Stage(duration=10, users=2),
        Stage(duration=10, users=5),
        Stage(duration=10, users=1),
        Stage(duration=10, rate=500.0),
    ]
    engine = Engine(cfg(stages=stages), target, corpus(), clock=clock)
    seen: list[int] = []

    def step() -> bool:
        if not seen or seen[-1] != engine.users:
            seen.append(engine.users)
        return False

    stop = anyio.Event()

    async def wait_for(cond: Callable[[], bool]) -> None:
        with anyio.fail_after(1.5):
            while not cond():
                step()
                await anyio.sleep(0.002)
        step()

    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run, stop, 1.0)
        await wait_for(lambda: engine.users == 2)
        clock.t += 10
        await wait_for(lambda: engine.users == 5)
        clock.t += 10
        await wait_for(lambda: engine.users == 1)  # retired users leave after their iteration
        clock.t += 10
        await wait_for(lambda: engine.users == 0)
        before = engine.completed
        await wait_for(lambda: engine.completed >= before + 20)  # arrivals keep it busy
        interval = engine.take_interval()
        stop.set()
    assert 5 in seen and seen[-1] == 0
    assert interval["rate"] == 500.0 and interval["users"] == 0


# -- open model ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_open_model_counts_missed_starts_when_the_target_cannot_keep_up() -> None:
    active, peak = 0, 0

    async def slow(query: str) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await anyio.sleep(0.2)
        finally:
            active -= 1

    engine = Engine(cfg(rate=50.0, max_concurrency=2), slow, corpus())
    await drive(engine, lambda: engine.totals()["missed_starts"] >= 10)
    totals = engine.totals()
    assert peak == 2
    assert totals["missed_starts"] >= 10
    assert totals["iterations"] >= 2  # the started ones finished during the drain
    assert totals["errors"] == 0


@pytest.mark.anyio
async def test_open_model_offers_the_configured_rate() -> None:
    engine = Engine(cfg(rate=400.0), streaming, corpus())
    start = anyio.current_time()
    await drive(engine, lambda: anyio.current_time() - start >= 0.5)
    totals = engine.totals()
    offered = totals["iterations"] + totals["missed_starts"]
    # Evenly spaced arrivals with catch-up: the count follows elapsed time, not target speed.
    assert offered == pytest.approx(400.0 * totals["duration_s"], rel=0.15)


# -- outcomes ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_timeouts_are_counted_as_timeout_not_as_the_targets_timeout_error() -> None:
    calls = 0

    async def target(query: str) -> AsyncIterator[Event]:
        nonlocal calls
        calls += 1
        if calls % 2:
            await anyio.sleep(10)  # exceeds the engine's timeout
        raise TimeoutError("upstream gave up")  # the target's own timeout
        yield {}  # pragma: no cover - makes this an async generator

    engine = Engine(cfg(users=2, timeout=0.02), target, corpus())
    await drive(engine, lambda: engine.completed >= 6)
    by_class = engine.totals()["errors_by_class"]
    assert by_class["timeout"] >= 2
    assert by_class["TimeoutError"] >= 2
    assert engine.totals()["errors"] == engine.completed


@pytest.mark.anyio
async def test_a_target_that_swallows_the_timeout_is_abandoned_and_closed() -> None:
    closed = 0

    async def stubborn(query: str) -> AsyncIterator[Event]:
        nonlocal closed
        try:
            while True:
                try:
                    await anyio.sleep(1)
                except anyio.get_cancelled_exc_class():
                    pass  # misbehaves: ignores cancellation and keeps streaming
                yield {"type": "content"}
        finally:
            closed += 1

    engine = Engine(cfg(users=1, timeout=0.02), stubborn, corpus())
    await drive(engine, lambda: engine.completed >= 3)
    assert engine.totals()["errors_by_class"] == {"timeout": engine.completed}
    assert closed >= 3


@pytest.mark.anyio
async def test_error_events_are_classified_and_counted_once_per_iteration() -> None:
    n = 0

    async def target(query: str) -> AsyncIterator[Event]:
        nonlocal n
        n += 1
        yield {"type": "status", "stage": "analysis_complete"}
        if n % 4 == 1:
            yield {"type": "error", "error": "upstream_503"}
            yield {"type": "error", "error": "second error, same iteration"}
        elif n % 4 == 2:
            yield {"type": "error", "code": 42}
        elif n % 4 == 3:
            yield {"type": "error"}
        yield {"type": "complete"}

    engine = Engine(cfg(users=1), target, corpus())
    await drive(engine, lambda: engine.completed >= 40)
    totals = engine.totals()
    by_class = totals["errors_by_class"]
    assert set(by_class) == {"error_event:upstream_503", "error_event:42", "error_event:error"}
    assert totals["errors"] == sum(by_class.values())
    assert totals["error_rate"] == pytest.approx(0.75, abs=0.05)
    assert totals["latency_ms"]["p50"] >= 0  # successes still give a latency


@pytest.mark.anyio
async def test_custom_error_events_and_label_bounds() -> None:
    n = 0

    async def target(query: str) -> AsyncIterator[Any]:
        nonlocal n
        n += 1
        yield "not a dict"  # never matches
        yield {"status": "failed", "error": f"failure #{n} " + "x" * 200}

    engine = Engine(cfg(users=1, error_events=[{"status": "failed"}]), target, corpus())
    await drive(engine, lambda: engine.completed >= MAX_ERROR_CLASSES + 20)
    by_class = engine.totals()["errors_by_class"]
    assert len(by_class) == MAX_ERROR_CLASSES  # unique messages cannot grow it without bound
    assert by_class["other"] >= 20
    assert all(len(cls) <= len("error_event:") + 64 for cls in by_class)


@pytest.mark.anyio
async def test_exceptions_are_classified_and_never_stop_the_engine() -> None:
    raises: list[Callable[[], BaseException]] = [
        lambda: ValueError("bad"),
        lambda: KeyboardInterrupt(),
        lambda: SystemExit(3),
        lambda: asyncio.CancelledError(),  # raised by the target, not a cancellation of ours
        lambda: ExceptionGroup("tg", [KeyError("a"), KeyError("b")]),
        lambda: ExceptionGroup("tg", [KeyError("a"), OSError("b")]),
    ]
    n = 0

    async def target(query: str) -> AsyncIterator[Event]:
        nonlocal n
        n += 1
        yield {"type": "status"}
        raise raises[n % len(raises)]()

    engine = Engine(cfg(users=2), target, corpus())
    await drive(engine, lambda: engine.completed >= 4 * len(raises))
    assert set(engine.totals()["errors_by_class"]) == {
        "ValueError",
        "KeyboardInterrupt",
        "SystemExit",
        "CancelledError",
        "KeyError",
        "ExceptionGroup",
    }
    assert engine.totals()["cancelled"] == 0


@pytest.mark.anyio
async def test_awaitables_plain_values_and_sync_raises_are_iterations() -> None:
    n = 0

    async def coro_returning_stream(query: str) -> AsyncIterator[Event]:
        return streaming(query)

    async def coro(query: str) -> int:
        await anyio.lowlevel.checkpoint()
        return 1

    def sync_raise(query: str) -> None:
        raise RuntimeError("raised before returning anything")

    def dispatch(query: str) -> Any:
        nonlocal n
        n += 1
        return [coro_returning_stream, coro, lambda q: 42, sync_raise][n % 4](query)

    engine = Engine(cfg(users=1), dispatch, corpus())
    await drive(engine, lambda: engine.completed >= 40)
    totals = engine.totals()
    assert totals["errors_by_class"] == {"RuntimeError": totals["errors"]}
    assert totals["errors"] == pytest.approx(totals["iterations"] / 4, abs=1)
    # Only the stream yields events: 3 of them, in a quarter of the iterations.
    assert totals["events"] == pytest.approx(3 * totals["iterations"] / 4, abs=3)
    assert totals["first_event_ms"]["max"] > 0


# -- timing --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_first_event_milestones_and_latency_are_measured() -> None:
    clock = FakeClock()

    async def target(query: str) -> AsyncIterator[Event]:
        clock.t += 0.010
        yield {"type": "status", "stage": "searching"}
        clock.t += 0.030
        yield {"type": "status", "stage": "analysis_complete"}
        clock.t += 0.060
        yield {"type": "complete"}

    engine = Engine(cfg(users=1), target, corpus(), clock=clock)
    await drive(engine, lambda: engine.completed >= 20)
    totals = engine.totals()
    assert totals["first_event_ms"]["p50"] == pytest.approx(10, rel=0.01)
    assert totals["milestones_ms"]["first_status"]["p99"] == pytest.approx(10, rel=0.01)
    assert totals["milestones_ms"]["analysis_complete"]["p50"] == pytest.approx(40, rel=0.01)
    assert totals["milestones_ms"]["analysis_complete"]["count"] == totals["iterations"]
    assert totals["latency_ms"]["p99"] == pytest.approx(100, rel=0.01)
    assert totals["latency_ci_ms"]["p50"] == pytest.approx([100, 100], rel=0.01)


@pytest.mark.anyio
async def test_per_kind_stats() -> None:
    clock = FakeClock()

    async def target(query: str) -> AsyncIterator[Event]:
        clock.t += 0.005 if query.startswith("simple") else 0.050
        yield {"type": "status"}
        if query.startswith("complex"):
            yield {"type": "error", "error": "too_hard"}

    queries = corpus(
        CorpusEntry("simple query", "simple", 3.0), CorpusEntry("complex query", "complex", 1.0)
    )
    engine = Engine(cfg(users=1), target, queries, clock=clock)
    await drive(engine, lambda: engine.completed >= 200)
    by_kind = engine.totals()["by_kind"]
    simple, complex_ = by_kind["simple"], by_kind["complex"]
    assert simple["iterations"] + complex_["iterations"] == engine.completed
    assert simple["iterations"] / engine.completed == pytest.approx(0.75, abs=0.1)
    assert simple["errors"] == 0 and simple["error_rate"] == 0.0
    assert simple["latency_ms"]["p50"] == pytest.approx(5, rel=0.01)
    assert simple["first_event_ms"]["p99"] == pytest.approx(5, rel=0.01)
    assert complex_["error_rate"] == 1.0
    assert complex_["first_event_ms"]["p50"] == pytest.approx(50, rel=0.01)
    assert complex_["latency_ms"] == {"p50": 0, "p99": 0}  # no successes to measure


# -- stopping ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_drain_lets_in_flight_iterations_finish() -> None:
    started = anyio.Event()

    async def target(query: str) -> AsyncIterator[Event]:
        started.set()
        await anyio.sleep(0.1)
        yield {"type": "complete"}

    engine = Engine(cfg(users=4), target, corpus())
    await drive(engine, lambda: started.is_set() and engine.in_flight == 4, drain=1.0)
    totals = engine.totals()
    assert totals["iterations"] == 4 and totals["cancelled"] == 0 and totals["errors"] == 0


@pytest.mark.anyio
async def test_drain_timeout_cancels_without_counting_errors() -> None:
    async def target(query: str) -> AsyncIterator[Event]:
        yield {"type": "status"}
        await anyio.sleep(30)

    engine = Engine(cfg(users=3), target, corpus())
    with anyio.fail_after(1.5):
        await drive(engine, lambda: engine.in_flight == 3, drain=0.05)
    totals = engine.totals()
    assert totals["cancelled"] == 3
    assert totals["iterations"] == 0 and totals["errors"] == 0
    assert engine.in_flight == 0


@pytest.mark.anyio
async def test_stop_interrupts_think_time() -> None:
    engine = Engine(
        cfg(users=2, think_time={"distribution": "constant", "mean": 30}), streaming, corpus()
    )
    with anyio.fail_after(1.0):  # not 30 s
        await drive(engine, lambda: engine.completed >= 2, drain=5.0)
    assert engine.totals()["cancelled"] == 0


@pytest.mark.anyio
async def test_run_twice_is_refused() -> None:
    engine = Engine(cfg(users=1), streaming, corpus())
    await drive(engine, lambda: engine.completed >= 1)
    with pytest.raises(RuntimeError, match="only once"):
        await engine.run(anyio.Event(), 0.0)


# -- matchers ------------------------------------------------------------------------------


def test_matchers() -> None:
    m = EventMatcher({"type": "status", "stage": "analysis_complete"})
    assert m({"type": "status", "stage": "analysis_complete", "extra": 1})
    assert not m({"type": "status"})
    assert not m({"type": "status", "stage": "other"})
    assert not m(["type", "status"])
    assert not m(None)
    assert EventMatcher({})({"anything": 1})
    assert not EventMatcher({"ok": True})({"ok": 1})  # JSON true is not 1
    assert not EventMatcher({"code": 1})({"code": True})
    assert EventMatcher({"code": 1})({"code": 1.0})
    ms = MatcherSet([{"type": "error"}, {"code": 500}])
    assert ms.first({"code": 500}) is ms.matchers[1]
    assert ms.first({"type": "ok"}) is None
    assert ms.first("error") is None
    assert not MatcherSet([])


# -- corpus --------------------------------------------------------------------------------


def test_default_corpus_is_realistic_and_typed() -> None:
    c = Corpus.default(seed=0)
    assert len(c) >= 30
    assert set(c.kinds) == {"simple", "moderate", "complex"}
    assert any("asyncio" in e.text for e in c.entries)
    assert Corpus.from_config(cfg()).entries == c.entries


def test_queries_file_accepts_three_forms(tmp_path: Path) -> None:
    f = tmp_path / "q.txt"
    f.write_text(
        "# comment\n\n"
        "python asyncio tutorial\n"
        "complex\t2.5\tdesign a rate limiter\n"
        '{"text": "json query", "kind": "simple", "weight": 3}\n'
        '{"text": "json default"}\n',
        encoding="utf-8",
    )
    c = Corpus.from_file(f)
    assert c.entries == (
        CorpusEntry("python asyncio tutorial", "default", 1.0),
        CorpusEntry("design a rate limiter", "complex", 2.5),
        CorpusEntry("json query", "simple", 3.0),
        CorpusEntry("json default", "default", 1.0),
    )
    both = Corpus.from_config(cfg(queries=["inline"]), f)
    assert both.entries[0].text == "inline" and len(both) == 5


def test_weighted_choice_is_seeded_and_proportional() -> None:
    entries = [CorpusEntry("a", weight=1.0), CorpusEntry("b", weight=3.0)]
    c1, c2 = Corpus(entries, seed=9), Corpus(entries, seed=9)
    seq1 = [c1.pick().text for _ in range(4000)]
    assert seq1 == [c2.pick().text for _ in range(4000)]
    assert seq1.count("a") / 4000 == pytest.approx(0.25, abs=0.03)
    assert [Corpus(entries, seed=10).pick().text for _ in range(50)] != seq1[:50]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ok\nkind\t1\n", ":2: expected kind<TAB>weight<TAB>text (3 fields), got 2"),
        ("kind\tmany\ttext\n", ":1: weight must be a finite number > 0, got 'many'"),
        ("kind\t-1\ttext\n", ":1: weight must be a finite number > 0, got '-1'"),
        ("kind\tinf\ttext\n", ":1: weight must be a finite number > 0"),
        ("\t1\ttext\n", ":1: empty kind"),
        ("a\n{broken\n", ":2: not valid JSON"),
        ('{"text": ""}\n', ':1: "text" must be a non-empty string'),
        ('{"text": "q", "weight": true}\n', ":1: weight must be a finite number > 0, got True"),
        ('{"text": "q", "kindd": "x"}\n', ":1: unknown key(s) kindd; valid: text, kind, weight"),
        ("# only a comment\n\n", ": queries file holds no queries"),
    ],
)
def test_bad_queries_file_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        Corpus.from_file(f)
    assert str(err.value).startswith(str(f))
    assert message in str(err.value)


def test_unreadable_queries_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="queries file not found"):
        Corpus.from_file(tmp_path / "missing.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not UTF-8"):
        Corpus.from_file(binary)


def test_parse_queries_and_empty_corpus() -> None:
    assert parse_queries("a\n  b  \n", "<s>") == [CorpusEntry("a"), CorpusEntry("b")]
    with pytest.raises(ConfigError, match="corpus is empty"):
        Corpus([])
