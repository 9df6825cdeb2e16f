"""Detection end to end through the real CLI: a fast subset of benchmarks/detection_suite.py.

Four soaks run at once (a heap leak, a leak-free cache plateau, a tasks leak, cyclic garbage
awaiting full collections) with fast cadences; each must get its verdict, kind and, for the
heap leak, the exact leaking line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, events, soak_env, soakd_cmd

sys.path.insert(0, str(ROOT / "benchmarks"))
from detection_suite import SCENARIOS, Scenario, config_text, expected_site

pytestmark = pytest.mark.slow

# A count leak is judged on 45 s after a warm-up end that a loaded box can push to ~70 s, and
# confirmed over a quarter of that: 140 s leave a margin of about half a minute.
DURATION_S = 140.0
# Shorter analysis window (its half is the shortest window judged) so that this suffices.
EXTRA = ["--set", "detection.window=90s"]
CASES: dict[str, dict[str, Any]] = {
    "heap-10k": {},
    "lru-cache": {"capacity": 400},  # full within 20 s, before the warm-up floor ends
    "tasks": {},
    "gc-lag": {},
}


def _scenario(name: str) -> Scenario:
    base = next(s for s in SCENARIOS if s.name == name)
    return Scenario(**{**base.__dict__, "options": {**base.options, **CASES[name]}})


@pytest.fixture(scope="module")
def soaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[int, Path]]]:
    """Runs the three soaks side by side; yields name → (exit code, run dir)."""
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name in CASES:
        work = tmp_path_factory.mktemp(name)
        config = work / "soakd.toml"
        config.write_text(config_text(_scenario(name), fast=True), encoding="utf-8")
        run_dir = work / "run"
        cmd = soakd_cmd("run", "--config", str(config), "--duration", f"{DURATION_S:g}s",
                        "--run-dir", str(run_dir), *EXTRA)  # fmt: skip
        out = (work / "soakd.out").open("wb")
        proc = subprocess.Popen(cmd, env=soak_env(), stdout=out, stderr=subprocess.STDOUT)
        out.close()
        procs[name] = (proc, run_dir)
    deadline = time.monotonic() + DURATION_S + 90.0
    results: dict[str, tuple[int, Path]] = {}
    try:
        for name, (proc, run_dir) in procs.items():
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            results[name] = (code, run_dir)
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield results


def _summary(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return data


def _explain(run_dir: Path) -> str:
    keep = ("detection.warmup_end", "detection.collecting", "attribution.ready",
            "attribution.fallback", "tracing.started", "leak.suspected", "leak.confirmed",
            "leak.cleared", "target.failed")  # fmt: skip
    return "\n".join(
        f"{e['t']:.0f}s {e['event']} {e.get('kind', '')} {e.get('site', '')}"
        for e in events(run_dir)
        if e["event"] in keep
    )


def test_heap_leak_is_found_at_its_line(soaks: dict[str, tuple[int, Path]]) -> None:
    code, run_dir = soaks["heap-10k"]
    summary = _summary(run_dir)
    assert code == 3 and summary["verdict"] == "leak", _explain(run_dir)
    top = summary["leaks"][0]
    assert top["kind"] == "heap", _explain(run_dir)
    assert top["site"] == expected_site("heap"), _explain(run_dir)
    assert top["unit"] == "bytes" and top["slope_per_h"] > 0
    names = [e["event"] for e in events(run_dir)]
    # Attributed by the sampled profiler, always on: exact tracing never had to start.
    assert names.index("attribution.ready") < names.index("leak.confirmed")
    assert "tracing.started" not in names


def test_cache_plateau_passes(soaks: dict[str, tuple[int, Path]]) -> None:
    code, run_dir = soaks["lru-cache"]
    summary = _summary(run_dir)
    assert code == 0 and summary["verdict"] == "pass", _explain(run_dir)
    assert summary["leaks"] == []
    confirmed = [e for e in events(run_dir) if e["event"] == "leak.confirmed"]
    assert confirmed == [], _explain(run_dir)  # not even a transient alarm


def test_tasks_leak_is_found(soaks: dict[str, tuple[int, Path]]) -> None:
    code, run_dir = soaks["tasks"]
    summary = _summary(run_dir)
    assert code == 3 and summary["verdict"] == "leak", _explain(run_dir)
    assert "tasks" in {leak["kind"] for leak in summary["leaks"]}, _explain(run_dir)


def test_garbage_awaiting_a_full_collection_is_not_a_leak(
    soaks: dict[str, tuple[int, Path]],
) -> None:
    """Cyclic garbage in the oldest generation grows the heap and the counts for many minutes
    (full collections are rare beside a large heap): soakd collects before it judges."""
    code, run_dir = soaks["gc-lag"]
    summary = _summary(run_dir)
    names = [e["event"] for e in events(run_dir)]
    assert "detection.collecting" in names, _explain(run_dir)
    assert code == 0 and summary["verdict"] == "pass", _explain(run_dir)
    assert summary["leaks"] == []
