"""Server-side SVG line charts: no JavaScript, no network, every string escaped.

Points, min/max buckets and value formatting come from :mod:`soakd.store` and
:mod:`soakd.units` (re-exported here for the report modules).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

from soakd.reporting.format import format_seconds
from soakd.store import Bucket, Point, buckets_to_points
from soakd.units import Unit, format_duration, format_value

__all__ = [
    "PERTURBED_LABEL",
    "Bucket",
    "Chart",
    "Marker",
    "Point",
    "Unit",
    "buckets_to_points",
    "downsample",
    "format_value",
    "nice_ticks",
    "time_ticks",
    "value_ticks",
]

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)
MAX_CHART_POINTS = 1500
MARKER_COLORS = {"warmup": "#888888", "suspected": "#e69500", "confirmed": "#c0392b"}
PERTURBED_LABEL = "soakd's own work in the target"  # the legend of shaded spans
_SHADE = 'fill="#f2a93b" fill-opacity="0.22"'


@dataclass(frozen=True)
class Marker:
    """A vertical line at ``t`` (seconds since run start)."""

    t: float
    label: str
    kind: str  # warmup | suspected | confirmed | breach


def downsample(points: Sequence[Point], max_points: int = 1500) -> list[Point]:
    """At most ``max_points`` points via min/max buckets over time; finite points only."""
    clean = [(t, v) for t, v in points if math.isfinite(t) and math.isfinite(v)]
    if len(clean) <= max_points:
        return clean
    n_buckets = max(1, max_points // 2)
    t0, t1 = clean[0][0], clean[-1][0]
    width = (t1 - t0) / n_buckets or 1.0
    buckets: list[Bucket] = []
    cur: list[Point] = []
    cur_idx = 0
    for t, v in clean:
        idx = min(n_buckets - 1, int((t - t0) / width))
        if cur and idx != cur_idx:
            buckets.append(_bucket(cur))
            cur = []
        cur_idx = idx
        cur.append((t, v))
    if cur:
        buckets.append(_bucket(cur))
    return buckets_to_points(buckets)


def _bucket(points: Sequence[Point]) -> Bucket:
    values = [v for _, v in points]
    return Bucket(points[0][0], points[-1][0], min(values), max(values), sum(values) / len(values))


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (the classic 1-2-5 "nice numbers" scheme)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks: list[float] = []
    value = start
    while value <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)


def time_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Ticks on round durations (1 min, 5 min, 1 h, ...) rather than decimal numbers."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return nice_ticks(lo, hi, count)
    raw = (hi - lo) / max(1, count)
    step = next((float(s) for s in _TIME_STEPS if s >= raw), None)
    if step is None:
        step = math.ceil(raw / 86400) * 86400.0
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) // step) + 1)][:50]


def value_ticks(lo: float, hi: float, unit: Unit, count: int = 4) -> list[float]:
    """Nice ticks; sizes tick on round KiB/MiB/GiB rather than round decimal bytes."""
    if unit != "bytes" or not (math.isfinite(lo) and math.isfinite(hi)):
        return nice_ticks(lo, hi, count)
    scale = 1.0
    while max(abs(lo), abs(hi)) / scale >= 1024 and scale < 1024.0**3:
        scale *= 1024
    return [t * scale for t in nice_ticks(lo / scale, hi / scale, count)]


def _tick_label(value: float, unit: Unit) -> str:
    if unit == "bytes":
        return format_value(value, unit).replace(".0 ", " ")
    return format_value(value, unit)


@dataclass(frozen=True)
class Chart:
    """One line chart; ``render`` returns an ``<svg>`` element."""

    title: str
    series: Mapping[str, Sequence[Point]]
    unit: Unit = "number"
    markers: Sequence[Marker] = ()
    labels: Mapping[str, str] | None = None  # legend text per series (full name stays in title)
    # spans (start, end in seconds since run start) when soakd worked in the target: shaded
    shades: Sequence[tuple[float, float]] = ()
    width: int = 760
    height: int = 230
    zero_based: bool = True

    def render(self) -> str:
        left, right, top, bottom = 78, 12, 26, 30
        # bounded and finite whatever the caller passed (the store already downsamples)
        series = {n: downsample(pts, MAX_CHART_POINTS) for n, pts in self.series.items()}
        names = [n for n, pts in series.items() if pts]
        legend_items = len(names) + (1 if self.shades else 0)
        legend_rows = math.ceil(legend_items / 2) if legend_items else 1
        total_h = self.height + legend_rows * 18 + 6
        plot_w = self.width - left - right
        plot_h = self.height - top - bottom
        all_pts = [p for n in names for p in series[n]]
        title_text = f"{self.title} — {', '.join(self.series) or 'no series'}"
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'width="{self.width}" height="{total_h}" viewBox="0 0 {self.width} {total_h}">',
            f"<title>{escape(title_text)}</title>",
            f'<text x="{left}" y="16" class="ct">{escape(self.title)}</text>',
            f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>',
        ]
        if not all_pts:
            parts.append(
                f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" class="empty" '
                'text-anchor="middle">no samples</text></svg>'
            )
            return "".join(parts)
        t_lo = min(p[0] for p in all_pts)
        t_hi = max(p[0] for p in all_pts)
        for m in self.markers:
            if math.isfinite(m.t):
                t_lo, t_hi = min(t_lo, m.t), max(t_hi, m.t)
        v_lo = min(p[1] for p in all_pts)
        v_hi = max(p[1] for p in all_pts)
        if self.zero_based and v_lo >= 0:
            v_lo = 0.0
        if v_hi == v_lo:
            pad = abs(v_hi) * 0.1 or 1.0
            v_lo, v_hi = v_lo - (pad if v_lo != 0 else 0), v_hi + pad
        t_span = (t_hi - t_lo) or 1.0
        # halves first: the span of two huge values of opposite sign would overflow to inf
        v_span = (v_hi / 2 - v_lo / 2) * 2 or 1.0
        if not math.isfinite(v_span):
            v_span = 1.0

        def x(t: float) -> float:
            return left + (t - t_lo) / t_span * plot_w

        def y(v: float) -> float:
            return top + plot_h - (v - v_lo) / v_span * plot_h

        boxes = _shade_boxes(self.shades, t_lo, t_hi, x)
        for x0, x1, a, b in boxes:  # behind the grid and the lines
            parts.append(
                f'<rect x="{x0:.1f}" y="{top}" width="{x1 - x0:.1f}" height="{plot_h}" '
                f'{_SHADE} class="perturbed"><title>{escape(PERTURBED_LABEL)}: '
                f"{escape(format_duration(max(0.0, a)))} + {escape(format_seconds(b - a))}"
                "</title></rect>"
            )
        for tick in value_ticks(v_lo, v_hi, self.unit):
            yy = y(tick)
            parts.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
                f'<text x="{left - 4}" y="{yy + 4:.1f}" text-anchor="end" class="tick">'
                f"{escape(_tick_label(tick, self.unit))}</text>"
            )
        for tick in time_ticks(t_lo, t_hi, 6 if self.width > 600 else 4):
            xx = x(tick)
            label = format_duration(max(0.0, tick))
            # centred, unless that would cut it at the chart's right edge (the last tick)
            half = len(label) * TICK_CHAR_W / 2
            anchor, tx = ("end", self.width - 2) if xx + half > self.width - 2 else ("middle", xx)
            parts.append(
                f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
                f'class="axis"/><text x="{tx:.1f}" y="{top + plot_h + 16}" '
                f'text-anchor="{anchor}" class="tick">{escape(label)}</text>'
            )
        shown = [m for m in self.markers if math.isfinite(m.t)]
        placed = place_labels([x(m.t) for m in shown], [m.label[:40] for m in shown],
                              left, left + plot_w)  # fmt: skip
        for m, spot in zip(shown, placed, strict=True):
            xx = x(m.t)
            color = MARKER_COLORS.get(m.kind, "#555555")
            dash = ' stroke-dasharray="4 3"' if m.kind == "warmup" else ""
            label = ""
            if spot is not None:  # else no room: the line's tooltip still names it
                lx, row, anchor = spot
                label = (
                    f'<text x="{lx:.1f}" y="{top + 10 + row * MARKER_ROW_H}" class="mlabel" '
                    f'text-anchor="{anchor}" fill="{color}">{escape(m.label[:40])}</text>'
                )
            parts.append(
                f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + plot_h}" '
                f'stroke="{color}" stroke-width="1.2"{dash} class="marker marker-{escape(m.kind)}">'
                f"<title>{escape(m.label)} at {escape(format_duration(max(0.0, m.t)))}</title>"
                f"</line>{label}"
            )
        for i, name in enumerate(names):
            color = PALETTE[i % len(PALETTE)]
            d = _path(series[name], x, y)
            parts.append(
                f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5" '
                f'data-series="{escape(name)}"><title>{escape(name)}</title></path>'
            )
        for i, name in enumerate(names):
            color = PALETTE[i % len(PALETTE)]
            lx = left + (i % 2) * (plot_w / 2)
            ly = self.height + (i // 2) * 18
            label = (self.labels or {}).get(name, name)
            last = series[name][-1][1]
            parts.append(
                f'<g class="legend"><rect x="{lx:.1f}" y="{ly - 9}" width="12" height="4" '
                f'fill="{color}"/><text x="{lx + 16:.1f}" y="{ly - 4}" class="lg">'
                f"<title>{escape(name)}</title>{escape(_clip(label, 60))} "
                f"(last {escape(format_value(last, self.unit))})</text></g>"
            )
        if self.shades:
            i = len(names)
            lx = left + (i % 2) * (plot_w / 2)
            ly = self.height + (i // 2) * 18
            seen = "" if boxes else " (none in this range)"
            parts.append(
                f'<g class="legend legend-perturbed"><rect x="{lx:.1f}" y="{ly - 11}" width="12" '
                f'height="8" {_SHADE}/><text x="{lx + 16:.1f}" y="{ly - 4}" class="lg">'
                f"{escape(PERTURBED_LABEL)}{seen}</text></g>"
            )
        parts.append("</svg>")
        return "".join(parts)


# Width estimates of the 10 px sans-serif labels (generous: an overlap is worse than a gap).
MARKER_CHAR_W = 6.0
TICK_CHAR_W = 6.0
MARKER_ROW_H = 11
MARKER_ROWS = 3


def place_labels(
    xs: Sequence[float], labels: Sequence[str], lo: float, hi: float, rows: int = MARKER_ROWS
) -> list[tuple[float, int, str] | None]:
    """Where each marker's label goes: ``(x, row, text-anchor)``, or None when no row has room.

    Pure and greedy, left to right: a label sits right of its line (left of it near the right
    edge, so it is never cut), in the first of ``rows`` rows where it does not overlap the
    previous label; a marker too crowded for any row keeps only its line and tooltip.
    """
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ends = [-math.inf] * rows  # right edge of the last label per row
    out: list[tuple[float, int, str] | None] = [None] * len(xs)
    for i in order:
        w = len(labels[i]) * MARKER_CHAR_W
        x0, anchor, tx = xs[i] + 3, "start", xs[i] + 3
        if x0 + w > hi:
            x0, anchor, tx = xs[i] - 3 - w, "end", xs[i] - 3
        if x0 < lo - 1:
            continue  # wider than the plot on both sides of its line
        for row in range(rows):
            if x0 > ends[row] + 2:
                ends[row] = x0 + w
                out[i] = (tx, row, anchor)
                break
    return out


def _shade_boxes(
    spans: Sequence[tuple[float, float]],
    t_lo: float,
    t_hi: float,
    x: Callable[[float], float],
) -> list[tuple[float, float, float, float]]:
    """Pixel boxes (x0, x1, start, end) of the spans within [t_lo, t_hi]: at least a pixel
    wide, and merged when closer than a pixel, so a day of spans stays a few hundred rects."""
    out: list[tuple[float, float, float, float]] = []
    clean = sorted((a, b) for a, b in spans if math.isfinite(a) and math.isfinite(b) and b >= a)
    for a, b in clean:
        if b < t_lo or a > t_hi:
            continue
        a, b = max(a, t_lo), min(b, t_hi)
        x0, x1 = x(a), x(b)
        if x1 - x0 < 1.0:
            x0, x1 = x0 - 0.5, x0 + 0.5
        if out and x0 <= out[-1][1] + 1.0:
            px0, px1, pa, pb = out[-1]
            out[-1] = (px0, max(px1, x1), pa, max(pb, b))
        else:
            out.append((x0, x1, a, b))
    return out


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _path(points: Sequence[Point], x: Callable[[float], float], y: Callable[[float], float]) -> str:
    return "M" + " L".join(f"{x(t):.1f} {y(v):.1f}" for t, v in points)
