"""Does soakd find every leak, and only leaks? The detection scenario suite, through the real CLI.

    python benchmarks/detection_suite.py [--jobs 2] [--only NAME,...] [--fast] [--keep DIR]
                                         [--overhead] [--pause] [--realworld] [--list]

Runs each scenario of ``benchmarks/scenarios/targets.py`` (real async targets, driven at a fixed
arrival rate, default sampling and detection settings) with ``python -m soakd run`` and scores the
run directory against the scenario's ground truth:

- recall: leaky scenarios whose verdict is ``leak`` (exit 3)
- false positives: leak-free scenarios whose verdict is ``leak``; ``alarms`` also counts
  leak-free runs with a transient ``leak.confirmed`` later cleared (an alert was sent)
- kind: a confirmed leak of the expected kind is reported; top-1 site: ``leaks[0].site`` is the
  line marked ``# LEAK[...]`` (heap leaks)
- time to detection: first ``leak.confirmed`` of the expected kind minus the later of the warm-up
  end (``detection.warmup_end``) and the leak's onset (``ttd``), and minus the later of the
  warm-up floor (``detection.warmup``, 60 s) and the onset (``floor``)
- flaps: ``leak.confirmed`` of a finding after a ``leak.cleared`` of the same finding
- entries: ``leaks[]`` in summary.json; one cause per leaky scenario, so goal 1 (consequences
  are evidence under their cause); the cause's kind first for tasks/threads/fds leaks

``--realworld`` runs the real-world corpus instead (``benchmarks/scenarios/realworld.py``):
upstream leaks reproduced at their pinned leaky release and at the release that fixed them
(installed by ``benchmarks/realworld_setup.py`` into ``.realworld/``, put on the target's
python_path), and leak-free patterns of real libraries. A leaky release must be found with the
expected kind (and, for a heap leak, at the named line: the package's own line for a pure-Python
leak, the calling line for a C extension's); its fixed release and the patterns must pass. Their
table and scores are printed under the heading "real-world".

A leaky run is stopped (SIGTERM: soakd finishes its report) ``HOLD_S`` after the expected leak is
confirmed with its site (heap) or kind (others), so that a flap shows; otherwise every run lasts
its full duration. ``--overhead``
and ``--pause`` also run ``benchmarks/overhead.py`` and ``benchmarks/pause.py`` and print them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from soakd import rundir  # noqa: E402

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
TARGETS_FILE = SCENARIOS_DIR / "targets.py"
REALWORLD_DIR = ROOT / ".realworld"  # benchmarks/realworld_setup.py installs pinned releases here
RATE = 20  # must match scenarios/targets.py RATE


@dataclass(frozen=True)
class Scenario:
    """One target with its ground truth."""

    name: str
    factory: str  # attribute of scenarios/<module>.py
    leaky: bool
    what: str  # one line for the table
    kind: str | None = None  # expected leak kind
    marker: str | None = None  # ``# LEAK[marker]`` line: the expected site (heap leaks)
    onset_s: float = 0.0  # when the leak starts (late onset)
    duration_s: float = 300.0
    options: dict[str, Any] = field(default_factory=dict)
    # Also right: a leak of class instances at one line is a heap leak at that line (soakd
    # reports the site and lists the growing type as evidence, by design).
    also: tuple[str, ...] = ()
    module: str = "targets"  # the scenarios module holding the factory
    # Added to the target's python_path after the scenarios dir (pinned real-world releases).
    python_path: tuple[str, ...] = ()
    # Expected heap sites inside python_path[0] as "relative/file.py:LINE" (a package's own line).
    sites: tuple[str, ...] = ()


# Rates at 20 queries/s; "B/q" is bytes kept per query (object headers included).
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("heap-10k", "HeapLeak", True, "heap 10 KB/s (513 B/q bytes)", "heap", "heap",
             duration_s=300, options={"size": 480}),
    Scenario("heap-3k", "HeapLeak", True, "heap 3 KB/s (150 B/q)", "heap", "heap",
             duration_s=360, options={"size": 110}),
    # Long enough to show the 10-minute goal: its site, sampled a few times at the coarse
    # interval when the profiler zooms in, waits until it outgrows what that interval missed.
    Scenario("heap-1k", "HeapLeak", True, "heap 1 KB/s (50 B/q)", "heap", "heap",
             duration_s=720, options={"size": 16}),
    Scenario("heap-large", "LargeObjectLeak", True, "heap 10 KB/s as one 10 KiB object/s",
             "heap", "large", duration_s=300),
    Scenario("heap-late", "HeapLeak", True, "heap 10 KB/s starting at 200 s", "heap", "heap",
             onset_s=200.0, duration_s=420, options={"size": 480, "after_s": 200.0}),
    Scenario("heap-noisy", "NoisyHeapLeak", True,
             "heap 5 KB/s under a 5 MB pool of random-size slots", "heap", "noisy",
             duration_s=360),
    Scenario("heap-dict", "DictLeak", True, "one dict that grows (~6 KB/s)", "heap", "dict",
             duration_s=300),
    Scenario("objects", "ObjectLeak", True, "Record instance per query (20/s)", "objects",
             "objects", duration_s=300, also=("heap",)),
    Scenario("native", "NativeLeak", True, "malloc 2 KiB/q (40 KB/s), heap flat", "native",
             duration_s=480),
    Scenario("native-4x", "NativeLeak", True, "malloc 3.6 KiB/q (75 KB/s = 4× min_native_slope)",
             "native", duration_s=360, options={"kib": 3.64}),
    Scenario("fds", "FdLeak", True, "1 fd per 2.5 s", "fds", duration_s=300),
    Scenario("threads", "ThreadLeak", True, "1 thread per 10 s", "threads", duration_s=300),
    Scenario("tasks", "TaskLeak", True, "1 task per s", "tasks", duration_s=300),
    Scenario("lru-cache", "LruCache", False, "LRU cache fills 2 MB in 100 s, then holds",
             duration_s=300),
    Scenario("slow-cache", "RandomKeyCache", False,
             "cache over 2500 keys, fills ever slower (τ≈125 s)", duration_s=420),
    Scenario("ring-buffer", "RingBuffer", False, "deque(maxlen=1200) of 512 B", duration_s=240),
    Scenario("flush", "PeriodicFlush", False, "10 KB/s buffer flushed every 30 s",
             duration_s=300),
    Scenario("one-off", "OneOffLoad", False, "5 MB table loaded once at 150 s", duration_s=300),
    Scenario("lazy-init", "LazyInit", False, "components built at 0, 40, 110 s",
             duration_s=240),
    Scenario("churn", "HeavyChurn", False, "100 KB temp/q + pool of random-length lists (wanders)",
             duration_s=300),
    Scenario("interp-caches", "InterpreterCaches", False, "re, lru_cache, intern, import",
             duration_s=240),
    Scenario("gc-lag", "CyclicGarbage", False,
             "cyclic garbage waits minutes for a full collection", duration_s=300),
    Scenario("pools", "BoundedPools", False, "fd/thread/task pools growing to a bound",
             duration_s=300),
)  # fmt: skip


def _rw(name: str, case: str, variant: str, factory: str, what: str, **kw: Any) -> Scenario:
    """``factory`` of scenarios/realworld.py on the release in ``.realworld/<case>-<variant>``."""
    leaky = variant == "leaky"
    if not leaky:  # the fixed release: same target, no leak expected
        kw = {k: v for k, v in kw.items() if k in ("duration_s", "options")}
    return Scenario(name, factory, leaky, what, module="realworld",
                    python_path=(str(REALWORLD_DIR / f"{case}-{variant}"),), **kw)  # fmt: skip


def _pattern(name: str, factory: str, what: str, **kw: Any) -> Scenario:
    return Scenario(name, factory, False, what, module="realworld",
                    python_path=(str(REALWORLD_DIR / "patterns"),), **kw)  # fmt: skip


# Real-world corpus (--realworld): each upstream leak at its leaky and its fixed release, rates at
# 20 q/s measured on the leaky release (benchmarks/README.md, "Real-world corpus").
REALWORLD: tuple[Scenario, ...] = (
    _rw("babel-leaky", "babel", "leaky", "BabelPatternCache",
        "babel 2.11.0 parse_pattern cache (#962), 2 patterns/q, 13 KB/s", kind="heap",
        sites=("babel/dates.py:1698",), also=("objects",), duration_s=300),
    _rw("babel-fixed", "babel", "fixed", "BabelPatternCache",
        "babel 2.12.1: lru_cache(1024), full and turning over", duration_s=300),
    _rw("aiohttp-leaky", "aiohttp-cookies", "leaky", "AiohttpCookieJar",
        "aiohttp 3.12.2 CookieJar.filter_cookies (#11052), 20 KB/s", kind="heap",
        sites=("aiohttp/cookiejar.py:356", "aiohttp/cookiejar.py:351",
               "aiohttp/cookiejar.py:355"), also=("objects",), duration_s=300),
    _rw("aiohttp-fixed", "aiohttp-cookies", "fixed", "AiohttpCookieJar",
        "aiohttp 3.12.3 CookieJar.filter_cookies", duration_s=300),
    _rw("md-init-leaky", "multidict-init", "leaky", "MultidictInit",
        "multidict 6.3.1 CIMultiDict(dict) (#1117), 3/q, 11 KB/s", kind="heap",
        marker="rw-multidict-init", also=("objects",), duration_s=300),
    _rw("md-init-fixed", "multidict-init", "fixed", "MultidictInit",
        "multidict 6.3.2 CIMultiDict(dict)", duration_s=300),
    _rw("md-istr-leaky", "multidict-istr", "leaky", "MultidictIstr",
        "multidict 6.3.2 new istr keys (#1131), 11 KB/s", kind="heap",
        marker="rw-multidict-istr", also=("objects",), duration_s=300),
    _rw("md-istr-fixed", "multidict-istr", "fixed", "MultidictIstr",
        "multidict 6.4.2 new istr keys", duration_s=300),
    _rw("md-pop-leaky", "multidict-pop", "leaky", "MultidictPop",
        "multidict 6.6.3 CIMultiDict.pop (#1232), 2/q, 14 KB/s", kind="heap",
        marker="rw-multidict-pop", also=("objects",), duration_s=300),
    _rw("md-pop-fixed", "multidict-pop", "fixed", "MultidictPop",
        "multidict 6.6.4 CIMultiDict.pop", duration_s=300),
    _rw("ujson-leaky", "ujson-dump", "leaky", "UjsonDumpError",
        "ujson 5.12.0 dump() to a failing writer (CVE-2026-44660), 25 KB/s", kind="heap",
        marker="rw-ujson-dump", duration_s=300),
    _rw("ujson-fixed", "ujson-dump", "fixed", "UjsonDumpError",
        "ujson 5.12.1 dump() to a failing writer", duration_s=300),
    _rw("protobuf-leaky", "protobuf-bytesize", "leaky", "ProtobufByteSize",
        "protobuf 4.24.2 upb ByteSize() (upb#1243), 50/q, 80 KB/s native", kind="native",
        duration_s=480),
    _rw("protobuf-fixed", "protobuf-bytesize", "fixed", "ProtobufByteSize",
        "protobuf 4.24.3 upb ByteSize()", duration_s=480),
    _pattern("jinja-cache", "JinjaTemplateCache",
             "Jinja2 3.1.4 cache_size=1200 over 3000 templates (fills ~80 s, turns over)",
             duration_s=300),
    _pattern("re-cache", "ReModuleCache", "re module cache (512) over 4000 filters",
             duration_s=240),
    _pattern("lazy-imports", "LazyImports",
             "SQLAlchemy imported at 40 s, Babel locales loaded at 110 s", duration_s=240,
             options={"at_s": [40.0, 110.0]}),
    _pattern("sqla-cache", "SqlalchemyStatementCache",
             "SQLAlchemy 2.0.36 compiled cache 600 (prunes at 900) over 3000 shapes",
             duration_s=300),
)  # fmt: skip

# Faster cadences for --fast (smoke) and the CI subset: short warm-up, short native window.
FAST_SETTINGS = """
[sampling]
process_interval = "500ms"
heap_interval = "500ms"
types_interval = "15s"  # fewer points: object counts are judged only in longer runs
sites_interval = "2s"
analysis_interval = "2s"
checkpoint_interval = "5s"
"""
FAST_SCALE = 0.4  # durations and onsets in --fast


def expected_site(marker: str, file: Path = TARGETS_FILE) -> str:
    """``/abs/path/targets.py:LINE`` of the line tagged ``# LEAK[marker]``."""
    tag = f"# LEAK[{marker}]"
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if tag in line:
            return f"{file}:{number}"
    raise ValueError(f"no line tagged {tag} in {file}")


