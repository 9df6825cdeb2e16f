"""How long does `soakd report` take on a 24 h soak? (goal: under 10 s)

Generates 24 h of 1 Hz samples (20 process/workload series + 20 allocation-site series, the
sites sampled every 10 s as the default config does) into a fresh samples.db with the real
schema, then times rebuild_summary (when soakd.summary exists) and write_reports.

    python benchmarks/report_build.py [--hours 24] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from soakd.reporting import write_reports
from soakd.reporting.common import rebuild_or_read_summary
from soakd.sinks.store import SCHEMA

SERIES = (
    "rss_bytes", "uss_bytes", "vms_bytes", "fds", "threads", "cpu_percent", "children",
    "system_memory_percent", "system_available_bytes", "load_avg", "heap_bytes", "heap_blocks",
    "traced_bytes", "tracemalloc_overhead_bytes", "tasks", "gc_garbage", "throughput_per_s",
    "error_rate", "latency_p50_ms", "latency_p99_ms",
)  # fmt: skip
SITES = [f"/srv/app/module_{i}.py:{10 * i + 3}" for i in range(20)]


def _rows(seconds: int, rng: random.Random) -> Iterator[tuple[float, str, float]]:
    for t in range(seconds):
        base = 80e6 + 60e6 * (1 - math.exp(-t / 300)) + 500.0 * t
        for i, name in enumerate(SERIES):
            value = base if name.endswith("_bytes") else 10.0 + i + math.sin(t / 600) * 3
            yield float(t), name, value + rng.gauss(0, 1e3 if name.endswith("_bytes") else 0.5)
        if t % 10 == 0:
            for i, site in enumerate(SITES):
                yield float(t), f"site:{site}", 1e5 * (i + 1) + (t * 10.0 if i == 3 else 0.0)


def generate(run_dir: Path, hours: float) -> None:
    seconds = int(hours * 3600)
    db = sqlite3.connect(run_dir / "samples.db")
    db.executescript(SCHEMA)
    meta = {
        "run_id": "bench",
        "started_at": "2024-05-01T00:00:00+00:00",
        "started_epoch": "1714521600",
        "target": "soakd.reference:ReferenceAggregator",
        "config": json.dumps({"detection": {"warmup": 60}}),
        "workload_totals": json.dumps({"iterations": seconds * 50, "errors": seconds // 10}),
    }
    with db:
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        db.executemany("INSERT INTO samples VALUES (?, ?, ?)", _rows(seconds, random.Random(1)))
        db.executemany(
            "INSERT INTO sites VALUES (?, ?, ?)",
            [(s, json.dumps([s, "/srv/app/main.py:1"]), "x = f()") for s in SITES],
        )
    db.close()
    events = [
        {"event": "run.started", "t": 0.0, "duration_s": hours * 3600, "run_id": "bench"},
        {"event": "leak.confirmed", "t": 4000.0, "kind": "heap", "site": SITES[3],
         "traceback": [SITES[3]], "slope_per_h": 36000.0, "unit": "bytes", "p_value": 1e-9},
        {"event": "run.finished", "t": hours * 3600, "verdict": "leak", "exit_code": 3},
    ]  # fmt: skip
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--keep", type=Path, help="generate into this directory and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        generate(run_dir, args.hours)
        t1 = time.perf_counter()
        size = (run_dir / "samples.db").stat().st_size
        print(f"generated {args.hours:g} h: samples.db {size / 2**20:.1f} MiB in {t1 - t0:.1f}s")
        summary = rebuild_or_read_summary(run_dir)
        t2 = time.perf_counter()
        write_reports(run_dir, summary)
        t3 = time.perf_counter()
        html_kib = (run_dir / "report.html").stat().st_size / 1024
        print(f"rebuild_summary: {t2 - t1:.2f}s")
        print(f"write_reports:   {t3 - t2:.2f}s (report.html {html_kib:.0f} KiB)")
        print(f"total build:     {t3 - t1:.2f}s (goal < 10 s)")


if __name__ == "__main__":
    main()
