"""summary.json (schema ``soakd.summary/1``), built from what is on disk.

One code path serves the live run (checkpoints and the end) and ``soakd report`` on a run whose
supervisor was killed: the summary is always a function of ``samples.db`` and ``events.jsonl``
(plus the supervisor's final word when it had one), so both agree by construction.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soakd import run_verdict, rundir
from soakd.detection import KIND_RANK
from soakd.errors import (
    EXIT_ABORTED,
    EXIT_INCONCLUSIVE,
    EXIT_INTERNAL,
    EXIT_LEAK,
    EXIT_PASS,
    EXIT_TARGET_FAILED,
    EXIT_USAGE,
    RunDirError,
    StoreError,
)
from soakd.leaks import LeakLedger, LeakRecord, leak_sort_key
from soakd.perturbation import PerturbationLog
from soakd.redact import redact_target
from soakd.store import RunStore
from soakd.workload.unperturbed import UnperturbedTotals

__all__ = [
    "SCHEMA",
    "VERDICT_EXIT",
    "build_summary",
    "iso_utc",
    "leak_sort_key",
    "rebuild_summary",
    "slope_per_h",
    "validate_summary",
    "write_summary",
]

SCHEMA = "soakd.summary/1"
UNPERTURBED_META = "workload_unperturbed"  # samples.db meta key, written by the supervisor
VERDICT_EXIT = {
    "pass": EXIT_PASS,
    "leak": EXIT_LEAK,
    "aborted": EXIT_ABORTED,
    "target_failed": EXIT_TARGET_FAILED,
    "inconclusive": EXIT_INCONCLUSIVE,
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


def slope_per_h(points: list[tuple[float, float]], since: float = 0.0) -> float | None:
    """Robust (Theil–Sen) slope per hour of the points at or after ``since``; None when it
    cannot be computed (fewer than 3 points): never a 0 that reads as "flat"."""
    from soakd.analysis.trend import slope_per_hour

    return slope_per_hour([p for p in points if p[0] >= since])


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _unreadable_store(run_dir: Path, exc: sqlite3.DatabaseError) -> StoreError:
    return StoreError(f"samples.db in {run_dir} is not a readable soakd store: {exc}")


def iso_utc(epoch: float) -> str:
    """``epoch`` as an ISO 8601 UTC time ending in ``Z``, as summary.json and events write it."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


_iso = iso_utc  # the supervisor's import name


# -- what the store says -------------------------------------------------------------------
@dataclass(frozen=True)
class StoreFacts:
    """The run's metadata and RSS bounds from samples.db, read once."""

    meta: dict[str, str]
    rss: tuple[float, float, float] | None
    last_t: float
    last_workload_t: float
    config: dict[str, Any]
    totals: dict[str, Any]
    started_epoch: float
    heap: tuple[float, float] | None = None  # first and last heap level
    longest_stall_s: float = 0.0  # longest time in which no iteration completed

    @property
    def detection(self) -> dict[str, Any]:
        # The dumped config is read as plain keys, not through Config.model_validate: a store
        # from an older soakd, another box or a hand edit need not validate today, and its
        # summary must still be built.
        raw = self.config.get("detection")
        return raw if isinstance(raw, dict) else {}


def _store_facts(run_dir: Path) -> StoreFacts:
    try:
        reader = RunStore(run_dir / rundir.SAMPLES, strict=False)
    except FileNotFoundError:
        raise RunDirError(f"not a soakd run directory (no samples.db): {run_dir}") from None
    try:
        meta = reader.meta()
        rss = reader.bounds("rss_bytes")
        last_t = reader.last_t() or 0.0
        latest_wl_t = reader.last_workload_t() or 0.0
        first_heap = reader.edge("heap_bytes", last=False)
        last_heap = reader.edge("heap_bytes", last=True)
        heap = (first_heap[1], last_heap[1]) if first_heap and last_heap else None
        stall = reader.longest_silence("iterations", max(last_t, latest_wl_t))
    except sqlite3.DatabaseError as exc:
        raise _unreadable_store(run_dir, exc) from None
    finally:
        reader.close()
    try:
        config = json.loads(meta.get("config", "{}"))
        totals = json.loads(meta.get("workload_totals", "{}"))
        started_epoch = float(meta["started_epoch"])
    except (KeyError, ValueError, TypeError, json.JSONDecodeError):
        raise StoreError(f"samples.db in {run_dir} has no valid run metadata") from None
    if not isinstance(config, dict) or not isinstance(totals, dict):
        raise StoreError(f"samples.db in {run_dir} has malformed run metadata")
    return StoreFacts(meta, rss, last_t, latest_wl_t, config, totals, started_epoch, heap, stall)


