"""Human units: durations (``90s``, ``10m``, ``1h30m``) and sizes (``512KiB``, ``10G``, ``10MB``).

Parsing for config values, and the one formatting of a value in its unit that reports,
``status``, ``compare`` and the progress line share.
"""

from __future__ import annotations

import math
import re
from typing import Literal

Unit = Literal["bytes", "count", "ratio", "ms", "per_s", "number"]

_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_DURATION = re.compile(rf"^\s*({_NUMBER})\s*$")
# compound, largest unit first, each at most once: 1d2h, 1h30m, 2m30s, 1s500ms (as systemd)
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)\s*")
_DURATION_ORDER = ("d", "h", "m", "s", "ms")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# 10MB is decimal, 10MiB binary; a bare K/M/G/T is binary as in systemd (MemoryHigh=10G)
_SIZE = re.compile(rf"^\s*({_NUMBER})\s*([KMGT]i?B|[KMGT]|B)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
}
_DURATION_HINT = "a duration such as 90s, 10m, 1h30m or 6h"
_SIZE_HINT = "a size such as 512KiB, 10G, 2GiB or 10MB"


def _compound_seconds(text: str) -> float | None:
    """``1h30m`` → 5400.0; None unless the whole text is parts in d, h, m, s, ms order."""
    plain = _DURATION.match(text)
    if plain:
        return float(plain.group(1))
    pos, total, last_rank = 0, 0.0, -1
    text = text.strip()
    if not text:
        return None
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if part is None:
            return None
        rank = _DURATION_ORDER.index(part.group(2))
        if rank <= last_rank:  # "30m1h", "1h1h": ambiguous, refuse
            return None
        last_rank = rank
        total += float(part.group(1)) * _DURATION_FACTORS[part.group(2)]
        pos = part.end()
    return total


def parse_duration(value: object) -> float:
    """Seconds from ``90s``/``10m``/``1h30m``/``250ms``/``1d`` or a plain non-negative number."""
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HINT}, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        parsed = _compound_seconds(value)
        if parsed is None:
            raise ValueError(f"expected {_DURATION_HINT}, got {value!r}")
        seconds = parsed
    else:
        raise ValueError(f"expected {_DURATION_HINT}, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite number ≥ 0, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``512KiB``/``2GiB``/``10G``/``10MB``/``100B`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected {_SIZE_HINT}, got {value!r}")
    if isinstance(value, int | float):
        size = float(value)
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"expected {_SIZE_HINT}, got {value!r}")
        size = float(match.group(1)) * _SIZE_FACTORS[(match.group(2) or "b").lower()]
    else:
        raise ValueError(f"expected {_SIZE_HINT}, got {value!r}")
    if not math.isfinite(size) or size < 0:
        raise ValueError(f"a size must be a finite number ≥ 0, got {value!r}")
    return int(size)


def format_duration(seconds: float) -> str:
    """Short human form: ``1h02m``, ``3m05s``, ``42.0s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


def format_size(size: float) -> str:
    """Binary units: ``1.5 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - loop always returns


def format_value(value: float | None, unit: Unit) -> str:
    """A value in the unit a person reads: ``1.5 MiB``, ``12``, ``3.2%``, ``45 ms``."""
    if value is None or not math.isfinite(value):
        return "n/a" if value is None or math.isnan(value) else ("∞" if value > 0 else "-∞")
    if unit == "bytes":
        if abs(value) >= 1024**4:  # beyond GiB a size is absurd; stay short and exact
            return f"{value:.3g} B"
        sign = "-" if value < 0 else ""
        return sign + format_size(abs(value))
    if unit == "ratio":
        return f"{value * 100:.2f}%"
    if unit == "ms":
        return f"{value:.0f} ms" if abs(value) >= 10 else f"{value:.2f} ms"
    if unit == "per_s":
        return f"{value:.2f}/s"
    if unit == "count":
        return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"
    return f"{value:.4g}"


# JSON Schema of the accepted forms, for editors (``soakd schema``); the parsers above decide.
DURATION_JSON_SCHEMA: dict[str, object] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {
            "type": "string",
            "pattern": r"^\s*(((\d+(\.\d+)?|\.\d+)\s*(ms|s|m|h|d)\s*)+|(\d+(\.\d+)?|\.\d+)\s*)$",
        },
    ],
    "description": "seconds, or a duration such as 90s, 10m, 1h30m, 6h, 250ms, 1d",
}
SIZE_JSON_SCHEMA: dict[str, object] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {
            "type": "string",
            "pattern": r"^\s*(\d+(\.\d+)?|\.\d+)\s*([KkMmGgTt]([iI]?[bB])?|[bB])?\s*$",
        },
    ],
    "description": "bytes, or a size such as 512KiB, 2GiB, 10MB or 10G (binary, as systemd)",
}
