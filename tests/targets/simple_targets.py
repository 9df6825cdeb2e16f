"""Small real targets for the CLI tests (each a legitimate soakd target, not a fake of soakd)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

_KEEP: list[bytes] = []


class Echo:
    """Streams a status, one content event and complete, like the aggregator."""

    def __init__(self, delay_s: float = 0.001) -> None:
        self.delay_s = delay_s

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "status", "stage": "analysis_complete"}
        await asyncio.sleep(self.delay_s)
        yield {"type": "content", "text": query.upper()}
        yield {"type": "complete"}


class Leaky(Echo):
    """Keeps ``kb`` KiB per query at one line: a heap leak with a known site."""

    def __init__(self, kb: int = 10, delay_s: float = 0.001) -> None:
        super().__init__(delay_s)
        self.kb = kb

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        _KEEP.append(os.urandom(self.kb * 1024))  # the leak site
        async for event in super().process_query(query):
            yield event


def raising_factory() -> Echo:
    raise RuntimeError("factory exploded on purpose")


class AlwaysRaises:
    async def process_query(self, query: str) -> None:
        raise ValueError("every iteration fails")


class Hangs:
    async def process_query(self, query: str) -> None:
        await asyncio.sleep(3600)


class Printer(Echo):
    """Floods stdout: soakd must keep a bounded worker.log and keep going."""

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        print("x" * 4096, flush=True)
        async for event in super().process_query(query):
            yield event


async def scenario(query: str) -> str:
    await asyncio.sleep(0.001)
    return query
