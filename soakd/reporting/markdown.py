"""report.md: the report's facts as text, for pasting into a ticket."""

from __future__ import annotations

import re
from collections.abc import Sequence

from soakd.coerce import compact_json, dig, num, text
from soakd.reporting.common import LeakEntry, breach_entries, leak_entries
from soakd.reporting.format import format_metric, source_context
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
    if leak.traceback:
        out += ["", "Traceback (innermost first):", "", _code_block(list(leak.traceback))]
    context = source_context(leak.site)
    if context:
        lineno = int((leak.site or "0").rpartition(":")[2])
        lines = [f"{'>' if n == lineno else ' '}{n:>6}  {src}" for n, src in context]
        out += ["", _code_block(lines, "python")]
    elif leak.line:
        out += ["", _code_block([leak.line], "python")]
    out.append("")
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
        f"| RSS slope | {_fmt(dig(s, m, 'rss_slope_bytes_per_h'), 'bytes')}/h |",
        f"| heap slope | {_fmt(dig(s, m, 'heap_slope_bytes_per_h'), 'bytes')}/h |",
    ]
    if run.site_growth:
        lines += ["", "Top growing allocation sites:", ""]
        for g in run.site_growth[:8]:
            lines.append(f"- {code(g.name)}: +{format_value(g.growth, 'bytes')}")
    lines += ["", "## Leaks", ""]
    leaks = leak_entries(s, run.events)
    if not leaks:
        lines += ["No leak suspected or confirmed.", ""]
    for leak in leaks:
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
