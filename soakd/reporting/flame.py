"""Where the memory grew, by full traceback: a flame graph, collapsed stacks, speedscope JSON.

The input is the diff of two snapshots grouped by traceback (``soakd diff --group-by
traceback``); each stack's weight is its growth in bytes. Only stacks that grew are drawn: a
flame graph's widths must add up, and shrinking stacks are freed memory, not where it went
(``soakd diff`` lists them). The SVG is drawn here, server-side: no script, no network, every
string escaped, so it sits in the self-contained report.html.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from soakd.snapshots import DiffRow
from soakd.units import format_size

__all__ = ["Stack", "collapsed", "flame_svg", "growth_stacks", "speedscope"]

MAX_STACKS = 2_000  # a snapshot holds at most a few hundred entries; past this it is hostile


@dataclass(frozen=True)
class Stack:
    """One traceback, outermost frame first, and the bytes it grew by."""

    frames: tuple[str, ...]
    growth: int


def growth_stacks(rows: Sequence[DiffRow]) -> list[Stack]:
    """The stacks that grew, largest first, from a diff grouped by traceback."""
    out = [
        Stack(tuple(reversed(r.traceback or (r.site,)))[-64:] or (r.site,), r.size_diff)
        for r in rows
        if r.size_diff > 0
    ]
    out.sort(key=lambda s: (-s.growth, s.frames))
    return out[:MAX_STACKS]


def _frame(name: str) -> str:
    # collapsed format: ';' separates frames and a newline ends the stack
    return name.replace(";", ":").replace("\n", " ").replace("\r", " ") or "?"


def collapsed(stacks: Sequence[Stack]) -> str:
    """Brendan Gregg's collapsed stacks (``a;b;c 4096`` a line), for flamegraph.pl, inferno,
    speedscope and most flame graph tools; the weights are bytes grown."""
    lines = [f"{';'.join(_frame(f) for f in s.frames)} {s.growth}" for s in stacks]
    return "".join(line + "\n" for line in lines)


def _split(frame: str) -> tuple[str, int | None]:
    path, sep, line = frame.rpartition(":")
    if sep and line.isdigit():
        return path, int(line)
    return frame, None


def speedscope(stacks: Sequence[Stack], name: str) -> dict[str, Any]:
    """A speedscope file (https://www.speedscope.app/file-format-schema.json): one sampled
    profile whose samples are the stacks and whose weights are the bytes each grew by."""
    index: dict[str, int] = {}
    frames: list[dict[str, Any]] = []
    samples: list[list[int]] = []
    for s in stacks:
        ids = []
        for f in s.frames:
            if f not in index:
                index[f] = len(frames)
                path, line = _split(f)
                entry: dict[str, Any] = {"name": f"{os.path.basename(path)}:{line}" if line else f}
                entry["file"] = path
                if line is not None:
                    entry["line"] = line
                frames.append(entry)
            ids.append(index[f])
        samples.append(ids)
    total = sum(s.growth for s in stacks)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": "soakd",
        "name": name,
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": "bytes",
                "startValue": 0,
                "endValue": total,
                "samples": samples,
                "weights": [s.growth for s in stacks],
            }
        ],
    }


# -- the SVG -------------------------------------------------------------------------------
@dataclass
class _Node:
    name: str
    value: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(stacks: Sequence[Stack]) -> _Node:
    root = _Node("all")
    for s in stacks:
        root.value += s.growth
        node = root
        for f in s.frames:
            node = node.children.setdefault(f, _Node(f))
            node.value += s.growth
    return root


ROW = 18
FONT = 11
CHAR_W = 6.2  # average glyph width of the 11 px sans-serif used, for label truncation


def _color(name: str) -> str:
    # warm flame colours, stable per frame (not random: two reports of one leak look alike)
    h = hashlib.blake2b(name.encode("utf-8", "replace"), digest_size=2).digest()
    return f"rgb({205 + h[0] % 50},{80 + h[1] % 130},{40 + (h[0] ^ h[1]) % 40})"


def _label(name: str, width: float) -> str:
    short = os.path.basename(name) or name
    room = int((width - 6) / CHAR_W)
    if room < 3:
        return ""
    return short if len(short) <= room else short[: room - 1] + "…"


def flame_svg(stacks: Sequence[Stack], title: str, width: int = 1160) -> str:
    """A flame graph of ``stacks`` (root at the bottom, callees above, widths ∝ bytes grown).

    Each frame is a ``<g class="ff">`` holding a ``<title>`` (frame, bytes, share), a
    ``<rect>`` and, when it fits, a ``<text>`` label; frames narrower than a pixel are merged
    into their parent's width (not drawn). Deterministic: children in alphabetical order.
    """
    root = _tree(stacks)
    if root.value <= 0:
        return ""
    depth = _depth(root)
    height = (depth + 1) * ROW + 34
    scale = (width - 20) / root.value
    parts: list[str] = []

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.value * scale
        if w < 1.0:
            return
        y = height - 10 - (level + 1) * ROW
        share = node.value / root.value * 100
        tip = f"{node.name} — {format_size(node.value)} grown ({share:.1f} %)"
        label = _label(node.name, w)
        text = (
            f'<text x="{x + 3:.1f}" y="{y + ROW - 5}" font-size="{FONT}">{escape(label)}</text>'
            if label
            else ""
        )
        parts.append(
            f'<g class="ff"><title>{escape(tip)}</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 1}" '
            f'fill="{_color(node.name)}" rx="2"/>{text}</g>'
        )
        cx = x
        for name in sorted(node.children):
            child = node.children[name]
            draw(child, cx, level + 1)
            cx += child.value * scale

    draw(root, 10.0, 0)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flame" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'font-family="sans-serif"><title>{escape(title)}</title>'
        f'<text x="10" y="16" font-size="12">{escape(title)}</text>' + "".join(parts) + "</svg>"
    )


def _depth(node: _Node) -> int:
    best, todo = 0, [(node, 0)]
    while todo:
        n, d = todo.pop()
        best = max(best, d)
        todo.extend((c, d + 1) for c in n.children.values())
    return best


def dumps_speedscope(stacks: Sequence[Stack], name: str) -> str:
    return json.dumps(speedscope(stacks, name), separators=(",", ":")) + "\n"
