"""Attribution: the sampled profiler from the start (the default), and tracemalloc on suspicion
where the profiler is off (the fallback): it starts when something grows and stops once the leak
has a site."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import events, run_soakd, soak_env, soak_until, write_config


@pytest.mark.slow
def test_tracing_starts_on_suspicion_and_stops_once_the_leak_is_attributed(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        """
[target]
factory = "simple_targets:Leaky"
options = { kb = 20 }
[detection]
warmup = "5s"
warmup_max = "20s"
window = "20s"
confirm_after = 2
""",
    )
    run = tmp_path / "run"
    proc = soak_until(
        "run", "-c", str(cfg), "-d", "240s", "--run-dir", str(run),
        "--set", "sampling.profiler=off",
        until=lambda evs: [e for e in evs if e["event"] == "tracing.stopped"],
        timeout=240, cwd=tmp_path, run_dir=run,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    evs = events(run)
    started = [e for e in evs if e["event"] == "tracing.started"]
    stopped = [e for e in evs if e["event"] == "tracing.stopped"]
    confirmed = [e for e in evs if e["event"] == "leak.confirmed" and e["site"]]
    assert started and started[0]["reason"] == "suspicion"
    assert confirmed and confirmed[0]["site"].endswith("simple_targets.py:34")
    assert stopped and stopped[0]["reason"] == "attributed"
    assert started[0]["t"] < confirmed[0]["t"] < stopped[0]["t"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["leaks"][0]["site"].endswith("simple_targets.py:34")  # still reported


@pytest.mark.slow
def test_the_sampled_profiler_attributes_a_leak_without_tracemalloc(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        """
[target]
factory = "simple_targets:Leaky"
options = { kb = 20 }
[detection]
warmup = "5s"
warmup_max = "20s"
window = "20s"
confirm_after = 2
""",
    )
    run = tmp_path / "run"
    proc = soak_until(
        "run", "-c", str(cfg), "-d", "150s", "--run-dir", str(run),
        until=lambda evs: [e for e in evs if e["event"] == "leak.confirmed" and e["site"]],
        timeout=150, cwd=tmp_path, run_dir=run,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    evs = events(run)
    started = next(e for e in evs if e["event"] == "run.started")
    assert started["attribution"]["mode"] == "sampled", started
    ready = [e for e in evs if e["event"] == "attribution.ready"]
    assert ready and ready[0]["mode"] == "sampled" and ready[0]["interval_bytes"] == 64 * 1024
    assert not [e for e in evs if e["event"] == "tracing.started"]
    # The growth was suspected before any site explained it: the profiler zoomed in for it.
    # A zoom, when the growth was suspected before a site explained it, comes first and at 8 KiB.
    zoomed = [e for e in evs if e["event"] == "attribution.zoomed"]
    confirmed = [e for e in evs if e["event"] == "leak.confirmed" and e["site"]]
    for z in zoomed[:1]:
        assert z["interval_bytes"] == 8192 and z["reason"] == "suspicion"
        assert z["t"] < confirmed[0]["t"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["leaks"][0]["site"].endswith("simple_targets.py:34")
    if zoomed:
        assert "profiler_zoom" in summary["perturbation"]["by_cause"], summary["perturbation"]
    # Snapshots carry the sampled estimates, and `soakd diff` says how noisy they are; the
    # baseline was taken again when the zoomed profile started.
    latest = run / "snapshots" / "latest.json.gz"
    baseline = run / "snapshots" / "baseline.json.gz"
    diff = run_soakd("diff", str(baseline), str(latest), cwd=tmp_path)
    assert diff.returncode == 0, diff.stderr
    every = "8.0" if zoomed else "64.0"
    assert f"sampled every {every} KiB" in diff.stdout and "±" in diff.stdout
    assert "simple_targets.py:34" in diff.stdout


def test_without_the_extension_soakd_says_what_it_lost_and_falls_back(tmp_path: Path) -> None:
    # What a box without a C compiler gets: `soakd._profiler` cannot be imported. A
    # sitecustomize on the path blocks the import in every soakd process, as a missing build.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoProfiler:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'soakd._profiler':\n"
        "            raise ImportError('soakd._profiler was not built (simulated)')\n"
        "sys.meta_path.insert(0, _NoProfiler())\n",
        encoding="utf-8",
    )
    cfg = write_config(tmp_path, '[target]\nfactory = "simple_targets:Echo"\n')
    run = tmp_path / "run"
    env = soak_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    proc = run_soakd(
        "run", "-c", str(cfg), "-d", "4s", "--run-dir", str(run), cwd=tmp_path, env=env
    )  # fmt: skip
    assert proc.returncode in (0, 7), proc.stderr[-2000:]
    evs = events(run)
    plan = next(e for e in evs if e["event"] == "run.started")["attribution"]
    assert plan["mode"] == "tracemalloc" and "not built" in plan["lost"], plan
    fallback = [e for e in evs if e["event"] == "attribution.fallback"]
    assert fallback and "not built" in fallback[0]["lost"], fallback
    assert fallback[0]["tracemalloc"] == "on-suspicion"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["attribution"]["mode"] == "tracemalloc"
