"""The real CLI in a subprocess: config mistakes, target failures, signals, kills."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from soakd.errors import EXIT_INCONCLUSIVE as INCONCLUSIVE
from soakd.summary import validate_summary
from tests.conftest import (
    event_names,
    pid_alive,
    run_soakd,
    soak_env,
    start_soakd,
    wait_for,
    write_config,
)

ECHO = '[target]\nfactory = "simple_targets:Echo"\n'

BAD_CONFIGS = [
    # (config body, text that must appear in stderr)
    ("[workload]\nusers = 0\n", "workload.users = 0"),
    ('[workload]\nusers = "many"\n', "workload.users = 'many'"),
    ("[workload]\nbogus = 1\n", "workload.bogus = 1: unknown key; valid keys here:"),
    ('[run]\nduration = "10x"\n', "run.duration = '10x': expected a duration"),
    ('[sampling]\ntracemalloc = "sometimes"\n', "sampling.tracemalloc = 'sometimes'"),
    ('[target]\nfactory = "no_colon"\n', "target.factory = 'no_colon': expected 'module:attr'"),
    ('[target]\nmethod = "not a name"\n', "target.method = 'not a name'"),
    ('[[rules]]\nmetric = "rss"\nabove = 1\n', "unknown metric 'rss'"),
    ('[[rules]]\nmetric = "rss_bytes"\nabove = "1GiQ"\n', "expected a size"),
    ('[metrics]\nbind = "localhost"\n', "metrics.bind = 'localhost': expected HOST:PORT"),
    ("[workload\nusers = 1\n", "not valid TOML"),
    ('[detection]\nwarmup = "10m"\nwarmup_max = "1m"\n', "warmup_max (60.0s) must be ≥ warmup"),
    ('[workload.think_time]\ndistribution = "gauss"\n', "workload.think_time.distribution"),
    ('[sampling]\nprocess_interval = "1ms"\n', "sampling.process_interval"),
]


@pytest.mark.parametrize(("body", "needle"), BAD_CONFIGS)
def test_bad_config_exits_2_naming_file_key_and_value(
    tmp_path: Path, body: str, needle: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body, encoding="utf-8")
    for args in (("check-config", str(path)), ("run", "--config", str(path), "-d", "5s")):
        proc = run_soakd(*args, cwd=tmp_path, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr
        assert str(path) in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


def test_missing_config_file(tmp_path: Path) -> None:
    proc = run_soakd("run", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.toml: config file not found" in proc.stderr


def test_bad_set_and_duration(tmp_path: Path) -> None:
    proc = run_soakd("run", "--set", "workload.users=[1,", cwd=tmp_path)
    assert proc.returncode == 2 and "--set 'workload.users=[1,'" in proc.stderr
    proc = run_soakd("run", "--duration", "soon", cwd=tmp_path)
    assert proc.returncode == 2 and "--duration 'soon'" in proc.stderr


def test_compound_durations_and_systemd_sizes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, ECHO + '[guard]\nworker_rss = "10G"\n')
    proc = run_soakd("check-config", str(cfg), "--set", "run.duration='1h30m'", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "run 1h30m" in proc.stdout and "guard.worker_rss 10.0 GiB" in proc.stdout
    bad = run_soakd("check-config", str(cfg), "--set", "run.duration='30m1h'", cwd=tmp_path)
    assert bad.returncode == 2 and "1h30m" in bad.stderr  # the valid form is named


def test_check_config_accepts_the_default_file() -> None:
    proc = run_soakd("check-config", "config/soakd.toml", cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_existing_run_dir_is_never_overwritten(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    proc = run_soakd("run", "--run-dir", str(run), "-d", "5s", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"will not overwrite an existing run directory: {run}" in proc.stderr
    assert (run / "summary.json").read_text() == "{}"


def test_unwritable_runs_dir_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "deeper" / "runs"
    proc = run_soakd("run", "--set", f"output.runs_dir='{missing}'", "-d", "5s", cwd=tmp_path)
    assert proc.returncode == 2
    assert str(missing.parent) in proc.stderr


def _summary(run: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((run / "summary.json").read_text())
    assert validate_summary(data) == []
    return data


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        (
            'factory = "no_such_module_xyz:Thing"',
            "cannot import target module 'no_such_module_xyz'",
        ),
        ('factory = "simple_targets:raising_factory"', "factory exploded on purpose"),
        ('factory = "simple_targets:Missing"', "has no attribute 'Missing'"),
        ('factory = "simple_targets:Echo"\nmethod = "nope"', "no callable method 'nope'"),
    ],
)
def test_target_that_cannot_start_exits_5(tmp_path: Path, target: str, needle: str) -> None:
    cfg = write_config(tmp_path, f"[target]\n{target}\n")
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "30s", "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    summary = _summary(run)
    assert summary["verdict"] == "target_failed"
    assert needle in json.dumps(summary["failure"])
    assert "target.failed" in event_names(run)


def test_every_iteration_raising_is_counted_and_fails_the_target(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[target]\nfactory = "simple_targets:AlwaysRaises"\n')
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "3s", "--run-dir", str(run), cwd=tmp_path)
    summary = _summary(run)
    workload = summary["workload"]
    assert isinstance(workload, dict)
    assert workload["errors"] == workload["iterations"] > 0
    assert workload["errors_by_class"] == {"ValueError": workload["errors"]}
    # Counted, not fatal to the run; but a target failing every call is not healthy.
    assert proc.returncode == 5 and summary["verdict"] == "target_failed"
    assert [h["check"] for h in summary["health"]] == ["error_rate"]


def test_sigterm_mid_run_writes_summary_and_exits_by_verdict(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, ECHO)
    run = tmp_path / "run"
    proc = start_soakd("run", "-c", str(cfg), "-d", "5m", "--run-dir", str(run), cwd=tmp_path)
    try:
        wait_for(lambda: "worker.ready" in event_names(run), 30, "worker.ready")
        wait_for(lambda: "workload.interval" in event_names(run), 30, "first workload interval")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == INCONCLUSIVE  # the verdict so far: interrupted, so never pass
    summary = _summary(run)
    assert summary["verdict"] == "inconclusive" and summary["interrupted"] is True
    assert summary["duration_s"] < 120
    assert summary["stop_reason"] == "signal SIGTERM"
    names = event_names(run)
    assert names.index("run.stopping") < names.index("run.finished")


def test_worker_sigkill_mid_run_exits_5_with_summary(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, ECHO)
    run = tmp_path / "run"
    proc = start_soakd("run", "-c", str(cfg), "-d", "5m", "--run-dir", str(run), cwd=tmp_path)
    try:
        ready = wait_for(
            lambda: [e for e in _events(run) if e["event"] == "worker.started"], 30, "worker"
        )
        wait_for(lambda: "workload.interval" in event_names(run), 30, "first workload interval")
        os.kill(ready[0]["pid"], signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 5
    summary = _summary(run)
    assert summary["verdict"] == "target_failed"
    assert "SIGKILL" in json.dumps(summary["failure"])
    assert summary["workload"]["iterations"] > 0  # type: ignore[index]


def _rss_samples(run: Path) -> int:
    if not (run / "samples.db").exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(run / "samples.db")) as db:
            row = db.execute("SELECT COUNT(*) FROM samples WHERE series='rss_bytes'").fetchone()
    except sqlite3.Error:
        return 0  # created but not yet initialised
    return int(row[0])


def test_supervisor_sigkill_takes_the_worker_down(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, ECHO)
    run = tmp_path / "run"
    proc = start_soakd("run", "-c", str(cfg), "-d", "5m", "--run-dir", str(run), cwd=tmp_path)
    try:
        started = wait_for(
            lambda: [e for e in _events(run) if e["event"] == "worker.ready"], 30, "worker.ready"
        )
        worker = int(started[0]["pid"])
        # what was sampled before the kill must be on disk: wait for a sample to be taken
        wait_for(lambda: _rss_samples(run), 30, "a first rss sample")
        assert pid_alive(worker)
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: not pid_alive(worker), 5, f"worker {worker} to exit")
    finally:
        proc.kill()
    # what was sampled before the kill is on disk and readable
    with sqlite3.connect(run / "samples.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM samples WHERE series='rss_bytes'").fetchone()
    assert count > 0


def test_target_output_flood_is_bounded(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        '[target]\nfactory = "simple_targets:Printer"\n[run]\nworker_log_limit = "64KiB"\n'
        'stop_timeout = "5s"\n',
        fast=False,
    )
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "3s", "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == INCONCLUSIVE, proc.stderr  # 3 s: too short to judge
    assert (run / "worker.log").stat().st_size < 64 * 1024 + 200
    assert _summary(run)["worker_log_dropped_bytes"] > 0  # type: ignore[operator]


def _events(run: Path) -> list[dict[str, object]]:
    from tests.conftest import events

    return events(run)


def test_scenario_target_and_env(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[target]\nscenario = "simple_targets:scenario"\n')
    run = tmp_path / "run"
    proc = run_soakd(
        "run", "-c", str(cfg), "-d", "3s", "--run-dir", str(run), cwd=tmp_path, env=soak_env()
    )
    assert proc.returncode == INCONCLUSIVE, proc.stderr
    assert proc.stdout.splitlines()[0] == str(run)
    assert _summary(run)["workload"]["iterations"] > 10  # type: ignore[index]


def test_default_runs_dir_is_created_in_the_working_directory(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, ECHO)
    proc = run_soakd("run", "-c", str(cfg), "-d", "2s", cwd=tmp_path)
    assert proc.returncode == INCONCLUSIVE, proc.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert proc.stdout.splitlines()[0] == str(Path("runs") / run.name)
    assert _summary(run)["run_id"] == run.name
    # where the report is, at the end (stderr: stdout stays JSON lines)
    assert proc.stderr.rstrip().endswith(f"soakd: report: {Path('runs') / run.name}/report.html")
    assert isinstance(_summary(run)["config_hash"], str)


@pytest.mark.slow
def test_a_worker_whose_loop_blocks_is_reported_as_stalled(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[target]\nfactory = "fault_targets:BlocksLoop"\n')
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "16s", "--run-dir", str(run), cwd=tmp_path)
    summary = _summary(run)
    assert "workload.stalled" in event_names(run)
    assert summary["workload_stalls"] == 1
    assert proc.returncode in (5, INCONCLUSIVE)


@pytest.mark.slow
def test_open_model_counts_missed_starts_and_classifies_error_events(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, '[target]\nfactory = "simple_targets:Echo"\noptions = { delay_s = 0.2 }\n'
    )
    run = tmp_path / "run"
    proc = run_soakd(
        "run", "-c", str(cfg), "-d", "4s", "--run-dir", str(run),
        "--set", "workload.rate=50", "--set", "workload.max_concurrency=2", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == INCONCLUSIVE, proc.stderr[-2000:]
    wl = _summary(run)["workload"]
    assert isinstance(wl, dict)
    # 50/s offered, at most 2 in flight of 0.2 s each (≤ 10/s): most arrivals cannot start
    assert wl["missed_starts"] > wl["iterations"] > 0

    cfg2 = write_config(
        tmp_path, '[target]\nfactory = "rule_targets:Phased"\noptions = { bad_from = 0.0 }\n'
    )
    run2 = tmp_path / "run2"
    proc = run_soakd("run", "-c", str(cfg2), "-d", "3s", "--run-dir", str(run2), cwd=tmp_path)
    wl2 = _summary(run2)["workload"]
    assert isinstance(wl2, dict)
    assert wl2["errors"] == wl2["iterations"] > 0
    assert wl2["errors_by_class"] == {"error_event:backend_down": wl2["errors"]}


def test_check_config_catches_options_the_factory_does_not_take(tmp_path: Path) -> None:
    root = Path(__file__).parents[2]
    # the reference aggregator: an unknown option, a misspelt one, a missing method
    for sets, needle in (
        (["target.options={scale=2.0}"], "target.options.scale = 2.0: soakd.reference:"),
        (["target.options.leak_kbb=2"], "(did you mean 'leak_kb'?)"),
        (["target.method='process'"], "target.method = 'process': soakd.reference:"),
        (["target.factory='nosuchmod:X'"], "cannot import target module 'nosuchmod'"),
    ):
        args = [a for s in sets for a in ("--set", s)]
        proc = run_soakd("check-config", "config/soakd.toml", *args, cwd=root)
        assert proc.returncode == 2, (sets, proc.stdout)
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    ok = run_soakd("check-config", "config/soakd.toml", "--set", "target.options.leak_kb=4",
                   cwd=root)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    # a plain function's own signature: required and unknown keyword arguments
    (tmp_path / "fac.py").write_text(
        "class T:\n    async def go(self, q): return q\n\n"
        "def build(size, *, name='x'):\n    return T()\n"
    )
    cfg = tmp_path / "t.toml"
    cfg.write_text('[target]\nfactory = "fac:build"\nmethod = "go"\npython_path = ["."]\n'
                   "[target.options]\nname = 'y'\ncolour = 1\n")  # fmt: skip
    proc = run_soakd("check-config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2
    assert "target.options.colour = 1: fac:build takes no argument 'colour'" in proc.stderr
    assert "target.options.size: fac:build requires it" in proc.stderr
    fixed = run_soakd("check-config", str(cfg), "--set", "target.options={size=1}", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    # nothing was started: --no-import skips the import entirely
    skipped = run_soakd("check-config", str(cfg), "--no-import", cwd=tmp_path)
    assert skipped.returncode == 0
