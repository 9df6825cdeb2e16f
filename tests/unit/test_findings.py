"""The finding state machine: a confirmed leak clears only on evidence that it stopped."""

from __future__ import annotations

from soakd.analysis.series import BoundedSeries
from soakd.analysis.verdicts import SeriesVerdict
from soakd.detection import DetectionParams
from soakd.detection.findings import StateMachine
from soakd.detection.tracks import Track, TrackTable
from soakd.detection.windows import Thresholds

RATE = 10_000.0  # bytes/s


def _verdict(pattern: str, slope: float, low: float, high: float) -> SeriesVerdict:
    return SeriesVerdict(pattern, slope, low, 0.01, slope * 300, "test", 30, 300.0, 0.0, high)  # type: ignore[arg-type]


def _confirmed() -> tuple[StateMachine, Track]:
    params = DetectionParams(confirm_after=2)
    machine = StateMachine(TrackTable(params), params, Thresholds.from_params(params))
    track = Track("site", "/app/x.py:1", BoundedSeries(100))
    leak = _verdict("leak", RATE, 0.6 * RATE, 1.4 * RATE)
    states = []
    for t in (100.0, 200.0, 300.0):
        track.series.append(t - 1.0, RATE * t)
        states.append(machine.step(track, leak, t))
    assert "confirmed" in states and track.state == "confirmed"
    return machine, track


def test_confirmed_leak_still_rising_within_noise_is_not_cleared() -> None:
    machine, track = _confirmed()
    # Not significant in this window, but its slope may still be the confirmed one.
    weak = _verdict("flat", 0.8 * RATE, -0.1 * RATE, 1.7 * RATE)
    sawtooth = _verdict("sawtooth", 0.9 * RATE, 0.2 * RATE, 1.5 * RATE)
    for i, v in enumerate([weak, sawtooth] * 5):
        assert machine.step(track, v, 400.0 + 10 * i) is None
    assert track.state == "confirmed"


def test_confirmed_leak_that_slowed_or_stopped_is_cleared() -> None:
    for stopped in (
        _verdict("plateau", 0.5 * RATE, 0.3 * RATE, 0.7 * RATE),
        _verdict("flat", 0.05 * RATE, -0.2 * RATE, 0.3 * RATE),  # high < confirmed low
        _verdict("flat", -0.1 * RATE, -0.5 * RATE, 0.4 * RATE),
    ):
        machine, track = _confirmed()
        # Only once the stop has held for a whole shortest window (30 s for a site).
        states = [machine.step(track, stopped, 400.0 + 10 * i) for i in range(4)]
        assert states == [None, None, None, "cleared"], stopped
        assert track.state == "none"


def test_suspicion_not_reproduced_is_dropped_as_before() -> None:
    params = DetectionParams(confirm_after=3)
    machine = StateMachine(TrackTable(params), params, Thresholds.from_params(params))
    track = Track("site", "/app/x.py:1", BoundedSeries(100))
    assert machine.step(track, _verdict("leak", RATE, 0.6 * RATE, 1.4 * RATE), 100.0) == "suspected"
    weak = _verdict("flat", 0.8 * RATE, -0.1 * RATE, 1.7 * RATE)
    states = [machine.step(track, weak, 110.0 + 10 * i) for i in range(3)]
    assert states == [None, None, "cleared"]


def test_a_streak_confirms_only_on_newer_data() -> None:
    """Analyses outpace a slow series: re-judging one sample is not agreeing analyses."""
    params = DetectionParams(confirm_after=3)
    machine = StateMachine(TrackTable(params), params, Thresholds.from_params(params))
    track = Track("type", "Record", BoundedSeries(100))
    leak = _verdict("leak", 1.0, 0.5, 1.5)
    track.series.append(95.0, 100.0)
    states = [machine.step(track, leak, 100.0 + 10 * i) for i in range(6)]
    assert states == ["suspected", None, None, None, None, None]
    track.series.append(165.0, 110.0)  # the next sample of the series
    assert machine.step(track, leak, 170.0) == "confirmed"


def test_one_weak_window_between_stops_restarts_the_span() -> None:
    machine, track = _confirmed()
    stopped = _verdict("plateau", 0.5 * RATE, 0.3 * RATE, 0.7 * RATE)
    rising = _verdict("leak", RATE, 0.6 * RATE, 1.4 * RATE)
    assert [machine.step(track, stopped, t) for t in (400.0, 410.0, 420.0)] == [None] * 3
    track.series.append(425.0, RATE * 425)
    assert machine.step(track, rising, 425.0) is None  # the growth is back: still confirmed
    states = [machine.step(track, stopped, 430.0 + 10 * i) for i in range(4)]
    assert states == [None, None, None, "cleared"]


def test_a_suspicion_dropped_and_back_keeps_its_first_sign() -> None:
    params = DetectionParams(confirm_after=3)
    machine = StateMachine(TrackTable(params), params, Thresholds.from_params(params))
    track = Track("heap", "heap", BoundedSeries(100))
    leak = _verdict("leak", RATE, 0.6 * RATE, 1.4 * RATE)
    weak = _verdict("flat", 0.8 * RATE, -0.1 * RATE, 1.7 * RATE)
    track.series.append(99.0, 1.0)
    assert machine.step(track, leak, 100.0) == "suspected"
    assert [machine.step(track, weak, t) for t in (110.0, 120.0, 130.0)] == [None, None, "cleared"]
    assert machine.step(track, leak, 150.0) == "suspected"  # within a window of the drop
    assert track.first_detected_s == 100.0
    assert [machine.step(track, weak, t) for t in (160.0, 170.0, 180.0)] == [None, None, "cleared"]
    assert machine.step(track, leak, 400.0) == "suspected"  # long after: a new episode
    assert track.first_detected_s == 400.0


def test_memory_growth_confirms_only_after_it_survived_a_full_collection() -> None:
    """Garbage awaiting a full collection reads as growth: the supervisor collects on
    suspicion and the finding confirms once a collection ran since its streak began."""
    params = DetectionParams(confirm_after=3, collection_check=True)
    tracks = TrackTable(params)
    machine = StateMachine(tracks, params, Thresholds.from_params(params))
    track = Track("type", "app.Session", BoundedSeries(100))
    leak = _verdict("leak", 1.0, 0.5, 1.5)
    states = []
    for i in range(6):
        track.series.append(95.0 + 10 * i, 100.0 + i)
        states.append(machine.step(track, leak, 100.0 + 10 * i))
    assert states == ["suspected"] + [None] * 5  # no collection yet
    tracks.collected_at = 151.0
    track.series.append(155.0, 106.0)
    assert machine.step(track, leak, 160.0) == "confirmed"


def test_without_a_collection_the_wait_runs_out() -> None:
    params = DetectionParams(confirm_after=3, collection_check=True)
    machine = StateMachine(TrackTable(params), params, Thresholds.from_params(params))
    track = Track("type", "app.Session", BoundedSeries(100))
    leak = _verdict("leak", 1.0, 0.5, 1.5)
    states = []
    for i in range(14):
        track.series.append(95.0 + 10 * i, 100.0 + i)
        states.append(machine.step(track, leak, 100.0 + 10 * i))
    assert states.index("confirmed") == 12  # attribution_wait_s (120 s) after the streak began
