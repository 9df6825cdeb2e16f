"""Knowledge synthesis: rank results by keyword overlap, drop duplicates, stream chunks."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio.lowlevel

from soakd.reference.analyzer import QueryAnalysis
from soakd.reference.client import SearchResult

__all__ = [
    "ContentChunk",
    "KnowledgeSynthesizer",
    "dedupe_results",
    "normalize_url",
    "rank_results",
    "score_result",
]

_WORD_RE = re.compile(r"[\w][\w'.-]*")
_TAG_RE = re.compile(r"<[^>]+>")  # Brave marks matches with <strong> in descriptions


@dataclass(frozen=True, slots=True)
class ContentChunk:
    """One piece of streamed answer text and the URLs it draws on."""

    text: str
    sources: tuple[str, ...]


def normalize_url(url: str) -> str:
    """Compare URLs the way a reader would: no scheme, ``www.``, fragment or trailing slash."""
    parts = urlsplit(url.strip())
    host = parts.netloc.lower().removeprefix("www.")
    path = parts.path.rstrip("/") or ""
    query = f"?{parts.query}" if parts.query else ""
    return f"{host}{path}{query}"


def _normalize_title(title: str) -> str:
    return " ".join(_WORD_RE.findall(title.lower()))


def dedupe_results(results: Iterable[SearchResult]) -> list[SearchResult]:
    """Keep the first of results that share a URL or a title."""
    seen_urls: set[str] = set()
    seen_titles: set[str] = set()
    kept: list[SearchResult] = []
    for result in results:
        url = normalize_url(result.url)
        title = _normalize_title(result.title)
        if url in seen_urls or (title and title in seen_titles):
            continue
        seen_urls.add(url)
        if title:
            seen_titles.add(title)
        kept.append(result)
    return kept


def score_result(keywords: Sequence[str], result: SearchResult) -> float:
    """Keyword overlap: a title hit counts double a description or snippet hit."""
    if not keywords:
        return 0.0
    title = set(_WORD_RE.findall(result.title.lower()))
    body = set(_WORD_RE.findall(_TAG_RE.sub(" ", result.description).lower()))
    for snippet in result.extra_snippets:
        body.update(_WORD_RE.findall(snippet.lower()))
    hits = sum(2.0 * (word in title) + 1.0 * (word in body) for word in keywords)
    return hits / (3.0 * len(keywords))


def rank_results(analysis: QueryAnalysis, results: Iterable[SearchResult]) -> list[SearchResult]:
    """Deduplicated results, best keyword overlap first; ties keep the API's order."""
    unique = dedupe_results(results)
    order = {id(result): index for index, result in enumerate(unique)}
    return sorted(unique, key=lambda r: (-score_result(analysis.keywords, r), order[id(r)]))


class KnowledgeSynthesizer:
    """The ``knowledge_synthesizer`` collaborator: turns results into streamed chunks."""

    def __init__(self, *, max_sources: int = 5) -> None:
        if max_sources < 1:
            raise ValueError(f"max_sources must be >= 1: {max_sources!r}")
        self.max_sources = max_sources

    async def synthesize(
        self, analysis: QueryAnalysis, results: Sequence[SearchResult]
    ) -> AsyncIterator[ContentChunk]:
        """Yield an overview, one chunk per top source, then a closing summary."""
        ranked = rank_results(analysis, results)[: self.max_sources]
        if not ranked:
            yield ContentChunk(f"No web results were found for {analysis.query!r}.", ())
            return
        topic = ", ".join(analysis.keywords[:3]) or analysis.query
        yield ContentChunk(
            f"Overview ({analysis.intent}, {analysis.complexity}): "
            f"{len(ranked)} sources on {topic}.",
            (),
        )
        for index, result in enumerate(ranked, start=1):
            # Let other queries run between chunks, as a real streaming model would.
            await anyio.lowlevel.checkpoint()
            detail = f" {result.extra_snippets[0]}" if result.extra_snippets else ""
            age = f" ({result.age})" if result.age else ""
            description = _TAG_RE.sub("", result.description)
            yield ContentChunk(
                f"[{index}] {_TAG_RE.sub('', result.title)}{age}: {description}{detail}",
                (result.url,),
            )
        await anyio.lowlevel.checkpoint()
        yield ContentChunk(
            f"In short: {len(ranked)} independent sources agree on the main points about {topic}.",
            tuple(result.url for result in ranked),
        )
