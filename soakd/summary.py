"""summary.json (schema ``soakd.summary/1``), built from what is on disk.

One code path serves the live run (checkpoints and the end) and ``soakd report`` on a run whose
supervisor was killed: the summary is always a function of ``samples.db`` and ``events.jsonl``
(plus the supervisor's final word when it had one), so both agree by construction.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import math
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from soakd import rundir
from soakd.detection import KIND_RANK
from soakd.errors import (
    EXIT_ABORTED,
    EXIT_INTERNAL,
    EXIT_LEAK,
    EXIT_PASS,
    EXIT_TARGET_FAILED,
    CommandError,
)
from soakd.sinks.store import StoreReader

SCHEMA = "soakd.summary/1"
VERDICT_EXIT = {
    "pass": EXIT_PASS,
    "leak": EXIT_LEAK,
    "aborted": EXIT_ABORTED,
    "target_failed": EXIT_TARGET_FAILED,
    "error": EXIT_INTERNAL,
}
_PCT = ("p50", "p90", "p99", "max")


def _num(value: Any, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _pct(raw: Any) -> dict[str, float]:
    raw = raw if isinstance(raw, Mapping) else {}
    return {k: _num(raw.get(k)) for k in _PCT}


def _workload(totals: Mapping[str, Any], duration_s: float) -> dict[str, Any]:
    iterations = int(_num(totals.get("iterations")))
    errors = int(_num(totals.get("errors")))
    out: dict[str, Any] = dict(totals)
    out.update(
        iterations=iterations,
        errors=errors,
        error_rate=errors / iterations if iterations else 0.0,
        throughput_per_s=_num(totals.get("throughput_per_s"))
        or (iterations / duration_s if duration_s > 0 else 0.0),
        latency_ms=_pct(totals.get("latency_ms")),
        first_event_ms=_pct(totals.get("first_event_ms")),
    )
    return out


def slope_per_h(points: list[tuple[float, float]], since: float = 0.0) -> float:
    """Robust (Theil–Sen) slope per hour of the points at or after ``since``; 0 when unknown."""
    from soakd.analysis.trend import slope_per_hour

    return slope_per_hour([p for p in points if p[0] >= since] or points) or 0.0


def leak_sort_key(leak: Mapping[str, Any]) -> tuple[float, float]:
    """Most certain first, as the detector orders findings: kind (an attributed heap site before
    the bare heap level), then most grown for bytes or lowest p-value for counts."""
    kind = str(leak.get("kind"))
    rank = KIND_RANK.get(kind, 9) + (0.5 if kind == "heap" and not leak.get("site") else 0)
    if leak.get("unit") == "count":
        return (rank, _num(leak.get("p_value"), 1.0))
    return (rank, -_num(leak.get("growth")))


def _attributed(leaks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the bare heap-level leak once a site explains it (the detector hides it too)."""
    if any(leak["kind"] == "heap" and leak.get("site") for leak in leaks):
        leaks = [leak for leak in leaks if leak["kind"] != "heap" or leak.get("site")]
    return sorted(leaks, key=leak_sort_key)


def _leak_entry(event: Mapping[str, Any]) -> dict[str, Any]:
    tb = event.get("traceback")
    return {
        "kind": event.get("kind"),
        "site": event.get("site"),
        "traceback": [str(f) for f in tb] if isinstance(tb, list) else [],
        "type": event.get("type"),
        "slope_per_h": _num(event.get("slope_per_h")),
        "unit": event.get("unit") or "bytes",
        "growth": _num(event.get("growth")),
        "p_value": _num(event.get("p_value"), 1.0),
        "first_detected_s": _num(event.get("first_detected_s")),
        # extras for triage: more fields may be added to the contract's leak entries
        "line": event.get("line"),
        "slope_low_per_h": _num(event.get("slope_low_per_h")),
        "analyses": int(_num(event.get("analyses"))),
        "signals": event.get("signals") if isinstance(event.get("signals"), list) else [],
    }


