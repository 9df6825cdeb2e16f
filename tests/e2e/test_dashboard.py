"""The Grafana dashboard: importable JSON whose every PromQL expression promtool accepts and
whose every metric is one soakd exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from soakd.sinks.metrics import MetricsServer
from soakd.workload.histogram import LatencyHistogram
from tests.e2e.test_metrics import feed, parse_exposition

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "soakd.json"
# Grafana's variables as a query would see them after interpolation.
_VARIABLES = {"$__rate_interval": "2m", "$__interval": "1m", "$instance": ".*", "$run_id": ".*"}
_METRIC = re.compile(r"\b((?:soakd|process)_[a-z0-9_]+)")


def _expressions(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    return exprs


def _interpolate(expr: str) -> str:
    for name, value in sorted(_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


def test_dashboard_is_importable() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance", "run_id"} <= variables
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"  # no datasource of ours baked in
        assert panel["targets"], panel["title"]
    annotations = {a["name"] for a in dash["annotations"]["list"]}
    assert {"Leak confirmed", "Threshold breached"} <= annotations


def test_every_expression_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    exprs = _expressions(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    assert len(exprs) >= 15
    # Each expression as a recording rule: promtool parses and type-checks every one.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": _interpolate(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules), encoding="utf-8")  # JSON is YAML
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_every_metric_in_the_dashboard_is_exposed() -> None:
    srv = MetricsServer("127.0.0.1:0", "run-1", "t")
    feed(srv)
    hist = LatencyHistogram()
    hist.record(12.0)
    srv.on_workload(30.0, {"first_event_hist": hist.to_dict()}, {"iterations": 101, "errors": 4})
    srv.on_samples(30.0, {"cpu_seconds": 4.5})
    series, _ = parse_exposition(srv.render())
    exposed = {name for name, _ in series}
    used = {m for e in _expressions(json.loads(DASHBOARD.read_text())) for m in _METRIC.findall(e)}
    assert "soakd_latency_seconds_bucket" in used
    assert used <= exposed, f"not exposed by soakd: {sorted(used - exposed)}"
