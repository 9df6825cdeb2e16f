"""soakd from Python: run a soak as ``soakd run`` does and read its summary.

    import soakd

    summary = soakd.run("soakd.toml", duration="30m", sets={"workload.users": 8})
    if not summary.passed:
        raise SystemExit(f"soak failed: {summary.verdict}: {summary.verdict_reason}")

:func:`run` starts the real CLI in a subprocess (the same run, run directory, events and
reports as ``soakd run``; the soak's supervisor must not share a process with the caller) and
returns the :class:`Summary` read from the run directory; :func:`load_summary` reads the
summary of any run directory. This module imports only the standard library: importing soakd
costs nothing and works in an interpreter without soakd's dependencies.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soakd.errors import EXIT_USAGE, RunDirError, SoakdError

__all__ = ["Leak", "RunError", "Summary", "load_summary", "run"]

SUMMARY_SCHEMA = "soakd.summary/1"
_MAX_SUMMARY_BYTES = 64 * 1024 * 1024  # a run directory is untrusted input: bounded read


class RunError(SoakdError):
    """``soakd run`` ended without a summary (bad config, unwritable run directory, crash):
    ``exit_code`` is the CLI's, ``stderr`` its message."""

    def __init__(self, message: str, exit_code: int, stderr: str) -> None:
        super().__init__(message, exit_code)
        self.stderr = stderr


@dataclass(frozen=True)
class Leak:
    """One confirmed leak of ``summary.json``'s ``leaks[]`` (one per cause)."""

    kind: str
    site: str | None
    slope_per_h: float | None
    unit: str
    growth: float | None
    first_detected_s: float | None
    traceback: tuple[str, ...] = ()
    type: str | None = None
    line: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Leak:
        tb = raw.get("traceback")
        return cls(
            kind=str(raw.get("kind", "?")),
            site=_opt_str(raw.get("site")),
            slope_per_h=_opt_float(raw.get("slope_per_h")),
            unit=str(raw.get("unit", "bytes")),
            growth=_opt_float(raw.get("growth")),
            first_detected_s=_opt_float(raw.get("first_detected_s")),
            traceback=tuple(str(f) for f in tb) if isinstance(tb, list) else (),
            type=_opt_str(raw.get("type")),
            line=_opt_str(raw.get("line")),
        )


@dataclass(frozen=True)
class Summary:
    """A run's ``summary.json`` (schema ``soakd.summary/1``), typed where a pipeline decides.

    ``data`` is the whole document, for every other field (see the README, "Reading a run").
    """

    run_dir: Path
    run_id: str
    verdict: str  # pass | leak | aborted | target_failed | inconclusive | error
    exit_code: int  # the exit code `soakd run` gave (0 pass, 3 leak, 4 aborted, 5, 7, ...)
    verdict_reason: str | None
    target: str
    duration_s: float | None
    interrupted: bool
    leaks: tuple[Leak, ...]
    breaches: tuple[Mapping[str, Any], ...]
    workload: Mapping[str, Any]
    memory: Mapping[str, Any]
    data: Mapping[str, Any] = field(repr=False)

    @property
    def passed(self) -> bool:
        """The soak passed: healthy, judged, no leak (exit code 0)."""
        return self.verdict == "pass" and self.exit_code == 0

    @property
    def report_html(self) -> Path:
        return self.run_dir / "report.html"

    @classmethod
    def from_json(cls, run_dir: Path, raw: Mapping[str, Any]) -> Summary:
        if raw.get("schema") != SUMMARY_SCHEMA:
            raise RunDirError(f"{run_dir}: summary.json is not a {SUMMARY_SCHEMA} document")
        leaks = raw.get("leaks")
        breaches = raw.get("breaches")
        exit_code = raw.get("exit_code")
        return cls(
            run_dir=run_dir,
            run_id=str(raw.get("run_id", run_dir.name)),
            verdict=str(raw.get("verdict", "error")),
            exit_code=exit_code if isinstance(exit_code, int) else 1,
            verdict_reason=_opt_str(raw.get("verdict_reason")),
            target=str(raw.get("target", "?")),
            duration_s=_opt_float(raw.get("duration_s")),
            interrupted=raw.get("interrupted") is True,
            leaks=tuple(
                Leak.from_json(x)
                for x in (leaks if isinstance(leaks, list) else ())
                if isinstance(x, dict)
            ),
            breaches=tuple(
                x for x in (breaches if isinstance(breaches, list) else ()) if isinstance(x, dict)
            ),
            workload=_mapping(raw.get("workload")),
            memory=_mapping(raw.get("memory")),
            data=raw,
        )


