"""Detector: state changes over simulated runs with explicit timestamps (no clocks, no sleep)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import pytest

from soakd.config import Config, load_config
from soakd.detection import DetectionParams, Detector, Finding, SignalKind, SiteInfo
from soakd.detection.detector import native_wait
from soakd.detection.tracks import Track
from tests.unit.test_sampled_verdicts import _poisson

KB = 1024.0
MIB = 1024.0 * 1024.0
RSS0 = 80e6
HEAP0 = 20e6
SITE = "/app/handlers/cache.py:42"
SITE_INFO = SiteInfo(
    site=SITE,
    traceback=(SITE, "/app/handlers/search.py:17", "/app/main.py:5"),
    line="self._seen.append(result)",
)

Feed = Callable[[float, random.Random], float | None]
SiteFeed = Callable[[float, random.Random], tuple[float, float]]  # SITE's (bytes, live blocks)


@dataclass
class Run:
    detector: Detector
    changes: list[tuple[float, Finding]] = field(default_factory=list)

    def at(self, state: str, key: str | None = None) -> list[float]:
        """Times at which a finding (of ``key``) entered ``state``."""
        return [t for t, f in self.changes if f.state == state and key in (None, f.key)]

    def confirmed_keys(self) -> set[str]:
        return {f.key for f in self.detector.findings() if f.state == "confirmed"}


def simulate(
    feeds: Mapping[tuple[SignalKind, str], Feed],
    duration: float,
    *,
    dt: float = 1.0,
    every: float = 10.0,
    seed: int = 0,
    params: DetectionParams | None = None,
    detector: Detector | None = None,
    start: float = 0.0,
    traced: tuple[float, SiteFeed] | None = None,
) -> Run:
    """Feed samples every ``dt`` and analyse every ``every`` seconds of simulated time.

    ``traced``: when tracing started and SITE's feed, sampled every 2 s from then on.
    """
    rng = random.Random(seed)
    det = detector or Detector(params or DetectionParams())
    run = Run(det)
    steps = round((duration - start) / dt)
    per_analysis = max(1, round(every / dt))
    per_site = max(1, round(2.0 / dt))
    for i in range(steps + 1):
        t = start + i * dt
        for (signal, key), feed in feeds.items():
            value = feed(t, rng)
            if value is not None:
                det.add(signal, key, t, value, SITE_INFO if signal == "site" else None)
        if traced is not None and t >= traced[0] and i % per_site == 0:
            size, count = traced[1](t, rng)
            det.add("site", SITE, t, size, SITE_INFO, count)
        if i % per_analysis == 0:
            run.changes.extend((t, f) for f in det.analyze(t))
    return run


def noisy(level: float, sigma: float, rate: float = 0.0, onset: float = 0.0) -> Feed:
    return lambda t, r: level + rate * max(0.0, t - onset) + r.gauss(0.0, sigma)


def flat_process(**extra: Feed) -> dict[tuple[SignalKind, str], Feed]:
    feeds: dict[tuple[SignalKind, str], Feed] = {
        ("rss", "rss"): noisy(RSS0, 30e3),
        ("heap", "heap"): noisy(HEAP0, 5e3),
    }
    for name, feed in extra.items():
        signal, _, key = name.partition("__")
        feeds[(signal, key or signal)] = feed  # type: ignore[index]
    return feeds


def _ten_kib_a_second(t: float, r: random.Random) -> tuple[float, float]:
    """A site gaining one 10 KiB block a second since tracing started at 90 s."""
    return 10 * KB * (t - 90.0), t - 90.0


def _heap_growth_while_tracing(site: SiteFeed) -> Run:
    """The heap level grows 10 KB/s throughout; tracing from 60 s on sees ``site``."""
    feeds = flat_process(heap=noisy(HEAP0, 5e3, rate=10 * KB))
    return simulate(feeds, 400.0, seed=17, traced=(60.0, site))


def _large_block_site(malloc: Feed, rss: Feed) -> Run:
    """A site gaining 10 KiB blocks (one a second since tracing started at 90 s): the block
    count cannot corroborate it; malloc's bytes in use can, and RSS (here climbing 10 KB/s, as
    tracing's own work makes it) must then not be asked."""
    feeds = flat_process(rss=rss, malloc=malloc)
    return simulate(feeds, 240.0, seed=7, traced=(90.0, _ten_kib_a_second))


