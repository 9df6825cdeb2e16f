"""The processes a run watches: soakd's worker running a Python target, or an external one.

A Python target runs in a worker process (``python -m soakd.worker``, under the target's
interpreter: :mod:`soakd.supervisor.interpreter`) in its own session, talking over a
socketpair; it dies with the supervisor. An external target is a command soakd
starts (``-- CMD``, its whole session is stopped at the end) or a process it only attaches to
(``--pid``, never signalled); with ``[target.http]`` a worker drives HTTP load at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, Protocol

import anyio
import psutil
from anyio.abc import TaskGroup

from soakd import rundir
from soakd.agent.env import (
    agent_environment,
    attached_socket_path,
    find_agent_socket,
    watcher_socket_path,
)
from soakd.agent.stats import AgentStats, StatsSource, WorkerStats
from soakd.channel import Channel, Message, WorkerLink
from soakd.config import Config
from soakd.sinks.notify import child_environment
from soakd.supervisor.interpreter import TargetPython
from soakd.supervisor.recorder import RunRecorder
from soakd.supervisor.state import RunState
from soakd.supervisor.workload import WorkloadMonitor
from soakd.worker import worker_environment


class Target(Protocol):
    """What the coordinator needs of the watched process, whichever kind it is."""

    name: str
    driven: bool  # soakd drives a workload (then no completed iteration means failure)
    psproc: psutil.Process | None  # the process sampled
    worker: WorkerProcess | None  # soakd's worker, when there is one

    async def start(self, tg: TaskGroup) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> StatsSource | None: ...


class WorkerLog:
    """Keeps the first ``limit`` bytes of the target's output; counts the rest."""

    def __init__(self, path: Path, limit: int) -> None:
        self._fh = open(rundir.create_file(path), "ab")  # noqa: SIM115 (held for the run)
        self._left = limit
        self.dropped = 0

    def write(self, data: bytes) -> None:
        keep = data[: max(0, self._left)]
        if keep:
            try:
                self._fh.write(keep)
                self._fh.flush()
            except OSError:
                pass
            self._left -= len(keep)
        self.dropped += len(data) - len(keep)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.dropped:
                self._fh.write(f"\n[soakd: {self.dropped} more bytes of output dropped]\n".encode())
            self._fh.close()


