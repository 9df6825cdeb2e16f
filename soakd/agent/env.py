"""Where an agent listens and how a process is told to serve one: names shared by both sides.

The agent (:func:`soakd.agent.serve`) reads these variables; the supervisor sets them for a
command it starts (``soakd run -- CMD``) and reads them to find the agent of ``--pid``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Final

__all__ = [
    "ENV_DISABLED",
    "ENV_PROFILER",
    "ENV_SOCKET",
    "WATCHER_SOCKET_DIR",
    "agent_environment",
    "attached_socket_path",
    "default_socket_path",
    "profiler_interval",
    "socket_name",
    "watcher_socket_path",
]

ENV_SOCKET: Final = "SOAKD_AGENT_SOCKET"
# "1" turns serve() into a no-op: soakd's own processes set it so that they never serve.
ENV_DISABLED: Final = "SOAKD_AGENT_DISABLED"
# The sampled profiler's mean interval in bytes, or "off"; unset: the default interval.
ENV_PROFILER: Final = "SOAKD_PROFILER_INTERVAL"
# The watcher looks under /tmp itself, whatever $TMPDIR says: CMD may run with another TMPDIR.
WATCHER_SOCKET_DIR: Final = "/tmp"


def socket_name(key: int | str) -> str:
    """The socket's file name for a pid or a run id."""
    return f"soakd-agent-{key}.sock"


def default_socket_path(pid: int | None = None) -> str:
    """Where :func:`~soakd.agent.serve` listens: ``$SOAKD_AGENT_SOCKET`` or the temp dir's."""
    configured = os.environ.get(ENV_SOCKET)
    if configured:
        return configured
    return os.path.join(tempfile.gettempdir(), socket_name(pid or os.getpid()))


def watcher_socket_path(key: int | str) -> str:
    """The socket the supervisor assigns to a command it starts (``key``: the run id)."""
    return os.path.join(WATCHER_SOCKET_DIR, socket_name(key))


def attached_socket_path(pid: int, environ: Mapping[str, str] | None = None) -> str:
    """Where the supervisor looks for the agent of a running ``pid``."""
    env = os.environ if environ is None else environ
    return env.get(ENV_SOCKET, watcher_socket_path(pid))


def profiler_interval(default: int, environ: Mapping[str, str] | None = None) -> int | None:
    """The interval ``$SOAKD_PROFILER_INTERVAL`` asks for: None for "off", ``default`` when
    unset or not a positive integer (an agent never refuses to start over it)."""
    raw = (os.environ if environ is None else environ).get(ENV_PROFILER, "").strip().lower()
    if raw in ("off", "0", "none"):
        return None
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def agent_environment(
    environ: Mapping[str, str], socket_path: str, profiler: int | None = None
) -> dict[str, str]:
    """``environ`` for a command that serves its agent at ``socket_path``, with the sampled
    profiler at ``profiler`` bytes (None: off)."""
    env = dict(environ)
    env.pop(ENV_DISABLED, None)
    env[ENV_SOCKET] = socket_path
    env[ENV_PROFILER] = "off" if profiler is None else str(profiler)
    return env
