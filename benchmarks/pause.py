"""How long ``Agent.sites()`` pauses a target, next to ``tracemalloc.take_snapshot()`` alone.

Each size runs in a fresh subprocess (tracemalloc on, 8 frames) that builds that many live
traced blocks from 40 distinct call stacks, then times, best of ``--repeat``:

- ``take_snapshot``: tracemalloc's own snapshot, what any tool pays before grouping;
- ``sites copy``: the GIL-holding part of ``Agent.sites()`` (the same table copy);
- ``sites total``: copy + grouping per traceback + site resolution, as the worker sees it;
- ``statistics``: ``take_snapshot().statistics("lineno")``, the stdlib way (``--stdlib``).

Side by side, in another fresh subprocess per size, the sampled profiler (``soakd.profiler``, the
default interval, 8 frames, no tracemalloc) with the same live blocks:

- ``sampled snap``: ``SampledProfiler.snapshot()``, the whole GIL-holding pause (goal ≤ 50 ms);
- ``sampled sites``: ``Agent.sites()`` on the profiler's stacks: snapshot + grouping;
- ``prof memory``: the profiler's own tables (``stats().memory_bytes``).

Usage: ``python benchmarks/pause.py [--sizes 100000,1000000] [--repeat 3] [--stdlib]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from typing import Any

FRAMES = 8


def _alloc(n: int) -> list[bytes]:
    return [bytes(40) for _ in range(n)]  # one traced block each


def _nest(depth: int, n: int) -> list[bytes]:
    # Different depths give different tracebacks, as a real service's call paths do.
    if depth == 0:
        return _alloc(n)
    return _nest(depth - 1, n)


def _build(blocks: int) -> list[list[bytes]]:
    per_stack = blocks // 40
    return [_nest(i % 10, per_stack) for i in range(40)]


def child(blocks: int, repeat: int, stdlib: bool) -> dict[str, Any]:
    from soakd.agent import Agent

    agent = Agent(frames=FRAMES)
    agent.start_tracing()
    keep = _build(blocks)
    result: dict[str, Any] = {"blocks_kept": sum(len(k) for k in keep)}
    snap_times: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        snapshot = tracemalloc.take_snapshot()
        snap_times.append(time.perf_counter() - started)
        result["traces"] = len(snapshot.traces)
        del snapshot
    result["take_snapshot_s"] = min(snap_times)
    copies: list[float] = []
    totals: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        sites = agent.sites()
        totals.append(time.perf_counter() - started)
        copies.append(sites["pause_s"])
        result["top_site"] = sites["sites"][0]["site"]
    result["sites_copy_s"] = min(copies)
    result["sites_total_s"] = min(totals)
    if stdlib:
        started = time.perf_counter()
        tracemalloc.take_snapshot().statistics("lineno")
        result["statistics_s"] = time.perf_counter() - started
    result["overhead_bytes"] = tracemalloc.get_tracemalloc_memory()
    return result


def child_sampled(blocks: int, repeat: int) -> dict[str, Any]:
    from soakd import profiler
    from soakd.agent import Agent

    if not profiler.AVAILABLE:
        return {"unavailable": profiler.UNAVAILABLE_REASON}
    agent = Agent(frames=FRAMES)
    prof = profiler.SampledProfiler()
    prof.start(interval=profiler.DEFAULT_INTERVAL, frames=FRAMES)
    keep = _build(blocks)
    result: dict[str, Any] = {"blocks_kept": sum(len(k) for k in keep)}
    snaps: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        stacks = prof.snapshot()
        snaps.append(time.perf_counter() - started)
        result["stacks"] = len(stacks)
        del stacks
    result["snapshot_s"] = min(snaps)
    totals: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        agent.sites()
        totals.append(time.perf_counter() - started)
    result["sites_total_s"] = min(totals)
    stats = prof.stats()
    result["memory_bytes"] = stats.memory_bytes
    result["live_samples"] = stats.live_blocks
    prof.stop()
    return result


def _run_child(size: int, repeat: int, mode: str, stdlib: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(size), "--repeat", str(repeat)]
    command += ["--mode", mode] + (["--stdlib"] if stdlib else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stdlib", action="store_true", help="also time statistics('lineno')")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="tracemalloc", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.mode == "sampled":
            print(json.dumps(child_sampled(args.child, args.repeat)))
        else:
            print(json.dumps(child(args.child, args.repeat, args.stdlib)))
        return 0
    print(f"{'':>9} {'tracemalloc (frames 8)':-^64} {'sampled profiler':-^38}")
    print(f"{'blocks':>9} {'take_snapshot':>14} {'sites copy':>11} {'sites total':>12}"
          f" {'statistics':>11} {'tm overhead':>12} {'sampled snap':>13} {'sampled sites':>14}"
          f" {'prof memory':>11}")  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        r = _run_child(size, args.repeat, "tracemalloc", args.stdlib)
        p = _run_child(size, args.repeat, "sampled", False)
        stats = f"{r['statistics_s']:.3f}s" if "statistics_s" in r else "-"
        overhead = r["overhead_bytes"] / 2**20
        if "unavailable" in p:
            sampled = f" {'-':>13} {'-':>14} {'-':>11}  ({p['unavailable']})"
        else:
            sampled = (f" {p['snapshot_s'] * 1e3:>11.3f}ms {p['sites_total_s'] * 1e3:>12.3f}ms"
                       f" {p['memory_bytes'] / 1024:>7.0f} KiB")  # fmt: skip
        print(f"{r['traces']:>9} {r['take_snapshot_s']:>13.3f}s {r['sites_copy_s']:>10.3f}s"
              f" {r['sites_total_s']:>11.3f}s {stats:>11} {overhead:>8.1f} MiB"
              f"{sampled}")  # fmt: skip
    print("goal: sampled snapshot ≤ 50 ms at 1M live blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
