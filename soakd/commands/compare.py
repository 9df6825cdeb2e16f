"""Compare a run's headline metrics against earlier runs and flag regressions.

Each --baseline is a run directory or a runs directory (its newest --last runs of the same
target are used). The baseline is the mean of those runs. A metric regresses when it moved
in its worse direction by more than --threshold (relative; an absolute floor per metric
covers zero baselines) AND, with two or more baselines, beyond mean ± 2σ of the baselines.

Workload figures (throughput, error rate, latency and first-event percentiles) are those of
the unperturbed intervals (``workload.unperturbed``: soakd's own work in the target left out)
when the run and every baseline have them, else the whole run's; the output says which.

Exit codes: 0 no regression · 6 regression found · 2 bad input, or nothing comparable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from soakd.coerce import dig, num, text
from soakd.errors import CommandError, SoakdError
from soakd.reporting.rundata import load_summary_file, rebuild_or_read_summary
from soakd.rundir import SAMPLES, SUMMARY
from soakd.units import Unit, format_value

EXIT_REGRESSION = 6


@dataclass(frozen=True)
class Metric:
    key: tuple[str, ...]
    higher_is_worse: bool
    floor: float  # the smallest absolute change that can count, whatever the baseline
    unit: Unit

    @property
    def name(self) -> str:
        return ".".join(self.key)


MIB = 1024.0 * 1024.0
METRICS = (
    Metric(("memory", "rss_slope_bytes_per_h"), True, MIB, "bytes"),
    Metric(("memory", "heap_slope_bytes_per_h"), True, MIB, "bytes"),
    Metric(("memory", "rss_peak_bytes"), True, 4 * MIB, "bytes"),
    Metric(("workload", "throughput_per_s"), False, 0.1, "per_s"),
    Metric(("workload", "error_rate"), True, 0.005, "ratio"),
    Metric(("workload", "latency_ms", "p50"), True, 1.0, "ms"),
    Metric(("workload", "latency_ms", "p99"), True, 1.0, "ms"),
    Metric(("workload", "first_event_ms", "p50"), True, 1.0, "ms"),
    Metric(("workload", "first_event_ms", "p99"), True, 1.0, "ms"),
)


@dataclass(frozen=True)
class Comparison:
    metric: str
    unit: Unit
    value: float | None
    baseline_mean: float | None
    baseline_std: float | None
    baselines: int
    change: float | None  # relative to the baseline mean; None when the mean is 0
    allowed: float | None  # the largest worse-direction change (absolute) still accepted
    regression: bool
    basis: str = "run"  # "unperturbed": judged on intervals soakd did not perturb


def compare_metric(
    metric: Metric, value: float | None, baselines: Sequence[float], threshold: float
) -> Comparison:
    """Pure: is ``value`` a regression against ``baselines`` for ``metric``?"""
    if value is None or not baselines:
        return Comparison(metric.name, metric.unit, value, None, None, 0, None, None, False)
    mean = statistics.fmean(baselines)
    std = statistics.stdev(baselines) if len(baselines) > 1 else 0.0
    worse = (value - mean) if metric.higher_is_worse else (mean - value)
    allowed = max(threshold * abs(mean), metric.floor)
    if len(baselines) > 1:
        allowed = max(allowed, 2.0 * std)  # inside the runs' own spread is noise, not a change
    change = (value - mean) / abs(mean) if mean != 0 else None
    return Comparison(
        metric.name, metric.unit, value, mean, std, len(baselines), change, allowed, worse > allowed
    )


def _started(summary: Mapping[str, Any]) -> float:
    raw = summary.get("started_at")
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return -math.inf


def _run_summary(path: Path) -> dict[str, Any]:
    if os.path.lexists(path / SUMMARY):  # a link or FIFO there is an error, not "absent"
        return load_summary_file(path)
    summary = rebuild_or_read_summary(path)
    if not summary:
        raise CommandError(f"no summary.json in {path}; run `soakd report {path}` first")
    return summary


def collect_baselines(
    args_baselines: Sequence[Path], target: object, last: int, exclude: Path
) -> list[tuple[Path, dict[str, Any]]]:
    """Baseline summaries: run dirs as given, runs dirs scanned (same target, newest ``last``)."""
    out: list[tuple[Path, dict[str, Any]]] = []
    seen = {exclude.resolve()}
    for base in args_baselines:
        if not base.is_dir():
            raise CommandError(f"baseline not found or not a directory: {base}")
        if (base / SUMMARY).is_file() or (base / SAMPLES).is_file():
            if base.resolve() not in seen:
                seen.add(base.resolve())
                out.append((base, _run_summary(base)))
            continue
        found: list[tuple[Path, dict[str, Any]]] = []
        for child in sorted(base.iterdir()):
            if child.resolve() in seen or not (child / SUMMARY).is_file():
                continue
            try:
                summary = load_summary_file(child)
            except SoakdError:
                continue  # one broken run among many must not block the comparison
            if summary.get("target") == target:
                found.append((child, summary))
        if not found and not any((c / SUMMARY).is_file() for c in base.iterdir()):
            raise CommandError(
                f"{base} is neither a run directory nor a runs directory holding run "
                "directories with summary.json"
            )
        found.sort(key=lambda item: _started(item[1]), reverse=True)
        for child, summary in found[:last]:
            seen.add(child.resolve())
            out.append((child, summary))
    return out


def has_unperturbed(summary: Mapping[str, Any]) -> bool:
    """Whether the summary judged some of its workload without soakd's own work in it."""
    seconds = num(dig(summary, "workload", "unperturbed", "seconds"))
    return seconds is not None and seconds > 0