def expected_sites(scenario: Scenario) -> tuple[str, ...]:
    """Every right top site of a heap leak: its marked line, or lines inside its python_path[0]."""
    sites = list(scenario.sites)
    if sites:
        base = Path(scenario.python_path[0]).resolve()
        sites = [f"{base / s.rpartition(':')[0]}:{s.rpartition(':')[2]}" for s in sites]
    if scenario.marker:
        sites.insert(0, expected_site(scenario.marker, SCENARIOS_DIR / f"{scenario.module}.py"))
    return tuple(sites)


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # ints, floats, strings and bools are valid TOML this way


def config_text(scenario: Scenario, fast: bool = False) -> str:
    """The soakd config for one scenario: the same settings for every scenario."""
    options = dict(scenario.options)
    if fast and "after_s" in options:
        options["after_s"] = options["after_s"] * FAST_SCALE
    if fast and "at_s" in options:
        options["at_s"] = [t * FAST_SCALE for t in options["at_s"]]
    python_path = ", ".join(_toml_value(p) for p in (str(SCENARIOS_DIR), *scenario.python_path))
    lines = [
        "[target]",
        f'factory = "{scenario.module}:{scenario.factory}"',
        'method = "process_query"',
        f"python_path = [{python_path}]",
        "[target.options]",
        *(f"{k} = {_toml_value(v)}" for k, v in options.items()),
        "[workload]",
        f"rate = {RATE}",
        "max_concurrency = 64",
        "seed = 1",
        '[run]\nstop_timeout = "10s"',
        # The default 600 s would need 13-minute runs; the same shorter window applies to every
        # scenario, leak-free ones included, so a false native finding would show.
        "[detection]",
        'warmup = "20s"\nnative_window = "60s"' if fast else 'native_window = "240s"',
    ]
    text = "\n".join(lines) + "\n"
    if fast:
        text += FAST_SETTINGS
    return text


