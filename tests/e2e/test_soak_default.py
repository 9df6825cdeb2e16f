"""The default config soaks the reference aggregator end to end (the README's first command:
three minutes, long enough for the detector to judge a window with the defaults)."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import pytest

from soakd.summary import validate_summary
from tests.conftest import ROOT, run_soakd


@pytest.mark.slow
def test_default_config_3m_soak_of_the_reference_aggregator(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_soakd(
        "run", "--config", str(ROOT / "config" / "soakd.toml"), "--duration", "3m",
        "--run-dir", str(run), cwd=tmp_path, timeout=330,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == str(run)
    for name in ("summary.json", "events.jsonl", "samples.db", "report.html", "report.md"):
        assert (run / name).is_file(), name
    assert (run / "snapshots").is_dir()

    summary = json.loads((run / "summary.json").read_text())
    assert validate_summary(summary) == []
    assert summary["verdict"] == "pass" and summary["exit_code"] == 0
    assert summary["detection_judged"] is True  # long enough to be judged with the defaults
    assert summary["target"] == "soakd.reference:ReferenceAggregator"
    wl = summary["workload"]
    assert wl["iterations"] > 100
    assert wl["errors"] == 0 and wl["error_rate"] == 0.0
    assert wl["throughput_per_s"] > 0
    assert 0 < wl["first_event_ms"]["p50"] < 100  # the users' "first status < 100 ms"
    assert wl["latency_ms"]["p50"] <= wl["latency_ms"]["p99"] <= wl["latency_ms"]["max"]
    assert set(wl["by_kind"]) == {"simple", "moderate", "complex"}

    # every event line parses and carries the run id
    lines = (run / "events.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert {e["run_id"] for e in parsed} == {summary["run_id"]}

    with sqlite3.connect(run / "samples.db") as db:
        ts = [t for (t,) in db.execute("SELECT t FROM samples WHERE series='rss_bytes' ORDER BY t")]
        intervals = [
            v for (v,) in db.execute("SELECT value FROM samples WHERE series='latency_p99_ms'")
        ]
    # a process sample at least every sampling interval (1 s default; allow scheduling jitter)
    assert len(ts) >= 55
    assert max(b - a for a, b in itertools.pairwise(ts)) < 1.6
    assert len(intervals) >= 5  # per-interval percentiles over time, not only for the run
