"""Run a soak: drive the target, sample, detect leaks, apply rules, write the run directory.

Prints the run directory's path first. Exit codes: 0 pass, 1 internal error, 2 usage or
config error, 3 leak found, 4 aborted by a threshold rule, 5 target failed.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

import anyio
import psutil

from soakd.config import load_config
from soakd.errors import CommandError, RunDirError
from soakd.rundir import create_run_dir
from soakd.units import parse_duration


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "run", help="run a soak", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument(
        "--config", "-c", metavar="FILE", help="TOML config (default: built-in defaults)"
    )
    p.add_argument("--duration", "-d", metavar="DUR", help="how long to soak: 90s, 10m, 6h")
    p.add_argument(
        "--run-dir", metavar="DIR", help="write the run here (must not exist or be empty)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key with a TOML value, e.g. workload.users=16",
    )
    p.add_argument(
        "--python",
        metavar="PATH",
        help="run the target under this interpreter (the service's own, e.g. "
        ".venv/bin/python; Python 3.10+); overrides target.python and target.venv",
    )
    p.add_argument("--pid", type=int, metavar="PID", help="watch a running process instead")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                   help="watch this command instead of a Python target")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    config = load_config(args.config, overrides)
    if config.otel.enabled:  # before anything starts: exit 2 naming the missing extra
        from soakd.sinks.otel import require_extra

        require_extra()
    duration = config.run.duration
    if args.duration is not None:
        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            raise CommandError(f"--duration {args.duration!r}: {exc}") from None
        if duration <= 0:
            raise CommandError(f"--duration {args.duration!r}: must be > 0")
    command = [c for c in (args.command or [])]
    if command and command[0] == "--":
        command = command[1:]
    if command and args.pid is not None:
        raise CommandError("give either --pid PID or -- CMD ..., not both")
    if args.pid is not None and (args.pid <= 0 or not psutil.pid_exists(args.pid)):
        raise CommandError(f"--pid {args.pid}: no such process; pass the pid of a running process")
    from soakd.supervisor.interpreter import prepare

    python = prepare(config, args.python)  # before the run directory: a bad one is exit 2
    runs_dir = Path(config.output.runs_dir).expanduser()  # relative to the working directory
    run_dir = create_run_dir(
        runs_dir,
        Path(args.run_dir) if args.run_dir else None,
        config.output.retention,
        config.output.mode,
    )
    print(run_dir.path, flush=True)
    from soakd.supervisor import Supervisor
    from soakd.supervisor.allocator import limit_arenas

    limit_arenas()  # before the supervisor's threads exist: its RSS must not creep

    try:
        supervisor = Supervisor(config, run_dir, duration, python)
    except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: the store cannot be created
        raise RunDirError(
            f"cannot write the run directory {run_dir.path}: {exc}; "
            "free some space or choose another --run-dir"
        ) from None
    if command or args.pid is not None:
        supervisor.set_external(command or None, args.pid)
    code: int = anyio.run(supervisor.run)
    report = run_dir.path / "report.html"
    if report.is_file():  # stderr: stdout stays one JSON event per line for pipes
        print(f"soakd: report: {report}", file=sys.stderr, flush=True)
    return code
