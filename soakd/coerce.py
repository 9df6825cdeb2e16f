"""Coercion of values read from a run directory, which may be foreign, damaged or hostile.

The one finite-number check (``num``) and bounded display text (``text``) that every reader of
run files shares; nothing here raises on bad input, it answers None or a bounded string.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

__all__ = ["compact_json", "dig", "num", "opt_str", "printable", "text"]

# Terminal control characters (ESC starts colour, cursor and title sequences; CR overwrites a
# line; C1 codes are ESC's 8-bit forms). Tab and newline stay: they only move the cursor on.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def num(value: object) -> float | None:
    """A finite float, or None for anything else (strings, bools, NaN, inf, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def dig(data: object, *keys: str) -> object:
    """``data[k1][k2]...`` or None when any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def printable(value: str) -> str:
    """``value`` with terminal control characters shown as ``\\xNN`` instead of acted on."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def text(value: object, limit: int = 500) -> str:
    """A bounded string for display, control characters escaped (a run file's strings reach
    terminals); HTML escaping is the renderer's job."""
    s = value if isinstance(value, str) else "" if value is None else str(value)
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return printable(s)


def opt_str(value: object, limit: int = 2000) -> str | None:
    """A bounded string when ``value`` is one, else None."""
    return text(value, limit) if isinstance(value, str) else None


def compact_json(value: object, limit: int = 1000) -> str:
    """One-line JSON for display (falls back to str for what JSON cannot hold)."""
    try:
        dumped = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        dumped = str(value)
    return text(dumped, limit)
