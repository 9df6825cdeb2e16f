"""The one leak record: made from a detector finding, written as a ``leak.*`` event, folded back.

* :func:`leak_event` / :func:`record_from_finding`: what the supervisor emits for a finding.
* :func:`record_from_event`: the one reader of a ``leak.*`` event (or a summary entry), in the
  shape of summary.json ``leaks[]`` (schema ``soakd.summary/1``) plus the triage extras.
* :func:`leak_key`: the one identity of a finding across events, summary and reports.
* :func:`leak_sort_key` and :func:`attributed`: the detector's certainty order and its "hide the
  bare heap level once a site explains it" rule, for records read back from disk.
* :class:`LeakLedger`: the suspected / confirmed / cleared fold that every consumer shares.
* :class:`LeakEntry` / :func:`leak_entries`: the reports' display view of a record.

Events on disk may be foreign, damaged or hostile: the readers never raise on a bad field, except
:func:`record_from_event`, which keeps the summary's historical coercion exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NotRequired, TypedDict, cast

from soakd.causes import evidence_keys, group_causes
from soakd.coerce import num, text
from soakd.coerce import opt_str as _opt_str
from soakd.detection import KIND_RANK
from soakd.sources import functions_of

if TYPE_CHECKING:
    from soakd.detection import Finding

__all__ = [
    "LEAK_STATES",
    "LeakEntry",
    "LeakKey",
    "LeakLedger",
    "LeakRecord",
    "LeakState",
    "attributed",
    "breach_entries",
    "leak_entries",
    "leak_event",
    "leak_key",
    "leak_label",
    "leak_sort_key",
    "record_from_event",
    "record_from_finding",
]

LeakState = Literal["suspected", "confirmed", "cleared"]
LEAK_STATES: Final[dict[str, LeakState]] = {
    "leak.suspected": "suspected",
    "leak.confirmed": "confirmed",
    "leak.cleared": "cleared",
}
# kind, site, type: the detector's key is the site for a site, the type for objects, and the
# signal otherwise, so these three name a finding wherever it is read, summary entries included.
LeakKey = tuple[str, str | None, str | None]


class LeakRecord(TypedDict):
    """A leak as summary.json ``leaks[]`` lists it (soakd.summary/1) plus the triage extras.

    ``key`` (the detector's series key) is carried by ``leak.*`` events, not by the summary.
    """

    kind: str
    key: NotRequired[str]
    site: str | None
    traceback: list[str]
    type: str | None
    slope_per_h: float
    unit: str
    growth: float
    p_value: float | None  # None: found by the end-to-end check, no trend test
    first_detected_s: float
    line: str | None
    slope_low_per_h: float | None
    analyses: int
    signals: list[str]
    method: NotRequired[str]  # "end_to_end" when no trend was judged
    # On ``leak.*`` events: the latest verdict's reason (why a finding was cleared).
    reason: NotRequired[str]
    # The function each traceback frame is in, read from the source (soakd.sources); absent
    # when none could be read. Lets soakd.causes tell lines of one function from two functions.
    functions: NotRequired[list[str | None]]
    # Findings of the same cause folded into this one (soakd.causes): kind, site, type, ...
    evidence: NotRequired[list[dict[str, Any]]]
    # On a ``leak.confirmed`` event: the confirmed leak this one is a consequence of.
    cause: NotRequired[dict[str, Any]]


# -- producing -----------------------------------------------------------------------------
def record_from_finding(f: Finding) -> LeakRecord:
    """The ``leak.*`` event's fields for a finding (rounded as events.jsonl has them)."""
    # Field order is the order of the event's JSON line.
    record: LeakRecord = {
        "kind": f.kind,
        "key": f.key,
        "site": f.site,
        "traceback": list(f.traceback),
        "line": f.line,
        "type": f.type,
        "slope_per_h": round(f.slope_per_h, 3),
        "slope_low_per_h": round(f.slope_low_per_h, 3),
        "unit": f.unit,
        "growth": round(f.growth, 1),
        "p_value": f.p_value,
        "first_detected_s": round(f.first_detected_s, 3),
        "analyses": f.analyses,
        "signals": list(f.signals),
    }
    if f.reason:
        record["reason"] = f.reason
    if f.site is not None:
        functions = functions_of(f.traceback)
        if any(functions):
            record["functions"] = functions
    return record


def leak_event(f: Finding) -> tuple[str, str, LeakRecord]:
    """``(event name, level, fields)`` to emit for a finding whose state changed."""
    level = "warning" if f.state == "confirmed" else "info"
    return f"leak.{f.state}", level, record_from_finding(f)


# -- reading -------------------------------------------------------------------------------
def _float(value: Any, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def record_from_event(fields: Mapping[str, Any]) -> LeakRecord:
    """A ``leak.*`` event (or a summary entry) as summary.json lists it; numbers made finite."""
    tb = fields.get("traceback")
    signals = fields.get("signals")
    record: LeakRecord = {
        "kind": fields.get("kind"),  # type: ignore[typeddict-item]  # kept as found on disk
        "site": fields.get("site"),
        "traceback": [str(f) for f in tb] if isinstance(tb, list) else [],
        "type": fields.get("type"),
        "slope_per_h": _float(fields.get("slope_per_h")),
        "unit": fields.get("unit") or "bytes",
        "growth": _float(fields.get("growth")),
        "p_value": _float(fields.get("p_value"), 1.0),
        "first_detected_s": _float(fields.get("first_detected_s")),
        # extras for triage: more fields may be added to the contract's leak entries
        "line": fields.get("line"),
        "slope_low_per_h": _float(fields.get("slope_low_per_h")),
        "analyses": int(_float(fields.get("analyses"))),
        "signals": signals if isinstance(signals, list) else [],
    }
    functions = fields.get("functions")
    if isinstance(functions, list) and isinstance(tb, list) and len(functions) == len(tb):
        record["functions"] = [f if isinstance(f, str) else None for f in functions]
    evidence = _evidence_of(fields)
    if evidence is not None:
        record["evidence"] = evidence
    return record


def _evidence_of(fields: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The ``evidence`` list of an event or summary entry (bounded), None when it has none."""
    raw = fields.get("evidence")
    if not isinstance(raw, list):
        return None
    return [dict(e) for e in raw[:64] if isinstance(e, Mapping)]


def leak_key(fields: Mapping[str, Any]) -> LeakKey:
    """The identity of the finding an event or a summary entry describes."""
    site, type_ = fields.get("site"), fields.get("type")
    return (
        text(fields.get("kind") or "?", 40),
        _opt_str(site),
        _opt_str(type_),
    )


def leak_label(fields: Mapping[str, Any]) -> str:
    """``kind at site-or-type`` (just the kind when it has neither), for one-line statuses."""
    kind = str(fields.get("kind") or "?")
    where = fields.get("site") or fields.get("type")
    return f"{kind} at {where}" if where else kind


def leak_sort_key(leak: Mapping[str, Any]) -> tuple[float, float]:
    """Most certain first, as the detector orders findings: kind (an attributed heap site before
    the bare heap level), then most grown for bytes or lowest p-value for counts."""
    kind = str(leak.get("kind"))
    rank = KIND_RANK.get(kind, 9) + (0.5 if kind == "heap" and not leak.get("site") else 0)
    if leak.get("unit") == "count":
        return (rank, _float(leak.get("p_value"), 1.0))
    return (rank, -_float(leak.get("growth")))


def attributed(leaks: Iterable[LeakRecord]) -> list[LeakRecord]:
    """One entry per cause (``soakd.causes``), in certainty order, without the bare heap-level
    leak once a site explains it (the detector hides it from its findings too)."""
    out = sorted(leaks, key=leak_sort_key)
    grouped = cast(list[LeakRecord], group_causes(out))
    if any(leak["kind"] == "heap" and leak.get("site") for leak in grouped):
        grouped = [leak for leak in grouped if leak["kind"] != "heap" or leak.get("site")]
    return grouped


# -- folding -------------------------------------------------------------------------------
class LeakLedger:
    """The suspected / confirmed / cleared state of every finding, folded from ``leak.*`` events.

    A confirmation replaces a suspicion; a suspicion of a confirmed finding changes nothing; a
    clearance ends both. Keeps each finding's latest event as it came (records are made on
    demand, so a hostile number cannot stop the fold). No collaborators: feed it with
    :meth:`apply`, from events.jsonl or live from the event log.
    """

    def __init__(self) -> None:
        self._confirmed: dict[LeakKey, Mapping[str, Any]] = {}  # in order of confirmation
        self._suspects: dict[LeakKey, Mapping[str, Any]] = {}
        self._latest: dict[LeakKey, tuple[LeakState, Mapping[str, Any]]] = {}  # first seen

    def apply(self, event: str, fields: Mapping[str, Any]) -> LeakState | None:
        """Fold one event; the finding's new state, None when ``event`` is not a ``leak.*``."""
        state = LEAK_STATES.get(event)
        if state is None:
            return None
        key = leak_key(fields)
        self._latest[key] = (state, fields)
        if state == "confirmed":
            self._confirmed[key] = fields
            self._suspects.pop(key, None)
        elif state == "suspected":
            if key not in self._confirmed:
                self._suspects[key] = fields
        else:
            self._confirmed.pop(key, None)
            self._suspects.pop(key, None)
        return state

    def confirmed_events(self) -> list[Mapping[str, Any]]:
        """The latest event of each confirmed finding, in order of confirmation."""
        return list(self._confirmed.values())

    def suspect_events(self) -> list[Mapping[str, Any]]:
        """The latest event of each finding under suspicion only."""
        return list(self._suspects.values())

    def confirmed(self) -> list[LeakRecord]:
        """Confirmed leaks, attributed and in certainty order (summary.json ``leaks``)."""
        return attributed(record_from_event(f) for f in self._confirmed.values())

    def suspects(self) -> list[LeakRecord]:
        """Open suspects, attributed and in certainty order (summary.json ``suspects``)."""
        return attributed(record_from_event(f) for f in self._suspects.values())

    def cleared(self) -> list[Mapping[str, Any]]:
        """The clearing event of each finding whose latest state is cleared."""
        return [f for state, f in self._latest.values() if state == "cleared"]

    def latest(self) -> dict[LeakKey, tuple[LeakState, Mapping[str, Any]]]:
        """Each finding's latest state and event, in the order findings first appeared."""
        return dict(self._latest)


# -- the reports' view ---------------------------------------------------------------------
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
    evidence: tuple[str, ...] = ()  # findings of the same cause, one line each
    functions: tuple[str | None, ...] = ()  # the function of each traceback frame, if known

    @property
    def frames(self) -> list[str]:
        """The traceback's frames, each with its function where the source named it."""
        named = self.functions if len(self.functions) == len(self.traceback) else ()
        return [
            f"{frame} in {named[k]}" if named and named[k] else frame
            for k, frame in enumerate(self.traceback)
        ]

    @property
    def key(self) -> LeakKey:
        return (self.kind, self.site, self.type)


def _leak_from(data: Mapping[str, Any], status: str) -> LeakEntry:
    tb = data.get("traceback")
    fns = data.get("functions")
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
        evidence=tuple(_evidence_label(e) for e in _evidence_of(data) or []),
        functions=tuple(text(f, 300) if isinstance(f, str) else None for f in fns[:200])
        if isinstance(fns, list)
        else (),
    )


def _evidence_label(e: Mapping[str, Any]) -> str:
    slope, unit = num(e.get("slope_per_h")), text(e.get("unit") or "", 20)
    rate = f" {slope:+.3g} {unit}/h" if slope is not None else ""
    return text(f"{leak_label(e)}{rate}", 1200)


_STATUS_ORDER: Final = {"confirmed": 0, "suspected": 1, "cleared": 2}


def leak_entries(
    summary: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> list[LeakEntry]:
    """Confirmed leaks (summary order, enriched by their latest event), then open suspects."""
    ledger = LeakLedger()
    for e in events:
        ledger.apply(str(e.get("event")), e)
    latest = ledger.latest()
    out: list[LeakEntry] = []
    seen: set[LeakKey] = set()
    leaks = summary.get("leaks")
    for raw in leaks if isinstance(leaks, list) else []:
        if not isinstance(raw, Mapping):
            continue
        key = leak_key(raw)
        merged: dict[str, Any] = {}
        if key in latest:
            merged.update(latest[key][1])
        merged.update({k: v for k, v in raw.items() if v is not None})
        out.append(_leak_from(merged, "confirmed"))
        seen.add(key)
        seen.update(evidence_keys(raw))  # shown under their cause
    for key, (status, e) in latest.items():
        if key in seen:
            continue
        # a confirmation the summary does not list yet (mid-run) still counts as confirmed
        out.append(_leak_from(e, status))
    out.sort(key=lambda leak: _STATUS_ORDER.get(leak.status, 3))
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
