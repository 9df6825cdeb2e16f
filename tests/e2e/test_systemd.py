"""The systemd units: verified and rated by systemd-analyze, consistent with soakd's config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from soakd.config import GuardConfig, RunConfig
from soakd.errors import (
    EXIT_ABORTED,
    EXIT_INCONCLUSIVE,
    EXIT_LEAK,
    EXIT_TARGET_FAILED,
    EXIT_USAGE,
)
from soakd.units import parse_size

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
CHECK = ROOT / ".ci" / "check-units"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def read_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}}; repeated keys are kept."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    text = (UNITS / name).read_text(encoding="utf-8").replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / ".ci" / "check-units")],
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_analyze
def test_check_units_passes() -> None:
    proc = run_check(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check-units: all" in proc.stdout
    for name in ("soakd.service", "soakd@.service", "soakd-notify-failure@.service"):
        level = re.search(rf"ok   {re.escape(name)}: exposure ([0-9.]+)", proc.stdout)
        assert level is not None, proc.stdout
        assert float(level.group(1)) <= 2.5


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    (tmp_path / ".ci").mkdir()
    shutil.copy2(CHECK, tmp_path / ".ci" / "check-units")
    shutil.copytree(UNITS, tmp_path / "systemd")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


@needs_analyze
def test_check_units_fails_on_a_warning_that_verify_exits_0_on(repo_copy: Path) -> None:
    edit(repo_copy / "systemd" / "soakd.service", "\nRestart=", "\nRestartt=")
    proc = run_check(repo_copy)
    assert proc.returncode == 1
    assert "FAIL soakd.service" in proc.stdout
    assert "Unknown key" in proc.stdout
    assert "check-units: FAILED: verify soakd.service" in proc.stderr


@needs_analyze
def test_check_units_fails_on_weak_hardening(repo_copy: Path) -> None:
    unit = repo_copy / "systemd" / "soakd@.service"
    text = unit.read_text(encoding="utf-8")
    loose = [
        "DynamicUser",
        "PrivateUsers",
        "CapabilityBoundingSet",
        "SystemCallFilter",
        "ProtectSystem",
        "ProtectHome",
        "RestrictNamespaces",
        "PrivateDevices",
    ]
    kept = [ln for ln in text.splitlines() if ln.split("=", 1)[0] not in loose]
    unit.write_text("\n".join(kept) + "\n", encoding="utf-8")
    proc = run_check(repo_copy)
    assert proc.returncode == 1
    assert re.search(r"FAIL soakd@\.service: exposure [0-9.]+ > 2\.5", proc.stdout), proc.stdout


@needs_analyze
def test_check_units_fails_on_an_unshipped_failure_unit(repo_copy: Path) -> None:
    (repo_copy / "systemd" / "soakd-notify-failure@.service").unlink()
    proc = run_check(repo_copy)
    assert proc.returncode == 1
    assert "soakd-notify-failure@.service or soakd-notify-failure@%n.service" in proc.stdout


def test_service_contract() -> None:
    for name in ("soakd.service", "soakd@.service"):
        unit = read_unit(name)
        assert one(unit, "Service", "Type") == "notify"
        assert one(unit, "Service", "NotifyAccess") == "main"
        assert one(unit, "Service", "WatchdogSec") == "60s"
        assert one(unit, "Service", "Restart") == "on-failure"
        prevented = {int(v) for v in one(unit, "Service", "RestartPreventExitStatus").split()}
        assert prevented == {
            EXIT_USAGE,
            EXIT_LEAK,
            EXIT_ABORTED,
            EXIT_TARGET_FAILED,
            EXIT_INCONCLUSIVE,
        }
        # Stopping = the workload's stop timeout, then the final report: well within.
        stop = float(one(unit, "Service", "TimeoutStopSec").removesuffix("s"))
        assert stop >= RunConfig().stop_timeout + 60
        start = float(one(unit, "Service", "TimeoutStartSec").removesuffix("s"))
        assert start > RunConfig().start_timeout
        # The guard aborts with a report before the kernel throttles, let alone kills.
        high = parse_size(one(unit, "Service", "MemoryHigh") + "iB")
        limit = parse_size(one(unit, "Service", "MemoryMax") + "iB")
        assert GuardConfig().worker_rss < high < limit
        assert one(unit, "Unit", "OnFailure") == "soakd-notify-failure@%n.service"
        assert one(unit, "Service", "KillMode") == "mixed"
        exec_start = one(unit, "Service", "ExecStart")
        assert exec_start.startswith("/usr/local/bin/soakd run --config /etc/soakd/")
        assert "--set output.runs_dir=%S/soakd/" in exec_start


def test_single_and_template_units_stay_in_step() -> None:
    single = read_unit("soakd.service")["Service"]
    template = read_unit("soakd@.service")["Service"]
    differ = {"ExecStart", "WorkingDirectory", "StateDirectory", "LogsDirectory"}
    assert set(single) == set(template)
    for key in set(single) - differ:
        assert single[key] == template[key], key
    for key in differ:
        expected = [v.replace("/%i.toml", "/soakd.toml").replace("/%i", "") for v in template[key]]
        assert single[key] == expected, key


def _failure_script() -> str:
    """The failure notifier's shell program, as systemd hands it to /bin/sh."""
    exec_start = one(read_unit("soakd-notify-failure@.service"), "Service", "ExecStart")
    match = re.fullmatch(r"/bin/sh -c '(.*)' soakd-notify-failure %i", exec_start.strip())
    assert match, exec_start
    return match.group(1).replace("$$", "$")  # systemd's own $-expansion, undone


