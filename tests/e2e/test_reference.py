"""The bundled reference aggregator: real HTTP on loopback, real processes, measured faults."""

from __future__ import annotations

import asyncio
import gc
import linecache
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import aiohttp
import anyio
import objgraph
import psutil
import pytest
from aiohttp import web

from soakd.reference import HEAP_LEAK_SITE, LeakedRecord, ReferenceAggregator
from soakd.reference import faults as faults_module
from soakd.reference.analyzer import QueryComplexity, analyze_query
from soakd.reference.client import (
    BraveSearchClient,
    SearchError,
    SearchResult,
    backoff_s,
    parse_search_response,
)
from soakd.reference.faults import FaultConfig, FaultInjector, leaks_active
from soakd.reference.launcher import MockApiProcess
from soakd.reference.mockapi import MockApiConfig, build_app, build_payload
from soakd.reference.synthesizer import dedupe_results, normalize_url, rank_results

Event = dict[str, Any]
API_KEY = "sk-test-0123456789abcdef"
DEADLINE_S = 20.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _release_leaks() -> Iterator[None]:
    # Leaks are module-level by design; give every test a clean slate.
    yield
    faults_module.release_leaks()


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    """One mock API process shared by the fault tests (started the way users would)."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "soakd.reference.mockapi"),
            *("--port=0", "--latency-ms=1", "--latency-jitter-ms=0.5", "--seed=7"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        ready, _, _ = select.select([process.stdout], [], [], DEADLINE_S)
        assert ready, "mock API did not report its port"
        line = process.stdout.readline().split()
        assert line[0] == "PORT"
        yield f"http://127.0.0.1:{int(line[1])}"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0  # graceful SIGTERM handling exits cleanly
        process.stdout.close()


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BRAVE_API_KEY", API_KEY)
    return API_KEY


async def collect(aggregator: ReferenceAggregator, query: str) -> list[Event]:
    return [event async for event in aggregator.process_query(query)]


async def run_queries(aggregator: ReferenceAggregator, count: int) -> list[list[Event]]:
    return [await collect(aggregator, f"python asyncio memory leak {n}") for n in range(count)]


# --- pure parts -----------------------------------------------------------------------------


def test_analyzer_classifies_complexity_and_intent() -> None:
    simple = analyze_query("python asyncio")
    assert simple.complexity is QueryComplexity.SIMPLE
    assert simple.keywords == ("python", "asyncio")
    moderate = analyze_query("how to find memory leaks in python")
    assert moderate.complexity is QueryComplexity.MODERATE
    assert moderate.intent == "how_to"
    complex_ = analyze_query('"memory leak" asyncio site:github.com -java OR rust')
    assert complex_.complexity is QueryComplexity.COMPLEX
    assert complex_.intent == "navigational"
    assert {"phrase", "site", "exclude", "OR"} <= set(complex_.operators)
    assert "java" not in complex_.keywords
    assert analyze_query("asyncio vs trio").intent == "comparison"
    assert analyze_query("what is a memory leak").intent == "definition"
    assert analyze_query("why does rss grow?").intent == "question"


def test_synthesizer_dedupes_by_url_and_title_and_ranks_by_overlap() -> None:
    results = [
        SearchResult("Cooking pasta", "https://food.example/pasta", "boil water"),
        SearchResult("Asyncio memory leaks", "https://www.a.example/leaks/", "asyncio leak"),
        SearchResult("Other", "http://a.example/leaks#frag", "same page as above"),
        SearchResult("asyncio  MEMORY leaks", "https://b.example/x", "same title as above"),
        SearchResult("Memory", "https://c.example/m", "asyncio tasks and memory"),
    ]
    assert normalize_url("https://www.A.example/leaks/") == normalize_url("http://a.example/leaks")
    assert [r.url for r in dedupe_results(results)] == [
        "https://food.example/pasta",
        "https://www.a.example/leaks/",
        "https://c.example/m",
    ]
    ranked = rank_results(analyze_query("asyncio memory leaks"), results)
    assert [r.url for r in ranked] == [
        "https://www.a.example/leaks/",
        "https://c.example/m",
        "https://food.example/pasta",
    ]


def test_parse_response_skips_partial_entries_and_tolerates_missing_web() -> None:
    payload = build_payload("asyncio leak", 6, seed=3)
    assert payload == build_payload("asyncio leak", 6, seed=3)  # deterministic per seed
    payload["web"]["results"].append({"title": "no url"})
    parsed = parse_search_response("asyncio leak", payload, attempts=2)
    assert len(parsed.results) == 6 and parsed.attempts == 2
    assert all(r.url.startswith("https://") for r in parsed.results)
    assert parse_search_response("q", {"type": "search"}, attempts=1).results == ()
    with pytest.raises(SearchError) as caught:
        parse_search_response("q", [1, 2], attempts=1)
    assert caught.value.code == "search_bad_response"


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert backoff_s(30) == 1.0


def test_leak_onset_is_a_pure_function_of_time() -> None:
    assert not leaks_active(started_at=100.0, now=104.9, leak_after_s=5.0)
    assert leaks_active(started_at=100.0, now=105.0, leak_after_s=5.0)
    assert leaks_active(started_at=100.0, now=100.0, leak_after_s=0.0)

    now = [1000.0]
    injector = FaultInjector(
        FaultConfig(leak_objects=3, leak_after_s=60.0),
        rng=random.Random(1),
        clock=lambda: now[0],
    )
    injector.start()
    before = objgraph.count("LeakedRecord")
    now[0] = 1059.0
    assert injector.inject_leaks("q") is False
    assert objgraph.count("LeakedRecord") == before
    now[0] = 1060.0
    assert injector.inject_leaks("q") is True
    assert objgraph.count("LeakedRecord") == before + 3


def test_heap_leak_site_is_the_append_line() -> None:
    path, line = HEAP_LEAK_SITE
    assert path == faults_module.__file__
    assert "_HEAP_LEAK.append(" in linecache.getline(path, line)


def test_unknown_and_invalid_options_are_named() -> None:
    with pytest.raises(TypeError) as unknown:
        ReferenceAggregator(leak_kbs=4)
    message = str(unknown.value)
    assert "'leak_kbs'" in message and "did you mean 'leak_kb'" in message
    assert "leak_fds" in message and "native_leak_kb" in message  # lists the valid ones
    with pytest.raises(ValueError, match=r"error_rate=1\.5"):
        ReferenceAggregator(error_rate=1.5)
    with pytest.raises(ValueError, match=r"leak_kb='8'"):
        ReferenceAggregator(leak_kb="8")


def test_base_url_needs_the_key_and_excludes_mock_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_BRAVE_KEY", raising=False)
    with pytest.raises(ValueError, match="MY_BRAVE_KEY"):
        ReferenceAggregator(base_url="https://api.search.brave.com", api_key_env="MY_BRAVE_KEY")
    monkeypatch.setenv("MY_BRAVE_KEY", API_KEY)
    with pytest.raises(ValueError, match="mock_error_rate"):
        ReferenceAggregator(
            base_url="https://api.search.brave.com", api_key_env="MY_BRAVE_KEY", mock_error_rate=0.5
        )


def test_api_key_never_in_repr_or_str(api_key: str) -> None:
    aggregator = ReferenceAggregator(base_url="https://api.search.brave.com", seed=1)
    client = BraveSearchClient("https://api.search.brave.com", api_key)
    for text in (repr(aggregator), str(aggregator), repr(client), str(client), repr(vars(client))):
        assert api_key not in text
    assert "***" in repr(client)


# --- real HTTP, in-process server -------------------------------------------------------------


@pytest.mark.anyio
async def test_client_retries_timeouts_then_gives_up() -> None:
    runner = web.AppRunner(build_app(MockApiConfig(latency_ms=400, latency_jitter_ms=0)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        started = time.monotonic()
        async with BraveSearchClient(
            f"http://127.0.0.1:{port}", API_KEY, timeout_s=0.1, retries=1
        ) as client:
            with pytest.raises(SearchError) as caught:
                await client.search("slow query", 5)
        assert caught.value.code == "search_timeout"
        assert caught.value.attempts == 2
        assert time.monotonic() - started < 1.5
    finally:
        await runner.cleanup()


# --- real mock process, shared ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.anyio
async def test_mock_api_rejects_bad_requests(mock_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{mock_url}/res/v1/web/search"
        async with session.get(url, params={"q": "x"}) as response:
            assert response.status == 401
        headers = {"X-Subscription-Token": "t"}
        async with session.get(url, params={"q": " "}, headers=headers) as response:
            assert response.status == 422
        async with session.get(url, params={"q": "x", "count": "21"}, headers=headers) as response:
            assert response.status == 422
        async with session.get(url, params={"q": "x", "count": "3"}, headers=headers) as response:
            body = await response.json()
            assert [r["url"] for r in body["web"]["results"]] == [
                r["url"] for r in build_payload("x", 3, seed=7)["web"]["results"]
            ]


@pytest.mark.slow
@pytest.mark.anyio
async def test_streams_status_content_complete_first_status_before_io(
    mock_url: str, api_key: str
) -> None:
    async with ReferenceAggregator(base_url=mock_url, extra_latency_ms=300, seed=1) as aggregator:
        started = time.monotonic()
        times: list[float] = []
        events: list[Event] = []
        async for event in aggregator.process_query("how to find memory leaks in asyncio"):
            times.append(time.monotonic() - started)
            events.append(event)
    # The search waits 300 ms; the first status must not.
    assert times[0] < 0.1 <= 0.3 <= times[1]
    assert events[0]["stage"] == "analysis_complete" and events[0]["intent"] == "how_to"
    assert events[1] == {"type": "status", "stage": "search_complete", "results": 10, "attempts": 1}
    contents = [e for e in events if e["type"] == "content"]
    assert len(contents) >= 3 and all(isinstance(e["text"], str) for e in contents)
    assert "<strong>" not in "".join(e["text"] for e in contents)
    assert events[-1]["type"] == "complete" and events[-1]["chunks"] == len(contents)


@pytest.mark.slow
@pytest.mark.anyio
async def test_leak_kb_grows_the_heap_at_the_known_line(mock_url: str, api_key: str) -> None:
    tracemalloc.start(1)
    try:
        async with ReferenceAggregator(base_url=mock_url, leak_kb=8, seed=1) as aggregator:
            await run_queries(aggregator, 2)  # warm the pool and caches
            only_faults = [tracemalloc.Filter(True, faults_module.__file__)]
            before = tracemalloc.take_snapshot().filter_traces(only_faults)
            await run_queries(aggregator, 20)
            after = tracemalloc.take_snapshot().filter_traces(only_faults)
    finally:
        tracemalloc.stop()
    top = after.compare_to(before, "lineno")[0]
    assert (top.traceback[0].filename, top.traceback[0].lineno) == HEAP_LEAK_SITE
    assert top.size_diff >= 150 * 1024
    assert top.count_diff == 20


@pytest.mark.slow
@pytest.mark.anyio
async def test_native_leak_grows_rss_not_the_python_heap(mock_url: str, api_key: str) -> None:
    process = psutil.Process()
    async with ReferenceAggregator(base_url=mock_url, native_leak_kb=512, seed=1) as aggregator:
        await run_queries(aggregator, 3)
        gc.collect()
        # USS walks smaps: exact, unlike statm's RSS, which the kernel updates lazily per thread
        rss_before, blocks_before = process.memory_full_info().uss, sys.getallocatedblocks()
        await run_queries(aggregator, 10)
        gc.collect()
        rss_after, blocks_after = process.memory_full_info().uss, sys.getallocatedblocks()
    expected = 10 * 512 * 1024
    assert 0.9 * expected <= rss_after - rss_before <= 1.5 * expected
    # 5 MiB as Python objects would show; native memory adds no Python blocks.
    assert blocks_after - blocks_before < 500


@pytest.mark.slow
@pytest.mark.anyio
async def test_leak_fds_threads_tasks_objects_grow_by_n_per_query(
    mock_url: str, api_key: str
) -> None:
    process = psutil.Process()

    def counts() -> tuple[int, int, int, int]:
        return (
            process.num_fds(),
            threading.active_count(),
            len(asyncio.all_tasks()),
            objgraph.count("LeakedRecord"),
        )

    options = {"leak_fds": 2, "leak_threads": 3, "leak_tasks": 4, "leak_objects": 5}
    async with ReferenceAggregator(base_url=mock_url, seed=1, **options) as aggregator:
        await run_queries(aggregator, 2)
        before = counts()
        await run_queries(aggregator, 6)
        after = counts()
        leaked_tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("soakd-leaked")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [12, 18, 24, 30]
    assert all(isinstance(r, LeakedRecord) for r in objgraph.by_type("LeakedRecord"))
    # Tasks are cancelled at exit so the loop closes cleanly; the other leaks stay.
    assert all(task.cancelled() for task in leaked_tasks) and len(leaked_tasks) == 32
    assert process.num_fds() >= after[0] - 2  # the HTTP connection closed, not the leaked fds
    assert threading.active_count() >= after[1]


@pytest.mark.slow
@pytest.mark.anyio
async def test_leak_after_s_delays_the_onset(mock_url: str, api_key: str) -> None:
    before = objgraph.count("LeakedRecord")
    async with ReferenceAggregator(
        base_url=mock_url, leak_objects=5, leak_after_s=3600, seed=1
    ) as aggregator:
        await run_queries(aggregator, 4)
        assert aggregator.faults.leaking_queries == 0
    assert objgraph.count("LeakedRecord") == before


@pytest.mark.slow
@pytest.mark.anyio
async def test_error_rate_and_raise_rate(mock_url: str, api_key: str) -> None:
    async with ReferenceAggregator(base_url=mock_url, error_rate=1.0, seed=1) as aggregator:
        for events in await run_queries(aggregator, 5):
            assert events[-1]["type"] == "error" and events[-1]["error"] == "injected_error"
            assert not any(e["type"] == "complete" for e in events)
    async with ReferenceAggregator(base_url=mock_url, raise_rate=1.0, seed=1) as aggregator:
        for _ in range(3):
            with pytest.raises(RuntimeError, match="injected"):
                await collect(aggregator, "query")
    async with ReferenceAggregator(base_url=mock_url, error_rate=0.5, seed=3) as aggregator:
        outcomes = [events[-1]["type"] for events in await run_queries(aggregator, 40)]
    assert 8 <= outcomes.count("error") <= 32 and outcomes.count("complete") == 40 - outcomes.count(
        "error"
    )


@pytest.mark.slow
@pytest.mark.anyio
async def test_hang_pauses_mid_stream_and_is_cancellable(mock_url: str, api_key: str) -> None:
    async with ReferenceAggregator(base_url=mock_url, hang_rate=1.0, hang_s=0.25) as aggregator:
        stamps: list[tuple[str, float]] = []
        async for event in aggregator.process_query("hang here"):
            stamps.append((str(event.get("stage", event["type"])), time.monotonic()))
        stages = [s for s, _ in stamps]
        gap = stamps[2][1] - stamps[1][1]
        assert stages[:3] == ["analysis_complete", "search_complete", "content"]
        assert gap >= 0.25
    async with ReferenceAggregator(base_url=mock_url, hang_rate=1.0, hang_s=60) as aggregator:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):
                await collect(aggregator, "hang forever")
        assert time.monotonic() - started < 2.0


# --- real mock process started by the aggregator ----------------------------------------------


async def _mock_stats(base_url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/_mock/stats") as response,
    ):
        stats: dict[str, Any] = await response.json()
        return stats


@pytest.mark.slow
@pytest.mark.anyio
async def test_mock_errors_are_retried_then_yielded_and_child_is_reaped() -> None:
    aggregator = ReferenceAggregator(mock_error_rate=1.0, retries=2, seed=5)
    async with aggregator:
        assert aggregator.mock is not None and aggregator.base_url is not None
        pid = aggregator.mock.pid
        assert pid is not None and psutil.Process(pid).is_running()
        events = await collect(aggregator, "always failing")
        stats = await _mock_stats(aggregator.base_url)
    assert [e["type"] for e in events] == ["status", "error"]
    assert events[-1]["error"] == "search_unavailable" and events[-1]["attempts"] == 3
    assert "HTTP 503" in events[-1]["message"] and "after 3 attempts" in events[-1]["message"]
    assert stats["requests"] == 3 and stats["errors_injected"] == 3
    assert not psutil.pid_exists(pid)  # terminated and reaped, no zombie left behind


_ORPHAN_SCRIPT = textwrap.dedent(
    """
    import anyio, sys
    from soakd.reference.launcher import MockApiProcess

    async def main() -> None:
        async with MockApiProcess(latency_ms=1, latency_jitter_ms=0) as mock:
            print(mock.pid, flush=True)
            await anyio.sleep(60)

    anyio.run(main)
    """
)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_mock_dies_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    try:
        ready, _, _ = select.select([parent.stdout], [], [], DEADLINE_S)
        assert ready, "parent did not start the mock"
        child = int(parent.stdout.readline())
        assert not _gone(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _gone(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


@pytest.mark.slow
@pytest.mark.anyio
async def test_mock_process_reports_unexpected_output() -> None:
    mock = MockApiProcess(latency_ms=-1)  # the child rejects it and exits before a port
    with pytest.raises(RuntimeError, match="exited with code 2"):
        await mock.start()
    assert mock.pid is None


def test_process_query_needs_the_context_manager() -> None:
    with pytest.raises(RuntimeError, match="not entered"):
        ReferenceAggregator().process_query("q")
