"""Hypothesis fuzz of the run-directory readers (``report``, ``status``, ``diff``,
``compare``) on hostile run directories: random bytes, deep JSON, huge numbers, control
characters, links out of the run, FIFOs and devices in place of every file.

Each example copies a real run, damages a few of its files and runs every reader in-process
through ``soakd.cli.main``: the answer must be an exit code (0, 2, or 6 for compare), never
an internal error or a traceback, and each command must finish within ``BOUND`` seconds (a
FIFO or /dev/zero read unbounded would hang: pytest-timeout is the backstop). The count of
inputs tried is printed and stated in the README's Security section.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soakd.cli import main
from tests.conftest import run_soakd, write_config

BOUND = 5.0
EXAMPLES = 300
FILES = [
    "events.jsonl",
    "summary.json",
    "config.json",
    "samples.db",
    "samples.db-wal",
    "snapshots/final.json.gz",
    "snapshots/baseline.json.gz",
]
KINDS = [
    "bytes", "deep_json", "huge_number", "controls", "empty", "fifo", "dir",
    "link_zero", "link_urandom", "link_shadow", "link_outside", "gzip_deep",
]  # fmt: skip
TRIED = {"inputs": 0, "commands": 0}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fuzzbase")
    cfg = write_config(tmp, "")
    run = tmp / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "3s", "--run-dir", str(run), cwd=tmp)
    assert proc.returncode in (0, 7), proc.stderr[-2000:]
    assert (run / "snapshots" / "final.json.gz").is_file()
    return run


def _damage(path: Path, kind: str, noise: bytes, depth: int, outside: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    if kind == "bytes":
        path.write_bytes(noise)
    elif kind == "deep_json":
        path.write_bytes(b"[" * depth + b"]" * depth)
    elif kind == "huge_number":
        path.write_bytes(b'{"event": "run.started", "t": 1' + b"9" * (depth * 10) + b"}\n")
    elif kind == "controls":
        doc = {
            "event": "leak.confirmed",
            "site": "\x1b[2J\r/x.py:1",
            "line": "\x1b]0;t\x07",
            "schema": "soakd.summary/1",
            "target": "\x9b31m",
            "verdict": "\x1b[31mleak",
        }
        path.write_text(json.dumps(doc) + "\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "link_zero":
        path.symlink_to("/dev/zero")
    elif kind == "link_urandom":
        path.symlink_to("/dev/urandom")
    elif kind == "link_shadow":
        path.symlink_to("/etc/shadow")
    elif kind == "link_outside":
        path.symlink_to(outside)
    elif kind == "gzip_deep":
        path.write_bytes(gzip.compress(b"[" * (depth * 100) + noise))


def _call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    start = time.monotonic()
    code = main(list(argv))
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    TRIED["commands"] += 1
    assert elapsed < BOUND, f"{argv} took {elapsed:.1f}s"
    assert "Traceback" not in err and "internal error" not in err, (argv, err[-2000:])
    assert "\x1b" not in out or argv[0] == "report", (argv, out[:500])
    return code, err


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same inputs on every run: CI never fails on a new draw
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    damage=st.dictionaries(st.sampled_from(FILES), st.sampled_from(KINDS), min_size=1, max_size=3),
    noise=st.binary(max_size=2048),
    depth=st.integers(min_value=1, max_value=5000),
)
def test_readers_survive_hostile_run_dirs(
    real_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: dict[str, str],
    noise: bytes,
    depth: int,
) -> None:
    TRIED["inputs"] += 1
    run = tmp_path / f"run{TRIED['inputs']}"
    shutil.copytree(real_run, run, symlinks=True)
    outside = tmp_path / "outside.json"
    outside.write_text('{"secret": "OUTSIDESECRET"}')
    os.chmod(outside, 0o600)
    for name, kind in damage.items():
        _damage(run / name, kind, noise, depth, outside)
    try:
        for argv in (
            ("status", str(run)),
            ("status", str(run), "--json"),
            ("diff", str(run / "snapshots/baseline.json.gz"), str(run / "snapshots/final.json.gz")),
            ("compare", str(run), "--baseline", str(real_run)),
            ("compare", str(real_run), "--baseline", str(run)),
            ("report", str(run)),
        ):
            code, err = _call(capsys, *argv)
            assert code in ((0, 2, 6) if argv[0] == "compare" else (0, 2)), (argv, code, err)
        for report in ("report.html", "report.md"):
            path = run / report
            if path.is_file() and not path.is_symlink():
                text = path.read_text(errors="replace")
                assert "OUTSIDESECRET" not in text and "root:" not in text
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_zz_fuzz_count() -> None:
    """Runs after the fuzz (file order): the counts it printed are the ones the README quotes."""
    print(f"\nreaders fuzz: {TRIED['inputs']} hostile run dirs, {TRIED['commands']} commands")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert f"on {EXAMPLES} generated hostile run directories" in readme