def _unreadable_store(run_dir: Path, exc: sqlite3.DatabaseError) -> CommandError:
    return CommandError(f"samples.db in {run_dir} is not a readable soakd store: {exc}")


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def build_summary(
    run_dir: Path, final: Mapping[str, Any] | None = None, *, on_leak: str | None = None
) -> dict[str, Any]:
    """The summary of the run in ``run_dir``; ``final`` is the supervisor's last word, if any."""
    try:
        reader = StoreReader(run_dir / rundir.SAMPLES)
    except FileNotFoundError:
        raise CommandError(f"not a soakd run directory (no samples.db): {run_dir}") from None
    try:
        meta = reader.meta()
        rss = reader.bounds("rss_bytes")
        last_t = reader.last_t() or 0.0
        latest_wl_t = reader.last_workload_t() or 0.0
    except sqlite3.DatabaseError as exc:
        raise _unreadable_store(run_dir, exc) from None
    finally:
        reader.close()
    try:
        config = json.loads(meta.get("config", "{}"))
        totals = json.loads(meta.get("workload_totals", "{}"))
        started_epoch = float(meta["started_epoch"])
    except (KeyError, ValueError, TypeError, json.JSONDecodeError):
        raise CommandError(f"samples.db in {run_dir} has no valid run metadata") from None
    if not isinstance(config, dict) or not isinstance(totals, dict):
        raise CommandError(f"samples.db in {run_dir} has malformed run metadata")
    raw_detection = config.get("detection")
    detection: dict[str, Any] = raw_detection if isinstance(raw_detection, dict) else {}
    on_leak = on_leak or str(detection.get("on_leak", "fail"))

    leaks: dict[tuple[str, str], dict[str, Any]] = {}
    suspects: dict[tuple[str, str], dict[str, Any]] = {}
    breaches: list[dict[str, Any]] = []
    failed: dict[str, Any] | None = None
    finished: dict[str, Any] | None = None
    warmup_end: float | None = None
    last_event_t = 0.0
    stalls = 0
    for ev in rundir.read_events(run_dir / rundir.EVENTS):
        name = ev["event"]
        last_event_t = max(last_event_t, _num(ev.get("t")))
        key = (str(ev.get("kind")), str(ev.get("key", ev.get("site") or ev.get("type"))))
        if name == "leak.confirmed":
            leaks[key] = _leak_entry(ev)
            suspects.pop(key, None)
        elif name == "leak.suspected" and key not in leaks:
            suspects[key] = _leak_entry(ev)
        elif name == "leak.cleared":
            leaks.pop(key, None)
            suspects.pop(key, None)
        elif name == "threshold.breached":
            breaches.append(
                {
                    "rule": str(ev.get("rule")),
                    "value": _num(ev.get("value")),
                    "limit": _num(ev.get("limit")),
                    "action": ev.get("action") if ev.get("action") == "abort" else "alert",
                    "at_s": _num(ev.get("at_s")),
                    "metric": ev.get("metric"),
                }
            )
        elif name == "target.failed" and failed is None:
            failed = {"reason": ev.get("reason"), "message": ev.get("message")}
        elif name == "detection.warmup_end":
            warmup_end = _num(ev.get("warmup_end_s"))
        elif name == "workload.stalled":
            stalls += 1
        elif name == "run.finished":
            finished = ev

    final = dict(final or {})
    if not final and finished is not None:
        final = {k: finished[k] for k in ("verdict", "duration_s", "ended_at") if k in finished}
        # events.jsonl may be foreign or hand-edited: keep only what fits the summary's schema
        if not isinstance(final.get("verdict"), str) or final["verdict"] not in VERDICT_EXIT:
            final.pop("verdict", None)
        if not isinstance(final.get("ended_at"), str):
            final.pop("ended_at", None)
        final["finished"] = True
    interrupted = not final
    duration = _num(final.get("duration_s"), max(last_t, last_event_t, latest_wl_t))
    leak_list = _attributed(list(leaks.values()))
    workload = _workload(totals, duration)
    verdict = final.get("verdict") or decide_verdict(
        failed=failed is not None,
        aborted=any(b["action"] == "abort" for b in breaches),
        leaks=bool(leak_list) and on_leak == "fail",
        iterations=workload["iterations"] if meta.get("driven", "1") == "1" else -1,
    )
    since = warmup_end if warmup_end is not None else _num(detection.get("warmup"), 0.0)
    reader = StoreReader(run_dir / rundir.SAMPLES)
    try:  # bounded reads: the slopes need a few hundred averaged points, not every sample
        rss_points = reader.buckets("rss_bytes", since) or reader.buckets("rss_bytes", 0.0)
        heap_points = reader.buckets("heap_bytes", since) or reader.buckets("heap_bytes", 0.0)
    except sqlite3.DatabaseError as exc:
        raise _unreadable_store(run_dir, exc) from None
    finally:
        reader.close()
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "run_id": meta.get("run_id", run_dir.name),
        "started_at": meta.get("started_at", _iso(started_epoch)),
        "ended_at": final.get("ended_at") or _iso(started_epoch + duration),
        "duration_s": round(duration, 3),
        "verdict": verdict,
        "exit_code": VERDICT_EXIT.get(str(verdict), EXIT_INTERNAL),
        "target": meta.get("target", "?"),
        "workload": workload,
        "memory": {
            "rss_start_bytes": int(rss[0]) if rss else 0,
            "rss_end_bytes": int(rss[1]) if rss else 0,
            "rss_peak_bytes": int(rss[2]) if rss else 0,
            "rss_slope_bytes_per_h": round(slope_per_h(rss_points), 1),
            "heap_slope_bytes_per_h": round(slope_per_h(heap_points), 1),
        },
        "leaks": leak_list,
        "breaches": breaches,
        # extras (the contract allows additions): what a person triaging needs next
        "suspects": _attributed(list(suspects.values())),
        "detection": {"warmup_end_s": warmup_end, "on_leak": on_leak},
        "failure": failed,
        "interrupted": interrupted,
        "workload_stalls": stalls,
        "last_sample_s": round(last_t, 3),
    }
    if "reason" in final:
        summary["stop_reason"] = final["reason"]
    return summary


