"""External process mode: ``soakd run -- CMD``, ``--pid PID`` and the agent socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    TARGETS,
    event_names,
    run_soakd,
    soak_env,
    soak_until,
    wait_for,
    write_config,
)

APPS = str(Path(TARGETS) / "external_apps.py")
DETECT_FAST = """
[detection]
warmup = "5s"
warmup_max = "20s"
window = "20s"
native_window = "15s"
min_native_slope = "10MiB"
min_count_slope = 5.0
confirm_after = 2
"""


def _summary(run: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((run / "summary.json").read_text())
    return data


@pytest.mark.slow
def test_command_with_a_native_leak_exits_3(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DETECT_FAST)
    run = tmp_path / "run"
    proc = run_soakd(
        "run", "-c", str(cfg), "-d", "50s", "--run-dir", str(run), "--",
        sys.executable, APPS, "native", "2048", cwd=tmp_path, timeout=150,
    )  # fmt: skip
    summary = _summary(run)
    assert proc.returncode == 3, (proc.stderr[-2000:], summary.get("suspects"))
    assert summary["verdict"] == "leak"
    kinds = [leak["kind"] for leak in summary["leaks"]]  # type: ignore[attr-defined]
    assert kinds[0] == "native", kinds
    assert summary["target"] == "?" or summary["target"]
    assert summary["memory"]["rss_slope_bytes_per_h"] > 1e9  # type: ignore[index]


@pytest.mark.slow
def test_pid_mode_attaches_to_a_running_process_and_finds_an_fd_leak(tmp_path: Path) -> None:
    app = subprocess.Popen(
        [sys.executable, APPS, "fds", "5"], stdout=subprocess.PIPE, text=True, env=soak_env()
    )
    try:
        assert app.stdout is not None and app.stdout.readline().startswith("ready")
        cfg = write_config(tmp_path, DETECT_FAST)
        run = tmp_path / "run"
        proc = run_soakd(
            "run", "-c", str(cfg), "-d", "45s", "--run-dir", str(run), "--pid", str(app.pid),
            cwd=tmp_path, timeout=150,
        )  # fmt: skip
        summary = _summary(run)
        assert proc.returncode == 3, (proc.stderr[-2000:], summary.get("suspects"))
        kinds = [leak["kind"] for leak in summary["leaks"]]  # type: ignore[attr-defined]
        assert kinds and kinds[0] == "fds", kinds
        assert app.poll() is None  # soakd never kills a process it only attached to
    finally:
        app.kill()
        app.wait()


def test_pid_that_does_not_exist_exits_2(tmp_path: Path) -> None:
    proc = run_soakd("run", "--pid", "999999", "-d", "5s", cwd=tmp_path)
    assert proc.returncode == 2
    assert "999999" in proc.stderr and "Traceback" not in proc.stderr


def test_command_that_cannot_start_exits_5(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_soakd(
        "run", "-d", "5s", "--run-dir", str(run), "--", "/no/such/binary", cwd=tmp_path
    )
    assert proc.returncode == 5
    assert "/no/such/binary" in json.dumps(_summary(run)["failure"])


@pytest.mark.slow
def test_agent_in_the_watched_app_reports_a_heap_leak_with_its_site(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DETECT_FAST)
    run = tmp_path / "run"
    proc = soak_until(
        "run", "-c", str(cfg), "-d", "150s", "--run-dir", str(run), "--",
        sys.executable, "-m", "soakd.agent", APPS, "heap", "200",
        until=lambda evs: [
            e for e in evs if e["event"] == "leak.confirmed" and e["kind"] == "heap" and e["site"]
        ],
        timeout=150, cwd=tmp_path, run_dir=run,
    )  # fmt: skip
    summary = _summary(run)
    assert "agent.connected" in event_names(run)
    assert proc.returncode == 3, (proc.stderr[-2000:], summary.get("suspects"))
    heap = [leak for leak in summary["leaks"] if leak["kind"] == "heap"]  # type: ignore[attr-defined]
    assert heap, summary["leaks"]
    assert heap[0]["site"].endswith("external_apps.py:37"), heap[0]


@pytest.mark.slow
def test_http_workload_against_a_url(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = wait_for(server.stdout.readline, 10, "http.server to listen")
        port = int(line.split("port ")[1].split()[0])
        cfg = write_config(tmp_path, f'[target.http]\nurl = "http://127.0.0.1:{port}/"\n')
        run = tmp_path / "run"
        proc = run_soakd(
            "run", "-c", str(cfg), "-d", "4s", "--run-dir", str(run), "--pid", str(server.pid),
            cwd=tmp_path, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 7, proc.stderr[-2000:]  # 4 s: inconclusive
        wl = _summary(run)["workload"]
        assert wl["iterations"] > 5 and wl["errors"] == 0  # type: ignore[index]
    finally:
        server.kill()
        server.wait()
