"""Prometheus text exposition (format 0.0.4): metric families in, one text document out.

Kept apart from the state (:mod:`soakd.sinks.run_metrics`) and the HTTP server
(:mod:`soakd.sinks.metrics`), as prometheus_client keeps ``exposition.py`` apart from its
collectors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["CONTENT_TYPE", "Family", "escape_label", "format_value", "labels", "render_text"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Family:
    """One metric family: its name, type, help and samples (series with labels, value)."""

    name: str
    type: str
    help: str
    samples: tuple[tuple[str, float], ...]


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(pairs: Mapping[str, str]) -> str:
    """``{k="v",...}`` (empty without pairs), values escaped."""
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs.items())
    return "{" + inner + "}"


def format_value(v: float) -> str:
    """A sample value: integers without a decimal point; NaN and ±Inf as the format spells them."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def render_text(families: Iterable[Family]) -> str:
    """The exposition of ``families`` in order; a family without samples is left out."""
    out: list[str] = []
    for fam in families:
        if not fam.samples:
            continue
        out.append(f"# HELP {fam.name} {fam.help}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        out.extend(f"{series} {format_value(v)}" for series, v in fam.samples)
    return "\n".join(out) + "\n"
