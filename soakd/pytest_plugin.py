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
- RSS growth after warm-up exceeds ``max_rss_growth`` (see below);
- the error rate exceeds ``max_error_rate``;
- the p50 time to the first ``status`` event (the ``first_status`` milestone; the first event
  of any type when the target yields no status) exceeds ``max_first_event_ms``.

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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from soakd.units import format_size, parse_duration, parse_size

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

DEFAULT_DURATION_S = 30.0
FAIL_VERDICTS = ("leak", "aborted", "target_failed", "error")
_MARKER_DOC = (
    "soak(target, duration, users, rounds, max_rss_growth, max_error_rate, max_first_event_ms, "
    "options, method, config, set): soak the target with soakd before the test body; "
    "the result is request.node.soak_result"
)
_SPEC_KEYS = (
    "target",
    "duration",
    "users",
    "rounds",
    "method",
    "options",
    "config",
    "set",
    "max_rss_growth",
    "max_error_rate",
    "max_first_event_ms",
)
_TAIL_CHARS = 2000


class SoakUsageError(ValueError):
    """A soak was asked for with a bad argument; the message names it and the value."""


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class SoakSpec:
    """One soak, with units parsed: durations in seconds, sizes in bytes."""

    target: str | None = None
    duration_s: float | None = None  # None: the config file's run.duration, else 30 s
    users: int | None = None
    rounds: int = 1
    method: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    config: Path | None = None
    overrides: tuple[str, ...] = ()
    max_rss_growth: int | None = None
    max_error_rate: float | None = None
    max_first_event_ms: float | None = None
    max_rss_growth_text: str = ""  # as the user wrote it, for the message