class WorkerProcess:
    """soakd's worker: spawned, heard on its channel, its output kept, its death noticed.

    Collaborators: the run's state (ready, failure), the recorder (events), the workload
    monitor (``workload`` messages) and the worker log (its output).
    """

    def __init__(
        self,
        config: Config,
        run: rundir.RunDir,
        state: RunState,
        recorder: RunRecorder,
        monitor: WorkloadMonitor,
        log: WorkerLog,
        python: TargetPython,
    ) -> None:
        self._config = config
        self._python = python
        self._run = run
        self._state = state
        self._recorder = recorder
        self._monitor = monitor
        self._log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.link: WorkerLink | None = None
        self.finished = anyio.Event()
        self.gone = anyio.Event()  # set once worker.exited is emitted
        self._stopping = False

    async def spawn(self) -> None:
        cfg = self._config
        parent, child = socket.socketpair()
        # The settings (headers, URLs with credentials) go to the worker in memory:
        # config.json in the run directory is the redacted copy.
        config_fd = _settings_memfd(worker_settings(cfg))
        env = self._python.environment(child_environment(os.environ))
        env.update(worker_environment(child.fileno(), config_fd, os.getpid()))
        limit = cfg.run.worker_memory_limit

        def preexec() -> None:
            if limit:
                import resource

                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        try:
            self.proc = await asyncio.create_subprocess_exec(
                self._python.executable,
                "-m",
                "soakd.worker",
                pass_fds=(child.fileno(), config_fd),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec if limit else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(config_fd)
            parent.close()
            child.close()
            self._state.fail(
                self._recorder.emit, "target_failed", "start", f"cannot start the worker: {exc}"
            )
            return
        child.close()
        os.close(config_fd)
        self.link = WorkerLink(await Channel.open(parent), self._on_message)
        self._recorder.emit("worker.started", pid=self.proc.pid)

    def watch(self, tg: TaskGroup) -> None:
        """Hear the channel, keep the output, notice the exit (tasks in ``tg``)."""
        if self.proc is None or self.link is None:
            return
        tg.start_soon(self.link.pump)
        tg.start_soon(pump_output, self.proc, self._log)
        tg.start_soon(self._watch)

    def _on_message(self, message: Message) -> None:
        kind = message.get("msg")
        if kind == "ready":
            self._state.ready_t = self._state.now()
            self._recorder.emit("worker.ready", pid=message.get("pid"))
            self._state.ready.set()
        elif kind == "workload":
            self._monitor.on_message(message.get("interval") or {}, message.get("totals") or {})
            if "spans" in message:
                self._monitor.on_spans(message.get("spans"), message.get("spans_dropped"))
        elif kind == "failed":
            self._state.fail(
                self._recorder.emit, "target_failed", message.get("reason"), message.get("message")
            )
        elif kind == "finished":
            self.finished.set()

    async def _watch(self) -> None:
        assert self.proc is not None
        code = await exited(self.proc)
        state = self._state
        if state.failure is None and not self.finished.is_set() and not self._stopping:
            sig = -code if code < 0 else None
            what = f"signal {signal.Signals(sig).name}" if sig else f"exit code {code}"
            state.fail(
                self._recorder.emit,
                "worker_died",
                "worker_died",
                f"worker died: {what}",
                returncode=code,
            )
        self._recorder.emit("worker.exited", returncode=code)
        self.gone.set()

    async def stop(self) -> None:
        """Ask the worker to finish, then TERM and KILL its whole session if it does not."""
        proc = self.proc
        if proc is None:
            return
        self._stopping = True
        if self.link is not None and proc.returncode is None:
            await self.link.notify("stop")
        with anyio.move_on_after(self._config.run.stop_timeout + 5.0):
            await self.gone.wait()
        self._kill_group(signal.SIGTERM)
        with anyio.move_on_after(3.0):
            await proc.wait()  # also until the children holding its output pipe are gone
        self._kill_group(signal.SIGKILL)
        with anyio.move_on_after(3.0):
            await proc.wait()
        with anyio.move_on_after(1.0):  # let _watch record worker.exited before the end
            await self.gone.wait()

    def _kill_group(self, sig: int) -> None:
        """The worker and anything the target forked: they share the worker's session."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def worker_settings(config: Config) -> dict[str, Any]:
    """What the worker is told, as plain JSON (read by :mod:`soakd.worker.settings`).

    The worker runs in the target's interpreter, without pydantic: everything is validated
    here and sent as the models' JSON dumps.
    """
    return {
        "target": config.target.model_dump(mode="json", by_alias=True),
        "workload": config.workload.model_dump(mode="json", by_alias=True),
        "sampling": config.sampling.model_dump(mode="json", by_alias=True),
        # Only what the worker records spans with: the endpoint and headers stay here.
        "otel": {
            "enabled": config.otel.enabled,
            "sample_ratio": config.otel.sample_ratio,
            "max_spans": config.otel.max_spans,
        },
        "stop_timeout": config.run.stop_timeout,
        "base_dir": config.base_dir,
    }


def _settings_memfd(settings: dict[str, Any]) -> int:
    """An anonymous memory file (no path, gone with its last fd) holding the settings."""
    fd = os.memfd_create("soakd-config")  # close-on-exec: only pass_fds hands it on
    try:
        data = memoryview(json.dumps(settings).encode("utf-8"))
        while data:
            data = data[os.write(fd, data) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


class PythonTarget:
    """A Python target (``[target] module``/``factory``) driven by soakd's worker."""

    driven = True

    def __init__(self, config: Config, worker: WorkerProcess) -> None:
        self.name = config.target.name
        self.worker: WorkerProcess | None = worker
        self.psproc: psutil.Process | None = None
        self._timeout = config.sampling.job_timeout
        self._stats: WorkerStats | None = None

    async def start(self, tg: TaskGroup) -> None:
        assert self.worker is not None
        await self.worker.spawn()
        if self.worker.proc is None or self.worker.link is None:
            return  # could not start: the run has failed already
        try:
            self.psproc = psutil.Process(self.worker.proc.pid)
        except psutil.Error:
            self.psproc = None  # died at once (a memory cap too small to start): watch says so
        self._stats = WorkerStats(self.worker.link, self._timeout)
        self.worker.watch(tg)

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()

    def stats(self) -> StatsSource | None:
        return self._stats


class ExternalTarget:
    """A command soakd starts (``-- CMD``) or a running process it attaches to (``--pid``).

    Its heap statistics come from soakd's agent inside it, once the agent's socket exists and
    is served by the watched process (or a child of it): any other server fails the run.
    Collaborators: the run's state, the recorder, the worker log, and the worker that drives
    HTTP load at it (``[target.http]``), if any.
    """

    def __init__(
        self,
        config: Config,
        run: rundir.RunDir,
        state: RunState,
        recorder: RunRecorder,
        log: WorkerLog,
        worker: WorkerProcess | None,
        command: list[str] | None,
        pid: int | None,
        python: TargetPython,
    ) -> None:
        self._config = config
        self._python = python
        self._run = run
        self._state = state
        self._recorder = recorder
        self._log = log
        self.worker = worker
        self.command = command
        self.pid = pid
        self.name = " ".join(command) if command is not None else f"pid:{pid}"
        self.driven = worker is not None
        self.proc: asyncio.subprocess.Process | None = None
        self.psproc: psutil.Process | None = None
        self.agent_socket: str | None = None
        self._stats: AgentStats | None = None
        self._refused = False
        self._owner: tuple[int, dict[str, str]] | None = None  # --pid: its uid and environment

    async def start(self, tg: TaskGroup) -> None:
        if not await self._launch():
            return
        if self.worker is not None:
            await self.worker.spawn()  # the worker only drives HTTP load
        else:
            self._state.ready.set()
        if self.proc is not None:
            tg.start_soon(pump_output, self.proc, self._log)
        if self.proc is not None or self.psproc is not None:
            tg.start_soon(self._watch)
        if self.worker is not None:
            self.worker.watch(tg)

    async def _launch(self) -> bool:
        if self.command is not None:
            self.agent_socket = watcher_socket_path(self._run.run_id)
            s = self._config.sampling
            # soakd's agent is importable in the command (`python -m soakd.agent app.py`)
            # whatever its interpreter: the code directory only, none of soakd's dependencies.
            env = agent_environment(
                self._python.environment(child_environment(os.environ)),
                self.agent_socket,
                s.profiler_interval if s.profiler_on else None,
            )
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.command,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                self._state.fail(
                    self._recorder.emit,
                    "target_failed",
                    "start",
                    f"cannot start {self.command[0]!r}: {exc}",
                )
                return False
            self._recorder.emit("target.started", pid=self.proc.pid, command=self.command)
            try:
                self.psproc = psutil.Process(self.proc.pid)
            except psutil.Error:
                # Gone already (`/bin/false`): the watch below reports its exit code.
                self.psproc = None
        else:
            assert self.pid is not None
            self.agent_socket = attached_socket_path()
            try:
                self.psproc = psutil.Process(self.pid)
                name = self.psproc.name()
                uid = self.psproc.uids().real
                try:
                    environ = self.psproc.environ()
                except psutil.AccessDenied:
                    environ = {}  # its XDG_RUNTIME_DIR and TMPDIR unknown: /tmp is looked at
                self._owner = (uid, environ)
            except psutil.Error as exc:
                self.psproc = None
                self._state.fail(
                    self._recorder.emit,
                    "target_failed",
                    "attach",
                    f"cannot watch pid {self.pid}: {type(exc).__name__}: {exc}",
                )
                return False
            self._recorder.emit("target.attached", pid=self.pid, name=name)
        return True

    def stats(self) -> StatsSource | None:
        """The agent in the target, once its socket exists and its server is the target."""
        if self._stats is not None or self._refused:
            return self._stats
        path = self._agent_path()
        watched = self.pid if self.proc is None else self.proc.pid
        if path is None or watched is None:
            return None
        from soakd.agent.server import AgentClient, AgentError, AgentRefused

        client = AgentClient(path, pid=watched)
        try:
            server_pid = client.connect(timeout=1.0)  # on the loop: a unix connect is quick
        except AgentRefused as exc:
            self._refused = True
            self._state.fail(self._recorder.emit, "target_failed", "agent_refused", str(exc))
            return None
        except AgentError:
            return None  # nobody listens (yet, or any more): looked for again next time
        self._stats = AgentStats(client)
        self._recorder.emit("agent.connected", socket=path, pid=server_pid)
        return self._stats

    def _agent_path(self) -> str | None:
        if self.agent_socket is not None:
            return self.agent_socket if os.path.exists(self.agent_socket) else None
        if self.pid is None or self._owner is None:
            return None
        uid, environ = self._owner
        return find_agent_socket(self.pid, uid, environ)

    async def _watch(self) -> None:
        if self.proc is not None:
            code: int | None = await exited(self.proc)
        else:
            assert self.psproc is not None
            while self.psproc.is_running() and self.psproc.status() != psutil.STATUS_ZOMBIE:
                await anyio.sleep(self._config.sampling.process_interval)
            code = None
        if not self._state.stop_requested.is_set():
            what = "exited" if code is None else f"exited with code {code}"
            self._state.fail(
                self._recorder.emit, "target_exited", "target_exited", f"watched process {what}"
            )

    async def stop(self) -> None:
        """The worker first; then the command's whole session, never an attached process."""
        if self.worker is not None:
            await self.worker.stop()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, self._config.run.stop_timeout), (signal.SIGKILL, 3.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with anyio.move_on_after(wait):
                await exited(proc)
            if proc.returncode is not None:
                return


async def pump_output(proc: asyncio.subprocess.Process, log: WorkerLog) -> None:
    assert proc.stdout is not None
    while data := await proc.stdout.read(65536):
        log.write(data)


async def exited(proc: asyncio.subprocess.Process, poll: float = 0.05) -> int:
    """The exit code as soon as ``proc`` exits.

    ``proc.wait()`` also waits until every holder of its stdout pipe closes it, so children the
    target forked would hide the worker's death (and delay every stop by the stop timeout).
    """
    while (code := proc.returncode) is None:
        await anyio.sleep(poll)
    return code
