"""BoundedSeries: bounded memory, exact recent points, windows."""

from __future__ import annotations

import itertools

import pytest

from soakd.analysis.series import BoundedSeries, downsample


def test_million_appends_stay_within_bound() -> None:
    series = BoundedSeries(max_points=64)
    for i in range(1_000_000):
        series.append(float(i), float(i % 7))
    assert len(series) <= 64
    assert series.first == (0.0, 0.0)  # the first point is never merged
    assert series.last == (999_999.0, float(999_999 % 7))


def test_compaction_keeps_recent_points_exact_and_order() -> None:
    series = BoundedSeries(max_points=16)
    for i in range(200):
        series.append(float(i), 2.0 * i)
    points = series.points()
    assert len(points) <= 16
    ts = [t for t, _ in points]
    assert ts == sorted(ts)
    # Merged points are means of linear data, so they stay on the line.
    assert all(v == pytest.approx(2.0 * t) for t, v in points)
    # The newest quarter is untouched.
    assert ts[-4:] == [196.0, 197.0, 198.0, 199.0]


def test_resolution_decays_with_age() -> None:
    series = BoundedSeries(max_points=64)
    for i in range(10_000):
        series.append(float(i), 0.0)
    ts = [t for t, _ in series.points()]
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    assert gaps[-1] == 1.0
    assert max(gaps[:10]) > 16.0 * gaps[-1]


def test_since_and_window() -> None:
    series = BoundedSeries()
    for i in range(10):
        series.append(float(i), float(i * i))
    assert series.since(7.0) == [(7.0, 49.0), (8.0, 64.0), (9.0, 81.0)]
    assert series.since(100.0) == []
    assert series.window(2.0, 4.0) == ([2.0, 3.0, 4.0], [4.0, 9.0, 16.0])
    assert series.window(2.5, 2.7) == ([], [])


def test_equal_timestamps_allowed_backwards_refused() -> None:
    series = BoundedSeries()
    assert series.last is None and series.first is None and len(series) == 0
    series.append(1.0, 1.0)
    series.append(1.0, 2.0)
    with pytest.raises(ValueError, match=r"time went backwards: 0\.5 < 1\.0"):
        series.append(0.5, 3.0)
    with pytest.raises(ValueError, match="non-finite"):
        series.append(2.0, float("nan"))
    with pytest.raises(ValueError, match='"max_points" must be >= 8: 2'):
        BoundedSeries(max_points=2)


def test_downsample_averages_into_bins() -> None:
    ts = [float(i) for i in range(1000)]
    ys = [3.0 * t + 1.0 for t in ts]
    bt, by = downsample(ts, ys, 100)
    assert len(bt) == 100
    assert all(y == pytest.approx(3.0 * t + 1.0) for t, y in zip(bt, by, strict=True))
    assert downsample(ts[:50], ys[:50], 100) == (ts[:50], ys[:50])
    assert downsample([5.0] * 300, [1.0] * 300, 10) == ([5.0], [1.0])
