"""An HTTP workload against a URL: the target when soakd watches a process it did not build."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from soakd.config import HttpTarget
from soakd.errors import SoakdError
from soakd.workload.spans import current_traceparent


class HTTPStatusError(SoakdError):
    """A response with status ≥ 400; classified by status in the error counts."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@contextlib.asynccontextmanager
async def open_http_target(cfg: HttpTarget) -> AsyncIterator[Callable[[str], Any]]:
    """Yield ``call(query)``: one request per iteration, streamed as content events."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=cfg.headers) as session:

        async def call(query: str) -> AsyncIterator[dict[str, Any]]:
            params = {cfg.query_param: query} if cfg.query_param else None
            body = cfg.body.replace("{query}", query) if cfg.body is not None else None
            # A sampled iteration's trace context, so the service's spans join soakd's trace.
            tp = current_traceparent()
            headers = {"traceparent": tp} if tp is not None else None
            async with session.request(
                cfg.method, cfg.url, params=params, data=body, headers=headers
            ) as resp:
                yield {"type": "status", "stage": "headers", "status": resp.status}
                if resp.status >= 400:
                    raise HTTPStatusError(resp.status)
                async for chunk in resp.content.iter_chunked(65536):
                    yield {"type": "content", "bytes": len(chunk)}
                yield {"type": "complete"}

        yield call
