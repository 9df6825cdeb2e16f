"""How long ``Agent.sites()`` pauses a target, next to ``tracemalloc.take_snapshot()`` alone.

Each size runs in a fresh subprocess (tracemalloc on, 8 frames) that builds that many live
traced blocks from 40 distinct call stacks, then times, best of ``--repeat``:

- ``take_snapshot``: tracemalloc's own snapshot, what any tool pays before grouping;
- ``sites copy``: the GIL-holding part of ``Agent.sites()`` (the same table copy);
- ``sites total``: copy + grouping per traceback + site resolution, as the worker sees it;
- ``statistics``: ``take_snapshot().statistics("lineno")``, the stdlib way (``--stdlib``).

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stdlib", action="store_true", help="also time statistics('lineno')")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeat, args.stdlib)))
        return 0
    print(f"{'blocks':>9} {'take_snapshot':>14} {'sites copy':>11} {'sites total':>12}"
          f" {'statistics':>11} {'tm overhead':>12}")  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        command = [sys.executable, __file__, "--child", str(size), "--repeat", str(args.repeat)]
        if args.stdlib:
            command.append("--stdlib")
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        r = json.loads(out)
        stats = f"{r['statistics_s']:.3f}s" if "statistics_s" in r else "-"
        overhead = r["overhead_bytes"] / 2**20
        print(f"{r['traces']:>9} {r['take_snapshot_s']:>13.3f}s {r['sites_copy_s']:>10.3f}s"
              f" {r['sites_total_s']:>11.3f}s {stats:>11} {overhead:>8.1f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
