"""What a soak found: RSS growth per round, the checks it failed and the message pytest shows.

Growth is read from the run directory (``samples.db`` and ``events.jsonl``) but computed by the
pure :func:`growth_from_series`; :func:`evaluate` and :func:`format_failure` are pure too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soakd import rundir
from soakd.errors import SoakdError
from soakd.testing.spec import SoakSpec
from soakd.units import format_size

__all__ = [
    "FAIL_VERDICTS",
    "Growth",
    "RoundStats",
    "SiteGrowth",
    "SoakResult",
    "evaluate",
    "first_event_p50_ms",
    "format_failure",
    "growth_from_series",
    "judged_note",
    "measure_growth",
    "signed_size",
    "top_site_growth",
    "unperturbed_figures",
]

FAIL_VERDICTS = ("leak", "aborted", "target_failed", "error")


@dataclass(frozen=True)
class RoundStats:
    """One round of the soak's workload span; RSS read at its end, tracemalloc's share removed."""

    index: int  # 1-based; round 1 is the warm-up when rounds > 1
    start_s: float
    end_s: float
    rss_end_bytes: int
    growth_bytes: int  # over this round
    iterations: int


@dataclass(frozen=True)
class SiteGrowth:
    """An allocation site whose live bytes grew between the baseline and final snapshots."""

    site: str
    line: str | None
    size_diff: int
    count_diff: int
    traceback: tuple[str, ...]


@dataclass(frozen=True)
class SoakResult:
    """What one soak found; ``failures`` is empty when every check passed."""

    target: str
    verdict: str
    exit_code: int
    summary: dict[str, Any]
    run_dir: Path
    soak_dir: Path
    rss_growth_bytes: int | None = None
    growth_since_s: float | None = None
    rounds: tuple[RoundStats, ...] = ()
    top_sites: tuple[SiteGrowth, ...] = ()
    failures: tuple[str, ...] = ()
    log_tail: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def message(self) -> str:
        """The failure text pytest shows: what failed, why, where to look."""
        return format_failure(self)


@dataclass(frozen=True)
class Growth:
    """RSS growth after warm-up, from the run directory's samples and events."""

    growth_bytes: int | None
    since_s: float | None
    rounds: tuple[RoundStats, ...]


# --------------------------------------------------------------------------- growth


def measure_growth(run_dir: Path, rounds: int) -> Growth:
    """RSS growth over rounds 2..N (or the whole workload span when ``rounds`` is 1)."""
    from soakd.store import RunStore

    try:
        reader = RunStore(run_dir / rundir.SAMPLES, strict=False)
    except FileNotFoundError:
        return Growth(None, None, ())
    try:
        rss = reader.series("rss_bytes")
        overhead = reader.series("tracemalloc_overhead_bytes")
        workload = list(reader.workload())
    finally:
        reader.close()
    if not rss:
        return Growth(None, None, ())
    t_ready: float | None = None
    t_stop: float | None = None
    for event in rundir.read_events(run_dir / rundir.EVENTS):
        if event["event"] == "worker.ready" and t_ready is None:
            t_ready = _float(event.get("t"))
        elif event["event"] == "run.stopping" and t_stop is None:
            t_stop = _float(event.get("t"))
    start = t_ready if t_ready is not None else rss[0][0]
    end = t_stop if t_stop is not None else rss[-1][0]
    if end <= start:
        end = rss[-1][0]
    return growth_from_series(rss, overhead, workload, start, end, rounds)


def growth_from_series(
    rss: Sequence[tuple[float, float]],
    overhead: Sequence[tuple[float, float]],
    workload: Sequence[tuple[float, Mapping[str, Any]]],
    start: float,
    end: float,
    rounds: int,
) -> Growth:
    """Pure core of :func:`measure_growth`: explicit series and explicit times."""
    if not rss:
        return Growth(None, None, ())

    def level(t: float) -> float:
        # tracemalloc's own bookkeeping is in RSS too: remove it so tracing is not a leak.
        return _at(rss, t, rss[0][1]) - _at(overhead, t, 0.0)

    span = max(end - start, 0.0)
    stats: list[RoundStats] = []
    previous = level(start)
    for i in range(1, rounds + 1):
        r_start = start + span * (i - 1) / rounds
        r_end = start + span * i / rounds
        value = level(r_end)
        iterations = sum(
            int(_float(s.get("iterations")) or 0) for t, s in workload if r_start < t <= r_end
        )
        stats.append(
            RoundStats(i, round(r_start, 3), round(r_end, 3), int(_at(rss, r_end, rss[0][1])),
                       int(value - previous), iterations)
        )  # fmt: skip
        previous = value
    since = start + span / rounds if rounds > 1 else start
    return Growth(int(level(end) - level(since)), round(since, 3), tuple(stats))