def decide_verdict(*, failed: bool, aborted: bool, leaks: bool, iterations: int) -> str:
    """The run's verdict: a failed target outranks an abort, which outranks a leak."""
    if failed or iterations == 0:
        return "target_failed"
    if aborted:
        return "aborted"
    if leaks:
        return "leak"
    return "pass"


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = run_dir / rundir.SUMMARY
    try:
        rundir.write_json_atomic(path, summary)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A full disk: an older checkpoint must not outlive the run it no longer describes
        # (it would contradict the exit code), and removing it frees the room the new one needs.
        path.unlink(missing_ok=True)
        rundir.write_json_atomic(path, summary)
    return path


def rebuild_summary(run_dir: Path) -> dict[str, Any]:
    """Recompute from disk (``soakd report``); keeps the final verdict if the run wrote one."""
    return build_summary(run_dir)


_TOP: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "run_id": str,
    "started_at": str,
    "ended_at": str,
    "duration_s": (int, float),
    "verdict": str,
    "exit_code": int,
    "target": str,
    "workload": dict,
    "memory": dict,
    "leaks": list,
    "breaches": list,
}
_LEAK = ("kind", "site", "traceback", "type", "slope_per_h", "unit", "growth", "p_value",
         "first_detected_s")  # fmt: skip
_BREACH = ("rule", "value", "limit", "action", "at_s")


def validate_summary(summary: Mapping[str, Any]) -> list[str]:
    """Problems against the ``soakd.summary/1`` contract (empty when it conforms)."""
    problems = []
    for key, typ in _TOP.items():
        if not isinstance(summary.get(key), typ):
            problems.append(f"{key}: missing or wrong type ({summary.get(key)!r})")
    if summary.get("schema") != SCHEMA:
        problems.append(f"schema must be {SCHEMA}")
    if summary.get("verdict") not in VERDICT_EXIT:
        problems.append(f"verdict {summary.get('verdict')!r} not one of {sorted(VERDICT_EXIT)}")
    wl = summary.get("workload") or {}
    for key in ("iterations", "errors", "error_rate", "throughput_per_s"):
        if not isinstance(wl.get(key), int | float):
            problems.append(f"workload.{key} missing")
    for key in ("latency_ms", "first_event_ms"):
        if not all(isinstance((wl.get(key) or {}).get(p), int | float) for p in _PCT):
            problems.append(f"workload.{key} needs {', '.join(_PCT)}")
    mem = summary.get("memory") or {}
    for key in ("rss_start_bytes", "rss_end_bytes", "rss_peak_bytes", "rss_slope_bytes_per_h",
                "heap_slope_bytes_per_h"):  # fmt: skip
        if not isinstance(mem.get(key), int | float):
            problems.append(f"memory.{key} missing")
    for i, leak in enumerate(summary.get("leaks") or []):
        problems += [f"leaks[{i}].{k} missing" for k in _LEAK if k not in leak]
        if leak.get("kind") not in KIND_RANK:
            problems.append(f"leaks[{i}].kind {leak.get('kind')!r} unknown")
    for i, breach in enumerate(summary.get("breaches") or []):
        problems += [f"breaches[{i}].{k} missing" for k in _BREACH if k not in breach]
    return problems
