"""Hostile input: random configs and ``--set`` overrides, damaged and malicious run directories.

Whatever comes in, soakd answers with exit 0 or 2 and a message that names what is wrong (the
config key path, the file), never a traceback, never code from a file. Fuzzing runs in-process
through ``soakd.cli.main`` (milliseconds per example); a few cases go through the real CLI.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import pickle
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from soakd.cli import main
from soakd.config import METRICS, Config
from soakd.pytest_plugin import to_toml, toml_value
from tests.conftest import run_soakd, write_config

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- strategies ----------------------------------------------------------------------------

KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
TEXTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "90s",
            "250ms",
            "1.5h",
            "-1s",
            "0s",
            "10x",
            "2GiB",
            "512KiB",
            "1e999",
            "nan",
            "inf",
            "always",
            "off",
            "on-suspicion",
            "json",
            "pretty",
            "alert",
            "abort",
            "fail",
            "mod:attr",
            "no_colon",
            "127.0.0.1:9464",
            "localhost",
            "http://127.0.0.1:1/x",
            "constant",
            "exponential",
            "GET",
            "rss_bytes",
            "heap",
            "",
            " ",
            "ü" * 3,
        ]
    ),
)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 2**62, 10_001]),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXTS,
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=8,
)


def _fields(model: Any) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


SECTIONS = {
    name: _fields(field.annotation)
    for name, field in Config.model_fields.items()
    if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")
}


@st.composite
def sections(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            doc[name] = draw(SCALARS)  # a scalar where a table belongs
            continue
        keys = draw(
            st.lists(st.one_of(st.sampled_from(SECTIONS[name]), KEYS), max_size=4, unique=True)
        )
        doc[name] = {key: draw(JUNK) for key in keys}
    if draw(st.booleans()):
        rule_keys = ["metric", "above", "below", "window", "for", "grace", "action", "kind"]
        rule = st.dictionaries(st.sampled_from(rule_keys) | KEYS, JUNK, max_size=4)
        metric = st.sampled_from(METRICS) | TEXTS
        doc["rules"] = [
            {"metric": draw(metric), **draw(rule)} for _ in range(draw(st.integers(1, 2)))
        ]
    if draw(st.integers(0, 4)) == 0:
        doc[draw(KEYS)] = draw(JUNK)  # an unknown top-level key
    return doc


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every path into ``value`` the way soakd prints it: ``a.b``, ``rules[0].metric``."""
    out: set[str] = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.add(path)
            out |= key_paths(sub, path)
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            path = f"{prefix}[{i}]"
            out.add(path)
            out |= key_paths(sub, path)
    return out


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- configs -------------------------------------------------------------------------------


@FUZZ
@given(doc=sections())
@example(doc={"rules": [{"metric": "rss_bytes", "above": "1GiB", "window": "10ms"}]})
@example(doc={"run": {"worker_memory_limit": "lots"}})
@example(doc={"workload": {"stages": [{"duration": "1m"}]}})
@example(doc={"target": {"http": {"url": "ftp://x"}}})
@example(doc={"alerts": {"webhooks": [{"url": 1}]}})
@example(doc={"workload": {"queries": [{"text": ""}, 3]}})
def test_random_config_files_exit_0_or_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: dict[str, Any]
) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    code, _out, err = cli(capsys, "check-config", str(path))
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[0].startswith(f"soakd: error: {path}: "), err
        paths = key_paths(doc) | {"(top level)"}
        for line in lines:
            named = line.removeprefix("soakd: error: ").removeprefix(f"{path}: ")
            where = re.split(r" = |: ", named, maxsplit=1)[0]
            if named.endswith(": Field required"):  # a missing key: its table is in the file
                where = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", where)
            assert where in paths, f"{where!r} is not a key path of the config: {line}"


