"""Verdicts on sampled site series: Poisson-noisy estimates judged with their own variance."""

from __future__ import annotations

import math
import random

from soakd.analysis.verdicts import VerdictParams
from soakd.detection.sampled import growth_sigma, judge_sampled

INTERVAL = 512 * 1024.0
PARAMS = VerdictParams(alpha=0.01 / 3, min_slope=1024.0**2 / 3600.0)


def _estimates(
    rate: float, seconds: float, rng: random.Random, base: float = 0.0, until: float | None = None
) -> tuple[list[float], list[float], list[float]]:
    """A site sampled every 2 s whose live bytes grow at ``rate`` B/s (until ``until``)."""
    ts: list[float] = []
    ys: list[float] = []
    samples = rng.randrange(0, 3) + round(base / INTERVAL)
    t = 0.0
    while t <= seconds:
        grow = rate * 2.0 if until is None or t < until else 0.0
        # Each sample stands for INTERVAL bytes: new samples arrive as a Poisson count.
        samples += _poisson(rng, grow / INTERVAL)
        ts.append(t)
        ys.append(samples * INTERVAL)
        t += 2.0
    return ts, ys, [INTERVAL * y for y in ys]


def _poisson(rng: random.Random, mean: float) -> int:
    count, total = 0, rng.expovariate(1.0)
    while total < mean:
        count += 1
        total += rng.expovariate(1.0)
    return count


def test_a_steady_sampled_leak_is_a_leak_in_almost_every_window() -> None:
    rng = random.Random(1)
    verdicts = [judge_sampled(*_estimates(500_000.0, 60.0, rng), PARAMS, 30.0) for _ in range(50)]
    assert sum(v.is_leak for v in verdicts) >= 48, [v.reason for v in verdicts if not v.is_leak]


def test_a_stable_site_is_never_a_leak_although_its_estimate_wanders() -> None:
    rng = random.Random(2)
    leaks = 0
    for _ in range(200):
        ts = [2.0 * i for i in range(31)]
        # 20 MiB live, entries replaced all the time: which blocks are sampled changes.
        ys = [INTERVAL * _poisson(rng, 20 * 1024.0**2 / INTERVAL) for _ in ts]
        leaks += judge_sampled(ts, ys, [INTERVAL * y for y in ys], PARAMS, 30.0).is_leak
    assert leaks <= 2


def test_a_cache_that_filled_early_is_a_plateau_not_a_leak() -> None:
    rng = random.Random(3)
    verdicts = [
        judge_sampled(*_estimates(1_000_000.0, 90.0, rng, until=45.0), PARAMS, 30.0)
        for _ in range(20)
    ]
    assert all(v.pattern in ("plateau", "flat") for v in verdicts), [v.reason for v in verdicts]
    assert sum(v.pattern == "plateau" for v in verdicts) >= 15


def test_a_one_off_load_is_a_step() -> None:
    ts = [2.0 * i for i in range(31)]
    ys = [1e6 if t < 30 else 40e6 for t in ts]
    v = judge_sampled(ts, ys, [INTERVAL * y for y in ys], PARAMS, 30.0)
    assert v.pattern == "step", v.reason


def test_too_short_a_window_is_insufficient() -> None:
    v = judge_sampled([0.0, 2.0, 4.0], [0.0, 1e6, 2e6], [0.0, 5e11, 1e12], PARAMS, 30.0)
    assert v.pattern == "insufficient"


def test_a_leak_on_top_of_a_large_stable_site_is_judged_on_its_new_samples() -> None:
    rng = random.Random(4)
    found = 0
    for _ in range(20):
        # 200 MiB already live at the line; 100 KB/s more, nothing freed.
        ts, ys, vs = _estimates(100_000.0, 60.0, rng, base=200 * 1024.0**2)
        churn = [INTERVAL * (y - ys[0]) for y in ys]  # the new samples' squared weights
        found += judge_sampled(ts, ys, vs, PARAMS, 30.0, churn).is_leak
        # The ends' variances alone (≈ 2 × 200 MiB × interval) would hide it.
        assert growth_sigma(vs, None) > 5 * growth_sigma(vs, churn)
    assert found >= 18


