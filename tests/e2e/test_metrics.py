"""MetricsServer over real loopback sockets; a real Prometheus scrapes it when installed."""

from __future__ import annotations

import math
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import psutil
import pytest

from soakd.errors import ConfigError
from soakd.sinks.metrics import (
    BUCKETS_S,
    CONTENT_TYPE,
    MAX_ERROR_CLASSES,
    MetricsServer,
    escape_label,
    parse_bind,
)
from soakd.workload.histogram import LatencyHistogram

pytestmark = pytest.mark.anyio

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_exposition(text: str) -> tuple[Series, dict[str, str]]:
    """Text format 0.0.4 into {(name, labels): value} and {family: type}; strict on syntax."""
    series: Series = {}
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(
            (k, _unescape(v)) for k, v in _LABEL.findall(labels[1:-1] if labels else "")
        )
        key = (name, pairs)
        assert key not in series, f"duplicate series {line!r}"
        series[key] = float(value)
    return series, types


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1:0", "run-1", "soakd.reference:ReferenceAggregator")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def scrape(srv: MetricsServer) -> tuple[str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{srv.port}/metrics") as resp,
    ):
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.text()


def feed(srv: MetricsServer) -> None:
    srv.on_event("worker.started", {"pid": 123})
    srv.on_samples(
        10.0,
        {
            "rss_bytes": 200_000_000.0,
            "vms_bytes": 900_000_000.0,
            "fds": 17.0,
            "threads": 5.0,
            "cpu_percent": 12.5,
            "site:/app/x.py:3": 1000.0,  # per-site series must not become metrics
        },
    )
    srv.on_samples(11.0, {"heap_bytes": 52_428_800.0, "traced_bytes": 1024.0, "tasks": 9.0})
    srv.on_samples(12.0, {"system_memory_percent": 41.5})
    hist = LatencyHistogram()
    for ms in (3.0, 40.0, 40.0, 700.0, 200_000.0):
        hist.record(ms)
    srv.on_workload(
        20.0,
        {
            "throughput_per_s": 12.5,
            "error_rate": 0.25,
            "latency_ms": {"p50": 40.0, "p90": 700.0, "p99": 1500.0, "max": 2000.0},
            "first_event_ms": {"p50": 8.0, "p99": 30.0},
            "latency_hist": hist.to_dict(),
        },
        {
            "iterations": 100,
            "errors": 4,
            "errors_by_class": {"TimeoutError": 3, 'error_event:bad "quote"\nline': 1},
        },
    )
    srv.on_event("leak.suspected", {"kind": "heap", "site": "/app/a.py:1"})
    srv.on_event("leak.suspected", {"kind": "heap", "site": "/app/b.py:2"})
    srv.on_event("leak.confirmed", {"kind": "heap", "site": "/app/a.py:1"})
    srv.on_event("leak.suspected", {"kind": "fds", "site": None})
    srv.on_event("leak.cleared", {"kind": "fds", "site": None})
    srv.on_event("threshold.breached", {"rule": "rss", "action": "alert"})
    srv.on_event("threshold.breached", {"rule": "rss", "action": "alert"})


async def test_metrics_over_a_real_socket(server: MetricsServer) -> None:
    assert server.port and server.port > 0
    feed(server)
    content_type, text = await scrape(server)
    assert content_type == CONTENT_TYPE
    series, types = parse_exposition(text)

    run = {"run_id": "run-1", "target": "soakd.reference:ReferenceAggregator"}
    assert value(series, "soakd_up") == 1
    assert value(series, "soakd_run_info", **run) == 1
    assert value(series, "process_resident_memory_bytes") == 200_000_000
    assert value(series, "process_virtual_memory_bytes") == 900_000_000
    assert value(series, "process_open_fds") == 17
    assert value(series, "process_threads") == 5
    assert value(series, "process_start_time_seconds") > 1.6e9
    assert value(series, "soakd_heap_bytes") == 52_428_800
    assert value(series, "soakd_traced_bytes") == 1024
    assert value(series, "soakd_tasks") == 9
    assert value(series, "soakd_fds") == 17
    assert value(series, "soakd_threads") == 5
    assert value(series, "soakd_system_memory_percent") == 41.5
    assert value(series, "soakd_throughput_per_second") == 12.5
    assert value(series, "soakd_error_rate") == 0.25
    assert value(series, "soakd_iterations_total", outcome="ok") == 96
    assert value(series, "soakd_iterations_total", outcome="error") == 4
    assert value(series, "soakd_errors_total", **{"class": "TimeoutError"}) == 3
    assert value(series, "soakd_errors_total", **{"class": 'error_event:bad "quote"\nline'}) == 1
    assert value(series, "soakd_latency_p50_seconds") == pytest.approx(0.04)
    assert value(series, "soakd_latency_p99_seconds") == pytest.approx(1.5)
    assert value(series, "soakd_first_event_p99_seconds") == pytest.approx(0.03)
    assert value(series, "soakd_leak_suspects", kind="heap") == 1  # b.py; a.py was confirmed
    assert value(series, "soakd_leaks_confirmed", kind="heap") == 1
    assert value(series, "soakd_leak_suspects", kind="fds") == 0  # cleared
    assert value(series, "soakd_leaks_confirmed", kind="threads") == 0  # every kind, always
    assert value(series, "soakd_breaches_total", rule="rss") == 2
    assert 8.0 <= value(series, "soakd_elapsed_seconds") < 60.0
    assert not any(name.startswith("site") or "x.py" in name for name, _ in series)

    # The histogram: cumulative buckets over fixed bounds, +Inf = count.
    le = {dict(labels)["le"]: v for (n, labels), v in series.items() if n.endswith("_bucket")}
    assert le["0.005"] == 1 and le["0.05"] == 3 and le["1.0"] == 4 and le["120.0"] == 4
    assert le["+Inf"] == 5 == value(series, "soakd_latency_seconds_count")
    assert value(series, "soakd_latency_seconds_sum") == pytest.approx(200.783)
    assert len(le) == len(BUCKETS_S) + 1

    assert types["soakd_latency_seconds"] == "histogram"
    assert types["soakd_iterations_total"] == "counter"
    assert types["process_resident_memory_bytes"] == "gauge"


