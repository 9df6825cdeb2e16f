"""Prometheus ``/metrics`` for the worker and the run, served by aiohttp.

The state lives in :mod:`soakd.sinks.run_metrics` (``RunMetrics``), the formats are
``prometheus_client``'s (text 0.0.4 by default, OpenMetrics 1.0 when the scraper's ``Accept``
asks for it, gzip when its ``Accept-Encoding`` allows); this module is the HTTP server, the
collector and the observer around them. ``soakd_supervisor_*`` describe soakd itself.

``process_*`` describe the WORKER (the process under soak), not soakd itself, so the fleet's
standard process dashboards and alerts apply to the target unchanged. ``soakd_*`` are the run.

Latency: when an ``on_workload`` interval carries ``latency_hist`` / ``first_event_hist``
(``soakd.hist/1``, ``LatencyHistogram.to_dict()``), its counts are added to the cumulative
histograms ``soakd_latency_seconds`` / ``soakd_first_event_seconds`` in fixed buckets, which
Prometheus can aggregate across boxes (``histogram_quantile``). Percentiles cannot be summed
into a histogram, so intervals without one only set the gauges
``soakd_latency_p50_seconds`` / ``_p99_`` and ``soakd_first_event_p50_seconds`` / ``_p99_``
(the last interval's values; always exposed when known).

Cardinality is bounded: per-site and per-type series are never exported (they are in
``samples.db``); error classes keep the first ``MAX_ERROR_CLASSES`` names, the rest count as
``other``; rule and leak-kind label sets are capped the same way.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from soakd.errors import ConfigError
from soakd.sinks.base import RunObserver
from soakd.sinks.run_metrics import BUCKETS_S, MAX_ERROR_CLASSES, RunMetrics

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what a scraper that asks for nothing gets

__all__ = [
    "BUCKETS_S",
    "CONTENT_TYPE",
    "MAX_ERROR_CLASSES",
    "MetricsServer",
    "RunMetrics",
    "escape_label",
    "parse_bind",
]


def escape_label(value: str) -> str:
    """A label value as the text format escapes it (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class RunCollector(Collector):
    """``prometheus_client`` collector over a :class:`RunMetrics`: read at every scrape."""

    def __init__(self, state: RunMetrics) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        return self.state.families()


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) into a host and a port."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics.bind {bind!r}: expected HOST:PORT such as 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class MetricsServer(RunObserver):
    """Serves GET /metrics on ``bind``; ``port`` is the bound port once started (0 allowed).

    Collaborators: :class:`RunMetrics` (``state``, fed by the observer callbacks) and aiohttp's
    ``AppRunner``; a ``prometheus_client`` registry holding one :class:`RunCollector`.
    """

    def __init__(self, bind: str, run_id: str, target: str) -> None:
        self.bind = bind
        self.host, self.requested_port = parse_bind(bind)
        self.run_id = run_id
        self.target = target
        self.port: int | None = None
        self.state = RunMetrics(run_id, target)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RunCollector(self.state))
        self._runner: web.AppRunner | None = None
        self.scrapes = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        sock = self._listen()
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/", self._handle_index)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        self.port = sock.getsockname()[1]

    def _listen(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(
                self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics.bind {self.bind}: cannot resolve {self.host!r}: {exc}"
            ) from None
        family, socktype, proto, _, address = infos[0]
        sock = socket.socket(family, socktype, proto)
        try:
            # A restarted soakd may rebind at once while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"metrics.bind {self.bind}: cannot listen: {exc.strerror or exc}; "
                "choose a free address or set metrics.enabled = false"
            ) from None
        return sock

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self.registry)
        headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def _handle_index(self, _request: web.Request) -> web.Response:
        return web.Response(text=f"soakd run {self.run_id}: metrics at /metrics\n")

    # -- observer --------------------------------------------------------------------------
    def on_samples(self, t: float, values: Mapping[str, float]) -> None:
        self.state.on_samples(t, values)

    def on_workload(self, t: float, interval: Mapping[str, Any], totals: Mapping[str, Any]) -> None:
        self.state.on_workload(t, interval, totals)

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        self.state.on_event(event, fields)

    def render(self) -> str:
        """The whole exposition in text format 0.0.4."""
        encoder, _ = choose_encoder("")
        return encoder(self.registry).decode()