def test_a_churning_stable_site_keeps_its_noise_through_the_churn_bound() -> None:
    rng = random.Random(5)
    leaks = 0
    level = 20 * 1024.0**2
    for _ in range(200):
        ts = [2.0 * i for i in range(31)]
        ys = [INTERVAL * _poisson(rng, level / INTERVAL) for _ in ts]
        # Every entry replaced between samples: the samples freed and allocated both count.
        churn = [2.0 * INTERVAL * level * i for i in range(31)]
        leaks += judge_sampled(ts, ys, [INTERVAL * y for y in ys], PARAMS, 30.0, churn).is_leak
    assert leaks <= 2


def test_a_restarted_churn_counter_falls_back_to_the_ends_variances() -> None:
    assert growth_sigma([4.0, 5.0], [10.0, 3.0]) == 3.0
    assert growth_sigma([4.0, 5.0], [10.0, 11.0]) == 1.0


def _filling(
    total: float, tau: float, start: float, seconds: float, rng: random.Random
) -> tuple[list[float], list[float], list[float], list[float]]:
    """A cache over a bounded key space seen from ``start`` on: live bytes
    ``total·(1 - exp(-t/tau))``, sampled every 2 s, each new sample standing for INTERVAL."""
    ts: list[float] = []
    ys: list[float] = []
    churn: list[float] = []
    samples = round(total * (1.0 - math.exp(-start / tau)) / INTERVAL)
    t, weights = start, 0.0
    while t <= start + seconds:
        grow = total * (math.exp(-t / tau) - math.exp(-(t + 2.0) / tau))
        new = _poisson(rng, grow / INTERVAL)
        samples += new
        weights += new * INTERVAL**2
        ts.append(t)
        ys.append(samples * INTERVAL)
        churn.append(weights)
        t += 2.0
    return ts, ys, [INTERVAL * y for y in ys], churn


def test_a_cache_filling_ever_slower_is_a_plateau_not_a_leak() -> None:
    # 600 MB over keys drawn at random (τ = 60 s), seen from 60 s to 130 s: its rate falls
    # from 3.7 to 1.1 MB/s (about 280 samples), a steady leak's would not.
    rng = random.Random(7)
    verdicts = []
    for _ in range(50):
        ts, ys, vs, churn = _filling(600e6, 60.0, 60.0, 70.0, rng)
        verdicts.append(judge_sampled(ts, ys, vs, PARAMS, 30.0, churn))
    leaks = [v for v in verdicts if v.is_leak]
    assert len(leaks) <= 5, [v.reason for v in leaks]
    assert any("slowing down" in v.reason for v in verdicts)


def test_a_steady_leak_is_not_read_as_slowing_down() -> None:
    rng = random.Random(8)
    slowing = 0
    for _ in range(200):
        ts, ys, vs = _estimates(1_000_000.0, 70.0, rng)
        churn = [INTERVAL * (y - ys[0]) for y in ys]
        slowing += "slowing down" in judge_sampled(ts, ys, vs, PARAMS, 30.0, churn).reason
    assert slowing <= 3


def test_windows_without_sampled_churn_or_with_shared_timestamps_are_judged_not_raised() -> None:
    # A window whose ends hold no variance and whose churn did not move (a window cut between
    # two collections can be such), and one whose last points share a timestamp: judged, where
    # they used to raise ZeroDivisionError out of the analysis (and lose its state changes).
    ts = [float(t) for t in range(0, 61, 5)]
    ys = [1000.0 * t for t in ts]
    v = judge_sampled(ts, ys, [0.0] * len(ts), PARAMS, 30.0, [5.0] * len(ts))
    assert v.is_leak and "no sampled churn" in v.reason
    ts2 = [*ts[:-1], ts[-2]]
    ys2 = [*ys[:-1], ys[-2] + 500.0]
    vs2 = [8192.0 * y for y in ys2]
    assert judge_sampled(ts2, ys2, vs2, PARAMS, 30.0).pattern in ("leak", "plateau", "flat", "step")
