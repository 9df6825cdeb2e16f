"""The tracing policy: when attribution starts, holds and stops, with explicit times."""

from __future__ import annotations

from typing import Any

from soakd.config import DetectionConfig, SamplingConfig
from soakd.detection import DetectionParams, Finding
from soakd.supervisor.tracing import FAST_SITES_S, ZOOM_HOLD_S, TracingPolicy


def finding(kind: str = "heap", state: str = "confirmed", site: str | None = "app.py:3",
            first: float = 0.0) -> Finding:  # fmt: skip
    fields: dict[str, Any] = dict(
        state=state, kind=kind, key=site or kind, site=site, traceback=(), line=None, type=None,
        slope_per_h=1e6, slope_low_per_h=5e5, unit="bytes", growth=1e5, p_value=1e-4,
        first_detected_s=first, analyses=3, signals=(),
    )  # fmt: skip
    return Finding(**fields)


def policy(window: str = "30m", **sampling: Any) -> TracingPolicy:
    s = SamplingConfig(**sampling)
    params = DetectionParams.from_config(DetectionConfig(window=window), s)
    return TracingPolicy.from_config(s, params)


def test_hold_is_twelve_site_samples_or_two_minutes_of_window() -> None:
    assert policy(sites_interval="10s").hold_s == 120.0
    assert policy(sites_interval="20s").hold_s == 240.0
    assert policy(window="60s", sites_interval="1s").hold_s == 60.0


def test_starts_on_suspicion_or_an_unattributed_heap_finding() -> None:
    p = policy()
    assert p.decide(70.0, suspicious=False, findings=[]) is None
    assert p.decide(70.0, suspicious=True, findings=[]) == "start"
    assert p.decide(70.0, False, [finding(site=None, state="suspected")]) == "start"
    assert p.decide(70.0, False, [finding("fds", site=None)]) is None


def test_never_starts_in_other_modes_or_without_heap_statistics() -> None:
    assert policy(tracemalloc="off").decide(70.0, True, []) is None
    assert policy(tracemalloc="always").decide(70.0, True, []) is None
    assert policy(enabled=False).decide(70.0, True, []) is None


def test_holds_then_stops_attributed_or_cleared() -> None:
    p = policy()
    p.started(100.0)
    assert p.fresh(100.0 + FAST_SITES_S - 1) and not p.fresh(100.0 + FAST_SITES_S)
    site = finding(first=150.0)
    assert p.decide(219.0, False, []) is None  # within the hold
    assert p.decide(221.0, True, []) is None  # still suspicious
    assert p.decide(221.0, False, [site]) is None  # a young site finding is watched
    assert p.decide(271.0, False, [site]) == "attributed"
    assert p.decide(221.0, False, []) == "cleared"


def test_keeps_tracing_while_a_heap_finding_lacks_its_site() -> None:
    p = policy()
    p.started(0.0)
    assert p.decide(500.0, False, [finding(site=None)]) is None
    assert p.decide(500.0, False, [finding(state="suspected", first=0.0)]) is None
    assert p.decide(500.0, False, [finding("objects", site=None)]) is None
    assert p.decide(500.0, False, [finding("fds", site=None)]) == "cleared"


def test_with_the_sampled_profiler_tracemalloc_never_starts_on_suspicion() -> None:
    p = policy(profiler_zoom_interval=0)
    p.sampled = True
    assert p.sites_available and not p.tracing
    assert p.decide(70.0, suspicious=True, findings=[]) is None
    assert p.decide(70.0, False, [finding(site=None, state="suspected")]) is None


def test_sampled_profiler_zooms_in_while_a_suspect_needs_a_site() -> None:
    p = policy()  # zoom to 8 KiB; hold 120 s
    p.sampled = True
    assert p.zoom_interval == 8192
    assert p.decide(70.0, suspicious=False, findings=[]) is None
    assert p.decide(70.0, suspicious=True, findings=[]) == "zoom"
    assert p.decide(70.0, False, [finding(site=None, state="suspected")]) == "zoom"
    p.zoom(True, 100.0)
    assert p.fresh(100.0 + FAST_SITES_S - 1) and not p.tracing
    unattributed = [finding(site=None, state="confirmed")]
    # Held ZOOM_HOLD_S (not only the 120 s hold): a slow leak's site needs minutes of fine
    # samples while the suspicion that started the zoom comes and goes.
    assert p.decide(221.0, False, []) is None
    assert p.decide(100.0 + ZOOM_HOLD_S - 1, False, []) is None
    assert p.decide(450.0, False, unattributed) is None  # still no site
    assert p.decide(450.0, False, [finding(first=150.0)]) == "attributed"
    assert p.decide(100.0 + ZOOM_HOLD_S, False, []) == "cleared"


def test_zoom_expires_and_rests_like_exact_tracing() -> None:
    p = policy()
    p.sampled = True
    p.zoom(True, 100.0)
    unattributed = [finding(site=None, state="suspected")]
    assert p.decide(699.0, True, unattributed) is None
    assert p.decide(700.0, True, unattributed) == "expired"
    p.zoom(False, 700.0)
    assert p.decide(1299.0, True, unattributed) is None
    assert p.decide(1300.0, True, unattributed) == "zoom"


def test_exact_tracing_on_suspicion_expires_and_rests_as_long() -> None:
    p = policy()  # hold 120 s: expiry after 5 holds (600 s)
    p.started(100.0)
    unattributed = [finding(site=None, state="suspected")]
    assert p.decide(699.0, True, unattributed) is None
    assert p.decide(700.0, True, unattributed) == "expired"
    p.stopped(700.0)
    assert p.decide(1299.0, True, unattributed) is None  # resting
    assert p.decide(1300.0, True, unattributed) == "start"
    short = policy(window="60s", sites_interval="1s")  # hold 60 s: the 600 s floor applies
    short.started(0.0)
    assert short.decide(599.0, True, unattributed) is None
    assert short.decide(600.0, True, unattributed) == "expired"