# -- what the events say -------------------------------------------------------------------
@dataclass
class EventFacts:
    """What summary.json takes from events.jsonl: the leak ledger, breaches, the failure, the
    warm-up end, stalls and the ``run.finished`` event."""

    ledger: LeakLedger = field(default_factory=LeakLedger)
    breaches: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, Any] | None = None
    finished: dict[str, Any] | None = None
    warmup_end: float | None = None
    last_event_t: float = 0.0
    stalls: int = 0
    perturbation: PerturbationLog = field(default_factory=PerturbationLog)
    attribution: dict[str, Any] | None = None
    judged: bool = False  # detection.judged: the detector judged a full window
    planned_s: float | None = None  # run.started's duration
    python: dict[str, Any] | None = None  # run.started's: the target's interpreter


def _breach(ev: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "rule": str(ev.get("rule")),
        "value": _num(ev.get("value")),
        "limit": _num(ev.get("limit")),
        "action": ev.get("action") if ev.get("action") == "abort" else "alert",
        "at_s": _num(ev.get("at_s")),
        "metric": ev.get("metric"),
    }


def _event_facts(run_dir: Path) -> EventFacts:
    facts = EventFacts()
    for ev in rundir.read_events(run_dir / rundir.EVENTS):
        name = ev["event"]
        facts.last_event_t = max(facts.last_event_t, _num(ev.get("t")))
        if facts.ledger.apply(name, ev) is not None:
            continue
        if name == "threshold.breached":
            facts.breaches.append(_breach(ev))
        elif name == "target.failed" and facts.failed is None:
            facts.failed = {"reason": ev.get("reason"), "message": ev.get("message")}
        elif name == "detection.warmup_end":
            facts.warmup_end = _num(ev.get("warmup_end_s"))
        elif name == "detection.judged":
            facts.judged = True
        elif name == "workload.stalled":
            facts.stalls += 1
        elif name == "target.perturbed":
            facts.perturbation.add_event(ev)
        elif name == "run.started":
            if isinstance(ev.get("attribution"), dict):
                facts.attribution = dict(ev["attribution"])
            planned = _num(ev.get("duration_s"), -1.0)
            facts.planned_s = planned if planned > 0 else None
            if isinstance(ev.get("python"), dict):
                facts.python = dict(ev["python"])
        elif name in ("attribution.ready", "attribution.fallback") and facts.attribution:
            # The target's own answer overrides what soakd's installation expected.
            if name == "attribution.ready":
                facts.attribution.update(mode="sampled", lost=None)
                facts.attribution.update(
                    {k: ev[k] for k in ("interval_bytes", "memory_bytes") if k in ev}
                )
            else:
                tracing = facts.attribution.get("tracemalloc")
                facts.attribution.update(
                    mode="off" if tracing == "off" else "tracemalloc",
                    interval_bytes=None,
                    lost=ev.get("lost"),
                )
        elif name == "run.finished":
            facts.finished = ev
    return facts


def _unperturbed(meta: Mapping[str, str], log: PerturbationLog) -> UnperturbedTotals | None:
    """The supervisor's unperturbed totals, with intervals a late span overlaps left out."""
    raw = meta.get(UNPERTURBED_META)
    if raw is None:
        return None
    try:
        totals = UnperturbedTotals.from_dict(json.loads(raw))
    except (ValueError, TypeError, RecursionError):
        return None  # foreign or damaged: the summary says nothing rather than something wrong
    totals.recheck(log.overlaps)
    return totals


def _perturbation(
    log: PerturbationLog, totals: UnperturbedTotals | None, duration_s: float
) -> dict[str, Any]:
    """summary.json's ``perturbation``: soakd's own work in the target and what it cost the
    judgement (intervals, seconds and iterations left out)."""
    out = log.summary(duration_s)
    s = totals.settled() if totals is not None else UnperturbedTotals()
    out.update(
        excluded_intervals=s.excluded_intervals,
        excluded_seconds=round(s.excluded_seconds, 3),
        excluded_iterations=s.excluded_iterations,
    )
    return out


