"""``soakd init``, ``soakd schema`` and ``soakd completion`` through the real CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import run_soakd

ROOT = Path(__file__).resolve().parents[2]


def test_init_writes_a_config_that_check_config_accepts(tmp_path: Path) -> None:
    out = tmp_path / "soakd.toml"
    proc = run_soakd("init", "soakd.reference:ReferenceAggregator", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert "# leak_kb = 0  # int" in text  # the factory's options, from its signature
    check = run_soakd("check-config", str(out), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    # uncommenting an option line gives a valid, checked option
    out.write_text(text.replace("# leak_kb = 0", "leak_kb = 4"), encoding="utf-8")
    assert tomllib.loads(out.read_text())["target"]["options"] == {"leak_kb": 4}
    assert run_soakd("check-config", str(out), cwd=tmp_path).returncode == 0
    # an existing file is never overwritten without --force
    again = run_soakd("init", "soakd.reference:ReferenceAggregator", "-o", str(out), cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    assert "leak_kb = 4" in out.read_text()


def test_init_leaves_required_options_for_check_config_to_name(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "svc.py").write_text(
        "class Svc:\n"
        "    def __init__(self, dsn: str, *, pool: int = 4, ratio: float = 0.5) -> None: ...\n"
        "    async def handle(self, q): return q\n"
    )
    out = tmp_path / "conf" / "soakd.toml"
    out.parent.mkdir()
    proc = run_soakd("init", "svc:Svc", "--method", "handle", "--python-path", "../src",
                     "-o", str(out), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "# pool = 4  # int" in text and "# dsn = ?   # REQUIRED" in text
    check = run_soakd("check-config", str(out), cwd=tmp_path)
    assert check.returncode == 2
    assert "target.options.dsn: svc:Svc requires it" in check.stderr
    filled = run_soakd("check-config", str(out), "--set", "target.options.dsn='x'", cwd=tmp_path)
    assert filled.returncode == 0, filled.stderr
    bad = run_soakd("init", "no_colon", "-o", "-", cwd=tmp_path)
    assert bad.returncode == 2 and "module:attr" in bad.stderr


def test_schema_is_current_and_accepts_the_documented_config() -> None:
    proc = run_soakd("schema", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    checked_in = (ROOT / "config" / "soakd.schema.json").read_text(encoding="utf-8")
    assert proc.stdout == checked_in, "regenerate: soakd schema > config/soakd.schema.json"
    schema = json.loads(proc.stdout)
    assert "source" not in schema["properties"] and "base_dir" not in schema["properties"]
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    documented = tomllib.loads((ROOT / "config" / "soakd.toml").read_text(encoding="utf-8"))
    assert list(validator.iter_errors(documented)) == []
    good = {"run": {"duration": "1h30m"}, "guard": {"worker_rss": "10G"},
            "rules": [{"metric": "latency_p99_ms", "above": "250ms", "for": "1m"}]}  # fmt: skip
    assert list(validator.iter_errors(good)) == []
    for bad in ({"run": {"duration": "soon"}}, {"workload": {"bogus": 1}},
                {"guard": {"worker_rss": "10 lots"}}):  # fmt: skip
        assert list(validator.iter_errors(bad)), bad


def test_completion_scripts_name_the_commands() -> None:
    for shell in ("bash", "zsh"):
        proc = run_soakd("completion", shell, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        for word in ("check-config", "compare", "init", "--baseline", "--min-judged"):
            assert word in proc.stdout, (shell, word)
    bash = shutil.which("bash")
    if bash is not None:  # the script is valid bash
        script = run_soakd("completion", "bash", cwd=ROOT).stdout
        syntax = subprocess.run([bash, "-n"], input=script, text=True, capture_output=True)
        assert syntax.returncode == 0, syntax.stderr
    assert run_soakd("completion", "fish", cwd=ROOT).returncode == 2
