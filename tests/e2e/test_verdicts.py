"""Honest verdicts through the real CLI: a soak that did not soak never says "pass".

Broken targets (raising, hanging, a blocked event loop, a frozen worker, MemoryError under a
memory cap, no file descriptors left) end in ``target_failed`` with the figure that failed;
short and interrupted runs are ``inconclusive`` unless the end-to-end growth check finds a leak;
a run that judged a full window of a healthy target passes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import events, run_soakd, soak_env, soakd_cmd, wait_for, write_config
from tests.e2e.test_faults import no_traceback

pytestmark = pytest.mark.slow

# Stalls are judged against this in the unhealthy soaks (the default, 60 s, outlasts them).
HEALTH = '[health]\nmax_stall = "4s"\n'
UNHEALTHY: dict[str, tuple[str, list[str], str]] = {
    # name: (config body, extra args, the health check expected to fail)
    "raising": ('[target]\nfactory = "simple_targets:AlwaysRaises"\n', [], "error_rate"),
    "hanging": (
        '[target]\nfactory = "simple_targets:Hangs"\n',
        ["--set", "workload.timeout=1s"],
        "timeouts",
    ),
    "loop-blocked": (
        '[target]\nfactory = "fault_targets:BlocksLoop"\noptions = {after_s = 2.0}\n',
        [],
        "stall",
    ),
    "memory-error": (
        '[target]\nfactory = "fault_targets:Hog"\noptions = {mb = 32, after_s = 1.0}\n',
        ["--set", 'run.worker_memory_limit="700MiB"'],
        "error_rate",
    ),
    "fd-starved": (
        '[target]\nfactory = "fault_targets:FdLeaker"\noptions = {limit = 80}\n',
        [],
        "error_rate",
    ),
}
DURATION_S = 14.0


def _summary(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def unhealthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The unhealthy soaks side by side; name → (exit code, stderr, run dir)."""
    procs: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    for name, (body, extra, _) in UNHEALTHY.items():
        work = tmp_path_factory.mktemp(name)
        cfg = write_config(work, body + HEALTH)
        run_dir = work / "run"
        cmd = soakd_cmd("run", "-c", str(cfg), "-d", f"{DURATION_S:g}s", "--run-dir", str(run_dir),
                        *extra)  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=work, env=soak_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        procs[name] = (proc, run_dir)
    out: dict[str, Any] = {}
    try:
        for name, (proc, run_dir) in procs.items():
            _, err = proc.communicate(timeout=DURATION_S + 150)
            out[name] = (proc.returncode, err, run_dir)
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
    yield out


@pytest.mark.parametrize("name", list(UNHEALTHY))
def test_unhealthy_target_is_target_failed_with_its_figure(
    unhealthy: dict[str, Any], name: str
) -> None:
    code, err, run_dir = unhealthy[name]
    no_traceback(err)
    summary = _summary(run_dir)
    why = summary.get("verdict_reason")
    assert code == 5 and summary["verdict"] == "target_failed", (code, why)
    if summary.get("failure"):  # the worker died of it first (MemoryError outside an iteration)
        assert summary["verdict_reason"]
        return
    checks = [h["check"] for h in summary["health"]]
    assert UNHEALTHY[name][2] in checks, summary["health"]
    assert summary["verdict_reason"].startswith("unhealthy: ")
    problem = next(h for h in summary["health"] if h["check"] == UNHEALTHY[name][2])
    assert problem["value"] > problem["limit"] or problem["check"] == "timeouts"
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "Verdict: target\\_failed" in report and "Why: unhealthy: " in report  # Markdown


def _soak_in_background(
    tmp_path: Path, body: str, duration: str
) -> tuple[subprocess.Popen[str], Path]:
    """``soakd run`` of an Echo-like config, started and left running; its run directory."""
    cfg = write_config(tmp_path, body)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        soakd_cmd("run", "-c", str(cfg), "-d", duration, "--run-dir", str(run_dir)),
        cwd=tmp_path, env=soak_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    return proc, run_dir


def _first(run_dir: Path, name: str) -> dict[str, Any]:
    """The run's first ``name`` event, waited for."""
    found = wait_for(lambda: [e for e in events(run_dir) if e["event"] == name], 60, name)
    return dict(found[0])


ECHO = '[target]\nfactory = "simple_targets:Echo"\n'


def test_frozen_worker_is_target_failed(tmp_path: Path) -> None:
    proc, run_dir = _soak_in_background(tmp_path, ECHO + HEALTH, "14s")
    try:
        ready = _first(run_dir, "worker.ready")
        _first(run_dir, "workload.interval")  # iterations completed first: then it froze
        os.kill(int(ready["pid"]), signal.SIGSTOP)
        _, err = proc.communicate(timeout=150)
    finally:
        proc.kill()
    no_traceback(err)
    summary = _summary(run_dir)
    assert proc.returncode == 5, summary.get("verdict_reason")
    assert summary["verdict"] == "target_failed"
    assert "stall" in [h["check"] for h in summary["health"]]
    assert "no iteration completed for" in summary["verdict_reason"]


def test_healthy_run_that_was_judged_passes(tmp_path: Path) -> None:
    body = (
        '[target]\nfactory = "simple_targets:Echo"\n'
        '[detection]\nwarmup = "3s"\nwarmup_max = "6s"\nwindow = "16s"\n'
    )
    cfg = write_config(tmp_path, body)
    run_dir = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "30s", "--run-dir", str(run_dir), cwd=tmp_path)
    summary = _summary(run_dir)
    names = [e["event"] for e in events(run_dir)]
    assert "detection.judged" in names
    assert proc.returncode == 0 and summary["verdict"] == "pass", summary.get("verdict_reason")
    assert summary["detection_judged"] is True and summary["interrupted"] is False
    assert summary["verdict_reason"] is None


def test_short_run_is_inconclusive_and_says_how_long_to_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[target]\nfactory = "simple_targets:Echo"\n', fast=True)
    run_dir = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "5s", "--run-dir", str(run_dir), cwd=tmp_path)
    summary = _summary(run_dir)
    assert proc.returncode == 7 and summary["verdict"] == "inconclusive"
    assert summary["exit_code"] == 7 and summary["detection_judged"] is False
    assert "before the detector's first full window" in summary["verdict_reason"]
    assert summary["suggested_duration_s"] >= 120
    assert summary["memory"]["rss_slope_bytes_per_h"] is None  # null, never a made-up 0
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "Verdict: inconclusive" in report and "RSS slope | not judged" in report
    assert "run at least" in report


def test_leak_from_the_first_second_in_a_run_shorter_than_warmup_max(tmp_path: Path) -> None:
    body = (
        '[target]\nfactory = "simple_targets:Leaky"\noptions = {kb = 64}\n'
        '[detection]\nwarmup = "5s"\nwarmup_max = "10m"\n'
        '[health]\nmax_unjudged_growth = "8MB"\n'
    )
    cfg = write_config(tmp_path, body)
    run_dir = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "20s", "--run-dir", str(run_dir), cwd=tmp_path)
    summary = _summary(run_dir)
    assert proc.returncode == 3 and summary["verdict"] == "leak", summary.get("verdict_reason")
    if not summary["detection_judged"]:  # the usual case: still "warming up" at the end
        assert summary["end_to_end"]["exceeded"] == ["rss"]
        assert summary["end_to_end"]["rss_growth_bytes"] > 8_000_000
        assert summary["leaks"][0]["method"] == "end_to_end"
        assert "end to end, RSS grew" in summary["verdict_reason"]


def test_sigkilled_run_rebuilt_by_report_is_never_pass(tmp_path: Path) -> None:
    proc, run_dir = _soak_in_background(tmp_path, ECHO, "60s")
    try:
        _first(run_dir, "workload.interval")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    rebuilt = run_soakd("report", str(run_dir), cwd=tmp_path)
    no_traceback(rebuilt.stderr)
    summary = _summary(run_dir)
    assert summary["verdict"] == "inconclusive" and summary["exit_code"] == 7
    assert summary["interrupted"] is True
    assert "killed" in summary["verdict_reason"]
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "Verdict: inconclusive" in report and "Interrupted" in report
    assert "Verdict: pass" not in report
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Interrupted" in html and ">pass<" not in html