def scenario_duration(scenario: Scenario, fast: bool) -> float:
    return scenario.duration_s * (FAST_SCALE if fast else 1.0)


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return list(rundir.read_events(run_dir / rundir.EVENTS))


def expected_confirmed(scenario: Scenario, event: dict[str, Any], sites: tuple[str, ...]) -> bool:
    """True for a ``leak.confirmed`` event naming the expected leak (and its line, for heap)."""
    if event.get("event") != "leak.confirmed":
        return False
    if event.get("kind") not in (scenario.kind, *scenario.also):
        return False
    return not sites or event.get("kind") != "heap" or event.get("site") in sites


@dataclass
class Outcome:
    scenario: Scenario
    exit_code: int
    verdict: str
    leaks: list[dict[str, Any]]
    warmup_end_s: float | None
    tracing_s: float | None
    confirmed_s: float | None  # first confirmation of the expected leak
    alarms: int  # leak.confirmed events of any kind
    cleared: int
    flaps: int  # confirmations of a finding that had been cleared
    wall_s: float
    run_dir: Path
    # Workload after the first minute relative to the first minute (what soakd's attribution
    # costs the target once it runs): throughput ratio, p99 latency ratio.
    drift: tuple[float | None, float | None] = (None, None)

    @property
    def found(self) -> bool:
        return self.verdict == "leak"

    @property
    def kind_ok(self) -> bool:
        want = (self.scenario.kind, *self.scenario.also)
        return any(leak.get("kind") in want for leak in self.leaks)

    @property
    def top_kind(self) -> str | None:
        return self.leaks[0].get("kind") if self.leaks else None

    @property
    def top_site(self) -> str | None:
        return self.leaks[0].get("site") if self.leaks else None

    @property
    def site_ok(self) -> bool | None:
        sites = expected_sites(self.scenario)
        if not sites:
            return None
        return self.top_site in sites

    @property
    def detection_s(self) -> float | None:
        if self.confirmed_s is None or self.warmup_end_s is None:
            return None
        return self.confirmed_s - max(self.warmup_end_s, self.onset)

    @property
    def from_floor_s(self) -> float | None:
        """Time to confirm after the later of the warm-up floor and the onset."""
        if self.confirmed_s is None:
            return None
        return self.confirmed_s - max(WARMUP_FLOOR_S * self.scale, self.onset)

    @property
    def cause_first(self) -> bool | None:
        """For a tasks/threads/fds leak: its kind is the first entry (not the heap it holds)."""
        if self.scenario.kind not in ("tasks", "threads", "fds"):
            return None
        return self.top_kind == self.scenario.kind

    onset: float = 0.0
    scale: float = 1.0


