"""What does allocation tracing cost? tracemalloc (frames 1 and 8) vs memray, on one workload.

    python benchmarks/tracing_vs_memray.py [--seconds 20] [--rounds 1] [--users 16]

Each row runs in a fresh Python process the same in-process async loop: ``--users`` tasks
calling ``ReferenceAggregator.process_query`` (real HTTP to its mock API child process) back to
back, counting iterations/s after a short warm-up. Rows:

- ``bare``              no tracing
- ``tracemalloc-f1``    ``tracemalloc.start(1)`` (what soakd's "always" mode does with frames=1)
- ``tracemalloc-f8``    ``tracemalloc.start(8)`` (soakd's default frames)
- ``memray``            ``memray run`` (system allocator calls only; pymalloc's small objects are
                        invisible to it)
- ``memray-pymalloc``   ``memray run --trace-python-allocators``: sees every Python allocation,
                        which is what tracemalloc sees
- ``memray-native``     ``memray run --native`` (only with ``--native``)

memray traces the whole process from its start and streams every event to a capture file, whose
size is printed with its growth per hour (a 24 h soak would keep it). memray is the ``[bench]``
extra (``pip install memray``); without it the memray rows are skipped with a note. Prints
iterations/s and the median ratio to ``bare`` of the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "RESULT "
TRACEMALLOC = {"bare": 0, "tracemalloc-f1": 1, "tracemalloc-f8": 8}
MEMRAY = {
    "memray": [],
    "memray-pymalloc": ["--trace-python-allocators"],
    "memray-native": ["--native"],
}


def child(args: argparse.Namespace) -> None:
    """One row, in this process: trace as asked, drive the aggregator, print the result."""
    if args.frames:
        import tracemalloc  # started before soakd and aiohttp are imported: it sees everything

        tracemalloc.start(args.frames)
    import anyio

    from soakd.reference import ReferenceAggregator
    from soakd.workload import Corpus

    async def drive() -> dict[str, float]:
        corpus = Corpus.default(seed=1)
        counted = errors = 0
        agg = ReferenceAggregator(seed=1, mock_latency_ms=args.mock_latency_ms)
        async with agg:
            start = time.monotonic()
            warm_end = start + args.warmup
            end = warm_end + args.seconds

            async def user() -> None:
                nonlocal counted, errors
                while (now := time.monotonic()) < end:
                    failed = False
                    async for event in agg.process_query(corpus.pick().text):
                        failed = failed or event.get("type") == "error"
                    if now >= warm_end:  # counted by start time: in-flight ends cancel out
                        counted += 1
                        errors += failed

            async with anyio.create_task_group() as tg:
                for _ in range(args.users):
                    tg.start_soon(user)
            elapsed = end - warm_end
        traced = 0.0
        if args.frames:
            import tracemalloc

            traced = float(tracemalloc.get_tracemalloc_memory())
        return {
            "iterations": counted,
            "errors": errors,
            "seconds": elapsed,
            "tracemalloc_overhead_bytes": traced,
        }

    result = anyio.run(drive)
    print(MARK + json.dumps(result), flush=True)


def run_row(row: str, args: argparse.Namespace, tmp: Path, rnd: int) -> dict[str, float]:
    script = [str(Path(__file__).resolve()), "--child", "--seconds", str(args.seconds)]
    script += ["--warmup", str(args.warmup), "--users", str(args.users)]
    script += ["--mock-latency-ms", str(args.mock_latency_ms)]
    capture = tmp / f"{row}-{rnd}.bin"
    if row in TRACEMALLOC:
        cmd = [sys.executable, *script, "--frames", str(TRACEMALLOC[row])]
    else:
        cmd = [sys.executable, "-m", "memray", "run", "-q", "-f", "--no-compress"]
        cmd += [*MEMRAY[row], "-o", str(capture), *script, "--frames", "0"]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=args.seconds + args.warmup + 300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(
            f"{row}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    result: dict[str, float] = json.loads(lines[-1][len(MARK) :])
    result["capture_bytes"] = float(capture.stat().st_size) if capture.exists() else 0.0
    capture.unlink(missing_ok=True)  # captures grow by hundreds of MiB: don't keep them
    return result


def memray_available() -> bool:
    try:
        import memray  # noqa: F401  # only asks whether the [bench] extra is installed
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per row (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds first (3)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all rows (1)")
    parser.add_argument("--users", type=int, default=16, help="concurrent query loops (16)")
    parser.add_argument(
        "--mock-latency-ms", type=float, default=1.0, help="mock search API latency (1.0)"
    )
    parser.add_argument("--native", action="store_true", help="add a memray --native row")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    rows = list(TRACEMALLOC)
    if memray_available():
        rows += ["memray", "memray-pymalloc"] + (["memray-native"] if args.native else [])
    else:
        print("memray is not installed (pip install memray, or the [bench] extra): rows skipped")
    print(f"tracing cost: {args.rounds} round(s) × {len(rows)} rows × {args.seconds:g}s "
          f"(+{args.warmup:g}s warm-up), {args.users} users, mock latency "
          f"{args.mock_latency_ms:g} ms; box: {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'round':>5}  {'row':<17}{'it/s':>9}{'ratio':>8}{'errors':>8}  {'extra'}")
    results: list[tuple[int, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="soakd-tracing-") as tmpname:
        for rnd in range(args.rounds):
            order = rows if rnd % 2 == 0 else rows[::-1]  # reversed on odd rounds: drift cancels
            measured = {row: run_row(row, args, Path(tmpname), rnd) for row in order}
            base = measured["bare"]["iterations"] / measured["bare"]["seconds"]
            for row in rows:
                m = measured[row]
                rate = m["iterations"] / m["seconds"]
                results.append((rnd, row, rate))
                extra = ""
                if m["tracemalloc_overhead_bytes"]:
                    extra = f"tracemalloc memory {m['tracemalloc_overhead_bytes'] / 2**20:.1f} MiB"
                if m["capture_bytes"]:
                    mib = m["capture_bytes"] / 2**20
                    per_h = mib * 3600 / (m["seconds"] + args.warmup) / 1024
                    extra = f"capture {mib:.0f} MiB (≈{per_h:.1f} GiB/h)"
                print(f"{rnd:>5}  {row:<17}{rate:>9.1f}{rate / base:>8.3f}"
                      f"{int(m['errors']):>8}  {extra}", flush=True)  # fmt: skip

    print()
    print(f"{'row':<17}{'median it/s':>12}{'median ratio':>14}")
    for row in rows:
        rates = [rate for _, r, rate in results if r == row]
        ratios = [
            rate / next(b for rb, r2, b in results if rb == rnd and r2 == "bare")
            for rnd, r, rate in results
            if r == row
        ]
        print(f"{row:<17}{statistics.median(rates):>12.1f}{statistics.median(ratios):>14.3f}")


if __name__ == "__main__":
    main()
