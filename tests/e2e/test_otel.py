"""OTLP out: a real soak of the reference aggregator with ``[otel]`` on, sent to an OTLP/HTTP
receiver on loopback that decodes the real protobuf messages (``opentelemetry-proto``)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import events, run_soakd, soak_env, write_config

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra: pip install -e '.[dev]'")
trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
metrics_service = pytest.importorskip(
    "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2"
)


@dataclass
class Received:
    """What the receiver decoded: spans and metric points, with the resource of each."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def _decode_traces(body: bytes, into: Received) -> None:
    req = trace_service.ExportTraceServiceRequest()
    req.ParseFromString(body)
    for rs in req.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                into.spans.append(
                    {
                        "resource": resource,
                        "scope": ss.scope.name,
                        "name": s.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(),
                        "attributes": _attrs(s.attributes),
                        "events": [(e.name, e.time_unix_nano) for e in s.events],
                        "event_attributes": [_attrs(e.attributes) for e in s.events],
                        "links": [link.span_id.hex() for link in s.links],
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "status": s.status.code,
                    }
                )


def _decode_metrics(body: bytes, into: Received) -> None:
    req = metrics_service.ExportMetricsServiceRequest()
    req.ParseFromString(body)
    for rm in req.resource_metrics:
        resource = _attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                for p in data.data_points:
                    point: dict[str, Any] = {
                        "resource": resource,
                        "name": m.name,
                        "unit": m.unit,
                        "kind": kind,
                        "attributes": _attrs(p.attributes),
                    }
                    if kind == "histogram":
                        point["count"] = p.count
                        point["bounds"] = list(p.explicit_bounds)
                    else:
                        point["value"] = p.as_double if p.HasField("as_double") else p.as_int
                    into.points.append(point)


