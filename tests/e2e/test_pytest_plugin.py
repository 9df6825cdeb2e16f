"""The pytest plugin: generated config, growth after warm-up, checks, real soaks via pytester."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soakd.config import load_config
from soakd.pytest_plugin import (
    Growth,
    RoundStats,
    SoakResult,
    SoakUsageError,
    build_config,
    evaluate,
    format_failure,
    growth_from_series,
    measure_growth,
    read_user_config,
    short_soak_profile,
    soak_spec,
    to_toml,
)
from soakd.sinks.store import SampleStore
from tests.conftest import FAST, ROOT, TARGETS

pytest_plugins = ["pytester"]

MiB = 1024 * 1024
LEAK_LINE = next(
    i
    for i, line in enumerate((Path(TARGETS) / "simple_targets.py").read_text().splitlines(), 1)
    if "# the leak site" in line
)
LEAK_SITE = f"simple_targets.py:{LEAK_LINE}"


# --------------------------------------------------------------------------- TOML writer


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_listify(v) for v in value]
    return value


def test_to_toml_round_trips_a_config_with_awkward_values() -> None:
    doc = {
        "target": {
            "factory": "pkg.mod:Factory",
            "options": {
                "quote": 'say "hi"\\ \n\t\x7f\x01 é 🦀',
                "dotted.key": 1,
                "with space": -2.5,
                "nested": {"a": [1, 2], "b": {"c": True}},
                "list_of_dicts": [{"x": 1}, {"y": "z"}],
                "empty": {},
                "inf": math.inf,
            },
            "python_path": ("a", "b"),
        },
        "rules": [{"metric": "rss_bytes", "above": "1GiB", "for": "1m"}, {"metric": "fds"}],
        "run": {"duration": 4.0},
    }
    assert tomllib.loads(to_toml(doc)) == _listify(doc)


_scalars = (
    st.text(max_size=20)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8), st.dictionaries(st.text(max_size=8), _values, max_size=4), max_size=3
    )
)
def test_to_toml_round_trips_anything_toml_can_hold(doc: dict[str, Any]) -> None:
    assert tomllib.loads(to_toml(doc)) == doc


def test_to_toml_keeps_tables_inside_arrays_of_tables_and_quotes_keys_ending_in_newline() -> None:
    doc = {
        "rules": [{"metric": "rss_bytes", "labels": {"team": "a"}}, {"nested": {"b": {}}}],
        "a\n": {"x\n": 1},
    }
    assert tomllib.loads(to_toml(doc)) == doc


def test_to_toml_names_the_value_it_cannot_write() -> None:
    with pytest.raises(SoakUsageError, match=r"target\.options\.x = None cannot be written"):
        to_toml({"target": {"options": {"x": None}}})


# --------------------------------------------------------------------------- spec and config


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"target": "no_colon"}, "soak target must be 'module:attr'"),
        ({"duration": "soon"}, "soak duration: expected a duration"),
        ({"duration": 0}, "soak duration must be > 0: 0"),
        ({"users": True}, "soak users must be an int >= 1: True"),
        ({"rounds": 0}, "soak rounds must be an int from 1 to 100: 0"),
        ({"set": "workload.users=2"}, "soak set must be a list of 'KEY=VALUE' strings"),
        ({"set": ["nokey"]}, "soak set must be a list"),
        ({"max_rss_growth": "10XB"}, "soak max_rss_growth: expected a size"),
        ({"max_error_rate": -1}, "soak max_error_rate must be a number >= 0: -1"),
        ({"options": [1]}, "soak options must be a dict"),
    ],
)
def test_bad_soak_arguments_name_the_argument_and_value(
    kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(SoakUsageError) as info:
        soak_spec(**kwargs)
    assert needle in str(info.value)


def test_spec_parses_units() -> None:
    spec = soak_spec("a:B", duration="2m", max_rss_growth="10MB", max_error_rate=0.01)
    assert spec.duration_s == 120.0
    assert spec.max_rss_growth == 10_000_000
    assert spec.max_error_rate == 0.01


def _validated(tmp_path: Path, doc: dict[str, Any], overrides: list[str] | None = None) -> Any:
    path = tmp_path / "generated.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return load_config(path, overrides)  # soakd's own validation: the CLI would accept it


def test_config_precedence_profile_then_file_then_arguments_then_set(tmp_path: Path) -> None:
    user = tmp_path / "user.toml"
    user.write_text(
        '[target]\nfactory = "file:Factory"\npython_path = ["lib"]\n'
        "[target.options]\nscale = 2\nseed = 1\n"
        '[workload]\nusers = 9\nqueries_file = "q.txt"\n'
        '[sampling]\nprocess_interval = "2s"\n',
        encoding="utf-8",
    )
    (tmp_path / "q.txt").write_text("one query\n", encoding="utf-8")
    spec = soak_spec(
        "arg:Factory", users=3, options={"seed": 7}, rounds=4, set=["workload.users=5"]
    )
    doc = build_config(spec, 20.0, read_user_config(user))
    config = _validated(tmp_path, doc)
    assert config.target.factory == "arg:Factory"  # argument beats file
    assert config.target.options == {"scale": 2, "seed": 7}  # merged, argument wins per key
    assert config.target.python_path == (str(tmp_path / "lib"),)  # still the file's lib dir
    assert config.workload.queries_file == str(tmp_path / "q.txt")
    assert config.workload.users == 3
    assert config.sampling.process_interval == 2.0  # file beats the short-soak profile
    assert config.sampling.analysis_interval == 1.0  # profile beats soakd's 10 s default
    assert config.run.duration == 20.0
    assert config.detection.warmup == 5.0  # the first of four rounds
    assert config.detection.warmup_max >= config.detection.warmup
    assert _validated(tmp_path, doc, list(spec.overrides)).workload.users == 5  # set is last


@pytest.mark.parametrize("duration", [1.0, 20.0, 300.0, 6 * 3600.0])
def test_short_soak_profile_is_valid_and_never_slower_than_defaults(
    tmp_path: Path, duration: float
) -> None:
    profile = short_soak_profile(duration)
    config = _validated(tmp_path, profile)
    assert 0.25 <= config.sampling.process_interval <= 1.0
    assert config.sampling.analysis_interval <= 10.0
    assert config.workload.interval <= 10.0
    if duration <= 25:
        assert config.sampling.process_interval == 0.25
        assert config.workload.interval == 1.0


def test_fast_test_preset_runs_at_the_short_soak_profile_floor(tmp_path: Path) -> None:
    fast = _validated(tmp_path, tomllib.loads(FAST))
    floor = _validated(tmp_path, short_soak_profile(1.0))
    assert fast.sampling == floor.sampling
    assert fast.workload.interval == floor.workload.interval
    assert fast.run.stop_timeout == floor.run.stop_timeout


def test_detection_is_scaled_so_that_a_short_soak_is_judged() -> None:
    detection = build_config(soak_spec("a:B"), 30.0)["detection"]
    assert detection == {"warmup": 6.0, "warmup_max": 12.0, "window": 18.0}
    # warm-up at its latest, then the shortest window (half the window), within the soak
    assert detection["warmup_max"] + detection["window"] / 2 < 30.0
    # an hour's soak gets soakd's own defaults
    assert build_config(soak_spec("a:B"), 3600.0)["detection"] == {
        "warmup": 60.0, "warmup_max": 600.0, "window": 1800.0
    }  # fmt: skip


def test_unreadable_user_config_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[target\n", encoding="utf-8")
    with pytest.raises(SoakUsageError, match="not valid TOML"):
        read_user_config(bad)
    with pytest.raises(SoakUsageError, match="cannot read"):
        read_user_config(tmp_path / "missing.toml")


# --------------------------------------------------------------------------- growth


def test_growth_is_judged_after_the_first_round() -> None:
    # 0–10 s: warm-up climbs 50 MiB; 10–30 s: flat. Worker ready at 0, stop at 30.
    rss = [(t, 100 * MiB + min(t, 10.0) * 5 * MiB) for t in range(31)]
    growth = growth_from_series(rss, [], [], 0.0, 30.0, rounds=3)
    assert growth.growth_bytes == 0
    assert growth.since_s == 10.0
    assert [r.growth_bytes for r in growth.rounds] == [50 * MiB, 0, 0]
    whole = growth_from_series(rss, [], [], 0.0, 30.0, rounds=1)
    assert whole.growth_bytes == 50 * MiB and whole.since_s == 0.0


def test_steady_growth_after_warm_up_is_measured_per_round() -> None:
    rss = [(float(t), 100 * MiB + t * MiB) for t in range(0, 41)]
    workload = [(float(t), {"iterations": 10}) for t in range(1, 41)]
    growth = growth_from_series(rss, [], workload, 10.0, 40.0, rounds=3)
    assert growth.growth_bytes == 20 * MiB  # from 20 s (end of round 1) to 40 s
    assert [(r.start_s, r.end_s) for r in growth.rounds] == [(10, 20), (20, 30), (30, 40)]
    assert [r.iterations for r in growth.rounds] == [100, 100, 100]
    assert growth.rounds[-1].rss_end_bytes == 140 * MiB


def test_tracemalloc_overhead_is_not_growth() -> None:
    # Tracing starts at 12 s and its bookkeeping grows 1 MiB/s; the app itself is flat.
    rss = [(float(t), 100 * MiB + max(0, t - 12) * MiB) for t in range(31)]
    overhead = [(float(t), (t - 12) * MiB) for t in range(12, 31)]
    growth = growth_from_series(rss, overhead, [], 0.0, 30.0, rounds=2)
    assert growth.growth_bytes == 0
    naive = growth_from_series(rss, [], [], 0.0, 30.0, rounds=2)
    assert naive.growth_bytes == 15 * MiB


def test_end_is_read_at_the_stop_not_after_the_final_snapshot() -> None:
    rss = [(float(t), 100 * MiB) for t in range(21)] + [(21.0, 300 * MiB)]  # snapshot spike
    assert growth_from_series(rss, [], [], 0.0, 20.0, rounds=2).growth_bytes == 0


def test_measure_growth_reads_the_run_directory(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "samples.db")
    for t in range(0, 21):
        store.add(float(t), {"rss_bytes": 100 * MiB + (t if t > 11 else 0) * MiB})
    store.add(22.0, {"rss_bytes": 500 * MiB})
    store.close()
    lines = [{"event": "worker.ready", "t": 2.0}, {"event": "run.stopping", "t": 20.0}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    growth = measure_growth(tmp_path, rounds=2)
    assert growth.since_s == 11.0  # ready at 2 s, stopping at 20 s: round 1 ends at 11 s
    assert growth.growth_bytes == 20 * MiB  # not the 500 MiB sample after the stop
    assert measure_growth(tmp_path / "nothing", rounds=2) == Growth(None, None, ())


# --------------------------------------------------------------------------- checks and message


def _summary(**extra: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "verdict": "pass",
        "exit_code": 0,
        "target": "pkg:T",
        "workload": {
            "iterations": 200,
            "errors": 0,
            "error_rate": 0.0,
            "first_event_ms": {"p50": 250.0},
            "milestones_ms": {"first_status": {"p50": 40.0, "count": 200}},
        },
        "memory": {"rss_start_bytes": 10 * MiB, "rss_end_bytes": 12 * MiB},
        "leaks": [],
        "breaches": [],
    }
    summary.update(extra)
    return summary


def test_evaluate_passes_a_clean_soak() -> None:
    spec = soak_spec(max_rss_growth="10MB", max_error_rate=0.01, max_first_event_ms=100)
    assert evaluate(_summary(), Growth(MiB, 5.0, ()), spec) == []


def test_evaluate_names_every_failed_check() -> None:
    spec = soak_spec(max_rss_growth="10MB", max_error_rate=0.01, max_first_event_ms=20, rounds=2)
    summary = _summary(verdict="aborted", exit_code=4)
    summary["workload"].update(errors=4, error_rate=0.02, errors_by_class={"ValueError": 4})
    failures = evaluate(summary, Growth(20 * MiB, 7.5, ()), spec)
    text = "\n".join(failures)
    assert "soakd verdict: aborted (exit code 4)" in text
    assert "RSS grew 20.0 MiB after warm-up (from the end of round 1 at 7.5s)" in text
    assert "max_rss_growth 10MB (9.5 MiB)" in text
    assert 'error rate 2.00% (4 of 200 iterations, {"ValueError": 4})' in text
    assert "first status p50 40.0 ms above max_first_event_ms 20 ms" in text
    assert len(failures) == 4


def test_first_event_falls_back_when_the_target_yields_no_status() -> None:
    summary = _summary()
    summary["workload"]["milestones_ms"]["first_status"]["count"] = 0
    spec = soak_spec(max_first_event_ms=100)
    assert evaluate(summary, Growth(0, 0.0, ()), spec) == [
        "first status p50 250.0 ms above max_first_event_ms 100 ms"
    ]


def test_leak_message_shows_site_line_traceback_and_run_dir(tmp_path: Path) -> None:
    leak = {
        "kind": "heap",
        "site": "/app/cache.py:42",
        "line": "CACHE.append(item)",
        "traceback": ["/app/cache.py:42", "/app/handler.py:7"],
        "type": None,
        "slope_per_h": 50 * MiB,
        "unit": "bytes",
        "growth": 3 * MiB,
        "p_value": 0.001,
        "first_detected_s": 75.0,
    }
    summary = _summary(verdict="leak", exit_code=3, leaks=[leak])
    spec = soak_spec("pkg:T")
    result = SoakResult(
        target="pkg:T", verdict="leak", exit_code=3, summary=summary,
        run_dir=tmp_path / "run", soak_dir=tmp_path,
        rounds=(RoundStats(1, 0, 5, 10 * MiB, 2 * MiB, 10), RoundStats(2, 5, 10, 11 * MiB, MiB, 9)),
        failures=tuple(evaluate(summary, Growth(MiB, 5.0, ()), spec)),
    )  # fmt: skip
    text = result.message()
    assert text == format_failure(result)
    assert "soakd verdict: leak (exit code 3)" in text
    assert "leak (heap) at /app/cache.py:42: CACHE.append(item): +50.0 MiB/h" in text
    assert "      /app/handler.py:7" in text
    assert "1: +2.0 MiB in 10 it, 2: +1.0 MiB in 9 it" in text
    assert f"run directory: {tmp_path / 'run'}" in text
    assert "tracemalloc=always" not in text  # a confirmed leak already names its line


def test_growth_failure_without_snapshots_says_how_to_see_the_line(tmp_path: Path) -> None:
    spec = soak_spec("pkg:T", max_rss_growth="1MB")
    summary = _summary()
    result = SoakResult(
        target="pkg:T", verdict="pass", exit_code=0, summary=summary, run_dir=tmp_path,
        soak_dir=tmp_path, rss_growth_bytes=5 * MiB,
        failures=tuple(evaluate(summary, Growth(5 * MiB, 0.0, ()), spec)),
    )  # fmt: skip
    text = result.message()
    assert "RSS grew 5.0 MiB from worker start (0s)" in text
    assert "set=['sampling.tracemalloc=always']" in text


# --------------------------------------------------------------------------- real soaks


SOAK_TESTS = """
import pytest
from soakd.pytest_plugin import SOAK_RESULT