def test_sigterm_before_the_end_is_inconclusive_so_far(tmp_path: Path) -> None:
    proc, run_dir = _soak_in_background(tmp_path, ECHO, "60s")
    try:
        _first(run_dir, "workload.interval")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    no_traceback(err)
    summary = _summary(run_dir)
    assert proc.returncode == 7 and summary["verdict"] == "inconclusive"
    assert (
        summary["interrupted"] is True
        and "interrupted (signal SIGTERM)" in summary["verdict_reason"]
    )


def test_target_that_exits_at_once_is_exit_5_without_traceback(tmp_path: Path) -> None:
    for attempt in range(3):  # the exit races the start: every order must end the same way
        run_dir = tmp_path / f"run{attempt}"
        proc = run_soakd("run", "-d", "10s", "--run-dir", str(run_dir), "--", "/bin/false",
                         cwd=tmp_path)  # fmt: skip
        no_traceback(proc.stderr)
        assert proc.returncode == 5, proc.stderr[-2000:]
        summary = _summary(run_dir)
        assert summary["verdict"] == "target_failed"
        assert "exited with code 1" in summary["verdict_reason"]


def test_memory_limit_run_cannot_apply_is_refused_up_front(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[target]\nfactory = "simple_targets:Echo"\n')
    for value, why in (("1MiB", "too small for the worker to start"),
                       ("100000000TiB", "cannot be set as RLIMIT_AS")):  # fmt: skip
        for cmd in ("check-config", "run"):
            args = [str(cfg)] if cmd == "check-config" else ["-c", str(cfg), "-d", "5s"]
            proc = run_soakd(cmd, *args, "--set", f'run.worker_memory_limit="{value}"',
                             cwd=tmp_path)  # fmt: skip
            assert proc.returncode == 2, (cmd, value, proc.stderr)
            assert why in proc.stderr and "run.worker_memory_limit" in proc.stderr
            no_traceback(proc.stderr)


def test_worker_that_cannot_start_under_its_cap_is_exit_5(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[target]\nfactory = "simple_targets:Echo"\n')
    run_dir = tmp_path / "run"
    # Accepted (≥ 64 MiB) but too small for the worker's threads: the target fails, said so.
    proc = run_soakd("run", "-c", str(cfg), "-d", "10s", "--run-dir", str(run_dir),
                     "--set", 'run.worker_memory_limit="64MiB"', cwd=tmp_path)  # fmt: skip
    no_traceback(proc.stderr)
    summary = _summary(run_dir)
    assert proc.returncode in (5, 7), summary.get("verdict_reason")
    if proc.returncode == 5:
        assert summary["verdict"] == "target_failed" and summary["verdict_reason"]


def test_reference_quick_start_leak_in_60s_is_found_end_to_end(tmp_path: Path) -> None:
    """The README's one-minute quick start with a leak injected: too short for a trend, and
    RSS grows tens of MiB: the end-to-end check says leak, with the figure."""
    run_dir = tmp_path / "run"
    cfg = Path(__file__).resolve().parents[2] / "config" / "soakd.toml"
    proc = run_soakd("run", "--config", str(cfg), "--duration", "60s", "--run-dir", str(run_dir),
                     "--set", "target.options.leak_kb=64", cwd=tmp_path,
                     timeout=300)  # fmt: skip
    summary = _summary(run_dir)
    assert proc.returncode == 3 and summary["verdict"] == "leak", summary.get("verdict_reason")
    if not summary["detection_judged"]:
        assert "end to end, RSS grew" in summary["verdict_reason"]
        assert summary["end_to_end"]["rss_growth_bytes"] > 10_000_000