def load_summary(run_dir: str | os.PathLike[str]) -> Summary:
    """The summary of a run directory (as ``soakd run`` or ``soakd report`` left it).

    A directory without summary.json (a run killed before its first checkpoint) needs
    ``soakd report RUN_DIR`` first; a missing or malformed file raises :class:`RunDirError`.
    """
    path = Path(run_dir)
    target = path / "summary.json"
    try:
        # no symlinks, FIFOs or devices: a run directory may come from another box
        fd = os.open(
            target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        )
    except FileNotFoundError:
        raise RunDirError(
            f"no summary.json in {path}; rebuild it with `soakd report {path}`"
        ) from None
    except OSError as exc:
        raise RunDirError(f"cannot read {target}: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise RunDirError(f"{target} is not a regular file")
        blob = f.read(_MAX_SUMMARY_BYTES + 1)
    if len(blob) > _MAX_SUMMARY_BYTES:
        raise RunDirError(f"{target} is larger than {_MAX_SUMMARY_BYTES} bytes")
    try:
        raw = json.loads(blob)
    except (ValueError, RecursionError):
        raise RunDirError(f"{target} is not valid JSON") from None
    if not isinstance(raw, dict):
        raise RunDirError(f"{target} is not a JSON object")
    return Summary.from_json(path, raw)


def run(
    config: str | os.PathLike[str] | None = None,
    *,
    duration: str | float | None = None,
    sets: Mapping[str, Any] | Sequence[str] = (),
    run_dir: str | os.PathLike[str] | None = None,
    command: Sequence[str] | None = None,
    pid: int | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    python: str = sys.executable,
) -> Summary:
    """Run a soak exactly as ``soakd run`` does, in a subprocess, and return its summary.

    ``config`` is the TOML file (None: the built-in defaults); ``duration`` a number of seconds
    or a duration such as ``"30m"`` or ``"1h30m"``; ``sets`` the ``--set`` overrides, as
    ``{"workload.users": 8}`` (values written as TOML) or ``["workload.users=8"]``;
    ``command``/``pid`` watch a process instead of a Python target. The run's events go to
    ``events.jsonl`` (the subprocess's stdout is discarded, stderr is kept for errors).

    Returns the summary whatever the verdict (a leak is ``summary.verdict == "leak"``, not an
    exception); raises :class:`RunError` when the run produced no summary (a bad config: exit 2
    with the CLI's message) and ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the
    soak is interrupted with SIGTERM first, so it still writes its summary).
    """
    argv = [python, "-m", "soakd", "run"]
    if config is not None:
        argv += ["--config", os.fspath(config)]
    if duration is not None:
        argv += ["--duration", _duration_arg(duration)]
    if run_dir is not None:
        argv += ["--run-dir", os.fspath(run_dir)]
    for item in _set_args(sets):
        argv += ["--set", item]
    if pid is not None:
        argv += ["--pid", str(int(pid))]
    if command is not None:
        argv += ["--", *command]
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            first = proc.stdout.readline() if proc.stdout is not None else ""
            out_rest, err = _communicate(proc, timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: soakd finishes its summary and exits by its verdict
            proc.communicate(timeout=120)
            raise
    del out_rest
    code = proc.returncode
    line = first.strip()
    where = Path(cwd or ".") / line if line and not os.path.isabs(line) else Path(line)
    if not line or not (where / "summary.json").is_file():
        message = err.strip().splitlines()[-1] if err.strip() else f"soakd run exited {code}"
        raise RunError(message.removeprefix("soakd: error: "), code if code else EXIT_USAGE, err)
    return load_summary(where)


def _communicate(proc: subprocess.Popen[str], timeout: float | None) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    return out or "", err or ""


def _duration_arg(value: str | float) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"duration: expected seconds or a string such as '30m', got {value!r}")
    if isinstance(value, str):
        return value
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {value!r}")
    return f"{value:g}s"


def _set_args(sets: Mapping[str, Any] | Sequence[str]) -> list[str]:
    if isinstance(sets, str):
        raise TypeError("sets: pass a mapping or a list of 'key=value' strings, not one string")
    if isinstance(sets, Mapping):
        return [f"{key}={_toml(value)}" for key, value in sets.items()]
    return [str(item) for item in sets]


def _toml(value: Any) -> str:
    """A TOML inline value (--set's syntax) for a Python value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a TOML value")


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _opt_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
