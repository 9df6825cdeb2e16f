"""Brave-Search-compatible HTTP client: pooled aiohttp session, timeouts, bounded retries.

Talks to ``GET {base_url}/res/v1/web/search?q=...&count=...`` with the subscription token
in the ``X-Subscription-Token`` header, the shape of the real Brave Search API.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
import anyio

__all__ = [
    "SEARCH_PATH",
    "BraveSearchClient",
    "SearchError",
    "SearchResponse",
    "SearchResult",
    "parse_search_response",
]

SEARCH_PATH = "/res/v1/web/search"
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 1.0


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One web result."""

    title: str
    url: str
    description: str
    age: str | None = None
    extra_snippets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SearchResponse:
    """The web results of one search and how many HTTP attempts it took."""

    query: str
    results: tuple[SearchResult, ...]
    attempts: int


class SearchError(Exception):
    """A search failed; ``code`` classifies it for error events."""

    def __init__(self, code: str, message: str, *, status: int | None, attempts: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.attempts = attempts


class _Secret:
    """Holds the API key so that no repr, str or log line can show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def parse_search_response(query: str, payload: object, attempts: int) -> SearchResponse:
    """Turn a Brave JSON payload into results; a missing ``web`` section means no results."""
    if not isinstance(payload, dict):
        raise SearchError(
            "search_bad_response",
            f"expected a JSON object, got {type(payload).__name__}",
            status=200,
            attempts=attempts,
        )
    web = payload.get("web")
    raw_results = web.get("results") if isinstance(web, dict) else None
    results: list[SearchResult] = []
    for raw in raw_results if isinstance(raw_results, list) else []:
        if not isinstance(raw, dict) or not isinstance(raw.get("url"), str):
            continue  # the real API occasionally sends partial entries; skip, do not fail
        snippets = raw.get("extra_snippets")
        age = raw.get("age")
        results.append(
            SearchResult(
                title=_text(raw.get("title")),
                url=raw["url"],
                description=_text(raw.get("description")),
                age=age if isinstance(age, str) else None,
                extra_snippets=tuple(s for s in snippets if isinstance(s, str))
                if isinstance(snippets, list)
                else (),
            )
        )
    return SearchResponse(query=query, results=tuple(results), attempts=attempts)


def backoff_s(attempt: int) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped."""
    return float(min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempt - 1)))


class BraveSearchClient:
    """Async client with a bounded connection pool; open it with ``async with``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        pool_size: int = 20,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0: {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0: {retries!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1: {pool_size!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.pool_size = pool_size
        self._api_key = _Secret(api_key)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return (
            f"BraveSearchClient(base_url={self.base_url!r}, api_key={self._api_key!r}, "
            f"timeout_s={self.timeout_s!r}, retries={self.retries!r}, "
            f"pool_size={self.pool_size!r})"
        )

    async def open(self) -> None:
        """Create the session and its connection pool."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=self.pool_size)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        """Close the session and every pooled connection."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def search(self, query: str, count: int = 10) -> SearchResponse:
        """Search the web; retries 5xx, 429, timeouts and dropped connections."""
        if self._session is None:
            raise RuntimeError("BraveSearchClient is not open: use 'async with' or open()")
        url = f"{self.base_url}{SEARCH_PATH}"
        params = {"q": query, "count": str(count)}
        headers = {"Accept": "application/json", "X-Subscription-Token": self._api_key.reveal()}
        failure: SearchError | None = None
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await anyio.sleep(backoff_s(attempt - 1))
            try:
                async with self._session.get(url, params=params, headers=headers) as response:
                    if response.status >= 500 or response.status == 429:
                        # Read the body so the pooled connection can be reused.
                        await response.read()
                        failure = SearchError(
                            "search_unavailable",
                            f"search API answered HTTP {response.status}",
                            status=response.status,
                            attempts=attempt,
                        )
                        continue
                    if response.status != 200:
                        detail = (await response.text())[:200]
                        raise SearchError(
                            "search_rejected",
                            f"search API answered HTTP {response.status}: {detail}",
                            status=response.status,
                            attempts=attempt,
                        )
                    payload: Any = await response.json(content_type=None)
            except TimeoutError:
                failure = SearchError(
                    "search_timeout",
                    f"no answer within {self.timeout_s} s",
                    status=None,
                    attempts=attempt,
                )
                continue
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
                failure = SearchError(
                    "search_connection",
                    f"connection failed: {type(error).__name__}: {error}",
                    status=None,
                    attempts=attempt,
                )
                continue
            except ValueError as error:  # invalid JSON body
                raise SearchError(
                    "search_bad_response",
                    f"invalid JSON from search API: {error}",
                    status=200,
                    attempts=attempt,
                ) from error
            return parse_search_response(query, payload, attempt)
        assert failure is not None  # the loop ran at least once and only continues on failure
        raise SearchError(
            failure.code,
            f"{failure} (gave up after {attempts} attempts)",
            status=failure.status,
            attempts=attempts,
        )
