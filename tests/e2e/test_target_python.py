"""Soak a service in its own environment: a virtualenv whose pins soakd cannot live with.

The service's virtualenv (``tests/service_env.py``, cached across sessions) holds pydantic 1,
anyio 3 and structlog 26; soakd runs from its own environment and drives the service's
interpreter (``[target] python`` / ``--python``). The run must find the leak at the service's
line and report the service's own Python and versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TARGETS, events, run_soakd, soak_env, stop_when, write_config
from tests.service_env import cached_venv, service_python

# soakd started with its source tree on its own sys.path only: no PYTHONPATH, and a working
# directory without soakd in it, so its children (the worker, a command) see soakd's package
# only through the code directory the supervisor hands them.
LAUNCH = f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.argv[0] = 'soakd'; " + (
    "from soakd.cli import main; raise SystemExit(main())"
)


def _isolated_env() -> dict[str, str]:
    env = soak_env()
    env.pop("PYTHONPATH", None)
    return env


def soak_until(
    *args: str,
    until: Callable[[list[dict[str, Any]]], Any],
    timeout: float,
    cwd: Path,
    run_dir: Path,
) -> subprocess.CompletedProcess[str]:
    """``soakd run ARGS`` until ``until(events)`` holds (polled, bounded), then SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args], cwd=cwd, env=_isolated_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return stop_when(proc, until, timeout, run_dir)


SERVICE = """\
import pydantic
import anyio

# The service's own pins, not soakd's: importing them here proves which ones the worker sees.
assert pydantic.VERSION.startswith("1."), pydantic.VERSION

_KEPT = []


class Answer(pydantic.BaseModel):
    text: str


class Service:
    async def process_query(self, query):
        _KEPT.append(bytearray(20 * 1024))  # the leak
        await anyio.sleep(0.001)
        yield {"type": "status", "stage": "analysis_complete"}
        yield {"type": "content", "text": Answer(text=query).text}
        yield {"type": "complete"}
"""
LEAK_LINE = SERVICE.splitlines().index("        _KEPT.append(bytearray(20 * 1024))  # the leak") + 1
DETECTION = """
[detection]
warmup = "5s"
warmup_max = "20s"
window = "20s"
confirm_after = 2
"""


@pytest.fixture(scope="session")
def venv_python() -> Iterator[str]:
    yield str(cached_venv(service_python()))


def _describe(python: str) -> dict[str, Any]:
    code = (
        "import json, sys, pydantic, anyio, structlog; "
        "print(json.dumps({'version': sys.version, 'pydantic': pydantic.VERSION}))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def _service(tmp_path: Path, target: str) -> Path:
    (tmp_path / "leaky_service.py").write_text(SERVICE, encoding="utf-8")
    body = f'[target]\nfactory = "leaky_service:Service"\npython_path = ["."]\n{target}\n'
    return write_config(tmp_path, body + DETECTION)


@pytest.mark.slow
def test_a_service_in_its_own_virtualenv_leaks_at_its_line(
    tmp_path: Path, venv_python: str
) -> None:
    cfg = _service(tmp_path, f"python = {json.dumps(venv_python)}")
    run = tmp_path / "run"
    proc = soak_until(
        "run", "-c", str(cfg), "-d", "150s", "--run-dir", str(run),
        until=lambda evs: [e for e in evs if e["event"] == "leak.confirmed" and e["site"]],
        timeout=150, cwd=tmp_path, run_dir=run,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["verdict"] == "leak"
    assert summary["leaks"][0]["site"] == f"{tmp_path / 'leaky_service.py'}:{LEAK_LINE}"

    evs = events(run)
    python = next(e for e in evs if e["event"] == "run.started")["python"]
    own = _describe(venv_python)
    assert python["configured"] == "target.python"
    assert python["executable"] == venv_python and python["version"] == own["version"]
    dists = python["distributions"]
    assert dists["pydantic"] == own["pydantic"] and dists["pydantic"].startswith("1.")
    assert dists["anyio"].startswith("3.") and dists["structlog"].startswith("26.")
    # None of soakd's own dependencies reached the service's interpreter.
    assert not {"psutil", "APScheduler", "aiohttp", "objgraph"} & set(dists), dists
    assert summary["python"]["distributions"] == dists
    # Attribution in that interpreter: the profiler loaded (bundled or built for its ABI),
    # or the run said what it lost.
    if python["profiler"].startswith("unavailable"):
        assert [e for e in evs if e["event"] == "attribution.fallback"], python["profiler"]
    else:
        ready = [e for e in evs if e["event"] == "attribution.ready"]
        assert ready and ready[0]["mode"] == "sampled", python["profiler"]


@pytest.mark.slow
def test_the_python_option_overrides_the_config(tmp_path: Path, venv_python: str) -> None:
    cfg = _service(tmp_path, 'python = "/nonexistent/bin/python"')
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH, "run", "-c", str(cfg), "-d", "4s", "--run-dir", str(run),
         "--python", venv_python],
        cwd=tmp_path, env=_isolated_env(), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    # 4 s: the leak may be confirmed already (3) or not yet (7); either way the service ran
    assert proc.returncode in (3, 7), proc.stderr[-2000:]
    started = next(e for e in events(run) if e["event"] == "run.started")
    assert started["python"]["configured"] == "--python"
    assert started["python"]["executable"] == venv_python
    workload = json.loads((run / "summary.json").read_text())["workload"]
    assert workload["iterations"] > 0 and workload["errors"] == 0, workload


@pytest.mark.slow
def test_the_agent_in_a_command_of_the_service_s_interpreter(
    tmp_path: Path, venv_python: str
) -> None:
    """``soakd run -- .venv/bin/python -m soakd.agent app.py``: the agent runs in the service's
    environment, which has none of soakd's dependencies, and attributes its heap leak."""
    cfg = write_config(tmp_path, DETECTION)
    run = tmp_path / "run"
    app = os.path.join(TARGETS, "external_apps.py")
    proc = soak_until(
        "run", "-c", str(cfg), "-d", "150s", "--run-dir", str(run), "--",
        venv_python, "-m", "soakd.agent", app, "heap", "400",
        until=lambda evs: [
            e for e in evs if e["event"] == "leak.confirmed" and e["kind"] == "heap" and e["site"]
        ],
        timeout=150, cwd=tmp_path, run_dir=run,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    evs = events(run)
    assert [e for e in evs if e["event"] == "agent.connected"]
    summary = json.loads((run / "summary.json").read_text())
    heap = [leak for leak in summary["leaks"] if leak["kind"] == "heap"]
    assert heap and heap[0]["site"] == f"{app}:37", summary["leaks"]


def test_a_missing_interpreter_is_a_config_error(tmp_path: Path) -> None:
    cfg = _service(tmp_path, 'python = "venv/bin/python"')
    proc = run_soakd("check-config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    where = tmp_path / "venv" / "bin" / "python"
    assert f"target.python = '{where}': no such file" in proc.stderr
    assert "Python 3.10+ interpreter" in proc.stderr
    # soakd run refuses before it creates a run directory
    proc = run_soakd("run", "-c", str(cfg), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "run").exists(), proc.stderr


def test_a_directory_that_is_no_virtualenv_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "notavenv").mkdir()
    cfg = _service(tmp_path, 'venv = "notavenv"')
    proc = run_soakd("check-config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "target.venv = 'notavenv'" in proc.stderr and "bin/python does not exist" in proc.stderr


def test_an_interpreter_that_is_not_python_is_a_config_error(tmp_path: Path) -> None:
    cfg = _service(tmp_path, 'python = "/bin/true"')
    proc = run_soakd("check-config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "target.python = '/bin/true': is not a Python soakd's worker can run in" in proc.stderr


def test_both_python_and_venv_is_a_config_error(tmp_path: Path) -> None:
    cfg = _service(tmp_path, 'python = "/usr/bin/python3"\nvenv = "/srv/app/.venv"')
    proc = run_soakd("check-config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "either 'python' (the interpreter) or 'venv'" in proc.stderr


def test_an_interpreter_older_than_3_10_is_a_config_error(tmp_path: Path) -> None:
    old = next(
        (
            p
            for p in sorted(Path.home().glob(".pyenv/versions/3.[6-9].*/bin/python3"))
            if p.exists()
        ),
        None,
    )
    if old is None:
        pytest.skip("no Python older than 3.10 on this box to try")
    cfg = _service(tmp_path, f"python = {json.dumps(str(old))}")
    proc = run_soakd("check-config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"target.python = '{old}': is Python 3." in proc.stderr
    assert "needs Python 3.10 or newer" in proc.stderr
