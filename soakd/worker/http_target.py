"""An HTTP workload against a URL: the target when soakd watches a process it did not build.

A small HTTP/1.1 client on asyncio streams, because the worker runs in the target's
interpreter and must bring no third-party package into it (aiohttp was used before). It does
what a load generator needs and no more: keep-alive connections to the one origin (a pool as
large as the concurrency, idle ones capped), Content-Length, chunked and read-to-close
bodies, TLS through :mod:`ssl`, basic auth from the URL's user info. Each body chunk read is
one ``content`` event, so time to first byte and streamed responses (SSE, NDJSON) are counted
as they arrive. A response cut short by a timeout closes its connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from soakd.errors import SoakdError
from soakd.worker.settings import HttpSettings
from soakd.workload.spans import current_traceparent

__all__ = ["HTTPProtocolError", "HTTPStatusError", "open_http_target"]

_CHUNK = 65536
_MAX_HEADER_BYTES = 64 * 1024  # a response head larger than this is an error, not buffered
_MAX_IDLE = 64  # idle keep-alive connections kept at most
_NO_BODY = frozenset({204, 304})


class HTTPStatusError(SoakdError):
    """A response with status ≥ 400; classified by status in the error counts."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class HTTPProtocolError(SoakdError):
    """The server's response is not HTTP/1.x as this client reads it."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Origin:
    """Where requests go and the request head shared by all of them."""

    def __init__(self, cfg: HttpSettings) -> None:
        parts = urlsplit(cfg.url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.tls else 80)
        self.path = parts.path or "/"
        self.query = parts.query
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        headers = {
            "Host": host if default_port else f"{host}:{self.port}",
            "User-Agent": "soakd",
            "Accept": "*/*",
        }
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        lower = {k.lower(): k for k in headers}
        for name, value in cfg.headers.items():  # the config's headers win over the defaults
            headers.pop(lower.get(name.lower(), name), None)
            headers[name] = value
        self.headers = headers
        self.ssl = ssl.create_default_context() if self.tls else None

    def target(self, params: dict[str, str] | None) -> str:
        query = self.query
        if params:
            query = f"{query}&{urlencode(params)}" if query else urlencode(params)
        return f"{self.path}?{query}" if query else self.path


class _Client:
    def __init__(self, cfg: HttpSettings) -> None:
        self.cfg = cfg
        self.origin = _Origin(cfg)
        self._idle: list[_Conn] = []

    async def _connect(self) -> _Conn:
        o = self.origin
        reader, writer = await asyncio.open_connection(
            o.host, o.port, ssl=o.ssl, limit=_MAX_HEADER_BYTES
        )
        return _Conn(reader, writer)

    def release(self, conn: _Conn) -> None:
        if len(self._idle) < _MAX_IDLE and not conn.writer.is_closing():
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def request(self, head: bytes, body: bytes) -> tuple[_Conn, int, dict[str, str]]:
        """Send one request; the connection, status and headers (lower-case names).

        A reused keep-alive connection the server closed meanwhile is retried once on a new one.
        """
        while self._idle:
            conn = self._idle.pop()
            try:
                return conn, *await self._exchange(conn, head, body)
            except (ConnectionError, asyncio.IncompleteReadError, HTTPProtocolError):
                conn.close()  # stale: the server closed it while it was idle
            except BaseException:
                conn.close()
                raise
        conn = await self._connect()
        try:
            return conn, *await self._exchange(conn, head, body)
        except BaseException:
            conn.close()
            raise

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes) -> tuple[int, dict[str, str]]:
        conn.writer.write(head + body)
        await conn.writer.drain()
        while True:
            status, headers = await _read_head(conn.reader)
            if not 100 <= status < 200:
                return status, headers  # 1xx (100 Continue, 103 Early Hints) are skipped


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readuntil(b"\r\n")
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    headers: dict[str, str] = {}
    size = len(line)
    while True:
        line = await reader.readuntil(b"\r\n")
        size += len(line)
        if size > _MAX_HEADER_BYTES:
            raise HTTPProtocolError(f"response head larger than {_MAX_HEADER_BYTES} bytes")
        if line == b"\r\n":
            return int(parts[1]), headers
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value


async def _body(
    reader: asyncio.StreamReader, headers: dict[str, str], status: int, method: str
) -> AsyncIterator[bytes]:
    """The body's pieces as they arrive (each at most 64 KiB)."""
    if method == "HEAD" or status in _NO_BODY:
        return
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPProtocolError(f"bad chunk size line: {size_line[:40]!r}") from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return
            while size > 0:
                piece = await reader.readexactly(min(size, _CHUNK))
                size -= len(piece)
                yield piece
            await reader.readexactly(2)  # the CRLF after a chunk
    elif "content-length" in headers:
        try:
            left = int(headers["content-length"])
        except ValueError:
            raise HTTPProtocolError(f"bad Content-Length: {headers['content-length']!r}") from None
        while left > 0:
            piece = await reader.read(min(left, _CHUNK))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(piece)
            yield piece
    else:
        while piece := await reader.read(_CHUNK):  # delimited by the server closing
            yield piece


def _reusable(headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    framed = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")
    return "close" not in connection and framed


@contextlib.asynccontextmanager
async def open_http_target(cfg: HttpSettings) -> AsyncIterator[Callable[[str], Any]]:
    """Yield ``call(query)``: one request per iteration, streamed as content events."""
    client = _Client(cfg)
    origin = client.origin
    method = cfg.method.upper()

    async def call(query: str) -> AsyncIterator[dict[str, Any]]:
        params = {cfg.query_param: query} if cfg.query_param else None
        body = cfg.body.replace("{query}", query).encode() if cfg.body is not None else b""
        lines = [f"{method} {origin.target(params)} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in origin.headers.items()]
        # A sampled iteration's trace context, so the service's spans join soakd's trace.
        traceparent = current_traceparent()
        if traceparent is not None:
            lines.append(f"traceparent: {traceparent}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        conn, status, headers = await client.request(head, body)
        done = False
        try:
            yield {"type": "status", "stage": "headers", "status": status}
            if status >= 400:
                raise HTTPStatusError(status)
            async for piece in _body(conn.reader, headers, status, method):
                yield {"type": "content", "bytes": len(piece)}
            done = True
            yield {"type": "complete"}
        finally:
            if done and _reusable(headers):
                client.release(conn)
            else:
                conn.close()  # cut short (timeout, error status, abandoned) or not reusable

    try:
        yield call
    finally:
        client.close()
