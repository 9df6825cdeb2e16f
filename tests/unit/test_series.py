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


def test_a_series_holds_its_capacity_from_the_start() -> None:
    """Memory reached at creation, not as it fills: a growing RSS then always means something."""
    import sys

    s = BoundedSeries(64)
    empty = sys.getsizeof(s._ts) + sys.getsizeof(s._vs)
    for i in range(1000):
        s.append(float(i), float(i))
    assert sys.getsizeof(s._ts) + sys.getsizeof(s._vs) == empty
    assert len(s) <= 64 and s.last == (999.0, 999.0) and s.first == (0.0, 0.0)


def test_stale_series_are_forgotten_when_new_keys_come() -> None:
    from soakd.detection.params import DetectionParams
    from soakd.detection.tracks import TrackTable

    params = DetectionParams()
    tracks = TrackTable(params)
    for i in range(10):  # two sites sampled every 10 s for 100 s
        tracks.add("site", "a.py:1", i * 10.0, 100.0 + i)
        tracks.add("site", "b.py:2", i * 10.0, 200.0 + i)
    held = tracks.get("site", "b.py:2")
    assert held is not None
    held.state = "suspected"  # a finding keeps its series whatever happens
    # both leave the top N; a new site arrives well past the gap
    late = 90.0 + params.gap_s + 1.0
    tracks.add("site", "c.py:3", late, 5.0)
    assert tracks.get("site", "a.py:1") is None
    assert tracks.get("site", "b.py:2") is held
    # a site back after the gap starts a new series, as a restarted segment would
    tracks.add("site", "a.py:1", late + 10.0, 1.0)
    back = tracks.get("site", "a.py:1")
    assert back is not None and back.series.points() == [(late + 10.0, 1.0)]
    # within the gap nothing is dropped
    tracks.add("site", "d.py:4", late + 20.0, 1.0)
    assert tracks.get("site", "c.py:3") is not None
