"""External mode: serve an :class:`~soakd.agent.Agent` over a unix socket to a watcher outside.

Protocol: one JSON object per line each way. Request ``{"op": OP, ...}`` with OP one of
:data:`soakd.agent.protocol.OPS` (answered by :func:`soakd.agent.protocol.dispatch`); response
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "message"}``. Requests of one
connection are answered in order; the agent runs one request at a time across connections.

The socket is ``$SOAKD_AGENT_SOCKET`` or ``soakd-agent-<pid>-<random>.sock`` in this user's
private directory (see :mod:`soakd.agent.env`), mode 0600: it is bound inside a fresh 0700
directory, chmod'ed, then renamed into place, so no other user ever gets a window to connect.
Peers running as another (non-root) user are refused anyway (SO_PEERCRED). It is removed by
:meth:`AgentServer.close`, at interpreter exit, and never by a forked child.

The peer is untrusted input in the watched app: a request line is at most 64 KiB and nested at
most 32 deep (``json`` would recurse until RecursionError), at most 8 connections are served at
once (a thread each; more are answered with an error and closed) and an idle one is closed
after a minute. No request names a file the agent writes: ``sites`` returns the snapshot in its
answer and :class:`AgentClient` writes it on its side.

The client checks who serves the socket (SO_PEERCRED): the watched process or one of its
children, or, when no process is named, a process of this user or root.

Limits of ``tasks`` here: the server thread is not the loop's thread, so it finds running loops
through their tasks and asks each loop to count on its own thread; a loop blocked for more
than a second is counted from asyncio's task registry instead (see
:func:`soakd.agent.objects.count_tasks_any_thread`). A loop without tasks counts 0.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import socket
import stat
import struct
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from soakd.agent.env import ENV_DISABLED, ENV_SOCKET, default_socket_path
from soakd.agent.objects import count_tasks_any_thread
from soakd.agent.protocol import (
    OPS,
    AgentError,
    HeapSample,
    Hello,
    SitesResult,
    TracingState,
    TypesSample,
    dispatch,
    encode,
)
from soakd.errors import SnapshotError, SoakdError
from soakd.sources import SourceLines

if TYPE_CHECKING:
    from soakd.agent import Agent

__all__ = [
    "ENV_DISABLED",
    "ENV_SOCKET",
    "AgentClient",
    "AgentError",
    "AgentRefused",
    "AgentServer",
    "default_socket_path",
    "serve",
]

_A = TypeVar("_A")
_MAX_REQUEST = 64 * 1024
_MAX_DEPTH = 32  # requests are flat; json.loads would recurse once per level
_MAX_RESPONSE = 64 * 1024 * 1024
MAX_CONNECTIONS = 8
# The supervisor asks every few seconds on one connection; a silent peer only holds a slot.
IDLE_TIMEOUT_S = 60.0


class AgentRefused(AgentError):
    """The process serving the socket is not the one watched: its answers would be forged."""


class AgentServer:
    """A background thread answering agent requests on a unix socket.

    Collaborators: the :class:`~soakd.agent.Agent` it serves, through
    :func:`soakd.agent.protocol.dispatch`; one thread per connection, one request at a time.
    """

    def __init__(
        self,
        agent: Agent,
        path: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.agent = agent
        self.path = os.path.abspath(path)
        self.idle_timeout = idle_timeout
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()  # one agent request at a time
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = threading.Event()
        self._listener, self._inode = _bind_private(self.path)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._accept_loop, name="soakd-agent-server", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, remove the socket (only ours, only in the process that made it)."""
        if self._closed.is_set():
            return
        self._closed.set()
        if os.getpid() != self._owner_pid:
            return  # a forked child inherited us: the socket belongs to the parent
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed.is_set():
                for key, _ in selector.select():
                    if key.fileobj is not self._listener or self._closed.is_set():
                        return
                    try:
                        conn, _addr = self._listener.accept()
                    except OSError:
                        continue
                    if not _same_user(conn):
                        conn.close()
                        continue
                    if not self._slots.acquire(blocking=False):
                        _refuse(conn, f"busy: {MAX_CONNECTIONS} connections are open already")
                        continue
                    try:
                        threading.Thread(
                            target=self._serve_connection,
                            args=(conn,),
                            name="soakd-agent-conn",
                            daemon=True,
                        ).start()
                    except RuntimeError:  # no thread to be had: the app's limits come first
                        self._slots.release()
                        conn.close()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.idle_timeout)  # also bounds a peer that never reads
            with conn, conn.makefile("rwb") as stream:
                while not self._closed.is_set():
                    try:
                        line = stream.readline(_MAX_REQUEST + 1)
                    except OSError:
                        return  # idle too long, or gone
                    if not line:
                        return
                    if len(line) > _MAX_REQUEST:
                        error = f"request longer than {_MAX_REQUEST} bytes"
                        self._send(stream, {"ok": False, "error": error})
                        return
                    self._send(stream, self._answer(line))
        finally:
            self._slots.release()

    @staticmethod
    def _send(stream: Any, reply: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            stream.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            stream.flush()

    def _answer(self, line: bytes) -> dict[str, Any]:
        if json_depth(line) > _MAX_DEPTH:
            return {"ok": False, "error": f"request nested deeper than {_MAX_DEPTH} levels"}
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as exc:
            return {"ok": False, "error": f"request is not JSON: {exc}"}
        if not isinstance(request, dict) or request.get("op") not in OPS:
            return {"ok": False, "error": f"unknown op; expected one of {', '.join(OPS)}"}
        try:
            with self._lock:
                answer = dispatch(
                    self.agent, request["op"], request, tasks=count_tasks_any_thread, files=False
                )
                return {"ok": True, "result": encode(answer)}
        except (ValueError, TypeError, OSError, SoakdError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in JSON text ``data`` (brackets in strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _refuse(conn: socket.socket, message: str) -> None:
    """Tell a peer why it is turned away, without waiting on it, and close."""
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(json.dumps({"ok": False, "error": message}).encode() + b"\n")
    conn.close()


def _bind_private(path: str) -> tuple[socket.socket, int]:
    parent = os.path.dirname(path) or "."
    _remove_stale(path)
    private_dir = tempfile.mkdtemp(prefix=".soakd-agent-", dir=parent)  # mode 0700
    staging = os.path.join(private_dir, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(staging)
        os.chmod(staging, 0o600)
        listener.listen(8)
        os.rename(staging, path)
        inode = os.stat(path).st_ino
    except OSError as exc:
        listener.close()
        raise AgentError(f"cannot serve the agent at {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        with contextlib.suppress(OSError):
            os.rmdir(private_dir)
    return listener, inode


def _remove_stale(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise AgentError(f"will not replace {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left behind by a process that died
        return
    finally:
        probe.close()
    raise AgentError(f"another agent already serves {path}; set {ENV_SOCKET} to another path")


def _same_user(conn: socket.socket) -> bool:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return True  # no SO_PEERCRED here: the 0600 mode is the protection
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


_server: AgentServer | None = None
_server_lock = threading.Lock()


def serve(
    path: str | None = None,
    *,
    agent: Agent | None = None,
    frames: int = 8,
    max_sites: int = 50,
    max_types: int = 50,
    trace: bool = False,
    profile: bool = True,
) -> AgentServer | None:
    """Serve this process's agent in a background thread; idempotent. Returns the server.

    ``trace=True`` starts tracemalloc right away (otherwise the watcher may ask for it).
    ``profile`` starts the sampled allocation profiler (interval: ``$SOAKD_PROFILER_INTERVAL``,
    which may also say "off"). Returns None without serving when ``$SOAKD_AGENT_DISABLED`` is
    ``1`` (soakd's own processes set it), and, after a warning on stderr, when the socket
    cannot be served (its place is unsafe or taken): watching must never stop the app.
    """
    global _server
    if os.environ.get(ENV_DISABLED) == "1":
        return None
    with _server_lock:
        if _server is not None and not _server._closed.is_set():
            return _server
        if agent is None:
            from soakd.agent import Agent

            agent = Agent(
                frames=frames, max_sites=max_sites, max_types=max_types, source_lines=False
            )
        # Bound first: when it cannot be, nothing was started in the app.
        try:
            server = AgentServer(agent, path or default_socket_path())
        except (AgentError, OSError) as exc:
            print(f"soakd.agent: warning: running without the agent: {exc}", file=sys.stderr)
            return None
        atexit.register(server.close)
        if trace:
            agent.start_tracing()
        if profile:
            from soakd.agent.env import profiler_interval
            from soakd.profiler import DEFAULT_INTERVAL

            interval = profiler_interval(DEFAULT_INTERVAL)
            if interval is not None:
                agent.start_profiler(interval)
        _server = server
        return server


class AgentClient:
    """Synchronous client with the Agent's method names and typed answers.

    Holds one connection to the socket at ``path``, reopened after a failure; every call is
    bounded by ``timeout`` (``sites_timeout`` for ``sites``, which copies every trace). Calls
    from several threads take turns: one stream carries one request and its answer at a time
    (interleaved, each caller would read another's answer, and every answer after it too).

    Each connection is checked (SO_PEERCRED) before it is used: served by ``pid`` or one of
    its descendants when a pid is given (the watched process), else by this user or root;
    otherwise :class:`AgentRefused`.
    """

    def __init__(
        self,
        path: str,
        timeout: float = 10.0,
        sites_timeout: float = 60.0,
        *,
        pid: int | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.sites_timeout = sites_timeout
        self.pid = pid
        self.peer_pid: int | None = None  # who served the last connection
        self._sock: socket.socket | None = None
        self._stream: Any = None
        self._lock = threading.Lock()
        self._lines = SourceLines()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._stream = None

    def ping(self) -> Hello:
        return self._ask({"op": "ping"}, Hello.from_json)

    @property
    def tracing(self) -> bool:
        return self.ping().tracing

    def heap(self) -> HeapSample:
        return self._ask({"op": "heap"}, HeapSample.from_json)

    def tasks(self) -> int:
        return int(self._call({"op": "tasks"}))

    def types(self, collect: bool = False) -> TypesSample:
        return self._ask({"op": "types", "collect": collect}, TypesSample.from_json)

    def start_tracing(self) -> TracingState:
        return self._ask({"op": "start_tracing"}, TracingState.from_json)

    def profile(self, interval: int) -> Hello:
        return self._ask({"op": "profile", "interval": interval}, Hello.from_json)

    def stop_tracing(self) -> TracingState:
        return self._ask({"op": "stop_tracing"}, TracingState.from_json)

    def sites(
        self, snapshot_path: str | None = None, role: str = "latest", *, t: float | None = None
    ) -> SitesResult:
        """Sites now; with ``snapshot_path``, the snapshot the agent returns is written there
        (by this process: the agent never writes a file its peer names)."""
        request = {"op": "sites", "snapshot": snapshot_path is not None, "role": role, "t": t}
        result = self._ask(request, SitesResult.from_json, self.sites_timeout)
        result = result.with_lines(self._lines)  # read here: the agent reads no source
        if snapshot_path is None:
            return result
        try:
            return result.saved(snapshot_path)
        except SnapshotError as exc:  # checked with the reader's rules before it is written
            raise AgentError(f"agent at {self.path} sent a malformed snapshot: {exc}") from None

    def connect(self, timeout: float | None = None) -> int:
        """Open the connection now (and check its peer); the pid that serves it."""
        with self._lock:
            try:
                self._open(timeout)
            except OSError as exc:
                self.close()
                raise AgentError(f"cannot connect to the agent at {self.path}: {exc}") from None
            assert self.peer_pid is not None
            return self.peer_pid

    def _open(self, timeout: float | None = None) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout or self.timeout)
        try:
            sock.connect(self.path)
            self.peer_pid = self._check_peer(sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._stream = sock.makefile("rwb")

    def _check_peer(self, sock: socket.socket) -> int:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        peer_pid, peer_uid, _gid = struct.unpack("3i", creds)
        if self.pid is None:
            if peer_uid in (os.getuid(), 0):
                return int(peer_pid)
            expected = f"this user (uid {os.getuid()}) or root"
        elif peer_pid == self.pid or _descends_from(peer_pid, self.pid):
            return int(peer_pid)
        else:
            expected = f"the watched process {self.pid} or one of its children"
        raise AgentRefused(
            f"refusing the agent socket {self.path}: it is served by pid {peer_pid}"
            f" (uid {peer_uid}), not by {expected}"
        )

    def _ask(
        self,
        request: dict[str, Any],
        decode: Callable[[Mapping[str, Any]], _A],
        timeout: float | None = None,
    ) -> _A:
        result = self._call(request, timeout)
        try:
            if not isinstance(result, dict):
                raise TypeError(type(result).__name__)
            return decode(result)
        except (KeyError, TypeError, ValueError) as exc:
            raise AgentError(
                f"agent at {self.path} sent a malformed {request['op']} answer: {exc!r}"
            ) from None

    def _call(self, request: dict[str, Any], timeout: float | None = None) -> Any:
        with self._lock:
            return self._exchange(request, timeout)

    def _exchange(self, request: dict[str, Any], timeout: float | None) -> Any:
        reused = self._sock is not None
        try:
            self._open()
            assert self._sock is not None
            self._sock.settimeout(timeout or self.timeout)
            self._stream.write(json.dumps(request).encode() + b"\n")
            self._stream.flush()
            line = self._stream.readline(_MAX_RESPONSE + 1)
        except OSError as exc:
            self.close()  # a timed-out stream may still deliver the late answer: start afresh
            if reused and not isinstance(exc, TimeoutError):
                return self._exchange(request, timeout)  # the agent closed it while idle
            raise AgentError(
                f"agent at {self.path} did not answer {request['op']}: {exc}"
            ) from None
        if not line and reused:
            self.close()
            return self._exchange(request, timeout)  # closed while idle: once more, afresh
        if not line or len(line) > _MAX_RESPONSE:
            self.close()
            raise AgentError(f"agent at {self.path} closed the connection during {request['op']}")
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            self.close()
            raise AgentError(f"agent at {self.path} sent a malformed answer") from None
        if not isinstance(reply, dict):
            raise AgentError(f"agent at {self.path} sent a malformed answer")
        if not reply.get("ok"):
            raise AgentError(f"agent at {self.path}: {reply.get('error', 'unknown error')}")
        return reply.get("result")


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is among the parents of ``pid`` (read from /proc)."""
    for _ in range(256):  # a cycle cannot happen, a very deep tree is no agent's
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat_line = fh.read(4096)
        except OSError:
            return False
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat_line[stat_line.rfind(b")") + 2 :].split()
        if len(fields) < 2:
            return False
        pid = int(fields[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False
