"""Loading a run directory into a value object the reports, ``status`` and ``compare`` read.

A run directory may come from another box, may be half-written (the supervisor was killed)
or hostile: nothing here evaluates it (JSON and SQLite only), every number is checked for
being finite, every line and file read is bounded, and a broken store is a CommandError.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soakd.errors import EXIT_USAGE, CommandError
from soakd.reporting.svg import Bucket, Point, buckets_to_points, format_value
from soakd.rundir import iter_events

SUMMARY = "summary.json"
EVENTS = "events.jsonl"
SAMPLES = "samples.db"
CONFIG = "config.json"

MAX_POINTS = 1500
MAX_EVENTS = 200_000
MAX_JSON_BYTES = 64 << 20
MAX_SOURCE_BYTES = 8 << 20
_FINITE = "BETWEEN -1e300 AND 1e300"  # also drops NaN/inf and non-numeric text of a foreign db

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
KEPT_EVENTS = frozenset(
    {
        "run.started",
        "run.stopping",
        "run.finished",
        "worker.started",
        "worker.ready",
        "worker.exited",
        "target.failed",
        "tracing.started",
        "tracing.stopped",
        "snapshot.saved",
        "leak.suspected",
        "leak.confirmed",
        "leak.cleared",
        "threshold.breached",
        "alert.sent",
        "alert.failed",
        "detection.warmup_end",
    }
)


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


def text(value: object, limit: int = 500) -> str:
    """A bounded one-line string for display (escaping is the renderer's job)."""
    s = value if isinstance(value, str) else "" if value is None else str(value)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def load_json_file(path: Path) -> Any:
    """Parse a JSON file; a CommandError (exit 2) naming the file when it is not usable."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    if len(raw) > MAX_JSON_BYTES:
        raise CommandError(f"{path} is larger than {MAX_JSON_BYTES} bytes; not a soakd file")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and integers too long to convert
        raise CommandError(f"{path} is not valid JSON: {text(exc, 200)}") from None


@dataclass(frozen=True)
class Growth:
    """A series' first and last value (growth = last - first)."""

    name: str
    first: float
    last: float
    t_first: float
    t_last: float

    @property
    def growth(self) -> float:
        return self.last - self.first


@dataclass(frozen=True)
class Site:
    traceback: tuple[str, ...]
    line: str | None


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
    site_growth: Sequence[Growth] = ()  # all site:* series, most growth first
    type_growth: Sequence[Growth] = ()
    sites: Mapping[str, Site] = field(default_factory=dict)
    last_t: float | None = None
    has_store: bool = False

    def events_named(self, *names: str) -> list[Mapping[str, Any]]:
        return [e for e in self.events if e.get("event") in names]

    @property
    def warmup_end_s(self) -> float | None:
        """From the summary, else the latest ``detection.warmup_end`` event (a killed run)."""
        value = num(dig(self.summary, "detection", "warmup_end_s"))
        if value is not None:
            return value
        events = self.events_named("detection.warmup_end")
        return num(events[-1].get("warmup_end_s")) if events else None


def check_run_dir(run_dir: Path) -> None:
    """A CommandError (exit 2) unless ``run_dir`` looks like a soakd run directory."""
    if not run_dir.exists():
        raise CommandError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise CommandError(f"not a directory: {run_dir}; pass a soakd run directory")
    if not any((run_dir / n).is_file() for n in (SUMMARY, EVENTS, SAMPLES)):
        raise CommandError(
            f"not a soakd run directory (no {SUMMARY}, {EVENTS} or {SAMPLES}): {run_dir}"
        )


def open_store(path: Path) -> sqlite3.Connection:
    """Read-only connection to samples.db; CommandError when it is not a soakd store."""
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise CommandError(f"{path} is not a readable SQLite database: {exc}") from None
    missing = {"meta", "samples", "sites"} - tables
    if missing:
        db.close()
        raise CommandError(f"{path} is not a soakd sample store (missing {sorted(missing)})")
    return db


class Store:
    """Queries over samples.db that stay fast on 24 h of 1 Hz data (SQL does the bucketing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_store(path)

    def close(self) -> None:
        self.db.close()

    def _q(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, params).fetchall()
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            raise CommandError(f"{self.path}: cannot read the sample store: {exc}") from None

    def meta(self) -> dict[str, str]:
        return {
            str(k): v if isinstance(v, str) else str(v)
            for k, v in self._q("SELECT key, value FROM meta LIMIT 10000")
        }

    def last_t(self, names: Sequence[str] = CORE_SERIES) -> float | None:
        """The newest sample time of ``names`` (index lookups, not a scan of the table)."""
        times = [p[0] for p in (self.edge(n, last=True) for n in names) if p is not None]
        return max(times) if times else None

    def edge(self, name: str, *, last: bool) -> Point | None:
        """The first (or last) finite point of one series."""
        rows = self._q(
            f"SELECT t, value FROM samples WHERE series=? AND t {_FINITE} AND value {_FINITE} "
            f"ORDER BY t {'DESC' if last else 'ASC'} LIMIT 1",
            (name,),
        )
        return (float(rows[0][0]), float(rows[0][1])) if rows else None

    def names(self, prefix: str, limit: int = 100_000) -> list[str]:
        """Series names starting with ``prefix``: one index seek per name (skip scan)."""
        out: list[str] = []
        hi = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        cur = prefix
        while len(out) < limit:
            rows = self._q(
                "SELECT series FROM samples WHERE series > ? AND series < ? "
                "ORDER BY series LIMIT 1",
                (cur, hi),
            )
            if not rows or not isinstance(rows[0][0], str):
                return out
            cur = rows[0][0]
            out.append(cur)
        return out

    def last_value(self, name: str) -> float | None:
        point = self.edge(name, last=True)
        return None if point is None else point[1]

    def raw(self, name: str, since: float | None = None) -> list[Point]:
        """Every point of one series (optionally from ``since``), for statistics."""
        rows = self._q(
            f"SELECT t, value FROM samples WHERE series=? AND t {_FINITE} AND value {_FINITE} "
            "AND t >= ? ORDER BY t",
            (name, -1e300 if since is None else since),
        )
        return [(float(t), float(v)) for t, v in rows]

    def plot(self, name: str, max_points: int = MAX_POINTS) -> list[Point]:
        """One series downsampled by min/max buckets to at most ``max_points`` points."""
        where = f"series=? AND t {_FINITE} AND value {_FINITE}"
        rows = self._q(f"SELECT MIN(t), MAX(t), COUNT(*) FROM samples WHERE {where}", (name,))
        t0, t1, count = rows[0] if rows else (None, None, 0)
        if not count:
            return []
        if count <= max_points:
            return self.raw(name)
        n = max(1, max_points // 2)
        width = (float(t1) - float(t0)) / n or 1.0
        rows = self._q(
            "SELECT MIN(CAST((t - ?) / ? AS INTEGER), ?) AS b, MIN(t), MAX(t), "
            f"MIN(value), MAX(value), AVG(value) FROM samples WHERE {where} GROUP BY b ORDER BY b",
            (t0, width, n - 1, name),
        )
        buckets = [Bucket(*(float(c) for c in row[1:])) for row in rows]
        return buckets_to_points(buckets)

    def growth(self, prefix: str) -> list[Growth]:
        """First/last value of every series named ``prefix*``, most growth first."""
        out = []
        for name in self.names(prefix):
            first, last = self.edge(name, last=False), self.edge(name, last=True)
            if first is not None and last is not None:
                out.append(Growth(name, first[1], last[1], first[0], last[0]))
        out.sort(key=lambda g: g.growth, reverse=True)
        return out

    def sites(self, names: Sequence[str]) -> dict[str, Site]:
        out: dict[str, Site] = {}
        for name in names:
            rows = self._q("SELECT traceback, line FROM sites WHERE site=? LIMIT 1", (name,))
            if rows:
                out[name] = Site(_traceback(rows[0][0]), _opt_str(rows[0][1]))
        return out


def _traceback(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, str) or len(raw) > 1_000_000:
        return ()
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return ()
    if not isinstance(value, list):
        return ()
    return tuple(text(f, 1000) for f in value[:200] if isinstance(f, str))


def _opt_str(value: object) -> str | None:
    return text(value, 2000) if isinstance(value, str) else None


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
    """summary.json as a dict ({} when absent); CommandError when it is not a JSON object."""
    path = run_dir / SUMMARY
    if not path.is_file():
        return {}
    data = load_json_file(path)
    if not isinstance(data, dict):
        raise CommandError(f"{path} is not a JSON object; not a soakd summary")
    return data


def rebuild_or_read_summary(run_dir: Path) -> dict[str, Any]:
    """The summary recomputed from stored data when soakd.summary can, else summary.json."""
    try:
        from soakd.summary import rebuild_summary
    except ImportError:
        return load_summary_file(run_dir)
    try:
        summary = rebuild_summary(run_dir)
    except CommandError:
        raise
    except (sqlite3.Error, OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CommandError(
            f"cannot rebuild the summary of {run_dir}: {type(exc).__name__}: {text(exc, 300)}"
        ) from None
    if not isinstance(summary, dict):
        raise CommandError(f"cannot rebuild the summary of {run_dir}")
    return summary


def load_config_dump(run_dir: Path, meta: Mapping[str, str]) -> object:
    """The effective config: config.json, else the ``config`` meta key; None when neither."""
    path = run_dir / CONFIG
    if path.is_file():
        try:
            return load_json_file(path)
        except CommandError:
            return None  # a broken config dump must not cost the whole report
    raw = meta.get("config")
    if raw is None or len(raw) > MAX_JSON_BYTES:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def load_run(
    run_dir: Path, summary: Mapping[str, Any] | None = None, max_points: int = MAX_POINTS
) -> RunData:
    """Load a run directory for reporting; CommandError (exit 2) when it cannot be read."""
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
    store = Store(db_path)
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


@dataclass(frozen=True)
class LeakEntry:
    """A confirmed leak (summary) or a suspect (events), with the statistics behind it."""

    status: str  # confirmed | suspected | cleared
    kind: str
    site: str | None
    traceback: tuple[str, ...]
    line: str | None
    type: str | None
    slope_per_h: float | None
    slope_low_per_h: float | None
    unit: str
    growth: float | None
    p_value: float | None
    first_detected_s: float | None
    analyses: object
    signals: object

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.kind, self.site, self.type)


def _leak_from(data: Mapping[str, Any], status: str) -> LeakEntry:
    tb = data.get("traceback")
    return LeakEntry(
        status=status,
        kind=text(data.get("kind") or "?", 40),
        site=_opt_str(data.get("site")),
        traceback=tuple(text(f, 1000) for f in tb[:200] if isinstance(f, str))
        if isinstance(tb, list)
        else (),
        line=_opt_str(data.get("line")),
        type=_opt_str(data.get("type")),
        slope_per_h=num(data.get("slope_per_h")),
        slope_low_per_h=num(data.get("slope_low_per_h")),
        unit=text(data.get("unit") or "bytes", 20),
        growth=num(data.get("growth")),
        p_value=num(data.get("p_value")),
        first_detected_s=num(data.get("first_detected_s")),
        analyses=data.get("analyses"),
        signals=data.get("signals"),
    )


def leak_entries(
    summary: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> list[LeakEntry]:
    """Confirmed leaks (summary order, enriched by their latest event), then open suspects."""
    latest: dict[tuple[str, str | None, str | None], tuple[str, Mapping[str, Any]]] = {}
    for e in events:
        name = e.get("event")
        if name not in ("leak.suspected", "leak.confirmed", "leak.cleared"):
            continue
        entry = _leak_from(e, "")
        status = str(name).removeprefix("leak.")
        latest[entry.key] = (status, e)
    out: list[LeakEntry] = []
    seen: set[tuple[str, str | None, str | None]] = set()
    leaks = summary.get("leaks")
    for raw in leaks if isinstance(leaks, list) else []:
        if not isinstance(raw, Mapping):
            continue
        key = _leak_from(raw, "").key
        merged: dict[str, Any] = {}
        if key in latest:
            merged.update(latest[key][1])
        merged.update({k: v for k, v in raw.items() if v is not None})
        out.append(_leak_from(merged, "confirmed"))
        seen.add(key)
    for key, (status, e) in latest.items():
        if key in seen:
            continue
        # a confirmation the summary does not list yet (mid-run) still counts as confirmed
        out.append(_leak_from(e, status))
    order = {"confirmed": 0, "suspected": 1, "cleared": 2}
    out.sort(key=lambda leak: order.get(leak.status, 3))
    return out


def breach_entries(
    summary: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Breaches from the summary, else from threshold.breached events (a killed run)."""
    breach_events = [e for e in events if e.get("event") == "threshold.breached"]
    metric_of = {str(e.get("rule")): e.get("metric") for e in breach_events}
    raw = summary.get("breaches")
    source = raw if isinstance(raw, list) and raw else breach_events
    out = []
    for b in source:
        if not isinstance(b, Mapping):
            continue
        at = b.get("at_s") if b.get("at_s") is not None else b.get("t")
        metric = b.get("metric") or metric_of.get(str(b.get("rule")))  # the contract lacks it
        out.append(
            {
                "rule": text(b.get("rule"), 200),
                "metric": text(metric, 100),
                "value": num(b.get("value")),
                "limit": num(b.get("limit")),
                "action": text(b.get("action"), 20),
                "at_s": num(at),
            }
        )
    return out


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


def compact_json(value: object, limit: int = 1000) -> str:
    """One-line JSON for display (falls back to str for what JSON cannot hold)."""
    try:
        dumped = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        dumped = str(value)
    return text(dumped, limit)


def source_context(site: str | None, radius: int = 3) -> list[tuple[int, str]] | None:
    """The lines around ``file.py:N`` when that Python file exists here, else None.

    Only ``.py`` files of bounded size are read: a foreign run dir must not be able to make
    a report quote arbitrary files of this box.
    """
    if not site:
        return None
    path_s, sep, line_s = site.rpartition(":")
    if not sep or not line_s.isdigit() or len(line_s) > 9 or not path_s.endswith(".py"):
        return None
    lineno = int(line_s)
    path = Path(path_s)
    try:
        if not path.is_absolute() or not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
            return None
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except (OSError, ValueError):
        return None
    if not 1 <= lineno <= len(lines):
        return None
    lo, hi = max(1, lineno - radius), min(len(lines), lineno + radius)
    return [(n, text(lines[n - 1], 300)) for n in range(lo, hi + 1)]
