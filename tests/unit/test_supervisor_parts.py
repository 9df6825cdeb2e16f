"""The supervisor's parts on their own: run state, thresholds, workload monitor, schedule.

Each is built from a real config into a real run directory (events.jsonl, samples.db on disk)
and driven with explicit times where the part takes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from soakd.config import Config, SamplingConfig
from soakd.rundir import RunDir
from soakd.supervisor.analysis import AnalysisLoop
from soakd.supervisor.recorder import RunRecorder
from soakd.supervisor.sampling import SiteSampler
from soakd.supervisor.schedule import jobs
from soakd.supervisor.state import RunState
from soakd.supervisor.thresholds import Thresholds
from soakd.supervisor.tracing import TracingPolicy
from soakd.supervisor.workload import WorkloadMonitor


def parts(tmp_path: Path, **config: Any) -> tuple[RunState, RunRecorder, Thresholds]:
    cfg = Config.model_validate(config)
    run = RunDir(tmp_path, "test-run")
    state = RunState(60.0)
    recorder = RunRecorder(cfg, run, state)
    return state, recorder, Thresholds(cfg, state, recorder.emit)


def events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_failure_is_recorded_emitted_and_stops_the_run(tmp_path: Path) -> None:
    state, recorder, _ = parts(tmp_path)
    state.fail(recorder.emit, "worker_died", "worker_died", "worker died: exit code 3",
               returncode=3)  # fmt: skip
    state.request_stop("duration")  # the first reason stands
    recorder.close()
    assert state.failure == {"reason": "worker_died", "message": "worker died: exit code 3"}
    assert state.stop_requested.is_set() and state.stop_reason == "worker_died"
    (event,) = events(tmp_path)
    assert event["event"] == "target.failed" and event["returncode"] == 3


def test_an_abort_rule_breach_stops_the_run(tmp_path: Path) -> None:
    rule = {"metric": "rss_bytes", "above": "1MiB", "action": "abort", "grace": "0s"}
    state, recorder, thresholds = parts(tmp_path, rules=[rule])
    thresholds.observe(1.0, {"rss_bytes": 512 * 1024})
    thresholds.evaluate(1.0)
    assert not state.stop_requested.is_set()
    thresholds.observe(2.0, {"rss_bytes": 4 * 1024 * 1024})
    thresholds.evaluate(2.0)
    recorder.close()
    assert state.aborted and state.stop_reason.startswith("aborted: ")
    assert [e["event"] for e in events(tmp_path)] == ["threshold.breached"]


def test_workload_intervals_are_stored_and_silence_is_a_stall(tmp_path: Path) -> None:
    state, recorder, thresholds = parts(tmp_path)
    monitor = WorkloadMonitor(state, recorder, thresholds, interval_s=1.0)
    interval = {"iterations": 5, "errors": 1, "throughput_per_s": 5.0, "error_rate": 0.2,
                "latency_ms": {"p50": 2.0, "p99": 9.5}, "latency_hist": [1, 2]}  # fmt: skip
    monitor.on_message(interval, {"iterations": 40})
    monitor.on_message("not a dict", {})  # a hostile message changes nothing
    assert monitor.iterations == 40
    last = monitor.last_t
    monitor.check_stall(last + 9.0)
    assert not monitor.stalled  # within max(3 intervals, 10 s)
    monitor.check_stall(last + 11.0)
    monitor.check_stall(last + 12.0)  # said once
    assert monitor.stalled
    monitor.on_message(interval, {"iterations": 45})
    recorder.close()
    names = [e["event"] for e in events(tmp_path)]
    assert names == ["workload.interval", "workload.stalled", "workload.resumed",
                     "workload.interval"]  # fmt: skip
    first = events(tmp_path)[0]
    assert first["latency_p99_ms"] == 9.5 and first["error_rate"] == 0.2
    from soakd.sinks.store import StoreReader

    reader = StoreReader(tmp_path / "samples.db")
    try:
        assert [v for _, v in reader.series("latency_p99_ms")] == [9.5, 9.5]
    finally:
        reader.close()


def test_schedule_has_heap_jobs_only_with_heap_statistics() -> None:
    async def job() -> None:
        return None

    kw: Any = dict(process=job, system=job, checkpoint=job, heap=job, types=job, sites=job,
                   analyze=job, analysis_every_s=5.0)  # fmt: skip
    on = {spec.name: spec for spec in jobs(SamplingConfig(), **kw)}
    assert set(on) == {"sample_process", "sample_system", "checkpoint", "sample_heap",
                       "sample_types", "sample_sites", "analyze"}  # fmt: skip
    # site samples halfway between heap samples, at the heap cadence (they decide when due)
    assert on["sample_sites"].offset_s == on["sample_heap"].every_s / 2
    assert on["sample_sites"].every_s == on["sample_heap"].every_s
    off = jobs(SamplingConfig(enabled=False), **kw)
    assert [s.name for s in off] == ["sample_process", "sample_system", "checkpoint"]


def test_sampled_sites_come_every_sites_interval_and_at_the_heap_cadence_near_a_verdict(
    tmp_path: Path,
) -> None:
    """Grouping the sampled profile every heap sample cost a saturated target ~5 %: a steady
    run samples sites every ``sites_interval``, a suspicion or a zoom at the heap cadence."""
    state, recorder, thresholds = parts(tmp_path)
    cfg = Config.model_validate({})
    now = [0.0]
    state.now = lambda: now[0]  # type: ignore[method-assign]
    analysis = AnalysisLoop(cfg, state.now, recorder.emit, thresholds)
    policy = TracingPolicy.from_config(cfg.sampling, analysis.params)
    run = RunDir(tmp_path, "test-run")
    sampler = SiteSampler(state, cfg.sampling, run, lambda: None, recorder, analysis, policy)
    taken: list[float] = []

    async def sample(role: str = "latest", *, snapshot: bool = True) -> None:
        sampler.last_t = now[0]
        taken.append(now[0])

    sampler.sample = sample  # type: ignore[method-assign]

    def run_until(end: float) -> list[float]:
        taken.clear()
        while now[0] < end:  # the scheduler wakes the job at the heap cadence
            anyio.run(sampler.due)
            now[0] += cfg.sampling.heap_interval
        return list(taken)

    assert cfg.sampling.heap_interval == 2.0 and cfg.sampling.sites_interval == 10.0
    assert run_until(40.0) == [0.0, 10.0, 20.0, 30.0]
    analysis.suspected = True
    assert run_until(50.0) == [40.0, 42.0, 44.0, 46.0, 48.0]
    analysis.suspected = False
    policy.zoom(True, now[0])
    assert len(run_until(80.0)) == 15  # a zoom: every heap sample
    policy.zoom(False, now[0])
    assert run_until(100.0) == [88.0, 98.0]
    recorder.close()


def test_a_failed_job_says_where_it_raised(tmp_path: Path) -> None:
    _, recorder, _ = parts(tmp_path)

    def analyze() -> None:
        1.0 / 0.0  # noqa: B018  # a bug in soakd's own job

    for _ in range(2):
        try:
            analyze()
        except ZeroDivisionError as exc:
            recorder.job_failed("analyze", exc)
    recorder.close()
    failed = [e for e in events(tmp_path) if e["event"] == "job.failed"]
    assert len(failed) == 1 and failed[0]["count"] == 1  # the 1st is told, the 2nd counted
    assert failed[0]["error"] == "ZeroDivisionError: float division by zero"
    assert (
        failed[0]["at"].endswith(" in analyze") and "test_supervisor_parts.py:" in failed[0]["at"]
    )
    assert recorder.job_failures == {"analyze": 2}
