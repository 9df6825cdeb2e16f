"""report.html / report.md / ``soakd report`` on synthetic but realistic run directories."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from soakd.errors import RunDirError
from soakd.reporting import load_run, write_reports
from soakd.reporting.common import leak_entries
from soakd.reporting.format import source_context
from soakd.reporting.svg import Chart, downsample, nice_ticks
from soakd.store import SampleStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LEAK_SOURCE = """\
import asyncio


CACHE = []


async def handle(query):
    data = {"q": query, "blob": "x" * 4096}
    CACHE.append(data)  # grows forever
    await asyncio.sleep(0)
    return data
"""


def _event(name: str, t: float, **fields: Any) -> str:
    return json.dumps(
        {"event": name, "run_id": "r1", "timestamp": "2024-05-01T10:00:00Z", "t": t, **fields}
    )


def build_run(
    root: Path,
    *,
    duration: float = 1800.0,
    step: float = 4.0,
    finished: bool = True,
    hostile: str = "",
) -> Path:
    """A run dir as the supervisor leaves it: store, events (last line cut), summary, config."""
    run = root / "run1"
    run.mkdir(parents=True)
    (run / "snapshots").mkdir()
    src = root / "leaky_service.py"
    src.write_text(LEAK_SOURCE, encoding="utf-8")
    leak_site = f"{src}:9"
    foreign_site = "/nonexistent/elsewhere/cache.py:42" + hostile
    rng = random.Random(7)
    store = SampleStore(run / "samples.db")
    store.set_meta("run_id", "r1")
    store.set_meta("started_at", "2024-05-01T10:00:00+00:00")
    store.set_meta("started_epoch", 1714557600.0)
    store.set_meta(
        "workload_totals",
        {"iterations": 99_000, "errors": 990, "latency_ms": {"p50": 40, "p99": 180}},
    )
    store.set_meta("target", "svc.module:Aggregator" + hostile)
    store.set_meta("config", {"workload": {"users": 4}, "note": hostile or "plain"})
    store.add_site(leak_site, [leak_site, "/srv/app/main.py:10"], "    CACHE.append(data)")
    store.add_site(foreign_site, [foreign_site], "    self._cache[key] = value" + hostile)
    t = 0.0
    while t <= duration:
        warm = 60e6 * (1 - math.exp(-t / 120))
        leak = 20_000 * t
        store.add(
            t,
            {
                "rss_bytes": 80e6 + warm + leak + rng.gauss(0, 3e5),
                "heap_bytes": 30e6 + warm / 2 + leak + rng.gauss(0, 1e5),
                "traced_bytes": 20e6 + leak,
                "fds": 40 + rng.randint(0, 2),
                "threads": 6,
                "tasks": 12 + rng.randint(0, 4),
                "throughput_per_s": 55 + rng.gauss(0, 2),
                "error_rate": 0.01 + abs(rng.gauss(0, 0.003)),
                "latency_p50_ms": 40 + rng.gauss(0, 2),
                "latency_p99_ms": 180 + rng.gauss(0, 10),
                "first_event_p99_ms": 25 + rng.gauss(0, 2),
                f"site:{leak_site}": 1000.0 + leak,
                f"site:{foreign_site}": 5e5 + 400 * t,
                "site:/usr/lib/python3.11/re/_compiler.py:755": 2e5 + min(t, 200) * 100,
                "type:dict": 5000 + t * 3,
                "type:list": 2000.0,
            },
        )
        t += step
    store.close()
    events = [
        _event(
            "run.started",
            0.0,
            target="svc.module:Aggregator",
            run_dir=str(run),
            duration_s=duration,
        ),
        _event("worker.started", 0.1, pid=1234),
        _event("worker.ready", 0.8),
        _event(
            "leak.suspected",
            600.0,
            kind="heap",
            site=leak_site,
            traceback=[leak_site],
            line="    CACHE.append(data)",
            type=None,
            slope_per_h=72e6,
            slope_low_per_h=60e6,
            unit="bytes",
            growth=12e6,
            p_value=1e-6,
            first_detected_s=600.0,
            analyses=3,
            signals={"mann_kendall": True},
        ),
        _event(
            "leak.confirmed",
            900.0,
            kind="heap",
            site=leak_site,
            traceback=[leak_site, "/srv/app/main.py:10"],
            functions=["remember", None],
            line="    CACHE.append(data)",
            type=None,
            slope_per_h=72e6,
            slope_low_per_h=65e6,
            unit="bytes",
            growth=18e6,
            p_value=1e-9,
            first_detected_s=600.0,
            analyses=6,
            signals={"mann_kendall": True, "theil_sen_low": 65e6},
        ),
        _event(
            "leak.suspected",
            1200.0,
            kind="objects",
            site=None,
            traceback=[],
            type="dict" + hostile,
            slope_per_h=10800.0,
            slope_low_per_h=9000.0,
            unit="count",
            growth=3600.0,
            p_value=1e-4,
            first_detected_s=1200.0,
            analyses=2,
            signals={"note": hostile},
        ),
        _event(
            "threshold.breached",
            1500.0,
            rule="rss over 150MB" + hostile,
            metric="rss_bytes",
            value=150_100_000.0,
            limit=150e6,
            action="alert",
            at_s=1500.0,
        ),
    ]
    if finished:
        events.append(
            _event("run.finished", duration, verdict="leak", exit_code=3, duration_s=duration)
        )
    with (run / "events.jsonl").open("w", encoding="utf-8") as fh:
        fh.write("\n".join(events) + "\n")
        fh.write('{"event": "workload.interval", "t": 17')  # cut by a SIGKILL
    summary = {
        "schema": "soakd.summary/1",
        "run_id": "r1",
        "started_at": "2024-05-01T10:00:00+00:00",
        "ended_at": "2024-05-01T10:30:00+00:00" if finished else None,
        "duration_s": duration,
        "verdict": "leak",
        "exit_code": 3,
        "target": "svc.module:Aggregator" + hostile,
        "workload": {
            "iterations": 99_000,
            "errors": 990,
            "error_rate": 0.01,
            "throughput_per_s": 55.0,
            "latency_ms": {"p50": 40, "p90": 120, "p99": 180, "max": 900},
            "first_event_ms": {"p50": 12, "p90": 20, "p99": 25, "max": 80},
        },
        "memory": {
            "rss_start_bytes": 80e6,
            "rss_end_bytes": 176e6,
            "rss_peak_bytes": 177e6,
            "rss_slope_bytes_per_h": 72e6,
            "heap_slope_bytes_per_h": 71e6,
        },
        "leaks": [
            {
                "kind": "heap",
                "site": leak_site,
                "traceback": [leak_site, "/srv/app/main.py:10"],
                "type": None,
                "slope_per_h": 72e6,
                "unit": "bytes",
                "growth": 18e6,
                "p_value": 1e-9,
                "first_detected_s": 600.0,
            }
        ],
        "breaches": [
            {
                "rule": "rss over 150MB" + hostile,
                "value": 150_100_000.0,
                "limit": 150e6,
                "action": "alert",
                "at_s": 1500.0,
            }
        ],
        "detection": {"warmup_end_s": 420.0},
    }
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (run / "config.json").write_text(
        json.dumps({"target": {"factory": "svc.module:Aggregator" + hostile}}), encoding="utf-8"
    )
    return run


class _SvgCollector(HTMLParser):
    """Collects per-<svg> path data, titles and legend text, and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[dict[str, Any]] = []
        self.urls: list[str] = []
        self.scripts = 0
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href", "xlink:href", "action"):
            if a.get(key):
                self.urls.append(a[key] or "")
        if tag == "script":
            self.scripts += 1
        if tag == "svg":
            self.svgs.append({"paths": [], "series": [], "text": ""})
        elif tag == "path" and self.svgs:
            self.svgs[-1]["paths"].append(a.get("d") or "")
            self.svgs[-1]["series"].append(a.get("data-series"))
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        while self._stack and self._stack.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self.svgs and "svg" in self._stack:
            self.svgs[-1]["text"] += data