@pytest.mark.soak(target="simple_targets:Echo", duration="10m", users=2, rounds=2,
                  max_rss_growth="30MB", max_error_rate=0.01, max_first_event_ms=500)
def test_echo_passes(request):
    result = request.node.soak_result
    assert result is request.node.stash[SOAK_RESULT]
    # 4 s: soakd judges no window, the growth bound judged the soak
    assert result.verdict == "inconclusive" and result.exit_code == 7 and result.passed
    assert result.summary["workload"]["iterations"] > 20
    assert result.summary["duration_s"] < 30  # --soakd-duration beat the marker's 10m
    assert len(result.rounds) == 2 and result.growth_since_s == result.rounds[0].end_s
    assert (result.run_dir / "summary.json").is_file()  # still there during the test

def test_leaky_fails_with_site(soak):
    soak("simple_targets:Leaky", duration="4s", rounds=2, options={"kb": 256},
         max_rss_growth="5MB", set=["sampling.tracemalloc=always"])

@pytest.mark.soak("no_such_module_xyz:Thing")
def test_broken_target():
    pass

@pytest.mark.soak(target="simple_targets:Hangs", duration="10m")
def test_deselected():
    raise AssertionError("-k must have deselected me")
"""


def _inner_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{TARGETS}")
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


@pytest.mark.slow
def test_marker_and_fixture_soak_pass_fail_and_k_selects(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _inner_env(monkeypatch)
    runs = tmp_path / "runs"
    pytester.makepyfile(test_soaks=SOAK_TESTS)
    result = pytester.runpytest_subprocess(
        "--soakd-duration=4s", f"--soakd-runs-dir={runs}", "-k", "not deselected", "-p",
        "no:cacheprovider", timeout=120,
    )  # fmt: skip
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=2, deselected=1)
    # The leak: the growth check trips, the message points at the line and the run dir.
    assert "soak of simple_targets:Leaky failed" in out
    assert "after warm-up (from the end of round 1" in out
    assert LEAK_SITE in out
    assert "_KEEP.append(os.urandom(self.kb * 1024))" in out
    kept = sorted(p.name for p in runs.iterdir())
    assert len(kept) == 2  # the passing soak's directory went; failures stay
    leak_dir = runs / next(n for n in kept if "leaky" in n)
    assert f"run directory: {leak_dir / 'run'}" in out
    summary = json.loads((leak_dir / "run" / "summary.json").read_text())
    for leak in summary["leaks"]:  # when soakd itself confirmed it, its site is named too
        assert (leak["site"] or leak["type"] or leak["kind"]) in out
    # The broken target: soakd's verdict and reason.
    assert (
        "soak of no_such_module_xyz:Thing failed (soakd verdict target_failed, exit code 5)" in out
    )
    assert "cannot import target module 'no_such_module_xyz'" in out
    assert "test_soaks.py::test_echo_passes: ok, verdict inconclusive" in out
    assert "removed (--soakd-keep keeps it)" in out


KEEP_TESTS = """
def test_echo_kept(soak, tmp_path):
    result = soak(config="soak.toml", duration="3s", max_error_rate=0.0, max_rss_growth="50MB",
                  check=False)
    assert result.passed, result.message()
    assert result.target == "simple_targets:Echo"  # from the config file beside this module
    assert result.summary["workload"]["errors"] == 0
    (tmp_path.parent / "ran_a").write_text(str(result.run_dir))

