"""Issue 16, run-directory part: secrets never reach disk or labels, run directories are
private, retention touches only soakd's runs, and the readers treat a run directory as
hostile (links, FIFOs, devices, control characters) — through the real CLI."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import socketserver
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from soakd.reporting.format import source_context
from soakd.rundir import MARKER, create_run_dir, prune_runs
from tests.conftest import events, run_soakd, soak_env, start_soakd, wait_for, write_config

TOKENS = [f"SECRETTOKEN{i}x" for i in range(8)]
BOUND = 10.0  # seconds a reader may take on any hostile input


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []  # noqa: RUF012 (shared on purpose: the test reads what arrived)

    def do_GET(self) -> None:
        _Recorder.seen.append(f"{self.path} {self.headers.get('X-Token')}")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_target() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _secret_config(tmp_path: Path, port: int) -> Path:
    t = TOKENS
    return write_config(
        tmp_path,
        f"""
[target.http]
url = "http://user:{t[0]}@127.0.0.1:{port}/search?api_key={t[1]}"
headers = {{ X-Token = "{t[2]}" }}

[[alerts.webhooks]]
url = "https://hooks.invalid/services/{t[3]}?sig={t[4]}"
headers = {{ Authorization = "Bearer {t[5]}" }}

[[alerts.webhooks]]
url = "https://hooks2.invalid/{t[6]}"

[alerts]
command = ["/bin/true", "--token", "{t[7]}"]

