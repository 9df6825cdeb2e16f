"""The worker's HTTP/1.1 client (``[target.http]``) against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from soakd.worker.http_target import HTTPStatusError, open_http_target
from soakd.worker.settings import HttpSettings


class Server:
    """A tiny HTTP/1.1 server: each path answers in one framing; requests are recorded."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                target = line.decode().split()[1]
                self.requests.append((target, headers, body))
                if not await self._answer(target.split("?")[0], writer):
                    break
        finally:
            writer.close()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> bool:
        if path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"data: one\n\n", b"data: two\n\n", b"x" * 70000):
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path == "/length":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 100000)
        elif path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
            await writer.drain()
            return False
        elif path == "/error":
            writer.write(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        else:  # /slow: headers, then nothing for a long time
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(30)
        await writer.drain()
        return True


async def _events(call: Any, query: str) -> list[dict[str, Any]]:
    it: AsyncIterator[dict[str, Any]] = call(query)
    return [e async for e in it]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    srv = await s.start()
    try:
        yield s
    finally:
        srv.close()


@pytest.mark.anyio
async def test_chunked_length_and_close_framings(server: Server) -> None:
    async def run(path: str) -> list[dict[str, Any]]:
        settings = HttpSettings(url=f"http://127.0.0.1:{server.port}{path}")
        async with open_http_target(settings) as call:
            return await _events(call, "q")

    chunked = await run("/chunked")
    assert chunked[0] == {"type": "status", "stage": "headers", "status": 200}
    assert [e["bytes"] for e in chunked[1:-1]] == [11, 11, 65536, 70000 - 65536]
    assert chunked[-1] == {"type": "complete"}
    length = await run("/length")  # a 100 Continue first, then the response
    assert sum(e.get("bytes", 0) for e in length) == 100000 and length[-1]["type"] == "complete"
    closed = await run("/close")
    assert sum(e.get("bytes", 0) for e in closed) == len(b"until the end")


@pytest.mark.anyio
async def test_keep_alive_reuses_one_connection(server: Server) -> None:
    settings = HttpSettings(url=f"http://127.0.0.1:{server.port}/length")
    async with open_http_target(settings) as call:
        for _ in range(5):
            assert (await _events(call, "q"))[-1]["type"] == "complete"
    assert server.connections == 1 and len(server.requests) == 5


@pytest.mark.anyio
async def test_request_carries_query_body_headers_and_url_credentials(server: Server) -> None:
    settings = HttpSettings(
        url=f"http://alice:s%40cret@127.0.0.1:{server.port}/length?api_key=k",
        method="POST",
        body='{"q": "{query}"}',
        headers={"X-Token": "t0k", "User-Agent": "mine"},
        query_param="q",
    )
    async with open_http_target(settings) as call:
        await _events(call, "a b&c")
    target, headers, body = server.requests[0]
    assert target == "/length?api_key=k&q=a+b%26c"
    assert body == b'{"q": "a b&c"}' and headers["content-length"] == str(len(body))
    assert headers["x-token"] == "t0k" and headers["user-agent"] == "mine"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"alice:s@cret").decode()
    assert headers["host"] == f"127.0.0.1:{server.port}"


@pytest.mark.anyio
async def test_error_status_raises_and_the_connection_is_not_reused(server: Server) -> None:
    settings = HttpSettings(url=f"http://127.0.0.1:{server.port}/error")
    async with open_http_target(settings) as call:
        for _ in range(2):
            with pytest.raises(HTTPStatusError) as err:
                await _events(call, "q")
            assert err.value.status == 503
    assert server.connections == 2


@pytest.mark.anyio
async def test_a_response_cut_by_a_timeout_closes_its_connection(server: Server) -> None:
    slow = HttpSettings(url=f"http://127.0.0.1:{server.port}/slow")
    async with open_http_target(slow) as call:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_events(call, "q"), 0.2)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_events(call, "q"), 0.2)
    assert server.connections == 2  # the cut one was closed, not handed to the next request
