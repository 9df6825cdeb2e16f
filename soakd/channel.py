"""Supervisor ↔ worker channel: JSON lines over a socketpair.

Requests carry an ``id`` and get exactly one response with the same ``id``; messages without an
``id`` (``ready``, ``workload``, ``failed``, ``finished``) flow from the worker on their own. Either
side sees EOF when the other dies, so neither can hang on a dead peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import Callable
from typing import Any

from soakd.errors import EXIT_INTERNAL, SoakdError

LINE_LIMIT = 32 * 1024 * 1024  # a sites response with long tracebacks can be a few MiB

Message = dict[str, Any]


class ChannelClosed(SoakdError):
    """The peer went away."""

    exit_code = EXIT_INTERNAL


class Channel:
    """One end of the socketpair, used from an asyncio loop; sends are serialised by a lock."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer)

    async def send(self, message: Message) -> None:
        data = json.dumps(message, default=str, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError, RuntimeError) as exc:
                raise ChannelClosed(str(exc)) from None

    async def recv(self) -> Message | None:
        """The next message, or None at EOF."""
        while True:
            try:
                line = await self._reader.readline()
            except (ConnectionError, OSError, asyncio.LimitOverrunError, ValueError):
                return None
            if not line:
                return None
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a dying peer: skip it
            if isinstance(message, dict):
                return message

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)


class WorkerLink:
    """Supervisor side of a :class:`Channel`: request/response by id, other messages handed to
    ``on_message``; :meth:`pump` must run for answers to arrive."""

    def __init__(self, channel: Channel, on_message: Callable[[Message], None]) -> None:
        self._channel = channel
        self._on_message = on_message
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self.closed = asyncio.Event()

    async def pump(self) -> None:
        """Read until EOF; run as a task for the worker's lifetime."""
        try:
            while (message := await self._channel.recv()) is not None:
                rid = message.get("id")
                if isinstance(rid, int) and rid in self._pending:
                    fut = self._pending.pop(rid)
                    if not fut.done():
                        fut.set_result(message)
                else:
                    self._on_message(message)
        finally:
            self.closed.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ChannelClosed("worker channel closed"))
            self._pending.clear()

    async def request(self, op: str, timeout: float, **params: Any) -> Any:
        """Send ``op``, wait for its result; raises ChannelClosed, TimeoutError or RuntimeError."""
        if self.closed.is_set():
            raise ChannelClosed("worker channel closed")
        rid = next(self._ids)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self._channel.send({"id": rid, "op": op, **params})
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok", False):
            raise RuntimeError(str(reply.get("error", "worker error")))
        return reply.get("result")

    async def notify(self, op: str, **params: Any) -> None:
        """Fire-and-forget message (e.g. ``stop``); a closed channel is ignored."""
        with contextlib.suppress(ChannelClosed):
            await self._channel.send({"op": op, **params})
