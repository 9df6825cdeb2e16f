"""Validate a config file and exit: 0 when valid, 2 with a message naming each mistake."""

from __future__ import annotations

import argparse

from soakd.config import load_config


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("check-config", help="validate a config file", description=__doc__)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.overrides)
    if config.otel.enabled:  # before anything starts: exit 2 naming the missing extra
        from soakd.sinks.otel import require_extra

        require_extra()
    python = ""
    if config.target.python is not None or config.target.venv is not None:
        from soakd.supervisor.interpreter import prepare

        checked = prepare(config, build=False)  # exists, runs, is Python 3.10+
        python = f", Python {'.'.join(map(str, checked.info.get('version_info', [])))}"
    print(f"{args.file}: OK (target {config.target.name}, {len(config.rules)} rules{python})")
    return 0