def soak_spec(
    target: str | None = None,
    *,
    duration: str | float | None = None,
    users: int | None = None,
    rounds: int = 1,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    config: str | os.PathLike[str] | None = None,
    set: Sequence[str] = (),  # mirrors ``soakd run --set``
    max_rss_growth: str | int | None = None,
    max_error_rate: float | None = None,
    max_first_event_ms: float | None = None,
) -> SoakSpec:
    """Validate the marker's or fixture's arguments; SoakUsageError names the bad one."""
    if target is not None and (not isinstance(target, str) or ":" not in target):
        raise SoakUsageError(
            f"soak target must be 'module:attr' such as 'pkg.mod:Factory': {target!r}"
        )
    duration_s = None
    if duration is not None:
        duration_s = _parse("duration", duration, parse_duration)
        if duration_s <= 0:
            raise SoakUsageError(f"soak duration must be > 0: {duration!r}")
    if users is not None and (isinstance(users, bool) or not isinstance(users, int) or users < 1):
        raise SoakUsageError(f"soak users must be an int >= 1: {users!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 100:
        raise SoakUsageError(f"soak rounds must be an int from 1 to 100: {rounds!r}")
    if options is not None and not isinstance(options, Mapping):
        raise SoakUsageError(f"soak options must be a dict of factory arguments: {options!r}")
    if isinstance(set, str) or not all(isinstance(s, str) and "=" in s for s in set):
        raise SoakUsageError(f"soak set must be a list of 'KEY=VALUE' strings: {set!r}")
    growth = (
        None if max_rss_growth is None else _parse("max_rss_growth", max_rss_growth, parse_size)
    )
    return SoakSpec(
        target=target,
        duration_s=duration_s,
        users=users,
        rounds=rounds,
        method=method,
        options=dict(options or {}),
        config=Path(config) if config is not None else None,
        overrides=tuple(set),
        max_rss_growth=growth,
        max_error_rate=_limit("max_error_rate", max_error_rate),
        max_first_event_ms=_limit("max_first_event_ms", max_first_event_ms),
        max_rss_growth_text=str(max_rss_growth) if max_rss_growth is not None else "",
    )


def _parse(name: str, value: object, parser: Any) -> Any:
    try:
        return parser(value)
    except ValueError as exc:
        raise SoakUsageError(f"soak {name}: {exc}") from None


def _limit(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise SoakUsageError(f"soak {name} must be a number >= 0: {value!r}")
    return float(value)


# --------------------------------------------------------------------------- the config


def short_soak_profile(duration_s: float) -> dict[str, Any]:
    """Cadence scaled to a short soak: ~100 process samples, ~30 analyses, whatever its length.

    soakd's defaults suit hours; a 20 s soak with them would see one workload interval and no
    analysis. Each interval is clamped between a floor that keeps the sampler cheap on a
    shared CI box and soakd's own default.
    """

    def scaled(fraction: float, low: float, high: float) -> float:
        return round(min(high, max(low, duration_s * fraction)), 3)

    return {
        "sampling": {
            "process_interval": scaled(1 / 100, 0.25, 1.0),
            "system_interval": scaled(1 / 50, 0.5, 5.0),
            "heap_interval": scaled(1 / 50, 0.5, 2.0),
            "types_interval": scaled(1 / 10, 2.0, 30.0),
            "sites_interval": scaled(1 / 30, 1.0, 10.0),
            "analysis_interval": scaled(1 / 30, 1.0, 10.0),
            "checkpoint_interval": scaled(1 / 10, 1.0, 30.0),
        },
        "workload": {"interval": scaled(1 / 20, 1.0, 10.0)},
        "run": {"stop_timeout": scaled(1 / 4, 5.0, 30.0)},
    }


def build_config(
    spec: SoakSpec, duration_s: float, user_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The TOML document for the soak: profile < ``user_config`` < explicit arguments.

    ``spec.overrides`` are not merged here: they go to ``soakd run --set`` so soakd applies
    them last with its own parsing and error messages.
    """
    data = short_soak_profile(duration_s)
    _merge(data, dict(user_config or {}))
    explicit: dict[str, Any] = {"run": {"duration": duration_s}}
    target: dict[str, Any] = {}
    if spec.target is not None:
        target["factory"] = spec.target
    if spec.method is not None:
        target["method"] = spec.method
    if spec.options:
        target["options"] = dict(spec.options)
    if target:
        explicit["target"] = target
    if spec.users is not None:
        explicit["workload"] = {"users": spec.users}
    if spec.rounds > 1:
        # soakd judges nothing before the warm-up floor: make that the first round.
        round_s = round(duration_s / spec.rounds, 3)
        warmup_max = data.get("detection", {}).get("warmup_max")
        detection: dict[str, Any] = {"warmup": round_s}
        if warmup_max is None or _seconds(warmup_max) < round_s:
            detection["warmup_max"] = max(round_s, 600.0)
        explicit["detection"] = detection
    _merge(data, explicit)
    return data


def _seconds(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        return 0.0  # soakd will reject it with a proper message


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def read_user_config(path: Path) -> dict[str, Any]:
    """The user's soakd TOML with its relative paths made absolute (the copy lives elsewhere)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SoakUsageError(f"soak config {path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SoakUsageError(f"soak config {path}: not valid TOML: {exc}") from None
    base = path.resolve().parent
    target = data.get("target")
    if isinstance(target, dict) and isinstance(target.get("python_path"), list):
        target["python_path"] = [
            str(base / p) if isinstance(p, str) else p for p in target["python_path"]
        ]
    workload = data.get("workload")
    if isinstance(workload, dict) and isinstance(workload.get("queries_file"), str):
        workload["queries_file"] = str(base / workload["queries_file"])
    return data


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialize a config document to TOML (tables, arrays of tables, inline values)."""
    lines: list[str] = []
    _emit_table(lines, [], data)
    return "\n".join(lines) + "\n"


def toml_value(value: object) -> str:
    """One value as inline TOML (what ``soakd run --set KEY=VALUE`` takes as VALUE)."""
    return _value(value, [])


def _emit_table(lines: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
    for key, value in table.items():
        # Inside an array-of-tables item a table stays inline: a [a.b] header there would need
        # the item's path, and "[]" in ``path`` only marks the item for messages.
        if isinstance(value, Mapping) and "[]" not in path:
            tables.append((key, value))
        elif (
            isinstance(value, list | tuple)
            and value
            and all(isinstance(v, Mapping) for v in value)
            and not path  # top-level arrays of tables only ([[rules]]); deeper ones inline
        ):
            arrays.append((key, list(value)))
        else:
            lines.append(f"{_key(key)} = {_value(value, [*path, key])}")
    for key, sub in tables:
        lines.append(f"\n[{'.'.join(_key(k) for k in [*path, key])}]")
        _emit_table(lines, [*path, key], sub)
    for key, items in arrays:
        for item in items:
            lines.append(f"\n[[{'.'.join(_key(k) for k in [*path, key])}]]")
            _emit_table(lines, [*path, key, "[]"], item)


def _key(key: object) -> str:
    text = str(key)
    # fullmatch: with match, "$" would also accept a key that ends in a newline.
    return text if _BARE_KEY.fullmatch(text) else _string(text)


def _string(text: str) -> str:
    # JSON escapes are valid TOML basic-string escapes; TOML also wants DEL escaped, and
    # ensure_ascii=False keeps astral characters out of (TOML-invalid) surrogate pairs.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: object, path: Sequence[str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, os.PathLike):
        return _string(os.fspath(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, path) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v, [*path, str(k)])}" for k, v in value.items())
        return "{" + inner + "}" if inner else "{}"
    where = ".".join(p for p in path if p != "[]")
    raise SoakUsageError(
        f"soak config value {where} = {value!r} cannot be written as TOML "
        "(use str, int, float, bool, list or dict)"
    )


# --------------------------------------------------------------------------- the outcome


@dataclass(frozen=True)
class RoundStats:
    """One round of the soak's workload span; RSS read at its end, tracemalloc's share removed."""

    index: int  # 1-based; round 1 is the warm-up when rounds > 1
    start_s: float
    end_s: float
    rss_end_bytes: int
    growth_bytes: int  # over this round
    iterations: int


@dataclass(frozen=True)
class SiteGrowth:
    """An allocation site whose live bytes grew between the baseline and final snapshots."""

    site: str
    line: str | None
    size_diff: int
    count_diff: int
    traceback: tuple[str, ...]


@dataclass(frozen=True)
class SoakResult:
    """What one soak found; ``failures`` is empty when every check passed."""

    target: str
    verdict: str
    exit_code: int
    summary: dict[str, Any]
    run_dir: Path
    soak_dir: Path
    rss_growth_bytes: int | None = None
    growth_since_s: float | None = None
    rounds: tuple[RoundStats, ...] = ()
    top_sites: tuple[SiteGrowth, ...] = ()
    failures: tuple[str, ...] = ()
    log_tail: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def message(self) -> str:
        """The failure text pytest shows: what failed, why, where to look."""
        return format_failure(self)


@dataclass(frozen=True)
class Growth:
    """RSS growth after warm-up, from the run directory's samples and events."""

    growth_bytes: int | None
    since_s: float | None
    rounds: tuple[RoundStats, ...]


def measure_growth(run_dir: Path, rounds: int) -> Growth:
    """RSS growth over rounds 2..N (or the whole workload span when ``rounds`` is 1)."""
    from soakd.rundir import read_events
    from soakd.sinks.store import StoreReader

    try:
        reader = StoreReader(run_dir / "samples.db")
    except FileNotFoundError:
        return Growth(None, None, ())
    try:
        rss = reader.series("rss_bytes")
        overhead = reader.series("tracemalloc_overhead_bytes")
        workload = list(reader.workload())
    finally:
        reader.close()
    if not rss:
        return Growth(None, None, ())
    t_ready: float | None = None
    t_stop: float | None = None
    for event in read_events(run_dir / "events.jsonl"):
        if event["event"] == "worker.ready" and t_ready is None:
            t_ready = _float(event.get("t"))
        elif event["event"] == "run.stopping" and t_stop is None:
            t_stop = _float(event.get("t"))
    start = t_ready if t_ready is not None else rss[0][0]
    end = t_stop if t_stop is not None else rss[-1][0]
    if end <= start:
        end = rss[-1][0]
    return growth_from_series(rss, overhead, workload, start, end, rounds)


def growth_from_series(
    rss: Sequence[tuple[float, float]],
    overhead: Sequence[tuple[float, float]],
    workload: Sequence[tuple[float, Mapping[str, Any]]],
    start: float,
    end: float,
    rounds: int,
) -> Growth:
    """Pure core of :func:`measure_growth`: explicit series and explicit times."""
    if not rss:
        return Growth(None, None, ())

    def level(t: float) -> float:
        # tracemalloc's own bookkeeping is in RSS too: remove it so tracing is not a leak.
        return _at(rss, t, rss[0][1]) - _at(overhead, t, 0.0)

    span = max(end - start, 0.0)
    stats: list[RoundStats] = []
    previous = level(start)
    for i in range(1, rounds + 1):
        r_start = start + span * (i - 1) / rounds
        r_end = start + span * i / rounds
        value = level(r_end)
        iterations = sum(
            int(_float(s.get("iterations")) or 0) for t, s in workload if r_start < t <= r_end
        )
        stats.append(
            RoundStats(i, round(r_start, 3), round(r_end, 3), int(_at(rss, r_end, rss[0][1])),
                       int(value - previous), iterations)
        )  # fmt: skip
        previous = value
    since = start + span / rounds if rounds > 1 else start
    return Growth(int(level(end) - level(since)), round(since, 3), tuple(stats))


def _at(series: Sequence[tuple[float, float]], t: float, default: float) -> float:
    """The last value at or before ``t`` (``default`` when the series starts later)."""
    value = default
    for ts, v in series:
        if ts > t:
            break
        value = v
    return value


def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def top_site_growth(run_dir: Path, top: int = 3) -> tuple[SiteGrowth, ...]:
    """Sites that grew most from the baseline to the final (else latest) heap snapshot."""
    from soakd.errors import CommandError
    from soakd.snapshots import diff_snapshots, read_snapshot

    snaps = run_dir / "snapshots"
    baseline = snaps / "baseline.json.gz"
    after = next((p for p in (snaps / "final.json.gz", snaps / "latest.json.gz") if p.is_file()),
                 None)  # fmt: skip
    if not baseline.is_file() or after is None:
        return ()
    try:
        rows = diff_snapshots(read_snapshot(baseline), read_snapshot(after), top=top)
    except CommandError:
        return ()  # a damaged snapshot: the summary still speaks; the message just says less
    largest = max((r.size_diff for r in rows), default=0)
    return tuple(
        SiteGrowth(r.site, r.line, r.size_diff, r.count_diff, r.traceback)
        for r in rows
        if r.size_diff > 0 and r.size_diff >= largest / 20  # the rest is churn, not the story
    )


def first_event_p50_ms(summary: Mapping[str, Any]) -> float | None:
    """p50 time to the first ``status`` event, else to the first event of any type."""
    workload = summary.get("workload")
    if not isinstance(workload, Mapping):
        return None
    milestones = workload.get("milestones_ms")
    milestone = milestones.get("first_status") if isinstance(milestones, Mapping) else None
    if isinstance(milestone, Mapping) and _float(milestone.get("count")):
        return _float(milestone.get("p50"))
    first = workload.get("first_event_ms")
    return _float(first.get("p50")) if isinstance(first, Mapping) else None


def evaluate(summary: Mapping[str, Any], growth: Growth, spec: SoakSpec) -> list[str]:
    """Every check the soak failed, one line each (empty: passed). Pure."""
    failures: list[str] = []
    verdict = str(summary.get("verdict", "error"))
    if verdict in FAIL_VERDICTS:
        failures.append(f"soakd verdict: {verdict} (exit code {summary.get('exit_code')})")
    if spec.max_rss_growth is not None:
        if growth.growth_bytes is None:
            failures.append("RSS growth unknown: the run recorded no RSS samples")
        elif growth.growth_bytes > spec.max_rss_growth:
            where = (
                f"after warm-up (from the end of round 1 at {growth.since_s:g}s)"
                if spec.rounds > 1
                else f"from worker start ({growth.since_s:g}s)"
            )
            failures.append(
                f"RSS grew {format_size(growth.growth_bytes)} {where} to the end of the "
                f"workload: more than max_rss_growth {_limit_text(spec)}"
            )
    workload = summary.get("workload")
    workload = workload if isinstance(workload, Mapping) else {}
    error_rate = _float(workload.get("error_rate")) or 0.0
    if spec.max_error_rate is not None and error_rate > spec.max_error_rate:
        errors = workload.get("errors")
        by_class = workload.get("errors_by_class") or {}
        failures.append(
            f"error rate {error_rate:.2%} ({errors} of {workload.get('iterations')} iterations"
            f"{', ' + json.dumps(by_class) if by_class else ''}) above max_error_rate "
            f"{spec.max_error_rate:.2%}"
        )
    if spec.max_first_event_ms is not None:
        p50 = first_event_p50_ms(summary)
        if p50 is None:
            failures.append("time to first event unknown: no iteration produced an event")
        elif p50 > spec.max_first_event_ms:
            failures.append(
                f"first status p50 {p50:.1f} ms above max_first_event_ms "
                f"{spec.max_first_event_ms:g} ms"
            )
    return failures


def _limit_text(spec: SoakSpec) -> str:
    shown = format_size(spec.max_rss_growth or 0)
    text = spec.max_rss_growth_text
    return shown if not text or text == str(spec.max_rss_growth) else f"{text} ({shown})"


def format_failure(result: SoakResult) -> str:
    """The message for pytest.fail: checks that failed, then the evidence, then the path."""
    s = result.summary
    lines = [f"soak of {result.target} failed (soakd verdict {result.verdict}, "
             f"exit code {result.exit_code}):"]  # fmt: skip
    lines += [f"  - {f}" for f in result.failures]
    for leak in s.get("leaks") or []:
        lines += _leak_lines(leak, "leak")
    if result.verdict not in ("pass", "leak"):
        for suspect in (s.get("suspects") or [])[:3]:
            lines += _leak_lines(suspect, "suspected leak (not confirmed)")
    for b in s.get("breaches") or []:
        lines.append(
            f"  threshold {b.get('rule')}: {b.get('value')} vs limit {b.get('limit')} "
            f"({b.get('action')}) at {b.get('at_s')}s"
        )
    failure = s.get("failure")
    if isinstance(failure, Mapping):
        lines.append(f"  target failed ({failure.get('reason')}): {failure.get('message')}")
    if result.rounds and len(result.rounds) > 1:
        per_round = ", ".join(
            f"{r.index}: {_signed(r.growth_bytes)} in {r.iterations} it" for r in result.rounds
        )
        lines.append(f"  RSS growth per round (round 1 = warm-up): {per_round}")
    memory = s.get("memory")
    if isinstance(memory, Mapping) and memory.get("rss_end_bytes"):
        lines.append(
            f"  RSS {format_size(_float(memory.get('rss_start_bytes')) or 0)} → "
            f"{format_size(_float(memory.get('rss_end_bytes')) or 0)}, slope after warm-up "
            f"{_signed(_float(memory.get('rss_slope_bytes_per_h')) or 0)}/h"
        )
    if result.top_sites:
        lines.append("  allocation sites that grew (heap snapshots, baseline → final):")
        for site in result.top_sites:
            source = f": {site.line}" if site.line else ""
            lines.append(
                f"    {_signed(site.size_diff)} in {site.count_diff:+d} blocks at "
                f"{site.site}{source}"
            )
            lines += [f"        {frame}" for frame in site.traceback[1:4]]
    elif result.rss_growth_bytes is not None and any(
        f.startswith("RSS grew") for f in result.failures
    ):
        lines.append(
            "  no heap snapshots to point at a line (tracing was off): soak again with "
            "set=['sampling.tracemalloc=always'] to see the allocation sites that grew"
        )
    if result.log_tail:
        lines.append("  soakd output (tail):")
        lines += [f"    {line}" for line in result.log_tail.splitlines()]
    lines.append(f"  run directory: {result.run_dir} (summary.json, report.md, report.html)")
    return "\n".join(lines)


def _leak_lines(leak: Mapping[str, Any], label: str) -> list[str]:
    kind = leak.get("kind")
    where = leak.get("site") or (f"type {leak.get('type')}" if leak.get("type") else "process")
    source = f": {leak.get('line')}" if leak.get("line") else ""
    unit = leak.get("unit")
    slope = _float(leak.get("slope_per_h")) or 0.0
    growth = _float(leak.get("growth")) or 0.0
    rate = (
        f"{_signed(slope)}/h, grew {format_size(growth)}"
        if unit == "bytes"
        else f"{slope:+.1f}/h, grew {growth:.0f}"
    )
    out = [
        f"  {label} ({kind}) at {where}{source}: {rate}, p={leak.get('p_value')}, "
        f"first detected at {leak.get('first_detected_s')}s"
    ]
    traceback = leak.get("traceback") or []
    if traceback:
        out.append("    traceback (innermost first):")
        out += [f"      {frame}" for frame in traceback[:8]]
    return out


def _signed(size: float) -> str:
    return ("+" if size >= 0 else "-") + format_size(abs(size))


# --------------------------------------------------------------------------- running it


def child_env() -> dict[str, str]:
    """The soak's environment: this process's import path, so the worker finds the target."""
    env = dict(os.environ)
    # A pytest run under systemd must not make soakd notify pytest's unit.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "SOAKD_AGENT_SOCKET"):
        env.pop(name, None)
    installed = {os.path.realpath(p) for p in sysconfig.get_paths().values()}
    extra: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if path in installed or path in extra or not os.path.isdir(path):
            continue
        extra.append(path)  # rootdir/conftest insertions: what made the test's imports work
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(extra)
    return env


def run_soak(
    spec: SoakSpec,
    soak_dir: Path,
    *,
    duration_override: float | None = None,
    env: Mapping[str, str] | None = None,
) -> SoakResult:
    """Run ``soakd run`` on the spec in ``soak_dir`` (created) and judge what it left."""
    user_config = read_user_config(spec.config) if spec.config is not None else {}
    duration = duration_override or spec.duration_s
    if duration is None:
        configured = user_config.get("run", {}).get("duration")
        duration = _seconds(configured) if configured is not None else DEFAULT_DURATION_S
        duration = duration or DEFAULT_DURATION_S
    document = build_config(spec, duration, user_config)
    soak_dir.mkdir(parents=True, exist_ok=True)
    config_path = soak_dir / "soakd.toml"
    config_path.write_text(to_toml(document), encoding="utf-8")
    run_dir = soak_dir / "run"
    log_path = soak_dir / "soakd.log"
    cmd = [sys.executable, "-m", "soakd", "run", "--run-dir", str(run_dir),
           "--config", str(config_path), "--duration", f"{duration}s"]  # fmt: skip
    for item in spec.overrides:
        cmd += ["--set", item]
    # Bounded even if soakd wedges: start and stop timeouts plus slack for the report.
    run_cfg = document.get("run", {})
    limit = duration + _seconds(run_cfg.get("start_timeout", 60)) + _seconds(
        run_cfg.get("stop_timeout", 30)) + 60.0  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else child_env())  # fmt: skip
        with _reaped(proc):
            try:
                exit_code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # soakd finishes its report on SIGTERM
                exit_code = proc.wait(timeout=60)
    return judge(spec, run_dir, soak_dir, exit_code, log_path)


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Never leave soakd behind: on Ctrl-C, a pytest-timeout or a hung stop, end it."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def judge(
    spec: SoakSpec, run_dir: Path, soak_dir: Path, exit_code: int, log_path: Path
) -> SoakResult:
    """Read what the soak left and decide; no summary at all is itself a failure."""
    target = spec.target or "(from config)"
    try:
        summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text("utf-8"))
    except (OSError, ValueError):
        summary = {}
    if not summary:
        return SoakResult(
            target=target, verdict="error", exit_code=exit_code, summary={}, run_dir=run_dir,
            soak_dir=soak_dir,
            failures=(f"soakd run exited {exit_code} without a summary.json",),
            log_tail=_tail(log_path),
        )  # fmt: skip
    growth = measure_growth(run_dir, spec.rounds)
    failures = evaluate(summary, growth, spec)
    verdict = str(summary.get("verdict", "error"))
    if exit_code != summary.get("exit_code"):
        failures.append(
            f"soakd exited {exit_code} but summary.json says {summary.get('exit_code')}"
        )
    top = top_site_growth(run_dir) if failures else ()
    tail = ""
    if verdict in ("target_failed", "error"):
        tail = _tail(run_dir / "worker.log") or _tail(log_path)
    return SoakResult(
        target=str(summary.get("target") or target),
        verdict=verdict,
        exit_code=exit_code,
        summary=summary,
        run_dir=run_dir,
        soak_dir=soak_dir,
        rss_growth_bytes=growth.growth_bytes,
        growth_since_s=growth.since_s,
        rounds=growth.rounds,
        top_sites=top,
        failures=tuple(failures),
        log_tail=tail,
    )


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _TAIL_CHARS))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------- pytest glue

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
    config.addinivalue_line("markers", _MARKER_DOC)
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
        self,
        target: str | None = None,
        *,
        duration: str | float | None = None,
        users: int | None = None,
        rounds: int = 1,
        method: str | None = None,
        options: Mapping[str, Any] | None = None,
        config: str | os.PathLike[str] | None = None,
        set: Sequence[str] = (),  # mirrors ``soakd run --set``
        max_rss_growth: str | int | None = None,
        max_error_rate: float | None = None,
        max_first_event_ms: float | None = None,
        check: bool = True,
    ) -> SoakResult:
        spec = _spec_or_fail(
            "",
            dict(
                target=target, duration=duration, users=users, rounds=rounds, method=method,
                options=options, config=config, set=set, max_rss_growth=max_rss_growth,
                max_error_rate=max_error_rate, max_first_event_ms=max_first_event_ms,
            ),
        )  # fmt: skip
        result = _soak_for(self._node, spec, self._base)
        self.results.append(result)
        if check and not result.passed:
            pytest.fail(result.message(), pytrace=False)
        return result


def _spec_or_fail(prefix: str, kwargs: dict[str, Any]) -> SoakSpec:
    error = None
    try:
        return soak_spec(**kwargs)
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
    unknown = sorted(set(marker.kwargs) - set(_SPEC_KEYS))
    if unknown or len(marker.args) > 1:
        pytest.fail(
            f"@pytest.mark.soak: unknown argument(s) {unknown or list(marker.args[1:])}; "
            f"valid: target (or the one positional argument), {', '.join(_SPEC_KEYS[1:])}",
            pytrace=False,
        )
    kwargs = dict(marker.kwargs)
    if marker.args:
        kwargs["target"] = marker.args[0]
    spec = _spec_or_fail("@pytest.mark.soak: ", kwargs)
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
                shown = "n/a" if growth is None else _signed(float(growth))
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