SET_KEYS = st.one_of(
    st.sampled_from([f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys]),
    st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(sorted(SECTIONS)), KEYS),
    KEYS,
    st.sampled_from(
        [
            "target.options.leak_kb",
            "rules",
            "a..b",
            ".x",
            "x.",
            "",
            " ",
            "=",
            "workload.users.deeper",
            "target.options",
        ]
    ),
)
SET_VALUES = st.one_of(JUNK.map(toml_value), st.text(max_size=16))


@FUZZ
@given(key=SET_KEYS, value=SET_VALUES)
@example(key="rules", value='[{metric = "rss_bytes", above = "2x"}]')
@example(key="workload.users", value="[1,")
@example(key="workload.users.deeper", value="1")
@example(key="run.duration", value="nan")
@example(key="rules.0.metric", value="fds")
def test_random_set_overrides_exit_0_or_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str
) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[workload]\nusers = 2\n[run]\nduration = "1m"\n', encoding="utf-8")
    item = f"{key}={value}"
    code, _out, err = cli(capsys, "check-config", str(path), f"--set={item}")
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err
    if code == 2:
        parts = [p.strip() for p in key.split(".")]
        prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
        assert item in err or repr(item) in err or any(p and p in err for p in prefixes), err


def test_a_few_hostile_configs_through_the_real_cli(tmp_path: Path) -> None:
    cases = {
        "deep.toml": ("[workload]\nusers = " + "[" * 400 + "]" * 400 + "\n", "workload.users"),
        "huge.toml": ("[workload]\nusers = 9223372036854775807\n", "workload.users"),
        "nan.toml": ("[run]\nduration = nan\n", "run.duration"),
        "junk.toml": ('[zzz]\na = {b = {c = [1, "x", {d = inf}]}}\n', "zzz"),
        "binary.toml": ("\x00\x01\x02 = 1\n", "not valid TOML"),
    }
    for name, (body, needle) in cases.items():
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        for args in (("check-config", str(path)), ("run", "-c", str(path), "-d", "5s")):
            proc = run_soakd(*args, cwd=tmp_path, timeout=60)
            assert proc.returncode == 2, (name, proc.stderr)
            assert needle in proc.stderr and str(path) in proc.stderr, (name, proc.stderr)
            assert "Traceback" not in proc.stderr
    proc = run_soakd("run", "--set", "workload.users.x=1", "--set=run.duration=-5s", cwd=tmp_path)
    assert proc.returncode == 2 and "workload" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


# -- hostile run directories ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real soak (heap snapshots included) to damage copies of. Three seconds judge
    nothing: the leak must cross the end-to-end growth bound (10 MB) to end as a leak, with
    room to spare (32 KiB per iteration: some 12 MB of heap)."""
    base = tmp_path_factory.mktemp("real")
    body = '[target]\nfactory = "simple_targets:Leaky"\noptions = {kb = 32}\n'
    cfg = write_config(base, body)
    cfg.write_text(
        cfg.read_text(encoding="utf-8").replace(
            "[sampling]\n", '[sampling]\ntracemalloc = "always"\n'
        ),
        encoding="utf-8",
    )
    run = base / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "3s", "--run-dir", str(run), cwd=base)
    assert proc.returncode in (0, 3), proc.stderr
    assert (run / "snapshots" / "baseline.json.gz").exists(), sorted(os.listdir(run / "snapshots"))
    return run


@pytest.fixture
def damaged(real_run: Path, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "copy"
    shutil.copytree(real_run, copy)
    yield copy


MARKER_CODE = "import pathlib; pathlib.Path({!r}).write_text('pwned')"


class _Exploit:
    """Unpickling this runs code: a run directory from another box must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (MARKER_CODE.format(self.marker),))


def _sql(run: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(run / "samples.db")) as db, db:
        for statement in statements:
            db.execute(statement)


