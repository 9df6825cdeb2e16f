"""report.md: the report's facts as text, for pasting into a ticket."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from soakd.coerce import compact_json, dig, num, text
from soakd.reporting.common import LeakEntry, breach_entries, leak_entries
from soakd.reporting.format import (
    format_metric,
    format_seconds,
    slope_text,
    source_context,
    verdict_notes,
)
from soakd.reporting.html import CLEARED_NOTE
from soakd.reporting.rundata import RunData
from soakd.units import Unit, format_duration, format_value

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def md(value: object, limit: int = 500) -> str:
    """Inline text with Markdown/HTML syntax neutralised (values come from the run dir)."""
    one_line = text(value, limit).replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(r"\\\1", one_line)


def code(value: object, limit: int = 500) -> str:
    """Inline code; backticks and newlines inside are replaced so the span cannot break."""
    one_line = text(value, limit).replace("`", "'").replace("\r", " ").replace("\n", " ")
    return f"`{one_line}`"


def _code_block(lines: Sequence[str], lang: str = "") -> str:
    body = "\n".join(lines)
    # a fence longer than any backtick run inside, so content cannot close it
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{body}\n{fence}"


def _fmt(value: object, unit: Unit) -> str:
    return format_value(num(value), unit)


def _leak(leak: LeakEntry) -> list[str]:
    unit: Unit = "bytes" if leak.unit == "bytes" else "count"
    head = f"### {leak.status.upper()}: {md(leak.kind)} leak"
    if leak.site:
        head += f" at {code(leak.site)}"
    if leak.type:
        head += f" (type {md(leak.type)})"
    p = "n/a" if leak.p_value is None else f"{leak.p_value:.3g}"
    first = "—" if leak.first_detected_s is None else format_duration(leak.first_detected_s)
    out = [
        head,
        "",
        f"- slope: {format_value(leak.slope_per_h, unit)}/h "
        f"(lower bound {format_value(leak.slope_low_per_h, unit)}/h)",
        f"- growth: {format_value(leak.growth, unit)}; p-value: {p}; first detected: {first}",
    ]
    if leak.analyses is not None:
        out.append(f"- analyses: {md(leak.analyses)}")
    if leak.signals is not None:
        out.append(f"- signals: {code(compact_json(leak.signals), 1000)}")
    if leak.evidence:
        out.append("- same cause, also seen as:")
        out += [f"  - {md(e)}" for e in leak.evidence]
    if leak.traceback:
        out += ["", "Traceback (innermost first):", "", _code_block(leak.frames)]
    context = source_context(leak.site)
    if context:
        lineno = int((leak.site or "0").rpartition(":")[2])
        lines = [f"{'>' if n == lineno else ' '}{n:>6}  {src}" for n, src in context]
        out += ["", _code_block(lines, "python")]
    elif leak.line:
        out += ["", _code_block([leak.line], "python")]
    out.append("")
    return out


def _perturbation(run: RunData) -> list[str]:
    """soakd's own work in the target, by cause, and the workload judged without it."""
    s = run.summary
    p: Any = s.get("perturbation")
    if not isinstance(p, Mapping):
        p = run.perturbation.summary(num(s.get("duration_s")) or run.last_t or 0.0)
    out = [
        "",
        "## soakd's own work in the target",
        "",
        f"{_fmt(p.get('spans'), 'count')} span(s), {format_seconds(num(p.get('seconds')) or 0.0)}"
        f" ({_fmt(p.get('share'), 'ratio')} of the run); the workload intervals they overlap "
        "are left out of the unperturbed figures and of the workload rules.",
    ]
    by_cause = p.get("by_cause")
    if isinstance(by_cause, Mapping) and by_cause:
        out += ["", "| cause | spans | time |", "| --- | --- | --- |"]
        for cause, c in sorted(by_cause.items()):
            c = c if isinstance(c, Mapping) else {}
            out.append(
                f"| {md(cause, 40)} | {_fmt(c.get('spans'), 'count')} | "
                f"{format_seconds(num(c.get('seconds')) or 0.0)} |"
            )
    u = dig(s, "workload", "unperturbed")
    if isinstance(u, Mapping):
        out += [
            "",
            f"Unperturbed workload: {format_seconds(num(u.get('seconds')) or 0.0)} judged, "
            f"{format_seconds(num(u.get('excluded_seconds')) or 0.0)} in "
            f"{_fmt(u.get('excluded_intervals'), 'count')} interval(s) "
            f"({_fmt(u.get('excluded_iterations'), 'count')} iterations) left out.",
            "",
            "| metric | unperturbed |",
            "| --- | --- |",
            f"| throughput | {_fmt(u.get('throughput_per_s'), 'per_s')} |",
            f"| error rate | {_fmt(u.get('error_rate'), 'ratio')} |",
        ]
        for key, label in (("latency_ms", "latency"), ("first_event_ms", "first event")):
            if isinstance(u.get(key), Mapping):
                for pct in ("p50", "p90", "p99", "max"):
                    out.append(f"| {label} {pct} | {_fmt(dig(u, key, pct), 'ms')} |")
    return out