[metrics]
enabled = true
bind = "127.0.0.1:0"
""",
    )


@pytest.mark.slow
def test_secrets_reach_no_file_no_output_and_no_metrics_label(
    tmp_path: Path, http_target: int
) -> None:
    """Every token of the config is absent from every byte of the run directory (samples.db
    included), stdout, stderr and /metrics; the worker still sends the real header."""
    cfg = _secret_config(tmp_path, http_target)
    run = tmp_path / "run"
    proc = start_soakd("run", "-c", str(cfg), "-d", "6s", "--run-dir", str(run),
                       "--pid", str(os.getpid()), cwd=tmp_path)  # fmt: skip
    try:
        listening = wait_for(
            lambda: [e for e in events(run) if e["event"] == "metrics.listening"],
            30, "metrics.listening with the bound port",
        )  # fmt: skip
        port = listening[0]["port"]
        assert isinstance(port, int) and port > 0  # bind :0 → the real port is told
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 7, err[-2000:]
    info = [ln for ln in body.decode().splitlines() if ln.startswith("soakd_run_info")]
    assert info and "api_key=<redacted>" in info[0], info
    run_soakd("report", str(run), cwd=tmp_path)
    blobs = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert run / "samples.db" in blobs and run / "report.html" in blobs
    for token in TOKENS:
        for path, data in blobs.items():
            assert token.encode() not in data, (token, path)
        assert token not in out and token not in err
        assert token.encode() not in body
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["target"]["http"]["url"] == (
        f"http://<redacted>@127.0.0.1:{http_target}/search?api_key=<redacted>"
    )
    assert config["alerts"]["command"] == ["/bin/true", "<redacted>", "<redacted>"]
    assert config["alerts"]["webhooks"][0]["url"] == "https://hooks.invalid/<redacted>"
    # the worker drove the target with the real URL and header (from memory, not the disk)
    assert any(TOKENS[1] in s and s.endswith(TOKENS[2]) for s in _Recorder.seen), _Recorder.seen[:3]


def _modes(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*")}


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "dir_mode", "file_mode"), [("private", 0o700, 0o600),
                                                             ("group", 0o750, 0o640)])  # fmt: skip
def test_run_dir_is_private_by_default_and_group_on_purpose(
    tmp_path: Path, mode: str, dir_mode: int, file_mode: int
) -> None:
    """Modes checked with os.stat (what another uid could open follows from them; the second-
    uid test below proves it for the default)."""
    cfg = write_config(tmp_path, f'[output]\nruns_dir = "runs"\nmode = "{mode}"\n')
    proc = run_soakd("run", "-c", str(cfg), "-d", "3s", cwd=tmp_path, env=soak_env())
    assert proc.returncode in (0, 7), proc.stderr[-2000:]
    runs = tmp_path / "runs"
    assert stat.S_IMODE(runs.stat().st_mode) == dir_mode
    (run,) = [p for p in runs.iterdir()]
    assert stat.S_IMODE(run.stat().st_mode) == dir_mode
    modes = _modes(run)
    for name in ("summary.json", "events.jsonl", "samples.db", "config.json", "report.html",
                 "report.md", "worker.log", MARKER, "snapshots/final.json.gz"):  # fmt: skip
        assert modes.get(name) == file_mode, (name, oct(modes.get(name, 0)), modes)
    assert modes["snapshots"] == dir_mode
    # SQLite's companions, while a reader holds the WAL open, get the database file's mode
    db = sqlite3.connect(run / "samples.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("INSERT INTO meta(key, value) VALUES ('probe', 'x')")
    for suffix in ("-wal", "-shm"):
        companion = run / f"samples.db{suffix}"
        assert stat.S_IMODE(companion.stat().st_mode) == file_mode, suffix
    db.close()


def test_a_stricter_umask_wins(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        run = create_run_dir(tmp_path / "runs", None, 5, "group")
    finally:
        os.umask(old)
    assert stat.S_IMODE(run.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((run.path / MARKER).stat().st_mode) == 0o600


@pytest.mark.slow
def test_another_user_cannot_read_a_run(tmp_path: Path) -> None:
    """A second uid, created here, cannot list the run nor read its config."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create a second user")
    user = "soakdprobe16"
    subprocess.run(["useradd", "-M", "-s", "/bin/false", user], capture_output=True)
    try:
        base = Path("/tmp") / f"soakd-uid-{os.getpid()}"
        base.mkdir(mode=0o755)
        os.chmod(base, 0o755)
        run = create_run_dir(base / "runs", None, 5)
        (run.path / "config.json").write_text("{}")  # created by soakd's helpers in a real run
        os.chmod(run.path / "config.json", 0o600)
        probe = subprocess.run(
            ["runuser", "-u", user, "--", "cat", str(run.path / "config.json")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe
        listing = subprocess.run(["runuser", "-u", user, "--", "ls", str(run.path)],
                                 capture_output=True, text=True)  # fmt: skip
        assert listing.returncode != 0, listing
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        shutil.rmtree(Path("/tmp") / f"soakd-uid-{os.getpid()}", ignore_errors=True)


def test_retention_prunes_only_marked_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    made = [create_run_dir(runs, None, 100) for _ in range(3)]
    foreign = runs / "not-a-run"
    foreign.mkdir()
    (foreign / "events.jsonl").write_text("{}\n")
    (foreign / "precious.txt").write_text("keep me")
    wrong = runs / "wrong-marker"
    wrong.mkdir()
    (wrong / MARKER).write_text("someone-else\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / MARKER).write_text("link\n")
    (runs / "link").symlink_to(outside)
    time.sleep(0.01)
    removed = prune_runs(runs, 1, keep=made[-1].path)
    assert sorted(removed) == sorted(m.path for m in made[:-1])
    assert (foreign / "precious.txt").exists() and wrong.exists() and outside.exists()


# -- hostile readers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    cfg = write_config(tmp, "")
    run = tmp / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "3s", "--run-dir", str(run), cwd=tmp)
    assert proc.returncode in (0, 7), proc.stderr[-2000:]
    return run


def _hostile(real_run: Path, tmp_path: Path, name: str, kind: str) -> Path:
    run = tmp_path / "run"
    shutil.copytree(real_run, run, symlinks=True)
    target = run / name
    target.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(target)
    elif kind in ("zero", "urandom"):
        target.symlink_to(f"/dev/{kind}")
    elif kind == "shadow":
        target.symlink_to("/etc/shadow")
    return run


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    proc = run_soakd(*args, cwd=cwd, timeout=BOUND * 3)
    assert time.monotonic() - start < BOUND, f"{args} took too long"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


FILES = ["events.jsonl", "summary.json", "config.json", "samples.db"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "zero", "urandom", "shadow"])
@pytest.mark.parametrize("name", FILES)
def test_report_and_status_on_special_files_never_hang(
    real_run: Path, tmp_path: Path, name: str, kind: str
) -> None:
    run = _hostile(real_run, tmp_path, name, kind)
    for args in (("report", str(run)), ("status", str(run)), ("status", str(run), "--json")):
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode in (0, 2), (args, proc.returncode, proc.stderr[-2000:])
        if proc.returncode == 2:
            assert str(run) in proc.stderr, proc.stderr
    if (run / "report.html").exists() and kind == "shadow":
        assert "root:" not in (run / "report.html").read_text()


@pytest.mark.parametrize("kind", ["fifo", "zero", "urandom", "shadow"])
def test_diff_refuses_special_snapshots_fast(tmp_path: Path, kind: str) -> None:
    good = tmp_path / "good.json.gz"
    good.write_bytes(gzip.compress(json.dumps(_snapshot("x")).encode()))
    bad = tmp_path / "bad.json.gz"
    if kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.symlink_to({"zero": "/dev/zero", "urandom": "/dev/urandom"}.get(kind, "/etc/shadow"))
    proc = _cli("diff", str(good), str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and str(bad) in proc.stderr, proc.stderr


def _snapshot(line: str) -> dict[str, object]:
    return {
        "schema": "soakd.snapshot/1",
        "taken_at": "2026-01-01T00:00:00+00:00",
        "t": 1.0,
        "role": "latest",
        "traced_bytes": 100,
        "frames": 1,
        "sites": [
            {
                "site": "/app/x.py:1",
                "traceback": ["/app/x.py:1"],
                "line": line,
                "size": 100,
                "count": 1,
            }
        ],
    }


def test_diff_prints_no_control_characters(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    a.write_bytes(gzip.compress(json.dumps(_snapshot("x = 1")).encode()))
    b.write_bytes(gzip.compress(json.dumps(_snapshot("\x1b]0;pwned\x07\x1b[2J\rx")).encode()))
    proc = _cli("diff", str(a), str(b), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not any(ch in proc.stdout for ch in "\x1b\x07\r"), repr(proc.stdout)
    assert "\\x1b" in proc.stdout


def test_source_quoting_reads_only_world_readable_regular_files(tmp_path: Path) -> None:
    """A leak site in a hostile run may name a link to /etc/shadow, a 0600 file or a FIFO:
    the report's source context quotes none of them (soakd often runs as root)."""
    ok = tmp_path / "app.py"
    ok.write_text("a = 1\nb = 2\n")
    os.chmod(ok, 0o644)
    secret = tmp_path / "secret.py"
    secret.write_text("SHADOWSECRET = 1\n")
    os.chmod(secret, 0o600)
    link = tmp_path / "evil.py"
    link.symlink_to("/etc/shadow")
    fifo = tmp_path / "fifo.py"
    os.mkfifo(fifo)
    assert source_context(f"{ok}:2") == [(1, "a = 1"), (2, "b = 2")]
    for path in (secret, link, fifo):
        start = time.monotonic()
        assert source_context(f"{path}:1") is None, path
        assert time.monotonic() - start < 1.0


@pytest.mark.slow
def test_compare_exits_2_when_nothing_is_comparable(real_run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"schema": "soakd.summary/1", "target": "t"}))
    proc = _cli("compare", str(a), "--baseline", str(b), cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stdout)
    # a summary without a verdict is no baseline: skipped, and named with why
    assert "nothing comparable" in proc.stderr and "no verdict" in proc.stderr


# -- config and CLI ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["file", "set"])
def test_deep_toml_is_a_config_error(tmp_path: Path, how: str) -> None:
    deep = "[" * 600 + "]" * 600
    if how == "file":
        cfg = tmp_path / "deep.toml"
        cfg.write_text(f"[target.options]\nx = {deep}\n")
        proc = _cli("check-config", str(cfg), cwd=tmp_path)
        assert proc.returncode == 2 and "deep.toml: line 2" in proc.stderr, proc.stderr
    else:
        cfg = write_config(tmp_path, "")
        proc = _cli("check-config", str(cfg), "--set", f"target.options.x={deep}", cwd=tmp_path)
        assert proc.returncode == 2 and "--set target.options.x" in proc.stderr, proc.stderr
    assert "nested too deeply" in proc.stderr


def test_internal_fields_are_neither_listed_nor_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[nope]\n")
    proc = _cli("check-config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2 and "valid keys here:" in proc.stderr
    assert "base_dir" not in proc.stderr and "source" not in proc.stderr.split("here:")[1]
    ok = write_config(tmp_path, "")
    for key in ("base_dir=/etc", "source=x"):
        proc = _cli("check-config", str(ok), "--set", key, cwd=tmp_path)
        assert proc.returncode == 2, (key, proc.stdout)
        assert f"{key.split('=')[0]}: unknown key" in proc.stderr


def test_check_config_rejects_a_missing_queries_file_and_a_zero_memory_limit(
    tmp_path: Path,
) -> None:
    cfg = write_config(tmp_path, "")
    proc = _cli("check-config", str(cfg), "--set", "workload.queries_file=missing.txt",
                cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stdout
    assert (
        "workload.queries_file = 'missing.txt'" in proc.stderr and "does not exist" in proc.stderr
    )
    proc = _cli("check-config", str(cfg), "--set", "run.worker_memory_limit=0", cwd=tmp_path)
    assert proc.returncode == 2 and "run.worker_memory_limit = 0" in proc.stderr, proc.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