async def test_histogram_accumulates_across_intervals(server: MetricsServer) -> None:
    for ms in (10.0, 20.0):
        hist = LatencyHistogram()
        hist.record(ms)
        server.on_workload(1.0, {"first_event_hist": hist.to_dict()}, {})
    series, _ = parse_exposition(server.render())
    assert value(series, "soakd_first_event_seconds_count") == 2
    assert value(series, "soakd_first_event_seconds_bucket", le="0.01") == 1
    assert value(series, "soakd_first_event_seconds_bucket", le="0.025") == 2
    assert ("soakd_latency_seconds_count", frozenset()) not in series  # never fed


async def test_error_classes_are_bounded() -> None:
    srv = MetricsServer("127.0.0.1:0", "r", "t")
    by_class = {f"E{i}": 1 for i in range(MAX_ERROR_CLASSES + 30)}
    srv.on_workload(1.0, {}, {"iterations": 100, "errors": 50, "errors_by_class": by_class})
    series, _ = parse_exposition(srv.render())
    classes = {dict(labels)["class"]: v for (n, labels), v in series.items() if "errors" in n}
    assert len(classes) == MAX_ERROR_CLASSES + 1
    assert classes["other"] == 30
    assert sum(classes.values()) == 50


async def test_nothing_known_yet_is_still_valid(server: MetricsServer) -> None:
    _, text = await scrape(server)
    series, _ = parse_exposition(text)
    assert value(series, "soakd_up") == 1
    assert ("process_resident_memory_bytes", frozenset()) not in series


