"""Show the state of a soak: elapsed time, iterations, RSS and its trend, leaks, breaches.

RUN_DIR defaults to the newest run in --runs-dir (./runs). Reads only what the run writes as
it goes (events.jsonl, samples.db), so it works while the soak runs and after it was killed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from soakd.analysis.trend import slope_per_hour
from soakd.coerce import num, text
from soakd.errors import CommandError
from soakd.reporting.common import LeakEntry, breach_entries, leak_entries
from soakd.reporting.rundata import CORE_SERIES, load_events, load_summary_file
from soakd.rundir import EVENTS, SAMPLES, SUMMARY, check_run_dir, iter_events
from soakd.store import RunStore
from soakd.units import Unit, format_duration, format_value

SLOPE_WINDOW_S = 600.0
STALE_AFTER_S = 120.0  # nothing written for this long and no run.finished: the supervisor died
MAX_SLOPE_POINTS = 300


def run_state(finished: bool, last_write_age_s: float | None) -> str:
    """``finished``, ``running`` or ``stale`` (no run.finished, nothing written lately)."""
    if finished:
        return "finished"
    if last_write_age_s is not None and last_write_age_s <= STALE_AFTER_S:
        return "running"
    return "stale"


def slope_per_h(points: Sequence[tuple[float, float]]) -> tuple[float | None, str]:
    """Slope per hour of ``points`` and the method that gave it."""
    slope = slope_per_hour(points, MAX_SLOPE_POINTS)
    return (None, "n/a") if slope is None else (slope, "theil-sen")


def _first_event_epoch(run_dir: Path) -> float | None:
    for event in iter_events(run_dir / EVENTS):
        if event is None:
            return None
        raw = event.get("timestamp")
        if isinstance(raw, str):
            try:
                return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
        return None
    return None


def newest_run(runs_dir: Path) -> Path:
    """The most recently started run directory under ``runs_dir``."""
    if not runs_dir.is_dir():
        raise CommandError(f"runs directory not found: {runs_dir}; pass RUN_DIR or --runs-dir")
    runs = [
        p
        for p in runs_dir.iterdir()
        if p.is_dir() and any((p / n).is_file() for n in (EVENTS, SAMPLES, SUMMARY))
    ]
    if not runs:
        raise CommandError(f"no run directories in {runs_dir}; pass RUN_DIR or --runs-dir")

    def started(p: Path) -> float:
        epoch = _first_event_epoch(p)
        return epoch if epoch is not None else p.stat().st_mtime

    return max(runs, key=started)


def _last_write_age(run_dir: Path, now: float) -> float | None:
    times = []
    for name in (EVENTS, SAMPLES, SAMPLES + "-wal"):
        try:
            times.append((run_dir / name).stat().st_mtime)
        except OSError:
            continue
    return now - max(times) if times else None


def collect_status(run_dir: Path, now: float | None = None) -> dict[str, Any]:
    """The status of ``run_dir`` as a JSON-ready dict."""
    check_run_dir(run_dir)
    now = time.time() if now is None else now
    events, bad = load_events(run_dir / EVENTS)
    summary = load_summary_file(run_dir)
    finished = next((e for e in reversed(events) if e["event"] == "run.finished"), None)
    started = next((e for e in events if e["event"] == "run.started"), None)
    meta: dict[str, str] = {}
    elapsed = rss = heap = slope = None
    method = "n/a"
    if (run_dir / SAMPLES).is_file():
        store = RunStore(run_dir / SAMPLES)
        try:
            meta = store.meta()
            elapsed = store.last_t(CORE_SERIES)
            rss = store.last_value("rss_bytes")
            heap = store.last_value("heap_bytes")
            since = None if elapsed is None else elapsed - SLOPE_WINDOW_S
            slope, method = slope_per_h(store.raw("rss_bytes", since))
        finally:
            store.close()
    event_t = [t for t in (num(e.get("t")) for e in events) if t is not None]
    if event_t and (elapsed is None or max(event_t) > elapsed):
        elapsed = max(event_t)
    totals: Mapping[str, Any] = {}
    try:
        parsed = json.loads(meta.get("workload_totals", "{}"))
        totals = parsed if isinstance(parsed, dict) else {}
    except (ValueError, RecursionError):
        totals = {}
    if not totals and isinstance(summary.get("workload"), dict):
        totals = summary["workload"]
    leaks = leak_entries(summary, events)
    return {
        "run_dir": str(run_dir),
        "run_id": text(summary.get("run_id") or meta.get("run_id") or run_dir.name, 200),
        "target": text(summary.get("target") or meta.get("target") or "", 300) or None,
        "state": run_state(finished is not None, _last_write_age(run_dir, now)),
        "verdict": text(finished.get("verdict"), 40) if finished else None,
        "exit_code": _int(finished.get("exit_code")) if finished else None,
        "verdict_reason": text(summary.get("verdict_reason"), 1000) if finished else None,
        "elapsed_s": elapsed,
        "duration_s": num(started.get("duration_s")) if started else None,
        "iterations": _int(totals.get("iterations")),
        "errors": _int(totals.get("errors")),
        "rss_bytes": rss,
        "heap_bytes": heap,
        "rss_slope_bytes_per_h": slope,
        "rss_slope_method": method,
        "rss_slope_window_s": SLOPE_WINDOW_S,
        "suspects": [_leak_json(leak) for leak in leaks if leak.status == "suspected"],
        "confirmed": [_leak_json(leak) for leak in leaks if leak.status == "confirmed"],
        "breaches": breach_entries({}, events)[:100],
        "unreadable_event_lines": bad,
    }


def _int(value: object) -> int | None:
    f = num(value)
    return None if f is None else int(f)


def _leak_json(leak: LeakEntry) -> dict[str, Any]:
    return {
        "kind": leak.kind,
        "site": leak.site,
        "type": leak.type,
        "slope_per_h": leak.slope_per_h,
        "unit": leak.unit,
    }


def format_status(status: Mapping[str, Any]) -> str:
    """The human form of ``collect_status``'s result."""
    elapsed = num(status.get("elapsed_s"))
    duration = num(status.get("duration_s"))
    state = str(status["state"])
    if status.get("verdict"):
        state += f" ({status['verdict']})"
    if state == "stale":
        state += " — no run.finished and nothing written lately; run `soakd report` on it"
    if status.get("verdict_reason"):
        state += f"\n            why: {status['verdict_reason']}"
    slope = num(status.get("rss_slope_bytes_per_h"))
    lines = [
        f"run:        {status['run_dir']}",
        f"target:     {status.get('target') or '?'}",
        f"state:      {state}",
        f"elapsed:    {format_duration(elapsed or 0.0)}"
        + (f" of {format_duration(duration)}" if duration else ""),
        f"iterations: {format_value(num(status.get('iterations')), 'count')}"
        f" (errors {format_value(num(status.get('errors')), 'count')})",
        f"rss:        {format_value(num(status.get('rss_bytes')), 'bytes')}, slope "
        f"{format_value(slope, 'bytes')}/h over the last "
        f"{format_duration(float(status['rss_slope_window_s']))} ({status['rss_slope_method']})",
        f"heap:       {format_value(num(status.get('heap_bytes')), 'bytes')}",
    ]
    for label, key in (("confirmed", "confirmed"), ("suspects", "suspects")):
        items = status.get(key) or []
        lines.append(f"{label + ':':<11} {len(items)}")
        for leak in items:
            where = leak.get("site") or leak.get("type") or ""
            unit: Unit = "bytes" if leak.get("unit") == "bytes" else "count"
            rate = format_value(num(leak.get("slope_per_h")), unit)
            lines.append(f"  - {leak.get('kind')} {where} {rate}/h")
    breaches = status.get("breaches") or []
    lines.append(f"breaches:   {len(breaches)}")
    for b in breaches:
        lines.append(f"  - {b.get('rule')} ({b.get('action')}) value {b.get('value')}")
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "status",
        help="state of a running (or finished) soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, nargs="?", help="a run directory")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where to find the newest")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir if args.run_dir is not None else newest_run(args.runs_dir)
    status = collect_status(run_dir)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0
