"""Compare a run's headline metrics against earlier runs and flag regressions.

Each --baseline is a run directory or a runs directory (its newest --last eligible runs are
used). A baseline is a run that finished with a verdict the run can be measured against
(``pass`` by default; --allow adds ``leak``, ``aborted``, ``target_failed``, ``inconclusive``,
``interrupted`` or ``error`` on purpose), judged for at least --min-judged after its warm-up,
of the same target and the same measured config (config hash) as the run; every other run is
listed with why it was skipped. Each metric is compared with the mean of its baselines: it
regresses when it moved in its worse direction by more than --threshold (relative; an absolute
floor per metric covers zero baselines) AND, with two or more baselines, beyond mean ± 2σ.

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
from soakd.summary import config_hash
from soakd.units import Unit, format_duration, format_value, parse_duration

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


# What a run can be, for baseline selection: its verdict, or "interrupted" (SIGTERM/SIGINT).
STATUSES = ("pass", "leak", "aborted", "target_failed", "inconclusive", "interrupted", "error")
DEFAULT_ALLOWED = ("pass",)
DEFAULT_MIN_JUDGED_S = 60.0


@dataclass(frozen=True)
class Selection:
    """Who may be a baseline of a run: its target and config hash, and the rules."""

    target: object
    config_hash: str | None
    allowed: frozenset[str] = frozenset(DEFAULT_ALLOWED)
    min_judged_s: float = DEFAULT_MIN_JUDGED_S
    any_target: bool = False
    any_config: bool = False


@dataclass(frozen=True)
class Skipped:
    run: str
    reason: str


def run_status(summary: Mapping[str, Any]) -> str | None:
    """``interrupted`` for a run stopped by a signal, else its verdict (None when it has none)."""
    if summary.get("interrupted") is True:
        return "interrupted"
    verdict = summary.get("verdict")
    return verdict if isinstance(verdict, str) and verdict in STATUSES else None


def judged_seconds(summary: Mapping[str, Any]) -> float | None:
    """Seconds the detector judged after the warm-up (0 when it judged nothing; None unknown)."""
    if summary.get("detection_judged") is False:
        return 0.0
    duration = num(summary.get("duration_s"))
    warmup_end = num(dig(summary, "detection", "warmup_end_s"))
    if duration is None or warmup_end is None:
        return None
    return max(0.0, duration - warmup_end)


def summary_config_hash(run_dir: Path, summary: Mapping[str, Any]) -> str | None:
    """The summary's ``config_hash``; for runs older than it, hashed from config.json."""
    stored = summary.get("config_hash")
    if isinstance(stored, str):
        return stored
    try:
        if os.path.islink(run_dir / "config.json"):
            return None
        with (run_dir / "config.json").open(encoding="utf-8") as f:
            data = json.loads(f.read(4 * 1024 * 1024))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    config = data.get("config") if isinstance(data, dict) else None
    return config_hash(config) if isinstance(config, dict) else None


def why_not_baseline(path: Path, summary: Mapping[str, Any], sel: Selection) -> str | None:
    """None when ``summary`` may be a baseline under ``sel``, else the reason it may not."""
    status = run_status(summary)
    if status is None:
        return "no verdict (not finished, or not a soakd summary)"
    if status not in sel.allowed:
        reason = text(summary.get("verdict_reason"), 120)
        flag = f"--allow {status}"
        return f"{status}{f' ({reason})' if reason else ''}; {flag} to use it anyway"
    if not sel.any_target and summary.get("target") != sel.target:
        return (
            f"target {text(summary.get('target'), 120)!r}, not {text(sel.target, 120)!r}; "
            "--any-target to use it anyway"
        )
    if not sel.any_config and sel.config_hash is not None:
        theirs = summary_config_hash(path, summary)
        if theirs != sel.config_hash:
            what = "unknown" if theirs is None else theirs
            return (
                f"config hash {what}, not the run's {sel.config_hash} (the target, workload, "
                "sampling, detection, health or guard settings differ); --any-config to use it"
            )
    judged = judged_seconds(summary)
    if judged is None:
        return "judged time unknown (no duration_s or detection.warmup_end_s)"
    if judged < sel.min_judged_s:
        return (
            f"judged {format_duration(judged)} after warm-up, less than --min-judged "
            f"{format_duration(sel.min_judged_s)}"
        )
    return None