class TestLeaks:
    """Leaks of each kind are found, confirmed and described."""

    def test_heap_site_leak_confirmed_within_90s_of_warmup_end(self) -> None:
        feeds: dict[tuple[SignalKind, str], Feed] = {
            ("rss", "rss"): noisy(RSS0, 30e3, rate=12 * KB),
            ("heap", "heap"): noisy(HEAP0, 5e3, rate=10 * KB),
            ("site", SITE): lambda t, r: 10 * KB * t,
            ("site", "/app/other.py:9"): lambda t, r: 300e3 + r.gauss(0, 2e3),
        }
        run = simulate(feeds, 400.0)
        det = run.detector
        warmup = det.warmup_end()
        assert warmup == 60.0
        confirmed = run.at("confirmed", SITE)
        assert confirmed and confirmed[0] - warmup <= 90.0
        assert run.at("suspected", SITE)[0] < confirmed[0]
        found = det.findings()
        # The heap level says the same as the site, less precisely: only the site is listed.
        assert [(f.kind, f.key) for f in found] == [("heap", SITE)]
        leak = found[0]
        assert leak.site == SITE and leak.line == "self._seen.append(result)"
        assert leak.traceback == SITE_INFO.traceback
        assert leak.unit == "bytes"
        assert leak.slope_per_h == pytest.approx(10 * KB * 3600, rel=0.05)
        assert leak.first_detected_s == run.at("suspected", SITE)[0]
        assert leak.analyses >= 3
        assert any(s.startswith("heap leak") for s in leak.signals)
        assert leak.as_leak() == {
            "kind": "heap",
            "site": SITE,
            "traceback": list(SITE_INFO.traceback),
            "type": None,
            "slope_per_h": leak.slope_per_h,
            "unit": "bytes",
            "growth": leak.growth,
            "p_value": leak.p_value,
            "first_detected_s": leak.first_detected_s,
        }

    @pytest.mark.parametrize(("rate", "sigma"), [(1 * KB, 50e3), (10 * KB, 200e3), (100 * KB, 1e6)])
    def test_linear_heap_leaks_are_confirmed(self, rate: float, sigma: float) -> None:
        run = simulate(
            {
                ("rss", "rss"): noisy(RSS0, 30e3, rate=rate),
                ("heap", "heap"): noisy(HEAP0, sigma, rate),
            },
            1200.0,
            dt=2.0,
            every=30.0,
        )
        assert run.confirmed_keys() == {"heap"}
        [leak] = run.detector.findings()
        assert leak.kind == "heap" and leak.site is None
        assert leak.slope_per_h == pytest.approx(rate * 3600, rel=0.15)
        assert not run.at("cleared")

    def test_late_onset_leak_found_within_minutes(self) -> None:
        # Flat for 20 minutes, then 10 KB/s: the 30-minute window is mostly flat at first.
        feeds = flat_process(heap=noisy(HEAP0, 20e3, rate=10 * KB, onset=1200.0))
        run = simulate(feeds, 1800.0, dt=2.0, every=30.0)
        assert not [t for t in run.at("suspected") if t < 1200.0]
        confirmed = run.at("confirmed", "heap")
        assert confirmed and confirmed[0] - 1200.0 <= 300.0
        assert "heap" in run.confirmed_keys()

    @pytest.mark.parametrize("signal", ["fds", "threads", "tasks"])
    def test_count_leaks_one_every_five_seconds(self, signal: SignalKind) -> None:
        run = simulate({(signal, signal): lambda t, r: 12.0 + t // 5}, 300.0)
        confirmed = run.at("confirmed", signal)
        assert confirmed and confirmed[0] <= 60.0 + 90.0
        [leak] = run.detector.findings()
        assert (leak.kind, leak.unit) == (signal, "count")
        assert leak.slope_per_h == pytest.approx(720.0, rel=0.1)

    def test_native_leak_rss_grows_heap_flat(self) -> None:
        params = DetectionParams(native_min_window_s=300.0)
        feeds = flat_process(rss=noisy(RSS0, 30e3, rate=40 * KB))
        run = simulate(feeds, 900.0, dt=2.0, every=30.0, params=params)
        [leak] = run.detector.findings()
        assert (leak.kind, leak.key, leak.state) == ("native", "rss", "confirmed")
        # RSS-only growth at twice the bar: judged on a quarter of native_min_window_s, never
        # on less than the shortest window after warm-up.
        assert 60.0 + 60.0 <= run.at("suspected")[0] < 60.0 + 300.0
        assert any(s.startswith("heap flat") for s in leak.signals)
        assert leak.as_leak()["site"] is None

    def test_native_wait_falls_with_the_slope(self) -> None:
        """The native window is a ceiling: RSS growth just above the bar waits nearly all of
        it, growth far above it only the shortest window."""
        params = DetectionParams(native_min_window_s=300.0)
        bar = params.min_native_slope_bytes_per_h / 3600.0
        found = {}
        for ratio in (1.3, 4.0):
            feeds = flat_process(rss=noisy(RSS0, 5e3, rate=ratio * bar))
            run = simulate(feeds, 900.0, dt=2.0, every=10.0, params=params)
            found[ratio] = run.at("suspected")[0]
        assert found[4.0] <= 60.0 + 60.0 + 20.0  # the shortest window after warm-up
        assert found[1.3] >= 60.0 + 300.0 / 1.3**2  # at least (bar/slope)² of the ceiling
        assert native_wait(0.5 * bar, bar, params, 300.0) == 300.0  # below the bar: all of it

    def test_rss_growth_explained_by_heap_is_not_native(self) -> None:
        params = DetectionParams(native_min_window_s=300.0)
        feeds: dict[tuple[SignalKind, str], Feed] = {
            ("rss", "rss"): noisy(RSS0, 30e3, rate=40 * KB),
            ("heap", "heap"): noisy(HEAP0, 5e3, rate=38 * KB),
        }
        run = simulate(feeds, 900.0, dt=2.0, every=30.0, params=params)
        assert [(f.kind, f.key) for f in run.detector.findings()] == [("heap", "heap")]
        verdict = run.detector.last_verdict("rss")
        assert verdict is not None and "explained by Python heap" in verdict.reason

    def test_objects_reported_alone_but_not_next_to_a_heap_leak(self) -> None:
        alone = simulate(flat_process(type__Session=lambda t, r: 100.0 + t), 300.0)
        assert [(f.kind, f.type) for f in alone.detector.findings()] == [("objects", "Session")]

        feeds = flat_process(
            heap=noisy(HEAP0, 5e3, rate=10 * KB),
            type__Session=lambda t, r: 100.0 + t,
        )
        feeds[("site", SITE)] = lambda t, r: 10 * KB * t
        both = simulate(feeds, 300.0)
        kinds = [(f.kind, f.key) for f in both.detector.findings()]
        assert kinds == [("heap", SITE)]
        assert any(s.startswith("type:Session leak") for s in both.detector.findings()[0].signals)


class TestLeakFreeShapes:
    """Growth that is not a leak: pools, caches, warm-up, flushes, steps, churn."""

    def test_bounded_connection_pool_is_not_a_leak(self) -> None:
        run = simulate({("fds", "fds"): lambda t, r: 12.0 + min(t, 100.0) // 10}, 900.0, every=30.0)
        assert not run.at("confirmed")

    @pytest.mark.parametrize("seed", range(3))
    def test_steady_process_never_suspected(self, seed: int) -> None:
        run = simulate(flat_process(), 1800.0, dt=5.0, every=30.0, seed=seed)
        assert run.changes == []
        assert run.detector.warmup_end() == 60.0

    @pytest.mark.parametrize("seed", range(3))
    def test_allocator_creep_is_not_a_native_leak(self, seed: int) -> None:
        # RSS +3 KB/s for 10 minutes with a flat Python heap, then flat.
        feeds = flat_process(rss=lambda t, r: RSS0 + 3 * KB * min(t, 600.0) + r.gauss(0, 30e3))
        run = simulate(feeds, 1800.0, dt=5.0, every=30.0, seed=seed)
        assert not run.at("suspected")

    @pytest.mark.parametrize("seed", range(3))
    def test_interpreter_warmup_is_absorbed(self, seed: int) -> None:
        feeds = flat_process(
            heap=lambda t, r: HEAP0 + 5e6 * (1 - math.exp(-t / 30.0)) + r.gauss(0, 5e3),
            rss=lambda t, r: RSS0 + 8e6 * (1 - math.exp(-t / 40.0)) + r.gauss(0, 30e3),
        )
        run = simulate(feeds, 900.0, seed=seed, every=15.0)
        warmup = run.detector.warmup_end()
        assert warmup is not None and 120.0 <= warmup <= 300.0
        assert not run.at("confirmed")

    @pytest.mark.parametrize("seed", range(3))
    def test_cache_filled_during_warmup_never_confirmed(self, seed: int) -> None:
        feeds = flat_process(heap=lambda t, r: HEAP0 + 40 * KB * min(t, 110.0) + r.gauss(0, 5e3))
        run = simulate(feeds, 1200.0, seed=seed, every=10.0)
        assert not run.at("confirmed")

    def test_long_cache_fill_is_cleared_once_it_plateaus(self) -> None:
        # Filling for 7 minutes is indistinguishable from a leak until it stops; then it must clear.
        feeds = flat_process(heap=lambda t, r: HEAP0 + 20 * KB * min(t, 420.0) + r.gauss(0, 5e3))
        run = simulate(feeds, 1500.0, dt=2.0, every=30.0)
        cleared = run.at("cleared", "heap")
        assert cleared and cleared[0] <= 420.0 + 400.0
        assert run.detector.findings() == []

    @pytest.mark.parametrize("seed", range(3))
    def test_periodic_flush_sawtooth_never_confirmed(self, seed: int) -> None:
        feeds = flat_process(heap=lambda t, r: HEAP0 + 40e3 * (t % 60.0) + r.gauss(0, 5e3))
        run = simulate(feeds, 1800.0, dt=5.0, every=30.0, seed=seed)
        assert not run.at("confirmed")

    @pytest.mark.parametrize("seed", range(3))
    def test_one_off_load_step_never_confirmed(self, seed: int) -> None:
        feeds = flat_process(heap=lambda t, r: HEAP0 + (10e6 if t > 500 else 0.0) + r.gauss(0, 5e3))
        run = simulate(feeds, 1800.0, dt=5.0, every=30.0, seed=seed)
        assert not run.at("confirmed")

    @pytest.mark.parametrize("seed", range(3))
    def test_heavy_churn_never_confirmed(self, seed: int) -> None:
        state = {"x": 0.0}

        def churn(t: float, r: random.Random) -> float:
            state["x"] = 0.97 * state["x"] + r.gauss(0.0, 400e3)
            return HEAP0 + state["x"]

        feeds = flat_process(heap=churn, rss=lambda t, r: RSS0 + r.uniform(-5e6, 5e6))
        run = simulate(feeds, 1800.0, dt=2.0, every=30.0, seed=seed)
        assert not run.at("confirmed")


class TestWarmup:
    """The warm-up end: never before the floor, not held back by tracing's own growth."""

    def test_nothing_judged_before_warmup(self) -> None:
        det = Detector()
        run = simulate(flat_process(heap=noisy(HEAP0, 5e3, rate=100 * KB)), 59.0, detector=det)
        assert run.changes == []
        assert det.warmup_end() is None
        assert not det.suspicious(59.0)
        assert det.suspicious(59.0 + 60.0) is False  # no new data: still nothing to judge at 119
        simulate(flat_process(heap=noisy(HEAP0, 5e3, rate=100 * KB)), 130.0, detector=det, start=60)
        assert det.warmup_end() == 60.0
        assert det.suspicious(130.0)

    def test_rss_climb_after_tracing_starts_does_not_hold_back_the_warmup_end(self) -> None:
        # RSS climbs 10 MB over the minute after tracing starts at 90 s (the agent's and
        # tracemalloc's tables), then is flat: the warm-up end comes from the heap level, and RSS
        # is judged from its own settled point: no native leak.
        def rss(t: float, r: random.Random) -> float:
            return RSS0 + 10e6 * min(max(t - 90.0, 0.0), 60.0) / 60.0 + r.gauss(0, 30e3)

        params = DetectionParams(native_min_window_s=120.0)
        run = simulate(flat_process(rss=rss), 600.0, params=params)
        assert run.detector.warmup_end() == 60.0
        assert run.at("suspected") == [] and run.at("confirmed") == []

    def test_heap_step_at_a_discontinuity_does_not_hold_back_the_warmup_end(self) -> None:
        # Tracing starts at 100 s: soakd's own tables add 1.8 MB to the block-based heap level in
        # one step, marked as a discontinuity; the warm-up end is still the floor.
        det = Detector()
        step = 1.8e6

        def heap(t: float, r: random.Random) -> float:
            return HEAP0 + (step if t >= 100.0 else 0.0) + r.gauss(0, 5e3)

        simulate(flat_process(heap=heap), 99.0, detector=det, every=1000.0)
        det.mark_discontinuity("heap", 100.0)
        simulate(flat_process(heap=heap), 200.0, detector=det, start=100.0, every=1000.0)
        assert det.warmup_end() is None
        det.analyze(200.0)
        assert det.warmup_end() == 60.0


class TestStateAndBounds:
    """Finding states, bounded tracking, gaps and discontinuities, ordering."""

    def test_confirmed_leak_that_stops_is_cleared(self) -> None:
        feeds = flat_process(heap=lambda t, r: HEAP0 + 10 * KB * min(t, 400.0) + r.gauss(0, 5e3))
        run = simulate(feeds, 1000.0, dt=2.0, every=20.0)
        confirmed, cleared = run.at("confirmed", "heap"), run.at("cleared", "heap")
        assert confirmed and cleared and confirmed[0] < 400.0 < cleared[0]
        last = [f for _, f in run.changes][-1]
        assert last.state == "cleared" and last.kind == "heap"

    def test_site_tracking_is_bounded(self) -> None:
        det = Detector(DetectionParams(max_sites=200, max_types=50))
        for i in range(100_000):
            det.add("site", f"/app/gen{i}.py:1", i * 0.01, float(i % 1000))
        for i in range(10_000):
            det.add("type", f"T{i}", i * 0.01, 1.0)
        assert det.tracked("site") <= 200
        assert det.tracked("type") <= 50

    def test_active_finding_survives_eviction(self) -> None:
        det = Detector(DetectionParams(max_sites=20))
        simulate({("site", SITE): lambda t, r: 10 * KB * t}, 200.0, detector=det)
        assert [f.key for f in det.findings()] == [SITE]
        for i in range(1000):
            det.add("site", f"/app/big{i}.py:1", 200.0 + i * 0.001, 1e9)
        assert det.tracked("site") <= 20
        assert [f.key for f in det.findings()] == [SITE]

    def test_site_that_disappears_keeps_its_state_and_gap_restarts_its_series(self) -> None:
        det = Detector()
        run = simulate({("site", SITE): lambda t, r: 10 * KB * t}, 200.0, detector=det)
        assert run.at("confirmed", SITE)
        # No samples for 10 minutes (site left the top N): no verdict, no state change.
        assert det.analyze(500.0) == []
        assert det.analyze(800.0) == []
        # Tracing restarted: bytes count from zero again. Judged from the gap on, still a leak.
        later = simulate(
            {("site", SITE): lambda t, r: 10 * KB * (t - 800.0)}, 1000.0, detector=det, start=800.0
        )
        assert later.changes == []
        assert [(f.key, f.state) for f in det.findings()] == [(SITE, "confirmed")]

    def test_mark_discontinuity_restarts_judgement(self) -> None:
        det = Detector()
        simulate({("site", SITE): lambda t, r: 10 * KB * t}, 200.0, detector=det)
        det.mark_discontinuity("site", 201.0)
        # Fresh segment of 20 s: too short to judge, so nothing changes.
        simulate({("site", SITE): lambda t, r: 100.0}, 220.0, detector=det, start=201.0)
        assert det.last_verdict("site", SITE) is not None
        assert det.last_verdict("site", SITE).pattern == "insufficient"  # type: ignore[union-attr]

    def test_bad_samples_are_dropped_and_counted(self) -> None:
        det = Detector()
        det.add("heap", "heap", 10.0, 1.0)
        det.add("heap", "heap", 5.0, 1.0)
        det.add("heap", "heap", 11.0, float("nan"))
        assert det.dropped == 2
        with pytest.raises(ValueError, match="unknown signal 'disk'"):
            det.add("disk", "disk", 1.0, 1.0)  # type: ignore[arg-type]

    def test_findings_most_certain_first(self) -> None:
        feeds = flat_process(
            fds=lambda t, r: 12.0 + t // 5,
            type__Widget=lambda t, r: 100.0 + t,
        )
        feeds[("site", "/app/small.py:1")] = lambda t, r: 2 * KB * t
        feeds[("site", SITE)] = lambda t, r: 20 * KB * t
        # Threads are sampled from 130 s on: only two analyses have seen them grow by 200 s.
        feeds[("threads", "threads")] = lambda t, r: None if t < 130 else 4.0 + t // 5
        run = simulate(feeds, 200.0)
        found = run.detector.findings()
        order = [(f.state, f.kind, f.key) for f in found]
        assert order[:3] == [
            ("confirmed", "heap", SITE),
            ("confirmed", "heap", "/app/small.py:1"),
            ("confirmed", "fds", "fds"),
        ]
        assert ("suspected", "threads", "threads") in order[3:]
        assert all(f.kind != "objects" for f in found)  # explained by the heap sites


class TestSuspicion:
    """Suspicion, which only turns tracing on: eager, from the floor on."""

    def test_suspicious_until_a_site_explains_the_growth(self) -> None:
        det = Detector()
        feeds = flat_process(heap=noisy(HEAP0, 5e3, rate=10 * KB))
        simulate(feeds, 150.0, detector=det)
        assert det.suspicious(150.0)
        feeds[("site", SITE)] = lambda t, r: 10 * KB * (t - 150.0)
        simulate(feeds, 300.0, detector=det, start=151.0)
        assert any(f.key == SITE for f in det.findings())
        assert not det.suspicious(300.0)

    def test_steady_process_is_not_suspicious(self) -> None:
        det = Detector()
        simulate(flat_process(), 300.0, detector=det)
        assert not det.suspicious(300.0)

    def test_suspicion_at_the_floor_on_the_window_just_before(self) -> None:
        # Judged at the floor on the 20 s before it, long before the warm-up end is decided (at
        # floor + settle): tracing starts then, so the site has data by the time judging begins.
        det = Detector()
        simulate(
            flat_process(heap=noisy(HEAP0, 5e3, rate=10 * KB)), 60.0, detector=det, every=100.0
        )
        assert det.warmup_end() is None
        assert not det.suspicious(59.0)  # never before the floor
        assert det.suspicious(60.0)
        for seed in range(5):
            flat = Detector()
            simulate(flat_process(), 80.0, detector=flat, every=100.0, seed=seed)
            assert not flat.suspicious(60.0) and not flat.suspicious(80.0)

    def test_rss_growth_raises_suspicion_far_below_the_native_bar(self) -> None:
        # 10 KiB objects, one a second: the block count barely moves, RSS grows 10 KB/s (36 MiB/h,
        # under the 64 MiB/h native bar): enough to start tracing.
        det = Detector()
        feeds = flat_process(rss=noisy(RSS0, 4e3, rate=10 * KB))
        simulate(feeds, 100.0, detector=det, every=100.0)
        assert det.suspicious(100.0)
        creep = Detector()
        simulate(
            flat_process(rss=noisy(RSS0, 4e3, rate=2 * KB)), 100.0, detector=creep, every=100.0
        )
        assert not creep.suspicious(100.0)


class TestSiteCorroboration:
    """A traced site's growth must show in the process as a whole."""

    def test_site_leak_confirmed_on_a_short_window_when_the_process_grows(self) -> None:
        # Tracing started at 90 s: the site has 30 s of data when the warm-up end is decided.
        feeds = flat_process(heap=noisy(HEAP0, 2e3, rate=20 * 80.0))  # 20 blocks/s × 80 B
        site: SiteFeed = lambda t, r: (10 * KB * (t - 90.0), 20.0 * (t - 90.0))  # noqa: E731
        run = simulate(feeds, 170.0, seed=3, traced=(90.0, site))
        det = run.detector
        assert det.warmup_end() == 60.0
        confirmed = run.at("confirmed", SITE)
        assert confirmed and confirmed[0] <= 150.0  # within 90 s of the warm-up end

    def test_site_leak_is_confirmed_as_the_warmup_end_is_decided(self) -> None:
        # Traced from the start: the site is judged from the floor on while the warm-up end is
        # still open (suspected only), so its streak is long enough the moment it is decided.
        feeds = flat_process(heap=noisy(HEAP0, 2e3, rate=20 * 80.0))
        site: SiteFeed = lambda t, r: (10 * KB * t, 20.0 * t)  # noqa: E731
        run = simulate(feeds, 200.0, seed=4, traced=(0.0, site))
        assert run.detector.warmup_end() == 60.0
        suspected, confirmed = run.at("suspected", SITE), run.at("confirmed", SITE)
        assert suspected and suspected[0] < 110.0  # before the warm-up end was decided
        assert confirmed and confirmed[0] <= 120.0  # within 60 s of the floor

    def test_a_site_streak_over_a_long_warmup_starts_again(self) -> None:
        # The level warms up for minutes (3 MB, τ = 40 s) on top of the leak: the site's early
        # streak was judged on windows holding the warm-up, so it does not confirm at the
        # decision but on later data.
        heap = lambda t, r: (  # noqa: E731
            HEAP0 + 3e6 * (1.0 - math.exp(-t / 40.0)) + 1600.0 * t + r.gauss(0, 2e3)
        )
        site: SiteFeed = lambda t, r: (10 * KB * t, 20.0 * t)  # noqa: E731
        feeds = flat_process(heap=heap)
        before = simulate(feeds, 240.0, seed=6, traced=(0.0, site)).detector
        assert before.warmup_end() is None  # decided at the analysis at 250 s
        run = simulate(feeds, 320.0, seed=6, traced=(0.0, site))
        end = run.detector.warmup_end()
        assert end is not None and end > 60.0
        confirmed = run.at("confirmed", SITE)
        assert confirmed and confirmed[0] > 250.0

    def test_turnover_at_a_site_is_not_a_leak(self) -> None:
        # A full LRU cache after tracing starts: its traced bytes rise until every entry is a new
        # one, while the block count and RSS of the process stay flat.
        def site(t: float, r: random.Random) -> tuple[float, float]:
            new = min(t - 90.0, 200.0) * 20.0  # 4000 entries of 1 KiB, replaced at 20/s
            return new * 1100.0, new

        run = simulate(flat_process(), 300.0, seed=5, traced=(90.0, site))
        assert run.at("confirmed") == []
        verdict = run.detector.last_verdict("site", SITE)
        assert verdict is not None and not verdict.is_leak

    @staticmethod
    def _lru_fill(until: float) -> Run:
        # An LRU cache fills at 20 entries/s from 10 s until ``until``, then holds. Tracing
        # starts at 60 s: its site grows until every entry is one made since. The process grew
        # with it only until ``until``.
        held = until - 10.0
        fill = lambda t: 20.0 * min(max(t - 10.0, 0.0), held)  # noqa: E731  (entries held)
        feeds = flat_process(heap=lambda t, r: HEAP0 + fill(t) * 2 * 80.0 + r.gauss(0, 2e3))

        def site(t: float, r: random.Random) -> tuple[float, float]:
            new = min((t - 60.0) * 20.0, 20.0 * held)  # entries allocated since tracing started
            return new * 1100.0, new

        return simulate(feeds, 300.0, every=5.0, seed=13, traced=(60.0, site))

    def test_cache_filling_as_tracing_starts_raises_no_alarm(self) -> None:
        # The fill stops 40 s after the floor, inside the span the warm-up end is decided on: a
        # site window reaching back into the fill must not count as corroborated.
        run = self._lru_fill(until=100.0)
        assert [(t, f.kind, f.state) for t, f in run.changes if f.state == "confirmed"] == []

    def test_cache_filling_past_the_warmup_decision_is_cleared_once_it_holds(self) -> None:
        # The fill stops 50 s after the floor, when the warm-up end is decided: until then it is
        # a steady rise at one site, corroborated by the process, as a leak's would be (a leak
        # is confirmed this early). Once the site holds, the finding is cleared: one episode,
        # nothing left at the end.
        run = self._lru_fill(until=110.0)
        confirmed = run.at("confirmed", SITE)
        cleared = run.at("cleared", SITE)
        assert len(confirmed) == 1 and len(cleared) == 1 and cleared[0] > confirmed[0]
        assert run.detector.findings() == []

    def test_large_blocks_leak_is_corroborated_by_rss_not_blocks(self) -> None:
        # One 10 KiB block a second: the block rate is lost in the noise, RSS carries the growth;
        # and with the site explaining RSS, no native leak is reported.
        params = DetectionParams(native_min_window_s=60.0, min_native_slope_bytes_per_h=MIB)
        feeds = flat_process(rss=noisy(RSS0, 4e3, rate=10 * KB))
        run = simulate(feeds, 240.0, seed=7, params=params, traced=(90.0, _ten_kib_a_second))
        det = run.detector
        assert SITE in run.detector.findings()[0].key
        assert run.at("confirmed", SITE)
        assert not [f for f in det.findings() if f.kind == "native"]

    def test_heap_level_waits_for_a_site_while_tracing(self) -> None:
        # No traced site explains the growth (spread thinly over many lines): the heap-level
        # finding is confirmed on its own, but only after the attribution wait.
        run = _heap_growth_while_tracing(lambda t, r: (300e3 + r.gauss(0.0, 2e3), 1000.0))
        suspected, confirmed = run.at("suspected", "heap"), run.at("confirmed", "heap")
        assert suspected and confirmed
        assert confirmed[0] - suspected[0] >= DetectionParams().attribution_wait_s

    def test_heap_level_defers_to_the_leaking_site(self) -> None:
        run = _heap_growth_while_tracing(lambda t, r: (10 * KB * (t - 60.0), 1000.0))
        assert run.at("confirmed", SITE)
        assert [f.key for f in run.detector.findings()] == [SITE]
        # The level is never news of its own: one confirmation, the site's (one alert).
        assert run.at("confirmed", "heap") == []

    def test_large_blocks_leak_is_corroborated_by_malloc(self) -> None:
        run = _large_block_site(noisy(8e6, 2e3, rate=10 * KB), noisy(RSS0, 4e3, rate=10 * KB))
        assert run.at("confirmed", SITE)

    def test_large_blocks_are_not_corroborated_by_the_block_count_when_malloc_is_flat(
        self,
    ) -> None:
        # 1 KiB blocks at 5 a second at the site (a turnover's estimate drifting up), the block
        # count creeping by as many (the interpreter's own), malloc's bytes flat: no leak.
        feeds = flat_process(heap=noisy(HEAP0, 500.0, rate=5 * 80.0), malloc=noisy(8e6, 2e3))
        site: SiteFeed = lambda t, r: (5 * 1057.0 * (t - 90.0), 5.0 * (t - 90.0))  # noqa: E731
        run = simulate(feeds, 240.0, seed=9, traced=(90.0, site))
        assert run.at("confirmed", SITE) == []
        # The same with malloc's bytes growing as the site does: a leak.
        feeds = flat_process(
            heap=noisy(HEAP0, 500.0, rate=5 * 80.0), malloc=noisy(8e6, 2e3, rate=5 * 1057.0)
        )
        assert simulate(feeds, 240.0, seed=9, traced=(90.0, site)).at("confirmed", SITE)

    def test_large_blocks_turnover_is_not_corroborated_by_rss_when_malloc_is_flat(self) -> None:
        # A full cache of 10 KiB values replaced since tracing started: malloc's bytes stay flat.
        run = _large_block_site(noisy(8e6, 2e3), noisy(RSS0, 4e3, rate=10 * KB))
        assert run.at("suspected", SITE) == [] and run.at("confirmed", SITE) == []
        verdict = run.detector.last_verdict("site", SITE)
        assert verdict is not None and verdict.reason.startswith("turnover")

    def test_allocator_creep_does_not_corroborate_a_small_turnover_site(self) -> None:
        # Keys of a full LRU cache replaced at 20/s (560 B/s at their line since tracing started)
        # while RSS creeps 3 KB/s and the block count is flat: not a leak.
        def site(t: float, r: random.Random) -> tuple[float, float]:
            new = min(t - 90.0, 250.0) * 20.0
            return new * 28.0, new

        feeds = flat_process(rss=noisy(RSS0, 4e3, rate=3 * KB))
        run = simulate(feeds, 400.0, seed=11, traced=(90.0, site))
        assert [f.key for _, f in run.changes if f.state == "confirmed"] == []


class TestParams:
    """Settings: validated when built directly, derived from the config."""

    def test_params_validated(self) -> None:
        with pytest.raises(ValueError, match='"warmup_max_s" must be >= warmup_floor_s'):
            DetectionParams(warmup_floor_s=100.0, warmup_max_s=50.0)
        with pytest.raises(ValueError, match='"confidence"'):
            DetectionParams(confidence=1.0)
        with pytest.raises(ValueError, match='"confirm_after" must be >= 1: 0'):
            DetectionParams(confirm_after=0)

    def test_from_config_maps_and_derives(self) -> None:
        config = load_config(
            None,
            [
                "detection.warmup='90s'",
                "detection.warmup_max='15m'",
                "detection.window='20m'",
                "detection.min_heap_slope='2MiB'",
                "detection.min_native_slope='32MiB'",
                "detection.native_window='5m'",
                "detection.min_count_slope=10.0",
                "detection.min_object_slope=300.0",
                "detection.confidence=0.95",
                "detection.confirm_after=4",
                "sampling.sites_interval='15s'",
            ],
        )
        params = DetectionParams.from_config(config.detection, config.sampling)
        assert params.warmup_floor_s == 90.0
        assert params.warmup_settle_s == 90.0  # as much data as the floor
        assert params.warmup_max_s == 900.0
        assert params.window_s == 1200.0
        assert params.min_window_s == 60.0  # min(60 s, window / 2)
        assert params.min_heap_slope_bytes_per_h == 2.0 * MIB
        assert params.min_native_slope_bytes_per_h == 32.0 * MIB
        assert params.native_min_window_s == 300.0
        assert params.min_count_slope_per_h == 10.0
        assert params.min_object_slope_per_h == 300.0
        assert params.confidence == 0.95
        assert params.confirm_after == 4
        assert params.tracing_hold_s == 180.0  # a dozen site samples: 12 × 15 s
        # Everything else keeps the detector's own defaults.
        assert params.max_sites == DetectionParams().max_sites
        assert params.attribution_wait_s == DetectionParams().attribution_wait_s

    def test_from_config_short_window(self) -> None:
        config = load_config(None, ["detection.window='90s'", "sampling.sites_interval='2s'"])
        params = DetectionParams.from_config(config.detection, config.sampling)
        assert params.min_window_s == 45.0  # half the window when that is under a minute
        assert params.tracing_hold_s == 90.0  # never longer than the window (under 120 s)

    def test_from_config_defaults(self) -> None:
        config = Config()
        params = DetectionParams.from_config(config.detection, config.sampling)
        assert params.warmup_floor_s == params.warmup_settle_s == 60.0
        assert (params.window_s, params.min_window_s) == (1800.0, 60.0)
        assert params.tracing_hold_s == 120.0


def test_a_sampled_site_whose_growth_is_within_its_sampling_noise_is_flat() -> None:
    from soakd.analysis.verdicts import SeriesVerdict
    from soakd.detection.corroboration import site_verdict
    from soakd.detection.tracks import TrackTable
    from soakd.detection.windows import Thresholds

    params = DetectionParams()
    th = Thresholds.from_params(params)
    interval = 512 * 1024.0

    def judged(growth: float, level: float) -> SeriesVerdict:
        tracks = TrackTable(params)
        for i in range(31):  # 300 s of site samples, every 10 s
            t = float(i * 10)
            value = level + growth * t / 300.0
            # Nothing freed: the churn is the new samples' squared weights (interval² each).
            tracks.add("site", "app.py:1", t, value, noise=(interval * value, interval * value))
        track = tracks.get("site", "app.py:1")
        assert track is not None
        slope = growth / 300.0
        leak = SeriesVerdict("leak", slope, 0.9 * slope, 1e-6, growth, "rises", 31, 300.0)
        return site_verdict(tracks, track, leak, 300.0, params, th)

    # 1 MiB over a 20 MiB site sampled every 512 KiB: two samples, within the noise.
    noisy = judged(1024.0**2, 20 * 1024.0**2)
    assert noisy.pattern == "flat" and "sampling noise" in noisy.reason
    # 20 MiB from nothing: about 40 samples' worth, far out of the noise.
    assert judged(20 * 1024.0**2, 0.0).is_leak


def _sampled_track(level: Callable[[float], float], seconds: float, seed: int) -> Track:
    """A sampled site every 5 s from 0: each new sample stands for 64 KiB (Poisson count)."""
    from soakd.detection.tracks import TrackTable

    interval = 64 * 1024.0
    rng = random.Random(seed)
    tracks = TrackTable(DetectionParams())
    samples, weights, t = 0, 0.0, 0.0
    while t <= seconds:
        new = _poisson(rng, max(level(t + 5.0) - level(t), 0.0) / interval)
        samples += new
        weights += new * interval**2
        value = samples * interval
        tracks.add("site", "app.py:1", t, value, noise=(interval * value, weights))
        t += 5.0
    track = tracks.get("site", "app.py:1")
    assert track is not None
    return track


def test_growth_turned_sees_a_sampled_leak_stop_and_never_a_steady_one() -> None:
    from soakd.analysis.verdicts import SeriesVerdict
    from soakd.detection.findings import growth_turned

    rate = 5 * KB  # confirmed at 100 s with its lower bound at 60 % of the rate
    confirmed = SeriesVerdict("leak", rate, 0.6 * rate, 1e-6, 5e5, "rises", 20, 100.0)
    turned = 0
    for seed in range(40):
        stops = _sampled_track(lambda t: rate * min(t, 200.0), 520.0, seed)
        stops.confirmed_s = 100.0
        assert not growth_turned(stops, confirmed, 190.0, 0.01 / 3)  # still growing
        # 320 s after it stopped: 7 samples of 64 KiB expected at half the lower bound, none.
        turned += growth_turned(stops, confirmed, 520.0, 0.01 / 3)
    assert turned >= 38
    false = 0
    for seed in range(100):
        steady = _sampled_track(lambda t: rate * t, 3600.0, 1000 + seed)
        steady.confirmed_s = 100.0
        false += any(
            growth_turned(steady, confirmed, now, 0.01 / 3) for now in range(200, 3601, 100)
        )
    assert false <= 3


def test_blocks_just_over_512_bytes_are_corroborated_by_malloc_whatever_the_slopes_ratio() -> None:
    # 513 B blocks at 20 a second (a 10 KB/s leak, malloc's blocks): malloc's bytes grow as
    # the site does, the block count is flat. The site's block count has a stray start, so the
    # ratio of its two fitted slopes reads 460 B a block (pymalloc's side of 512 B); its latest
    # estimates say 513 B. Judged by the slopes' ratio, this leak read as turnover.
    from soakd.analysis.verdicts import SeriesVerdict
    from soakd.detection.corroboration import site_verdict
    from soakd.detection.tracks import TrackTable
    from soakd.detection.windows import Thresholds

    params = DetectionParams()
    th = Thresholds.from_params(params)
    tracks = TrackTable(params)
    r = random.Random(5)
    for i in range(61):  # 120 s, every 2 s
        t = 60.0 + 2.0 * i
        tracks.add("heap", "heap", t, HEAP0 + r.gauss(0.0, 4e3))
        tracks.add("malloc", "malloc", t, 8e6 + 10_260.0 * (t - 60.0) + r.gauss(0.0, 2e3))
        blocks = 1000.0 + 20.0 * (t - 60.0)
        count = blocks + 2.3 * (t - 60.0) if i else 0.0  # count slope 22.3/s, not 20
        tracks.add("site", "app.py:1", t, 513.0 * blocks, count=max(count, 1.0))
    track = tracks.get("site", "app.py:1")
    assert track is not None and track.counts is not None
    slope = 10_260.0
    leak = SeriesVerdict("leak", slope, 0.9 * slope, 1e-9, slope * 120.0, "rises", 61, 120.0)
    v = site_verdict(tracks, track, leak, 180.0, params, th)
    assert v.is_leak, v.reason
    # The same site while malloc stays flat is turnover (the block count cannot speak for it).
    flat = TrackTable(params)
    for i in range(61):
        t = 60.0 + 2.0 * i
        flat.add("heap", "heap", t, HEAP0 + r.gauss(0.0, 4e3))
        flat.add("malloc", "malloc", t, 8e6 + r.gauss(0.0, 2e3))
        flat.add(
            "site",
            "app.py:1",
            t,
            513.0 * (1000.0 + 20.0 * (t - 60.0)),
            count=1000.0 + 20.0 * (t - 60.0),
        )
    ftrack = flat.get("site", "app.py:1")
    assert ftrack is not None
    assert site_verdict(flat, ftrack, leak, 180.0, params, th).reason.startswith("turnover")


def test_a_site_is_corroborated_by_the_heap_levels_own_leak_verdict() -> None:
    # 50 B blocks at 20 a second (1 KB/s) under a heap level too noisy for the lower bound of
    # its newest 30 s to show 10 blocks/s, while its whole window is judged a leak: the site is
    # where that growth is (before, the level was confirmed alone and the site 50 s later).
    from soakd.analysis.verdicts import SeriesVerdict
    from soakd.detection.corroboration import site_verdict
    from soakd.detection.tracks import TrackTable
    from soakd.detection.windows import Thresholds

    params = DetectionParams()
    th = Thresholds.from_params(params)
    r = random.Random(3)

    def judged(level_verdict: SeriesVerdict | None) -> SeriesVerdict:
        tracks = TrackTable(params)
        for i in range(61):
            t = 60.0 + 2.0 * i
            tracks.add("heap", "heap", t, HEAP0 + 20 * 80.0 * t + r.gauss(0.0, 3e4))
            tracks.add("malloc", "malloc", t, 8e6 + r.gauss(0.0, 2e3))
            tracks.add("site", "app.py:1", t, 1000.0 * (t - 60.0), count=20.0 * (t - 60.0))
        heap = tracks.get("heap")
        track = tracks.get("site", "app.py:1")
        assert heap is not None and track is not None
        heap.verdict = level_verdict
        leak = SeriesVerdict("leak", 1000.0, 800.0, 1e-9, 1.2e5, "rises", 61, 120.0)
        return site_verdict(tracks, track, leak, 180.0, params, th)

    assert judged(None).reason.startswith("turnover")
    level = SeriesVerdict("leak", 1600.0, 900.0, 1e-6, 1.9e5, "sustained growth", 61, 120.0)
    assert judged(level).is_leak
    assert judged(replace(level, pattern="flat")).reason.startswith("turnover")
