"""The aggregator: analyse, search, synthesize, stream — plus the soakd-facing wrapper."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from soakd.reference.analyzer import QueryAnalyzer
from soakd.reference.client import BraveSearchClient, SearchError
from soakd.reference.faults import FaultConfig, FaultInjector
from soakd.reference.launcher import MockApiProcess
from soakd.reference.synthesizer import KnowledgeSynthesizer
from soakd.reference.telemetry import Telemetry, open_telemetry

__all__ = [
    "AggregatorConfig",
    "BraveKnowledgeAggregator",
    "ReferenceAggregator",
    "ReferenceOptions",
]

Event = dict[str, Any]

_MOCK_KEY = "soakd-mock-key"  # the mock checks that a token is sent, not which one
_MOCK_OPTIONS = ("mock_latency_ms", "mock_latency_jitter_ms", "mock_error_rate")
_FAULT_OPTIONS = tuple(FaultConfig.__dataclass_fields__)


class ReferenceOptions(BaseModel):
    """``[target.options]`` of the reference aggregator, validated strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mock_latency_ms: float = Field(5.0, ge=0)
    mock_latency_jitter_ms: float = Field(3.0, ge=0)
    mock_error_rate: float = Field(0.0, ge=0, le=1)
    results_count: int = Field(10, ge=1, le=20)
    base_url: str | None = None
    api_key_env: str = Field("BRAVE_API_KEY", min_length=1)
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    pool_size: int = Field(20, ge=1)
    leak_kb: int = Field(0, ge=0)
    leak_objects: int = Field(0, ge=0)
    native_leak_kb: int = Field(0, ge=0)
    leak_fds: int = Field(0, ge=0)
    leak_threads: int = Field(0, ge=0)
    leak_tasks: int = Field(0, ge=0)
    leak_after_s: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    raise_rate: float = Field(0.0, ge=0, le=1)
    hang_rate: float = Field(0.0, ge=0, le=1)
    hang_s: float = Field(0.0, ge=0)
    extra_latency_ms: float = Field(0.0, ge=0)
    seed: int | None = None
    otel_export: bool = False

    @classmethod
    def parse(cls, options: dict[str, object]) -> ReferenceOptions:
        """Validate keyword options; errors name the option, its value and what is valid."""
        valid = sorted(cls.model_fields)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            hints = [
                f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
                for name in unknown
                for close in [difflib.get_close_matches(name, valid, n=1)]
            ]
            raise TypeError(
                f"soakd.reference:ReferenceAggregator got unknown option(s) {', '.join(hints)}; "
                f"valid options: {', '.join(valid)}"
            )
        try:
            parsed = cls(**options)  # type: ignore[arg-type]  # checked by pydantic itself
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}={e.get('input')!r}: {e['msg']}"
                for e in error.errors()
            )
            raise ValueError(f"invalid soakd.reference option: {problems}") from None
        if parsed.base_url is not None:
            conflicting = sorted(set(_MOCK_OPTIONS) & parsed.model_fields_set)
            if conflicting:
                raise ValueError(
                    f"{', '.join(conflicting)} only apply to the bundled mock API, which is not "
                    f"started when base_url is set ({parsed.base_url!r}): drop one or the other"
                )
        return parsed

    def fault_config(self) -> FaultConfig:
        return FaultConfig(**{name: getattr(self, name) for name in _FAULT_OPTIONS})


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    """The ``config`` collaborator: knobs of the aggregation itself."""

    results_count: int = 10
    max_sources: int = 5


