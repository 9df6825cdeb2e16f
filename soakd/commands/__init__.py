"""One module per subcommand; each is a :class:`Command`, listed in :data:`soakd.cli.COMMANDS`.

A command's module docstring is its ``--help`` description.
"""

from __future__ import annotations

import argparse
from typing import Protocol, TypeAlias

__all__ = ["Command", "Subparsers"]

# A string: argparse's class is not subscriptable at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Command(Protocol):
    """A subcommand module: ``add_parser`` registers it (``set_defaults(func=run)``)."""

    def add_parser(self, subparsers: Subparsers, /) -> None: ...

    def run(self, args: argparse.Namespace, /) -> int: ...
