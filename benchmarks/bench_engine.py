"""Engine overhead: iterations/s of a no-op streaming target, Engine vs a bare anyio loop.

    python benchmarks/bench_engine.py --seconds 5 [--users 8]

Both sides run the same async-generator target (two events, no I/O) with the same number of
concurrent tasks; the bare loop yields to the event loop once per iteration, as the engine does
with no think time (a fair loop must, or one task starves the rest). The difference is what the
engine costs per iteration: query choice, timeout scope, event matching, histograms.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel

from soakd.config import WorkloadConfig
from soakd.workload import Corpus, Engine
from soakd.workload.settings import WorkloadSettings

Event = dict[str, str]


async def noop(query: str) -> AsyncIterator[Event]:
    yield {"type": "status", "stage": "analysis_complete"}
    yield {"type": "complete"}


async def bare(users: int, seconds: float) -> float:
    count = 0
    deadline = time.monotonic() + seconds

    async def user() -> None:
        nonlocal count
        while time.monotonic() < deadline:
            async for _ in noop("python asyncio tutorial"):
                pass
            count += 1
            await anyio.lowlevel.checkpoint()

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(users):
            tg.start_soon(user)
    return count / (time.monotonic() - start)


async def engine(users: int, seconds: float) -> tuple[float, dict[str, object]]:
    cfg = WorkloadConfig.model_validate(
        {"users": users, "think_time": {"distribution": "none"}, "seed": 1}
    )
    # As the worker gets it: the supervisor's validated config, read back from its JSON dump.
    eng = Engine(
        WorkloadSettings.from_json(cfg.model_dump(mode="json")), noop, Corpus.default(seed=1)
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(eng.run, stop, 5.0)
        await anyio.sleep(seconds)
        stop.set()
    totals = eng.totals()
    return float(totals["throughput_per_s"]), totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each side")
    parser.add_argument("--users", type=int, default=8, help="concurrent tasks / virtual users")
    args = parser.parse_args()

    base = anyio.run(bare, args.users, args.seconds)
    driven, totals = anyio.run(engine, args.users, args.seconds)
    overhead_us = (1 / driven - 1 / base) * 1e6 if driven and base else float("nan")
    print(f"{'bare anyio loop':<18}{base:>12,.0f} iterations/s")
    print(f"{'soakd Engine':<18}{driven:>12,.0f} iterations/s")
    print(f"{'ratio':<18}{driven / base:>12.2f}")
    print(f"{'engine overhead':<18}{overhead_us:>12.1f} µs per iteration")
    print(
        f"engine latency p50/p99: {totals['latency_ms']} · errors: {totals['errors']} · "
        f"events: {totals['events']}"
    )


if __name__ == "__main__":
    main()
