"""Trend statistics: Theil–Sen with Sen's interval, Mann–Kendall, robust scale."""

from __future__ import annotations

import math
import random

import pytest

from soakd.analysis import trend
from soakd.analysis.trend import (
    lag1_autocorrelation,
    mann_kendall,
    mk_variance,
    normal_cdf,
    ols_fit,
    robust_scale,
    theil_sen,
    variance_inflation,
)


def test_normal_cdf_known_values() -> None:
    assert normal_cdf(0.0) == pytest.approx(0.5)
    assert normal_cdf(1.959964) == pytest.approx(0.975, abs=1e-6)
    assert normal_cdf(-2.575829) == pytest.approx(0.005, abs=1e-6)


def test_theil_sen_exact_line() -> None:
    ts = [float(i) for i in range(20)]
    fit = theil_sen(ts, [3.0 + 2.5 * t for t in ts])
    assert fit.slope == pytest.approx(2.5)
    assert fit.intercept == pytest.approx(3.0)
    assert fit.slope_low == pytest.approx(2.5)
    assert fit.slope_high == pytest.approx(2.5)
    assert fit.n == 20


def test_theil_sen_ignores_outliers_that_break_least_squares() -> None:
    ts = [float(i) for i in range(50)]
    ys = [10.0 * t for t in ts]
    for i in (5, 17, 33, 45):
        ys[i] += 1e6
    fit = theil_sen(ts, ys)
    assert fit.slope == pytest.approx(10.0)
    ols_slope, _ = ols_fit(ts, ys)
    assert abs(ols_slope - 10.0) > 100.0


def test_theil_sen_interval_covers_true_slope_and_narrows_with_confidence() -> None:
    rng = random.Random(7)
    ts = [float(i) for i in range(100)]
    ys = [5.0 * t + rng.gauss(0.0, 40.0) for t in ts]
    wide = theil_sen(ts, ys, 0.99)
    narrow = theil_sen(ts, ys, 0.80)
    assert wide.slope_low < 5.0 < wide.slope_high
    assert wide.slope_low <= narrow.slope_low <= narrow.slope <= narrow.slope_high
    assert narrow.slope_high <= wide.slope_high
    inflated = theil_sen(ts, ys, 0.99, variance_factor=10.0)
    assert inflated.slope_low < wide.slope_low


def test_theil_sen_interval_coverage_is_about_nominal() -> None:
    rng = random.Random(11)
    ts = [float(i) for i in range(40)]
    covered = 0
    for _ in range(200):
        ys = [1.5 * t + rng.gauss(0.0, 10.0) for t in ts]
        fit = theil_sen(ts, ys, 0.90)
        covered += fit.slope_low <= 1.5 <= fit.slope_high
    assert 0.82 <= covered / 200 <= 0.97


def test_theil_sen_thins_pairs_for_long_series() -> None:
    n = 1000  # 499 500 pairs: far above MAX_PAIRS
    ts = [float(i) for i in range(n)]
    rng = random.Random(3)
    ys = [0.5 * t + rng.gauss(0.0, 5.0) for t in ts]
    slopes, total = trend._pairwise_slopes(ts, ys)
    assert total == n * (n - 1) // 2
    assert len(slopes) <= trend.MAX_PAIRS * 1.05
    fit = theil_sen(ts, ys)
    assert fit.slope == pytest.approx(0.5, abs=0.02)
    assert fit.slope_low < 0.5 < fit.slope_high


def test_theil_sen_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 points"):
        theil_sen([1.0], [1.0])
    with pytest.raises(ValueError, match="differ in length"):
        theil_sen([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="distinct timestamps"):
        theil_sen([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match='"confidence"'):
        theil_sen([1.0, 2.0], [1.0, 2.0], confidence=1.5)


def test_mann_kendall_monotone_series() -> None:
    up = mann_kendall([float(i) for i in range(30)])
    assert up.s == 30 * 29 // 2
    assert up.z > 0 and up.p_value < 1e-6
    down = mann_kendall([float(-i) for i in range(30)])
    assert down.s == -up.s
    assert down.z == pytest.approx(-up.z)
    assert down.p_value == pytest.approx(up.p_value)


def test_mann_kendall_known_small_example() -> None:
    # S by hand: pairs (1,3)+ (1,2)+ (1,4)+ (3,2)- (3,4)+ (2,4)+ = 4; Var = 4·3·13/18.
    mk = mann_kendall([1.0, 3.0, 2.0, 4.0])
    assert mk.s == 4
    assert mk.var_s == pytest.approx(4 * 3 * 13 / 18)
    assert mk.z == pytest.approx(3 / math.sqrt(4 * 3 * 13 / 18))
    assert mk.p_value == pytest.approx(2 * (1 - normal_cdf(mk.z)))


def test_mann_kendall_tie_correction() -> None:
    ys = [1.0, 1.0, 2.0, 2.0, 2.0, 3.0]
    # Ties of sizes 2 and 3 reduce Var(S) by (2·1·9 + 3·2·11) / 18.
    assert mk_variance(ys) == pytest.approx((6 * 5 * 17 - (18 + 66)) / 18)
    assert mann_kendall([5.0] * 10).p_value == 1.0


def test_mann_kendall_false_positive_rate_on_white_noise() -> None:
    rng = random.Random(5)
    trials = [mann_kendall([rng.gauss(0, 1) for _ in range(60)]) for _ in range(300)]
    hits = sum(mk.p_value < 0.05 for mk in trials)
    assert hits / 300 < 0.09


def test_variance_inflation_corrects_for_autocorrelated_noise() -> None:
    rng = random.Random(2)
    x, ar = 0.0, []
    for _ in range(300):
        x = 0.95 * x + rng.gauss(0.0, 1.0)
        ar.append(x)
    assert lag1_autocorrelation(ar) > 0.8
    factor = variance_inflation(ar)
    assert 9.0 < factor <= 19.0 + 1e-9  # r1 is clipped at 0.9
    white = [rng.gauss(0.0, 1.0) for _ in range(300)]
    assert variance_inflation(white) < 1.3
    assert mann_kendall(ar, variance_factor=factor).p_value > mann_kendall(ar).p_value
    with pytest.raises(ValueError, match="variance_factor"):
        mann_kendall(ar, variance_factor=0.5)


def test_robust_scale_estimates_sigma_and_ignores_outliers() -> None:
    rng = random.Random(9)
    xs = [rng.gauss(0.0, 3.0) for _ in range(2000)]
    assert robust_scale(xs) == pytest.approx(3.0, rel=0.08)
    xs[:50] = [1e9] * 50
    assert robust_scale(xs) == pytest.approx(3.0, rel=0.12)
    assert robust_scale([]) == 0.0


def test_ols_fit() -> None:
    assert ols_fit([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]) == pytest.approx((2.0, 1.0))
    assert ols_fit([4.0, 4.0], [1.0, 3.0]) == (0.0, 2.0)
