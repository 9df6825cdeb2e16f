"""``soakd``: the command line. Only main() catches errors and turns them into exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from soakd import __version__
from soakd.agent.env import ENV_DISABLED
from soakd.commands import (
    Command,
    check_config,
    compare,
    completion,
    diff,
    init,
    report,
    run,
    schema,
    status,
)
from soakd.errors import EXIT_INTERNAL, SoakdError

# In the order of ``soakd --help``.
COMMANDS: tuple[Command, ...] = (
    run,
    check_config,
    report,
    diff,
    compare,
    status,
    init,
    schema,
    completion,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soakd", description="Soak and leak-detection daemon for async Python services."
    )
    parser.add_argument("--version", action="version", version=f"soakd {__version__}")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault(ENV_DISABLED, "1")  # soakd itself never serves an agent
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except SoakdError as exc:
        print(f"soakd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_INTERNAL
    except Exception as exc:  # a bug: say so plainly, keep the traceback for the report
        import traceback

        traceback.print_exc()
        print(f"soakd: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