WARMUP_FLOOR_S = 60.0  # detection.warmup's default
HOLD_S = 60.0  # a leaky run goes on this long after its confirmation: does it flap?


def flap_count(evs: list[dict[str, Any]]) -> int:
    """Confirmations of a finding that had been confirmed and then cleared (one alert each: the
    user sees a flap). A suspicion dropped before it was confirmed is not one."""
    confirmed: set[tuple[Any, ...]] = set()
    cleared: set[tuple[Any, ...]] = set()
    flaps = 0
    for e in evs:
        key = (e.get("kind"), e.get("site"), e.get("type"))
        if e.get("event") == "leak.cleared" and key in confirmed:
            cleared.add(key)
        elif e.get("event") == "leak.confirmed":
            flaps += key in cleared
            cleared.discard(key)
            confirmed.add(key)
    return flaps


def run_scenario(scenario: Scenario, args: argparse.Namespace, base: Path) -> Outcome:
    """Run one scenario through the CLI; stop early once its leak is confirmed."""
    workdir = base / scenario.name
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "soakd.toml"
    config.write_text(config_text(scenario, args.fast), encoding="utf-8")
    run_dir = workdir / "run"
    duration = scenario_duration(scenario, args.fast)
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "soakd", "run", "--config", str(config),
           "--duration", f"{duration:g}s", "--run-dir", str(run_dir)]  # fmt: skip
    sites = expected_sites(scenario)
    started = time.monotonic()
    with (workdir / "soakd.out").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = started + duration + 120.0
        stopped = False
        hold = HOLD_S * (FAST_SCALE if args.fast else 1.0)
        confirmed_at: float | None = None
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                break
            if (
                scenario.leaky
                and confirmed_at is None
                and any(expected_confirmed(scenario, e, sites) for e in read_events(run_dir))
            ):
                confirmed_at = time.monotonic()
            if confirmed_at is not None and not stopped and time.monotonic() >= confirmed_at + hold:
                proc.send_signal(signal.SIGTERM)  # soakd finishes its report on SIGTERM
                stopped = True
            time.sleep(1.0)
        proc.wait()
    return score(scenario, run_dir, proc.returncode, time.monotonic() - started, args.fast)


