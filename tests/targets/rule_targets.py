"""Targets whose behaviour changes over time, for the threshold-rule tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

_KEEP: list[bytes] = []


class Phased:
    """Errors (yielded error events) between ``bad_from`` and ``bad_until`` seconds after start;
    latency ``slow_ms`` from ``slow_from`` on; ``leak_kb`` per query from the start."""

    def __init__(
        self,
        bad_from: float = 1e9,
        bad_until: float = 1e9,
        slow_from: float = 1e9,
        slow_ms: float = 0.0,
        leak_kb: int = 0,
    ) -> None:
        self.t0 = time.monotonic()
        self.bad = (bad_from, bad_until)
        self.slow_from = slow_from
        self.slow_ms = slow_ms
        self.leak_kb = leak_kb

    async def process_query(self, query: str) -> AsyncIterator[dict[str, Any]]:
        elapsed = time.monotonic() - self.t0
        if self.leak_kb:
            _KEEP.append(bytes(self.leak_kb * 1024))
        yield {"type": "status", "stage": "analysis_complete"}
        if elapsed >= self.slow_from:
            await asyncio.sleep(self.slow_ms / 1000)
        else:
            await asyncio.sleep(0.002)
        if self.bad[0] <= elapsed < self.bad[1]:
            yield {"type": "error", "error": "backend_down"}
            return
        yield {"type": "content", "text": query}
        yield {"type": "complete"}