def _parse(html: str) -> _SvgCollector:
    parser = _SvgCollector()
    parser.feed(html)
    return parser


def test_report_html_has_every_plot_and_leak_details(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    write_reports(run, summary)
    html = (run / "report.html").read_text(encoding="utf-8")
    parsed = _parse(html)
    assert parsed.scripts == 0
    assert not [u for u in parsed.urls if re.match(r"(?i)\s*(https?:)?//", u)]
    charts = {svg["text"].split(" — ")[0]: svg for svg in parsed.svgs}
    for title, names in {
        "Memory": ["rss_bytes", "heap_bytes", "traced_bytes"],
        "File descriptors": ["fds"],
        "Threads": ["threads"],
        "asyncio tasks": ["tasks"],
        "Throughput": ["throughput_per_s"],
        "Error rate": ["error_rate"],
        "Latency": ["latency_p50_ms", "latency_p99_ms"],
    }.items():
        svg = charts[title]
        assert [s for s in svg["series"] if s in names] == names
        assert all(len(d) > 100 and d.startswith("M") for d in svg["paths"])
        for name in names:
            assert name in svg["text"]
    sites = charts["Top growing allocation sites"]
    # the leaking site grows most (18e6 > 0.7e6 > 0.02e6) and leads the legend
    assert sites["series"][0].endswith("leaky_service.py:9")
    assert len(sites["series"]) == 3
    # warm-up end and the detections are marked on the memory plot
    assert "warm-up end" in charts["Memory"]["text"]
    assert "heap suspected" in charts["Memory"]["text"]
    assert "heap confirmed" in charts["Memory"]["text"]
    # confirmed leak: traceback, the real source around the site, the statistics
    assert "CACHE.append(data)  # grows forever" in html
    assert re.search(r'class="hit">\s+9  ', html)
    assert "/srv/app/main.py:10" in html
    assert "leaky_service.py:9 in remember</code>" in html
    assert "68.7 MiB/h" in html  # 72e6 bytes per hour
    assert "1e-09" in html
    assert "theil_sen_low" in html
    # the suspect of kind objects shows its type growth
    assert "type:dict" in html and "suspected" in html
    assert "rss over 150MB" in html
    assert "1 line(s) of events.jsonl could not be read" in html
    assert "&quot;users&quot;: 4" not in html  # config.json wins over meta config
    assert "svc.module:Aggregator" in html


def test_report_markdown_states_the_facts(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    write_reports(run, json.loads((run / "summary.json").read_text()))
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "**Verdict: leak** (exit code 3)" in md
    assert "| iterations | 99000 |" in md
    assert "| error rate | 1.00% |" in md
    assert "| latency p99 | 180 ms |" in md
    assert "| RSS peak | 168.8 MiB |" in md
    assert "### CONFIRMED: heap leak at `" in md
    assert ">     9      CACHE.append(data)  # grows forever" in md
    # the traceback names each frame's function where the source did
    assert f"{run.parent}/leaky_service.py:9 in remember\n/srv/app/main.py:10\n" in md
    assert "### SUSPECTED: objects leak (type dict)" in md
    assert "| rss over 150MB | 143.1 MiB | 143.1 MiB | alert | 25m00s |" in md
    assert '- signals: `{"mann_kendall": true, "theil_sen_low": 65000000.0}`' in md
    assert "warm-up ended at 7m00s" in md


def test_report_escapes_hostile_strings(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script><img src=http://evil.example/x>`|#"
    run = build_run(tmp_path, hostile=evil)
    write_reports(run, json.loads((run / "summary.json").read_text()))
    html = (run / "report.html").read_text(encoding="utf-8")
    parsed = _parse(html)
    assert parsed.scripts == 0
    assert parsed.urls == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    md = (run / "report.md").read_text(encoding="utf-8")
    # raw HTML only inside code spans and fences, where Markdown shows it as text
    prose = re.sub(r"(?s)```.*?```|`[^`\n]*`", "", md)
    assert "<script>" not in prose
    assert "\\<script\\>" in prose


def test_source_context_reads_only_python_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("a\nb\nTOKEN\n")
    assert source_context(f"{secret}:3") is None
    src = tmp_path / "m.py"
    src.write_text("\n".join(f"line{i}" for i in range(1, 21)))
    assert source_context(f"{src}:10") == [(n, f"line{n}") for n in range(7, 14)]
    assert source_context(f"{src}:1") == [(n, f"line{n}") for n in range(1, 5)]
    assert source_context(f"{src}:99") is None
    assert source_context("relative.py:3") is None


def test_downsample_bounds_points_and_keeps_extremes() -> None:
    points = [
        (float(t), math.sin(t / 500) * 100 + (1000 if t == 43_210 else 0)) for t in range(86_400)
    ]
    small = downsample(points, 1500)
    assert len(small) <= 1500
    assert max(v for _, v in small) == max(v for _, v in points)  # the spike survives
    assert min(v for _, v in small) == min(v for _, v in points)
    assert [t for t, _ in small] == sorted(t for t, _ in small)
    assert downsample([(0.0, float("nan")), (1.0, 2.0)]) == [(1.0, 2.0)]


def test_store_downsampling_keeps_24h_plots_small(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "samples.db")
    db = sqlite3.connect(tmp_path / "samples.db")
    with db:
        db.executemany(
            "INSERT INTO samples(t, series, value) VALUES (?, 'rss_bytes', ?)",
            ((float(t), 1e8 + t * 10.0) for t in range(86_400)),
        )
    db.close()
    store.close()
    run = load_run(tmp_path, {})
    rss = run.series["rss_bytes"]
    assert 700 <= len(rss) <= 1500
    assert rss[0] == (0.0, 1e8) and rss[-1] == (86_399.0, 1e8 + 863_990.0)
    assert all(b[1] >= a[1] for a, b in itertools.pairwise(rss))  # monotone stays so


def test_chart_handles_extreme_values() -> None:
    svg = Chart("x", {"a": [(0.0, -1e300), (1.0, 1e300)], "b": []}, "bytes").render()
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    assert Chart("e", {"a": []}).render().count("no samples") == 1
    assert nice_ticks(0, 100, 5) == [0, 20, 40, 60, 80, 100]


def test_leak_entries_merge_summary_and_events(tmp_path: Path) -> None:
    run = load_run(build_run(tmp_path))
    leaks = leak_entries(run.summary, run.events)
    assert [(leak.status, leak.kind) for leak in leaks] == [
        ("confirmed", "heap"),
        ("suspected", "objects"),
    ]
    assert leaks[0].slope_low_per_h == 65e6  # from the latest event, the summary lacks it
    assert leaks[0].analyses == 6


def _soakd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soakd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


@pytest.mark.slow
def test_report_command_rebuilds_killed_run(tmp_path: Path) -> None:
    run = build_run(tmp_path, finished=False)
    (run / "summary.json").unlink()  # killed before the first checkpoint
    proc = _soakd("report", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(run / "report.html") in proc.stdout
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "rss_bytes" in html and "<svg" in html
    assert (run / "report.md").is_file()
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_report_command_replaces_a_hostile_summary(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    (run / "summary.json").write_text('{"duration_s": ' + "9" * 10_000 + "}")
    proc = _soakd("report", str(run))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["schema"] == "soakd.summary/1"
    assert summary["verdict"] == "leak"


@pytest.mark.slow
def test_report_command_survives_hostile_event_lines(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    with (run / "events.jsonl").open("a") as fh:
        fh.write("\n" + '{"event": "leak.suspected", "t": ' + "9" * 10_000 + "}\n")
        fh.write('{"event": "threshold.breached", "value": 1e999, "rule": "x", "t": 3}\n')
        fh.write("[1, 2]\n" + "[" * 100_000 + "]" * 100_000 + "\n")  # RecursionError bait
    proc = _soakd("report", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "could not be read" in (run / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "run directory not found"),
        ("empty", "not a soakd run directory"),
        ("garbage_db", "samples.db"),
        ("not_sqlite_store", "not a soakd sample store"),
    ],
)
def test_report_command_rejects_bad_run_dirs(tmp_path: Path, damage: str, message: str) -> None:
    run = tmp_path / "run"
    if damage != "missing":
        run.mkdir()
    if damage == "empty":
        (run / "notes.txt").write_text("hi")
    if damage == "garbage_db":
        (run / "samples.db").write_bytes(os.urandom(8192))
        (run / "events.jsonl").write_text("{}\n")
    if damage == "not_sqlite_store":
        db = sqlite3.connect(run / "samples.db")
        db.execute("CREATE TABLE x(a)")
        db.commit()
        db.close()
    proc = _soakd("report", str(run))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr
    assert proc.stderr.startswith("soakd: error: ")


def test_huge_and_non_finite_values_render(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["memory"]["rss_peak_bytes"] = float("inf")
    summary["memory"]["rss_slope_bytes_per_h"] = 1e308
    summary["workload"]["iterations"] = 10**200
    summary["leaks"] = ["not a dict", {"kind": "fds", "slope_per_h": "fast", "unit": "count"}]
    summary["breaches"] = "nope"
    db = sqlite3.connect(run / "samples.db")
    with db:
        db.execute("INSERT INTO samples VALUES (5, 'rss_bytes', 'text')")
        db.execute("INSERT INTO samples VALUES (6, 'rss_bytes', 1e308)")
    db.close()
    write_reports(run, summary)
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<th>RSS peak</th><td>n/a</td>" in html  # inf is not a number to show
    assert "<th>RSS slope</th><td>1e+308 B/h</td>" in html
    assert "fds leak" in html
    assert "nan" not in " ".join(svg["paths"][0] for svg in _parse(html).svgs if svg["paths"])


def test_write_reports_on_dir_without_store(tmp_path: Path) -> None:
    events = [
        _event("run.started", 0.0, duration_s=600),
        _event("detection.warmup_end", 95.0, warmup_end_s=90.0),
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(events) + "\n")
    write_reports(tmp_path, {})
    assert "samples.db is missing" in (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    assert "**Verdict: unknown**" in md
    assert "warm-up ended at 1m30s" in md  # from the event: the summary had none
    with pytest.raises(RunDirError, match="run directory not found"):
        write_reports(tmp_path / "nope", {})


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    run = build_run(tmp_path / "data")
    write_reports(run, json.loads((run / "summary.json").read_text()))
    profile = tmp_path / "profile"
    proc = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            (run / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    parsed = _parse(proc.stdout)
    assert len(parsed.svgs) >= 9
    drawn = [s for svg in parsed.svgs for s in svg["series"]]
    for name in ("rss_bytes", "heap_bytes", "fds", "throughput_per_s", "latency_p99_ms"):
        assert name in drawn
    assert all(
        re.match(r"M[\d.]+ [\d.]+( L[\d.]+ [\d.]+)+$", d)
        for svg in parsed.svgs
        for d in svg["paths"]
    )
    assert not [u for u in parsed.urls if re.match(r"(?i)\s*(https?:)?//", u)]


@pytest.mark.slow
def test_report_lists_one_leak_per_cause_with_its_evidence(tmp_path: Path) -> None:
    """A stranded-task leak holds Task objects: one tasks leak, the type under it."""
    run = build_run(tmp_path, finished=False)
    (run / "summary.json").unlink()
    common = {"site": None, "traceback": [], "unit": "count", "p_value": 1e-8, "analyses": 4}
    with (run / "events.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("\n")  # after the line a SIGKILL cut
        fh.write(_event("leak.confirmed", 700.0, kind="tasks", type=None, slope_per_h=3600.0,
                        slope_low_per_h=3000.0, growth=600.0, first_detected_s=650.0,
                        **common) + "\n")  # fmt: skip
        fh.write(_event("leak.confirmed", 710.0, kind="objects", type="_asyncio.Task",
                        slope_per_h=3600.0, slope_low_per_h=3000.0, growth=610.0,
                        first_detected_s=640.0, **common) + "\n")  # fmt: skip
    proc = _soakd("report", str(run))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    kinds = [(leak["kind"], leak.get("type")) for leak in summary["leaks"]]
    assert kinds == [("heap", None), ("tasks", None)]
    tasks = summary["leaks"][1]
    assert [(e["kind"], e["type"]) for e in tasks["evidence"]] == [("objects", "_asyncio.Task")]
    assert tasks["first_detected_s"] == 640.0  # the cause's first sign, from its evidence
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "same cause, also seen as:\n  - objects at \\_asyncio.Task" in md
    assert "CONFIRMED: objects" not in md  # not listed as a leak of its own


@pytest.mark.slow
def test_a_cleared_finding_is_listed_in_its_own_section(tmp_path: Path) -> None:
    run = build_run(tmp_path, finished=False)
    (run / "summary.json").unlink()
    cleared = {"kind": "objects", "site": None, "traceback": [], "type": "dict",
               "unit": "count", "p_value": 1e-6, "analyses": 3}  # fmt: skip
    with (run / "events.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(_event("leak.suspected", 300.0, slope_per_h=900.0, growth=50.0,
                        first_detected_s=300.0, **cleared) + "\n")  # fmt: skip
        fh.write(_event("leak.confirmed", 400.0, slope_per_h=900.0, slope_low_per_h=500.0,
                        growth=80.0, first_detected_s=300.0, **cleared) + "\n")  # fmt: skip
        fh.write(_event("leak.cleared", 900.0, **cleared) + "\n")
    proc = _soakd("report", str(run))
    assert proc.returncode == 0, proc.stderr
    html = (run / "report.html").read_text(encoding="utf-8")
    leaks_part, _, cleared_part = html.partition("<h2>Cleared findings</h2>")
    assert cleared_part, "no cleared section"
    leaks_part = leaks_part[leaks_part.index("<h2>Leaks</h2>") :]
    assert "objects leak" not in leaks_part  # not under Leaks
    assert "objects leak" in cleared_part.split("<h2>")[0]
    assert "b-cleared" in cleared_part.split("<h2>")[0]
    md = (run / "report.md").read_text(encoding="utf-8")
    leaks_md, _, cleared_md = md.partition("## Cleared findings")
    assert "CLEARED: objects" in cleared_md.split("\n## ")[0]
    assert "CLEARED" not in leaks_md


_BBOX_SCRIPT = """<script>
window.addEventListener('load', () => {
  const box = (el) => { const b = el.getBBox(); return [b.x, b.y, b.width, b.height]; };
  const out = [...document.querySelectorAll('svg.chart')].map((svg) => ({
    width: svg.viewBox.baseVal.width,
    labels: [...svg.querySelectorAll('text.mlabel')].map(box),
    ticks: [...svg.querySelectorAll('text.tick')].map(box),
  }));
  document.getElementById('out').textContent = JSON.stringify(out);
});
</script>"""


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
def test_long_run_with_many_markers_has_no_overlapping_labels_in_chromium(
    tmp_path: Path,
) -> None:
    """Six hours, a dozen markers close together and one at the very end: Chromium's own
    text boxes (getBBox) of marker labels never overlap, and no tick label leaves its chart."""
    run = build_run(tmp_path / "data", duration=6 * 3600.0, step=60.0, finished=False)
    (run / "summary.json").unlink()
    kinds = ["heap", "objects", "native", "fds", "threads", "tasks"]
    with (run / "events.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("\n")
        for i in range(12):  # a burst of suspicions within minutes, then confirmations
            kind = kinds[i % len(kinds)]
            fh.write(_event("leak.suspected", 3600.0 + i * 40, kind=kind, site=None,
                            type=f"T{i}", unit="count") + "\n")  # fmt: skip
        fh.write(_event("leak.confirmed", 6 * 3600.0 - 5, kind="heap", site=None, type="Z",
                        unit="bytes", slope_per_h=1e6, growth=1e6) + "\n")  # fmt: skip
    proc = _soakd("report", str(run))
    assert proc.returncode == 0, proc.stderr
    html = (run / "report.html").read_text(encoding="utf-8")
    charts = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" class="chart".*?</svg>', html)
    css = re.search(r"<style>.*?</style>", html, re.S)
    assert charts and css
    page = tmp_path / "charts.html"
    body = f"{''.join(charts)}<pre id='out'></pre>{_BBOX_SCRIPT}"
    page.write_text(f"<!DOCTYPE html><html><head>{css.group(0)}</head><body>{body}</body></html>")
    common = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update",
              f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([*common, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r"<pre id=\"out\">(.*?)</pre>", dom.stdout, re.S)
    assert found and found.group(1), "the measuring script did not run"
    measured = json.loads(html_unescape(found.group(1)))
    with_markers = [c for c in measured if len(c["labels"]) >= 4]
    assert with_markers, "the markers' labels were not drawn"
    for chart in measured:
        labels = chart["labels"]
        for i, a in enumerate(labels):
            assert a[0] >= 0 and a[0] + a[2] <= chart["width"] + 0.5, a
            for b in labels[i + 1 :]:
                assert not _overlap(a, b), (a, b)
        for tick in chart["ticks"]:  # the last x tick is not clipped at the right edge
            assert tick[0] >= -0.5 and tick[0] + tick[2] <= chart["width"] + 0.5, tick
    # and the screenshot a person would look at renders
    png = tmp_path / "charts.png"
    shot = subprocess.run([*common, "--hide-scrollbars", f"--screenshot={png}",
                           "--window-size=1280,900", page.as_uri()],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert shot.returncode == 0 and png.read_bytes()[:4] == b"\x89PNG"
