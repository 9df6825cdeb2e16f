"""classify() on one window, and warmup_end(): leak-free shapes vs leaks, explicit timestamps."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from soakd.analysis.verdicts import SeriesVerdict, VerdictParams, classify, warmup_end

MIB = 1024.0 * 1024.0
HEAP = VerdictParams(min_slope=MIB / 3600.0)  # 1 MiB/h, as the detector uses for heap
COUNT = VerdictParams(min_slope=20.0 / 3600.0, min_growth=3.0)
BASE = 50e6
SEEDS = range(5)


def judge(
    f: Callable[[float, random.Random], float],
    seed: int,
    *,
    duration: float = 1800.0,
    dt: float = 2.0,
    params: VerdictParams = HEAP,
) -> SeriesVerdict:
    rng = random.Random(seed)
    ts = [i * dt for i in range(int(duration / dt) + 1)]
    return classify(ts, [f(t, rng) for t in ts], params)


def ar_noise(phi: float, sigma: float) -> Callable[[float, random.Random], float]:
    """AR(1) churn: memory that wanders and comes back, the hard case for trend tests."""
    state = {"x": 0.0}

    def f(_t: float, rng: random.Random) -> float:
        state["x"] = phi * state["x"] + rng.gauss(0.0, sigma)
        return state["x"]

    return f


# -- leak-free shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_flat_with_noise(seed: int) -> None:
    v = judge(lambda t, r: BASE + r.gauss(0, 20e3), seed)
    assert v.pattern in ("flat", "noise")
    assert not v.is_leak


@pytest.mark.parametrize("seed", SEEDS)
def test_cache_filling_to_bound_is_plateau(seed: int) -> None:
    v = judge(lambda t, r: BASE + 20e3 * min(t, 900.0) + r.gauss(0, 20e3), seed)
    assert v.pattern == "plateau", v.reason


@pytest.mark.parametrize("seed", SEEDS)
def test_cache_exponential_approach_is_plateau(seed: int) -> None:
    v = judge(lambda t, r: BASE + 20e6 * (1 - math.exp(-t / 200.0)) + r.gauss(0, 20e3), seed)
    assert v.pattern == "plateau", v.reason


@pytest.mark.parametrize("seed", SEEDS)
def test_periodic_flush_is_sawtooth(seed: int) -> None:
    v = judge(lambda t, r: BASE + 30e3 * (t % 120.0) + r.gauss(0, 20e3), seed)
    assert v.pattern == "sawtooth", v.reason


@pytest.mark.parametrize("seed", SEEDS)
def test_ring_buffer_fill_then_flat_is_not_a_leak(seed: int) -> None:
    # A ring buffer fills once (lazy), then overwrites in place: steady afterwards.
    v = judge(lambda t, r: BASE + 4e6 * min(t / 300.0, 1.0) + r.gauss(0, 50e3), seed)
    assert not v.is_leak, v.reason


@pytest.mark.parametrize("seed", SEEDS)
def test_one_off_load_is_step(seed: int) -> None:
    v = judge(lambda t, r: BASE + (10e6 if t > 700 else 0.0) + r.gauss(0, 20e3), seed)
    assert v.pattern == "step", v.reason
    ramp = judge(
        lambda t, r: BASE + 10e6 * min(max(t - 700.0, 0.0) / 20.0, 1.0) + r.gauss(0, 20e3), seed
    )
    assert ramp.pattern == "step", ramp.reason


@pytest.mark.parametrize("seed", SEEDS)
def test_heavy_churn_is_not_a_leak(seed: int) -> None:
    iid = judge(lambda t, r: BASE + r.uniform(-5e6, 5e6), seed)
    assert not iid.is_leak, iid.reason
    wander = ar_noise(0.97, 400e3)
    ar = judge(lambda t, r: BASE + wander(t, r), seed)
    assert not ar.is_leak, ar.reason


@pytest.mark.parametrize("seed", SEEDS)
def test_slow_allocator_creep_below_minimum_is_flat(seed: int) -> None:
    native = VerdictParams(min_slope=64 * MIB / 3600.0)
    v = judge(lambda t, r: BASE + 3e3 * t + r.gauss(0, 30e3), seed, duration=600.0, params=native)
    assert v.pattern == "flat"
    assert "minimum" in v.reason
    # The same series is a leak for a 1 MiB/h threshold: the minimum is what rejects it.
    assert judge(lambda t, r: BASE + 3e3 * t + r.gauss(0, 30e3), seed, duration=600.0).is_leak


# -- leaks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("rate", "noise"), [(1024.0, 50e3), (10240.0, 200e3), (102400.0, 1e6)])
def test_linear_leak_with_noise(seed: int, rate: float, noise: float) -> None:
    v = judge(lambda t, r: BASE + rate * t + r.gauss(0, noise), seed)
    assert v.pattern == "leak", v.reason
    assert v.slope == pytest.approx(rate, rel=0.1)
    assert v.slope_low > HEAP.min_slope
    assert v.growth == pytest.approx(rate * 1800.0, rel=0.1)
    assert v.p_value < HEAP.alpha


@pytest.mark.parametrize("seed", SEEDS)
def test_leak_under_churn(seed: int) -> None:
    wander = ar_noise(0.9, 300e3)
    v = judge(lambda t, r: BASE + 10240.0 * t + wander(t, r), seed)
    assert v.pattern == "leak", v.reason


@pytest.mark.parametrize("seed", SEEDS)
def test_leak_under_periodic_flush(seed: int) -> None:
    # A buffer flushes every 5 min while 10 KB/s leaks underneath: the troughs keep rising.
    v = judge(lambda t, r: BASE + 30e3 * (t % 300.0) + 10240.0 * t + r.gauss(0, 20e3), seed)
    assert v.pattern == "leak", v.reason
    assert v.slope == pytest.approx(10240.0, rel=0.3)


def test_short_leak_window_of_thirty_seconds() -> None:
    v = judge(lambda t, r: BASE + 10240.0 * t + r.gauss(0, 5e3), 0, duration=30.0, dt=1.0)
    assert v.pattern == "leak", v.reason


def test_integer_count_leak_and_bounded_pool() -> None:
    fds = judge(lambda t, r: 20.0 + t // 5, 0, duration=60.0, dt=1.0, params=COUNT)
    assert fds.pattern == "leak", fds.reason
    assert fds.slope == pytest.approx(0.2, rel=0.1)
    pool = judge(lambda t, r: 20.0 + min(t, 600.0) // 5, 0, params=COUNT)
    assert not pool.is_leak, pool.reason
    one_more = judge(lambda t, r: 20.0 + (1.0 if t > 900 else 0.0), 0, params=COUNT)
    assert not one_more.is_leak


def test_growth_must_reach_min_growth() -> None:
    v = judge(lambda t, r: 20.0 + t // 30, 0, duration=60.0, dt=1.0, params=COUNT)
    assert v.pattern != "leak"


def test_insufficient_data() -> None:
    few = classify([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], HEAP)
    assert few.pattern == "insufficient" and not few.decisive
    short = classify([i * 0.1 for i in range(50)], [float(i) for i in range(50)], HEAP)
    assert short.pattern == "insufficient"
    assert "< 30s" in short.reason


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match='"alpha" must be in'):
        VerdictParams(alpha=0.7)
    with pytest.raises(ValueError, match='"min_points" must be >= 8: 3'):
        VerdictParams(min_points=3)
    with pytest.raises(ValueError, match='"plateau_ratio"'):
        VerdictParams(plateau_ratio=1.5)


# -- warm-up -------------------------------------------------------------------------------


def series(f: Callable[[float], float], duration: float) -> tuple[list[float], list[float]]:
    ts = [float(i) for i in range(int(duration) + 1)]
    return ts, [f(t) for t in ts]


def test_warmup_of_steady_leak_ends_at_floor() -> None:
    rng = random.Random(1)
    ts, ys = series(lambda t: BASE + 10240.0 * t + rng.gauss(0, 5e3), 300)
    assert warmup_end(ts, ys, 60.0, 600.0, min_span_s=60.0, min_slope=291.0) == 60.0


def test_interpreter_warmup_ends_when_growth_settles() -> None:
    rng = random.Random(1)
    # Imports and caches: +5 MB with a 30 s time constant.
    ts, ys = series(lambda t: BASE + 5e6 * (1 - math.exp(-t / 30.0)) + rng.gauss(0, 5e3), 600)
    end = warmup_end(ts, ys, 60.0, 600.0, min_span_s=60.0, min_slope=291.0)
    assert 120.0 <= end <= 240.0
    # Remaining growth after the end is below the smallest slope worth reporting.
    assert 5e6 / 30.0 * math.exp(-end / 30.0) < 1024.0


def test_warmup_waits_for_data_and_is_capped() -> None:
    ts, ys = series(lambda t: BASE + 1e3 * t, 80)
    # Only 20 s after the floor: not decided yet, so the cap comes back.
    assert warmup_end(ts, ys, 60.0, 600.0, min_span_s=60.0) == 600.0
    ts, ys = series(lambda t: BASE + 1e6 * math.sqrt(t), 3000)
    assert warmup_end(ts, ys, 60.0, 600.0, min_span_s=60.0) == 600.0
    assert warmup_end([], [], 60.0, 600.0) == 600.0
    with pytest.raises(ValueError, match='"max_s" must be >= floor_s'):
        warmup_end(ts, ys, 60.0, 30.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_cache_still_filling_ever_slower_is_plateau(seed: int) -> None:
    # A cache over a bounded key space, 90–250 s into its fill (τ = 125 s): still growing
    # at a third of its first rate, visibly slowing down.
    v = judge(
        lambda t, r: BASE + 400e3 * (1.0 - math.exp(-(t + 90.0) / 125.0)) + r.gauss(0, 3e3),
        seed,
        duration=160.0,
    )
    assert v.pattern == "plateau" and "slowing" in v.reason, v.reason


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("duration", "noise"), [(60.0, 2e3), (160.0, 20e3), (600.0, 50e3)])
def test_steady_leak_is_never_called_slowing(seed: int, duration: float, noise: float) -> None:
    v = judge(lambda t, r: BASE + 10e3 * t + r.gauss(0, noise), seed, duration=duration)
    assert v.is_leak, v.reason