def _unperturbed_key(metric: Metric) -> tuple[str, ...] | None:
    if metric.key[0] != "workload":
        return None
    return ("workload", "unperturbed", *metric.key[1:])


def compare(
    summary: Mapping[str, Any], baselines: Sequence[Mapping[str, Any]], threshold: float
) -> list[Comparison]:
    """Each metric of ``summary`` against ``baselines``; workload metrics on the unperturbed
    figures when every summary has them (apples with apples), else on the whole run's."""
    runs = [summary, *baselines]
    unperturbed = all(has_unperturbed(s) for s in runs)
    out = []
    for metric in METRICS:
        key, basis = metric.key, "run"
        alt = _unperturbed_key(metric) if unperturbed else None
        # per metric: a figure missing in one summary (no histograms) falls back for all
        if alt is not None and all(num(dig(s, *alt)) is not None for s in runs):
            key, basis = alt, "unperturbed"
        values = [num(dig(b, *key)) for b in baselines]
        clean = [v for v in values if v is not None]
        row = compare_metric(metric, num(dig(summary, *key)), clean, threshold)
        out.append(dataclasses.replace(row, basis=basis))
    return out


def judged_note(summary: Mapping[str, Any], rows: Sequence[Comparison]) -> str | None:
    """ "unperturbed: X s of Y s judged" when workload metrics were compared on those figures."""
    if not any(c.basis == "unperturbed" for c in rows):
        return None
    judged = num(dig(summary, "workload", "unperturbed", "seconds")) or 0.0
    total = (
        num(dig(summary, "workload", "duration_s"))
        or num(summary.get("duration_s"))
        or judged + (num(dig(summary, "workload", "unperturbed", "excluded_seconds")) or 0.0)
    )
    return (
        f"unperturbed: {judged:.1f} s of {total:.1f} s judged (workload figures leave out the "
        "intervals soakd's own work in the target overlapped, in this run and the baselines)"
    )


def _table(rows: Sequence[Comparison]) -> str:
    header = ("metric", "run", "baseline", "±σ", "change", "status")
    lines = [header]
    for c in rows:
        if c.value is None or not c.baselines:
            status = "n/a"
        else:
            status = "REGRESSION" if c.regression else "ok"
        change = "n/a" if c.change is None else f"{c.change * 100:+.1f}%"
        lines.append(
            (
                # the figure actually compared: workload.unperturbed.* when judged on those
                c.metric.replace("workload.", "workload.unperturbed.", 1)
                if c.basis == "unperturbed"
                else c.metric,
                format_value(c.value, c.unit),
                format_value(c.baseline_mean, c.unit),
                format_value(c.baseline_std, c.unit),
                change,
                status,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "compare",
        help="regression check of a run against earlier runs (exit 6 on regression)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run to judge")
    p.add_argument(
        "--baseline",
        metavar="RUN_DIR",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="earlier run directories, or runs directories to take the newest runs from",
    )
    p.add_argument("--last", type=int, default=10, metavar="N", help="runs per runs directory")
    p.add_argument(
        "--threshold", type=float, default=0.15, help="relative change that counts (0.15 = 15%%)"
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    if args.last < 1:
        raise CommandError(f"--last must be ≥ 1: {args.last}")
    if not (math.isfinite(args.threshold) and args.threshold >= 0):
        raise CommandError(f"--threshold must be a number ≥ 0: {args.threshold}")
    if not run_dir.is_dir():
        raise CommandError(f"run directory not found: {run_dir}")
    summary = _run_summary(run_dir)
    baselines = collect_baselines(args.baseline, summary.get("target"), args.last, run_dir)
    if not baselines:
        raise CommandError(
            "no baseline runs found (a run is never its own baseline; runs directories "
            f"only count runs of target {text(summary.get('target'), 200)!r})"
        )
    rows = compare(summary, [b for _, b in baselines], args.threshold)
    if not any(c.value is not None and c.baselines for c in rows):
        # "no regression" would pass a CI gate on a comparison that never happened
        raise CommandError(
            f"nothing to compare: no metric has a value in both {run_dir} and its "
            f"{len(baselines)} baseline run(s) (summaries without workload or memory "
            "figures); run longer soaks, or pass baselines of the same kind of run"
        )
    regression = any(c.regression for c in rows)
    if args.json:
        payload = {
            "run": str(run_dir),
            "target": summary.get("target") if isinstance(summary.get("target"), str) else None,
            "baselines": [str(p) for p, _ in baselines],
            "threshold": args.threshold,
            "regression": regression,
            "unperturbed": judged_note(summary, rows),
            "metrics": [asdict(c) for c in rows],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(f"run {run_dir} against {len(baselines)} baseline run(s):")
        note = judged_note(summary, rows)
        if note is not None:
            print(note)
        print(_table(rows))
        print("REGRESSION" if regression else "no regression")
    return EXIT_REGRESSION if regression else 0