def _at(series: Sequence[tuple[float, float]], t: float, default: float) -> float:
    """The last value at or before ``t`` (``default`` when the series starts later)."""
    value = default
    for ts, v in series:
        if ts > t:
            break
        value = v
    return value


def _float(value: object) -> float | None:
    # Unlike soakd.coerce.num this takes numeric strings and bools, as the plugin always has.
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def top_site_growth(run_dir: Path, top: int = 3) -> tuple[SiteGrowth, ...]:
    """Sites that grew most from the baseline to the final (else latest) heap snapshot."""
    from soakd.snapshots import diff_snapshots, read_snapshot

    snaps = run_dir / rundir.SNAPSHOTS
    baseline = snaps / f"baseline{rundir.SNAPSHOT_SUFFIX}"
    candidates = (snaps / f"{role}{rundir.SNAPSHOT_SUFFIX}" for role in ("final", "latest"))
    after = next((p for p in candidates if p.is_file()), None)
    if not baseline.is_file() or after is None:
        return ()
    try:
        rows = diff_snapshots(read_snapshot(baseline), read_snapshot(after), top=top)
    except SoakdError:
        return ()  # a damaged snapshot: the summary still speaks; the message just says less
    largest = max((r.size_diff for r in rows), default=0)
    return tuple(
        SiteGrowth(r.site, r.line, r.size_diff, r.count_diff, r.traceback)
        for r in rows
        if r.size_diff > 0 and r.size_diff >= largest / 20  # the rest is churn, not the story
    )


