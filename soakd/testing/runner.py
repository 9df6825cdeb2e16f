"""Running one soak: the real CLI (``python -m soakd run``) in a subprocess, then judging it.

The soak gets its own directory: the generated ``soakd.toml``, soakd's output in ``soakd.log``
and the run directory ``run/``. The subprocess is always bounded and always reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from soakd import rundir
from soakd.testing.outcome import SoakResult, evaluate, measure_growth, top_site_growth
from soakd.testing.profile import build_config, read_user_config, seconds, to_toml
from soakd.testing.spec import DEFAULT_DURATION_S, SoakSpec

__all__ = ["child_env", "judge", "run_soak"]

_TAIL_CHARS = 2000


def child_env() -> dict[str, str]:
    """The soak's environment: this process's import path, so the worker finds the target."""
    # Imported here: the plugin loads in every pytest run, the agent package only when soaking.
    from soakd.agent.env import ENV_SOCKET
    from soakd.sinks.notify import child_environment

    # A pytest run under systemd must not make soakd notify pytest's unit, nor point soakd at
    # an agent socket that was meant for pytest's own process.
    env = child_environment(os.environ)
    env.pop(ENV_SOCKET, None)
    installed = {os.path.realpath(p) for p in sysconfig.get_paths().values()}
    extra: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if path in installed or path in extra or not os.path.isdir(path):
            continue
        extra.append(path)  # rootdir/conftest insertions: what made the test's imports work
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(extra)
    return env


def run_soak(
    spec: SoakSpec,
    soak_dir: Path,
    *,
    duration_override: float | None = None,
    env: Mapping[str, str] | None = None,
) -> SoakResult:
    """Run ``soakd run`` on the spec in ``soak_dir`` (created) and judge what it left."""
    user_config = read_user_config(spec.config) if spec.config is not None else {}
    duration = duration_override or spec.duration_s
    if duration is None:
        configured = user_config.get("run", {}).get("duration")
        duration = seconds(configured) if configured is not None else DEFAULT_DURATION_S
        duration = duration or DEFAULT_DURATION_S
    document = build_config(spec, duration, user_config)
    soak_dir.mkdir(parents=True, exist_ok=True)
    config_path = soak_dir / "soakd.toml"
    config_path.write_text(to_toml(document), encoding="utf-8")
    run_dir = soak_dir / "run"
    log_path = soak_dir / "soakd.log"
    cmd = [sys.executable, "-m", "soakd", "run", "--run-dir", str(run_dir),
           "--config", str(config_path), "--duration", f"{duration}s"]  # fmt: skip
    for item in spec.overrides:
        cmd += ["--set", item]
    # Bounded even if soakd wedges: start and stop timeouts plus slack for the report.
    run_cfg = document.get("run", {})
    limit = duration + seconds(run_cfg.get("start_timeout", 60)) + seconds(
        run_cfg.get("stop_timeout", 30)) + 60.0  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else child_env())  # fmt: skip
        with _reaped(proc):
            try:
                exit_code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # soakd finishes its report on SIGTERM
                exit_code = proc.wait(timeout=60)
    return judge(spec, run_dir, soak_dir, exit_code, log_path)


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Never leave soakd behind: on Ctrl-C, a pytest-timeout or a hung stop, end it."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def judge(
    spec: SoakSpec, run_dir: Path, soak_dir: Path, exit_code: int, log_path: Path
) -> SoakResult:
    """Read what the soak left and decide; no summary at all is itself a failure."""
    target = spec.target or "(from config)"
    try:
        summary: dict[str, Any] = json.loads((run_dir / rundir.SUMMARY).read_text("utf-8"))
    except (OSError, ValueError):
        summary = {}
    if not summary:
        return SoakResult(
            target=target, verdict="error", exit_code=exit_code, summary={}, run_dir=run_dir,
            soak_dir=soak_dir,
            failures=(f"soakd run exited {exit_code} without a {rundir.SUMMARY}",),
            log_tail=_tail(log_path),
        )  # fmt: skip
    growth = measure_growth(run_dir, spec.rounds)
    failures = evaluate(summary, growth, spec)
    verdict = str(summary.get("verdict", "error"))
    if exit_code != summary.get("exit_code"):
        failures.append(
            f"soakd exited {exit_code} but {rundir.SUMMARY} says {summary.get('exit_code')}"
        )
    top = top_site_growth(run_dir) if failures else ()
    tail = ""
    if verdict in ("target_failed", "error"):
        tail = _tail(run_dir / rundir.WORKER_LOG) or _tail(log_path)
    return SoakResult(
        target=str(summary.get("target") or target),
        verdict=verdict,
        exit_code=exit_code,
        summary=summary,
        run_dir=run_dir,
        soak_dir=soak_dir,
        rss_growth_bytes=growth.growth_bytes,
        growth_since_s=growth.since_s,
        rounds=growth.rounds,
        top_sites=top,
        failures=tuple(failures),
        log_tail=tail,
    )


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _TAIL_CHARS))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
