"""Faults a soak throws at soakd, through the real CLI: it keeps going or stops cleanly.

Targets crash, exhaust memory and fds, flood their output, fork, hang and block their loop; the
supervisor is killed and signalled; the run directory is full, read-only or impossible. Each
case asserts the verdict, the exit code, what the summary says and that samples reached disk.
(Import failures of a missing module, a raising factory, all-raising iterations, a stdout flood
and the worker's SIGKILL are covered in test_cli.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from soakd.summary import VERDICT_EXIT, validate_summary
from tests.conftest import (
    events,
    pid_alive,
    run_soakd,
    start_soakd,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def summary_of(run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert validate_summary(data) == [], validate_summary(data)
    return data


def series(run: Path, name: str) -> list[tuple[float, float]]:
    with contextlib.closing(sqlite3.connect(run / "samples.db")) as db:
        rows = db.execute("SELECT t, value FROM samples WHERE series=? ORDER BY t", (name,))
        return [(float(t), float(v)) for t, v in rows]


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err[-3000:]


def config(
    tmp_path: Path, body: str, *, workload: str = "", run: str = "", stop_timeout: str = "5s"
) -> Path:
    """The FAST test config plus ``body``; extra keys for the [workload] and [run] it opens."""
    path = write_config(tmp_path, body)
    text = path.read_text(encoding="utf-8")
    text = text.replace("[workload]\n", "[workload]\n" + workload, 1)
    text = text.replace("[run]\n", "[run]\n" + run, 1)
    text = text.replace('stop_timeout = "5s"', f'stop_timeout = "{stop_timeout}"', 1)
    path.write_text(text, encoding="utf-8")
    return path


def soak(
    tmp_path: Path, body: str, duration: str, *, timeout: float = 90, **sections: str
) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    cfg = config(tmp_path, body, **sections)
    run = tmp_path / "run"
    began = time.monotonic()
    proc = run_soakd(
        "run", "-c", str(cfg), "-d", duration, "--run-dir", str(run), cwd=tmp_path,
        timeout=timeout,
    )  # fmt: skip
    no_traceback(proc.stderr)
    return proc, run, time.monotonic() - began


# -- the target ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("import missing_dependency_xyz\n", "No module named 'missing_dependency_xyz'"),
        ("def broken(:\n", "SyntaxError"),
        ("raise SystemExit(3)\n", "SystemExit"),
    ],
)
def test_target_module_failing_at_import_exits_5(tmp_path: Path, source: str, needle: str) -> None:
    # The module exists (found via target.python_path) but its own import-time code fails.
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "badtarget.py").write_text(source, encoding="utf-8")
    body = '[target]\nfactory = "badtarget:Thing"\npython_path = ["app"]\n'
    proc, run, _ = soak(tmp_path, body, "30s")
    assert proc.returncode == 5, proc.stderr
    summary = summary_of(run)
    assert summary["verdict"] == "target_failed"
    message = json.dumps(summary["failure"])
    assert "importing 'badtarget' failed" in message and needle in message


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("fault_targets:FailsToEnter", "ConnectionRefusedError: backend at 127.0.0.1:9 refused"),
        ("fault_targets:async_factory_raises", "LookupError: async factory found no backend"),
    ],
)
def test_async_factory_or_context_failing_exits_5(
    tmp_path: Path, factory: str, needle: str
) -> None:
    proc, run, _ = soak(tmp_path, f'[target]\nfactory = "{factory}"\n', "30s")
    assert proc.returncode == 5, proc.stderr
    summary = summary_of(run)
    assert summary["verdict"] == "target_failed"
    assert summary["failure"]["reason"] == "factory"
    assert needle in summary["failure"]["message"]


def test_iterations_hanging_past_the_timeout_count_as_errors_and_a_rule_aborts(
    tmp_path: Path,
) -> None:
    body = (
        '[target]\nfactory = "simple_targets:Hangs"\n'
        '[[rules]]\nmetric = "error_rate"\nabove = 0.5\ngrace = "0s"\naction = "abort"\n'
    )
    proc, run, elapsed = soak(tmp_path, body, "60s", workload='timeout = "300ms"\n')
    assert proc.returncode == 4, proc.stderr
    summary = summary_of(run)
    assert summary["verdict"] == "aborted"
    assert summary["breaches"] and summary["breaches"][0]["action"] == "abort"
    assert summary["breaches"][0]["value"] == pytest.approx(1.0)
    workload = summary["workload"]
    assert workload["iterations"] > 0
    assert workload["errors_by_class"] == {"timeout": workload["errors"]}
    assert elapsed < 30  # aborted at the first interval, not after the 60 s duration


def test_worker_segfault_exits_5_with_samples_on_disk(tmp_path: Path) -> None:
    body = '[target]\nfactory = "fault_targets:Segfaults"\noptions = {after_s = 1.5}\n'
    proc, run, elapsed = soak(tmp_path, body, "60s")
    assert proc.returncode == 5, proc.stderr
    summary = summary_of(run)
    assert summary["verdict"] == "target_failed"
    assert summary["failure"] == {"reason": "worker_died", "message": "worker died: signal SIGSEGV"}
    assert summary["workload"]["iterations"] > 0
    assert len(series(run, "rss_bytes")) >= 3
    names = [e["event"] for e in events(run)]
    assert "worker.exited" in names and names[-1] == "run.finished"
    assert elapsed < 30


def test_worker_memory_limit_turns_a_hog_into_memory_errors(tmp_path: Path) -> None:
    limit = 1024**3
    body = '[target]\nfactory = "fault_targets:Hog"\noptions = {mb = 32, after_s = 0.5}\n'
    proc, run, _ = soak(tmp_path, body, "5s", run='worker_memory_limit = "1GiB"\n')
    summary = summary_of(run)
    # RLIMIT_AS makes allocations fail inside the target: errors, not a dead worker; a target
    # failing most calls is not healthy, whatever its memory does
    assert proc.returncode == 5, proc.stderr
    assert summary["verdict"] == "target_failed" and summary["failure"] is None
    assert [h["check"] for h in summary["health"]] == ["error_rate"]
    assert summary["workload"]["errors_by_class"].get("MemoryError", 0) > 0
    assert 500 * 1024**2 < summary["memory"]["rss_peak_bytes"] < limit
    assert max(v for _, v in series(run, "rss_bytes")) < limit


def test_fd_exhaustion_is_counted_and_sampled(tmp_path: Path) -> None:
    body = '[target]\nfactory = "fault_targets:FdLeaker"\noptions = {limit = 96}\n'
    proc, run, _ = soak(tmp_path, body, "4s")
    assert proc.returncode == 5, proc.stderr  # unhealthy: most calls fail with EMFILE
    summary = summary_of(run)
    assert summary["verdict"] == "target_failed" and summary["failure"] is None
    assert [h["check"] for h in summary["health"]] == ["error_rate"]
    workload = summary["workload"]
    assert workload["errors_by_class"].get("OSError", 0) > 0  # EMFILE, every iteration once full
    assert workload["errors"] < workload["iterations"]  # the first ones succeeded
    fds = [v for _, v in series(run, "fds")]
    assert max(fds) == 96  # the worker sat at its limit, and soakd saw it


def test_stdout_and_stderr_flood_keep_worker_log_bounded(tmp_path: Path) -> None:
    body = '[target]\nfactory = "fault_targets:Flooder"\noptions = {kb = 16}\n'
    proc, run, _ = soak(tmp_path, body, "3s", run='worker_log_limit = "32KiB"\n')
    assert proc.returncode == 7, proc.stderr  # 3 s: inconclusive
    assert (run / "worker.log").stat().st_size <= 32 * 1024 + 200
    summary = summary_of(run)
    # both streams at 16 KiB per iteration: far more than the limit was dropped, not stored
    assert summary["worker_log_dropped_bytes"] > 10 * 32 * 1024
    assert summary["workload"]["iterations"] > 10
    assert b"\xff\xfe-no-newline-" in (run / "worker.log").read_bytes()
    assert len(proc.stdout) < 200_000  # the target's output never reaches soakd's stdout


def _pids(pidfile: Path) -> list[int]:
    if not pidfile.exists():
        return []
    return [int(line) for line in pidfile.read_text(encoding="ascii").split()]


def test_forked_children_are_gone_after_the_run(tmp_path: Path) -> None:
    pidfile = tmp_path / "children.pids"
    body = f'[target]\nfactory = "fault_targets:Forker"\noptions = {{pidfile = "{pidfile}"}}\n'
    proc, run, elapsed = soak(tmp_path, body, "3s")
    assert proc.returncode == 7, proc.stderr  # 3 s: inconclusive
    pids = _pids(pidfile)
    assert len(pids) == 4  # sh + its sleeping grandchild + two per-iteration children
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "the target's children to be gone")
    assert max(v for _, v in series(run, "children")) >= 3
    # the children hold the worker's stdout open: stopping must not wait the stop timeout out
    assert elapsed < 3 + 5 + 4


def test_worker_dying_while_its_children_live_is_noticed(tmp_path: Path) -> None:
    pidfile = tmp_path / "children.pids"
    body = (
        '[target]\nfactory = "fault_targets:Forker"\n'
        f'options = {{pidfile = "{pidfile}", crash_after_s = 1.5}}\n'
    )
    proc, run, elapsed = soak(tmp_path, body, "60s")
    assert proc.returncode == 5, proc.stderr
    summary = summary_of(run)
    assert summary["failure"]["message"] == "worker died: signal SIGSEGV"
    assert elapsed < 25  # not the 60 s duration
    pids = _pids(pidfile)
    assert pids
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "the orphaned children to be gone")


def test_target_blocking_its_event_loop_is_stopped_within_bounds(tmp_path: Path) -> None:
    body = '[target]\nfactory = "fault_targets:BlocksLoop"\noptions = {after_s = 1.5}\n'
    path = config(tmp_path, body, stop_timeout="1s")
    run = tmp_path / "run"
    proc = start_soakd("run", "-c", str(path), "-d", "4s", "--run-dir", str(run), cwd=tmp_path)
    try:
        began = time.monotonic()
        _out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - began
    finally:
        proc.kill()
    no_traceback(err)
    summary = summary_of(run)
    # the worker answers nothing once blocked: soakd asks it to stop, then kills its group
    exited = [e for e in events(run) if e["event"] == "worker.exited"]
    assert exited and exited[0]["returncode"] in (-signal.SIGTERM, -signal.SIGKILL)
    assert summary["verdict"] in ("inconclusive", "target_failed")  # 4 s: never a pass
    assert proc.returncode == {"inconclusive": 7, "target_failed": 5}[summary["verdict"]]
    assert summary["stop_reason"] == "duration"
    # duration + final process, heap and sites samples (5 s caps) + stop timeout + 5 s + start-up
    assert elapsed < 4 + 5 + 5 + 1 + 5 + 4
    started = [e for e in events(run) if e["event"] == "worker.started"]
    assert not pid_alive(int(started[0]["pid"]))


# -- the supervisor ------------------------------------------------------------------------

ECHO = '[target]\nfactory = "simple_targets:Echo"\n'


def test_supervisor_sigkill_then_report_rebuilds_up_to_the_kill(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, ECHO)
    run = tmp_path / "run"
    proc = start_soakd("run", "-c", str(cfg), "-d", "5m", "--run-dir", str(run), cwd=tmp_path)
    try:
        wait_for(
            lambda: any(e["event"] == "workload.interval" and e["t"] > 2.5 for e in events(run)),
            30,
            "three workload intervals",
        )
        proc.kill()
        killed_epoch = time.time()
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.communicate()
    assert not (run / "report.html").exists()  # the supervisor never got to write it
    with contextlib.closing(sqlite3.connect(run / "samples.db")) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    kill_t = killed_epoch - float(meta["started_epoch"])
    last_rss_t = series(run, "rss_bytes")[-1][0]
    interval = 0.25  # FAST process_interval
    assert kill_t - interval - 0.25 <= last_rss_t <= kill_t  # 0.25 s: one psutil read in flight

    report = run_soakd("report", str(run), cwd=tmp_path, timeout=60)
    assert report.returncode == 0, report.stderr
    no_traceback(report.stderr)
    summary = summary_of(run)
    assert summary["interrupted"] is True
    assert summary["verdict"] == "inconclusive" and summary["exit_code"] == 7  # never pass
    assert summary["workload"]["iterations"] > 100
    assert summary["duration_s"] == pytest.approx(last_rss_t, abs=1.5)
    assert summary["memory"]["rss_end_bytes"] == series(run, "rss_bytes")[-1][1]
    assert (run / "report.html").stat().st_size > 1000 and (run / "report.md").exists()


def test_sigterm_with_iterations_in_flight_finishes_within_the_stop_timeout(
    tmp_path: Path,
) -> None:
    body = '[target]\nfactory = "fault_targets:SlowTail"\noptions = {seconds = 30.0}\n'
    path = config(tmp_path, body, stop_timeout="2s")
    run = tmp_path / "run"
    proc = start_soakd("run", "-c", str(path), "-d", "5m", "--run-dir", str(run), cwd=tmp_path)
    try:
        wait_for(
            lambda: [e for e in events(run) if e["event"] == "workload.interval"][1:],
            30,
            "two workload intervals (the second with iterations stuck in flight)",
        )
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    no_traceback(err)
    assert proc.returncode == 7  # interrupted: the verdict so far is never pass
    summary = summary_of(run)
    assert summary["stop_reason"] == "signal SIGTERM" and summary["interrupted"] is True
    assert summary["workload"]["iterations"] > 50
    assert summary["workload"]["cancelled"] == 2  # both users' 30 s iterations, cut at stop
    assert (run / "report.html").exists() and (run / "report.md").exists()
    assert elapsed < 2 + 3  # the stop timeout plus the report


# -- the run directory ---------------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs to test a full or read-only filesystem: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def _fill(mount: Path, leave: int) -> Path:
    filler = mount / "filler"
    free = shutil.disk_usage(mount).free
    with filler.open("wb") as fh, contextlib.suppress(OSError):
        fh.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.parametrize("leave_kib", [0, 16, 64, 256])
def test_full_filesystem_gives_a_clear_error_or_a_verdict(tmp_path: Path, leave_kib: int) -> None:
    with mounted_tmpfs(tmp_path / "small", "size=2m") as mount:
        filler = _fill(mount, leave_kib * 1024)
        body = '[target]\nfactory = "simple_targets:Printer"\n'
        cfg = write_config(tmp_path, body)
        run = mount / "run"
        proc = run_soakd("run", "-c", str(cfg), "-d", "3s", "--run-dir", str(run), cwd=tmp_path)
        no_traceback(proc.stderr)
        if proc.returncode == 2:  # too full to start, or filled mid-run: said so, naming it
            full = ("No space left on device", "disk is full", "disk I/O error")
            assert any(why in proc.stderr for why in full), proc.stderr
            assert f"run directory {run}" in proc.stderr
            summary_path = run / "summary.json"
            if "storage failed" in proc.stderr and summary_path.exists():
                summary = json.loads(summary_path.read_text())  # written when it fitted
                assert summary["exit_code"] == 2 and summary["storage_error"]
                assert summary["workload"]["iterations"] > 0  # the run's, never a made-up 0
        else:  # ran on without a lost write: the summary on disk matches the exit code
            summary = json.loads((run / "summary.json").read_text())
            assert VERDICT_EXIT[summary["verdict"]] == proc.returncode, proc.stdout[-2000:]
            assert not summary.get("job_failures", {}).get("store")
        assert not list(run.glob(".*.tmp")) and not (run / ".write-test").exists()
        filler.unlink()  # room for SQLite to replay its WAL: what is on disk must be consistent
        if (run / "samples.db").exists():
            with contextlib.closing(sqlite3.connect(run / "samples.db")) as db:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_disk_that_fills_mid_run_is_a_storage_error_not_a_target_failure(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "small", "size=4m") as mount:
        filler = _fill(mount, 900 * 1024)  # room to start; the target's output fills the rest
        cfg = write_config(tmp_path, '[target]\nfactory = "simple_targets:Printer"\n')
        run = mount / "run"
        proc = run_soakd("run", "-c", str(cfg), "-d", "8s", "--run-dir", str(run),
                         "--set", 'run.worker_log_limit="2MiB"', cwd=tmp_path)  # fmt: skip
        no_traceback(proc.stderr)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"storage failed in the run directory {run}" in proc.stderr
        said = re.search(r"verdict so far: (\w+), (\d+) iterations", proc.stderr)
        assert said is not None and said.group(1) != "target_failed", proc.stderr
        assert int(said.group(2)) > 0  # the live count, never 0 from a stale store
        assert (run / "samples.db").exists() and (run / "events.jsonl").exists()  # kept
        filler.unlink()


def test_read_only_runs_directory_exits_2_naming_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, ECHO)
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        for args in (
            ("--run-dir", str(mount / "run")),
            ("--set", f"output.runs_dir='{mount}'"),
        ):
            proc = run_soakd("run", "-c", str(cfg), "-d", "3s", *args, cwd=tmp_path)
            assert proc.returncode == 2, proc.stderr
            assert f"cannot create the run directory {mount}" in proc.stderr
            assert "Read-only file system" in proc.stderr
            no_traceback(proc.stderr)


@pytest.mark.parametrize("where", ["/proc/soakd-runs", "FILE/runs"])
def test_impossible_run_directory_exits_2_naming_it(tmp_path: Path, where: str) -> None:
    (tmp_path / "FILE").write_text("a file, not a directory")
    path = where.replace("FILE", str(tmp_path / "FILE"))
    cfg = write_config(tmp_path, ECHO)
    for args in (("--run-dir", path), ("--set", f"output.runs_dir='{path}'")):
        proc = run_soakd("run", "-c", str(cfg), "-d", "3s", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert path in proc.stderr or str(Path(path).parent) in proc.stderr
        no_traceback(proc.stderr)
        assert os.path.exists(path) is False