def test_errors_fail(soak):
    soak("simple_targets:AlwaysRaises", duration="3s", max_error_rate=0.01)

def test_never_runs(tmp_path):
    raise AssertionError("-x must stop before me")
"""


@pytest.mark.slow
def test_keep_and_exitfirst_and_error_rate(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _inner_env(monkeypatch)
    sub = pytester.mkdir("sub")
    (sub / "test_keep.py").write_text(KEEP_TESTS, encoding="utf-8")
    (sub / "soak.toml").write_text('[target]\nfactory = "simple_targets:Echo"\n', encoding="utf-8")
    base = tmp_path / "inner-tmp"
    result = pytester.runpytest_subprocess(
        "--soakd-keep", "-x", f"--basetemp={base}", "-p", "no:cacheprovider", "sub", timeout=120
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    assert "error rate 100.00%" in out and '"ValueError"' in out
    kept_run = Path((base / "ran_a").read_text())
    assert (kept_run / "summary.json").is_file()  # passing, but --soakd-keep kept it
    failed = "soak of simple_targets:AlwaysRaises failed (soakd verdict target_failed, exit code 5)"
    assert failed in out
    assert "why: unhealthy: error rate 100.0%" in out


@pytest.mark.slow
def test_bad_marker_argument_fails_the_test_naming_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inner_env(monkeypatch)
    pytester.makepyfile(
        test_bad="""
import pytest
@pytest.mark.soak(target="a:B", durations="5s")
def test_typo():
    pass
@pytest.mark.soak(target="a:B", rounds=0)
def test_rounds():
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--soakd-duration=1s")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "@pytest.mark.soak: unknown argument(s) ['durations']; valid: target" in out
    assert "@pytest.mark.soak: soak rounds must be an int from 1 to 100: 0" in out
    assert "During handling" not in out  # a clean message, no chained exception
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--soakd-duration=soon")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--soakd-duration 'soon': expected a duration*"])
