"""pytest plugin (entry point ``pytest11``): short soaks of a target from a test.

Two ways in, both running the real CLI (``python -m soakd run``) in a subprocess, so the target
runs in its own worker process exactly as in a long soak::

    @pytest.mark.soak(target="pkg.mod:Factory", duration="60s", users=8, rounds=3,
                      max_rss_growth="10MB", max_error_rate=0.01, max_first_event_ms=100)
    def test_no_leak(request):
        result = request.node.soak_result        # SoakResult, also item.stash[SOAK_RESULT]
        assert result.summary["workload"]["iterations"] > 100

    def test_no_leak_either(soak):
        result = soak("pkg.mod:Factory", duration="20s", options={"scale": 2},
                      max_rss_growth="10MB")

Other arguments: ``method``, ``options`` (the factory's keyword arguments), ``config`` (a soakd
TOML file; a relative path is relative to the test module's directory), ``set`` (``KEY=VALUE``
overrides, applied last, as ``soakd run --set``); the fixture also takes ``check=False`` to get
the result back instead of a failure. The marker's soak runs before the test body (in the call
phase), so a failed soak is a failed test, not an error.

A soak fails the test (with soakd's verdict, leaks with site and traceback, the top growing
allocation sites when snapshots exist, and the kept run directory) when:

- the verdict is ``leak``, ``aborted``, ``target_failed`` or ``error``;
- the verdict is ``inconclusive`` (soakd judged no full window, or the soak was interrupted)
  and the soak has no ``max_rss_growth`` of its own to judge by (or was interrupted);
- RSS growth after warm-up exceeds ``max_rss_growth`` (see below);
- the error rate exceeds ``max_error_rate``;
- the p50 time to the first ``status`` event (the ``first_status`` milestone; the first event
  of any type when the target yields no status) exceeds ``max_first_event_ms``.

The workload limits judge the intervals soakd did not perturb (``workload.unperturbed`` in
summary.json: intervals overlapped by soakd's own work in the target, such as exact tracing or a
gc type walk, are left out) whenever the run recorded them; the failure message then says how
many seconds, intervals and iterations were left out, and what soakd's work was.

Rounds and warm-up. ``rounds=N`` splits ONE soak's workload span — from ``worker.ready`` to
``run.stopping`` — into N equal rounds. The first round is the warm-up: soakd's own
``detection.warmup`` is set to one round, and RSS growth is judged as
``rss(end of last round) - rss(end of round 1)``, each read as the last sample at or before that
moment, minus tracemalloc's own growth over the same span (``tracemalloc_overhead_bytes``), so
turning tracing on does not read as a leak. With ``rounds=1`` (the default) growth is measured
from ``worker.ready``, warm-up included. The end-of-run RSS is read before the final snapshot,
whose copy of the traces must not count. This end-to-end difference is what a person reads off
the RSS plot; the statistical judgement (slopes, confidence) is soakd's detector's, which runs in
the same soak and decides the verdict.

Configuration precedence, lowest first: a short-soak cadence scaled to the duration (sampling,
analysis, checkpoint and workload intervals; see :func:`short_soak_profile`), the ``config``
file, the explicit arguments, then ``set``. ``--soakd-duration`` overrides every duration.

Run directories live under the test's ``tmp_path`` (unique per test and per xdist worker), or
under ``--soakd-runs-dir DIR`` (named after the test, with a random suffix, so parallel workers
never collide). Each soak gets ``<soak>/soakd.toml`` (the generated config), ``<soak>/soakd.log``
(soakd's own output) and ``<soak>/run/`` (the run directory). The soak directories of a test
that passed are removed at teardown unless ``--soakd-keep``; those of a failed test are kept and
their paths printed.

This module holds pytest's hooks and fixtures only; the soak itself (arguments, config, running,
judging) is :mod:`soakd.testing`, whose names used by tests are re-exported here.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shutil
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, Unpack

import pytest

from soakd.testing.outcome import (
    Growth,
    RoundStats,
    SiteGrowth,
    SoakResult,
    evaluate,
    format_failure,
    growth_from_series,
    measure_growth,
    signed_size,
)
from soakd.testing.profile import (
    build_config,
    read_user_config,
    short_soak_profile,
    to_toml,
    toml_value,
)
from soakd.testing.runner import run_soak
from soakd.testing.spec import (
    MARKER_DOC,
    SPEC_KEYS,
    SoakArgs,
    SoakSpec,
    SoakUsageError,
    check_keywords,
    soak_spec,
)
from soakd.units import parse_duration

__all__ = [
    "SOAK_RESULT",
    "Growth",
    "RoundStats",
    "SiteGrowth",
    "SoakResult",
    "SoakRunner",
    "SoakSpec",
    "SoakUsageError",
    "build_config",
    "evaluate",
    "format_failure",
    "growth_from_series",
    "measure_growth",
    "read_user_config",
    "run_soak",
    "short_soak_profile",
    "soak_spec",
    "to_toml",
    "toml_value",
]


SOAK_RESULT = pytest.StashKey[SoakResult]()
_SOAK_DIRS = pytest.StashKey[list[Path]]()
_CALL_PASSED = pytest.StashKey[bool]()
_MARKER_BASE = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("soakd", "soak tests with soakd")
    group.addoption("--soakd-duration", metavar="DUR", default=None,
                    help="override every soak's duration, e.g. 10s in CI")  # fmt: skip
    group.addoption("--soakd-keep", action="store_true", default=False,
                    help="keep the run directories of passing soaks too")  # fmt: skip
    group.addoption("--soakd-runs-dir", metavar="DIR", default=None,
                    help="put soak run directories here, not in the test's tmp_path")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    raw = config.getoption("--soakd-duration", None)
    if raw is not None:
        try:
            if parse_duration(raw) <= 0:
                raise ValueError("must be > 0")
        except ValueError as exc:
            raise pytest.UsageError(f"--soakd-duration {raw!r}: {exc}") from None


class SoakRunner:
    """The ``soak`` fixture: ``soak(target, duration=..., ...)`` runs a soak, returns the result."""

    def __init__(self, node: pytest.Item, base: Path) -> None:
        self._node = node
        self._base = base
        self.results: list[SoakResult] = []

    def __call__(
        self, target: str | None = None, *, check: bool = True, **kw: Unpack[SoakArgs]
    ) -> SoakResult:
        check_keywords(f"{type(self).__name__}.__call__", kw)
        spec = _spec_or_fail("", target, kw)
        result = _soak_for(self._node, spec, self._base)
        self.results.append(result)
        if check and not result.passed:
            pytest.fail(result.message(), pytrace=False)
        return result


def _spec_or_fail(prefix: str, target: Any, kwargs: Mapping[str, Any]) -> SoakSpec:
    error = None
    try:
        return soak_spec(target, **kwargs)
    except SoakUsageError as exc:
        error = f"{prefix}{exc}"
    pytest.fail(error, pytrace=False)  # outside the except: no chained traceback


def _soak_for(item: pytest.Item, spec: SoakSpec, base: Path) -> SoakResult:
    config = item.config
    if spec.config is not None and not spec.config.is_absolute():
        # Relative to the test module, so the test passes from any working directory.
        spec = dataclasses.replace(spec, config=item.path.parent / spec.config)
    dirs = item.stash.setdefault(_SOAK_DIRS, [])
    runs_dir = config.getoption("--soakd-runs-dir", None)
    if runs_dir:
        name = re.sub(r"[^\w.-]+", "_", item.nodeid).strip("_")[-80:]
        soak_dir = Path(runs_dir).resolve() / f"{name}-{len(dirs) + 1}-{secrets.token_hex(3)}"
    else:
        soak_dir = base / f"soak-{len(dirs) + 1}"
    dirs.append(soak_dir)
    raw = config.getoption("--soakd-duration", None)
    override = parse_duration(raw) if raw is not None else None
    error: str | None = None
    try:
        result = run_soak(spec, soak_dir, duration_override=override)
    except SoakUsageError as exc:
        error = str(exc)
    if error is not None:
        pytest.fail(error, pytrace=False)  # outside the except: no chained traceback
    item.stash[SOAK_RESULT] = result
    item.user_properties.append(
        ("soakd", {"verdict": result.verdict, "passed": result.passed,
                   "rss_growth_bytes": result.rss_growth_bytes, "run_dir": str(result.run_dir)})
    )  # fmt: skip
    return result


@pytest.fixture
def soak(request: pytest.FixtureRequest, tmp_path: Path) -> SoakRunner:
    """Run a soak of a target with soakd from the test; fails the test when a check fails."""
    node = request.node
    assert isinstance(node, pytest.Item)
    return SoakRunner(node, tmp_path)


@pytest.fixture(autouse=True)
def _soakd_marker_base(request: pytest.FixtureRequest) -> None:
    """A marked test's soak lives under its tmp_path: fetch that before the call phase."""
    node = request.node
    if isinstance(node, pytest.Item) and node.get_closest_marker("soak") is not None:
        node.stash[_MARKER_BASE] = request.getfixturevalue("tmp_path")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Run the marker's soak before the test body; a failed soak fails the test."""
    marker = item.get_closest_marker("soak")
    if marker is None:
        return
    unknown = sorted(set(marker.kwargs) - set(SPEC_KEYS))
    if unknown or len(marker.args) > 1:
        pytest.fail(
            f"@pytest.mark.soak: unknown argument(s) {unknown or list(marker.args[1:])}; "
            f"valid: target (or the one positional argument), {', '.join(SPEC_KEYS[1:])}",
            pytrace=False,
        )
    kwargs = dict(marker.kwargs)
    target = kwargs.pop("target", None)
    if marker.args:
        target = marker.args[0]
    spec = _spec_or_fail("@pytest.mark.soak: ", target, kwargs)
    base = item.stash.get(_MARKER_BASE, None)
    if base is None:  # the autouse fixture was not set up (a non-function item)
        base = item.config._tmp_path_factory.mktemp("soak")  # type: ignore[attr-defined]
    result = _soak_for(item, spec, base)
    item.soak_result = result  # type: ignore[attr-defined]
    if not result.passed:
        pytest.fail(result.message(), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether the test passed: only then may its soak directories go."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    elif report.when == "setup" and not report.passed:
        item.stash[_CALL_PASSED] = False
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    """After fixtures are torn down: drop passing tests' soaks unless ``--soakd-keep``."""
    try:
        yield
    finally:
        dirs = item.stash.get(_SOAK_DIRS, [])
        passed = item.stash.get(_CALL_PASSED, False)
        if dirs and passed and not item.config.getoption("--soakd-keep", False):
            for soak_dir in dirs:
                shutil.rmtree(soak_dir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per soak: verdict, growth and where its run directory is (or that it went)."""
    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name != "soakd" or not isinstance(value, dict):
                    continue
                run_dir = Path(str(value.get("run_dir")))
                growth = value.get("rss_growth_bytes")
                shown = "n/a" if growth is None else signed_size(float(growth))
                where = str(run_dir) if run_dir.exists() else "removed (--soakd-keep keeps it)"
                status = "ok" if value.get("passed") else "FAILED"
                lines.append(
                    f"{report.nodeid}: {status}, verdict {value.get('verdict')}, "
                    f"RSS growth {shown}: {where}"
                )
    if lines:
        terminalreporter.write_sep("-", "soakd")
        for line in lines:
            terminalreporter.write_line(line)
