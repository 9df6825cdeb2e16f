"""``soakd compare``: regressions against earlier runs, from hand-built summaries."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from soakd.commands.compare import (
    EXIT_REGRESSION,
    METRICS,
    Selection,
    collect_baselines,
    compare_metric,
    run,
)
from soakd.errors import CommandError, RunDirError

THROUGHPUT = next(m for m in METRICS if m.name == "workload.throughput_per_s")
ERROR_RATE = next(m for m in METRICS if m.name == "workload.error_rate")
RSS_SLOPE = next(m for m in METRICS if m.name == "memory.rss_slope_bytes_per_h")


def _summary(
    *, throughput: float = 100.0, p99: float = 200.0, started: str = "2024-05-01T10:00:00Z",
    target: str = "svc:Agg", rss_slope: float = 100_000.0, verdict: str = "pass",
    interrupted: bool = False, duration: float = 600.0, judged: bool = True,
    config_hash: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "schema": "soakd.summary/1",
        "run_id": "x",
        "started_at": started,
        "target": target,
        "verdict": verdict,
        "interrupted": interrupted,
        "duration_s": duration,
        "detection": {"warmup_end_s": 60.0 if judged else None, "on_leak": "fail"},
        "detection_judged": judged,
        **({"config_hash": config_hash} if config_hash else {}),
        "workload": {
            "iterations": 1000,
            "errors": 0,
            "error_rate": 0.0,
            "throughput_per_s": throughput,
            "latency_ms": {"p50": 50.0, "p90": 120.0, "p99": p99, "max": 900.0},
            "first_event_ms": {"p50": 10.0, "p90": 20.0, "p99": 30.0, "max": 90.0},
        },
        "memory": {
            "rss_start_bytes": 80e6,
            "rss_end_bytes": 90e6,
            "rss_peak_bytes": 91e6,
            "rss_slope_bytes_per_h": rss_slope,
            "heap_slope_bytes_per_h": 50_000.0,
        },
        "leaks": [],
        "breaches": [],
    }


def _write(path: Path, summary: dict[str, Any]) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Five baseline runs wobbling ±3 % around 100/s, an old slow one, one of another target."""
    runs = tmp_path / "runs"
    for i, tp in enumerate([98.0, 103.0, 100.0, 97.0, 102.0]):
        _write(runs / f"r{i}", _summary(throughput=tp, started=f"2024-05-0{i + 2}T10:00:00Z"))
    _write(runs / "ancient", _summary(throughput=40.0, started="2023-01-01T00:00:00Z"))
    _write(runs / "other", _summary(throughput=5.0, target="other:Svc"))
    (runs / "junk").mkdir()
    (runs / "junk" / "summary.json").write_text("{not json")
    return runs


def _args(run_dir: Path, *baselines: Path, **kw: Any) -> argparse.Namespace:
    return argparse.Namespace(
        run_dir=run_dir,
        baseline=list(baselines),
        last=kw.get("last", 5),
        threshold=kw.get("threshold", 0.15),
        json=kw.get("json", False),
    )


def test_thirty_percent_throughput_drop_is_a_regression(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cand = _write(tmp_path / "cand", _summary(throughput=70.0))
    assert run(_args(cand, runs)) == EXIT_REGRESSION
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("workload.throughput_per_s"))
    assert "REGRESSION" in row and "-30.0%" in row
    assert "against 5 baseline run(s)" in out
    # every other metric matches the baselines
    assert sum("REGRESSION" in line for line in out.splitlines()) == 2  # the row and the verdict


