"""Growth by full traceback: the flame graph in report.html, collapsed stacks, speedscope."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from soakd.reporting.flame import Stack, collapsed, flame_svg, speedscope
from tests.conftest import run_soakd, write_config

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real soak of a target leaking 16 KiB per query at one line (exact tracing)."""
    base = tmp_path_factory.mktemp("flame")
    cfg = write_config(base, '[target]\nfactory = "simple_targets:Leaky"\noptions = {kb = 16}\n')
    cfg.write_text(
        cfg.read_text().replace("[sampling]\n", '[sampling]\ntracemalloc = "always"\n'),
        encoding="utf-8",
    )
    run = base / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "6s", "--run-dir", str(run), cwd=base)
    assert proc.returncode in (0, 3, 7), proc.stderr[-3000:]
    assert (run / "snapshots" / "final.json.gz").is_file()
    return run


def _svg_frames(svg: ET.Element) -> list[tuple[str, float, float, float]]:
    """(title, x, y, width) of every drawn frame."""
    out = []
    for g in svg.iter(f"{SVG_NS}g"):
        if g.get("class") != "ff":
            continue
        title = g.find(f"{SVG_NS}title")
        rect = g.find(f"{SVG_NS}rect")
        assert title is not None and rect is not None and title.text
        out.append((title.text, float(rect.get("x", 0)), float(rect.get("y", 0)),
                    float(rect.get("width", 0))))  # fmt: skip
    return out


@pytest.mark.slow
def test_collapsed_and_speedscope_totals_match_the_diff(leaky_run: Path) -> None:
    snaps = leaky_run / "snapshots"
    a, b = str(snaps / "baseline.json.gz"), str(snaps / "final.json.gz")
    table = run_soakd("diff", a, b, "--group-by", "traceback", "--json", "--top", "100000")
    rows = json.loads(table.stdout)["rows"]
    grown = [r for r in rows if r["size_diff"] > 0]
    out = run_soakd("diff", a, b, "--format", "collapsed")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(grown)
    weights = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert sum(weights) == sum(r["size_diff"] for r in grown)
    # each line is the diff row's traceback, outermost first, innermost (the site) last
    by_stack = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in lines}
    for r in grown:
        assert by_stack[";".join(reversed(r["traceback"]))] == r["size_diff"]
    top = max(lines, key=lambda line: int(line.rsplit(" ", 1)[1]))
    assert re.search(r"simple_targets\.py:34 \d+$", top)  # the leaking line grew most
    scope = json.loads(run_soakd("diff", a, b, "--format", "speedscope").stdout)
    profile = scope["profiles"][0]
    assert profile["unit"] == "bytes" and sum(profile["weights"]) == sum(weights)
    assert len(profile["samples"]) == len(lines) and profile["endValue"] == sum(weights)
    names = scope["shared"]["frames"]
    assert any(f["name"] == "simple_targets.py:34" and f["line"] == 34 for f in names)
    # the snapshot's source lines were read by the supervisor that wrote it (the worker sends
    # none: reading sources in the target costs the target)
    top_row = max(grown, key=lambda r: r["size_diff"])
    assert top_row["line"] == "_KEEP.append(os.urandom(self.kb * 1024))  # the leak site"


@pytest.mark.slow
def test_report_embeds_a_self_contained_flame_graph(leaky_run: Path) -> None:
    html = (leaky_run / "report.html").read_text(encoding="utf-8")
    match = re.search(r'<svg xmlns="http://www.w3.org/2000/svg" class="flame".*?</svg>', html)
    assert match, "no flame graph in report.html"
    svg = ET.fromstring(match.group(0))
    frames = _svg_frames(svg)
    root = next(f for f in frames if f[0].startswith("all — "))
    assert root[3] == pytest.approx(float(svg.get("width", 0)) - 20, abs=0.2)
    # every frame lies within the root's span, above it (the root is at the bottom)
    for _title, x, y, w in frames:
        assert root[1] - 0.1 <= x and x + w <= root[1] + root[3] + 0.2 and y <= root[2]
    leak = [f for f in frames if "simple_targets.py:34" in f[0]]
    assert leak and max(f[3] for f in leak) > root[3] * 0.5  # the leak is most of the growth
    assert "<script" not in html and "http://www.w3.org/2000/svg" in match.group(0)
    assert "Top growing stacks over time" in html


def test_flame_svg_structure_from_stacks() -> None:
    stacks = [
        Stack(("main.py:1", "svc.py:10", "cache.py:5"), 3000),
        Stack(("main.py:1", "svc.py:10", "log.py:7"), 1000),
        Stack(("main.py:1", "other.py:3"), 1000),
        Stack(("<hostile & 'frame'>;x",), 10),
    ]
    svg = ET.fromstring(flame_svg(stacks, "t <&>", width=1020))
    frames = {t.split(" — ")[0]: (x, y, w) for t, x, y, w in _svg_frames(svg)}
    assert frames["all"][2] == pytest.approx(1000.0)
    assert frames["main.py:1"][2] == pytest.approx(1000.0 * 5000 / 5010, abs=0.1)
    assert frames["svc.py:10"][2] == pytest.approx(1000.0 * 4000 / 5010, abs=0.1)
    assert frames["cache.py:5"][1] < frames["svc.py:10"][1] < frames["main.py:1"][1]
    assert "<hostile & 'frame'>;x" in frames  # escaped in the SVG, intact when parsed
    text = collapsed(stacks)
    assert "main.py:1;svc.py:10;cache.py:5 3000\n" in text
    assert "<hostile & 'frame'>:x 10\n" in text  # ';' would split the stack
    assert sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()) == 5010
    assert speedscope(stacks, "n")["profiles"][0]["endValue"] == 5010
    assert flame_svg([], "empty") == ""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
def test_flame_graph_renders_in_chromium(leaky_run: Path, tmp_path: Path) -> None:
    html = (leaky_run / "report.html").read_text(encoding="utf-8")
    css = re.search(r"<style>.*?</style>", html, re.S)
    svg = re.search(r'<svg xmlns="http://www.w3.org/2000/svg" class="flame".*?</svg>', html)
    assert css and svg
    page = tmp_path / "flame.html"
    page.write_text(f"<!DOCTYPE html><html><head>{css.group(0)}</head><body>"
                    f"{svg.group(0)}</body></html>", encoding="utf-8")  # fmt: skip
    png = tmp_path / "flame.png"
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
         "--window-size=1200,420", page.as_uri()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
