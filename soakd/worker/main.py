"""Worker entry point (``python -m soakd.worker``), started by the supervisor.

Environment (names in :mod:`soakd.worker`): ``SOAKD_CHANNEL_FD`` (our end of the socketpair)
and ``SOAKD_CONFIG_FD`` (a memory file with the run's full config: config.json on disk is
redacted). The worker dies with the supervisor:
PR_SET_PDEATHSIG plus EOF on the channel. It answers the agent operations of
:mod:`soakd.agent.protocol`, and ``stop``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread

from soakd.agent.protocol import dispatch, encode
from soakd.channel import Channel, ChannelClosed, Message
from soakd.config import Config
from soakd.errors import EXIT_TARGET_FAILED
from soakd.worker import ENV_CHANNEL_FD, ENV_CONFIG, ENV_SUPERVISOR_PID
from soakd.worker.target import TargetError, open_target

if TYPE_CHECKING:
    from soakd.workload.engine import Engine
    from soakd.workload.spans import SpanRecorder

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: channel EOF still ends the worker
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(EXIT_TARGET_FAILED)


class Worker:
    """Drives the target with the workload :class:`~soakd.workload.engine.Engine` and answers
    the supervisor over the :class:`~soakd.channel.Channel` with its
    :class:`~soakd.agent.Agent`."""

    def __init__(self, config: Config, channel: Channel) -> None:
        from soakd.agent import Agent

        self.config = config
        self.channel = channel
        s = config.sampling
        self.agent = Agent(frames=s.frames, max_sites=s.max_sites, max_types=s.max_types)
        self.stop = anyio.Event()
        self.engine: Engine | None = None
        self.spans: SpanRecorder | None = None

    async def run(self) -> int:
        s = self.config.sampling
        # Both before the import, so that import-time allocations are seen too.
        if s.profiler_on:
            self.agent.start_profiler(s.profiler_interval)
        if s.enabled and s.tracemalloc == "always":
            self.agent.start_tracing()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._serve, tg.cancel_scope)
                code = await self._drive()
                tg.cancel_scope.cancel()
        except ChannelClosed:
            return 0
        return code

    async def _drive(self) -> int:
        from soakd.workload.corpus import Corpus
        from soakd.workload.engine import Engine

        cfg = self.config
        try:
            qfile = cfg.workload.queries_file
            corpus = Corpus.from_config(cfg.workload, cfg.resolve(qfile) if qfile else None)
            if cfg.target.http is not None:
                from soakd.worker.http_target import open_http_target

                opener = open_http_target(cfg.target.http)
            else:
                opener = open_target(cfg.target, cfg.base_dir)
            if cfg.otel.enabled and cfg.otel.sample_ratio > 0:
                from soakd.workload.spans import SpanRecorder

                self.spans = SpanRecorder(cfg.otel.sample_ratio, cfg.otel.max_spans)
            async with opener as call:
                self.engine = Engine(cfg.workload, call, corpus, spans=self.spans)
                await self.channel.send({"msg": "ready", "pid": os.getpid()})
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._report_workload)
                    await self.engine.run(self.stop, cfg.run.stop_timeout)
                    tg.cancel_scope.cancel()
                await self._send_workload()
                # leaving `opener` runs the target's __aexit__; the supervisor bounds it in time
        except TargetError as exc:
            await self.channel.send({"msg": "failed", "reason": exc.reason, "message": exc.message})
            return EXIT_TARGET_FAILED
        except Exception as exc:
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            await self.channel.send({"msg": "failed", "reason": "error", "message": text})
            return EXIT_TARGET_FAILED
        await self.channel.send({"msg": "finished"})
        return 0

    async def _report_workload(self) -> None:
        while True:
            await anyio.sleep(self.config.workload.interval)
            await self._send_workload()

    async def _send_workload(self) -> None:
        if self.engine is not None:
            interval, totals = self.engine.take_interval(), self.engine.totals()
            message: Message = {"msg": "workload", "interval": interval, "totals": totals}
            if self.spans is not None:
                message["spans"] = self.spans.drain()
                message["spans_dropped"] = self.spans.dropped
            await self.channel.send(message)

    async def _serve(self, scope: anyio.CancelScope) -> None:
        async with anyio.create_task_group() as tg:
            while (message := await self.channel.recv()) is not None:
                tg.start_soon(self._answer, message)
            scope.cancel()  # supervisor gone: stop driving the target at once
            os._exit(0)

    async def _answer(self, message: Message) -> None:
        op = message.get("op")
        rid = message.get("id")
        try:
            result = await self._dispatch(str(op), message)
        except Exception as exc:
            if rid is not None:
                await self.channel.send(
                    {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
                )
            return
        if rid is not None:
            await self.channel.send({"id": rid, "ok": True, "result": result})

    async def _dispatch(self, op: str, message: Message) -> object:
        if op == "stop":
            self.stop.set()
            return None
        agent = self.agent

        def loop_tasks() -> int:
            return anyio.from_thread.run_sync(agent.tasks)  # the loop's tasks: on its thread

        answer = await anyio.to_thread.run_sync(
            lambda: dispatch(agent, op, message, tasks=loop_tasks)
        )
        return encode(answer)


async def _amain() -> int:
    fd = int(os.environ[ENV_CHANNEL_FD])
    with open(int(os.environ[ENV_CONFIG]), encoding="utf-8") as fh:
        raw = json.load(fh)
    config = Config.model_validate(raw["config"]).model_copy(update={"base_dir": raw["base_dir"]})
    sock = socket.socket(fileno=fd)
    channel = await Channel.open(sock)
    try:
        return await Worker(config, channel).run()
    finally:
        await channel.close()


def main() -> int:
    parent = int(os.environ.get(ENV_SUPERVISOR_PID, os.getppid()))
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    try:
        return anyio.run(_amain)
    except KeyboardInterrupt:
        return 0
    finally:
        sys.stdout.flush()
