"""Validate a config file and exit: 0 when valid, 2 with a message naming each mistake."""

from __future__ import annotations

import argparse

from soakd.config import load_config
from soakd.units import format_duration, format_size


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("check-config", help="validate a config file", description=__doc__)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.overrides)
    print(
        f"{args.file}: OK (target {config.target.name}, {len(config.rules)} rules, "
        f"run {format_duration(config.run.duration)}, "
        f"guard.worker_rss {format_size(config.guard.worker_rss)})"
    )
    return 0