@pytest.mark.parametrize(
    ("result", "status", "expected"),
    [
        ("exit-code", "3", "soakd@search.service: leak found; exit status 3"),
        ("exit-code", "4", "soakd@search.service: aborted by a threshold rule; exit status 4"),
        ("watchdog", "0", "soakd@search.service: soakd failed (result watchdog); exit status 0"),
    ],
)
def test_failure_notifier_names_the_verdict(
    tmp_path: Path, result: str, status: str, expected: str
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    # Stands in for systemctl's D-Bus query: answers as systemd would for the failed unit.
    fake.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            case "$*" in
              *"-p Result soakd@search.service") echo {result} ;;
              *"-p ExecMainStatus soakd@search.service") echo {status} ;;
              *) exit 1 ;;
            esac
            """),
        encoding="utf-8",
    )
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["/bin/sh", "-c", _failure_script(), "soakd-notify-failure", "soakd@search.service"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    # <2> is the journal's "critical" priority (SyslogLevelPrefix=yes).
    assert proc.stdout.startswith(f"<2>{expected}; see journalctl -u soakd@search.service")


def test_nightly_timer_starts_the_instance() -> None:
    timer = read_unit("soakd-nightly@.timer")
    assert one(timer, "Timer", "Unit") == "soakd@%i.service"
    assert one(timer, "Timer", "Persistent") == "true"


_MDWE_PROGRAM = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
"""

_WORKER_LIKE = """
import asyncio, ctypes, gc, mmap, tracemalloc
import aiohttp, objgraph, psutil
from aiohttp import web
from soakd.reference import faults

try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    pass
else:
    raise SystemExit("W^X is not enforced: the test proves nothing")

tracemalloc.start(8)
faults.leak_native(64)                         # ctypes call into libc
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
assert callback(41) == 42                      # libffi closure
objgraph.typestats()
psutil.Process().memory_full_info()

async def main():
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="ok"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as r:
        assert await r.text() == "ok"
    await runner.cleanup()

asyncio.run(main())
tracemalloc.take_snapshot().statistics("lineno")
print("worker-like code ran under W^X")
"""


def test_worker_code_runs_with_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes is safe: the kernel's PR_SET_MDWE enforces the same W^X."""
    proc = subprocess.run(
        [sys.executable, "-c", _MDWE_PROGRAM, _WORKER_LIKE],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker-like code ran under W^X" in proc.stdout


@pytest.mark.slow
def test_a_soak_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    """The real supervisor and worker (tracemalloc on, reports written) under W^X."""
    from tests.conftest import soak_env, soakd_cmd, write_config

    cfg = write_config(tmp_path, '[target]\nfactory = "simple_targets:Echo"\n')
    run = tmp_path / "run"
    launcher = _MDWE_PROGRAM.replace(
        'os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])',
        "os.execv(sys.argv[1], sys.argv[1:])",
    )
    argv = soakd_cmd(
        "run", "-c", str(cfg), "-d", "3s", "--run-dir", str(run),
        "--set", "sampling.tracemalloc=always",
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", launcher, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=soak_env(),
        cwd=tmp_path,
    )
    if proc.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == EXIT_INCONCLUSIVE, proc.stderr[-3000:]  # 3 s: not judged
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["verdict"] == "inconclusive" and summary["failure"] is None
    assert summary["workload"]["iterations"] > 0
    assert (run / "report.html").exists()