@pytest.fixture
def receiver() -> Iterator[tuple[str, Received]]:
    got = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            with got.lock:
                got.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path == "/v1/traces":
                    _decode_traces(body, got)
                elif self.path == "/v1/metrics":
                    _decode_metrics(body, got)
                else:
                    self.send_error(404)
                    return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_soak_exports_metrics_and_traces_the_service_joins(
    tmp_path: Path, receiver: tuple[str, Received]
) -> None:
    url, got = receiver
    cfg = write_config(
        tmp_path,
        f"""
[target]
factory = "soakd.reference:ReferenceAggregator"
[target.options]
mock_latency_ms = 1.0
mock_latency_jitter_ms = 0.5
otel_export = true
[otel]
enabled = true
endpoint = "{url}"
headers = {{ "x-api-key" = "s3cret-token" }}
sample_ratio = 0.25
export_interval = "1s"
resource = {{ "deployment.environment" = "staging" }}
[[rules]]
metric = "rss_bytes"
above = "1KiB"
grace = "0s"
name = "rss-canary"
action = "alert"
""",
    )
    run = tmp_path / "run"
    # The aggregator configures its own SDK from the standard variables, as a service would.
    env = soak_env(OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_BSP_SCHEDULE_DELAY="200")
    proc = run_soakd(
        "run", "-c", str(cfg), "-d", "8s", "--run-dir", str(run),
        "--set", "workload.users=4", env=env, timeout=180
    )  # fmt: skip
    # 8 s is too short to judge: any verdict but a failure will do (RSS still grows in warm-up).
    assert proc.returncode in (0, 3, 7), proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    run_id = summary["run_id"]
    target = "soakd.reference:ReferenceAggregator"

    # The configured header was sent; no copy of it reached the run directory.
    assert any(h.get("x-api-key") == "s3cret-token" for h in got.headers)
    for path in run.rglob("*"):
        if path.is_file():
            assert b"s3cret-token" not in path.read_bytes(), path

    # -- metrics ---------------------------------------------------------------------------
    ours = [p for p in got.points if p["resource"].get("soakd.run.id") == run_id]
    assert ours, "no metrics from soakd"
    resource = ours[0]["resource"]
    assert resource["service.name"] == target
    assert resource["deployment.environment"] == "staging"
    assert resource["host.name"]

    def last(name: str, **attrs: Any) -> Any:
        found = [p for p in ours if p["name"] == name and p["attributes"] == attrs]
        assert found, f"no {name} {attrs}: have {sorted({p['name'] for p in ours})}"
        return found[-1]

    assert last("process.memory.usage")["unit"] == "By"
    assert last("process.memory.usage")["value"] > 10 * 2**20  # the worker's RSS
    assert last("process.memory.usage")["kind"] == "sum"
    assert last("process.thread.count")["value"] >= 1
    assert last("process.open_file_descriptor.count")["value"] >= 3
    assert last("soakd.heap.size")["value"] > 2**20
    assert last("soakd.tasks")["value"] >= 1
    assert last("soakd.supervisor.memory.usage")["value"] > 10 * 2**20
    ok = last("soakd.iterations", outcome="ok")["value"]
    failed = last("soakd.iterations", outcome="error")["value"]
    assert ok + failed == summary["workload"]["iterations"] > 0  # the last export is the end
    assert failed == summary["workload"]["errors"]
    assert last("soakd.throughput")["value"] > 0
    assert last("soakd.leaks.confirmed", **{"soakd.leak.kind": "heap"})["value"] == 0
    assert last("soakd.breaches", **{"soakd.rule": "rss-canary"})["value"] >= 1
    duration = last("soakd.iteration.duration")
    assert duration["kind"] == "histogram" and duration["unit"] == "s"
    assert 0 < duration["count"] <= summary["workload"]["iterations"]
    assert duration["bounds"][0] == 0.005

    # -- soakd's iteration spans -----------------------------------------------------------
    spans = [s for s in got.spans if s["resource"].get("soakd.run.id") == run_id]
    iterations = [s for s in spans if s["name"] == "iteration"]
    runs = [s for s in spans if s["name"] == "soak run"]
    assert len(runs) == 1, "the run span is exported when the run ends"
    run_span = runs[0]
    assert 0 < len(iterations) < summary["workload"]["iterations"]  # head-sampled
    for s in iterations:
        names = [name for name, _ in s["events"]]
        assert names[:1] == ["first_event"]
        assert {"first_status", "analysis_complete"} <= set(names)
        assert all(s["start"] <= t <= s["end"] for _, t in s["events"])
        assert s["parent"] == ""  # each iteration is its own trace ...
        assert s["links"] == [run_span["span_id"]]  # ... linked to the run
        assert s["attributes"]["soakd.query.kind"]
    # The alert rule fired: a breach is an event of the run span.
    breaches = [a for (n, _), a in zip(run_span["events"], run_span["event_attributes"],
                                       strict=True) if n == "threshold.breached"]  # fmt: skip
    assert breaches and breaches[0]["soakd.rule"] == "rss-canary"
    assert [e for e in events(run) if e["event"] == "threshold.breached"]

    # -- the aggregator's own spans hang under soakd's ---------------------------------------
    service = [s for s in got.spans if s["resource"].get("service.name") != target]
    queries = [s for s in service if s["name"] == "process_query"]
    assert queries, "the aggregator exported no spans"
    assert {s["resource"]["service.name"] for s in service} == {"soakd-reference-aggregator"}
    by_trace = {s["trace_id"]: s for s in iterations}
    for q in queries:
        # Every recorded query belongs to a sampled soakd iteration (parent-based sampling),
        # and is the child of that iteration's span.
        assert q["trace_id"] in by_trace
        assert q["parent"] == by_trace[q["trace_id"]]["span_id"]
    by_id = {s["span_id"]: s for s in queries}
    children = [s for s in service if s["name"] in ("analyze", "search", "synthesize")]
    assert {s["name"] for s in children} == {"analyze", "search", "synthesize"}
    for c in children:
        assert by_id[c["parent"]]["trace_id"] == c["trace_id"]


@pytest.mark.slow
def test_an_unreachable_collector_does_not_stop_the_soak(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write_config(
        tmp_path,
        f"""
[target]
factory = "soakd.reference:ReferenceAggregator"
[otel]
enabled = true
endpoint = "http://127.0.0.1:{port}"
sample_ratio = 1.0
export_interval = "1s"
timeout = "2s"
""",
    )
    run = tmp_path / "run"
    proc = run_soakd("run", "-c", str(cfg), "-d", "5s", "--run-dir", str(run), timeout=180)
    assert proc.returncode in (0, 3, 7), proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["workload"]["iterations"] > 0
    assert summary["verdict"] != "error"
