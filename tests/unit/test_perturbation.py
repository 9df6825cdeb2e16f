"""soakd's own work in the target: the span log, the unperturbed totals, the rules' gaps, the
summary, ``compare``, the pytest plugin's verdict and the reports — explicit times, no sleeping.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest

from soakd.commands.compare import compare, judged_note
from soakd.config import Rule
from soakd.perturbation import MAX_CAUSES, PerturbationLog
from soakd.reporting import load_run, render_html, render_markdown
from soakd.reporting.svg import PERTURBED_LABEL, Chart
from soakd.rules import RuleEngine
from soakd.store import SampleStore
from soakd.summary import build_summary, validate_summary
from soakd.testing.outcome import Growth, SoakResult, evaluate, first_event_p50_ms, format_failure
from soakd.testing.spec import soak_spec
from soakd.workload.histogram import LatencyHistogram
from soakd.workload.unperturbed import UnperturbedTotals

# --------------------------------------------------------------------------- PerturbationLog


def test_spans_that_overlap_or_touch_merge_and_others_stay_apart() -> None:
    log = PerturbationLog()
    assert log.add("types", 10.0, 11.0)
    assert log.add("snapshot", 10.5, 12.0)  # overlaps
    assert log.add("sites", 12.0, 13.0)  # touches
    assert log.add("types", 20.0, 20.5)  # apart
    assert log.add("types", 5.0, 6.0)  # earlier than the rest (recorded late)
    assert log.spans == [(5.0, 6.0), (10.0, 13.0), (20.0, 20.5)]
    assert log.count == 5
    assert log.seconds == pytest.approx(1.0 + 3.0 + 0.5)  # the union, overlap counted once
    causes = {k: (v.spans, v.seconds) for k, v in log.by_cause.items()}
    assert causes == {"types": (3, pytest.approx(2.5)), "snapshot": (1, pytest.approx(1.5)),
                      "sites": (1, pytest.approx(1.0))}  # fmt: skip


def test_a_span_covering_several_swallows_them() -> None:
    log = PerturbationLog()
    for start in (1.0, 3.0, 5.0):
        log.add("types", start, start + 0.5)
    log.add("tracemalloc", 0.0, 10.0)
    assert log.spans == [(0.0, 10.0)]
    assert log.seconds == pytest.approx(10.0)


def test_bad_times_are_not_recorded() -> None:
    log = PerturbationLog()
    assert not log.add("types", 5.0, 4.0)
    assert not log.add("types", math.nan, 4.0)
    assert not log.add("types", 1.0, math.inf)
    assert log.spans == [] and log.count == 0 and log.by_cause == {}


def test_the_log_is_bounded_by_merging_the_closest_neighbours() -> None:
    log = PerturbationLog(max_spans=3)
    for start, end in ((0, 1), (10, 11), (11.5, 12), (30, 31), (50, 51)):
        log.add("types", start, end)
    # (10,11)+(11.5,12) were closest (0.5 s), then (0,1)... no: (10,12)+(30,31) is 18 s apart,
    # (0,1)+(10,12) 9 s: the next closest
    assert log.spans == [(0.0, 12.0), (30.0, 31.0), (50.0, 51.0)]
    assert log.bridged_s == pytest.approx(0.5 + 9.0)
    assert log.seconds == pytest.approx(4.5)  # recorded time, not the bridged gaps
    assert log.count == 5  # no span dropped
    summary = log.summary(100.0)
    assert summary["spans"] == 5 and summary["merged_spans"] == 3
    assert summary["bridged_seconds"] == pytest.approx(9.5)
    assert summary["share"] == pytest.approx(0.045)


def test_a_day_of_spans_stays_bounded() -> None:
    log = PerturbationLog(max_spans=100)
    for i in range(10_000):
        log.add("snapshot", i * 10.0, i * 10.0 + 0.2)
    assert len(log.spans) == 100 and log.count == 10_000
    assert log.seconds == pytest.approx(2000.0)
    assert log.overlaps(50_000.0, 50_000.1)  # bridged: counted as perturbed


def test_overlaps_closed_spans_but_not_touching_ones() -> None:
    log = PerturbationLog()
    log.add("types", 10.0, 11.0)
    log.add("types", 20.0, 20.0)  # an instant
    assert log.overlaps(9.0, 10.5) and log.overlaps(10.2, 10.4) and log.overlaps(5.0, 30.0)
    assert not log.overlaps(8.0, 10.0)  # touches the start
    assert not log.overlaps(11.0, 12.0)  # touches the end
    assert log.overlaps(19.0, 21.0)  # the instant inside
    assert not log.overlaps(20.0, 21.0)
    assert log.overlap_s(9.0, 10.5) == pytest.approx(0.5)
    assert log.overlap_s(0.0, 100.0) == pytest.approx(1.0)


def test_open_spans_perturb_everything_after_their_start_until_closed() -> None:
    log = PerturbationLog()
    log.open("tracemalloc", 30.0)
    assert log.open_spans == {"tracemalloc": 30.0}
    assert log.overlaps(29.0, 31.0) and log.overlaps(1000.0, 1001.0)
    assert not log.overlaps(20.0, 30.0)
    assert log.overlap_s(25.0, 40.0) == pytest.approx(10.0)
    log.open("tracemalloc", 35.0)  # already open: the earlier start stands
    assert log.open_spans == {"tracemalloc": 30.0}
    assert log.close("tracemalloc", 20.0) is None  # before its start: not this span
    assert log.close("tracemalloc", 90.0) == 30.0
    assert log.close("tracemalloc", 91.0) is None
    assert not log.overlaps(1000.0, 1001.0)
    assert log.spans == []  # closing records nothing; add() records the span
    log.add("tracemalloc", 30.0, 90.0)
    assert log.overlaps(89.0, 95.0)


def test_the_log_from_hostile_events_keeps_what_it_can() -> None:
    causes = [f"cause-{i}" for i in range(40)]
    events: list[dict[str, Any]] = [
        {"event": "target.perturbed", "cause": "types", "start": 1.0, "end": 1.5},
        {"event": "target.perturbed", "cause": "x" * 10_000, "start": 2.0, "end": 2.5},
        {"event": "target.perturbed", "cause": None, "start": 3.0, "end": 3.5},
        {"event": "target.perturbed", "start": "1", "end": 2.0},
        {"event": "target.perturbed", "start": True, "end": 2.0},
        {"event": "target.perturbed", "start": 9.0, "end": 8.0},
        {"event": "workload.interval", "start": 0.0, "end": 100.0},
        *({"event": "target.perturbed", "cause": c, "start": 50.0, "end": 50.1} for c in causes),
    ]
    log = PerturbationLog.from_events(events)
    assert log.count == 3 + len(causes)
    assert len(log.by_cause) <= MAX_CAUSES  # bounded: the rest counted as "other"
    assert log.by_cause["other"].spans == 1 + len(causes) - (MAX_CAUSES - 4)
    assert "other" in log.by_cause and all(len(k) <= 40 for k in log.by_cause)
    assert not log.overlaps(10.0, 40.0)


# --------------------------------------------------------------------------- UnperturbedTotals


def hist(*values: float) -> dict[str, Any]:
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    return h.to_dict()


def interval(iterations: int, latencies: list[float], errors: int = 0) -> dict[str, Any]:
    return {
        "interval_s": 1.0,
        "iterations": iterations,
        "errors": errors,
        "latency_hist": hist(*latencies),
        "first_event_hist": hist(*(v / 2 for v in latencies)),
    }


def test_judged_intervals_merge_and_perturbed_ones_are_counted_as_left_out() -> None:
    totals = UnperturbedTotals()
    totals.add(0.0, 1.0, interval(10, [10.0] * 10))
    totals.exclude(1.0, 2.0, interval(4, [900.0] * 4, errors=1))  # tracemalloc: slow
    totals.add(2.0, 3.0, interval(10, [20.0] * 9 + [30.0], errors=1))
    f = totals.figures()
    assert f["seconds"] == 2.0 and f["intervals"] == 2
    assert f["iterations"] == 20 and f["errors"] == 1
    assert f["throughput_per_s"] == 10.0 and f["error_rate"] == 0.05
    assert f["latency_ms"]["max"] == 30.0  # the 900 ms of the perturbed interval are not in
    assert f["latency_ms"]["p50"] == pytest.approx(10.0, rel=0.02)
    assert f["first_event_ms"]["max"] == 15.0
    assert (f["excluded_seconds"], f["excluded_intervals"], f["excluded_iterations"]) == (1.0, 1, 4)


def test_a_span_recorded_late_excludes_its_pending_interval() -> None:
    totals = UnperturbedTotals(settle_s=30.0)
    totals.add(0.0, 1.0, interval(10, [10.0] * 10))
    totals.add(1.0, 2.0, interval(10, [500.0] * 10))  # a types walk ran here...
    log = PerturbationLog()
    log.add("types", 1.4, 1.6)  # ...and its span arrives after the interval was judged
    assert totals.recheck(log.overlaps) == 1
    f = totals.figures()
    assert f["iterations"] == 10 and f["latency_ms"]["max"] == 10.0
    assert f["excluded_intervals"] == 1 and f["excluded_iterations"] == 10


def test_settled_intervals_are_merged_for_good_and_pending_ones_are_bounded() -> None:
    totals = UnperturbedTotals(settle_s=5.0, max_pending=3)
    for i in range(10):
        totals.add(float(i), i + 1.0, interval(1, [1.0]))
    assert totals.pending == 3  # the bound merged the older ones
    totals.settle(100.0)
    assert totals.pending == 0
    log = PerturbationLog()
    log.add("types", 0.0, 100.0)
    assert totals.recheck(log.overlaps) == 0  # settled: too late to take out
    assert totals.figures()["iterations"] == 10


def test_latency_is_left_out_when_a_judged_interval_had_no_histogram() -> None:
    totals = UnperturbedTotals()
    totals.add(0.0, 1.0, {"interval_s": 1.0, "iterations": 3, "latency_hist": [1, 2]})
    f = totals.figures()
    assert f["iterations"] == 3 and "latency_ms" not in f and "first_event_ms" not in f


def test_totals_survive_a_round_trip_through_json_with_their_pending_intervals() -> None:
    totals = UnperturbedTotals(settle_s=2.0)
    for i in range(6):
        totals.add(float(i), i + 1.0, interval(5, [float(i + 1)] * 5))
        totals.settle(i + 1.0)
    totals.exclude(6.0, 7.0, interval(2, [1.0, 1.0]))
    back = UnperturbedTotals.from_dict(json.loads(json.dumps(totals.to_dict())))
    assert back.figures() == totals.figures()
    assert back.pending == totals.pending > 0
    log = PerturbationLog()
    log.add("snapshot", 5.5, 5.6)  # only the last pending interval
    assert back.recheck(log.overlaps) == 1
    assert back.figures()["iterations"] == 25


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"schema": "other"},
        [],
    ],
)
def test_foreign_totals_are_refused(data: Any) -> None:
    with pytest.raises(ValueError):
        UnperturbedTotals.from_dict(data)


def test_hostile_totals_read_as_numbers_or_nothing() -> None:
    data = {"schema": "soakd.unperturbed/1", "seconds": "x", "iterations": -5, "errors": True,
            "latency_hist": {"schema": "nope"}, "pending": [1, {"start": 0, "end": "1"},
            {"start": 0.0, "end": 1.0, "iterations": 2, "latency_hist": hist(3.0)}]}  # fmt: skip
    f = UnperturbedTotals.from_dict(data).figures()
    assert f["seconds"] == 1.0 and f["iterations"] == 2 and f["latency_ms"]["max"] == 3.0


# --------------------------------------------------------------------------- rules and gaps


def engine_with(**fields: Any) -> RuleEngine:
    return RuleEngine([Rule.model_validate(fields)], grace_s=0)


def test_a_gap_neither_confirms_nor_resets_a_pending_for() -> None:
    engine = engine_with(metric="latency_p99_ms", above=100, **{"for": "2s"}, action="alert")
    engine.observe(10.0, {"latency_p99_ms": 150.0})  # breach starts
    engine.exclude(10.0, 11.0, ["latency_p99_ms"])  # perturbed: no sample
    engine.exclude(11.0, 12.0, ["latency_p99_ms"])
    engine.observe(13.0, {"latency_p99_ms": 150.0})  # 3 s later, 1 s of it seen
    assert engine.evaluate(13.0) == []
    engine.observe(14.0, {"latency_p99_ms": 150.0})  # 2 s seen holding: fires
    [breach] = engine.evaluate(14.0)
    assert breach.at_s == 14.0


def test_without_a_gap_the_same_for_fires_as_before() -> None:
    engine = engine_with(metric="latency_p99_ms", above=100, **{"for": "2s"}, action="alert")
    for t in (10.0, 11.0, 12.0):
        engine.observe(t, {"latency_p99_ms": 150.0})
    assert [b.at_s for b in engine.evaluate(12.0)] == [12.0]


def test_a_gap_does_not_reset_and_a_good_sample_still_does() -> None:
    engine = engine_with(metric="error_rate", above=0.1, **{"for": "2s"}, action="alert")
    engine.observe(1.0, {"error_rate": 0.5})
    engine.exclude(1.0, 5.0, ["error_rate"])
    engine.observe(6.0, {"error_rate": 0.0})  # recovered: reset
    engine.observe(7.0, {"error_rate": 0.5})
    engine.observe(8.0, {"error_rate": 0.5})
    assert engine.evaluate(8.0) == []
    engine.observe(9.0, {"error_rate": 0.5})
    assert [b.at_s for b in engine.evaluate(9.0)] == [9.0]


def test_memory_rules_never_see_workload_gaps() -> None:
    engine = RuleEngine(
        [Rule.model_validate({"metric": "rss_bytes", "above": 100, "for": "2s"}),
         Rule.model_validate({"metric": "latency_p99_ms", "above": 100, "for": "2s"})],
        grace_s=0,
    )  # fmt: skip
    engine.observe(10.0, {"rss_bytes": 200.0, "latency_p99_ms": 200.0})
    engine.exclude(10.0, 12.0, ["latency_p99_ms", "throughput_per_s", "leak"])
    engine.observe(12.0, {"rss_bytes": 200.0, "latency_p99_ms": 200.0})
    assert [b.metric for b in engine.evaluate(12.0)] == ["rss_bytes"]


def test_exclude_with_bad_times_is_ignored() -> None:
    engine = engine_with(metric="error_rate", above=0.1, **{"for": "1s"}, action="alert")
    engine.observe(1.0, {"error_rate": 0.5})
    engine.exclude(math.nan, 5.0, ["error_rate"])
    engine.exclude(3.0, 2.0, ["error_rate"])
    engine.observe(2.0, {"error_rate": 0.5})
    assert [b.at_s for b in engine.evaluate(2.0)] == [2.0]


# --------------------------------------------------------------------------- summary


def _event(name: str, t: float, **fields: Any) -> str:
    return json.dumps({"event": name, "run_id": "r1", "timestamp": "2026-01-01T00:00:00Z",
                       "t": t, "level": "info", **fields})  # fmt: skip


def build_run(tmp_path: Path, *, unperturbed: UnperturbedTotals | None, spans: bool) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    store = SampleStore(run / "samples.db")
    store.set_meta("run_id", "r1")
    store.set_meta("started_epoch", repr(1_767_225_600.0))
    store.set_meta("started_at", "2026-01-01T00:00:00Z")
    store.set_meta("target", "pkg:T")
    store.set_meta("config", {"detection": {"warmup": 5.0}})
    store.set_meta("driven", "1")
    totals = {"iterations": 60, "errors": 1, "duration_s": 6.0, "throughput_per_s": 10.0,
              "latency_ms": {"p50": 12.0, "p90": 100.0, "p99": 800.0, "max": 900.0}}  # fmt: skip
    store.set_meta("workload_totals", totals)
    if unperturbed is not None:
        store.set_meta("workload_unperturbed", unperturbed.to_dict())
    for t in range(7):
        store.add(float(t), {"rss_bytes": 1e8, "heap_bytes": 5e7, "throughput_per_s": 10.0,
                             "latency_p99_ms": 20.0 if t != 3 else 800.0})  # fmt: skip
    store.close()
    attribution = {"mode": "sampled", "interval_bytes": 524288, "frames": 8, "lost": None}
    lines = [_event("run.started", 0.0, target="pkg:T", attribution=attribution),
             _event("worker.ready", 0.1)]  # fmt: skip
    if spans:
        lines += [
            _event("target.perturbed", 2.3, cause="types", start=2.2, end=2.3, duration_ms=100.0),
            _event("target.perturbed", 4.5, cause="types", start=4.4, end=4.5, duration_ms=100.0),
            _event("target.perturbed", 3.9, cause="tracemalloc", start=2.5, end=3.9,
                   duration_ms=1400.0, reason="suspicion"),
        ]  # fmt: skip
    lines.append(_event("run.finished", 6.0, verdict="pass", exit_code=0, duration_s=6.0,
                        ended_at="2026-01-01T00:00:06Z"))  # fmt: skip
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    return run


def six_intervals() -> UnperturbedTotals:
    """Intervals [0,1] .. [5,6]; the ones the spans of build_run overlap are excluded, except
    [4,5], judged live: its span comes later (the summary must still leave it out)."""
    totals = UnperturbedTotals()
    for i in range(6):
        slow = i in (2, 3, 4)
        data = interval(10, [800.0 if slow else 10.0] * 10)
        if i in (2, 3):
            totals.exclude(float(i), i + 1.0, data)
        else:
            totals.add(float(i), i + 1.0, data)
    return totals


def test_summary_judges_the_unperturbed_workload_and_says_what_was_left_out(
    tmp_path: Path,
) -> None:
    run = build_run(tmp_path, unperturbed=six_intervals(), spans=True)
    s = build_summary(run)
    assert validate_summary(s) == []
    u = s["workload"]["unperturbed"]
    assert u["seconds"] == 3.0 < s["workload"]["duration_s"]
    assert u["iterations"] == 30 and u["throughput_per_s"] == 10.0
    assert u["latency_ms"]["p99"] == pytest.approx(10.0, rel=0.02)  # no 800 ms intervals
    assert s["workload"]["latency_ms"]["p99"] == 800.0  # the whole run's figures unchanged
    p = s["perturbation"]
    assert p["spans"] == 3 and p["seconds"] == pytest.approx(1.6)
    assert p["share"] == pytest.approx(1.6 / 6.0, abs=1e-3)
    assert p["by_cause"] == {"tracemalloc": {"spans": 1, "seconds": 1.4},
                             "types": {"spans": 2, "seconds": 0.2}}  # fmt: skip
    left_out = (p["excluded_intervals"], p["excluded_seconds"], p["excluded_iterations"])
    assert left_out == (3, 3.0, 30)
    assert s["attribution"]["mode"] == "sampled"


def test_summary_of_a_run_without_spans_or_totals(tmp_path: Path) -> None:
    run = build_run(tmp_path, unperturbed=None, spans=False)
    s = build_summary(run)
    assert validate_summary(s) == []
    assert "unperturbed" not in s["workload"]
    assert s["perturbation"]["spans"] == 0 and s["perturbation"]["excluded_intervals"] == 0


# --------------------------------------------------------------------------- compare


def cmp_summary(throughput: float, p99: float, calm: tuple[float, float] | None) -> dict[str, Any]:
    workload: dict[str, Any] = {
        "throughput_per_s": throughput,
        "error_rate": 0.0,
        "latency_ms": {"p50": 10.0, "p99": p99},
        "duration_s": 60.0,
    }
    if calm is not None:
        workload["unperturbed"] = {
            "seconds": 50.0,
            "throughput_per_s": calm[0],
            "error_rate": 0.0,
            "latency_ms": {"p50": 10.0, "p99": calm[1]},
        }
    return {"workload": workload, "memory": {}, "duration_s": 60.0}


def test_compare_judges_unperturbed_figures_when_every_run_has_them() -> None:
    # the run traced longer (slow whole-run figures) but its unperturbed workload is as good
    run = cmp_summary(60.0, 900.0, (100.0, 20.0))
    base = [cmp_summary(100.0, 20.0, (101.0, 20.0)), cmp_summary(99.0, 21.0, (100.0, 21.0))]
    rows = {c.metric: c for c in compare(run, base, 0.15)}
    assert not any(c.regression for c in rows.values())
    assert rows["workload.throughput_per_s"].basis == "unperturbed"
    assert rows["workload.latency_ms.p99"].value == 20.0
    assert rows["memory.rss_peak_bytes"].basis == "run"
    note = judged_note(run, list(rows.values()))
    assert note is not None and note.startswith("unperturbed: 50.0 s of 60.0 s judged")


def test_compare_falls_back_when_a_baseline_has_no_unperturbed_figures() -> None:
    run = cmp_summary(60.0, 900.0, (100.0, 20.0))
    base = [cmp_summary(100.0, 20.0, None)]
    rows = {c.metric: c for c in compare(run, base, 0.15)}
    assert rows["workload.throughput_per_s"].basis == "run"
    assert rows["workload.throughput_per_s"].regression
    assert judged_note(run, list(rows.values())) is None


# --------------------------------------------------------------------------- pytest plugin


def plugin_summary(**workload: Any) -> dict[str, Any]:
    w: dict[str, Any] = {"iterations": 200, "errors": 10, "error_rate": 0.05, "duration_s": 60.0,
                         "first_event_ms": {"p50": 300.0},
                         "milestones_ms": {"first_status": {"p50": 300.0, "count": 200}},
                         "unperturbed": {"seconds": 50.0, "iterations": 180, "errors": 0,
                                         "error_rate": 0.0, "excluded_seconds": 10.0,
                                         "excluded_intervals": 5, "excluded_iterations": 20,
                                         "first_event_ms": {"p50": 30.0}}}  # fmt: skip
    w.update(workload)
    perturbation = {"spans": 6, "seconds": 4.0, "share": 0.0667,
                    "by_cause": {"types": {"spans": 5, "seconds": 0.5},
                                 "tracemalloc": {"spans": 1, "seconds": 3.5}}}  # fmt: skip
    return {"verdict": "pass", "exit_code": 0, "workload": w, "perturbation": perturbation}


def test_plugin_limits_judge_the_unperturbed_figures() -> None:
    spec = soak_spec(max_error_rate=0.01, max_first_event_ms=100)
    summary = plugin_summary()
    assert first_event_p50_ms(summary) == 30.0
    assert evaluate(summary, Growth(0, 0.0, ()), spec) == []


def test_plugin_failure_says_how_much_was_left_out(tmp_path: Path) -> None:
    spec = soak_spec("pkg:T", max_error_rate=0.01, max_first_event_ms=10)
    summary = plugin_summary()
    summary["workload"]["unperturbed"].update(errors=9, error_rate=0.05)
    failures = evaluate(summary, Growth(0, 0.0, ()), spec)
    left_out = "unperturbed intervals only: 50.0 s of 60.0 s judged, 10.0 s (5 intervals, " \
               "20 iterations) left out"  # fmt: skip
    assert failures == [
        f"error rate 5.00% (9 of 180 iterations) above max_error_rate 1.00%; {left_out}",
        f"first status p50 30.0 ms above max_first_event_ms 10 ms; {left_out}",
    ]
    result = SoakResult(target="pkg:T", verdict="pass", exit_code=0, summary=summary,
                        run_dir=tmp_path, soak_dir=tmp_path, failures=tuple(failures))  # fmt: skip
    text = format_failure(result)
    assert "soakd's own work in the target: 6 span(s), 4.00 s (6.7% of the run; " \
           "tracemalloc 1 / 3.50 s, types 5 / 0.50 s)" in text  # fmt: skip


def test_plugin_keeps_the_status_milestone_when_status_is_not_the_first_event() -> None:
    summary = plugin_summary(milestones_ms={"first_status": {"p50": 80.0, "count": 200}})
    assert first_event_p50_ms(summary) == 80.0  # unperturbed figures have no milestones
    del summary["workload"]["unperturbed"]
    summary["workload"]["milestones_ms"] = {}
    assert first_event_p50_ms(summary) == 300.0


# --------------------------------------------------------------------------- reports


def test_every_time_chart_shades_the_spans_and_says_what_they_are(tmp_path: Path) -> None:
    run_dir = build_run(tmp_path, unperturbed=six_intervals(), spans=True)
    summary = build_summary(run_dir)
    run = load_run(run_dir, summary)
    assert run.perturbed_spans == [(2.2, 2.3), (2.5, 3.9), (4.4, 4.5)]
    html = render_html(run)
    charts = html.count("<svg ") - html.count(">no samples</text>")
    assert charts >= 3  # memory, throughput, latency (the rest have no samples here)
    assert html.count("legend-perturbed") == charts  # every chart with samples is shaded
    assert html.count('class="perturbed"') >= 3 * charts
    assert "soakd&#x27;s own work in the target" in html
    md = render_markdown(run)
    assert "## soakd's own work in the target" in md
    assert "| tracemalloc | 1 | 1.4s |" in md and "| types | 2 | 200 ms |" in md
    assert "3 interval(s) (30 iterations) left out" in md


def test_shades_are_clipped_merged_and_bounded() -> None:
    spans = [(i * 1.0, i * 1.0 + 0.01) for i in range(100_000)]
    svg = Chart("t", {"a": [(0.0, 1.0), (1000.0, 2.0)]}, shades=spans, width=400).render()
    assert 0 < svg.count('class="perturbed"') <= 400
    none = Chart("t", {"a": [(0.0, 1.0), (10.0, 2.0)]}, shades=[(50.0, 60.0)]).render()
    assert 'class="perturbed"' not in none and "(none in this range)" in none
    assert PERTURBED_LABEL in Chart("t", {"a": [(0.0, 1.0)]}, shades=[(0.0, 1.0)]).render() \
        .replace("&#x27;", "'")  # fmt: skip


def test_a_run_perturbed_throughout_is_judged_on_its_whole_figures() -> None:
    totals = UnperturbedTotals()
    totals.exclude(0.0, 1.0, interval(10, [5.0] * 10))
    f = totals.figures()
    assert f["seconds"] == 0.0 and f["iterations"] == 0 and "latency_ms" not in f
    run = cmp_summary(60.0, 900.0, None)
    run["workload"]["unperturbed"] = f
    rows = {c.metric: c for c in compare(run, [cmp_summary(100.0, 20.0, (100.0, 20.0))], 0.15)}
    assert rows["workload.throughput_per_s"].basis == "run"
    summary = plugin_summary(unperturbed=f)
    assert first_event_p50_ms(summary) == 300.0
    assert evaluate(summary, Growth(0, 0.0, ()), soak_spec(max_error_rate=0.01)) == [
        "error rate 5.00% (10 of 200 iterations) above max_error_rate 1.00%"
    ]


def test_compare_says_it_judged_unperturbed_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from soakd.commands.compare import run as compare_run

    for name, summary in (
        ("cand", cmp_summary(60.0, 900.0, (100.0, 20.0))),
        ("base", cmp_summary(100.0, 20.0, (100.0, 20.0))),
    ):
        (tmp_path / name).mkdir()
        summary.update(target="svc:T", started_at="2026-01-01T00:00:00Z", verdict="pass")
        summary.update(detection={"warmup_end_s": 0.0})
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    args = argparse.Namespace(run_dir=tmp_path / "cand", baseline=[tmp_path / "base"], last=10,
                              threshold=0.15, json=False)  # fmt: skip
    assert compare_run(args) == 0
    out = capsys.readouterr().out
    assert "unperturbed: 50.0 s of 60.0 s judged" in out
    assert "workload.unperturbed.throughput_per_s" in out and "no regression" in out
