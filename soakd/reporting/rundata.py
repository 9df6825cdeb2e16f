"""Loading a run directory into the value object the reports, ``status`` and ``compare`` read.

A run directory may come from another box, may be half-written (the supervisor was killed)
or hostile: nothing here evaluates it (JSON and SQLite only), every number is checked for
being finite, every line and file read is bounded, and a broken file is a ``SoakdError``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from soakd.coerce import dig, num, text
from soakd.errors import SoakdError, SummaryError
from soakd.events import REPORT_EVENTS
from soakd.perturbation import PerturbationLog
from soakd.redact import redact_config
from soakd.rundir import (
    CONFIG,
    EVENTS,
    MAX_JSON_BYTES,
    SAMPLES,
    SUMMARY,
    check_run_dir,
    iter_events,
    load_json_file,
)
from soakd.store import MAX_POINTS, Point, RunStore, SeriesGrowth, Site
from soakd.summary import rebuild_summary

MAX_EVENTS = 200_000

# The series the report plots (each costs one indexed scan of its rows).
CORE_SERIES = (
    "rss_bytes",
    "heap_bytes",
    "traced_bytes",
    "fds",
    "threads",
    "tasks",
    "throughput_per_s",
    "error_rate",
    "latency_p50_ms",
    "latency_p99_ms",
    "first_event_p99_ms",
)
# Events worth keeping in memory; the rest (workload.interval, ...) live in samples.db too.
KEPT_EVENTS: frozenset[str] = REPORT_EVENTS


@dataclass(frozen=True)
class RunData:
    """Everything a report shows, loaded once from a run directory."""

    path: Path
    summary: Mapping[str, Any]
    meta: Mapping[str, str] = field(default_factory=dict)
    events: Sequence[Mapping[str, Any]] = ()
    bad_event_lines: int = 0
    config: object = None
    series: Mapping[str, Sequence[Point]] = field(default_factory=dict)  # downsampled
    site_growth: Sequence[SeriesGrowth] = ()  # all site:* series, most growth first
    type_growth: Sequence[SeriesGrowth] = ()
    sites: Mapping[str, Site] = field(default_factory=dict)
    last_t: float | None = None
    has_store: bool = False

    def events_named(self, *names: str) -> list[Mapping[str, Any]]:
        return [e for e in self.events if e.get("event") in names]

    @cached_property
    def perturbation(self) -> PerturbationLog:
        """soakd's own work in the target, from the ``target.perturbed`` events (bounded)."""
        return PerturbationLog.from_events(self.events)

    @property
    def perturbed_spans(self) -> list[tuple[float, float]]:
        """The merged spans to shade on every time chart."""
        return self.perturbation.spans

    @property
    def warmup_end_s(self) -> float | None:
        """From the summary, else the latest ``detection.warmup_end`` event (a killed run)."""
        value = num(dig(self.summary, "detection", "warmup_end_s"))
        if value is not None:
            return value
        events = self.events_named("detection.warmup_end")
        return num(events[-1].get("warmup_end_s")) if events else None


def load_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The kept events of events.jsonl and the number of unreadable lines."""
    events: list[dict[str, Any]] = []
    bad = 0
    for event in iter_events(path):
        if event is None:
            bad += 1
        elif event["event"] in KEPT_EVENTS and len(events) < MAX_EVENTS:
            events.append(event)
    return events, bad


def load_summary_file(run_dir: Path) -> dict[str, Any]:
    """summary.json as a dict ({} when absent); a SoakdError when it is not a JSON object."""
    path = run_dir / SUMMARY
    if not os.path.lexists(path):  # a link, FIFO or device there is an error, not "absent"
        return {}
    data = load_json_file(path)
    if not isinstance(data, dict):
        raise SummaryError(f"{path} is not a JSON object; not a soakd summary")
    return data


def rebuild_or_read_summary(run_dir: Path) -> dict[str, Any]:
    """The summary recomputed from stored data; a SoakdError when it cannot be."""
    try:
        summary = rebuild_summary(run_dir)
    except SoakdError:
        raise
    except (
        sqlite3.Error,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        RecursionError,
        ArithmeticError,  # a hostile timestamp beyond time_t
    ) as exc:
        raise SummaryError(
            f"cannot rebuild the summary of {run_dir}: {type(exc).__name__}: {text(exc, 300)}"
        ) from None
    if not isinstance(summary, dict):
        raise SummaryError(f"cannot rebuild the summary of {run_dir}")
    return summary


def load_config_dump(run_dir: Path, meta: Mapping[str, str]) -> object:
    """The effective config: config.json, else the ``config`` meta key; None when neither.

    Redacted again on the way out: a run written before redaction existed (or by hand) must
    not put a secret into a report."""
    path = run_dir / CONFIG
    if os.path.lexists(path):
        try:
            return redact_config(load_json_file(path))
        except SoakdError:
            return None  # a broken config dump must not cost the whole report
    raw = meta.get("config")
    if raw is None or len(raw) > MAX_JSON_BYTES:
        return None
    try:
        return redact_config(json.loads(raw))
    except (ValueError, RecursionError):
        return None


def load_run(
    run_dir: Path, summary: Mapping[str, Any] | None = None, max_points: int = MAX_POINTS
) -> RunData:
    """Load a run directory for reporting; a SoakdError (exit 2) when it cannot be read."""
    # reporting.common re-exports this module, so its leak section is imported when used
    from soakd.reporting.common import leak_entries

    check_run_dir(run_dir)
    if summary is None:
        summary = load_summary_file(run_dir)
    events, bad = load_events(run_dir / EVENTS)
    db_path = run_dir / SAMPLES
    if not db_path.is_file():
        return RunData(
            path=run_dir,
            summary=summary,
            events=events,
            bad_event_lines=bad,
            config=load_config_dump(run_dir, {}),
        )
    store = RunStore(db_path)
    try:
        meta = store.meta()
        series = {name: store.plot(name, max_points) for name in CORE_SERIES}
        site_growth = store.growth("site:")
        type_growth = store.growth("type:")
        wanted_sites = [g.name for g in site_growth[:8]]
        wanted_types = [g.name for g in type_growth[:8]]
        leaks = leak_entries(summary, events)
        for leak in leaks:
            if leak.site:
                wanted_sites.append(f"site:{leak.site}")
            if leak.type:
                wanted_types.append(f"type:{leak.type}")
        for name in dict.fromkeys(wanted_sites + wanted_types):
            series[name] = store.plot(name, max_points)
        site_names = [g.name.removeprefix("site:") for g in site_growth[:8]]
        site_names += [leak.site for leak in leaks if leak.site]
        sites = store.sites(list(dict.fromkeys(site_names)))
    finally:
        store.close()
    return RunData(
        path=run_dir,
        summary=summary,
        meta=meta,
        events=events,
        bad_event_lines=bad,
        config=load_config_dump(run_dir, meta),
        series=series,
        site_growth=site_growth,
        type_growth=type_growth,
        sites=sites,
        last_t=max((pts[-1][0] for pts in series.values() if pts), default=None),
        has_store=True,
    )
