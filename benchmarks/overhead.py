"""What does soakd cost the target? Reference-aggregator throughput with and without sampling.

    python benchmarks/overhead.py [--rounds 5] [--seconds 60] [--users 16] [--no-extra]

Runs the real CLI (`python -m soakd run --run-dir TMP ...`) on the bundled reference aggregator
and reads iterations/s from each run's summary.json. Variants, run side by side in every round:

- ``default``      soakd's default sampling (tracemalloc "on-suspicion", and no suspicion on this
                   leak-free target: heap level, tasks, type counts, process samples)
- ``process-only`` ``--set sampling.enabled=false``: psutil from outside only (the baseline)
- ``always-f1`` / ``always-f8``  ``sampling.tracemalloc=always`` with frames 1 and 8 (extra rows)

The order is reversed on odd rounds (A B … / … B A) so that a slow drift of a shared box cancels
out. The load saturates the worker by default (no think time, many users), the worst case for
overhead: with think time the aggregator waits and sampling costs nothing visible. Prints every
run, then per variant the median throughput and the median of the per-round ratios to
process-only (goal for ``default``: ≥ 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "process-only"
VARIANTS: dict[str, list[str]] = {
    "default": [],
    BASELINE: ["sampling.enabled=false"],
    "always-f1": ["sampling.tracemalloc=always", "sampling.frames=1"],
    "always-f8": ["sampling.tracemalloc=always", "sampling.frames=8"],
}
GOAL = 0.95


@dataclass(frozen=True)
class Result:
    round: int
    variant: str
    throughput: float
    iterations: int
    verdict: str
    tracing: bool  # tracemalloc was started during the run
    supervisor_cpu: float  # supervisor CPU seconds per wall second, in percent
    worker_cpu: float  # mean of the worker's cpu_percent samples


def load_args(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides that fix the load, identical for every variant."""
    sets = [
        f"workload.users={args.users}",
        "workload.seed=1",
        "target.options.seed=1",
        f"target.options.mock_latency_ms={args.mock_latency_ms}",
        "output.console=json",
    ]
    if args.think_ms > 0:
        sets += [
            "workload.think_time.distribution=constant",
            f"workload.think_time.mean={args.think_ms / 1000}",
        ]
    else:
        sets.append("workload.think_time.distribution=none")
    return sets + list(args.set)


def run_once(
    variant: str, rnd: int, args: argparse.Namespace, tmp: Path, common: list[str]
) -> Result:
    run_dir = tmp / f"r{rnd}-{variant}"
    cmd = [sys.executable, "-m", "soakd", "run", "--duration", f"{args.seconds}s"]
    cmd += ["--run-dir", str(run_dir)]
    for item in common + VARIANTS[variant]:
        cmd += ["--set", item]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("NOTIFY_SOCKET", None)
    log = (tmp / f"r{rnd}-{variant}.log").open("w", encoding="utf-8")
    started = time.monotonic()
    with log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env) as proc:
        supervisor = psutil.Process(proc.pid)
        cpu = 0.0
        deadline = started + args.seconds + 180
        while proc.poll() is None:
            try:  # the last reading before exit is the supervisor's CPU for the whole run
                times = supervisor.cpu_times()
                cpu = times.user + times.system
            except psutil.Error:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"{variant}: soakd run did not finish; log: {log.name}")
            time.sleep(0.5)
    wall = time.monotonic() - started
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise SystemExit(f"{variant}: no summary.json (exit {proc.returncode}); log: {log.name}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    tracing = '"event":"tracing.started"' in events.replace(" ", "")
    with sqlite3.connect(run_dir / "samples.db") as db:
        row = db.execute("SELECT avg(value) FROM samples WHERE series = 'cpu_percent'").fetchone()
    db.close()
    return Result(
        round=rnd,
        variant=variant,
        throughput=float(summary["workload"]["throughput_per_s"]),
        iterations=int(summary["workload"]["iterations"]),
        verdict=str(summary["verdict"]),
        tracing=tracing,
        supervisor_cpu=100.0 * cpu / wall,
        worker_cpu=float(row[0] or 0.0),
    )


def ratios_to_baseline(results: list[Result], variant: str) -> list[float]:
    """Each run's throughput over the process-only run of the same round."""
    base = {r.round: r.throughput for r in results if r.variant == BASELINE}
    return [
        r.throughput / base[r.round] if base[r.round] else float("nan")
        for r in results
        if r.variant == variant
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all variants (5)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each run (60)")
    parser.add_argument("--users", type=int, default=16, help="virtual users (16)")
    parser.add_argument(
        "--think-ms", type=float, default=0.0, help="constant think time; 0 = none (default)"
    )
    parser.add_argument(
        "--mock-latency-ms", type=float, default=1.0, help="mock search API latency (1.0)"
    )
    parser.add_argument("--no-extra", action="store_true", help="skip the tracemalloc=always rows")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra soakd --set"
    )
    parser.add_argument("--keep", type=Path, help="keep run directories here")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be ≥ 1 and --seconds > 0")

    variants = list(VARIANTS) if not args.no_extra else ["default", BASELINE]
    common = load_args(args)
    print(f"soakd overhead: {args.rounds} rounds × {len(variants)} variants × {args.seconds:g}s")
    print(f"load: {' '.join(common)}")
    print(
        f"box: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} "
        "(a shared box is noisy: compare ratios within a round)"
    )
    print(f"{'round':>5}  {'variant':<13}{'it/s':>9}{'ratio':>8}{'iters':>8}  "
          f"{'verdict':<8}{'tracing':<8}{'sup cpu':>8}{'wrk cpu':>8}")  # fmt: skip
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="soakd-overhead-") as tmpname:
        tmp = args.keep or Path(tmpname)
        tmp.mkdir(parents=True, exist_ok=True)
        for rnd in range(args.rounds):
            order = variants if rnd % 2 == 0 else variants[::-1]
            done: list[Result] = []
            for variant in order:
                done.append(run_once(variant, rnd, args, tmp, common))
            for r in sorted(done, key=lambda r: variants.index(r.variant)):
                ratio = ratios_to_baseline(done, r.variant)[0]
                print(f"{r.round:>5}  {r.variant:<13}{r.throughput:>9.1f}{ratio:>8.3f}"
                      f"{r.iterations:>8}  {r.verdict:<8}{'yes' if r.tracing else 'no':<8}"
                      f"{r.supervisor_cpu:>7.1f}%{r.worker_cpu:>7.1f}%", flush=True)  # fmt: skip
            results += done

    print()
    print(f"{'variant':<13}{'median it/s':>12}{'median ratio':>14}{'min':>8}{'max':>8}")
    for variant in variants:
        ratios = ratios_to_baseline(results, variant)
        rate = statistics.median(r.throughput for r in results if r.variant == variant)
        print(f"{variant:<13}{rate:>12.1f}{statistics.median(ratios):>14.3f}"
              f"{min(ratios):>8.3f}{max(ratios):>8.3f}")  # fmt: skip
    median = statistics.median(ratios_to_baseline(results, "default"))
    verdict = "met" if median >= GOAL else "NOT met"
    print(f"box load average now {os.getloadavg()[0]:.2f}")
    print(f"\ndefault / process-only median ratio {median:.3f} (goal ≥ {GOAL}): {verdict}")
    if any(r.tracing for r in results if r.variant == "default"):
        print("note: tracemalloc started in a default run (a suspicion): that run measured tracing")


if __name__ == "__main__":
    main()
