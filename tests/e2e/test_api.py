"""The Python API: ``soakd.run`` is the CLI's run, ``soakd.load_summary`` reads any run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import soakd
from soakd.errors import RunDirError
from tests.conftest import ROOT, run_soakd, soak_env, write_config

ECHO = '[target]\nfactory = "simple_targets:Echo"\n'
THIRD_PARTY = ("pydantic", "anyio", "psutil", "structlog", "apscheduler", "aiohttp", "objgraph",
               "tomli_w", "shtab")  # fmt: skip


def test_import_soakd_imports_nothing_third_party() -> None:
    code = (
        "import sys, soakd\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in THIRD)\n"
        "soakd.load_summary, soakd.run, soakd.Summary\n"
        "after = sorted(m for m in sys.modules if m.split('.')[0] in THIRD)\n"
        "print(before, after, soakd.__all__)\n"
    ).replace("THIRD", repr(set(THIRD_PARTY)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=soak_env(), check=True).stdout  # fmt: skip
    assert out.startswith("[] [] [")
    assert "'run'" in out and "'load_summary'" in out
    with pytest.raises(AttributeError):
        _ = soakd.no_such_thing


def test_api_run_gives_the_summary_the_cli_writes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, ECHO)
    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    proc = run_soakd("run", "-c", str(cfg), "-d", "3s", "--run-dir", str(cli_dir),
                     "--set", "workload.users=2", cwd=tmp_path)  # fmt: skip
    cli_summary = json.loads((cli_dir / "summary.json").read_text(encoding="utf-8"))
    assert proc.returncode == cli_summary["exit_code"]

    s = soakd.run(cfg, duration="3s", run_dir=api_dir, sets={"workload.users": 2},
                  cwd=tmp_path, env=soak_env())  # fmt: skip
    assert isinstance(s, soakd.Summary)
    on_disk = json.loads((api_dir / "summary.json").read_text(encoding="utf-8"))
    assert dict(s.data) == on_disk  # the summary the run wrote, not a re-computation
    assert s.run_dir == api_dir and s.report_html.is_file()
    # the same run as the CLI's: same verdict, exit code, fields and config hash
    assert (s.verdict, s.exit_code) == (cli_summary["verdict"], cli_summary["exit_code"])
    assert set(on_disk) == set(cli_summary)
    assert on_disk["config_hash"] == cli_summary["config_hash"]
    assert s.workload["iterations"] > 0 and s.passed is (s.verdict == "pass")

    # load_summary reads the CLI's run just as well
    loaded = soakd.load_summary(cli_dir)
    assert dict(loaded.data) == cli_summary and loaded.exit_code == proc.returncode
    assert loaded.leaks == () and loaded.target == "simple_targets:Echo"


def test_api_errors(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, ECHO)
    with pytest.raises(soakd.RunError) as err:
        soakd.run(cfg, duration="3s", sets=["workload.users=0"], cwd=tmp_path, env=soak_env())
    assert err.value.exit_code == 2 and "workload.users = 0" in str(err.value)
    with pytest.raises(soakd.RunError, match="duration"):
        soakd.run(cfg, duration="soon", cwd=tmp_path, env=soak_env())
    with pytest.raises(RunDirError, match=r"no summary\.json"):
        soakd.load_summary(tmp_path)
    (tmp_path / "summary.json").symlink_to(ROOT / "pyproject.toml")
    with pytest.raises(RunDirError, match="cannot read"):
        soakd.load_summary(tmp_path)
