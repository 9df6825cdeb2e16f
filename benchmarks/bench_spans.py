"""What an iteration span costs the worker: SpanRecorder.begin/end per iteration, by ratio.

    python benchmarks/bench_spans.py [--iterations 200000] [--rounds 5]

Times ``begin()`` + ``end()`` (what the engine adds to each iteration with ``[otel]`` on) at
sampling ratios 0 (the unsampled path: one random draw), the default, and 1 (every iteration a
span: ids, traceparent, the OpenTelemetry context attached when the API is importable), then
prints the cost per iteration in µs (the median of the rounds) and as a fraction of the engine's
own per-iteration cost (13.5 µs, ``benchmarks/bench_engine.py``) — the worker-side overhead of
``[otel]`` at that ratio. The supervisor's side (export) runs on another process's threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

from soakd.config import OtelConfig
from soakd.workload.spans import SpanRecorder

ENGINE_US = 13.5  # the engine's own cost per iteration (README, bench_engine.py)


def per_iteration_us(ratio: float, iterations: int) -> float:
    rec = SpanRecorder(ratio, 1024, seed=1)
    hits = {"first_status": 0.001, "analysis_complete": 0.001}
    t0 = time.perf_counter()
    for i in range(iterations):
        span = rec.begin()
        if span is not None:
            rec.end(span, kind="simple", error=None, first_s=0.001, milestones=hits, events=5)
        if i % 1000 == 999:
            rec.drain()  # as the worker does once per workload interval
    return (time.perf_counter() - t0) / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    try:
        import opentelemetry.context  # noqa: F401

        attach = "OpenTelemetry API importable: context attached per sampled iteration"
    except ImportError:
        attach = "OpenTelemetry API not importable: traceparent contextvar only"
    print(attach)
    default = OtelConfig().sample_ratio
    print(f"{'ratio':>8}{'µs/iteration':>14}{'of engine':>11}")
    for ratio in (0.0, default, 0.1, 1.0):
        us = statistics.median(per_iteration_us(ratio, args.iterations) for _ in range(args.rounds))
        print(f"{ratio:>8g}{us:>14.3f}{us / ENGINE_US:>10.1%}")


if __name__ == "__main__":
    main()
