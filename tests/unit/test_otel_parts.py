"""The otel extra's parts: worker-side span recording, traceparent propagation, the config's
precedence and redaction, the missing-extra message."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import pytest
from aiohttp import web

from soakd.config import Config, HttpTarget
from soakd.errors import ConfigError
from soakd.redact import REDACTED, redact_config
from soakd.worker.http_target import open_http_target
from soakd.workload.spans import TRACEPARENT, SpanRecorder, current_traceparent, traceparent

_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def test_traceparent_is_w3c() -> None:
    assert traceparent(1, 2) == "00-00000000000000000000000000000001-0000000000000002-01"
    assert _TRACEPARENT.match(traceparent(2**128 - 1, 2**64 - 1))


def test_unsampled_iterations_carry_nothing() -> None:
    rec = SpanRecorder(0.0, 10)
    assert all(rec.begin() is None for _ in range(1000))
    assert current_traceparent() is None
    assert rec.drain() == []


def test_a_sampled_iteration_is_recorded_as_plain_data() -> None:
    rec = SpanRecorder(1.0, 10, seed=7)
    span = rec.begin()
    assert span is not None
    tp = current_traceparent()
    assert tp is not None and _TRACEPARENT.match(tp)
    rec.end(
        span,
        kind="simple",
        error="TimeoutError",
        first_s=0.002,
        milestones={"analysis_complete": 0.003},
        events=4,
    )
    assert current_traceparent() is None  # reset once the iteration ends
    (done,) = rec.drain()
    assert tp == f"00-{done['trace_id']}-{done['span_id']}-01"
    # Offsets from the span's start, clamped into it (the span's length is measured, not set).
    length = done["end_ns"] - done["start_ns"]
    assert done["marks"] == [
        ("first_event", min(2_000_000, length)),
        ("analysis_complete", min(3_000_000, length)),
    ]
    assert done["error"] == "TimeoutError" and done["kind"] == "simple" and done["events"] == 4
    assert done["start_ns"] <= done["end_ns"]
    assert rec.drain() == []


def test_the_span_buffer_is_bounded() -> None:
    rec = SpanRecorder(1.0, 3, seed=1)
    for i in range(5):
        span = rec.begin()
        assert span is not None
        rec.end(span, kind=str(i), error=None, first_s=None, milestones={}, events=0)
    assert [s["kind"] for s in rec.drain()] == ["2", "3", "4"]  # the newest kept
    assert rec.dropped == 2 and rec.sampled == 5


def test_head_sampling_follows_the_ratio() -> None:
    rec = SpanRecorder(0.1, 100_000, seed=3)
    sampled = 0
    for _ in range(20_000):
        span = rec.begin()
        if span is not None:
            sampled += 1
            rec.discard(span)
    assert 1600 < sampled < 2400  # 2000 expected; a fixed seed: the same draw every run
    assert TRACEPARENT.get() is None


def test_the_opentelemetry_context_is_attached_while_sampled() -> None:
    trace = pytest.importorskip("opentelemetry.trace")
    rec = SpanRecorder(1.0, 10, seed=5)
    span = rec.begin()
    assert span is not None
    ctx = trace.get_current_span().get_span_context()
    assert ctx.trace_id == span.trace_id and ctx.span_id == span.span_id and ctx.is_remote
    assert ctx.trace_flags.sampled
    rec.discard(span)
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.anyio
async def test_the_http_target_sends_traceparent_of_sampled_iterations_only() -> None:
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        rec = SpanRecorder(1.0, 10, seed=9)
        async with open_http_target(HttpTarget(url=f"http://127.0.0.1:{port}/")) as call:
            span = rec.begin()
            assert span is not None
            expected = current_traceparent()
            events: list[Any] = [e async for e in call("q")]
            rec.discard(span)
            events += [e async for e in call("q")]
        assert events[0]["status"] == 200
        assert seen == [expected, None]
    finally:
        await runner.cleanup()


def test_otel_headers_and_endpoint_credentials_never_reach_a_dump() -> None:
    cfg = Config.model_validate(
        {
            "otel": {
                "enabled": True,
                "endpoint": "https://user:pw@collector.example:4318/?token=abc",
                "headers": {"Authorization": "Bearer s3cret"},
            }
        }
    )
    dump = redact_config(cfg.model_dump(mode="json", by_alias=True))
    assert dump["otel"]["headers"] == {"Authorization": REDACTED}
    assert "pw" not in dump["otel"]["endpoint"] and "abc" not in dump["otel"]["endpoint"]
    assert "s3cret" not in repr(cfg.otel)


def test_otel_config_is_validated() -> None:
    with pytest.raises(ValueError, match="sample_ratio"):
        Config.model_validate({"otel": {"sample_ratio": 1.5}})
    with pytest.raises(ValueError, match="must start with http"):
        Config.model_validate({"otel": {"endpoint": "collector:4318"}})
    assert Config().otel.enabled is False  # off unless asked for


def test_enabled_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from soakd.sinks import otel

    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(ConfigError) as info:
        otel.require_extra()
    assert info.value.exit_code == 2
    assert "pip install 'soakd[otel]'" in str(info.value)


def test_nothing_of_opentelemetry_is_imported_when_disabled() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from soakd.config import Config; from soakd.sinks.observers import "
        "build_observers, ObserverContext; import soakd.worker.main, soakd.workload.engine; "
        "build_observers(Config(), ObserverContext('r', 't', 1.0, lambda e, f: None)); "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_names_the_missing_extra(tmp_path: Any) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "soakd.toml"
    cfg.write_text("[otel]\nenabled = true\n", encoding="utf-8")
    # The extra made unimportable in this interpreter, as on a box without it.
    code = (
        "import sys; sys.modules['opentelemetry.exporter.otlp.proto.http'] = None; "
        "from soakd.cli import main; sys.exit(main())"
    )
    for command in (["check-config", str(cfg)], ["run", "-c", str(cfg), "-d", "5s"]):
        proc = subprocess.run(
            [sys.executable, "-c", code, *command],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "pip install 'soakd[otel]'" in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made