def render_markdown(run: RunData) -> str:
    """The text report for a loaded run."""
    s = run.summary
    verdict = text(s.get("verdict") or "unknown", 40)
    run_id = s.get("run_id") or run.meta.get("run_id") or run.path.name
    duration = num(s.get("duration_s")) or run.last_t or 0.0
    lines = [
        f"# soakd report: {md(run_id)}",
        "",
        f"**Verdict: {md(verdict)}** (exit code {md(s.get('exit_code'))})",
        "",
        *(f"> {md(note)}" for note in verdict_notes(s)),
        *([""] if verdict_notes(s) else []),
        f"- target: {code(s.get('target') or run.meta.get('target'), 300)}",
        f"- started: {md(s.get('started_at') or run.meta.get('started_at'))}; "
        f"ended: {md(s.get('ended_at') or '—')}; duration: {format_duration(duration)}",
    ]
    if run.warmup_end_s is not None:
        lines.append(f"- warm-up ended at {format_duration(run.warmup_end_s)}")
    if run.bad_event_lines:
        lines.append(f"- {run.bad_event_lines} unreadable line(s) of events.jsonl were skipped")
    w = "workload"
    lines += [
        "",
        "## Workload",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| iterations | {_fmt(dig(s, w, 'iterations'), 'count')} |",
        f"| errors | {_fmt(dig(s, w, 'errors'), 'count')} |",
        f"| error rate | {_fmt(dig(s, w, 'error_rate'), 'ratio')} |",
        f"| throughput | {_fmt(dig(s, w, 'throughput_per_s'), 'per_s')} |",
    ]
    for key, label in (("latency_ms", "latency"), ("first_event_ms", "first event")):
        for pct in ("p50", "p90", "p99", "max"):
            lines.append(f"| {label} {pct} | {_fmt(dig(s, w, key, pct), 'ms')} |")
    lines += _perturbation(run)
    m = "memory"
    lines += [
        "",
        "## Memory",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| RSS start | {_fmt(dig(s, m, 'rss_start_bytes'), 'bytes')} |",
        f"| RSS end | {_fmt(dig(s, m, 'rss_end_bytes'), 'bytes')} |",
        f"| RSS peak | {_fmt(dig(s, m, 'rss_peak_bytes'), 'bytes')} |",
        f"| RSS slope | {slope_text(dig(s, m, 'rss_slope_bytes_per_h'))} |",
        f"| heap slope | {slope_text(dig(s, m, 'heap_slope_bytes_per_h'))} |",
    ]
    if run.site_growth:
        lines += ["", "Top growing allocation sites:", ""]
        for g in run.site_growth[:8]:
            lines.append(f"- {code(g.name)}: +{format_value(g.growth, 'bytes')}")
    lines += ["", "## Leaks", ""]
    entries = leak_entries(s, run.events)
    leaks = [e for e in entries if e.status != "cleared"]
    cleared = [e for e in entries if e.status == "cleared"]
    if not leaks:
        lines += ["No leak suspected or confirmed.", ""]
    for leak in leaks:
        lines += _leak(leak)
    if cleared:
        lines += ["## Cleared findings", "", CLEARED_NOTE, ""]
        for leak in cleared:
            lines += _leak(leak)
    lines += ["## Threshold breaches", ""]
    breaches = breach_entries(s, run.events)
    if not breaches:
        lines.append("None.")
    else:
        lines += ["| rule | value | limit | action | at |", "| --- | --- | --- | --- | --- |"]
        for b in breaches[:200]:
            at = "—" if b["at_s"] is None else format_duration(b["at_s"])
            lines.append(
                f"| {md(b['rule'])} | {format_metric(b['metric'], b['value'])} | "
                f"{format_metric(b['metric'], b['limit'])} | "
                f"{md(b['action'])} | {at} |"
            )
    lines += ["", f"Run directory: {code(run.path, 1000)}", ""]
    return "\n".join(lines)
