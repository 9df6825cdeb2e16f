"""Does soakd leak? Its own memory growth per hour of sampling, on a target that leaks nothing.

    python benchmarks/self_soak.py [--minutes 10] [--speedup 20] [--target echo|reference]
    python benchmarks/self_soak.py --real --minutes 60      # default cadence, real hours

Runs ``soakd run`` on a leak-free target with every sampling, analysis, checkpoint and
workload-report interval divided by ``--speedup`` (and the detection warm-up and window too, so
that the detector holds as many samples as at the default cadence): M minutes emulate
M × speedup minutes of default-rate sampling (``--minutes 18`` = 6 h at ×20; the process
sampler's 50 ms floor caps the speedup at 20). Meanwhile it samples, from outside, the RSS of
the SUPERVISOR (the soakd process) and of the WORKER (the target allocates nothing, so what the
worker gains is soakd's agent and workload engine), fits Theil–Sen slopes after ``--skip``
seconds, and prints MB per emulated hour (goal < 1 MB/h) with a 95 % interval. It also fits the
worker's Python heap (``heap_bytes`` from samples.db) and the growth of samples.db itself.

Per-iteration costs do not speed up (the load runs in real time): their growth is shown per real
hour as well.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from soakd.analysis.trend import theil_sen

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "tests" / "targets"
GOAL_MB_PER_H = 1.0
MB = 1e6

# The default cadence (config/soakd.toml); each is divided by the speedup.
INTERVALS = {
    "sampling.process_interval": 1.0,
    "sampling.system_interval": 5.0,
    "sampling.heap_interval": 2.0,
    "sampling.types_interval": 30.0,
    "sampling.sites_interval": 10.0,
    "sampling.analysis_interval": 10.0,
    "sampling.checkpoint_interval": 30.0,
    "workload.interval": 10.0,
    "detection.warmup": 60.0,
    "detection.warmup_max": 600.0,
    "detection.window": 1800.0,
}
MIN_INTERVAL = 0.05  # soakd refuses sampling intervals below 50 ms


@dataclass(frozen=True)
class Fit:
    slope: float  # bytes per real second
    low: float
    high: float
    n: int


def accelerated(speedup: float) -> list[str]:
    return [f"{key}={value / speedup:g}" for key, value in INTERVALS.items()]


def target_sets(target: str) -> list[str]:
    if target == "reference":
        return ["target.factory=soakd.reference:ReferenceAggregator", "target.options.seed=1"]
    return ["target.factory=simple_targets:Echo", f"target.python_path=['{TARGETS}']"]


def worker_pid(run_dir: Path) -> int | None:
    try:
        lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if event.get("event") == "worker.started":
            return int(event["pid"])
    return None


def rss(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return float(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def fit(points: list[tuple[float, float]], skip: float) -> Fit | None:
    kept = [(t, v) for t, v in points if t >= skip]
    if len(kept) < 3:
        return None
    line = theil_sen([t for t, _ in kept], [v for _, v in kept], confidence=0.95)
    return Fit(line.slope, line.slope_low, line.slope_high, line.n)


def heap_series(db_path: Path, series: str) -> list[tuple[float, float]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT t, value FROM samples WHERE series = ? ORDER BY t", (series,))
        return [(float(t), float(v)) for t, v in rows]
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, help="real minutes to run (10; 60 with --real)")
    parser.add_argument("--speedup", type=float, default=20.0, help="cadence ×N, 1–20 (20)")
    parser.add_argument("--real", action="store_true", help="default cadence (speedup 1)")
    parser.add_argument("--target", choices=("echo", "reference"), default="echo")
    parser.add_argument("--every", type=float, help="seconds between RSS samples (2; 30 real)")
    parser.add_argument("--skip", type=float, help="seconds not fitted at the start (60)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra soakd --set"
    )
    parser.add_argument("--keep", type=Path, help="write the run directory here and keep it")
    args = parser.parse_args()
    speedup = 1.0 if args.real else args.speedup
    if not 1.0 <= speedup <= 1.0 / MIN_INTERVAL:
        parser.error(f"--speedup must be within 1–{1 / MIN_INTERVAL:g}: {speedup}")
    minutes = args.minutes if args.minutes is not None else (60.0 if args.real else 10.0)
    every = args.every if args.every is not None else (30.0 if args.real else 2.0)
    skip = args.skip if args.skip is not None else 60.0
    seconds = minutes * 60.0
    if seconds <= skip + 3 * every:
        parser.error(f"--minutes {minutes:g} leaves too little after --skip {skip:g}s to fit")

    with tempfile.TemporaryDirectory(prefix="soakd-self-") as tmpname:
        run_dir = args.keep or Path(tmpname) / "run"
        sets = [*target_sets(args.target), "output.console=json"]
        sets += accelerated(speedup) if speedup != 1.0 else []
        sets += list(args.set)
        cmd = [sys.executable, "-m", "soakd", "run", "--duration", f"{seconds:g}s"]
        cmd += ["--run-dir", str(run_dir)]
        for item in sets:
            cmd += ["--set", item]
        print(f"self-soak: {minutes:g} min real at ×{speedup:g} cadence = "
              f"{minutes * speedup / 60:.2f} h of default-rate sampling; target {args.target}; "
              f"RSS every {every:g}s, fitted after {skip:g}s")  # fmt: skip
        print("soakd " + " ".join(cmd[3:]), flush=True)
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        log_path = Path(tmpname) / "soakd.log"
        sup: list[tuple[float, float]] = []
        wrk: list[tuple[float, float]] = []
        with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env
        ) as proc:  # fmt: skip
            start = time.monotonic()
            pid: int | None = None
            next_at = start
            last_print = start
            while proc.poll() is None:
                now = time.monotonic()
                if now >= next_at:
                    t = now - start
                    pid = pid or worker_pid(run_dir)
                    s, w = rss(proc.pid), rss(pid)
                    if s is not None:
                        sup.append((t, s))
                    if w is not None:
                        wrk.append((t, w))
                    next_at += every
                    if now - last_print >= 60 and s is not None and w is not None:
                        last_print = now
                        print(f"  t={t:6.0f}s supervisor {s / MB:7.1f} MB  worker {w / MB:7.1f} MB",
                              flush=True)  # fmt: skip
                if now - start > seconds + 300:
                    proc.kill()
                    raise SystemExit(f"soakd run did not stop; see {log_path}")
                time.sleep(min(0.2, max(next_at - time.monotonic(), 0.01)))
        if proc.returncode != 0:
            tail = log_path.read_text(encoding="utf-8")[-3000:]
            if not (run_dir / "summary.json").is_file():
                raise SystemExit(f"soakd run exited {proc.returncode} (expected 0, pass):\n{tail}")
            # soakd's own memory is measured whatever the target's verdict; say it loudly
            print(f"WARNING: soakd run exited {proc.returncode} (expected 0, pass):\n{tail}")
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        db_path = run_dir / "samples.db"
        heap = heap_series(db_path, "heap_bytes")
        db_size = db_path.stat().st_size
        report(args, speedup, skip, sup, wrk, heap, db_size, seconds, summary)


def report(
    args: argparse.Namespace,
    speedup: float,
    skip: float,
    sup: list[tuple[float, float]],
    wrk: list[tuple[float, float]],
    heap: list[tuple[float, float]],
    db_size: int,
    seconds: float,
    summary: dict[str, object],
) -> None:
    workload = summary.get("workload")
    iterations = workload.get("iterations") if isinstance(workload, dict) else "?"
    counts = f"{len(sup)} supervisor / {len(wrk)} worker RSS samples, {len(heap)} heap samples"
    print(f"verdict {summary.get('verdict')}, {iterations} iterations, {counts}")
    print()
    print(f"{'memory':<28}{'start MB':>9}{'end MB':>9}{'MB/emulated h':>15}"
          f"{'95% interval':>20}{'MB/real h':>11}")  # fmt: skip
    goal_ok: bool | None = True
    for name, points in (
        ("supervisor RSS", sup),
        ("worker RSS", wrk),
        ("worker Python heap", heap),
    ):
        line = fit(points, skip)
        if line is None or not points:
            print(f"{name:<28}  too few points after {skip:g}s")
            if name != "worker Python heap":
                goal_ok = None  # not measured is not met
            continue
        per_emulated = 3600.0 / speedup / MB  # bytes per real s → MB per emulated hour
        per_real = 3600.0 / MB
        interval = f"[{line.low * per_emulated:+.2f}, {line.high * per_emulated:+.2f}]"
        print(f"{name:<28}{points[0][1] / MB:>9.1f}{points[-1][1] / MB:>9.1f}"
              f"{line.slope * per_emulated:>+15.2f}{interval:>20}"
              f"{line.slope * per_real:>+11.2f}")  # fmt: skip
        if name != "worker Python heap" and goal_ok is not None:
            goal_ok = goal_ok and line.slope * per_emulated < GOAL_MB_PER_H
    emulated_h = seconds * speedup / 3600.0
    print(f"{'samples.db':<28}{'':>9}{db_size / MB:>9.1f}{db_size / MB / emulated_h:>+15.2f}")
    print()
    verdict = "not measured" if goal_ok is None else "met" if goal_ok else "NOT met"
    print(f"goal: supervisor and worker RSS < {GOAL_MB_PER_H:g} MB per emulated hour: {verdict}")
    if speedup != 1.0:
        print(f"confirm with the real cadence: python benchmarks/self_soak.py --real --minutes 60 "
              f"--target {args.target}")  # fmt: skip


if __name__ == "__main__":
    main()