async def test_exposition_passes_promtool(server: MetricsServer) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    feed(server)
    _, text = await scrape(server)
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_openmetrics_gzip_and_soakd_itself(server: MetricsServer) -> None:
    feed(server)
    url = f"http://127.0.0.1:{server.port}/metrics"
    headers = {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.headers["Content-Encoding"] == "gzip"  # aiohttp inflates it for us
        text = await resp.text()
    assert text.endswith("# EOF\n")
    assert "# TYPE soakd_iterations counter" in text  # OpenMetrics names the family sans _total
    assert 'soakd_iterations_total{outcome="ok"} 96.0' in text
    # soakd's own memory and CPU, so that the fleet can alert when soakd grows
    own = psutil.Process()
    _, plain = await scrape(server)
    series, types = parse_exposition(plain)
    rss = value(series, "soakd_supervisor_resident_memory_bytes")
    assert 0.5 * own.memory_info().rss < rss < 2 * own.memory_info().rss
    assert value(series, "soakd_supervisor_cpu_seconds_total") > 0
    assert types["soakd_supervisor_cpu_seconds_total"] == "counter"


async def test_bind_failure_names_the_address() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        srv = MetricsServer(f"127.0.0.1:{port}", "r", "t")
        with pytest.raises(ConfigError) as info:
            await srv.start()
        assert info.value.exit_code == 2
        assert f"127.0.0.1:{port}" in str(info.value)
        await srv.stop()
    finally:
        holder.close()


def test_parse_bind_and_escape() -> None:
    assert parse_bind("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_bind("[::1]:0") == ("::1", 0)
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        parse_bind("9464")
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


async def test_observer_never_raises(server: MetricsServer) -> None:
    server.on_samples(1.0, {"rss_bytes": "x"})  # type: ignore[dict-item]
    server.on_workload(1.0, {"latency_hist": {"schema": "soakd.hist/1"}}, {"errors_by_class": 3})
    server.on_event("leak.confirmed", {"kind": ["odd"]})
    series, _ = parse_exposition(server.render())
    assert value(series, "soakd_leaks_confirmed", kind="other") == 1
    assert not math.isnan(value(series, "soakd_up"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_real_prometheus_scrapes_soakd(server: MetricsServer, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (apt-get install prometheus; .ci/run installs it)")
    feed(server)
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: soakd\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.port}']\n",
        encoding="utf-8",
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        results: dict[str, float] = {}
        async with aiohttp.ClientSession() as session:
            with anyio.fail_after(20):
                while len(results) < 2:
                    assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                    for query in ("soakd_heap_bytes", "process_resident_memory_bytes"):
                        try:
                            async with session.get(
                                f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}
                            ) as resp:
                                body = await resp.json()
                        except aiohttp.ClientError:
                            continue  # not listening yet
                        found = body.get("data", {}).get("result", [])
                        if found:
                            results[query] = float(found[0]["value"][1])
                            labels = found[0]["metric"]
                            assert labels["job"] == "soakd"
                    await anyio.sleep(0.2)
        assert results == {
            "soakd_heap_bytes": 52_428_800.0,
            "process_resident_memory_bytes": 200_000_000.0,
        }
        assert server.scrapes >= 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


CONFIG = Path(__file__).resolve().parents[2] / "config"

_RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'soakd_leaks_confirmed{{job="soakd",instance="box:9464",kind="heap"}}'
        values: '0 0 1 1 1'
      - series: 'soakd_breaches_total{{job="soakd",instance="box:9464",rule="rss"}}'
        values: '0 0 0 1 1'
      - series: 'up{{job="soakd",instance="box:9464"}}'
        values: '1 0 0 0 0 0 0 0'
      - series: 'soakd_iterations_total{{job="soakd",instance="box:9464",outcome="ok"}}'
        values: '0+90x30'
      - series: 'soakd_iterations_total{{job="soakd",instance="box:9464",outcome="error"}}'
        values: '0+10x30'
      - series: 'soakd_supervisor_resident_memory_bytes{{job="soakd",instance="box:9464"}}'
        values: '60e6+1e6x300'
      - series: 'soakd_supervisor_resident_memory_bytes{{job="soakd",instance="flat:9464"}}'
        values: '60e6+0x300'
    alert_rule_test:
      - eval_time: 1m
        alertname: SoakdLeakConfirmed
        exp_alerts: []
      - eval_time: 3m
        alertname: SoakdLeakConfirmed
        exp_alerts:
          - exp_labels: {{severity: ticket, instance: "box:9464", kind: heap}}
            exp_annotations:
              summary: "soakd confirmed a heap leak on box:9464"
              description: >-
                1 confirmed heap leak(s). The run directory's report.html names the leaking
                line; summary.json has the slope. Run: see soakd_run_info.
      - eval_time: 4m
        alertname: SoakdThresholdBreached
        exp_alerts:
          - exp_labels: {{severity: ticket, job: soakd, instance: "box:9464", rule: rss}}
            exp_annotations:
              summary: "soakd rule rss breached on box:9464"
              description: "Threshold rule rss fired (an abort rule ends the soak)."
      - eval_time: 3m
        alertname: SoakdDown
        exp_alerts: []
      - eval_time: 7m
        alertname: SoakdDown
        exp_alerts:
          - exp_labels: {{severity: page, job: soakd, instance: "box:9464"}}
            exp_annotations:
              summary: "soakd on box:9464 is not answering"
              description: >-
                No /metrics from box:9464 for 5 minutes: soakd crashed, was killed by the
                watchdog or the OOM killer, or the box is down. See journalctl -u 'soakd*'.
      - eval_time: 25m
        alertname: SoakdErrorRateHigh
        exp_alerts:
          - exp_labels: {{severity: ticket, instance: "box:9464"}}
            exp_annotations:
              summary: "10% of iterations fail on box:9464"
              description: >-
                The target fails more than 5 % of iterations; a leak verdict from this soak
                may reflect error paths. soakd_errors_total shows the error classes.
      - eval_time: 100m
        alertname: SoakdItselfGrowing
        exp_alerts: []
      - eval_time: 130m
        alertname: SoakdItselfGrowing
        exp_alerts:
          - exp_labels: {{severity: ticket, job: soakd, instance: "box:9464"}}
            exp_annotations:
              summary: "soakd itself grows 57.22MiB/h on box:9464"
              description: >-
                The supervisor's resident memory keeps rising; the soak's verdict still holds
                but report it to soakd's maintainers with the run directory.
"""


def test_alert_rules_fire_as_intended(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rules = CONFIG / "soakd-alerts.yml"
    check = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    config = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(CONFIG / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(_RULE_TESTS.format(rules=f'"{rules}"'), encoding="utf-8")
    proc = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