def _final_word(
    final: Mapping[str, Any] | None, finished: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The supervisor's last word, else what its ``run.finished`` event said (or nothing)."""
    out = dict(final or {})
    if not out and finished is not None:
        out = {k: finished[k] for k in ("verdict", "duration_s", "ended_at") if k in finished}
        # events.jsonl may be foreign or hand-edited: keep only what fits the summary's schema
        if not isinstance(out.get("verdict"), str) or out["verdict"] not in VERDICT_EXIT:
            out.pop("verdict", None)
        if not isinstance(out.get("ended_at"), str):
            out.pop("ended_at", None)
        out["finished"] = True
    return out


def _memory(run_dir: Path, rss: tuple[float, float, float] | None, since: float) -> dict[str, Any]:
    reader = RunStore(run_dir / rundir.SAMPLES, strict=False)
    try:  # bounded reads: the slopes need a few hundred averaged points, not every sample
        # After the warm-up only: its growth is not a slope of the run.
        rss_points = reader.buckets("rss_bytes", since)
        heap_points = reader.buckets("heap_bytes", since)
    except sqlite3.DatabaseError as exc:
        raise _unreadable_store(run_dir, exc) from None
    finally:
        reader.close()
    return {
        "rss_start_bytes": int(rss[0]) if rss else None,
        "rss_end_bytes": int(rss[1]) if rss else None,
        "rss_peak_bytes": int(rss[2]) if rss else None,
        "rss_slope_bytes_per_h": _round(slope_per_h(rss_points)),
        "heap_slope_bytes_per_h": _round(slope_per_h(heap_points)),
    }


# Sections that change what a run measures; the rest (duration, output, alerts, metrics, rules)
# does not, so runs differing only there are still comparable by `soakd compare`.
_MEASURED = ("target", "workload", "sampling", "detection", "health", "guard")


def config_hash(config: Mapping[str, Any]) -> str | None:
    """A short hash of the sections of a (redacted) config dump that shape the measurement;
    None when ``config`` holds none of them (a hand-built or pre-config store)."""
    measured = {k: config[k] for k in _MEASURED if k in config}
    if not measured:
        return None
    canonical = json.dumps(measured, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# -- the summary ---------------------------------------------------------------------------
def build_summary(
    run_dir: Path, final: Mapping[str, Any] | None = None, *, on_leak: str | None = None
) -> dict[str, Any]:
    """The summary of the run in ``run_dir``; ``final`` is the supervisor's last word, if any."""
    store = _store_facts(run_dir)
    on_leak = on_leak or str(store.detection.get("on_leak", "fail"))
    events = _event_facts(run_dir)
    word = _final_word(final, events.finished)
    duration = _num(
        word.get("duration_s"), max(store.last_t, events.last_event_t, store.last_workload_t)
    )
    leaks: list[LeakRecord] = events.ledger.confirmed()
    live = word.get("workload_totals")
    workload = _workload(live if isinstance(live, Mapping) and live else store.totals, duration)
    unperturbed = _unperturbed(store.meta, events.perturbation)
    if unperturbed is not None:
        workload["unperturbed"] = unperturbed.figures()
    facts = _run_facts(store, events, word, workload, duration, bool(leaks) and on_leak == "fail")
    decision = run_verdict.decide(facts, _health_bounds(store.config))
    # The live run's own word is final (its exit code said it); a rebuild decides the same.
    verdict = word.get("verdict") or decision.verdict
    if decision.end_to_end and decision.end_to_end["exceeded"] and not leaks:
        leaks = [_end_to_end_leak(decision.end_to_end, duration)]
    warmup_end = events.warmup_end
    since = warmup_end if warmup_end is not None else _num(store.detection.get("warmup"), 0.0)
    memory = _memory(run_dir, store.rss, since)
    started = store.started_epoch
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "run_id": store.meta.get("run_id", run_dir.name),
        "started_at": store.meta.get("started_at", iso_utc(started)),
        "ended_at": word.get("ended_at") or iso_utc(started + duration),
        "duration_s": round(duration, 3),
        "verdict": verdict,
        "exit_code": VERDICT_EXIT.get(str(verdict), EXIT_INTERNAL),
        # redacted again: a store written before redaction existed may hold a raw URL
        "target": redact_target(str(store.meta.get("target", "?"))),
        "config_hash": config_hash(store.config),
        "workload": workload,
        "memory": memory,
        "leaks": leaks,
        "breaches": events.breaches,
        # extras (the contract allows additions): what a person triaging needs next
        "suspects": events.ledger.suspects(),
        "detection": {"warmup_end_s": warmup_end, "on_leak": on_leak},
        "failure": events.failed,
        "interrupted": facts.interrupted,
        "verdict_reason": decision.reason,
        "health": decision.health,
        "end_to_end": decision.end_to_end,
        "suggested_duration_s": decision.suggested_duration_s,
        "detection_judged": facts.judged,
        "workload_stalls": events.stalls,
        "last_sample_s": round(store.last_t, 3),
        "perturbation": _perturbation(events.perturbation, unperturbed, duration),
    }
    if events.attribution is not None:
        summary["attribution"] = events.attribution
    if events.python is not None:
        summary["python"] = events.python
    if "reason" in word:
        summary["stop_reason"] = word["reason"]
    if word.get("storage_error"):
        # Exit 2, as for a run directory that cannot be written at the start (DESIGN).
        summary["storage_error"] = str(word["storage_error"])
        summary["exit_code"] = EXIT_USAGE
    return summary


def _run_facts(
    store: StoreFacts,
    events: EventFacts,
    word: Mapping[str, Any],
    workload: Mapping[str, Any],
    duration: float,
    leaks: bool,
) -> run_verdict.RunFacts:
    det = store.detection
    by_class = workload.get("errors_by_class")
    timeouts = by_class.get("timeout", 0) if isinstance(by_class, Mapping) else 0
    driven = store.meta.get("driven", "1") == "1"
    return run_verdict.RunFacts(
        duration_s=duration,
        planned_s=events.planned_s,
        driven=driven,
        iterations=int(workload["iterations"]),
        errors=int(workload["errors"]),
        timeouts=int(_num(timeouts)),
        failed=events.failed,
        aborted=any(b["action"] == "abort" for b in events.breaches),
        leaks=leaks,
        judged=events.judged,
        warmup_end_s=events.warmup_end,
        longest_stall_s=store.longest_stall_s if driven else 0.0,
        stop_reason=word.get("reason") if word else None,
        finished=bool(word),
        rss_growth_bytes=store.rss[1] - store.rss[0] if store.rss else None,
        heap_growth_bytes=store.heap[1] - store.heap[0] if store.heap else None,
        warmup_floor_s=_num(det.get("warmup"), 60.0),
        warmup_max_s=_num(det.get("warmup_max"), 600.0),
        min_window_s=min(60.0, _num(det.get("window"), 1800.0) / 2),
    )


def _end_to_end_leak(e2e: Mapping[str, Any], duration: float) -> LeakRecord:
    """The leak the end-to-end check found: the process grew, no trend was judged, no site."""
    kind = "heap" if "heap" in e2e["exceeded"] else "native"
    growth = float(e2e[f"{'heap' if kind == 'heap' else 'rss'}_growth_bytes"])
    return {
        "kind": kind,
        "key": f"end_to_end:{kind}",
        "site": None,
        "traceback": [],
        "type": None,
        "slope_per_h": round(growth / duration * 3600.0, 1) if duration > 0 else 0.0,
        "unit": "bytes",
        "growth": growth,
        "p_value": None,
        "first_detected_s": round(duration, 3),
        "line": None,
        "slope_low_per_h": None,
        "analyses": 0,
        "signals": [f"end to end: grew {growth:.0f} B > bound {e2e['bound_bytes']} B, not judged"],
        "method": "end_to_end",
    }


def _health_bounds(config: Mapping[str, Any]) -> run_verdict.HealthBounds:
    """``[health]`` from the dumped config (plain keys: an older store has none)."""
    raw = config.get("health")
    h = raw if isinstance(raw, Mapping) else {}
    d = run_verdict.HealthBounds()
    return run_verdict.HealthBounds(
        max_error_rate=_num(h.get("max_error_rate"), d.max_error_rate),
        max_stall_s=_num(h.get("max_stall"), d.max_stall_s),
        max_unjudged_growth_bytes=_num(h.get("max_unjudged_growth"), d.max_unjudged_growth_bytes),
    )


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
        # null: not computable (no samples, none after the warm-up), never a made-up 0
        if key not in mem or not isinstance(mem[key], int | float | None):
            problems.append(f"memory.{key} missing")
    for i, leak in enumerate(summary.get("leaks") or []):
        problems += [f"leaks[{i}].{k} missing" for k in _LEAK if k not in leak]
        if leak.get("kind") not in KIND_RANK:
            problems.append(f"leaks[{i}].kind {leak.get('kind')!r} unknown")
    for i, breach in enumerate(summary.get("breaches") or []):
        problems += [f"breaches[{i}].{k} missing" for k in _BREACH if k not in breach]
    return problems
