"""Threshold rules through the real CLI: abort, for, windows, webhooks (real HTTP on loopback)."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from soakd.errors import EXIT_INCONCLUSIVE as INCONCLUSIVE
from tests.conftest import event_names, events, run_soakd, write_config

pytestmark = pytest.mark.slow


def _summary(run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "summary.json").read_text())
    return data


def test_leaking_reference_target_hits_an_rss_rule_and_aborts(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        """
[target]
factory = "soakd.reference:ReferenceAggregator"
options = { leak_kb = 512 }
[[rules]]
metric = "rss_bytes"
above = "150MiB"
action = "abort"
grace = "0s"
""",
    )
    run = tmp_path / "run"
    proc = run_soakd(
        "run", "-c", str(cfg), "-d", "120s", "--run-dir", str(run),
        "--set", "sampling.tracemalloc=always", "--set", "sampling.frames=4", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr[-2000:]
    summary = _summary(run)
    assert summary["verdict"] == "aborted" and summary["exit_code"] == 4
    (breach,) = summary["breaches"]
    assert breach["rule"] == "rss_bytes above 1.57286e+08"
    assert breach["action"] == "abort" and breach["value"] > breach["limit"]
    assert summary["duration_s"] < 100
    assert (run / "snapshots" / "final.json.gz").is_file()
    assert (run / "report.html").is_file()
    names = event_names(run)
    assert names.index("threshold.breached") < names.index("run.stopping")


def _error_rule_config(tmp_path: Path, options: str) -> Path:
    return write_config(
        tmp_path,
        f"""
[target]
factory = "rule_targets:Phased"
options = {{ {options} }}
[health]
max_error_rate = 1.0  # the rules under test judge the errors here
[[rules]]
metric = "error_rate"
above = 0.5
for = "3s"
action = "abort"
grace = "0s"
""",
    )


def test_error_rate_rule_with_for_ignores_a_short_burst(tmp_path: Path) -> None:
    cfg = _error_rule_config(tmp_path, "bad_from = 2.0, bad_until = 3.2")
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "9s", "--run-dir", str(run), cwd=tmp_path)
    summary = _summary(run)
    assert summary["workload"]["errors"] > 0  # the burst happened...
    assert summary["breaches"] == []  # ...and did not fire
    assert proc.returncode == INCONCLUSIVE  # 9 s: too short for a leak verdict


def test_error_rate_rule_with_for_fires_on_a_sustained_failure(tmp_path: Path) -> None:
    cfg = _error_rule_config(tmp_path, "bad_from = 2.0")
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "60s", "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-2000:]
    (breach,) = _summary(run)["breaches"]
    assert breach["rule"] == "error_rate above 0.5"
    assert 5.0 <= breach["at_s"] < 20.0  # onset at 2 s, plus 3 s of "for", plus an interval


def test_windowed_rule_fires_late_in_a_run_that_was_healthy(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        """
[target]
factory = "rule_targets:Phased"
options = { slow_from = 8.0, slow_ms = 60.0 }
[[rules]]
metric = "latency_p99_ms"
above = "40ms"
window = "3s"
action = "alert"
grace = "0s"
""",
    )
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "14s", "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == INCONCLUSIVE, proc.stderr[-2000:]  # alert only: the run goes on
    (breach,) = _summary(run)["breaches"]
    assert breach["action"] == "alert"
    assert breach["at_s"] >= 8.0  # not before the regression started


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    headers_seen: ClassVar[list[str]] = []
    hang: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/hang":
            self.hang.wait(60)
            return
        type(self).received.append(json.loads(body))
        type(self).headers_seen.append(self.headers.get("X-Token", ""))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[str]:
    _Hook.received, _Hook.headers_seen = [], []
    _Hook.hang.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Hook.hang.set()
    server.shutdown()
    server.server_close()


def _alert_config(tmp_path: Path, url: str) -> Path:
    return write_config(
        tmp_path,
        f"""
[target]
factory = "rule_targets:Phased"
options = {{ bad_from = 1.0 }}
[health]
max_error_rate = 1.0  # the alert rule under test judges the errors here
[[rules]]
metric = "error_rate"
above = 0.5
action = "alert"
grace = "0s"
[[alerts.webhooks]]
url = "{url}"
headers = {{ X-Token = "s3cret-token" }}
timeout = "30s"
retries = 0
""",
    )


def test_alert_rule_posts_to_a_real_webhook_and_the_run_continues(
    tmp_path: Path, hook_server: str
) -> None:
    cfg = _alert_config(tmp_path, hook_server + "/hook")
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "6s", "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == INCONCLUSIVE, proc.stderr[-2000:]
    assert _summary(run)["duration_s"] >= 5.5  # not stopped by the alert
    assert _Hook.received and _Hook.received[0]["event"] == "threshold.breached"
    assert _Hook.received[0]["rule"] == "error_rate above 0.5"
    assert _Hook.headers_seen[0] == "s3cret-token"
    logged = (run / "events.jsonl").read_text() + proc.stdout + proc.stderr
    assert "s3cret-token" not in logged and hook_server not in logged
    assert "alert.sent" in event_names(run)


def test_a_hanging_webhook_does_not_delay_sampling(tmp_path: Path, hook_server: str) -> None:
    cfg = _alert_config(tmp_path, hook_server + "/hang")
    run = tmp_path / "run"
    started = time.monotonic()
    proc = run_soakd("run", "-c", str(cfg), "-d", "8s", "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == INCONCLUSIVE, proc.stderr[-2000:]
    assert time.monotonic() - started < 60
    with sqlite3.connect(run / "samples.db") as db:
        ts = [t for (t,) in db.execute("SELECT t FROM samples WHERE series='rss_bytes' ORDER BY t")]
    breach_t = next(e["t"] for e in events(run) if e["event"] == "threshold.breached")
    after = [t for t in ts if t > breach_t]
    assert len(after) >= 10  # 250 ms cadence kept going while the webhook hung
    assert max(b - a for a, b in itertools.pairwise(after)) < 1.5
