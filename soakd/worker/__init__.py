"""The worker process: builds the target, drives it, answers the supervisor's questions.

The supervisor starts ``python -m soakd.worker`` with :func:`worker_environment`; the names it
sets are defined here, next to the process that reads them (:mod:`soakd.worker.main`).
"""

from __future__ import annotations

from typing import Final

from soakd.agent.env import ENV_DISABLED

__all__ = ["ENV_CHANNEL_FD", "ENV_CONFIG", "ENV_SUPERVISOR_PID", "worker_environment"]

ENV_CHANNEL_FD: Final = "SOAKD_CHANNEL_FD"  # the worker's end of the socketpair
ENV_CONFIG: Final = "SOAKD_CONFIG_FD"  # a memory file holding the run's full config (JSON)
ENV_SUPERVISOR_PID: Final = "SOAKD_SUPERVISOR_PID"  # the worker dies when this process does


def worker_environment(channel_fd: int, config_fd: int, supervisor_pid: int) -> dict[str, str]:
    """The variables to add to the worker's environment."""
    return {
        ENV_CHANNEL_FD: str(channel_fd),
        ENV_CONFIG: str(config_fd),
        ENV_SUPERVISOR_PID: str(supervisor_pid),
        ENV_DISABLED: "1",  # the worker's agent answers over the channel, not a socket
        "PYTHONUNBUFFERED": "1",
    }
