"""report.html: one self-contained page (inline CSS and SVG, no scripts, no network)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape

from soakd.coerce import dig, num, text
from soakd.errors import SnapshotError
from soakd.events import TIMELINE_EVENTS
from soakd.reporting.common import LeakEntry, breach_entries, leak_entries
from soakd.reporting.flame import flame_svg, growth_stacks
from soakd.reporting.format import (
    format_metric,
    format_seconds,
    slope_text,
    source_context,
    verdict_notes,
)
from soakd.reporting.rundata import RunData
from soakd.reporting.svg import PERTURBED_LABEL, Chart, Marker
from soakd.rundir import SNAPSHOTS
from soakd.snapshots import diff_snapshots, read_snapshot
from soakd.store import Point, SeriesGrowth
from soakd.units import Unit, format_duration, format_size, format_value

HALF = 526  # two charts side by side in the 1100 px page

CSS = """
body{font:14px/1.45 "DejaVu Sans",system-ui,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;border-bottom:1px solid #ddd;
padding-bottom:4px;margin-top:32px}h3{font-size:15px;margin:20px 0 6px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f5f5f5}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:bold}
.v-pass{background:#2e7d32}.v-leak{background:#c62828}.v-aborted{background:#ef6c00}
.v-target_failed,.v-error,.v-unknown{background:#6a1b9a}.v-running{background:#1565c0}
.v-inconclusive{background:#616161}
.badge{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;color:#fff}
.b-confirmed{background:#c0392b}.b-suspected{background:#e69500}.b-cleared{background:#7f8c8d}
.charts{display:flex;flex-wrap:wrap;gap:8px}
svg.chart{background:#fff;border:1px solid #eee}svg .frame{fill:none;stroke:#ccc}
svg .grid{stroke:#eee}svg .axis{stroke:#999}svg .tick{font-size:10px;fill:#555}
svg .ct{font-size:13px;font-weight:bold;fill:#222}svg .lg{font-size:11px;fill:#333}
svg .mlabel{font-size:10px}svg .empty{fill:#999}
.flame-wrap{overflow-x:auto}svg.flame .ff text{fill:#222}
svg.flame .ff rect{stroke:#fff;stroke-width:.5}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px;white-space:pre}
.code .hit{background:#fff3b0;font-weight:bold}.muted{color:#777}.warn{color:#b35900}
"""


def _e(value: object, limit: int = 2000) -> str:
    return escape(text(value, limit), quote=True)


def _fmt(value: object, unit: Unit) -> str:
    return escape(format_value(num(value), unit))


def _markers(run: RunData) -> list[Marker]:
    """Warm-up end and the first suspicion / confirmation of each leak."""
    out = []
    if run.warmup_end_s is not None:
        out.append(Marker(run.warmup_end_s, "warm-up end", "warmup"))
    seen = set()
    for e in run.events_named("leak.suspected", "leak.confirmed"):
        status = str(e["event"]).removeprefix("leak.")
        key = (status, str(e.get("kind")), str(e.get("site")), str(e.get("type")))
        t = num(e.get("t"))
        if t is not None and key not in seen:
            seen.add(key)
            out.append(Marker(t, f"{text(e.get('kind'), 20)} {status}", status))
    return out[:24]


def _chart(
    run: RunData,
    title: str,
    names: Sequence[str],
    unit: Unit,
    markers: Sequence[Marker] = (),
    labels: Mapping[str, str] | None = None,
    width: int = 1060,
) -> str:
    series: dict[str, Sequence[Point]] = {n: run.series.get(n, ()) for n in names}
    shades = run.perturbed_spans
    return Chart(title, series, unit, markers, labels, shades, width=width).render()


def _site_label(name: str) -> str:
    site = name.removeprefix("site:").removeprefix("type:")
    path, sep, line = site.rpartition(":")
    if not sep:
        return site
    return f"{path.rsplit('/', 1)[-1]}:{line}"


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _header(run: RunData) -> str:
    s = run.summary
    verdict = text(s.get("verdict") or "unknown", 40)
    finished = bool(run.events_named("run.finished")) or bool(s.get("ended_at"))
    if not finished and not s.get("verdict"):
        verdict = "running"
    rows = [
        ("run", _e(s.get("run_id") or run.meta.get("run_id") or run.path.name)),
        ("target", _e(s.get("target") or run.meta.get("target"))),
        ("started", _e(s.get("started_at") or run.meta.get("started_at"))),
        ("ended", _e(s.get("ended_at") or "—")),
        ("duration", escape(format_duration(num(s.get("duration_s")) or run.last_t or 0.0))),
        ("exit code", _e(s.get("exit_code"))),
        ("run directory", _e(run.path)),
    ]
    notice = ""
    if run.bad_event_lines:
        notice = (
            f'<p class="warn">{run.bad_event_lines} line(s) of events.jsonl could not be read '
            "(e.g. cut short when the supervisor was killed) and were skipped.</p>"
        )
    if not run.has_store:
        notice += '<p class="warn">samples.db is missing: no plots.</p>'
    for note in verdict_notes(s):
        notice += f'<p class="warn">{escape(note)}</p>'
    return (
        f'<h1>soakd report <span class="verdict v-{escape(verdict)}">{escape(verdict)}</span>'
        f"</h1>{_table(rows)}{notice}"
    )


def _overview(run: RunData) -> str:
    s = run.summary
    w = "workload"
    rows = [
        ("iterations", _fmt(dig(s, w, "iterations"), "count")),
        ("errors", _fmt(dig(s, w, "errors"), "count")),
        ("error rate", _fmt(dig(s, w, "error_rate"), "ratio")),
        ("throughput", _fmt(dig(s, w, "throughput_per_s"), "per_s")),
    ]
    for key, label in (("latency_ms", "latency"), ("first_event_ms", "first event")):
        values = " · ".join(
            f"{p} {_fmt(dig(s, w, key, p), 'ms')}" for p in ("p50", "p90", "p99", "max")
        )
        rows.append((label, values))
    m = "memory"
    mem = [
        ("RSS start", _fmt(dig(s, m, "rss_start_bytes"), "bytes")),
        ("RSS end", _fmt(dig(s, m, "rss_end_bytes"), "bytes")),
        ("RSS peak", _fmt(dig(s, m, "rss_peak_bytes"), "bytes")),
        ("RSS slope", escape(slope_text(dig(s, m, "rss_slope_bytes_per_h")))),
        ("heap slope", escape(slope_text(dig(s, m, "heap_slope_bytes_per_h")))),
        ("warm-up end", escape(format_duration(run.warmup_end_s or 0.0)))
        if run.warmup_end_s is not None
        else ("warm-up end", "—"),
    ]
    return (
        '<h2>Overview</h2><div class="charts"><div><h3>Workload</h3>'
        f"{_table(rows)}</div><div><h3>Memory</h3>{_table(mem)}</div>"
        f"{_perturbation(run)}</div>"
    )


def _perturbation(run: RunData) -> str:
    """soakd's own work in the target by cause, and the workload judged without it."""
    s = run.summary
    p = s.get("perturbation")
    if not isinstance(p, Mapping):
        duration = num(s.get("duration_s")) or run.last_t or 0.0
        p = run.perturbation.summary(duration)
    rows = [
        ("spans", _fmt(p.get("spans"), "count")),
        ("time", escape(format_seconds(num(p.get("seconds")) or 0.0))
         + f" ({_fmt(p.get('share'), 'ratio')} of the run)"),
    ]  # fmt: skip
    by_cause = p.get("by_cause")
    for cause, c in sorted(by_cause.items() if isinstance(by_cause, Mapping) else []):
        c = c if isinstance(c, Mapping) else {}
        rows.append(
            (
                f"  {text(cause, 40)}",
                f"{_fmt(c.get('spans'), 'count')} span(s), "
                + escape(format_seconds(num(c.get("seconds")) or 0.0)),
            )
        )
    u = dig(s, "workload", "unperturbed")
    if isinstance(u, Mapping):
        rows += [
            ("judged", escape(format_duration(num(u.get("seconds")) or 0.0)) + " of the workload"
             + f" ({_fmt(u.get('excluded_intervals'), 'count')} intervals left out)"),
            ("throughput", _fmt(u.get("throughput_per_s"), "per_s")),
            ("error rate", _fmt(u.get("error_rate"), "ratio")),
        ]  # fmt: skip
        for key, label in (("latency_ms", "latency"), ("first_event_ms", "first event")):
            if isinstance(u.get(key), Mapping):
                rows.append(
                    (label, " · ".join(f"{q} {_fmt(dig(u, key, q), 'ms')}" for q in ("p50", "p99")))
                )
    return f"<div><h3>{escape(PERTURBED_LABEL)}</h3>{_table(rows)}</div>"


def _plots(run: RunData, markers: Sequence[Marker]) -> str:
    if not run.has_store:
        return ""
    parts = [
        "<h2>Memory</h2>",
        _chart(run, "Memory", ["rss_bytes", "heap_bytes", "traced_bytes"], "bytes", markers),
        "<h2>Resources</h2><div class='charts'>",
        _chart(run, "File descriptors", ["fds"], "count", markers, width=HALF),
        _chart(run, "Threads", ["threads"], "count", markers, width=HALF),
        _chart(run, "asyncio tasks", ["tasks"], "count", markers, width=HALF),
        "</div><h2>Workload</h2><div class='charts'>",
        _chart(run, "Throughput", ["throughput_per_s"], "per_s", markers, width=HALF),
        _chart(run, "Error rate", ["error_rate"], "ratio", markers, width=HALF),
        _chart(
            run,
            "Latency",
            ["latency_p50_ms", "latency_p99_ms", "first_event_p99_ms"],
            "ms",
            markers,
            width=HALF,
        ),
        "</div>",
    ]
    parts.append(_growth_section(run, "Top growing allocation sites", run.site_growth, "bytes"))
    parts.append(_growth_section(run, "Top growing object types", run.type_growth, "count"))
    parts.append(_flame_section(run))
    return "".join(parts)


FLAME_TITLE = "Where the memory grew: flame graph of growth by traceback"


def _flame_section(run: RunData) -> str:
    """The growth from the baseline snapshot to the final (or latest) one, by full traceback,
    as a flame graph; then the sites of the top stacks over time."""
    head = f"<h2>{escape(FLAME_TITLE)}</h2>"
    snaps = run.path / SNAPSHOTS
    later = next(
        (snaps / n for n in ("final.json.gz", "latest.json.gz") if (snaps / n).is_file()), None
    )
    if not (snaps / "baseline.json.gz").is_file() or later is None:
        return head + "<p class='muted'>no baseline and later heap snapshot in this run</p>"
    try:
        a = read_snapshot(snaps / "baseline.json.gz")
        b = read_snapshot(later)
    except SnapshotError as exc:
        return head + f"<p class='muted'>{_e(exc)}</p>"
    stacks = growth_stacks(diff_snapshots(a, b, group_by="traceback", top=None))
    if not stacks:
        return head + "<p class='muted'>no allocation stack grew between the snapshots</p>"
    total = sum(s.growth for s in stacks)
    when = " → ".join(
        f"{s.role}{f' (t={format_duration(s.t)})' if s.t is not None else ''}" for s in (a, b)
    )
    title = f"{when}: +{format_size(total)} in {len(stacks)} growing stacks"
    sampled = a.sampling_interval is not None or b.sampling_interval is not None
    estimated = " (estimates from sampled allocations)" if sampled else ""
    note = (
        f"Widths are bytes grown{estimated}, root at the bottom, the allocating line on top; "
        "hover a frame for its figures. Stacks that shrank are not drawn. The same data: "
        "<code>soakd diff --format collapsed</code> or <code>--format speedscope</code>."
    )
    top_sites: list[str] = []
    for stack in stacks:
        name = f"site:{stack.frames[-1]}"
        if name in run.series and name not in top_sites:
            top_sites.append(name)
        if len(top_sites) == 5:
            break
    chart = ""
    if top_sites:
        labels = {n: _site_label(n) for n in top_sites}
        chart = "<h3>Top growing stacks over time (their allocating lines)</h3>" + _chart(
            run, "Top growing stacks", top_sites, "bytes", (), labels
        )
    svg = flame_svg(stacks, title)
    return f"{head}<p class='muted'>{note}</p><div class='flame-wrap'>{svg}</div>{chart}"


def _growth_section(run: RunData, title: str, growth: Sequence[SeriesGrowth], unit: Unit) -> str:
    top = list(growth[:8])
    if not top:
        return f"<h2>{escape(title)}</h2><p class='muted'>none recorded</p>"
    names = [g.name for g in top]
    labels = {n: _site_label(n) for n in names}
    rows = "".join(
        f"<tr><td>{_e(g.name)}</td><td>{escape(format_value(g.first, unit))}</td>"
        f"<td>{escape(format_value(g.last, unit))}</td>"
        f"<td>{escape(format_value(g.growth, unit))}</td></tr>"
        for g in top
    )
    return (
        f"<h2>{escape(title)}</h2>{_chart(run, title, names, unit, (), labels)}"
        f"<table><tr><th>series</th><th>first</th><th>last</th><th>growth</th></tr>{rows}</table>"
    )


def _json_block(value: object, limit: int = 20_000) -> str:
    try:
        dumped = json.dumps(value, indent=2, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        dumped = repr(value)
    return f"<pre>{escape(text(dumped, limit))}</pre>"


def _leak(run: RunData, leak: LeakEntry, index: int) -> str:
    unit: Unit = "bytes" if leak.unit == "bytes" else "count"
    title = f"{leak.kind} leak" + (f" at {leak.site}" if leak.site else "")
    title += f" ({leak.type})" if leak.type else ""
    stats = [
        ("status", f'<span class="badge b-{escape(leak.status)}">{escape(leak.status)}</span>'),
        ("kind", _e(leak.kind)),
        ("site", _e(leak.site or "—")),
        ("type", _e(leak.type or "—")),
        ("slope", escape(format_value(leak.slope_per_h, unit)) + "/h"),
        ("slope lower bound", escape(format_value(leak.slope_low_per_h, unit)) + "/h"),
        ("growth", escape(format_value(leak.growth, unit))),
        ("p-value", escape("n/a" if leak.p_value is None else f"{leak.p_value:.3g}")),
        (
            "first detected",
            escape(format_duration(leak.first_detected_s))
            if leak.first_detected_s is not None
            else "—",
        ),
        ("analyses", _e(leak.analyses if leak.analyses is not None else "—")),
        ("signals", _json_block(leak.signals, 4000) if leak.signals is not None else "—"),
    ]
    if leak.evidence:
        items = "".join(f"<li>{_e(e)}</li>" for e in leak.evidence)
        stats.append(("same cause, also seen as", f"<ul>{items}</ul>"))
    parts = [f"<h3 id='leak-{index}'>{_e(title)}</h3>", _table(stats)]
    site = run.sites.get(leak.site or "")
    traceback = leak.frames or list(site.traceback if site else ())
    if traceback:
        frames = "".join(f"<li><code>{_e(f)}</code></li>" for f in traceback)
        parts.append(f"<p>Traceback (innermost first):</p><ol>{frames}</ol>")
    context = source_context(leak.site)
    if context:
        lineno = int((leak.site or "0").rpartition(":")[2])
        lines = "\n".join(
            f'<span class="{"hit" if n == lineno else ""}">{n:>6}  {escape(src)}</span>'
            for n, src in context
        )
        parts.append(f'<pre class="code">{lines}</pre>')
    else:
        line = leak.line or (site.line if site else None)
        if line:
            parts.append(f'<pre class="code"><span class="hit">{_e(line)}</span></pre>')
    if leak.site and run.series.get(f"site:{leak.site}"):
        parts.append(_chart(run, "Allocation site", [f"site:{leak.site}"], "bytes"))
    if leak.type and run.series.get(f"type:{leak.type}"):
        parts.append(_chart(run, "Live objects", [f"type:{leak.type}"], "count"))
    return "".join(parts)


CLEARED_NOTE = (
    "Suspected or confirmed during the run, then their growth looked stopped for a whole "
    "window: not leaks at the end of the run, listed so that a flapping finding is visible."
)


def _leaks(run: RunData, entries: Sequence[LeakEntry]) -> str:
    leaks = [e for e in entries if e.status != "cleared"]
    cleared = [e for e in entries if e.status == "cleared"]
    if not leaks:
        out = "<h2>Leaks</h2><p>No leak suspected or confirmed.</p>"
    else:
        out = "<h2>Leaks</h2>" + "".join(_leak(run, leak, i) for i, leak in enumerate(leaks))
    if cleared:
        out += f"<h2>Cleared findings</h2><p class='muted'>{escape(CLEARED_NOTE)}</p>" + "".join(
            _leak(run, e, len(leaks) + i) for i, e in enumerate(cleared)
        )
    return out


def _breaches(run: RunData) -> str:
    breaches = breach_entries(run.summary, run.events)
    if not breaches:
        return "<h2>Threshold breaches</h2><p>None.</p>"
    rows = "".join(
        f"<tr><td>{_e(b['rule'])}</td><td>{_e(b['metric'])}</td>"
        f"<td>{_e(format_metric(b['metric'], b['value']))}</td>"
        f"<td>{_e(format_metric(b['metric'], b['limit']))}</td><td>{_e(b['action'])}</td>"
        f"<td>{escape(format_duration(b['at_s']) if b['at_s'] is not None else '—')}</td></tr>"
        for b in breaches[:500]
    )
    return (
        "<h2>Threshold breaches</h2><table><tr><th>rule</th><th>metric</th><th>value</th>"
        f"<th>limit</th><th>action</th><th>at</th></tr>{rows}</table>"
    )


_TIMELINE = TIMELINE_EVENTS


def _timeline(run: RunData) -> str:
    events = run.events_named(*_TIMELINE)[:300]
    if not events:
        return ""
    skip = {"event", "t", "timestamp", "run_id", "level"}
    rows = "".join(
        f"<tr><td>{escape(format_duration(num(e.get('t')) or 0.0))}</td><td>{_e(e['event'])}</td>"
        f"<td>{_e(', '.join(f'{k}={v}' for k, v in e.items() if k not in skip), 400)}</td></tr>"
        for e in events
    )
    return f"<h2>Events</h2><table><tr><th>t</th><th>event</th><th>fields</th></tr>{rows}</table>"


def render_html(run: RunData) -> str:
    """The whole report page for a loaded run."""
    leaks = leak_entries(run.summary, run.events)
    markers = _markers(run)
    title = f"soakd report {text(run.summary.get('run_id') or run.path.name, 100)}"
    config = run.config if run.config is not None else "config not recorded"
    body = [
        _header(run),
        _overview(run),
        _plots(run, markers),
        _leaks(run, leaks),
        _breaches(run),
        _timeline(run),
        "<h2>Configuration</h2>",
        _json_block(config, 50_000),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        # the page needs nothing from outside: forbid it, so a hostile string cannot load anything
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )
