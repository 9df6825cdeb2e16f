"""What does soakd cost the target? Reference-aggregator throughput and p99 with and without it.

    python benchmarks/overhead.py [--rounds 3] [--seconds 45] [--users 16] [--no-extra]

Runs the real CLI (`python -m soakd run --run-dir TMP ...`) on the bundled reference aggregator
and reads iterations/s and p99 latency from each run's summary.json (the whole run: what the
target paid, perturbed intervals included). Variants, run side by side in every round:

- ``sampling-off``  ``--set sampling.enabled=false``: psutil from outside only (the baseline)
- ``default``       soakd's defaults: the sampled allocation profiler always on (64 KiB mean
                    interval), heap level, tasks, type counts, process samples
- ``interval-x0.25`` / ``interval-x4``  the default with a quarter / four times the interval
- ``no-profiler``   the default without attribution (profiler and tracemalloc off): the rest of
                    soakd's sampling, so that default / no-profiler is the profiler's own cost
- ``hooks-only``    the profiler at a 1 GiB interval (next to no samples): what its allocator
                    hooks cost by themselves, against what sampling and stacks add
- ``profiler-quiet``  the default with no heap, site or type samples (each at 1000 s): the
                    profiler in a soak without soakd's requests to the target
- ``no-site-samples``  the default without site groupings (``sites_interval`` 1000 s): what
                    grouping the profile and writing snapshots costs, against the default
- ``tracemalloc-f1``  exact tracing from the start, 1 frame (profiler off)
- ``otel``          the default with ``[otel]`` on at its default sampling ratio, exporting
                    metrics and spans over OTLP/HTTP to a sink on loopback that this script
                    serves (needs the ``[otel]`` extra): ``otel`` / ``default`` is its cost
- ``memray``        sampling off, the worker run under ``memray.Tracker`` with
                    ``trace_python_allocators`` (every Python allocation, as tracemalloc sees;
                    needs the ``[bench]`` extra, skipped with a note without it)

``--no-extra`` keeps only the first four rows; ``--only a,b`` runs those (and the baseline).

A 10 s run of the baseline comes first and is not counted (bytecode compiled, caches warm).
The order is reversed on odd rounds (A B … / … B A) so that a slow drift of a shared box cancels
out. The load saturates the worker by default (no think time, many users), the worst case for
overhead: with think time the aggregator waits and sampling costs nothing visible. Prints every
run, then per variant the median throughput and the median of the per-round ratios to
process-only (goal for ``default``: ≥ 0.95), with a distribution-free 95 % interval of those
medians: whole runs differ by ±10 % from one to the next here, so 10 rounds pin the median to
a few per cent, and the interval says whether that settles the goal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "sampling-off"
DEFAULT_INTERVAL = 64 * 1024
VARIANTS: dict[str, list[str]] = {
    BASELINE: ["sampling.enabled=false"],
    "default": [],
    "interval-x0.25": [f"sampling.profiler_interval={DEFAULT_INTERVAL // 4}"],
    "interval-x4": [f"sampling.profiler_interval={DEFAULT_INTERVAL * 4}"],
    # Every sampler but attribution: what the profiler adds is default / no-profiler.
    "no-profiler": ["sampling.profiler=off", "sampling.tracemalloc=off"],
    # The profiler's hooks with (almost) no samples: the per-allocation toll alone.
    "hooks-only": ["sampling.profiler_interval=1GiB", "sampling.profiler_zoom_interval=0"],
    # soakd's requests to the target taken away, one kind or all: where the rest of the cost is.
    "profiler-quiet": [f"sampling.{k}_interval=1000" for k in ("heap", "sites", "types")],
    "no-site-samples": ["sampling.sites_interval=1000"],
    "tracemalloc-f1": ["sampling.profiler=off", "sampling.tracemalloc=always", "sampling.frames=1"],
    "memray": ["sampling.enabled=false"],
    "otel": ["otel.enabled=true"],  # + otel.endpoint: the sink this script serves
}
EXTRA = (
    "no-profiler",
    "hooks-only",
    "profiler-quiet",
    "no-site-samples",
    "tracemalloc-f1",
    "memray",
    "otel",
)
GOAL = 0.95  # throughput, default / sampling-off
OTEL_GOAL = 0.97  # throughput, otel / default
P99_GOAL = 1.10  # p99 latency, default / sampling-off
# Started by every Python process of a memray run; only the worker (the target's process) traces.
_MEMRAY_SITE = """
import os
if "soakd.worker" in open("/proc/self/cmdline", "rb").read().decode(errors="replace"):
    import atexit, memray
    _tracker = memray.Tracker(os.environ["SOAKD_BENCH_MEMRAY"], trace_python_allocators=True)
    _tracker.__enter__()
    atexit.register(_tracker.__exit__, None, None, None)