def test_five_percent_wobble_is_not_a_regression(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cand = _write(tmp_path / "cand", _summary(throughput=95.0, p99=209.0))
    assert run(_args(cand, runs)) == 0
    assert capsys.readouterr().out.rstrip().endswith("no regression")


def test_json_output_and_baseline_selection(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cand = _write(tmp_path / "cand", _summary(throughput=100.0, p99=400.0))
    assert run(_args(cand, runs, last=3, json=True)) == EXIT_REGRESSION
    payload = json.loads(capsys.readouterr().out)
    # newest three of the same target; the ancient run, the other target and junk are left out
    assert sorted(Path(p).name for p in payload["baselines"]) == ["r2", "r3", "r4"]
    rows = {m["metric"]: m for m in payload["metrics"]}
    assert rows["workload.latency_ms.p99"]["regression"] is True
    assert rows["workload.latency_ms.p99"]["change"] == pytest.approx(1.0)
    assert rows["workload.throughput_per_s"]["baseline_mean"] == pytest.approx(99.666, abs=1e-2)
    assert payload["regression"] is True


def test_explicit_run_dirs_as_baselines(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", _summary(throughput=100.0))
    b = _write(tmp_path / "b", _summary(throughput=100.0))
    cand = _write(tmp_path / "cand", _summary(throughput=100.0))
    found, skipped = collect_baselines([a, b, a, cand], Selection("svc:Agg", None), 10, cand)
    assert [p.name for p, _ in found] == ["a", "b"]  # deduplicated, the run itself excluded
    assert skipped == []


def test_compare_metric_rules() -> None:
    # one baseline: the relative threshold alone
    assert compare_metric(THROUGHPUT, 84.0, [100.0], 0.15).regression is True
    assert compare_metric(THROUGHPUT, 86.0, [100.0], 0.15).regression is False
    # better is never a regression
    assert compare_metric(THROUGHPUT, 500.0, [100.0], 0.15).regression is False
    # beyond the threshold but inside the baselines' own 2σ spread: noise
    noisy = [60.0, 140.0, 100.0, 70.0, 130.0]
    assert compare_metric(THROUGHPUT, 70.0, noisy, 0.15).regression is False
    assert compare_metric(THROUGHPUT, 20.0, noisy, 0.15).regression is True
    # zero baselines: the absolute floor decides (0.5 pp of errors, 1 MiB/h of slope)
    assert compare_metric(ERROR_RATE, 0.001, [0.0, 0.0], 0.15).regression is False
    assert compare_metric(ERROR_RATE, 0.02, [0.0, 0.0], 0.15).regression is True
    assert compare_metric(ERROR_RATE, 0.02, [0.0], 0.15).change is None
    assert compare_metric(RSS_SLOPE, 500_000.0, [0.0], 0.15).regression is False
    assert compare_metric(RSS_SLOPE, 50e6, [0.0], 0.15).regression is True
    # missing data is reported, not judged
    assert compare_metric(THROUGHPUT, None, [100.0], 0.15).regression is False
    assert compare_metric(THROUGHPUT, 1.0, [], 0.15).baselines == 0


def test_bad_input_is_a_command_error(tmp_path: Path, runs: Path) -> None:
    cand = _write(tmp_path / "cand", _summary())
    with pytest.raises(CommandError, match="run directory not found"):
        run(_args(tmp_path / "missing", runs))
    with pytest.raises(CommandError, match="baseline not found"):
        run(_args(cand, tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CommandError, match="neither a run directory nor a runs directory"):
        run(_args(cand, empty))
    other = _write(tmp_path / "others" / "o1", _summary(target="other:Svc"))
    with pytest.raises(CommandError, match="nothing comparable"):
        run(_args(cand, other.parent))
    (cand / "summary.json").write_text('{"throughput": ' + "9" * 5000 + "}")
    with pytest.raises(RunDirError, match="is not valid JSON"):
        run(_args(cand, runs))
    with pytest.raises(CommandError, match="--threshold"):
        run(_args(cand, runs, threshold=float("nan")))


@pytest.mark.slow
def test_compare_cli_exit_codes(runs: Path, tmp_path: Path) -> None:
    slow = _write(tmp_path / "slow", _summary(throughput=70.0))
    fine = _write(tmp_path / "fine", _summary(throughput=101.0))

    soakd = _soakd_compare

    # --last 5: the newest five; the ancient 40/s run would widen the spread past 70/s
    assert soakd(str(slow), "--baseline", str(runs), "--last", "5").returncode == 6
    assert soakd(str(slow), "--baseline", str(runs)).returncode == 0
    assert soakd(str(fine), "--baseline", str(runs), "--last", "5").returncode == 0
    bad = soakd(str(tmp_path / "missing"), "--baseline", str(runs))
    assert bad.returncode == 2
    assert bad.stderr.startswith("soakd: error: run directory not found")


def _soakd_compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soakd", "compare", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Three good runs at ~100/s among runs that must not be baselines, all newer than them."""
    runs = tmp_path / "mixed"
    day = iter(range(1, 30))

    def add(name: str, **kw: Any) -> None:
        _write(runs / name, _summary(started=f"2024-06-{next(day):02d}T10:00:00Z", **kw))

    for i, tp in enumerate([99.0, 101.0, 100.0]):
        add(f"good{i}", throughput=tp, config_hash="c0ffee")
    # the kinds of run that fooled compare: zero or low figures in a baseline
    add("failed", throughput=0.0, verdict="target_failed", config_hash="c0ffee")
    add("aborted", throughput=10.0, p99=5000.0, verdict="aborted", config_hash="c0ffee")
    add("interrupted", throughput=50.0, verdict="inconclusive", interrupted=True,
        config_hash="c0ffee")  # fmt: skip
    add("inconclusive", throughput=20.0, verdict="inconclusive", judged=False,
        config_hash="c0ffee")  # fmt: skip
    add("short", throughput=30.0, duration=80.0, config_hash="c0ffee")  # judged 20 s
    add("other-config", throughput=500.0, config_hash="beef")
    return runs


@pytest.mark.slow
def test_compare_skips_failed_aborted_and_interrupted_baselines(
    mixed: Path, tmp_path: Path
) -> None:
    cand = _write(tmp_path / "cand", _summary(throughput=100.0, config_hash="c0ffee"))
    out = _soakd_compare(str(cand), "--baseline", str(mixed), "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert sorted(Path(p).name for p in payload["baselines"]) == ["good0", "good1", "good2"]
    reasons = {Path(s["run"]).name: s["reason"] for s in payload["skipped"]}
    assert reasons["failed"].startswith("target_failed")
    assert reasons["aborted"].startswith("aborted")
    assert reasons["interrupted"].startswith("interrupted")
    assert reasons["inconclusive"].startswith("inconclusive")
    assert "less than --min-judged" in reasons["short"]
    assert "config hash beef" in reasons["other-config"]
    rows = {m["metric"]: m for m in payload["metrics"]}
    # the mean of the good runs only: not halved by a failed run's zero
    assert rows["workload.throughput_per_s"]["baseline_mean"] == pytest.approx(100.0)
    assert rows["workload.throughput_per_s"]["baselines"] == 3
    assert not any(m["regression"] for m in payload["metrics"])
    assert payload["config_hash"] == "c0ffee" and payload["verdict"] == "pass"

    # the text output lists every skipped run with its reason
    text_out = _soakd_compare(str(cand), "--baseline", str(mixed))
    assert text_out.returncode == 0
    skipped_lines = [line for line in text_out.stdout.splitlines() if "skipped" in line]
    assert len(skipped_lines) == 6
    assert "against 3 baseline run(s)" in text_out.stdout

    # a real drop is still a regression against the good runs
    slow = _write(tmp_path / "slow", _summary(throughput=70.0, config_hash="c0ffee"))
    assert _soakd_compare(str(slow), "--baseline", str(mixed)).returncode == 6


@pytest.mark.slow
def test_compare_takes_a_failed_run_only_on_purpose(mixed: Path, tmp_path: Path) -> None:
    cand = _write(tmp_path / "cand", _summary(throughput=100.0, config_hash="c0ffee"))
    out = _soakd_compare(str(cand), "--baseline", str(mixed), "--allow", "target_failed", "--json")
    payload = json.loads(out.stdout)
    assert "failed" in {Path(p).name for p in payload["baselines"]}
    rows = {m["metric"]: m for m in payload["metrics"]}
    assert rows["workload.throughput_per_s"]["baselines"] == 4
    assert rows["workload.throughput_per_s"]["baseline_mean"] == pytest.approx(75.0)
    # other configs on purpose too
    wide = _soakd_compare(str(cand), "--baseline", str(mixed), "--any-config", "--json")
    assert "other-config" in {Path(p).name for p in json.loads(wide.stdout)["baselines"]}


@pytest.mark.slow
def test_compare_exits_2_when_nothing_is_comparable(tmp_path: Path) -> None:
    runs = tmp_path / "bad"
    _write(runs / "failed", _summary(verdict="target_failed", throughput=0.0))
    _write(runs / "aborted", _summary(verdict="aborted"))
    _write(runs / "interrupted", _summary(verdict="inconclusive", interrupted=True))
    cand = _write(tmp_path / "cand", _summary())
    out = _soakd_compare(str(cand), "--baseline", str(runs))
    assert out.returncode == 2
    assert out.stderr.startswith("soakd: error: nothing comparable")
    for name in ("failed", "aborted", "interrupted"):
        assert f"/{name}: " in out.stderr
    assert "--allow" in out.stderr  # the fix is named
    bad = _soakd_compare(str(cand), "--baseline", str(runs), "--min-judged", "soon")
    assert bad.returncode == 2 and "duration" in bad.stderr
