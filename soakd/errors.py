"""One root exception; commands raise CommandError with an exit code, only main() prints it."""

from __future__ import annotations

EXIT_PASS = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_LEAK = 3
EXIT_ABORTED = 4
EXIT_TARGET_FAILED = 5


class SoakdError(Exception):
    """Root of every error soakd raises on purpose."""


class CommandError(SoakdError):
    """A user-facing failure: printed without a traceback, exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(CommandError):
    """A bad config file, key or value (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)
