"""Where an agent listens and how a process is told to serve one: names shared by both sides.

The agent (:func:`soakd.agent.serve`) reads these variables; the supervisor sets them for a
command it starts (``soakd run -- CMD``) and looks for the agent of ``--pid`` where the agent
puts its socket by default.

Sockets live in a private directory: ``$XDG_RUNTIME_DIR/soakd`` when ``$XDG_RUNTIME_DIR`` is a
0700 directory of ours, else ``<temp dir>/soakd-<uid>``, created 0700 and used only if it is
a real directory of ours that nobody else can enter (a name in ``/tmp`` anyone could have
taken first). Socket names carry a random token: knowing the pid or the run id is not enough
to guess one.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from typing import Final

from soakd.agent.protocol import AgentError

__all__ = [
    "ENV_DISABLED",
    "ENV_PROFILER",
    "ENV_SOCKET",
    "agent_environment",
    "attached_socket_path",
    "default_socket_path",
    "find_agent_socket",
    "private_dir",
    "profiler_interval",
    "socket_name",
    "watcher_socket_path",
]

ENV_SOCKET: Final = "SOAKD_AGENT_SOCKET"
# "1" turns serve() into a no-op: soakd's own processes set it so that they never serve.
ENV_DISABLED: Final = "SOAKD_AGENT_DISABLED"
# The sampled profiler's mean interval in bytes, or "off"; unset: the default interval.
ENV_PROFILER: Final = "SOAKD_PROFILER_INTERVAL"
_PREFIX: Final = "soakd-agent-"
_SUFFIX: Final = ".sock"


def socket_name(key: int | str) -> str:
    """A fresh socket file name for a pid or a run id, with a random token."""
    return f"{_PREFIX}{key}-{secrets.token_hex(8)}{_SUFFIX}"


def private_dir(environ: Mapping[str, str] | None = None) -> str:
    """This user's directory for agent sockets, created 0700 if need be; AgentError if unsafe."""
    env = os.environ if environ is None else environ
    uid = os.getuid()
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and _unsafe(runtime, uid, 0o077) is None:
        return _ensure_private(os.path.join(runtime, "soakd"), uid)
    return _ensure_private(os.path.join(tempfile.gettempdir(), f"soakd-{uid}"), uid)


def _ensure_private(path: str, uid: int) -> str:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # checked below, like one made just now
    except OSError as exc:
        raise AgentError(f"cannot create {path} for agent sockets: {exc.strerror or exc}") from None
    problem = _unsafe(path, uid, 0o077)
    if problem is not None:
        raise AgentError(
            f"will not put agent sockets in {path}: {problem}; remove it, or set"
            f" XDG_RUNTIME_DIR to a private directory or {ENV_SOCKET} to a socket path"
        )
    return path


def _unsafe(path: str, uid: int, forbidden: int) -> str | None:
    """Why ``path`` is no directory of ``uid``'s closed to others (``forbidden`` mode bits)."""
    try:
        info = os.lstat(path)  # never follows a symlink: one would lead where its maker chose
    except OSError as exc:
        return f"cannot inspect it ({exc.strerror or exc})"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory (a symlink or a file)"
    if info.st_uid != uid:
        return f"it belongs to uid {info.st_uid}, not {uid}"
    if info.st_mode & forbidden:
        return f"its mode {stat.S_IMODE(info.st_mode):04o} lets other users in"
    return None


def default_socket_path(pid: int | None = None) -> str:
    """Where :func:`~soakd.agent.serve` listens: ``$SOAKD_AGENT_SOCKET`` or a fresh name in
    :func:`private_dir` (AgentError when that directory is unsafe)."""
    configured = os.environ.get(ENV_SOCKET)
    if configured:
        return configured
    return os.path.join(private_dir(), socket_name(pid or os.getpid()))


def watcher_socket_path(key: int | str) -> str:
    """The socket the supervisor assigns to a command it starts (``key``: the run id)."""
    try:
        base = private_dir()
    except AgentError:
        # Our usual directory was taken: a fresh random 0700 one will do, as the command is
        # told the path (left behind empty at the end, a small price in that rare case).
        base = tempfile.mkdtemp(prefix=_PREFIX)
    return os.path.join(base, socket_name(key))


def attached_socket_path(environ: Mapping[str, str] | None = None) -> str | None:
    """The socket a user named for the agent of ``--pid`` (``$SOAKD_AGENT_SOCKET``), if any."""
    env = os.environ if environ is None else environ
    return env.get(ENV_SOCKET) or None


def find_agent_socket(pid: int, uid: int, environ: Mapping[str, str]) -> str | None:
    """The socket the agent of ``pid`` (run by ``uid``, with ``environ``) serves by default.

    Looked for only in that user's private directories, and only in one that belongs to
    ``uid`` and that no one else can write to; a socket that belongs to someone else is
    ignored. The newest one wins (an earlier process with the same pid may have left one).
    The caller still checks who answers on it.
    """
    bases = []
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        bases.append(os.path.join(runtime, "soakd"))
    for temp in (environ.get("TMPDIR", ""), "/tmp"):
        if os.path.isabs(temp):
            bases.append(os.path.join(temp, f"soakd-{uid}"))
    prefix = f"{_PREFIX}{pid}-"
    for base in dict.fromkeys(bases):
        if _unsafe(base, uid, 0o022) is not None:
            continue
        best: tuple[float, str] | None = None
        try:
            with os.scandir(base) as entries:
                for entry in entries:
                    if not (entry.name.startswith(prefix) and entry.name.endswith(_SUFFIX)):
                        continue
                    info = entry.stat(follow_symlinks=False)
                    ours = stat.S_ISSOCK(info.st_mode) and info.st_uid == uid
                    if ours and (best is None or info.st_mtime > best[0]):
                        best = (info.st_mtime, entry.path)
        except OSError:
            continue
        if best is not None:
            return best[1]
    return None


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