def score(scenario: Scenario, run_dir: Path, code: int, wall: float, fast: bool) -> Outcome:
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = {}
    if summary_path.exists():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    evs = read_events(run_dir)
    warmup = next((e["warmup_end_s"] for e in evs if e["event"] == "detection.warmup_end"), None)
    tracing = next((e["t"] for e in evs if e["event"] == "tracing.started"), None)
    sites = expected_sites(scenario)
    confirmed = next((e["t"] for e in evs if expected_confirmed(scenario, e, sites)), None)
    if confirmed is None and scenario.leaky:  # the kind without its site, for the timing
        confirmed = next((e["t"] for e in evs if expected_confirmed(scenario, e, ())), None)
    outcome = Outcome(
        scenario=scenario,
        exit_code=code,
        verdict=str(summary.get("verdict", "none")),
        leaks=list(summary.get("leaks", [])),
        warmup_end_s=warmup,
        tracing_s=tracing,
        confirmed_s=confirmed,
        alarms=sum(1 for e in evs if e["event"] == "leak.confirmed"),
        cleared=sum(1 for e in evs if e["event"] == "leak.cleared"),
        flaps=flap_count(evs),
        wall_s=wall,
        run_dir=run_dir,
        drift=workload_drift(run_dir),
    )
    outcome.scale = FAST_SCALE if fast else 1.0
    outcome.onset = scenario.onset_s * outcome.scale
    return outcome