"""


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts and drops every export (a collector's cost is not
    soakd's); counts the requests so that a run that exported nothing is noticed."""

    requests = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def start_sink() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@dataclass(frozen=True)
class Result:
    round: int
    variant: str
    throughput: float
    p99_ms: float
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
    if variant == "memray":
        site = tmp / "memray-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_MEMRAY_SITE, encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
        env["SOAKD_BENCH_MEMRAY"] = str(tmp / f"r{rnd}-memray.bin")
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
        p99_ms=float(summary["workload"]["latency_ms"]["p99"]),
        iterations=int(summary["workload"]["iterations"]),
        verdict=str(summary["verdict"]),
        tracing=tracing,
        supervisor_cpu=100.0 * cpu / wall,
        worker_cpu=float(row[0] or 0.0),
    )


def ratios_to_baseline(results: list[Result], variant: str, key: str = "throughput") -> list[float]:
    """Each run's throughput (or ``key``) over the sampling-off run of the same round."""
    base = {r.round: getattr(r, key) for r in results if r.variant == BASELINE}
    return [
        getattr(r, key) / base[r.round] if base[r.round] else float("nan")
        for r in results
        if r.variant == variant
    ]


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median (order statistics, binomial): with n
    per-round ratios, the k-th smallest and k-th largest, k the largest rank whose tail
    probability stays within (1 - level) / 2. Fewer than 6 values: their min and max."""
    xs = sorted(values)
    n = len(xs)
    tail, k = 0.0, 0
    while k < n // 2:
        tail += math.comb(n, k) / 2**n
        if tail > (1 - level) / 2:
            break
        k += 1
    if k == 0:
        return xs[0], xs[-1]
    return xs[k - 1], xs[n - k]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all variants (3)")
    parser.add_argument("--seconds", type=float, default=45.0, help="duration of each run (45)")
    parser.add_argument("--users", type=int, default=16, help="virtual users (16)")
    parser.add_argument(
        "--think-ms", type=float, default=0.0, help="constant think time; 0 = none (default)"
    )
    parser.add_argument(
        "--mock-latency-ms", type=float, default=1.0, help="mock search API latency (1.0)"
    )
    parser.add_argument(
        "--no-extra", action="store_true", help="skip the tracemalloc and memray rows"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra soakd --set"
    )
    parser.add_argument("--keep", type=Path, help="keep run directories here")
    parser.add_argument(
        "--only", help="comma-separated variants to run (sampling-off is always run)"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be ≥ 1 and --seconds > 0")

    variants = [v for v in VARIANTS if not (args.no_extra and v in EXTRA)]
    if args.only:
        wanted = {BASELINE, *args.only.split(",")}
        unknown = wanted - set(VARIANTS)
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
        variants = [v for v in variants if v in wanted]
    if "memray" in variants:
        try:
            import memray  # noqa: F401
        except ImportError:
            variants.remove("memray")
            print("note: memray is not installed (pip install '.[bench]'): its row is skipped")
    if "otel" in variants:
        try:
            import opentelemetry.exporter.otlp.proto.http  # noqa: F401
        except ImportError:
            variants.remove("otel")
            print("note: the otel extra is not installed (pip install '.[otel]'): row skipped")
        else:
            VARIANTS["otel"] = [*VARIANTS["otel"], f"otel.endpoint={start_sink()!r}"]
    common = load_args(args)
    print(f"soakd overhead: {args.rounds} rounds × {len(variants)} variants × {args.seconds:g}s")
    print(f"load: {' '.join(common)}")
    print(
        f"box: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} "
        "(a shared box is noisy: compare ratios within a round)"
    )
    print(f"{'round':>5}  {'variant':<15}{'it/s':>9}{'ratio':>8}{'p99 ms':>9}{'ratio':>8}"
          f"{'iters':>8}  {'verdict':<8}{'tracing':<8}{'sup cpu':>8}{'wrk cpu':>8}")  # fmt: skip
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="soakd-overhead-") as tmpname:
        tmp = args.keep or Path(tmpname)
        tmp.mkdir(parents=True, exist_ok=True)
        # A fresh box's first run pays for compiling bytecode and filling the page cache:
        # one short run of the baseline, not counted, so that round 0 compares like with like.
        warm = run_once(BASELINE, -1, argparse.Namespace(**{**vars(args), "seconds": 10.0}),
                        tmp, common)  # fmt: skip
        print(f"{'warm':>5}  {warm.variant:<15}{warm.throughput:>9.1f}  (not counted)", flush=True)
        for rnd in range(args.rounds):
            order = variants if rnd % 2 == 0 else variants[::-1]
            done: list[Result] = []
            for variant in order:
                done.append(run_once(variant, rnd, args, tmp, common))
            for r in sorted(done, key=lambda r: variants.index(r.variant)):
                ratio = ratios_to_baseline(done, r.variant)[0]
                p99 = ratios_to_baseline(done, r.variant, "p99_ms")[0]
                print(f"{r.round:>5}  {r.variant:<15}{r.throughput:>9.1f}{ratio:>8.3f}"
                      f"{r.p99_ms:>9.2f}{p99:>8.3f}"
                      f"{r.iterations:>8}  {r.verdict:<8}{'yes' if r.tracing else 'no':<8}"
                      f"{r.supervisor_cpu:>7.1f}%{r.worker_cpu:>7.1f}%", flush=True)  # fmt: skip
            results += done

    print()
    print(f"{'variant':<15}{'median it/s':>12}{'it/s ratio':>11}{'min':>7}{'max':>7}"
          f"{'median p99':>11}{'p99 ratio':>10}{'min':>7}{'max':>7}")  # fmt: skip
    for variant in variants:
        ratios = ratios_to_baseline(results, variant)
        p99s = ratios_to_baseline(results, variant, "p99_ms")
        rate = statistics.median(r.throughput for r in results if r.variant == variant)
        p99 = statistics.median(r.p99_ms for r in results if r.variant == variant)
        print(f"{variant:<15}{rate:>12.1f}{statistics.median(ratios):>11.3f}"
              f"{min(ratios):>7.3f}{max(ratios):>7.3f}{p99:>9.2f}ms{statistics.median(p99s):>10.3f}"
              f"{min(p99s):>7.3f}{max(p99s):>7.3f}")  # fmt: skip
    print(f"box load average now {os.getloadavg()[0]:.2f}")
    if "default" in variants:  # the goal is about the default (absent with --only)
        median = statistics.median(ratios_to_baseline(results, "default"))
        p99_median = statistics.median(ratios_to_baseline(results, "default", "p99_ms"))
        met = "met" if median >= GOAL and p99_median <= P99_GOAL else "NOT met"
        lo, hi = median_interval(ratios_to_baseline(results, "default"))
        p_lo, p_hi = median_interval(ratios_to_baseline(results, "default", "p99_ms"))
        print(
            f"\ndefault / sampling-off: throughput {median:.3f} (goal ≥ {GOAL}), "
            f"p99 {p99_median:.3f} (goal ≤ {P99_GOAL}): {met}"
        )
        # Whole runs differ by ±10 % from one to the next on a shared box: say how far the
        # medians can be trusted, and whether the goal lies inside that range.
        print(
            f"95 % interval of the medians over {args.rounds} rounds: throughput "
            f"[{lo:.3f}, {hi:.3f}], p99 [{p_lo:.3f}, {p_hi:.3f}]"
            + ("" if lo >= GOAL and p_hi <= P99_GOAL else
               " (a goal lies inside: more rounds would tell)" if hi >= GOAL and p_lo <= P99_GOAL
               else " (the goal is outside: missed)")
        )  # fmt: skip
    if "otel" in variants and "default" in variants:
        base = {r.round: r.throughput for r in results if r.variant == "default"}
        otel = [r.throughput / base[r.round] for r in results if r.variant == "otel"]
        print(
            f"otel / default: throughput {statistics.median(otel):.3f} (min {min(otel):.3f}, "
            f"max {max(otel):.3f}; goal ≥ {OTEL_GOAL}); OTLP requests received: {_Sink.requests}"
        )
    if any(r.tracing for r in results if r.variant == "default"):
        print("note: tracemalloc started in a default run (the profiler fell back)")


if __name__ == "__main__":
    main()
