"""soakd's own work in the target, through the real CLI: the gc type walks of a short run are
recorded as ``target.perturbed`` spans, the workload is judged without the intervals they
overlap, and the report shades them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import events, run_soakd, write_config


def test_type_walks_are_perturbations_left_out_of_the_workload(tmp_path: Path) -> None:
    # FAST walks the target's gc types every 2 s; workload intervals are 1 s. 14 s leaves
    # room for a slow worker start on a loaded box (an 8 s run once saw no walk at all).
    cfg = write_config(tmp_path, '[target]\nfactory = "simple_targets:Echo"\n')
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "14s", "--run-dir", str(run), cwd=tmp_path,
                     timeout=60)  # fmt: skip
    assert proc.returncode in (0, 7), proc.stderr[-2000:]  # pass, or too short to judge
    spans = [e for e in events(run) if e["event"] == "target.perturbed"]
    types = [e for e in spans if e["cause"] == "types"]
    started = [e["t"] for e in events(run) if e["event"] == "worker.ready"]
    assert types, f"no types span among {len(spans)} target.perturbed events (ready {started})"
    for e in types:
        assert e["end"] >= e["start"] >= 0 and e["duration_ms"] >= 0
    perturbed = [e for e in events(run) if e["event"] == "workload.interval" and e.get("perturbed")]
    assert perturbed, "no workload interval overlapped a type walk"

    summary: dict[str, Any] = json.loads((run / "summary.json").read_text())
    p = summary["perturbation"]
    assert p["spans"] >= 1 and p["by_cause"]["types"]["spans"] >= 1
    assert p["excluded_intervals"] >= 1 and 0 < p["share"] < 1
    workload = summary["workload"]
    u = workload["unperturbed"]
    assert u["seconds"] < workload["duration_s"]
    # judged and left out add up to the workload's span (intervals partition it)
    assert abs(u["seconds"] + p["excluded_seconds"] - workload["duration_s"]) < 1.0
    assert u["iterations"] + p["excluded_iterations"] == workload["iterations"]

    html = (run / "report.html").read_text()
    assert 'class="perturbed"' in html and "own work in the target" in html
    assert "## soakd's own work in the target" in (run / "report.md").read_text()
