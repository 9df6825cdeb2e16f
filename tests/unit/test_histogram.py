"""LatencyHistogram: accuracy, bounds, merge, serialisation, CI coverage, bounded memory."""

from __future__ import annotations

import gc
import json
import math
import random
import tracemalloc

import pytest

from soakd.workload.histogram import HIGH_MS, LOW_MS, LatencyHistogram, _order_statistic_ranks


def exact(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(math.ceil(q / 100 * len(s)), 1) - 1]


def filled(values: list[float]) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    return h


def test_empty_histogram_reports_zero_and_no_ci() -> None:
    h = LatencyHistogram()
    assert (h.count, h.max, h.min, h.mean) == (0, 0.0, 0.0, 0.0)
    assert h.percentile(50) == 0.0
    assert h.percentile_ci(50) is None


@pytest.mark.parametrize("q", [1, 25, 50, 90, 99, 99.9])
def test_percentiles_within_one_percent_of_exact(q: float) -> None:
    rng = random.Random(7)
    # Spread over six decades so many bucket sizes are exercised.
    values = [10 ** rng.uniform(-2, 4) for _ in range(20_000)]
    h = filled(values)
    want = exact(values, q)
    assert h.percentile(q) == pytest.approx(want, rel=0.0101)


def test_extremes_are_exact_and_out_of_range_values_are_kept() -> None:
    h = filled([0.0, 5.0, 2 * HIGH_MS, LOW_MS / 10])
    assert h.count == 4
    assert h.percentile(0) == 0.0
    assert h.percentile(100) == 2 * HIGH_MS  # clamped bucket, exact max
    assert h.max == 2 * HIGH_MS
    assert h.min == 0.0


def test_negative_is_zero_and_nan_is_ignored() -> None:
    h = filled([-3.0, float("nan"), 1.0])
    assert h.count == 2
    assert h.min == 0.0
    assert h.percentile(100) == 1.0


def test_percentile_rejects_out_of_range_q() -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        LatencyHistogram().percentile(101)


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(3)
    a_vals = [rng.expovariate(1 / 5) for _ in range(3000)]
    b_vals = [rng.expovariate(1 / 50) for _ in range(3000)]
    a, b, both = filled(a_vals), filled(b_vals), filled(a_vals + b_vals)
    a.merge(b)
    merged, expected = a.to_dict(), both.to_dict()
    assert merged.pop("sum") == pytest.approx(expected.pop("sum"))
    assert merged == expected
    assert a.count == 6000


def test_reset_forgets_everything() -> None:
    h = filled([1.0, 2.0, 300.0])
    h.reset()
    assert h.count == 0
    assert h.to_dict()["buckets"] == []
    h.record(7.0)
    assert h.percentile(50) == 7.0


def test_dict_round_trip_is_sparse_and_json_safe() -> None:
    rng = random.Random(5)
    h = filled([rng.gauss(100, 5) for _ in range(10_000)])
    data = json.loads(json.dumps(h.to_dict()))
    assert len(data["buckets"]) < 50  # a narrow distribution touches few buckets
    back = LatencyHistogram.from_dict(data)
    assert back.count == h.count
    for q in (50, 90, 99):
        assert back.percentile(q) == h.percentile(q)
    assert back.to_dict() == h.to_dict()


@pytest.mark.parametrize(
    "bad",
    [
        {"schema": "other"},
        {"schema": "soakd.hist/1", "gamma": 1.5, "buckets": [], "count": 0},
        {"schema": "soakd.hist/1", "gamma": 1.02, "buckets": [[5, 2]], "count": 3},
        {"schema": "soakd.hist/1", "gamma": 1.02, "buckets": [[10**9, 1]], "count": 1},
        {"schema": "soakd.hist/1", "gamma": 1.02, "buckets": [[5, 1]]},
    ],
)
def test_from_dict_rejects_foreign_or_inconsistent_data(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LatencyHistogram.from_dict(bad)


def binomial_coverage(n: int, p: float, lo: int, hi: int) -> float:
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(lo, hi))


@pytest.mark.parametrize(("n", "p"), [(20, 0.5), (100, 0.5), (300, 0.9), (1000, 0.99)])
def test_order_statistic_ranks_reach_the_confidence(n: int, p: float) -> None:
    ranks = _order_statistic_ranks(n, p, 0.95)
    assert ranks is not None
    lo, hi = ranks
    assert 1 <= lo < hi <= n
    assert binomial_coverage(n, p, lo, hi) >= 0.95
    # Narrow: dropping either end falls below the confidence.
    assert binomial_coverage(n, p, lo + 1, hi) < 0.95 or binomial_coverage(n, p, lo, hi - 1) < 0.95


def test_ci_is_none_when_the_sample_is_too_small() -> None:
    h = filled([float(i) for i in range(1, 101)])
    assert h.percentile_ci(99) is None  # 100 samples cannot bound p99 at 95 %
    assert h.percentile_ci(50) is not None


def test_ci_covers_the_true_median_in_repeated_samples() -> None:
    rng = random.Random(11)
    true_median = 60.0  # uniform(10, 110)
    trials, covered = 200, 0
    for _ in range(trials):
        h = filled([rng.uniform(10, 110) for _ in range(200)])
        ci = h.percentile_ci(50)
        assert ci is not None
        covered += ci[0] <= true_median <= ci[1]
    assert covered / trials >= 0.9


def test_large_sample_ci_uses_the_normal_approximation_and_is_tight() -> None:
    lo, hi = _order_statistic_ranks(100_000, 0.5, 0.95) or (0, 0)
    half = 1.96 * math.sqrt(100_000 * 0.25)
    assert lo == pytest.approx(50_000 - half, abs=2)
    assert hi == pytest.approx(50_000 + half, abs=2)


@pytest.mark.slow  # tracemalloc traces every transient float: ~6 s
def test_memory_stays_flat_over_a_million_records() -> None:
    h = LatencyHistogram()
    rng = random.Random(1)
    values = [rng.expovariate(1 / 30) for _ in range(1000)]
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(1000):
            for v in values:
                h.record(v)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert h.count == 1_000_000
    assert after - before < 1024  # the bucket array was allocated before; nothing grows
