"""The agent socket under attack: another user's server, forged peers, hostile requests, garbage.

Real processes and real unix sockets. The multi-user tests create a second user with
``useradd`` and run the hostile server as that user; they are skipped when that is impossible.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from soakd.agent.server import MAX_CONNECTIONS, AgentClient, AgentRefused, AgentServer
from soakd.snapshots import read_snapshot
from tests.conftest import TARGETS, events, run_soakd, soak_env, write_config

APPS = str(Path(TARGETS) / "external_apps.py")
PROBE_USER = "soakd-probe"
FAKE_HEAP = 123_456_789.0


def _agent_env(**extra: str) -> dict[str, str]:
    env = soak_env(**extra)
    for name in ("SOAKD_AGENT_DISABLED", "SOAKD_AGENT_SOCKET", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    env.update(extra)
    return env


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A 1777 temp dir with a short path (AF_UNIX paths end at ~108 bytes), like /tmp."""
    path = Path(tempfile.mkdtemp(prefix="sk-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def probe_user() -> tuple[int, int]:
    """A second, unprivileged user (created when missing): the hostile local user."""
    if os.getuid() != 0:
        pytest.skip("creating a second user needs root")
    try:
        entry = pwd.getpwnam(PROBE_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            pytest.skip("useradd is not installed: cannot create a second user")
        made = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PROBE_USER],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            pytest.skip(f"useradd failed: {made.stderr.strip()}")
        entry = pwd.getpwnam(PROBE_USER)
    return entry.pw_uid, entry.pw_gid


def _start_app(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "soakd.agent", *args, APPS, "idle"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _ready(app: subprocess.Popen[str]) -> None:
    assert app.stdout is not None
    line = app.stdout.readline()
    assert line.startswith("ready"), (line, app.stderr.read() if app.stderr else "")


def _stop(proc: subprocess.Popen[str]) -> str:
    """Terminate ``proc``; its stderr."""
    proc.terminate()
    try:
        _out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err or ""


class FakeAgent:
    """A forked child answering as an agent would, with made-up numbers (as ``user``, if
    given: setuid after the fork); it tells the test through a pipe whenever a peer connects."""

    def __init__(self, path: str, claimed: int, user: tuple[int, int] | None = None) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                os.close(read_end)
                if user is not None:
                    os.setgroups([])
                    os.setgid(user[1])
                    os.setuid(user[0])
                _serve_fake(path, claimed, write_end)
            finally:
                os._exit(0)
        os.close(write_end)
        self.pid = pid
        self._events = os.fdopen(read_end, "rb", buffering=0)
        assert self._events.read(1) == b"l", "the fake agent did not start"

    def stop(self) -> bytes:
        """Kill it; what it reported (one ``c`` per connection)."""
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        with self._events:
            return self._events.read()


def _serve_fake(path: str, claimed: int, events_fd: int) -> None:
    heap = {
        "heap_bytes": FAKE_HEAP, "heap_estimated": 0.0, "heap_blocks": 1.0, "traced_bytes": 0.0,
        "tracemalloc_overhead_bytes": 0.0, "gc_garbage": 0.0, "gc_collections": 0.0,
    }  # fmt: skip
    answers: dict[str, object] = {
        "ping": {"pid": claimed, "tracing": False, "argv": []},
        "heap": heap,
        "types": {"passwd": 1},
    }
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(16)
    os.write(events_fd, b"l")
    while True:
        conn, _ = server.accept()
        os.write(events_fd, b"c")
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                result = answers.get(json.loads(line).get("op"), 0)
                stream.write(json.dumps({"ok": True, "result": result}).encode() + b"\n")
                stream.flush()


def _heap_bytes(run: Path) -> list[float]:
    with sqlite3.connect(run / "samples.db") as db:
        rows = db.execute("SELECT value FROM samples WHERE series = 'heap_bytes'").fetchall()
    return [float(value) for (value,) in rows]


@pytest.mark.slow
def test_another_user_bound_the_old_socket_name_first_and_is_never_asked(
    tmp_path: Path, short_dir: Path, probe_user: tuple[int, int]
) -> None:
    """`--pid`: a server of another uid at ``/tmp/soakd-agent-PID.sock`` is not the agent."""
    app = _start_app(_agent_env(TMPDIR=str(short_dir)))
    squatted = f"/tmp/soakd-agent-{app.pid}.sock"
    fake: FakeAgent | None = None
    try:
        _ready(app)
        fake = FakeAgent(squatted, app.pid, probe_user)
        assert os.stat(squatted).st_uid == probe_user[0]
        run = tmp_path / "run"
        proc = run_soakd(
            "run", "-c", str(write_config(tmp_path, "")), "-d", "6s", "--run-dir", str(run),
            "--pid", str(app.pid), cwd=tmp_path, timeout=90,
        )  # fmt: skip
        connected = [e for e in events(run) if e["event"] == "agent.connected"]
        assert connected, proc.stderr[-2000:]
        assert connected[0].get("pid") == app.pid
        assert str(short_dir) in connected[0]["socket"]
        assert FAKE_HEAP not in _heap_bytes(run)
    finally:
        app_err = _stop(app)
        reported = fake.stop() if fake is not None else b""
        if os.path.lexists(squatted):
            os.unlink(squatted)
    assert b"c" not in reported  # the other user's server was never asked anything
    assert "Traceback" not in app_err


@pytest.mark.slow
def test_a_fake_server_at_the_named_socket_is_refused(tmp_path: Path, short_dir: Path) -> None:
    """The client checks SO_PEERCRED: the socket must be served by the watched process."""
    target = subprocess.Popen([sys.executable, APPS, "idle"], stdout=subprocess.PIPE, text=True)
    path = str(short_dir / "agent.sock")
    fake = FakeAgent(path, target.pid)
    try:
        with pytest.raises(AgentRefused, match=f"served by pid {fake.pid} .*watched process"):
            AgentClient(path, timeout=5, pid=target.pid).ping()
        run = tmp_path / "run"
        env = soak_env(SOAKD_AGENT_SOCKET=path)
        proc = run_soakd(
            "run", "-c", str(write_config(tmp_path, "")), "-d", "20s", "--run-dir", str(run),
            "--pid", str(target.pid), cwd=tmp_path, timeout=90, env=env,
        )  # fmt: skip
        assert proc.returncode == 5, proc.stderr[-2000:]
        failed = [e for e in events(run) if e["event"] == "target.failed"]
        assert failed and failed[0]["reason"] == "agent_refused", failed
        assert f"served by pid {fake.pid}" in failed[0]["message"]
        assert "agent.connected" not in [e["event"] for e in events(run)]
        assert FAKE_HEAP not in _heap_bytes(run)
        assert "Traceback" not in proc.stderr
        assert target.poll() is None  # attached, never signalled
    finally:
        fake.stop()
        target.kill()
        target.wait()


@pytest.fixture
def app_socket(short_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m soakd.agent --trace APPS idle`` serving at a socket the test names."""
    path = str(short_dir / "a.sock")
    app = _start_app(_agent_env(SOAKD_AGENT_SOCKET=path), "--trace")
    _ready(app)
    yield app, path
    if app.poll() is None:
        _stop(app)


def _ask(sock: socket.socket, payload: bytes) -> dict[str, object]:
    sock.sendall(payload)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    assert reply, "the agent closed the connection without an answer"
    answer: dict[str, object] = json.loads(reply)
    return answer


def test_a_request_nested_30000_deep_gets_an_error_and_no_traceback(
    app_socket: tuple[subprocess.Popen[str], str],
) -> None:
    app, path = app_socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        deep = _ask(sock, b"[" * 30_000 + b"]" * 30_000 + b"\n")
        assert deep["ok"] is False and "nested deeper" in str(deep["error"])
        nested = b'{"op": "ping", "x": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}\n"
        assert _ask(sock, nested)["ok"] is False
        strings = b'{"op": "ping", "x": "' + b"[{" * 1000 + b'"}\n'  # brackets in a string
        assert _ask(sock, strings)["ok"] is True
        assert _ask(sock, b"x" * 70_000 + b"\n")["ok"] is False  # over 64 KiB
    with AgentClient(path, timeout=10) as client:
        assert client.ping().pid == app.pid  # still serving
    err = _stop(app)
    assert "Traceback" not in err and "RecursionError" not in err, err


def test_400_idle_connections_leave_the_apps_threads_bounded(
    app_socket: tuple[subprocess.Popen[str], str],
) -> None:
    app, path = app_socket
    before = psutil.Process(app.pid).num_threads()
    conns: list[socket.socket] = []
    try:
        for _ in range(400):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conns.append(sock)
            sock.settimeout(10)
            deadline = time.monotonic() + 10
            while True:
                try:
                    sock.connect(path)
                    break
                except BlockingIOError:  # the listen backlog is full until the agent accepts
                    assert time.monotonic() < deadline, "the agent stopped accepting"
                    time.sleep(0.005)
        time.sleep(0.5)
        threads = psutil.Process(app.pid).num_threads()
        assert threads <= before + MAX_CONNECTIONS, (before, threads)
        busy = json.loads(conns[-1].makefile("rb").readline())  # past the limit: turned away
        assert busy["ok"] is False and "busy" in str(busy["error"])
    finally:
        for sock in conns:
            sock.close()
    # Closed connections give their slots back.
    deadline = time.monotonic() + 10
    while True:
        try:
            with AgentClient(path, timeout=5) as client:
                assert client.ping().pid == app.pid
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_idle_connections_are_closed_and_the_client_reconnects(short_dir: Path) -> None:
    from soakd.agent import Agent

    path = str(short_dir / "idle.sock")
    server = AgentServer(Agent(), path, idle_timeout=0.3)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.settimeout(5)
            idle.connect(path)
            assert idle.recv(10) == b""  # closed by the agent after 0.3 s of silence
        with AgentClient(path, timeout=5) as client:
            assert client.ping().pid == os.getpid()
            time.sleep(0.8)
            assert client.ping().pid == os.getpid()  # reopened, not an error
    finally:
        server.close()


def test_sites_never_writes_where_the_peer_says(
    app_socket: tuple[subprocess.Popen[str], str], short_dir: Path
) -> None:
    app, path = app_socket
    target = short_dir / "owned.json.gz"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        request = {"op": "sites", "snapshot_path": str(target), "role": "latest"}
        answer = _ask(sock, json.dumps(request).encode() + b"\n")
    assert answer["ok"] is False and "writes no file" in str(answer["error"]), answer
    assert not target.exists()
    # soakd's own snapshots still work: the client writes what the agent returns.
    mine = short_dir / "mine.json.gz"
    short_dir.chmod(0o700)  # as a run directory is: its files take its mode without x bits
    with AgentClient(path, timeout=10, pid=app.pid) as client:
        result = client.sites(str(mine), "baseline", t=1.0)
    assert result.snapshot_path == str(mine) and result.snapshot is None
    assert read_snapshot(mine).role == "baseline"
    assert (mine.stat().st_mode & 0o777) == 0o600


def test_pre_created_garbage_does_not_stop_python_m_soakd_agent(short_dir: Path) -> None:
    """Files at the next pids' old socket names, and the private dir taken: the app runs."""
    with open("/proc/sys/kernel/ns_last_pid", encoding="ascii") as fh:
        last = int(fh.read())
    for pid in range(last + 1, last + 400):
        (short_dir / f"soakd-agent-{pid}.sock").write_text("garbage")
    env = _agent_env(TMPDIR=str(short_dir))
    app = _start_app(env)
    _ready(app)  # served by the agent, in its private directory
    served = list((short_dir / f"soakd-{os.getuid()}").glob(f"soakd-agent-{app.pid}-*.sock"))
    assert len(served) == 1
    with AgentClient(str(served[0]), timeout=10, pid=app.pid) as client:
        assert client.ping().pid == app.pid
    err = _stop(app)
    assert "Traceback" not in err, err

    # The private directory is a symlink someone else planted: no agent, the app still runs.
    shutil.rmtree(short_dir / f"soakd-{os.getuid()}")
    elsewhere = short_dir / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    (short_dir / f"soakd-{os.getuid()}").symlink_to(elsewhere)
    app = _start_app(env)
    _ready(app)
    err = _stop(app)
    assert "Traceback" not in err, err
    assert "running without the agent" in err and "not a directory" in err, err
    assert list(elsewhere.iterdir()) == []


def test_the_private_dir_is_created_0700(short_dir: Path) -> None:
    script = textwrap.dedent(
        """
        import os, soakd.agent.env as env
        print(env.default_socket_path())
        """
    )
    env = _agent_env(TMPDIR=str(short_dir))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    base = short_dir / f"soakd-{os.getuid()}"
    assert Path(out).parent == base and Path(out).name.startswith("soakd-agent-")
    assert (base.stat().st_mode & 0o777) == 0o700
    again = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert again != out  # a fresh random name each time


def test_a_socket_path_that_cannot_be_served_leaves_the_app_running(short_dir: Path) -> None:
    env = _agent_env(SOAKD_AGENT_SOCKET=str(short_dir / "missing" / "a.sock"))
    app = _start_app(env)
    _ready(app)
    err = _stop(app)
    assert "Traceback" not in err and "running without the agent" in err, err