# --------------------------------------------------------------------------- checks


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def unperturbed_figures(summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``workload.unperturbed`` (soakd's own work in the target left out), when recorded and
    something was judged (a run perturbed throughout is judged on its whole figures)."""
    figures = _mapping(summary.get("workload")).get("unperturbed")
    if isinstance(figures, Mapping) and (_float(figures.get("iterations")) or 0) > 0:
        return figures
    return None


def judged_note(summary: Mapping[str, Any]) -> str:
    """How much of the workload the limits judged, e.g. "unperturbed intervals only: 50.0 s
    of 60.0 s judged, 10.0 s (5 intervals, 310 iterations) left out"; "" without figures."""
    figures = unperturbed_figures(summary)
    if figures is None:
        return ""
    judged = _float(figures.get("seconds")) or 0.0
    left = _float(figures.get("excluded_seconds")) or 0.0
    total = _float(_mapping(summary.get("workload")).get("duration_s")) or judged + left
    return (
        f"unperturbed intervals only: {judged:.1f} s of {total:.1f} s judged, {left:.1f} s "
        f"({int(_float(figures.get('excluded_intervals')) or 0)} intervals, "
        f"{int(_float(figures.get('excluded_iterations')) or 0)} iterations) left out"
    )


def _first_event_p50(summary: Mapping[str, Any]) -> tuple[float | None, bool]:
    """p50 time to the first status (else any) event, and whether it is the unperturbed one.

    The unperturbed figures keep no milestones: they stand in for the ``first_status``
    milestone only when, over the whole run, the first event is the status (same p50).
    """
    workload = summary.get("workload")
    if not isinstance(workload, Mapping):
        return None, False
    milestone = _mapping(_mapping(workload.get("milestones_ms")).get("first_status"))
    status = _float(milestone.get("p50")) if _float(milestone.get("count")) else None
    first = _float(_mapping(workload.get("first_event_ms")).get("p50"))
    figures = unperturbed_figures(summary)
    calm = _float(_mapping((figures or {}).get("first_event_ms")).get("p50"))
    # the histograms' ~1 % resolution: equal p50s mean the status is the first event
    same = status is None or (first is not None and abs(status - first) <= 0.02 * max(first, 1))
    if calm is not None and same:
        return calm, True
    return (status if status is not None else first), False


def first_event_p50_ms(summary: Mapping[str, Any]) -> float | None:
    """p50 time to the first ``status`` event, else to the first event of any type (of the
    unperturbed intervals when the summary has them and they can tell)."""
    return _first_event_p50(summary)[0]


def evaluate(summary: Mapping[str, Any], growth: Growth, spec: SoakSpec) -> list[str]:
    """Every check the soak failed, one line each (empty: passed). Pure.

    Workload limits judge the unperturbed intervals (``workload.unperturbed``) when the
    summary has them, and say so with how much was left out.
    """
    failures: list[str] = []
    verdict = str(summary.get("verdict", "error"))
    if verdict in FAIL_VERDICTS:
        failures.append(f"soakd verdict: {verdict} (exit code {summary.get('exit_code')})")
    elif verdict == "inconclusive" and (
        spec.max_rss_growth is None or summary.get("interrupted") is True
    ):
        # soakd judged nothing and neither did this soak (no growth bound): not a pass.
        reason = summary.get("verdict_reason") or "nothing was judged"
        failures.append(f"soakd verdict: inconclusive (exit code 7): {reason}")
    if spec.max_rss_growth is not None:
        if growth.growth_bytes is None:
            failures.append("RSS growth unknown: the run recorded no RSS samples")
        elif growth.growth_bytes > spec.max_rss_growth:
            where = (
                f"after warm-up (from the end of round 1 at {growth.since_s:g}s)"
                if spec.rounds > 1
                else f"from worker start ({growth.since_s:g}s)"
            )
            failures.append(
                f"RSS grew {format_size(growth.growth_bytes)} {where} to the end of the "
                f"workload: more than max_rss_growth {_limit_text(spec)}"
            )
    workload = _mapping(summary.get("workload"))
    figures = unperturbed_figures(summary)
    judged = figures if figures is not None else workload
    note = judged_note(summary)
    error_rate = _float(judged.get("error_rate")) or 0.0
    if spec.max_error_rate is not None and error_rate > spec.max_error_rate:
        errors = judged.get("errors")
        by_class = workload.get("errors_by_class") or {}
        failures.append(
            f"error rate {error_rate:.2%} ({errors} of {judged.get('iterations')} iterations"
            f"{', ' + json.dumps(by_class) if by_class else ''}) above max_error_rate "
            f"{spec.max_error_rate:.2%}" + (f"; {note}" if note else "")
        )
    if spec.max_first_event_ms is not None:
        p50, calm = _first_event_p50(summary)
        if p50 is None:
            failures.append("time to first event unknown: no iteration produced an event")
        elif p50 > spec.max_first_event_ms:
            failures.append(
                f"first status p50 {p50:.1f} ms above max_first_event_ms "
                f"{spec.max_first_event_ms:g} ms" + (f"; {note}" if calm else "")
            )
    return failures


def _limit_text(spec: SoakSpec) -> str:
    shown = format_size(spec.max_rss_growth or 0)
    text = spec.max_rss_growth_text
    return shown if not text or text == str(spec.max_rss_growth) else f"{text} ({shown})"


# --------------------------------------------------------------------------- the message


def format_failure(result: SoakResult) -> str:
    """The message for pytest.fail: checks that failed, then the evidence, then the path."""
    s = result.summary
    lines = [f"soak of {result.target} failed (soakd verdict {result.verdict}, "
             f"exit code {result.exit_code}):"]  # fmt: skip
    lines += [f"  - {f}" for f in result.failures]
    reason = s.get("verdict_reason")
    if isinstance(reason, str) and reason:
        lines.append(f"  why: {reason[:1000]}")
    if s.get("interrupted") is True:
        lines.append("  the soak was interrupted before its planned end")
    for leak in s.get("leaks") or []:
        lines += _leak_lines(leak, "leak")
    if result.verdict not in ("pass", "leak"):
        for suspect in (s.get("suspects") or [])[:3]:
            lines += _leak_lines(suspect, "suspected leak (not confirmed)")
    for b in s.get("breaches") or []:
        lines.append(
            f"  threshold {b.get('rule')}: {b.get('value')} vs limit {b.get('limit')} "
            f"({b.get('action')}) at {b.get('at_s')}s"
        )
    failure = s.get("failure")
    if isinstance(failure, Mapping):
        lines.append(f"  target failed ({failure.get('reason')}): {failure.get('message')}")
    if result.rounds and len(result.rounds) > 1:
        per_round = ", ".join(
            f"{r.index}: {signed_size(r.growth_bytes)} in {r.iterations} it" for r in result.rounds
        )
        lines.append(f"  RSS growth per round (round 1 = warm-up): {per_round}")
    lines += _perturbation_lines(s)
    memory = s.get("memory")
    if isinstance(memory, Mapping) and memory.get("rss_end_bytes"):
        lines.append(
            f"  RSS {format_size(_float(memory.get('rss_start_bytes')) or 0)} → "
            f"{format_size(_float(memory.get('rss_end_bytes')) or 0)}, slope after warm-up "
            f"{signed_size(_float(memory.get('rss_slope_bytes_per_h')) or 0)}/h"
        )
    if result.top_sites:
        lines.append("  allocation sites that grew (heap snapshots, baseline → final):")
        for site in result.top_sites:
            source = f": {site.line}" if site.line else ""
            lines.append(
                f"    {signed_size(site.size_diff)} in {site.count_diff:+d} blocks at "
                f"{site.site}{source}"
            )
            lines += [f"        {frame}" for frame in site.traceback[1:4]]
    elif result.rss_growth_bytes is not None and any(
        f.startswith("RSS grew") for f in result.failures
    ):
        lines.append(
            "  no heap snapshots to point at a line (tracing was off): soak again with "
            "set=['sampling.tracemalloc=always'] to see the allocation sites that grew"
        )
    if result.log_tail:
        lines.append("  soakd output (tail):")
        lines += [f"    {line}" for line in result.log_tail.splitlines()]
    lines.append(
        f"  run directory: {result.run_dir} ({rundir.SUMMARY}, {rundir.REPORT_MD}, "
        f"{rundir.REPORT_HTML})"
    )
    return "\n".join(lines)


def _perturbation_lines(summary: Mapping[str, Any]) -> list[str]:
    """soakd's own work in the target and what the workload limits left out because of it."""
    p = _mapping(summary.get("perturbation"))
    spans = int(_float(p.get("spans")) or 0)
    if not spans:
        return []
    causes = ", ".join(
        f"{cause} {int(_float(_mapping(c).get('spans')) or 0)} / "
        f"{_float(_mapping(c).get('seconds')) or 0.0:.2f} s"
        for cause, c in sorted(_mapping(p.get("by_cause")).items())
    )
    line = (
        f"  soakd's own work in the target: {spans} span(s), "
        f"{_float(p.get('seconds')) or 0.0:.2f} s ({(_float(p.get('share')) or 0.0):.1%} of "
        f"the run{'; ' + causes if causes else ''})"
    )
    note = judged_note(summary)
    return [line + (f"; workload limits judged {note}" if note else "")]


def _leak_lines(leak: Mapping[str, Any], label: str) -> list[str]:
    kind = leak.get("kind")
    where = leak.get("site") or (f"type {leak.get('type')}" if leak.get("type") else "process")
    source = f": {leak.get('line')}" if leak.get("line") else ""
    unit = leak.get("unit")
    slope = _float(leak.get("slope_per_h")) or 0.0
    growth = _float(leak.get("growth")) or 0.0
    rate = (
        f"{signed_size(slope)}/h, grew {format_size(growth)}"
        if unit == "bytes"
        else f"{slope:+.1f}/h, grew {growth:.0f}"
    )
    out = [
        f"  {label} ({kind}) at {where}{source}: {rate}, p={leak.get('p_value')}, "
        f"first detected at {leak.get('first_detected_s')}s"
    ]
    traceback = leak.get("traceback") or []
    if traceback:
        out.append("    traceback (innermost first):")
        out += [f"      {frame}" for frame in traceback[:8]]
    return out


def signed_size(size: float) -> str:
    """``+1.5 MiB`` / ``-512 B``: a growth with its sign."""
    return ("+" if size >= 0 else "-") + format_size(abs(size))
