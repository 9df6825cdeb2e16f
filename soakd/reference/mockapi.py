"""Mock Brave Search API on loopback, run as its own process.

Run: ``python -m soakd.reference.mockapi --port 0 --latency-ms 5 --latency-jitter-ms 3
--error-rate 0.0 --seed N [--parent-pid PID]``. It binds 127.0.0.1, prints ``PORT <n>`` as its
first stdout line once it accepts connections, and serves until SIGTERM or SIGINT. On Linux it
asks the kernel for SIGTERM when its parent dies, so a SIGKILLed worker leaves no orphan.

Endpoints: ``GET /res/v1/web/search?q=...&count=...`` (needs ``X-Subscription-Token``) answers
deterministic Brave-shaped JSON; ``GET /_mock/stats`` answers request counters.

:class:`soakd.reference.launcher.MockApiProcess` starts and stops it from an async parent.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import random
import signal
import socket
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from soakd.reference.analyzer import analyze_query

__all__ = ["MockApiConfig", "build_app", "build_payload", "main"]

_PR_SET_PDEATHSIG = 1
_MAX_COUNT = 20  # the real API caps web results at 20

_DOMAINS = (
    "docs.python.org",
    "en.wikipedia.org",
    "stackoverflow.com",
    "realpython.com",
    "developer.mozilla.org",
    "arxiv.org",
    "github.com",
    "medium.com",
    "news.ycombinator.com",
    "learn.microsoft.com",
    "nature.com",
    "bbc.co.uk",
)
_FILLER = (
    "guide",
    "overview",
    "explained",
    "best practices",
    "tutorial",
    "deep dive",
    "reference",
    "common pitfalls",
    "in practice",
    "benchmarks",
)
_AGES = ("2 hours ago", "3 days ago", "1 week ago", "March 3, 2024", "June 18, 2023", None)


@dataclass(frozen=True, slots=True)
class MockApiConfig:
    """How the mock behaves."""

    latency_ms: float = 5.0
    latency_jitter_ms: float = 3.0
    error_rate: float = 0.0
    seed: int = 0


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    errors_injected: int = 0
    rejected: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


def build_payload(query: str, count: int, seed: int) -> dict[str, Any]:
    """Brave-shaped results, the same for the same (query, count, seed)."""
    rng = random.Random(zlib.crc32(f"{seed}\x00{query}".encode()))
    words = list(analyze_query(query).keywords) or ["search"]
    results: list[dict[str, Any]] = []
    for index in range(count):
        domain = rng.choice(_DOMAINS)
        topic = " ".join(rng.sample(words, k=min(len(words), rng.randint(1, 3))))
        filler = rng.choice(_FILLER)
        slug = "-".join([*topic.split(), *filler.split(), str(index)])
        # Every fifth result repeats an earlier URL, as aggregated indexes often do.
        if index and index % 5 == 4:
            url = results[rng.randrange(index)]["url"]
        else:
            url = f"https://{domain}/{slug}"
        title = f"{topic.title()} — {filler.title()}"
        description = (
            f"{filler.capitalize()} on <strong>{topic}</strong>: what it is, how it works and "
            f"what to watch for. Covers {', '.join(rng.sample(words, k=min(2, len(words))))}."
        )
        snippets = [
            f"{rng.choice(words).capitalize()} is discussed with examples ({n + 1})."
            for n in range(rng.randint(0, 3))
        ]
        result: dict[str, Any] = {
            "type": "search_result",
            "title": title,
            "url": url,
            "is_source_local": False,
            "is_source_both": False,
            "description": description,
            "language": "en",
            "family_friendly": True,
            "profile": {"name": domain, "url": f"https://{domain}", "long_name": domain},
            "meta_url": {"scheme": "https", "netloc": domain, "hostname": domain, "path": slug},
            "extra_snippets": snippets,
        }
        age = rng.choice(_AGES)
        if age is not None:
            result["age"] = age
        results.append(result)
    return {
        "type": "search",
        "query": {"original": query, "more_results_available": count >= 10},
        "mixed": {
            "type": "mixed",
            "main": [{"type": "web", "index": i, "all": False} for i in range(count)],
        },
        "web": {"type": "search", "results": results, "family_friendly": True},
    }


def _error(status: int, code: str, detail: str) -> web.Response:
    body = {"type": "ErrorResponse", "error": {"status": status, "code": code, "detail": detail}}
    return web.json_response(body, status=status)


def build_app(config: MockApiConfig) -> web.Application:
    """The aiohttp application; usable in-process too."""
    rng = random.Random(config.seed)
    stats = _Stats()

    async def search(request: web.Request) -> web.Response:
        stats.requests += 1
        delay_ms = config.latency_ms + rng.uniform(
            -config.latency_jitter_ms, config.latency_jitter_ms
        )
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        if not request.headers.get("X-Subscription-Token"):
            stats.rejected += 1
            return _error(401, "SUBSCRIPTION_TOKEN_INVALID", "missing X-Subscription-Token")
        query = request.query.get("q", "")
        if not query.strip():
            stats.rejected += 1
            return _error(422, "VALIDATION", "q: field required")
        try:
            count = int(request.query.get("count", "20"))
        except ValueError:
            stats.rejected += 1
            return _error(422, "VALIDATION", "count: value is not a valid integer")
        if not 1 <= count <= _MAX_COUNT:
            stats.rejected += 1
            return _error(422, "VALIDATION", f"count: must be between 1 and {_MAX_COUNT}")
        if config.error_rate > 0 and rng.random() < config.error_rate:
            stats.errors_injected += 1
            return _error(503, "SERVICE_UNAVAILABLE", "injected by --error-rate")
        return web.json_response(build_payload(query, count, config.seed))

    async def stats_view(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": stats.requests,
                "errors_injected": stats.errors_injected,
                "rejected": stats.rejected,
                "pid": os.getpid(),
            }
        )

    app = web.Application()
    app.router.add_get("/res/v1/web/search", search)
    app.router.add_get("/_mock/stats", stats_view)
    return app


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to SIGTERM us when the parent goes; elsewhere this is a no-op."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    # The parent may have died before prctl took effect: then we were re-parented already.
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


async def _serve(config: MockApiConfig, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    runner = web.AppRunner(build_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m soakd.reference.mockapi", description="Mock Brave Search API."
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=3.0)
    parser.add_argument("--error-rate", type=float, default=0.0, help="share answered 503")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=None, help="exit if this pid is gone")
    args = parser.parse_args(argv)
    if not 0.0 <= args.error_rate <= 1.0:
        parser.error(f"--error-rate must be within [0, 1]: {args.error_rate}")
    if args.latency_ms < 0 or args.latency_jitter_ms < 0:
        parser.error("--latency-ms and --latency-jitter-ms must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the mock server process."""
    args = _parse_args(argv)
    _die_with_parent(args.parent_pid)
    config = MockApiConfig(
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        error_rate=args.error_rate,
        seed=args.seed,
    )
    asyncio.run(_serve(config, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
