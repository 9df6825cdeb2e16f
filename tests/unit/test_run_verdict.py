"""The run's verdict from its facts: pass only when judged and healthy (pure, explicit values)."""

from __future__ import annotations

import pytest

from soakd.run_verdict import HealthBounds, RunFacts, decide

MB = 1e6


def facts(**kw: object) -> RunFacts:
    base: dict[str, object] = {
        "duration_s": 600.0,
        "planned_s": 600.0,
        "iterations": 10_000,
        "judged": True,
        "warmup_end_s": 90.0,
        "stop_reason": "duration",
        "rss_growth_bytes": 2 * MB,
        "heap_growth_bytes": 1 * MB,
    }
    base.update(kw)
    return RunFacts(**base)  # type: ignore[arg-type]


def test_judged_healthy_run_passes() -> None:
    d = decide(facts())
    assert d.verdict == "pass" and d.reason is None and d.health == []


def test_run_ended_before_the_first_window_is_inconclusive_with_a_duration() -> None:
    d = decide(facts(duration_s=60.0, planned_s=60.0, judged=False, warmup_end_s=None))
    assert d.verdict == "inconclusive"
    assert d.reason is not None and "before the detector's first" in d.reason
    assert d.suggested_duration_s is not None and d.suggested_duration_s >= 120.0
    assert "run at least" in d.reason


def test_unjudged_run_that_grew_past_the_bound_is_a_leak() -> None:
    d = decide(facts(duration_s=60.0, judged=False, warmup_end_s=None, rss_growth_bytes=31 * MB))
    assert d.verdict == "leak"
    assert d.end_to_end is not None and d.end_to_end["exceeded"] == ["rss"]
    assert d.end_to_end["rss_growth_bytes"] == 31_000_000


def test_warmup_that_never_ended_is_said_and_the_duration_covers_warmup_max() -> None:
    d = decide(facts(duration_s=180.0, judged=False, warmup_end_s=None, rss_growth_bytes=1 * MB))
    assert d.verdict == "inconclusive"
    assert d.reason is not None and "warm-up had not ended" in d.reason
    assert d.suggested_duration_s is not None and d.suggested_duration_s >= 660.0


def test_growth_bound_is_configurable() -> None:
    f = facts(duration_s=60.0, judged=False, warmup_end_s=None, rss_growth_bytes=31 * MB)
    assert decide(f, HealthBounds(max_unjudged_growth_bytes=50 * MB)).verdict == "inconclusive"


@pytest.mark.parametrize(
    ("kw", "check"),
    [
        ({"errors": 772, "iterations": 772}, "error_rate"),
        ({"errors": 101, "iterations": 10_000}, "error_rate"),
        ({"errors": 500, "timeouts": 500, "iterations": 500}, "timeouts"),
        ({"longest_stall_s": 300.0}, "stall"),
    ],
)
def test_unhealthy_target_fails_the_run(kw: dict[str, object], check: str) -> None:
    d = decide(facts(**kw))
    assert d.verdict == "target_failed"
    assert [h["check"] for h in d.health] == [check]
    assert d.reason is not None and d.reason.startswith("unhealthy: ")


def test_error_rate_at_the_bound_is_healthy() -> None:
    assert decide(facts(errors=100, iterations=10_000)).verdict == "pass"


def test_unhealthy_outranks_a_leak_and_a_failure_outranks_both() -> None:
    assert decide(facts(leaks=True, errors=5000)).verdict == "target_failed"
    d = decide(facts(failed={"reason": "crash", "message": "worker exited with 1"}, leaks=True))
    assert d.verdict == "target_failed" and d.reason == "worker exited with 1"
    assert decide(facts(iterations=0)).verdict == "target_failed"
    assert decide(facts(driven=False, iterations=0)).verdict == "pass"


def test_abort_outranks_a_leak_and_ill_health() -> None:
    assert decide(facts(aborted=True, leaks=True)).verdict == "aborted"
    d = decide(facts(aborted=True, errors=5000))
    assert d.verdict == "aborted" and [h["check"] for h in d.health] == ["error_rate"]
    assert decide(facts(leaks=True)).verdict == "leak"


def test_interrupted_runs_are_never_pass() -> None:
    killed = decide(facts(finished=False, stop_reason=None, duration_s=27.8, judged=False))
    assert killed.verdict == "inconclusive" and "killed" in (killed.reason or "")
    stopped = decide(facts(stop_reason="signal SIGTERM", duration_s=400.0))
    assert stopped.verdict == "inconclusive"
    assert "interrupted (signal SIGTERM)" in (stopped.reason or "")
    assert facts(stop_reason="signal SIGINT").interrupted
    # A leak found before the signal is still the verdict so far.
    assert decide(facts(stop_reason="signal SIGTERM", leaks=True)).verdict == "leak"
