"""Which allocation sites the agent reports: the largest, and the most grown."""

from __future__ import annotations

import linecache

import pytest

from soakd import profiler
from soakd.agent import Agent
from soakd.snapshots import SnapshotSite


def _site(name: str, size: int) -> SnapshotSite:
    return SnapshotSite(name, (name,), None, size, max(size // 64, 1))


def test_a_slow_leak_far_down_the_list_is_reported_among_the_most_grown() -> None:
    agent = Agent(max_sites=10)
    stable = [_site(f"lib.py:{i}", 1_000_000 - i * 1000) for i in range(40)]
    reported: list[set[str]] = []
    for step in range(6):
        leak = _site("app.py:80", 8192 * (step + 1))  # one sample more each time, far below
        by_size = sorted([*stable, leak], key=lambda s: s.size, reverse=True)
        chosen = agent._select_sites(by_size)
        assert len(chosen) == 10
        reported.append({s.site for s in chosen})
    assert "app.py:80" not in reported[0]  # not grown yet: the largest fill every place
    assert all("app.py:80" in names for names in reported[1:])
    # The eight largest are always there.
    assert all({f"lib.py:{i}" for i in range(8)} <= names for names in reported)


def test_sites_no_longer_live_are_forgotten() -> None:
    agent = Agent(max_sites=5)
    agent._select_sites([_site(f"gone.py:{i}", 100) for i in range(1000)])
    agent._select_sites([_site("here.py:1", 100)])
    assert set(agent._site_baseline) == {"here.py:1"}


def _keep(n: int) -> list[bytes]:
    return [bytes(300) for _ in range(n)]  # the site: two callers, two stacks


def _via_a(n: int) -> list[bytes]:
    return _keep(n)


def _via_b(n: int) -> list[bytes]:
    return _keep(n)


@pytest.mark.skipif(not profiler.AVAILABLE, reason="the sampled profiler is not built")
def test_a_sites_churn_does_not_fall_when_one_of_its_stacks_is_released() -> None:
    # The churn's difference over a window bounds the variance of the site's growth: if it
    # fell when a stack died, the detector would judge the site on its ends' variances.
    agent = Agent(frames=4)
    try:
        assert agent.start_profiler(interval=4096)
        a, b = _via_a(5000), _via_b(5000)
        site = f"{__file__}:{_keep.__code__.co_firstlineno + 1}"

        def churn() -> tuple[float, int]:
            [s] = [s for s in agent.sites().sites if s.site == site]
            return s.churn, s.size

        before, size_before = churn()
        del a  # the stack through _via_a has no live block left: released by the next sample
        after, size_after = churn()
        assert size_after < 0.75 * size_before
        assert after >= before > 0
        del b
    finally:
        profiler.SampledProfiler().stop()


@pytest.mark.skipif(not profiler.AVAILABLE, reason="the sampled profiler is not built")
def test_an_agent_serving_a_watcher_reads_no_source_in_the_target() -> None:
    # Loading the sites' sources into the target grew its heap by megabytes and slowed it for
    # the rest of the run: the watcher reads them (SitesResult.with_lines) on its side.
    site = f"{__file__}:{_keep.__code__.co_firstlineno + 1}"
    for source_lines, expected in (
        (False, None),
        (True, "return [bytes(300) for _ in range(n)]  # the site: two callers, two stacks"),
    ):
        agent = Agent(frames=4, source_lines=source_lines)
        try:
            assert agent.start_profiler(interval=4096)
            held = _via_a(5000)
            linecache.clearcache()
            result = agent.sites()
            [found] = [s for s in result.sites if s.site == site]
            assert found.line == expected
            if not source_lines:
                assert linecache.cache == {}  # nothing read through linecache either
                filled = result.with_lines(lambda frame: f"read {frame}")
                assert [s.line for s in filled.sites if s.site == site] == [f"read {site}"]
            del held
        finally:
            profiler.SampledProfiler().stop()
