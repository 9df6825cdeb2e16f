"""soakd's bundled reference aggregator and its mock Brave Search API.

A small but real search aggregator: a query analyser, an aiohttp client that talks HTTP to a
Brave-Search-compatible API, and a synthesizer that streams the answer. By default the API is
a mock served on 127.0.0.1 by a child process that the aggregator starts and stops. Options
inject faults on purpose, so that a soak can be demonstrated and soakd itself tested::

    [target]
    factory = "soakd.reference:ReferenceAggregator"
    method = "process_query"

    [target.options]
    leak_kb = 8

``process_query(query)`` streams ``{"type": "status", "stage": "analysis_complete", ...}``
(before any network I/O), ``{"type": "status", "stage": "search_complete", ...}``, several
``{"type": "content", "text": ..., "sources": [...]}``, then ``{"type": "complete", ...}``; a
failure is yielded as ``{"type": "error", "error": CODE, "message": ...}`` (codes:
``search_unavailable``, ``search_timeout``, ``search_connection``, ``search_rejected``,
``search_bad_response``, ``injected_error``), except ``raise_rate`` which raises.

Options (keyword arguments; everything off or neutral by default; unknown names are a
``TypeError`` that lists the valid ones, bad values a ``ValueError``):

======================== ================ ===================================================
option                   default          effect
======================== ================ ===================================================
mock_latency_ms          5.0              mock API: mean answer latency (ms)
mock_latency_jitter_ms   3.0              mock API: latency varies uniformly by ± this (ms)
mock_error_rate          0.0              mock API: share of searches answered HTTP 503
results_count            10               results asked per search (``count``, 1–20)
base_url                 None             search this API instead of starting the mock, e.g.
                                          ``https://api.search.brave.com`` (real-API mode)
api_key_env              "BRAVE_API_KEY"  env var holding the API key when ``base_url`` is
                                          set; the key is never logged or shown in a repr
timeout_s                10.0             total timeout of one HTTP request (s)
retries                  2                retries after 5xx, 429, timeout or lost connection
                                          (backoff 50 ms doubling, capped at 1 s)
pool_size                20               connection pool limit of the HTTP session
leak_kb                  0                heap leak: keep a KiB-sized bytes object per query,
                                          allocated at ``faults.HEAP_LEAK_SITE``
leak_objects             0                keep this many ``faults.LeakedRecord`` per query
native_leak_kb           0                ``mmap`` and touch this many KiB per query, never
                                          freed: RSS grows, the Python heap does not
leak_fds                 0                open this many fds (``/dev/null``) per query, kept
leak_threads             0                start this many daemon threads per query, blocked
                                          forever
leak_tasks               0                create this many asyncio tasks per query, waiting
                                          forever (cancelled at exit)
leak_after_s             0.0              leaks begin only this many seconds after entering
                                          (late onset)
error_rate               0.0              probability that a query yields an error event
raise_rate               0.0              probability that a query raises ``RuntimeError``
hang_rate                0.0              probability that a query hangs mid-stream ...
hang_s                   0.0              ... for this many seconds (cancellable)
extra_latency_ms         0.0              added before each search (ms)
seed                     None             seeds the fault draws and the mock; None = random
otel_export              false            export the aggregator's own spans over OTLP/HTTP
                                          (``OTEL_EXPORTER_OTLP_*``; :mod:`.telemetry`)
======================== ================ ===================================================

The mock runs as ``python -m soakd.reference.mockapi --port 0 ...`` and dies with its
parent (Linux ``PR_SET_PDEATHSIG``); see :mod:`soakd.reference.mockapi`.
"""

from soakd.reference.aggregator import (
    AggregatorConfig,
    BraveKnowledgeAggregator,
    ReferenceAggregator,
    ReferenceOptions,
)
from soakd.reference.faults import HEAP_LEAK_SITE, LeakedRecord

__all__ = [
    "HEAP_LEAK_SITE",
    "AggregatorConfig",
    "BraveKnowledgeAggregator",
    "LeakedRecord",
    "ReferenceAggregator",
    "ReferenceOptions",
]
