"""Where the supervisor gets the target's statistics: one protocol, two sources.

A Python target runs in soakd's worker, which answers over the worker channel
(:class:`WorkerStats`); an external target (``-- CMD`` or ``--pid``) answers through the agent
it loaded, over a unix socket, with a blocking client run in a thread (:class:`AgentStats`).
Both return the typed answers of :mod:`soakd.agent.protocol`, with the sites' source lines
read and the snapshot files written here, in the supervisor, never in the target.
"""

from __future__ import annotations

from typing import Final, Protocol

import anyio

from soakd.agent.protocol import HeapSample, Hello, SitesResult, TracingState, TypesSample
from soakd.agent.server import AgentClient
from soakd.channel import WorkerLink
from soakd.sources import SourceLines

__all__ = ["TRACING_TIMEOUT_S", "AgentStats", "StatsSource", "WorkerStats"]

# Starting or stopping tracemalloc is quick, but stopping frees every trace.
TRACING_TIMEOUT_S: Final = 10.0


class StatsSource(Protocol):
    """The agent operations the supervisor asks for, answered by the target's process."""

    async def ping(self) -> Hello: ...

    async def heap(self) -> HeapSample: ...

    async def types(self, collect: bool = False) -> TypesSample: ...

    async def tasks(self) -> int: ...

    async def sites(self, snapshot_path: str | None, role: str, t: float | None) -> SitesResult:
        """Group the traces by site and write the snapshot ``snapshot_path`` (``t``: run time)."""
        ...

    async def start_tracing(self) -> TracingState: ...

    async def stop_tracing(self) -> TracingState: ...

    async def profile(self, interval: int) -> Hello:
        """Restart the sampled profiler at ``interval`` bytes (a fresh profile)."""
        ...


class WorkerStats:
    """Statistics from soakd's worker over its :class:`~soakd.channel.WorkerLink`.

    Each sampling request is bounded by ``timeout`` (the sampling job's), a tracing switch by
    :data:`TRACING_TIMEOUT_S`; the link raises ChannelClosed, TimeoutError or RuntimeError.
    """

    def __init__(self, link: WorkerLink, timeout: float) -> None:
        self._link = link
        self._timeout = timeout
        self._lines = SourceLines()

    async def ping(self) -> Hello:
        return Hello.from_json(await self._link.request("ping", self._timeout))

    async def heap(self) -> HeapSample:
        return HeapSample.from_json(await self._link.request("heap", self._timeout))

    async def types(self, collect: bool = False) -> TypesSample:
        result = await self._link.request("types", self._timeout, collect=collect)
        return TypesSample.from_json(result)

    async def tasks(self) -> int:
        return int(await self._link.request("tasks", self._timeout))

    async def sites(self, snapshot_path: str | None, role: str, t: float | None) -> SitesResult:
        # The snapshot comes in the answer and is written here, its source lines read here:
        # compressing it and reading the sources cost the target nothing then.
        raw = await self._link.request(
            "sites", self._timeout, snapshot=snapshot_path is not None, role=role, t=t
        )
        result = SitesResult.from_json(raw)

        def finish() -> SitesResult:
            done = result.with_lines(self._lines)
            return done if snapshot_path is None else done.saved(snapshot_path)

        return await anyio.to_thread.run_sync(finish)

    async def start_tracing(self) -> TracingState:
        return TracingState.from_json(await self._link.request("start_tracing", TRACING_TIMEOUT_S))

    async def stop_tracing(self) -> TracingState:
        return TracingState.from_json(await self._link.request("stop_tracing", TRACING_TIMEOUT_S))

    async def profile(self, interval: int) -> Hello:
        result = await self._link.request("profile", TRACING_TIMEOUT_S, interval=interval)
        return Hello.from_json(result)


class AgentStats:
    """Statistics from the agent inside an external target, through an :class:`AgentClient`.

    The client blocks, so every call runs in a worker thread; its own timeouts bound it.
    """

    def __init__(self, client: AgentClient) -> None:
        self.client = client

    async def ping(self) -> Hello:
        return await anyio.to_thread.run_sync(self.client.ping)

    async def heap(self) -> HeapSample:
        return await anyio.to_thread.run_sync(self.client.heap)

    async def types(self, collect: bool = False) -> TypesSample:
        return await anyio.to_thread.run_sync(lambda: self.client.types(collect))

    async def tasks(self) -> int:
        return await anyio.to_thread.run_sync(self.client.tasks)

    async def sites(self, snapshot_path: str | None, role: str, t: float | None) -> SitesResult:
        return await anyio.to_thread.run_sync(
            lambda: self.client.sites(snapshot_path=snapshot_path, role=role, t=t)
        )

    async def start_tracing(self) -> TracingState:
        return await anyio.to_thread.run_sync(self.client.start_tracing)

    async def stop_tracing(self) -> TracingState:
        return await anyio.to_thread.run_sync(self.client.stop_tracing)

    async def profile(self, interval: int) -> Hello:
        return await anyio.to_thread.run_sync(lambda: self.client.profile(interval))
