"""Shared names of the report modules, re-exported for the modules that import them from here.

Run loading (:mod:`soakd.reporting.rundata`), value coercion (:mod:`soakd.coerce`), run
file names (:mod:`soakd.rundir`) and quoting (:mod:`soakd.reporting.format`) are re-exported
here for the modules that import them from this one.
"""

from __future__ import annotations

from soakd.coerce import compact_json, dig, num, text
from soakd.leaks import LeakEntry, breach_entries, leak_entries
from soakd.reporting.format import MAX_SOURCE_BYTES, format_metric, source_context
from soakd.reporting.rundata import (
    CORE_SERIES,
    KEPT_EVENTS,
    MAX_EVENTS,
    RunData,
    load_config_dump,
    load_events,
    load_run,
    load_summary_file,
    rebuild_or_read_summary,
)
from soakd.rundir import (
    CONFIG,
    EVENTS,
    MAX_JSON_BYTES,
    SAMPLES,
    SUMMARY,
    check_run_dir,
    load_json_file,
)
from soakd.store import MAX_POINTS, Site
from soakd.store import SeriesGrowth as Growth

__all__ = [
    "CONFIG",
    "CORE_SERIES",
    "EVENTS",
    "KEPT_EVENTS",
    "MAX_EVENTS",
    "MAX_JSON_BYTES",
    "MAX_POINTS",
    "MAX_SOURCE_BYTES",
    "SAMPLES",
    "SUMMARY",
    "Growth",
    "LeakEntry",
    "RunData",
    "Site",
    "breach_entries",
    "check_run_dir",
    "compact_json",
    "dig",
    "format_metric",
    "leak_entries",
    "load_config_dump",
    "load_events",
    "load_json_file",
    "load_run",
    "load_summary_file",
    "num",
    "rebuild_or_read_summary",
    "source_context",
    "text",
]
