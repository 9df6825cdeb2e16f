"""The sampled profiler's own cost on the saturated reference aggregator, A/B within one process.

    python benchmarks/profiler_ab.py [--seconds 240] [--phase 4] [--users 16]
    python benchmarks/profiler_ab.py --processes 6 [--seconds 15]

``overhead.py`` compares whole soakd runs, one after another: on a shared box their throughput
drifts by ±5 % from run to run, as much as the cost it is after. This script removes the drift
instead of averaging it out: one process runs the bundled aggregator under saturating load
(16 users, no think time, mock API latency 1 ms in its child process) and switches the profiler
every ``--phase`` seconds through, in turn, off / on at the default interval / hooks only
(1 GiB interval: the hooks' toll without samples), in a rotating order. Each phase's first
half-second is dropped (the switch itself); per phase: completed queries/s and p99 latency.
A drift slower than a few phases then hits every variant alike, and per cycle the ratios
to the neighbouring "off" phases cancel it.

What it leaves out: everything soakd does besides the profiler (the agent's other samplers,
the supervisor): ``overhead.py``'s no-profiler row shows that part. A restarted profiler
starts with an empty table, so the table's size is that of a few seconds' samples, not of a
whole run's; at 64 KiB the free path's cost barely depends on it (a bitmap screens frees).

Prints every phase, then per variant the median of the per-cycle ratios to "off" and its
spread; goal for the default interval: throughput ≥ 0.95×, p99 ≤ 1.10×.

``--processes N`` measures the other way round, for the profiler as a soak meets it: N rounds
of one fresh process per variant (order reversed every other round), each starting the
profiler before it imports the aggregator (as soakd's worker does), driving it with soakd's
own workload engine (16 users, no think time, the default corpus) for ``--seconds`` after a
3 s warm-up, and counting completed iterations. Between this and a whole soak lie only the
rest of soakd (agent requests, the supervisor): ``overhead.py`` shows the whole.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soakd import profiler
from soakd.profiler import DEFAULT_INTERVAL, SampledProfiler

GOAL = 0.95
P99_GOAL = 1.10
SETTLE_S = 0.5
VARIANTS: dict[str, int | None] = {
    "off": None,
    "default": DEFAULT_INTERVAL,
    "hooks-only": 1024**3,
}
QUERIES = [
    "python asyncio tutorial",
    "weather in berlin tomorrow",
    "compare postgres and mysql for analytics workloads",
    "how does a transformer model work",
    "best pizza near me",
    "history of the roman empire timeline",
]


@dataclass
class Phase:
    variant: str
    cycle: int
    latencies: list[float] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / max(self.end - self.start, 1e-9)

    @property
    def p99_ms(self) -> float:
        if len(self.latencies) < 100:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100)[98] * 1000


async def run(args: argparse.Namespace) -> list[Phase]:
    from soakd.reference import ReferenceAggregator

    prof = SampledProfiler()
    phases: list[Phase] = []
    current: Phase | None = None
    stop = False

    async with ReferenceAggregator(seed=1, mock_latency_ms=1.0) as agg:

        async def user(n: int) -> None:
            i = n
            while not stop:
                t0 = time.perf_counter()
                async for _ in agg.process_query(QUERIES[i % len(QUERIES)]):
                    pass
                t1 = time.perf_counter()
                i += 1
                # Counted in the phase it ended in, once that phase has settled.
                if current is not None and current.start <= t0:
                    current.latencies.append(t1 - t0)

        async with anyio.create_task_group() as tg:
            for n in range(args.users):
                tg.start_soon(user, n)
            await anyio.sleep(args.warmup)
            names = list(VARIANTS)
            deadline = time.perf_counter() + args.seconds
            cycle = 0
            while time.perf_counter() < deadline:
                order = names[cycle % len(names) :] + names[: cycle % len(names)]
                for name in order:
                    interval = VARIANTS[name]
                    if interval is None:
                        prof.stop()
                    else:
                        prof.start(interval=interval, frames=8)
                    phase = Phase(name, cycle)
                    phase.start = time.perf_counter() + SETTLE_S
                    current = phase
                    await anyio.sleep(args.phase)
                    phase.end = time.perf_counter()
                    current = None
                    phases.append(phase)
                cycle += 1
            stop = True
            prof.stop()
            tg.cancel_scope.cancel()
    return phases


def report(phases: list[Phase]) -> None:
    print(f"{'cycle':>5}  {'variant':12s} {'queries/s':>10} {'p99 ms':>8}")
    for p in phases:
        print(f"{p.cycle:5d}  {p.variant:12s} {p.throughput:10.1f} {p.p99_ms:8.2f}")
    by_cycle: dict[int, dict[str, Phase]] = {}
    for p in phases:
        by_cycle.setdefault(p.cycle, {})[p.variant] = p
    full = [c for c in by_cycle.values() if len(c) == len(VARIANTS)]
    print(f"\n{len(full)} full cycles; ratios to 'off' of the same cycle")
    quartiles = f"{'q1':>6} {'q3':>6}"
    print(f"{'variant':12s} {'tput ratio':>10} {quartiles} {'p99 ratio':>10} {quartiles}")
    medians: dict[str, tuple[float, float]] = {}
    for name in VARIANTS:
        tr = [c[name].throughput / c["off"].throughput for c in full]
        pr = [c[name].p99_ms / c["off"].p99_ms for c in full]
        if len(tr) < 2:
            continue
        tq = statistics.quantiles(tr, n=4)
        pq = statistics.quantiles(pr, n=4)
        medians[name] = (statistics.median(tr), statistics.median(pr))
        print(
            f"{name:12s} {medians[name][0]:10.3f} {tq[0]:6.3f} {tq[2]:6.3f}"
            f" {medians[name][1]:10.3f} {pq[0]:6.3f} {pq[2]:6.3f}"
        )
    if "default" in medians:
        t, p99 = medians["default"]
        met = t >= GOAL and p99 <= P99_GOAL
        print(
            f"\nprofiler at {DEFAULT_INTERVAL // 1024} KiB / off: throughput {t:.3f}"
            f" (goal ≥ {GOAL}), p99 {p99:.3f} (goal ≤ {P99_GOAL}): {'met' if met else 'NOT met'}"
        )


_CHILD_ENV = "SOAKD_BENCH_AB_VARIANT"


def child(variant: str, seconds: float, users: int) -> None:
    """One process of ``--processes``: the profiler first, then the imports, then the load;
    prints its iterations per second as JSON."""
    interval = VARIANTS[variant]
    prof = SampledProfiler()
    if interval is not None:
        prof.start(interval=interval, frames=8)
    from soakd.reference import ReferenceAggregator
    from soakd.workload.corpus import Corpus
    from soakd.workload.engine import Engine
    from soakd.workload.settings import ThinkSpec, WorkloadSettings

    async def drive() -> float:
        cfg = WorkloadSettings(users=users, seed=1, think_time=ThinkSpec(distribution="none"))
        async with ReferenceAggregator(seed=1, mock_latency_ms=1.0) as agg:
            engine = Engine(cfg, agg.process_query, Corpus.from_config(cfg))
            stop = asyncio.Event()
            running = asyncio.get_running_loop().create_task(engine.run(stop, 5.0))
            await asyncio.sleep(3.0)
            done, t0 = engine.completed, time.perf_counter()
            await asyncio.sleep(seconds)
            rate = (engine.completed - done) / (time.perf_counter() - t0)
            stop.set()
            await running
        return rate

    print(json.dumps({"variant": variant, "throughput": asyncio.run(drive())}))


def by_process(args: argparse.Namespace) -> None:
    names = list(VARIANTS)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    print(f"{'round':>5}  " + "  ".join(f"{n:>16}" for n in names))
    for rnd in range(args.processes):
        rates: dict[str, float] = {}
        for name in names if rnd % 2 == 0 else names[::-1]:
            out = subprocess.run(
                [sys.executable, __file__, "--seconds", str(args.seconds), "--users",
                 str(args.users)],
                env=dict(os.environ, **{_CHILD_ENV: name}),
                capture_output=True,
                text=True,
                timeout=args.seconds + 120,
            )  # fmt: skip
            if out.returncode != 0:
                sys.exit(f"{name}: the measuring process failed:\n{out.stderr[-2000:]}")
            rates[name] = float(json.loads(out.stdout.splitlines()[-1])["throughput"])
        for name in names:
            ratios[name].append(rates[name] / rates["off"])
        print(f"{rnd:5d}  " + "  ".join(
            f"{rates[n]:9.1f} ({rates[n] / rates['off']:.3f})" for n in names))  # fmt: skip
    print(f"\nmedian ratio to 'off' over {args.processes} rounds (min..max)")
    for name in names[1:]:
        r = ratios[name]
        print(f"{name:12s} {statistics.median(r):.3f} ({min(r):.3f}..{max(r):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="measured time (240)")
    parser.add_argument("--phase", type=float, default=4.0, help="seconds per phase (4)")
    parser.add_argument("--users", type=int, default=16, help="concurrent users (16)")
    parser.add_argument("--warmup", type=float, default=10.0, help="unmeasured start (10 s)")
    parser.add_argument(
        "--processes", type=int, metavar="N", help="N rounds of fresh processes (see above)"
    )
    args = parser.parse_args()
    if not profiler.AVAILABLE:
        sys.exit(f"the sampled profiler is unavailable: {profiler.UNAVAILABLE_REASON}")
    variant = os.environ.get(_CHILD_ENV)
    if variant is not None:
        child(variant, args.seconds, args.users)
        return
    if args.processes is not None:
        if args.processes < 1 or args.seconds <= 0:
            parser.error("--processes must be ≥ 1 and --seconds > 0")
        by_process(args)
        return
    if args.phase <= SETTLE_S * 2 or args.seconds < args.phase * len(VARIANTS) * 2:
        parser.error("--phase must exceed 1 s and --seconds must hold at least two cycles")
    report(anyio.run(run, args))


if __name__ == "__main__":
    main()