FIRST_MINUTE_S = 60.0
DRIFT_GOALS = (0.95, 1.25)  # throughput at least, p99 at most: after / first minute


def workload_drift(run_dir: Path) -> tuple[float | None, float | None]:
    """Median interval throughput and p99 after the first minute over the first minute's."""
    db_path = run_dir / "samples.db"
    if not db_path.exists():
        return None, None
    out: list[float | None] = []
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        for series in ("throughput_per_s", "latency_p99_ms"):
            rows = db.execute(
                "SELECT t, value FROM samples WHERE series = ? ORDER BY t", (series,)
            ).fetchall()
            first = [v for t, v in rows if t <= FIRST_MINUTE_S and v > 0]
            after = [v for t, v in rows if t > FIRST_MINUTE_S and v > 0]
            if len(first) < 2 or not after:
                out.append(None)
            else:
                out.append(statistics.median(after) / statistics.median(first))
    return out[0], out[1]


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def print_table(outcomes: list[Outcome]) -> None:
    w = max([14, *(len(o.scenario.name) + 1 for o in outcomes)])
    header = (f"{'scenario':<{w}}{'truth':<9}{'verdict':<9}{'exit':>4}  {'top kind':<9}"
              f"{'kind':<5}{'site':<5}{'warmup':>7}{'trace':>7}{'confirm':>8}{'ttd':>6}"
              f"{'floor':>6}{'alarms':>7}{'flaps':>6}{'entries':>8}{'it/s×':>7}{'p99×':>6}"
              f"  what")  # fmt: skip
    print(header)
    print("-" * len(header))
    for o in outcomes:
        s = o.scenario
        truth = s.kind if s.leaky and s.kind else "none"
        kind = _mark(o.kind_ok) if s.leaky else "-"
        print(f"{s.name:<{w}}{truth:<9}{o.verdict:<9}{o.exit_code:>4}  {o.top_kind or '-':<9}"
              f"{kind:<5}{_mark(o.site_ok) if s.leaky else '-':<5}{_fmt(o.warmup_end_s):>7}"
              f"{_fmt(o.tracing_s):>7}{_fmt(o.confirmed_s):>8}{_fmt(o.detection_s):>6}"
              f"{_fmt(o.from_floor_s):>6}{o.alarms:>7}{o.flaps:>6}{len(o.leaks):>8}"
              f"{_fmt(o.drift[0], '.2f'):>7}{_fmt(o.drift[1], '.2f'):>6}"
              f"  {s.what}")  # fmt: skip