def _damage(run: Path, how: str, marker: Path) -> None:
    db = run / "samples.db"
    events = run / "events.jsonl"
    if how == "samples_garbage":
        db.write_bytes(os.urandom(8192))
    elif how == "samples_truncated":
        db.write_bytes(db.read_bytes()[: max(100, db.stat().st_size // 3)])
    elif how == "samples_empty":
        db.write_bytes(b"")
    elif how == "samples_foreign":
        db.unlink()
        with contextlib.closing(sqlite3.connect(db)) as other, other:
            other.execute("CREATE TABLE users(name TEXT)")
    elif how == "samples_pickle":
        db.write_bytes(pickle.dumps(_Exploit(marker)))
    elif how == "samples_huge_values":
        _sql(
            run,
            "INSERT INTO samples VALUES (1e308, 'rss_bytes', 1e308)",
            "INSERT INTO samples VALUES (9e307, 'heap_bytes', -1e308)",
            "INSERT INTO samples VALUES ('x', 'rss_bytes', 'not a number')",
            "INSERT INTO samples VALUES (5, 'site:/x.py:1', 9223372036854775807)",
            "UPDATE meta SET value='1e999' WHERE key='started_epoch'",
            "UPDATE meta SET value='{{{' WHERE key='workload_totals'",
            "INSERT OR REPLACE INTO sites VALUES ('/x.py:1', 'not json [', NULL)",
            "INSERT INTO workload VALUES (1, '[1e999, {\"iterations\": 1e400}]')",
        )
    elif how == "events_garbage":
        events.write_bytes(os.urandom(20000))
    elif how == "events_truncated":
        events.write_bytes(events.read_bytes()[:-37])
    elif how == "events_hostile_lines":
        with events.open("ab") as fh:
            fh.write(b"[" * 100_000 + b"\n")  # recursion bomb
            fh.write(b'{"event": "leak.confirmed", "kind": "heap", "slope_per_h": 1e999}\n')
            fh.write(b'{"event": "run.finished", "verdict": "pwned", "exit_code": 99}\n')
            fh.write(b'{"event": "threshold.breached", "value": ' + b"9" * 5000 + b"}\n")
            fh.write(b"x" * (3 << 20) + b"\n")  # longer than any line soakd reads whole
            fh.write(b"\xff\xfe\x00\n")
    elif how == "events_forged_finish":
        with events.open("ab") as fh:
            fh.write(b'{"event": "run.finished", "verdict": ["x"], "ended_at": {"a": 1},')
            fh.write(b' "duration_s": "soon", "t": 1e999}\n')
    elif how == "summary_garbage":
        (run / "summary.json").write_bytes(b"\x00garbage{" * 100)
    elif how == "summary_hostile":
        (run / "summary.json").write_text(
            json.dumps({"verdict": ["x"], "leaks": "no", "memory": {"rss_peak_bytes": "1e999"}})
        )
    elif how == "config_garbage":
        (run / "config.json").write_bytes(os.urandom(300))
    elif how == "snapshots_hostile":
        snaps = run / "snapshots"
        (snaps / "baseline.json.gz").write_bytes(gzip.compress(pickle.dumps(_Exploit(marker))))
        (snaps / "latest.json.gz").write_bytes(os.urandom(500))
        (snaps / "final.json.gz").write_bytes(b"")
    elif how == "everything_gone_but_events":
        for name in ("samples.db", "summary.json", "config.json"):
            (run / name).unlink(missing_ok=True)
        shutil.rmtree(run / "snapshots")
    else:
        raise AssertionError(how)


STORE_DAMAGE = [
    "samples_garbage",
    "samples_truncated",
    "samples_empty",
    "samples_foreign",
    "samples_pickle",
]
OTHER_DAMAGE = [
    "samples_huge_values",
    "events_garbage",
    "events_truncated",
    "events_hostile_lines",
    "events_forged_finish",
    "summary_garbage",
    "summary_hostile",
    "config_garbage",
    "snapshots_hostile",
    "everything_gone_but_events",
]


@pytest.mark.slow
@pytest.mark.parametrize("how", STORE_DAMAGE + OTHER_DAMAGE)
def test_report_on_a_damaged_run_dir_is_clean(
    damaged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    marker = tmp_path / "PWNED"
    _damage(damaged, how, marker)
    code, out, err = cli(capsys, "report", str(damaged))
    assert "Traceback" not in err and "internal error" not in err, err
    assert not marker.exists()
    if how in STORE_DAMAGE:
        assert code == 2, (out, err)
        assert str(damaged / "samples.db") in err
    else:
        assert code in (0, 2), err
    if code == 0:  # a report was written and is a valid summary whatever the input said
        summary = json.loads((damaged / "summary.json").read_text(encoding="utf-8"))
        assert summary["verdict"] in ("pass", "leak", "aborted", "target_failed", "error")
        assert (damaged / "report.html").stat().st_size > 0
    else:
        assert err.startswith("soakd: error: ") and str(damaged) in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "payload",
    [
        "pickle",
        "gzip_pickle",
        "garbage",
        "truncated",
        "empty",
        "huge_numbers",
        "wrong_schema",
        "deep",
        "directory",
        "missing",
    ],
)
def test_diff_refuses_hostile_snapshots(
    real_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], payload: str
) -> None:
    good = real_run / "snapshots" / "baseline.json.gz"
    marker = tmp_path / "PWNED"
    bad = tmp_path / "bad.json.gz"
    exploit = pickle.dumps(_Exploit(marker))
    if payload == "pickle":
        bad.write_bytes(exploit)
    elif payload == "gzip_pickle":
        bad.write_bytes(gzip.compress(exploit))
    elif payload == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif payload == "truncated":
        bad.write_bytes(good.read_bytes()[:-20])
    elif payload == "empty":
        bad.write_bytes(b"")
    elif payload == "huge_numbers":
        doc = json.loads(gzip.decompress(good.read_bytes()))
        for site in doc.get("sites", [])[:3]:
            site["size"] = 10**400
        bad.write_bytes(gzip.compress(json.dumps(doc).encode()))
    elif payload == "wrong_schema":
        bad.write_bytes(gzip.compress(b'{"schema": "soakd.summary/1", "sites": 1}'))
    elif payload == "deep":
        bad.write_bytes(gzip.compress(b"[" * 200_000))
    elif payload == "directory":
        bad.mkdir()
    else:
        bad = tmp_path / "nowhere.json.gz"
    for args in ((str(good), str(bad)), (str(bad), str(good))):
        code, _out, err = cli(capsys, "diff", *args)
        assert code == 2, err
        assert str(bad) in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.slow
def test_pickle_in_a_run_dir_never_executes_through_the_real_cli(
    damaged: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "PWNED"
    exploit = pickle.dumps(_Exploit(marker))
    (damaged / "snapshots" / "latest.json.gz").write_bytes(gzip.compress(exploit))
    (damaged / "snapshots" / "baseline.json.gz").write_bytes(exploit)
    (damaged / "summary.json").write_bytes(exploit)
    proc = run_soakd("report", str(damaged), cwd=tmp_path, timeout=60)
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr
    snaps = damaged / "snapshots"
    proc = run_soakd("diff", str(snaps / "baseline.json.gz"), str(snaps / "latest.json.gz"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert str(snaps / "baseline.json.gz") in proc.stderr
    assert not marker.exists()


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    target=st.sampled_from(["samples.db", "events.jsonl", "summary.json"]),
    flips=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64)), max_size=6),
    cut=st.none() | st.floats(0, 1),
)
def test_report_survives_random_byte_damage(
    real_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    target: str,
    flips: list[tuple[float, bytes]],
    cut: float | None,
) -> None:
    assume(flips or cut is not None)
    run = tmp_path / "fuzzed"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(real_run, run)
    path = run / target
    data = bytearray(path.read_bytes())
    for where, junk in flips:
        at = int(where * max(0, len(data) - len(junk)))
        data[at : at + len(junk)] = junk
    if cut is not None:
        data = data[: int(cut * len(data))]
    path.write_bytes(bytes(data))
    code, _out, err = cli(capsys, "report", str(run))
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        assert err.startswith("soakd: error: ") and str(run) in err
