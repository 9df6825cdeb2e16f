"""The one leak record and its ledger, built from the producer's own Finding; every observer
survives every catalogued event with hostile fields."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pytest

from soakd.config import AlertsConfig
from soakd.detection import Finding, FindingState
from soakd.events import EVENT_NAMES, LEAK_EVENTS
from soakd.leaks import (
    LeakLedger,
    attributed,
    leak_event,
    leak_key,
    leak_label,
    record_from_event,
)
from soakd.reporting.progress import Progress
from soakd.sinks.alerts import AlertSender
from soakd.sinks.base import RunObserver
from soakd.sinks.metrics import MetricsServer
from soakd.sinks.notify import Notifier
from soakd.sinks.observers import fan_out


def finding(state: FindingState, kind: str = "heap", key: str = "app.py:3", **kw: Any) -> Finding:
    site = key if kind == "heap" and key != "heap" else None
    fields: dict[str, Any] = dict(
        state=state, kind=kind, key=key, site=site, traceback=(key,) if site else (), line=None,
        type=key if kind == "objects" else None, slope_per_h=1234.56789, slope_low_per_h=99.1234,
        unit="count" if kind in ("objects", "fds", "threads", "tasks") else "bytes",
        growth=5000.04, p_value=1e-6, first_detected_s=61.23456, analyses=3, signals=("heap",),
    )  # fmt: skip
    fields.update(kw)
    return Finding(**fields)


def emitted(f: Finding) -> tuple[str, dict[str, Any]]:
    """The event as events.jsonl holds it: through JSON, as the producer emits it."""
    name, _level, record = leak_event(f)
    return name, json.loads(json.dumps(dict(record)))


def test_the_event_carries_every_field_the_supervisor_emits_in_its_order() -> None:
    name, level, record = leak_event(finding("confirmed"))
    assert (name, level) == ("leak.confirmed", "warning")
    assert list(record) == [
        "kind", "key", "site", "traceback", "line", "type", "slope_per_h", "slope_low_per_h",
        "unit", "growth", "p_value", "first_detected_s", "analyses", "signals",
    ]  # fmt: skip
    assert record["slope_per_h"] == 1234.568 and record["growth"] == 5000.0
    assert record["first_detected_s"] == 61.235 and record["signals"] == ["heap"]
    assert leak_event(finding("suspected"))[1] == "info"


def test_an_event_reads_back_as_the_summary_entry() -> None:
    _, fields = emitted(finding("confirmed"))
    record = record_from_event(fields)
    assert list(record)[:9] == [
        "kind", "site", "traceback", "type", "slope_per_h", "unit", "growth", "p_value",
        "first_detected_s",
    ]  # fmt: skip
    assert "key" not in record and record["signals"] == ["heap"] and record["analyses"] == 3
    assert leak_key(record) == leak_key(fields) == ("heap", "app.py:3", None)
    assert leak_label(fields) == "heap at app.py:3"


def test_the_ledger_folds_states_and_hides_the_heap_level_a_site_explains() -> None:
    ledger = LeakLedger()
    for f in (
        finding("suspected", "heap", "heap"),
        finding("confirmed", "heap", "heap"),
        finding("suspected", "fds", "fds"),
        finding("confirmed", "objects", "Session", p_value=1e-3),
        finding("confirmed", "heap", "app.py:3"),
        finding("suspected", "heap", "app.py:3"),  # changes nothing once confirmed
        finding("confirmed", "native", "rss", growth=9e9),
    ):
        ledger.apply(*emitted(f))
    assert [(r["kind"], r["site"]) for r in ledger.confirmed()] == [
        ("heap", "app.py:3"), ("native", None), ("objects", None),
    ]  # fmt: skip
    assert [r["kind"] for r in ledger.suspects()] == ["fds"]
    ledger.apply(*emitted(finding("cleared", "heap", "app.py:3")))
    assert [r["kind"] for r in ledger.confirmed()] == ["heap", "native", "objects"]
    assert [f["key"] for f in ledger.cleared()] == ["app.py:3"]
    assert ledger.apply("run.finished", {}) is None


def test_attribution_orders_bytes_by_growth_and_counts_by_p_value() -> None:
    records = [
        record_from_event(emitted(f)[1])
        for f in (
            finding("confirmed", "heap", "a.py:1", growth=10.0),
            finding("confirmed", "heap", "b.py:2", growth=20.0),
            finding("confirmed", "tasks", "tasks", p_value=0.01),
            finding("confirmed", "fds", "fds", p_value=0.02),
        )
    ]
    assert [r["site"] or r["kind"] for r in attributed(records)] == ["b.py:2", "a.py:1", "fds",
                                                                      "tasks"]  # fmt: skip


HOSTILE: list[dict[str, Any]] = [
    {},
    {"kind": math.nan, "site": math.inf, "type": -math.inf, "t": math.nan},
    {"kind": ["heap"], "site": {"a": 1}, "traceback": "x", "signals": 3, "growth": "big"},
    {"kind": None, "rule": object(), "value": 10**400, "action": "abort", "verdict": 7},
    {"reason": None, "t": "soon", "iterations": -1, "pid": "x", "slope_per_h": 1e999},
]


@pytest.fixture(params=["alerts", "metrics", "notify", "progress"])
async def observer(request: pytest.FixtureRequest) -> Any:
    obs: RunObserver
    if request.param == "alerts":
        obs = AlertSender(AlertsConfig(), lambda _e, _f: None, "run", "target")
    elif request.param == "metrics":
        obs = MetricsServer("127.0.0.1:0", "run", "target")
    elif request.param == "notify":
        obs = Notifier({})
    else:
        obs = Progress(60.0, stream=io.StringIO())
    yield obs
    await obs.stop()


@pytest.mark.anyio
async def test_every_observer_survives_every_catalogued_event(observer: RunObserver) -> None:
    for name in sorted(EVENT_NAMES):
        for fields in HOSTILE:
            fan_out([observer], name, fields)
    # ... and still follows a well-formed run afterwards
    for state in ("suspected", "confirmed"):
        fan_out([observer], *emitted(finding(state)))
    if isinstance(observer, MetricsServer):
        assert 'soakd_leaks_confirmed{kind="heap"} 1' in observer.render()
    elif isinstance(observer, Notifier):
        assert observer.status_line().endswith("(finished)")  # the hostile run.finished won
    elif isinstance(observer, Progress):
        assert "LEAKS" in observer.state.render()


def test_the_catalogue_names_every_leak_event() -> None:
    assert set(LEAK_EVENTS) <= EVENT_NAMES
