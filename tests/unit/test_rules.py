"""Threshold rules: pure evaluation with explicit timestamps (no clock, no sleeping)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from soakd.config import Config, GuardConfig, Rule
from soakd.rules import Breach, RuleEngine, guard_rules, rules_from_config


def rule(**fields: Any) -> Rule:
    return Rule.model_validate(fields)


def feed(engine: RuleEngine, metric: str, points: Sequence[tuple[float, float]]) -> list[Breach]:
    """Observe each point and evaluate right after it, as the supervisor does."""
    fired: list[Breach] = []
    for t, value in points:
        engine.observe(t, {metric: value})
        fired.extend(engine.evaluate(t))
    return fired


def test_above_fires_on_latest_value_and_reports_the_breach() -> None:
    engine = RuleEngine([rule(metric="rss_bytes", above="1GiB", action="abort")], grace_s=0)
    assert feed(engine, "rss_bytes", [(1, 2**29), (2, 2**30)]) == []  # equal is not above
    [breach] = feed(engine, "rss_bytes", [(3, 2**30 + 1)])
    assert breach == Breach(
        rule="rss_bytes above 1.07374e+09",
        metric="rss_bytes",
        value=float(2**30 + 1),
        limit=float(2**30),
        action="abort",
        at_s=3,
    )
    assert breach.as_dict() == {
        "rule": "rss_bytes above 1.07374e+09",
        "value": float(2**30 + 1),
        "limit": float(2**30),
        "action": "abort",
        "at_s": 3,
    }
    assert breach.event_fields()["metric"] == "rss_bytes"


def test_below_fires_only_under_the_limit() -> None:
    engine = RuleEngine([rule(metric="error_rate", below=0.5, name="too good")], grace_s=0)
    assert feed(engine, "error_rate", [(1, 0.9), (2, 0.5)]) == []
    [breach] = feed(engine, "error_rate", [(3, 0.1)])
    assert (breach.rule, breach.value, breach.action) == ("too good", 0.1, "alert")


def test_latency_limits_are_milliseconds() -> None:
    engine = RuleEngine([rule(metric="latency_p99_ms", above="2s")], grace_s=0)
    assert feed(engine, "latency_p99_ms", [(1, 1999.0)]) == []
    assert len(feed(engine, "latency_p99_ms", [(2, 2001.0)])) == 1


def test_metric_without_data_never_fires() -> None:
    engine = RuleEngine(
        [rule(metric="fds", below=1), rule(metric="throughput_drop", above=0.5)], grace_s=0
    )
    engine.observe(5, {"rss_bytes": 1.0, "unknown": 3.0})
    assert engine.evaluate(1_000_000) == []


def test_for_ignores_a_short_burst_and_fires_on_a_sustained_one() -> None:
    engine = RuleEngine([rule(metric="fds", above=100, **{"for": "1m"})], grace_s=0)
    burst = [(t, 500.0) for t in range(0, 50, 10)] + [(50, 10.0)]
    assert feed(engine, "fds", burst) == []
    sustained = [(t, 500.0) for t in range(60, 200, 10)]
    fired = feed(engine, "fds", sustained)
    assert [b.at_s for b in fired] == [120]  # true from t=60 and still true 60 s later


def test_windowed_rule_fires_in_hour_seven_after_six_healthy_hours() -> None:
    engine = RuleEngine(
        [rule(metric="latency_p99_ms", above=500, window="30m", action="abort")], grace_s=60
    )
    healthy = [(float(t), 100.0 + (t % 7) * 20) for t in range(0, 6 * 3600, 10)]
    assert feed(engine, "latency_p99_ms", healthy) == []
    # short spikes inside the healthy hours do not move a 30-minute mean over the limit
    spikes = [(6 * 3600.0 + t, 5000.0 if t % 600 == 0 else 100.0) for t in range(0, 1800, 10)]
    assert feed(engine, "latency_p99_ms", spikes) == []
    start = 6 * 3600.0 + 1800
    bad = [(start + t, 1000.0) for t in range(0, 3600, 10)]
    [breach] = feed(engine, "latency_p99_ms", bad)
    # the 30-minute mean crosses 500 once about 4/9 of the window is at 1000 ms
    assert start + 10 * 60 < breach.at_s < start + 16 * 60
    assert 500 < breach.value < 520
    # the window holds 30 minutes of 10-second samples, not six hours of them
    assert engine.retained_samples() <= 181


def test_grace_ignores_warmup_and_rule_grace_overrides_engine_grace() -> None:
    engine = RuleEngine(
        [
            rule(metric="heap_bytes", above=100, name="default grace"),
            rule(metric="heap_bytes", above=100, grace="10s", name="short grace"),
        ],
        grace_s=60,
    )
    fired = feed(engine, "heap_bytes", [(t, 1000.0) for t in range(0, 100, 5)])
    assert [(b.rule, b.at_s) for b in fired] == [("short grace", 10), ("default grace", 60)]


def test_for_counts_only_from_the_end_of_grace() -> None:
    engine = RuleEngine([rule(metric="threads", above=10, **{"for": 30})], grace_s=60)
    fired = feed(engine, "threads", [(t, 50.0) for t in range(0, 200, 10)])
    assert [b.at_s for b in fired] == [90]


def test_fired_rule_rearms_only_after_the_condition_cleared() -> None:
    engine = RuleEngine([rule(metric="tasks", above=10)], grace_s=0)
    assert len(feed(engine, "tasks", [(t, 50.0) for t in range(0, 100)])) == 1
    assert engine.active() == ["tasks above 10"]
    assert feed(engine, "tasks", [(100, 5.0)]) == []
    assert engine.active() == []
    assert [b.at_s for b in feed(engine, "tasks", [(101, 20.0), (102, 30.0)])] == [101]


def test_breach_is_not_lost_when_condition_clears_before_evaluate() -> None:
    engine = RuleEngine([rule(metric="fds", above=10)], grace_s=0)
    engine.observe(1, {"fds": 50.0})
    engine.observe(2, {"fds": 1.0})
    assert [b.at_s for b in engine.evaluate(2)] == [1]
    assert engine.evaluate(3) == []  # each breach is returned once


def test_throughput_drop_is_relative_to_the_reference_median() -> None:
    engine = RuleEngine([rule(metric="throughput_drop", above=0.5)], grace_s=60)
    # warm-up at a very different level must not become the reference
    warmup = [(float(t), 1.0) for t in range(0, 60, 10)]
    # reference period [60, 360): median 100 (one outlier does not move it)
    reference = [(60.0 + t, 1000.0 if t == 0 else 100.0) for t in range(0, 300, 10)]
    steady = [(360.0 + t, 60.0) for t in range(0, 600, 10)]  # a 40 % drop: under the limit
    assert feed(engine, "throughput_per_s", warmup + reference + steady) == []
    [breach] = feed(engine, "throughput_per_s", [(1000.0, 40.0)])
    assert breach.metric == "throughput_drop"
    assert breach.value == pytest.approx(0.6)
    assert breach.at_s == 1000.0


def test_throughput_drop_reference_period_follows_the_window() -> None:
    engine = RuleEngine([rule(metric="throughput_drop", above=0.5, window="1m")], grace_s=0)
    reference = [(float(t), 10.0) for t in range(0, 60, 10)]
    assert feed(engine, "throughput_per_s", reference) == []
    # the window holds drops measured after the reference: mean(0, 1) = 0.5 is not above
    assert feed(engine, "throughput_per_s", [(60.0, 10.0), (70.0, 0.0)]) == []
    fired = feed(engine, "throughput_per_s", [(t, 0.0) for t in (80.0, 90.0, 100.0)])
    assert [b.at_s for b in fired] == [80.0]
    assert fired[0].value == pytest.approx(2 / 3)


def test_leak_rule_fires_per_kind_and_honours_grace() -> None:
    engine = RuleEngine(
        [
            rule(metric="leak", kind="fds", action="abort"),
            rule(metric="leak", name="any leak", grace="1h"),
        ],
        grace_s=0,
    )
    engine.observe_leak(600, "heap")
    assert engine.evaluate(600) == []  # heap is not fds; "any leak" is still in its grace
    [any_leak] = engine.evaluate(3600)  # the confirmed leak still stands when grace ends
    assert (any_leak.rule, any_leak.metric, any_leak.value, any_leak.at_s) == (
        "any leak",
        "leak",
        1.0,
        3600,
    )
    engine.observe_leak(4000, "fds")
    [fds] = engine.evaluate(4000)
    assert (fds.rule, fds.action, fds.limit) == ("leak above 0", "abort", 0.0)
    assert engine.evaluate(5000) == []


def test_leak_rule_with_for_waits_and_cleared_leak_rearms() -> None:
    engine = RuleEngine([rule(metric="leak", kind="heap", **{"for": "10m"})], grace_s=0)
    engine.observe_leak(100, "heap")
    assert engine.evaluate(100) == []
    assert engine.evaluate(600) == []
    assert [b.at_s for b in engine.evaluate(700)] == [700]
    engine.observe_leak(800, "heap", confirmed=False)
    assert engine.active() == []
    engine.observe_leak(900, "heap")
    assert [b.at_s for b in engine.evaluate(1500)] == [1500]


def test_guard_rules_abort_without_grace() -> None:
    guard = GuardConfig.model_validate({"system_memory_percent": 80, "worker_rss": "1GiB"})
    rules = guard_rules(guard)
    assert [r.label for r in rules] == [
        "guard: system memory above 80%",
        "guard: worker rss above 1.0 GiB",
    ]
    assert all(r.action == "abort" and r.grace == 0 for r in rules)
    engine = RuleEngine(rules, grace_s=600)
    engine.observe(1, {"system_memory_percent": 79.0, "rss_bytes": float(2**30)})
    assert engine.evaluate(1) == []
    engine.observe(2, {"system_memory_percent": 81.0, "rss_bytes": float(2**30 + 1)})
    assert sorted(b.metric for b in engine.evaluate(2)) == ["rss_bytes", "system_memory_percent"]
    assert guard_rules(GuardConfig(enabled=False)) == []


def test_rules_from_config_appends_guard_rules() -> None:
    config = Config.model_validate({"rules": [{"metric": "fds", "above": 1000}]})
    assert rules_from_config(config)[0].label == "fds above 1000"
    assert len(rules_from_config(config)) == 3


def test_ignores_non_finite_missing_and_out_of_order_samples() -> None:
    engine = RuleEngine([rule(metric="fds", above=10)], grace_s=0)
    engine.observe(5, {"fds": float("nan")})
    engine.observe(6, {"fds": None})  # type: ignore[dict-item]
    engine.observe(7, {"fds": 1.0})
    engine.observe(3, {"fds": 99.0})  # earlier than what was seen: ignored
    assert engine.evaluate(10) == []


def test_memory_stays_bounded_over_a_million_observations() -> None:
    engine = RuleEngine([rule(metric="rss_bytes", above=1e12, window="5m")], grace_s=0)
    observe = engine.observe
    for i in range(1_000_000):
        observe(i, {"rss_bytes": i % 1000})
    assert engine.retained_samples() == 301  # a 5-minute window at one sample a second
    assert engine.evaluate(1e6) == []


def test_throughput_reference_samples_are_freed_once_the_reference_is_fixed() -> None:
    engine = RuleEngine([rule(metric="throughput_drop", above=0.9, window="2m")], grace_s=0)
    for i in range(100_000):
        engine.observe(i, {"throughput_per_s": 10})
        if i == 100:
            assert engine.retained_samples() == 101  # reference period still being measured
    assert engine.retained_samples() == 121
