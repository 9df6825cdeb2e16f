"""Which allocation sites the agent reports: the largest, and the most grown."""

from __future__ import annotations

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