def collect_baselines(
    args_baselines: Sequence[Path], sel: Selection, last: int, exclude: Path
) -> tuple[list[tuple[Path, dict[str, Any]]], list[Skipped]]:
    """Baseline summaries (run dirs as given, runs dirs scanned: newest ``last`` eligible) and
    the runs skipped, each with why."""
    out: list[tuple[Path, dict[str, Any]]] = []
    skipped: list[Skipped] = []
    seen = {exclude.resolve()}
    for base in args_baselines:
        if not base.is_dir():
            raise CommandError(f"baseline not found or not a directory: {base}")
        if (base / SUMMARY).is_file() or (base / SAMPLES).is_file():
            if base.resolve() not in seen:
                seen.add(base.resolve())
                summary = _run_summary(base)
                reason = why_not_baseline(base, summary, sel)
                if reason is None:
                    out.append((base, summary))
                else:
                    skipped.append(Skipped(str(base), reason))
            continue
        found: list[tuple[Path, dict[str, Any]]] = []
        for child in sorted(base.iterdir()):
            if child.resolve() in seen or not (child / SUMMARY).is_file():
                continue
            try:
                summary = load_summary_file(child)
            except SoakdError as exc:
                skipped.append(Skipped(str(child), f"unreadable summary: {exc}"))
                continue  # one broken run among many must not block the comparison
            found.append((child, summary))
        if not found and not any((c / SUMMARY).is_file() for c in base.iterdir()):
            raise CommandError(
                f"{base} is neither a run directory nor a runs directory holding run "
                "directories with summary.json"
            )
        found.sort(key=lambda item: _started(item[1]), reverse=True)
        taken = 0
        for child, summary in found:
            if taken >= last:
                break
            seen.add(child.resolve())
            reason = why_not_baseline(child, summary, sel)
            if reason is None:
                out.append((child, summary))
                taken += 1
            else:
                skipped.append(Skipped(str(child), reason))
    return out, skipped


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
    header = ("metric", "run", "baseline mean", "±σ", "runs", "change", "status")
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
                str(c.baselines),
                change,
                status,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


SKIPPED_SHOWN = 20  # in the text output; --json lists every one


def _skipped_lines(skipped: Sequence[Skipped]) -> list[str]:
    lines = [f"  skipped {text(s.run, 300)}: {s.reason}" for s in skipped[:SKIPPED_SHOWN]]
    if len(skipped) > SKIPPED_SHOWN:
        lines.append(f"  ... and {len(skipped) - SKIPPED_SHOWN} more (--json lists them all)")
    return lines


def _min_judged(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    p.add_argument(
        "--last", type=int, default=10, metavar="N", help="eligible runs per runs directory (10)"
    )
    p.add_argument(
        "--threshold", type=float, default=0.15, help="relative change that counts (0.15 = 15%%)"
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        choices=[s for s in STATUSES if s != "pass"],
        metavar="STATUS",
        help="also take baselines that ended so: leak, aborted, target_failed, inconclusive, "
        "interrupted, error (repeatable; only pass by default)",
    )
    p.add_argument(
        "--min-judged",
        type=_min_judged,
        default=DEFAULT_MIN_JUDGED_S,
        metavar="DURATION",
        help="a baseline must have been judged this long after its warm-up (1m)",
    )
    p.add_argument("--any-target", action="store_true", help="take baselines of any target")
    p.add_argument(
        "--any-config",
        action="store_true",
        help="take baselines whose measured config (config hash) differs",
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
    sel = Selection(
        target=summary.get("target"),
        config_hash=summary_config_hash(run_dir, summary),
        allowed=frozenset((*DEFAULT_ALLOWED, *getattr(args, "allow", []))),
        min_judged_s=getattr(args, "min_judged", DEFAULT_MIN_JUDGED_S),
        any_target=getattr(args, "any_target", False),
        any_config=getattr(args, "any_config", False),
    )
    baselines, skipped = collect_baselines(args.baseline, sel, args.last, run_dir)
    if not baselines:
        detail = "\n".join(_skipped_lines(skipped)) or "  (no other run found)"
        raise CommandError(
            "nothing comparable: no baseline run qualifies (a run is never its own baseline; "
            f"a baseline ended {' or '.join(sorted(sel.allowed))}, was judged at least "
            f"{format_duration(sel.min_judged_s)}, and has the run's target "
            f"{text(sel.target, 200)!r} and config hash {sel.config_hash}):\n{detail}"
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
            "verdict": run_status(summary),
            "config_hash": sel.config_hash,
            "baselines": [str(p) for p, _ in baselines],
            "skipped": [asdict(s) for s in skipped],
            "threshold": args.threshold,
            "regression": regression,
            "unperturbed": judged_note(summary, rows),
            "metrics": [asdict(c) for c in rows],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(f"run {run_dir} against {len(baselines)} baseline run(s):")
        for line in _skipped_lines(skipped):
            print(line)
        status = run_status(summary)
        if status != "pass":
            print(f"note: the run itself ended {status}")
        note = judged_note(summary, rows)
        if note is not None:
            print(note)
        print(_table(rows))
        print("REGRESSION" if regression else "no regression")
    return EXIT_REGRESSION if regression else 0
