"""One root exception and the exit codes; only ``cli.main`` turns errors into exit codes.

Library code raises the subclass that names what failed (``RunDirError``, ``StoreError``,
``SnapshotError``, ...); each carries the exit code its failure means for a command, so the
command line maps any ``SoakdError`` to a message without a traceback and that code.
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_LEAK = 3
EXIT_ABORTED = 4
EXIT_TARGET_FAILED = 5
EXIT_INCONCLUSIVE = 7  # nothing could be judged, or the run was interrupted


class SoakdError(Exception):
    """Root of every error soakd raises on purpose: printed without a traceback by the CLI."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CommandError(SoakdError):
    """A command's own user-facing failure (bad arguments, nothing to do)."""


class ConfigError(SoakdError):
    """A bad config file, key or value (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class RunDirError(SoakdError):
    """A run directory that cannot be created, found, read or written."""


class StoreError(SoakdError):
    """A sample store (``samples.db``) that cannot be opened or read."""


class SnapshotError(SoakdError):
    """An allocation snapshot that cannot be read or written."""


class SummaryError(SoakdError):
    """A ``summary.json`` that cannot be built, read or validated."""


class ReportError(SoakdError):
    """A report that cannot be rendered or written."""
