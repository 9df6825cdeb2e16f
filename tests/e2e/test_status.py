"""``soakd status`` on synthetic running, finished and stale run dirs; the live progress line."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from soakd.commands.status import collect_status, newest_run, run, run_state, slope_per_h
from soakd.errors import CommandError
from soakd.reporting.progress import Progress, ProgressState
from tests.e2e.test_reports import build_run


def test_status_of_a_running_soak(tmp_path: Path) -> None:
    run_dir = build_run(tmp_path, finished=False)
    status = collect_status(run_dir)
    assert status["state"] == "running"
    assert status["verdict"] is None
    assert status["elapsed_s"] == 1800.0
    assert status["duration_s"] == 1800.0
    assert status["iterations"] == 99_000
    assert status["rss_bytes"] == pytest.approx(80e6 + 60e6 + 20_000 * 1800, rel=0.01)
    # the synthetic leak adds 20 kB/s = 72 MB/h; warm-up is long over in the last 10 minutes
    assert status["rss_slope_bytes_per_h"] == pytest.approx(72e6, rel=0.1)
    assert status["rss_slope_method"] == "theil-sen"
    assert [leak["kind"] for leak in status["confirmed"]] == ["heap"]
    assert [leak["type"] for leak in status["suspects"]] == ["dict"]
    assert status["breaches"][0]["rule"] == "rss over 150MB"
    assert status["unreadable_event_lines"] == 1


def test_status_finished_and_stale(tmp_path: Path) -> None:
    done = collect_status(build_run(tmp_path / "a", finished=True))
    assert (done["state"], done["verdict"], done["exit_code"]) == ("finished", "leak", 3)
    killed = build_run(tmp_path / "b", finished=False)
    status = collect_status(killed, now=time.time() + 3600)  # an hour without a write
    assert status["state"] == "stale"


def test_run_state_is_pure() -> None:
    assert run_state(True, 10_000.0) == "finished"
    assert run_state(False, 5.0) == "running"
    assert run_state(False, 121.0) == "stale"
    assert run_state(False, None) == "stale"


def test_slope_per_h_on_a_known_line() -> None:
    points = [(float(t), 5.0 + 2.0 * t) for t in range(0, 600, 2)]
    slope, method = slope_per_h(points)
    assert slope == pytest.approx(7200.0)
    assert method == "theil-sen"
    assert slope_per_h([(1.0, 2.0)]) == (None, "n/a")


def test_newest_run_and_cli_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    old = runs / "zz-old"  # sorts last by name, started first
    new = runs / "aa-new"
    for path, stamp in ((old, "2024-01-01T00:00:00Z"), (new, "2024-06-01T00:00:00Z")):
        path.mkdir(parents=True)
        line = {"event": "run.started", "t": 0.0, "timestamp": stamp, "duration_s": 60}
        (path / "events.jsonl").write_text(json.dumps(line) + "\n")
    os.utime(old / "events.jsonl")  # the old one was touched last; started time still wins
    assert newest_run(runs) == new
    assert run(argparse.Namespace(run_dir=None, runs_dir=runs, json=True)) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["run_dir"] == str(new)
    assert status["duration_s"] == 60
    with pytest.raises(CommandError, match="no run directories"):
        newest_run(tmp_path / "runs" / "aa-new")
    with pytest.raises(CommandError, match="runs directory not found"):
        newest_run(tmp_path / "nope")


def test_status_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = build_run(tmp_path, finished=True)
    assert run(argparse.Namespace(run_dir=run_dir, runs_dir=None, json=False)) == 0
    out = capsys.readouterr().out
    assert "state:      finished (leak)" in out
    assert "elapsed:    30m00s of 30m00s" in out
    assert "iterations: 99000 (errors 990)" in out
    assert "/h over the last 10m00s (theil-sen)" in out
    assert "confirmed:  1" in out and "suspects:   1" in out and "breaches:   1" in out


@pytest.mark.slow
def test_status_cli(tmp_path: Path) -> None:
    run_dir = build_run(tmp_path, finished=False)
    proc = subprocess.run(
        [sys.executable, "-m", "soakd", "status", str(run_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "running"
    proc = subprocess.run(
        [sys.executable, "-m", "soakd", "status", "--runs-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("soakd: error: runs directory not found")


def test_progress_line() -> None:
    stream = io.StringIO()
    progress = Progress(600.0, stream)
    progress.on_workload(30.0, {"throughput_per_s": 42.5, "error_rate": 0.02}, {"iterations": 1275})
    progress.on_samples(31.0, {"rss_bytes": 150 * 1024 * 1024, "heap_bytes": 40 * 1024 * 1024})
    progress.on_event("leak.suspected", {"kind": "heap", "site": "a.py:1"})
    out = stream.getvalue()
    assert out.startswith("\r") and out.endswith("\x1b[K")
    last = out.split("\r")[-1]
    assert "31.0s/10m00s   5%" in last
    assert "it 1275" in last and "42.50/s" in last and "err 2.00%" in last
    assert "rss 150.0 MiB" in last and "heap 40.0 MiB" in last and "suspects 1" in last
    progress.on_event("leak.confirmed", {"kind": "heap", "site": "a.py:1"})
    last = stream.getvalue().split("\r")[-1]
    assert "suspects 0" in last and "LEAKS 1" in last
    anyio.run(progress.stop)
    assert stream.getvalue().endswith("\n")


def test_progress_never_raises_into_the_supervisor() -> None:
    stream = io.StringIO()
    stream.close()
    progress = Progress(60.0, stream)
    progress.on_samples(1.0, {"rss_bytes": float("nan")})
    progress.on_event("threshold.breached", {})
    anyio.run(progress.stop)
    state = ProgressState(duration_s=0.0, t=5.0)
    assert state.render(30).endswith("…") and len(state.render(30)) == 30
