"""Validate a config file and exit: 0 when valid, 2 with a message naming each mistake.

Also imports the target and checks ``[target.options]`` against its factory's signature and
that the method exists (the factory is not called: nothing starts); --no-import skips that.
"""

from __future__ import annotations

import argparse

from soakd.commands.target_check import target_problems
from soakd.config import load_config
from soakd.errors import ConfigError
from soakd.units import format_duration, format_size


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "check-config",
        help="validate a config file (and the target's options)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--no-import", action="store_true", help="do not import the target to check its options"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.overrides)
    if config.otel.enabled:  # before anything starts: exit 2 naming the missing extra
        from soakd.sinks.otel import require_extra

        require_extra()
    python = ""
    own_interpreter = config.target.python is None and config.target.venv is None
    if not own_interpreter:
        from soakd.supervisor.interpreter import prepare

        checked = prepare(config, build=False)  # exists, runs, is Python 3.10+
        python = f", Python {'.'.join(map(str, checked.info.get('version_info', [])))}"
    # The target is imported here only when it runs in soakd's own interpreter: the service's
    # own environment has packages this one does not (and must not) have.
    if own_interpreter and not getattr(args, "no_import", False):
        problems = target_problems(config)
        if problems:
            raise ConfigError("\n".join(f"{args.file}: {p}" for p in problems))
    print(
        f"{args.file}: OK (target {config.target.name}, {len(config.rules)} rules, "
        f"run {format_duration(config.run.duration)}, "
        f"guard.worker_rss {format_size(config.guard.worker_rss)}{python})"
    )
    return 0
