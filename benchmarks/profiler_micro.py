"""What the sampled allocation profiler costs per allocation, and how accurate it is.

Cost: an allocation-heavy loop (small dicts, lists, str and bytes built and dropped, a large
bytes now and then) timed in this one process with, side by side, no profiler, the profiler at
interval/4, interval and 4×interval, and tracemalloc with 1 frame. Variants are interleaved
within each round (reversed order on odd rounds, so that a drift cancels); per round each
variant's ns per iteration and its ratio to "none" of the same round, then the medians.

Accuracy (at ``--interval``): each trial allocates a known number of bytes (100-byte blocks)
at one line, takes a snapshot and checks that line's estimate: the share of trials where the
site had no sample at all (``unseen``: invisible, estimate 0), coverage of the 95 % interval over
all trials (unseen ones count as misses) and over the trials where the site was seen, mean
(bias) and root-mean-square relative error, mean relative half-width.

Instructions (``--instructions``, needs valgrind): the same loop in child processes under
``valgrind --tool=cachegrind``, counting the instructions it executes with no profiler, with
the hooks alone (1 GiB interval: next to no samples) and at the interval, each with 10 MiB of
blocks held live first (as a service holds data: hundreds of live samples for the free path to
screen). Each variant runs twice, with n and 2n iterations; the difference over n is the
instructions per iteration, start-up cancelled. Unlike time, the count does not move with
whatever else the box runs, so two builds compare exactly (run it at both commits).

Usage: ``python benchmarks/profiler_micro.py [--rounds 5] [--n 200000 | --seconds 1]
[--trials 200] [--sizes-mib 1,10,100] [--interval BYTES] [--instructions]``
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable

from soakd import profiler

LARGE = 64 * 1024  # one large block every 64 iterations: the malloc path, not pymalloc's
BLOCK = 100  # accuracy: bytes(100), 133 bytes each


def workload(n: int) -> None:
    for i in range(n):
        d = {"id": i, "name": "x", "tags": [i, i + 1]}
        s = f"item-{i}"
        b = bytes(48)
        t = (d, s, b)
        if not i & 63:
            big = bytes(LARGE)
            del big
        del d, s, b, t


def run_variant(start: Callable[[], None], stop: Callable[[], None], n: int) -> float:
    """ns per iteration of ``workload(n)`` with the variant on."""
    gc.collect()
    start()
    try:
        began = time.perf_counter_ns()
        workload(n)
        elapsed = time.perf_counter_ns() - began
    finally:
        stop()
    return elapsed / n


def variants(interval: int) -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
    prof = profiler.SampledProfiler()
    out: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
        ("none", lambda: None, lambda: None)
    ]
    if profiler.AVAILABLE:
        for factor, label in ((0.25, "interval/4"), (1, "interval"), (4, "4×interval")):
            size = int(interval * factor)
            out.append(
                (
                    f"profiler {label} ({size // 1024} KiB)",
                    lambda size=size: prof.start(interval=size, frames=8),  # type: ignore[misc]
                    prof.stop,
                )
            )
    out.append(("tracemalloc f1", lambda: tracemalloc.start(1), tracemalloc.stop))
    return out


def calibrate(seconds: float) -> int:
    n = 20_000
    while True:
        began = time.perf_counter()
        workload(n)
        took = time.perf_counter() - began
        if took >= 0.2:
            return max(int(n * seconds / took), 1000)
        n *= 2


def cost(rounds: int, n: int, interval: int) -> None:
    table = variants(interval)
    per_variant: dict[str, list[float]] = {name: [] for name, _, _ in table}
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in table}
    print(f"cost: {n} iterations per run, {rounds} rounds")
    print(f"{'round':>5}  {'variant':<30} {'ns/iter':>9} {'ratio':>7}")
    for r in range(rounds):
        order = table if r % 2 == 0 else table[::-1]
        ns = {name: run_variant(start, stop, n) for name, start, stop in order}
        for name, _, _ in table:
            per_variant[name].append(ns[name])
            ratios[name].append(ns[name] / ns["none"])
            print(f"{r:>5}  {name:<30} {ns[name]:>9.1f} {ns[name] / ns['none']:>7.3f}")
    print(f"\n{'variant':<30} {'median ns':>9} {'ratio med':>9} {'min':>7} {'max':>7}")
    for name, _, _ in table:
        rs = ratios[name]
        print(
            f"{name:<30} {statistics.median(per_variant[name]):>9.1f}"
            f" {statistics.median(rs):>9.3f} {min(rs):>7.3f} {max(rs):>7.3f}"
        )


def _make(n: int) -> list[bytes | None]:
    keep: list[bytes | None] = [None] * n
    for i in range(n):
        keep[i] = bytes(BLOCK)  # the site whose live bytes are estimated
    return keep


_SITE = (__file__, _make.__code__.co_firstlineno + 3)


def accuracy(trials: int, sizes_mib: list[float], interval: int) -> None:
    if not profiler.AVAILABLE:
        print(f"accuracy: skipped ({profiler.UNAVAILABLE_REASON})")
        return
    prof = profiler.SampledProfiler()
    prof.start(interval=interval, frames=8)
    block = sys.getsizeof(bytes(BLOCK))
    print(
        f"\naccuracy at interval {interval // 1024} KiB: {trials} trials per size, {block} B blocks"
    )
    print(
        f"{'truth MiB':>9} {'samples':>8} {'unseen':>7} {'coverage':>9} {'if seen':>8}"
        f" {'bias':>7} {'rms err':>8} {'±half-width':>11}"
    )
    try:
        for mib in sizes_mib:
            n = max(int(mib * 2**20 / block), 1)
            truth = n * block
            covered = 0
            errors: list[float] = []
            halves: list[float] = []
            samples: list[int] = []
            for _ in range(trials):
                keep = _make(n)
                hits = [e for e in prof.snapshot() if e.frames[0] == _SITE]
                est = hits[0] if hits else None
                low, high = est.interval95 if est else (0.0, 0.0)
                covered += low <= truth <= high
                errors.append((est.est_bytes if est else 0.0) / truth - 1)
                halves.append((high - low) / 2 / truth)
                samples.append(est.sampled if est else 0)
                del keep
            rms = math.sqrt(sum(e * e for e in errors) / trials)
            seen = sum(1 for k in samples if k)
            print(
                f"{truth / 2**20:>9.1f} {statistics.mean(samples):>8.1f}"
                f" {1 - seen / trials:>7.1%} {covered / trials:>9.1%}"
                f" {covered / seen if seen else 0.0:>8.1%} {statistics.mean(errors):>+7.3f}"
                f" {rms:>8.3f} {statistics.mean(halves):>10.1%}"
            )
    finally:
        prof.stop()


HELD_MIB = 10
INSTR_VARIANTS = {"none": None, "hooks only (1 GiB)": 1024**3, "interval": 0}  # 0: --interval


def instructions_child(interval: int, n: int) -> None:
    """One measured process: start the variant, hold HELD_MIB live, run the loop n times."""
    if interval:
        profiler.SampledProfiler().start(interval=interval, frames=8)
    held = [bytes(1000) for _ in range(HELD_MIB * 1024)]
    workload(n)
    del held


def _count(interval: int, n: int) -> int:
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    cmd += [sys.executable, __file__, "--instructions-child", str(interval), str(n)]
    env = dict(os.environ, PYTHONHASHSEED="0")  # str hashes steer dicts: same in every child
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stderr
    found = re.search(r"I\s+refs:\s+([\d,]+)", out)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(found.group(1).replace(",", ""))


def instructions(n: int, interval: int) -> None:
    if shutil.which("valgrind") is None:
        print("instructions: valgrind is not installed (apt-get install valgrind): skipped")
        return
    print(f"\ninstructions: {n} and {2 * n} iterations under cachegrind, {HELD_MIB} MiB held")
    print(f"{'variant':<30} {'instr/iter':>10} {'over none':>10} {'ratio':>7}")
    base = None
    for name, size in INSTR_VARIANTS.items():
        size = interval if size == 0 else size
        if size and not profiler.AVAILABLE:
            continue
        per = (_count(size or 0, 2 * n) - _count(size or 0, n)) / n
        base = per if base is None else base
        print(f"{name:<30} {per:>10.1f} {per - base:>10.1f} {per / base:>7.3f}", flush=True)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--instructions-child":
        instructions_child(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, help="iterations per run (default: from --seconds)")
    parser.add_argument("--seconds", type=float, default=1.0, help="target seconds per run")
    parser.add_argument("--trials", type=int, default=200, help="accuracy trials per size")
    parser.add_argument("--sizes-mib", default="1,10,100", help="accuracy: live MiB at the site")
    parser.add_argument("--interval", type=int, default=profiler.DEFAULT_INTERVAL)
    parser.add_argument(
        "--instructions", action="store_true", help="only count instructions (valgrind)"
    )
    args = parser.parse_args()
    if args.instructions:
        instructions(args.n or 100_000, args.interval)
        return 0
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}")
    if not profiler.AVAILABLE:
        print(f"profiler unavailable: {profiler.UNAVAILABLE_REASON}")
    n = args.n or calibrate(args.seconds)
    cost(args.rounds, n, args.interval)
    accuracy(args.trials, [float(s) for s in args.sizes_mib.split(",")], args.interval)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