def print_scores(outcomes: list[Outcome]) -> bool:
    leaky = [o for o in outcomes if o.scenario.leaky]
    clean = [o for o in outcomes if not o.scenario.leaky]
    sited = [o for o in leaky if o.scenario.kind == "heap" and o.scenario.marker]
    found = sum(o.found for o in leaky)
    fps = sum(o.found for o in clean)
    alarms = sum(o.alarms > 0 for o in clean)
    kinds = sum(o.kind_ok for o in leaky)
    sites = sum(bool(o.site_ok) for o in sited)
    ttds = [o.detection_s for o in leaky if o.detection_s is not None]
    print()
    print(f"recall                 {found}/{len(leaky)}")
    print(f"false positives        {fps}/{len(clean)}   (transient alarms: {alarms}/{len(clean)})")
    if sited:
        print(f"top-1 site (heap)      {sites}/{len(sited)} = {sites / len(sited):.0%}")
    if leaky:
        print(f"kind reported          {kinds}/{len(leaky)}")
    if ttds:
        print(f"median time to detect  {statistics.median(ttds):.0f} s after warm-up end/onset "
              f"(max {max(ttds):.0f} s)")  # fmt: skip
    flaps = sum(o.flaps for o in outcomes)
    print(f"flaps                  {flaps} (confirmed → cleared → confirmed; goal 0)")
    causes = [o for o in leaky if o.cause_first is not None]
    first = sum(bool(o.cause_first) for o in causes)
    single = sum(len(o.leaks) == 1 for o in leaky)
    print(f"cause's kind first     {first}/{len(causes)} tasks/threads/fds leaks")
    print(f"one entry per cause    {single}/{len(leaky)} leaky scenarios")
    goals = {  # scenario: (seconds after the floor/onset, also needs its site)
        "heap-10k": (60.0, True),
        "native-4x": (120.0, False),
        "heap-1k": (600.0, False),
    }
    timing_ok = True
    for name, (goal, sited_goal) in goals.items():
        o = next((o for o in leaky if o.scenario.name == name), None)
        if o is None:
            continue
        t = o.from_floor_s
        met = t is not None and t <= goal * o.scale and (bool(o.site_ok) or not sited_goal)
        timing_ok = timing_ok and met
        what = "confirmed with site" if sited_goal else "confirmed"
        print(f"{name:<22} {what} {_fmt(t)} s after the warm-up floor "
              f"(goal ≤ {goal * o.scale:.0f} s): {'met' if met else 'NOT met'}")  # fmt: skip
    ok = found == len(leaky) and fps == 0 and timing_ok and flaps == 0
    ok = ok and first == len(causes) and single == len(leaky)
    ok = ok and (not sited or sites / len(sited) >= 0.9)
    tps = [o.drift[0] for o in outcomes if o.drift[0] is not None]
    p99s = [o.drift[1] for o in outcomes if o.drift[1] is not None]
    if tps and p99s:
        low, high = DRIFT_GOALS
        drift_ok = min(tps) >= low and max(p99s) <= high
        met = "met" if drift_ok else "NOT met"
        print(f"workload after minute 1  throughput ×{min(tps):.2f}..×{max(tps):.2f}, "
              f"p99 ×{min(p99s):.2f}..×{max(p99s):.2f} of the first minute "
              f"(goal ≥ {low} and ≤ {high} on every scenario: {met})")  # fmt: skip
    print(f"goals                  {'met' if ok else 'NOT met'}")
    return ok


def print_realworld_scores(outcomes: list[Outcome]) -> bool:
    """Leaky releases found with their kind (and line), fixed releases and patterns passing."""
    leaky = [o for o in outcomes if o.scenario.leaky]
    fixed = [o for o in outcomes if not o.scenario.leaky and o.scenario.name.endswith("-fixed")]
    patterns = [o for o in outcomes if not o.scenario.leaky and o not in fixed]
    sited = [o for o in leaky if o.site_ok is not None]
    found = sum(o.found and o.kind_ok for o in leaky)
    sites = sum(bool(o.site_ok) for o in sited)
    fixed_ok = sum(not o.found for o in fixed)
    patterns_ok = sum(not o.found for o in patterns)
    alarms = sum(o.alarms > 0 for o in fixed + patterns)
    print()
    print(f"leaky releases found   {found}/{len(leaky)} (verdict leak, expected kind)")
    if sited:
        print(f"top-1 site (heap)      {sites}/{len(sited)}")
    print(f"fixed releases pass    {fixed_ok}/{len(fixed)}")
    clean = len(fixed) + len(patterns)
    print(f"leak-free patterns     {patterns_ok}/{len(patterns)} pass   "
          f"(transient alarms on fixed/patterns: {alarms}/{clean})")  # fmt: skip
    ttds = [o.detection_s for o in leaky if o.detection_s is not None]
    if ttds:
        print(f"median time to detect  {statistics.median(ttds):.0f} s after warm-up end "
              f"(max {max(ttds):.0f} s)")  # fmt: skip
    single = sum(len(o.leaks) == 1 for o in leaky)
    print(f"one entry per cause    {single}/{len(leaky)} leaky releases (informational)")
    ok = found == len(leaky) and sites == len(sited)
    ok = ok and fixed_ok == len(fixed) and patterns_ok == len(patterns)
    print(f"real-world goals       {'met' if ok else 'NOT met'}")
    return ok


