"""The recorder's perturbation methods and the workload monitor's judgement of intervals, on a
real run directory (events.jsonl, samples.db); spans are placed well clear of the clock's edges.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from soakd.config import Config
from soakd.rundir import RunDir
from soakd.store import RunStore
from soakd.summary import build_summary
from soakd.supervisor.recorder import RunRecorder
from soakd.supervisor.state import RunState
from soakd.supervisor.thresholds import Thresholds
from soakd.supervisor.workload import UNPERTURBED_META, WorkloadMonitor
from soakd.workload.histogram import LatencyHistogram


def parts(tmp_path: Path, **config: Any) -> tuple[RunState, RunRecorder, Thresholds]:
    cfg = Config.model_validate(config)
    run = RunDir(tmp_path, "test-run")
    state = RunState(600.0)
    state.t0 -= 100.0  # the run is 100 s old: spans in the past are easy to place
    recorder = RunRecorder(cfg, run, state)
    recorder.write_meta("pkg:T", True)
    return state, recorder, Thresholds(cfg, state, recorder.emit)


def events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def interval(latency_ms: float, iterations: int = 10) -> dict[str, Any]:
    h = LatencyHistogram()
    for _ in range(iterations):
        h.record(latency_ms)
    return {"interval_s": 1.0, "iterations": iterations, "errors": 0, "throughput_per_s": 10.0,
            "error_rate": 0.0, "latency_ms": {"p50": latency_ms, "p99": latency_ms},
            "latency_hist": h.to_dict(), "first_event_hist": h.to_dict()}  # fmt: skip


def test_perturbed_emits_the_event_and_logs_the_span(tmp_path: Path) -> None:
    _, recorder, _ = parts(tmp_path)
    recorder.perturbation_open("tracemalloc", 10.0)
    assert recorder.perturbation.overlaps(50.0, 51.0)  # open: live
    recorder.perturbation_close("tracemalloc", 20.0)
    recorder.perturbed("tracemalloc", 10.0, 20.0, reason="suspicion", duration_ms=-1)
    recorder.perturbed("types", 30.0, 30.0421, pause_ms=3.5)
    recorder.perturbed("types", math.nan, 31.0)  # dropped, never raised
    recorder.perturbation_open("types", 40.0)
    recorder.perturbed("types", 40.0, 40.5)  # ends the open span of its cause
    recorder.close()
    evs = [e for e in events(tmp_path) if e["event"] == "target.perturbed"]
    assert [(e["cause"], e["start"], e["end"]) for e in evs] == [
        ("tracemalloc", 10.0, 20.0), ("types", 30.0, 30.042), ("types", 40.0, 40.5)]  # fmt: skip
    assert evs[0]["duration_ms"] == 10_000.0 and evs[0]["reason"] == "suspicion"
    assert evs[1]["pause_ms"] == 3.5 and evs[1]["duration_ms"] == 42.1
    assert recorder.perturbation.open_spans == {}
    assert not recorder.perturbation.overlaps(50.0, 51.0)


def test_perturbed_intervals_are_stored_but_not_judged(tmp_path: Path) -> None:
    rule = {"metric": "latency_p99_ms", "above": "100ms", "action": "alert", "grace": "0s"}
    state, recorder, thresholds = parts(tmp_path, rules=[rule])
    state.mark_ready()
    monitor = WorkloadMonitor(state, recorder, thresholds, interval_s=1.0)
    now = state.now()
    recorder.perturbed("types", now - 50.0, now - 49.0)  # long before: no interval overlaps
    monitor.on_message(interval(10.0), {"iterations": 10})
    on = state.now()  # after the first report: its interval is not perturbed
    recorder.perturbation_open("tracemalloc", on)  # tracing on: live
    monitor.on_message(interval(900.0), {"iterations": 20})  # slow because of tracing
    recorder.perturbation_close("tracemalloc", state.now())
    recorder.perturbed("tracemalloc", on, state.now())
    monitor.on_message(interval(900.0), {"iterations": 30})  # overlaps the closed span still
    recorder.close()
    evs = events(tmp_path)
    wl = [e for e in evs if e["event"] == "workload.interval"]
    assert [e.get("perturbed", False) for e in wl] == [False, True, True]
    assert not [e for e in evs if e["event"] == "threshold.breached"]  # 900 ms never judged
    reader = RunStore(tmp_path / "samples.db", strict=False)
    try:
        assert [v for _, v in reader.series("latency_p99_ms")] == [10.0, 900.0, 900.0]
        stored = [stats.get("perturbed", False) for _, stats in reader.workload()]
        meta = json.loads(reader.meta()[UNPERTURBED_META])
    finally:
        reader.close()
    assert stored == [False, True, True]
    assert meta["excluded_intervals"] == 2 and len(meta["pending"]) == 1
    summary = build_summary(tmp_path)
    u = summary["workload"]["unperturbed"]
    assert u["iterations"] == 10 and u["latency_ms"]["max"] == 10.0
    assert summary["perturbation"]["by_cause"]["tracemalloc"]["spans"] == 1
    assert summary["perturbation"]["excluded_intervals"] == 2


def test_an_unperturbed_breach_still_fires(tmp_path: Path) -> None:
    rule = {"metric": "latency_p99_ms", "above": "100ms", "action": "alert", "grace": "0s"}
    state, recorder, thresholds = parts(tmp_path, rules=[rule])
    state.mark_ready()
    monitor = WorkloadMonitor(state, recorder, thresholds, interval_s=1.0)
    monitor.on_message(interval(900.0), {"iterations": 10})
    recorder.close()
    assert [e["event"] for e in events(tmp_path)] == ["workload.interval", "threshold.breached"]


def test_a_span_recorded_after_its_interval_is_left_out_at_the_next_one(tmp_path: Path) -> None:
    state, recorder, thresholds = parts(tmp_path)
    state.mark_ready()
    monitor = WorkloadMonitor(state, recorder, thresholds, interval_s=1.0)
    monitor.on_message(interval(700.0), {"iterations": 10})  # a types walk was running...
    t = state.now()
    recorder.perturbed("types", t - 0.5, t - 0.2)  # ...and is recorded after the report
    short = {**interval(10.0), "interval_s": 0.01}  # covers [now - 0.01, now]: after the walk
    monitor.on_message(short, {"iterations": 20})
    recorder.close()
    figures = monitor.unperturbed.figures()
    assert figures["excluded_intervals"] == 1 and figures["excluded_iterations"] == 10
    assert figures["iterations"] == 10 and figures["latency_ms"]["max"] == 10.0
