"""Worker entry point (``python -m soakd.worker``), started by the supervisor.

Environment (names in :mod:`soakd.worker`): ``SOAKD_CHANNEL_FD`` (our end of the socketpair)
and ``SOAKD_CONFIG_FD`` (a memory file with the worker's settings as JSON, secrets included:
config.json on disk is redacted). The worker runs in the target's interpreter, so it uses only
the standard library and plain asyncio (Python 3.10+). The worker dies with the supervisor:
PR_SET_PDEATHSIG plus EOF on the channel. It answers the agent operations of
:mod:`soakd.agent.protocol`, and ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING, Any

from soakd.agent.protocol import dispatch, encode
from soakd.channel import Channel, ChannelClosed, Message
from soakd.errors import EXIT_TARGET_FAILED
from soakd.worker import ENV_CHANNEL_FD, ENV_CONFIG, ENV_SUPERVISOR_PID
from soakd.worker.settings import WorkerSettings
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

    def __init__(self, config: WorkerSettings, channel: Channel) -> None:
        from soakd.agent import Agent

        self.config = config
        self.channel = channel
        s = config.sampling
        self.agent = Agent(
            frames=s.frames, max_sites=s.max_sites, max_types=s.max_types, source_lines=False
        )
        self.stop = asyncio.Event()
        self.engine: Engine | None = None
        self._answers: set[asyncio.Task[None]] = set()
        self.spans: SpanRecorder | None = None

    async def run(self) -> int:
        s = self.config.sampling
        # Both before the import, so that import-time allocations are seen too.
        if s.profiler_on:
            self.agent.start_profiler(s.profiler_interval)
        if s.enabled and s.tracemalloc == "always":
            self.agent.start_tracing()
        serve = asyncio.get_running_loop().create_task(self._serve())
        drive = asyncio.get_running_loop().create_task(self._drive())
        try:
            await asyncio.wait({serve, drive}, return_when=asyncio.FIRST_COMPLETED)
            if drive.done():
                return drive.result()
            serve.result()  # ChannelClosed (the supervisor is gone) or a bug: raised here
            return 0
        except ChannelClosed:
            return 0
        finally:
            for task in (serve, drive, *self._answers):
                task.cancel()
            await asyncio.gather(serve, drive, *self._answers, return_exceptions=True)

    async def _drive(self) -> int:
        from soakd.workload.corpus import Corpus
        from soakd.workload.engine import Engine

        cfg = self.config
        try:
            qfile = cfg.workload.queries_file
            corpus = Corpus.from_config(cfg.workload, cfg.resolve(qfile) if qfile else None)
            opener: contextlib.AbstractAsyncContextManager[Any]
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
                reporter = asyncio.get_running_loop().create_task(self._report_workload())
                try:
                    await self.engine.run(self.stop, cfg.stop_timeout)
                finally:
                    reporter.cancel()
                    await asyncio.gather(reporter, return_exceptions=True)
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
            await asyncio.sleep(self.config.workload.interval)
            await self._send_workload()

    async def _send_workload(self) -> None:
        if self.engine is not None:
            interval, totals = self.engine.take_interval(), self.engine.totals()
            message: Message = {"msg": "workload", "interval": interval, "totals": totals}
            if self.spans is not None:
                message["spans"] = self.spans.drain()
                message["spans_dropped"] = self.spans.dropped
            await self.channel.send(message)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while (message := await self.channel.recv()) is not None:
            task = loop.create_task(self._answer(message))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
        os._exit(0)  # supervisor gone: stop driving the target at once

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
        loop = asyncio.get_running_loop()

        async def count() -> int:
            return agent.tasks()

        def loop_tasks() -> int:  # the loop's tasks: counted on its thread
            return asyncio.run_coroutine_threadsafe(count(), loop).result()

        answer = await loop.run_in_executor(
            None, lambda: dispatch(agent, op, message, tasks=loop_tasks)
        )
        return encode(answer)


async def _amain() -> int:
    fd = int(os.environ[ENV_CHANNEL_FD])
    with open(int(os.environ[ENV_CONFIG]), encoding="utf-8") as fh:
        config = WorkerSettings.from_json(json.load(fh))  # validated by the supervisor
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
        return asyncio.run(_amain())
    except KeyboardInterrupt:
        return 0
    finally:
        sys.stdout.flush()