def missing_installs(chosen: list[Scenario]) -> list[str]:
    """python_path directories of the chosen scenarios that realworld_setup.py has not made."""
    return sorted({p for s in chosen for p in s.python_path if not (Path(p) / ".pins").exists()})


def run_helper(script: str, extra: list[str]) -> None:
    print(f"\n$ python benchmarks/{script} {' '.join(extra)}", flush=True)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *extra], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2, help="scenarios run at once (2; max 2)")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--fast", action="store_true", help="smoke: fast cadences, 0.4× durations")
    parser.add_argument("--keep", type=Path, help="keep run directories here")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    parser.add_argument("--overhead", action="store_true", help="also run overhead.py")
    parser.add_argument("--pause", action="store_true", help="also run pause.py at 1M blocks")
    parser.add_argument(
        "--realworld",
        action="store_true",
        help="run the real-world corpus (pinned upstream leaks vs their fixes, real caches) "
        "instead; needs benchmarks/realworld_setup.py first",
    )
    args = parser.parse_args()
    suite = REALWORLD if args.realworld else SCENARIOS
    if args.list:
        w = 16 if args.realworld else 14
        if args.realworld:
            print("real-world (python_path after the scenarios dir)")
        for s in suite:
            truth = f"{s.kind} leak" if s.leaky else "leak-free"
            where = f"  [{Path(s.python_path[0]).relative_to(ROOT)}]" if s.python_path else ""
            print(f"{s.name:<{w}}{truth:<14}{s.duration_s:>5.0f}s  {s.what}{where}")
        return 0
    chosen = list(suite)
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = names - {s.name for s in suite}
        if unknown:
            more = " --realworld" if args.realworld else ""
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}; see --list{more}")
        chosen = [s for s in suite if s.name in names]
    missing = missing_installs(chosen)
    if missing:
        print("error: pinned releases not installed: " + ", ".join(missing)
              + "\nrun: python benchmarks/realworld_setup.py", file=sys.stderr)  # fmt: skip
        return 2
    jobs = max(1, min(args.jobs, 2))  # the box has 2 shared cores
    # Longest first, so that the suite's wall time is close to total / jobs.
    chosen.sort(key=lambda s: -s.duration_s)
    total = sum(scenario_duration(s, args.fast) for s in chosen)
    label = "real-world corpus" if args.realworld else "detection suite"
    print(f"{label}: {len(chosen)} scenarios, {jobs} at a time, ≤ {total / jobs / 60:.0f} "
          f"min; rate {RATE}/s{', fast' if args.fast else ''}", flush=True)  # fmt: skip
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="soakd-detect-") as tmp:
        base = args.keep or Path(tmp)

        def one(s: Scenario) -> Outcome:
            o = run_scenario(s, args, base)
            with lock:
                print(f"  {s.name:<14} verdict={o.verdict} exit={o.exit_code} top="
                      f"{o.top_kind}@{o.top_site} ttd={_fmt(o.detection_s)} "
                      f"alarms={o.alarms} wall={o.wall_s:.0f}s", flush=True)  # fmt: skip
            return o

        with ThreadPoolExecutor(jobs) as pool:
            outcomes = list(pool.map(one, chosen))
    order = {s.name: i for i, s in enumerate(suite)}
    outcomes.sort(key=lambda o: order[o.scenario.name])
    print()
    if args.realworld:
        print("real-world")
        print("==========")
        print_table(outcomes)
        ok = print_realworld_scores(outcomes)
    else:
        print_table(outcomes)
        ok = print_scores(outcomes)
    print(f"box load average now {os.getloadavg()[0]:.2f}")
    if args.overhead:
        run_helper("overhead.py", ["--rounds", "3", "--seconds", "40", "--no-extra"])
    if args.pause:
        run_helper("pause.py", ["--sizes", "1000000"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