class BraveKnowledgeAggregator:
    """Analyse a query, search the web, synthesize an answer, streaming events as it goes.

    Same constructor shape as the users' aggregator; ``faults`` is this reference's addition.
    """

    def __init__(
        self,
        brave_client: BraveSearchClient,
        query_analyzer: QueryAnalyzer,
        knowledge_synthesizer: KnowledgeSynthesizer,
        config: AggregatorConfig,
        faults: FaultInjector | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.brave_client = brave_client
        self.query_analyzer = query_analyzer
        self.knowledge_synthesizer = knowledge_synthesizer
        self.config = config
        self.faults = faults
        self.telemetry = telemetry

    def _span(self, name: str, parent: Any = None, **attributes: Any) -> Any:
        tel = self.telemetry
        if tel is None:
            return contextlib.nullcontext()
        return tel.span(name, parent, **attributes)

    def process_query(self, query: str) -> AsyncIterator[Event]:
        """Stream ``status``, ``content`` and ``complete`` events, or an ``error`` event."""
        if self.telemetry is None:
            return self._process(query, None)
        return self._traced(query)

    async def _traced(self, query: str) -> AsyncIterator[Event]:
        with self._span("process_query", query_length=len(query)) as root:
            # aclosing: a consumer that stops early closes the real generator at once
            async with contextlib.aclosing(self._process(query, root)) as events:
                async for event in events:
                    yield event

    async def _process(self, query: str, root: Any) -> AsyncGenerator[Event, None]:
        started = time.perf_counter()
        faults = self.faults
        with self._span("analyze", root):
            analysis = self.query_analyzer.analyze(query)
        # First event before any I/O: time-to-first-event measures the service, not the API.
        yield {
            "type": "status",
            "stage": "analysis_complete",
            "complexity": str(analysis.complexity),
            "intent": analysis.intent,
            "keywords": list(analysis.keywords),
        }
        if faults is not None:
            faults.inject_leaks(query)
            if faults.config.extra_latency_ms:
                await anyio.sleep(faults.config.extra_latency_ms / 1000.0)
        try:
            with self._span("search", root):
                response = await self.brave_client.search(query, self.config.results_count)
        except SearchError as error:
            yield {
                "type": "error",
                "error": error.code,
                "message": str(error),
                "status": error.status,
                "attempts": error.attempts,
            }
            return
        yield {
            "type": "status",
            "stage": "search_complete",
            "results": len(response.results),
            "attempts": response.attempts,
        }
        if faults is not None:
            hang = faults.hang_seconds()
            if hang:
                await anyio.sleep(hang)
            if faults.should_raise():
                raise RuntimeError(f"injected failure (raise_rate={faults.config.raise_rate})")
            if faults.should_error():
                yield {
                    "type": "error",
                    "error": "injected_error",
                    "message": f"injected error event (error_rate={faults.config.error_rate})",
                }
                return
        chunks = 0
        sources: set[str] = set()
        with self._span("synthesize", root):
            synthesis = self.knowledge_synthesizer.synthesize(analysis, response.results)
            async for chunk in synthesis:
                chunks += 1
                sources.update(chunk.sources)
                yield {"type": "content", "text": chunk.text, "sources": list(chunk.sources)}
        yield {
            "type": "complete",
            "chunks": chunks,
            "sources": len(sources),
            "elapsed_ms": round((time.perf_counter() - started) * 1000.0, 3),
        }


class ReferenceAggregator:
    """soakd's bundled target: ``factory = "soakd.reference:ReferenceAggregator"``.

    An async context manager: entering starts the mock API process (unless ``base_url`` is
    set), opens the HTTP session and returns itself; leaving closes both. Options: see the
    :mod:`soakd.reference` docstring.
    """

    def __init__(self, **options: object) -> None:
        self.options = ReferenceOptions.parse(options)
        seed = self.options.seed
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self._api_key = _MOCK_KEY
        if self.options.base_url is not None:
            key = os.environ.get(self.options.api_key_env, "")
            if not key:
                raise ValueError(
                    f"base_url is set ({self.options.base_url!r}) but environment variable "
                    f"{self.options.api_key_env} holding the API key is empty or unset: "
                    f"export it, or set api_key_env to the variable that holds it"
                )
            self._api_key = key
        self.faults = FaultInjector(self.options.fault_config(), rng=random.Random(self.seed))
        self.telemetry = open_telemetry(self.options.otel_export)
        self.mock: MockApiProcess | None = None
        self.client: BraveSearchClient | None = None
        self._aggregator: BraveKnowledgeAggregator | None = None

    def __repr__(self) -> str:
        given = sorted(self.options.model_fields_set)
        changed = ", ".join(f"{name}={getattr(self.options, name)!r}" for name in given)
        return f"ReferenceAggregator({changed})"

    @property
    def base_url(self) -> str | None:
        """Where searches go: the given ``base_url`` or the running mock's address."""
        if self.options.base_url is not None:
            return self.options.base_url
        return self.mock.base_url if self.mock is not None and self.mock.port else None

    async def __aenter__(self) -> Self:
        if self._aggregator is not None:
            raise RuntimeError("ReferenceAggregator is already entered")
        try:
            base_url = self.options.base_url
            if base_url is None:
                self.mock = MockApiProcess(
                    latency_ms=self.options.mock_latency_ms,
                    latency_jitter_ms=self.options.mock_latency_jitter_ms,
                    error_rate=self.options.mock_error_rate,
                    seed=self.seed,
                )
                await self.mock.start()
                base_url = self.mock.base_url
            self.client = BraveSearchClient(
                base_url,
                self._api_key,
                timeout_s=self.options.timeout_s,
                retries=self.options.retries,
                pool_size=self.options.pool_size,
            )
            await self.client.open()
        except BaseException:
            await self._close()
            raise
        self._aggregator = BraveKnowledgeAggregator(
            self.client,
            QueryAnalyzer(),
            KnowledgeSynthesizer(),
            AggregatorConfig(results_count=self.options.results_count),
            self.faults,
            self.telemetry,
        )
        self.faults.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        # Shielded: the run is ending, possibly by cancellation, and the child must be reaped.
        with anyio.CancelScope(shield=True):
            self._aggregator = None
            await self.faults.aclose()
            client, self.client = self.client, None
            if client is not None:
                await client.close()
            mock, self.mock = self.mock, None
            if mock is not None:
                await mock.stop()
            if self.telemetry is not None:
                # the SDK's flush blocks (bounded by its export timeout): off the event loop
                await anyio.to_thread.run_sync(self.telemetry.shutdown)

    def process_query(self, query: str) -> AsyncIterator[Event]:
        """Stream the events of one query; the instance must be entered first."""
        if self._aggregator is None:
            raise RuntimeError(
                "ReferenceAggregator is not entered: use 'async with ReferenceAggregator(...)'"
            )
        # Hand out the inner generator itself, so closing it early closes the real one.
        return self._aggregator.process_query(query)


def _options_signature() -> inspect.Signature:
    """``ReferenceAggregator(**options)`` as the keyword-only options it accepts, so that
    ``inspect.signature`` (and ``soakd check-config``) sees the real names and defaults."""
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=field.default,
                annotation=field.annotation,
            )
            for name, field in ReferenceOptions.model_fields.items()
        ]
    )


ReferenceAggregator.__signature__ = _options_signature()  # type: ignore[attr-defined]
