"""What the reports quote beside a value: a rule's value in its metric's unit, a site's code."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

from soakd.coerce import text
from soakd.units import format_duration, format_value

MAX_SOURCE_BYTES = 8 << 20


def format_metric(metric: object, value: float | None) -> str:
    """A rule's value or limit in the metric's unit (sizes as MiB, rates as %)."""
    name = str(metric)
    if name.endswith("_bytes"):
        return format_value(value, "bytes")
    if name == "error_rate":
        return format_value(value, "ratio")
    if name.endswith("_ms"):
        return format_value(value, "ms")
    return "n/a" if value is None else f"{value:g}"


def format_seconds(seconds: float | None) -> str:
    """A span of time that may be short: ``35 ms``, ``4.2s``, ``3m05s``."""
    if seconds is None:
        return "n/a"
    if seconds < 1.0:
        return f"{seconds * 1000.0:.0f} ms"
    return format_duration(seconds)


def source_context(site: str | None, radius: int = 3) -> list[tuple[int, str]] | None:
    """The lines around ``file.py:N`` when that Python file exists here, else None.

    A foreign run dir must not be able to make a report quote arbitrary files of this box
    (soakd often runs as root): only ``.py`` regular files of bounded size, opened without
    following a link and without blocking, that every user of the box may read anyway.
    """
    if not site:
        return None
    path_s, sep, line_s = site.rpartition(":")
    if not sep or not line_s.isdigit() or len(line_s) > 9 or not path_s.endswith(".py"):
        return None
    lineno = int(line_s)
    if not os.path.isabs(path_s):
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path_s, flags)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        # world-readable only: quoting must not show a reader what they could not read
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IROTH:
            return None
        if st.st_size > MAX_SOURCE_BYTES:
            return None
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_SOURCE_BYTES + 1)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    lines = raw.decode("utf-8", errors="replace").splitlines()
    if not 1 <= lineno <= len(lines):
        return None
    lo, hi = max(1, lineno - radius), min(len(lines), lineno + radius)
    return [(n, text(lines[n - 1], 300)) for n in range(lo, hi + 1)]


def verdict_notes(summary: Mapping[str, Any]) -> list[str]:
    """Plain sentences under a verdict: why it is not ``pass``, whether the run was cut short,
    whether the detector judged anything. Every field may be absent (older summaries)."""
    notes: list[str] = []
    if summary.get("interrupted") is True:
        notes.append("Interrupted: the run did not reach its planned end.")
    reason = summary.get("verdict_reason")
    if isinstance(reason, str) and reason:
        notes.append(f"Why: {reason[:2000]}")
    if summary.get("detection_judged") is False:
        notes.append("Not judged: the detector never judged a full window of this run.")
    return notes


def slope_text(value: object) -> str:
    """A memory slope, or "not judged" when the summary has none (null, not 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "not judged"
    return format_value(float(value), "bytes") + "/h"
