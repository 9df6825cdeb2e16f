"""The in-process agent: sites, types, heap and tasks; the unix-socket server and its client."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import soakd
from soakd import profiler
from soakd.agent import Agent, AgentClient, AgentError, serve
from soakd.agent.allocations import SiteResolver, default_excluded
from soakd.agent.objects import count_tasks_any_thread, type_name
from soakd.agent.protocol import (
    OPS,
    HeapSample,
    Hello,
    SitesResult,
    TracingState,
    dispatch,
    encode,
)
from soakd.agent.server import AgentServer
from soakd.snapshots import diff_snapshots, read_snapshot

SOAKD_DIR = Path(soakd.__file__).resolve().parent
STDLIB = default_excluded()[0][0]

LEAK_MODULE = """\
import json
from soakd.units import format_size
LEAK = []
def leak(n):
    for i in range(n):
        LEAK.append(json.dumps({"i": i, "pad": "x" * 200}))
def leak_through_soakd(n):
    for i in range(n):
        LEAK.append(format_size(i * 1000.5))
"""
JSON_LINE = 6
SOAKD_LINE = 9


def _line_of(path: Path, n: int) -> str:
    return f"{path}:{n}"


@pytest.fixture
def leak_module(tmp_path: Path) -> Iterator[tuple[ModuleType, Path]]:
    path = (tmp_path / "leaky_target.py").resolve()
    path.write_text(LEAK_MODULE)
    spec = importlib.util.spec_from_file_location("leaky_target", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module, path
    module.LEAK.clear()


@pytest.fixture
def tracing_agent() -> Iterator[Agent]:
    agent = Agent(frames=8, max_sites=20)
    agent.start_tracing()
    try:
        yield agent
    finally:
        agent.stop_tracing()


def test_sites_puts_the_leaking_line_first_and_sees_it_grow(
    tracing_agent: Agent, leak_module: tuple[ModuleType, Path], tmp_path: Path
) -> None:
    module, path = leak_module
    module.leak(2000)
    first = tracing_agent.sites(str(tmp_path / "baseline.json.gz"), "baseline", t=1.0)
    module.leak(4000)
    second = tracing_agent.sites(str(tmp_path / "latest.json.gz"), "latest", t=2.0)

    site = _line_of(path, JSON_LINE)
    top_a, top_b = first["sites"][0], second["sites"][0]
    assert (top_a["site"], top_b["site"]) == (site, site)
    assert top_b["size"] > top_a["size"] * 2.5  # 3× the live strings
    assert top_b["count"] >= 6000
    assert top_b["line"] == 'LEAK.append(json.dumps({"i": i, "pad": "x" * 200}))'
    # The stdlib frames that allocated are kept in the traceback, innermost first.
    tb = top_b["traceback"]
    assert tb[0].startswith(os.path.join(STDLIB, "json") + os.sep)
    assert tb.index(site) > 0
    assert second["traced_bytes"] >= top_b["size"]
    assert second["blocks"] > 6000
    assert 0 <= second["pause_s"] < 5

    snap_a = read_snapshot(tmp_path / "baseline.json.gz")
    snap_b = read_snapshot(tmp_path / "latest.json.gz")
    assert (snap_a.role, snap_a.t, snap_b.t, snap_b.frames) == ("baseline", 1.0, 2.0, 8)
    rows = diff_snapshots(snap_a, snap_b)
    assert rows[0].site == site
    assert rows[0].count_diff >= 3950  # 4000 kept; a few of the baseline's may be freed since


def test_soakd_frames_are_skipped_for_the_site_but_kept_in_the_traceback(
    tracing_agent: Agent, leak_module: tuple[ModuleType, Path]
) -> None:
    module, path = leak_module
    module.leak_through_soakd(20_000)
    sites = {s["site"]: s for s in tracing_agent.sites()["sites"]}
    entry = sites[_line_of(path, SOAKD_LINE)]
    assert entry["traceback"][0].startswith(str(SOAKD_DIR / "units.py") + ":")
    assert entry["count"] >= 20_000
    assert not any(s.startswith(str(SOAKD_DIR)) for s in sites)


def test_resolver_rules_on_synthetic_tracebacks(tmp_path: Path) -> None:
    resolver = SiteResolver(frames=3, exclude=[str(tmp_path / "vendored")])
    app = str(tmp_path / "app.py")
    stdlib = os.path.join(STDLIB, "json", "encoder.py")
    soakd_file = str(SOAKD_DIR / "worker" / "main.py")
    agent_file = str(SOAKD_DIR / "agent" / "server.py")
    reference = str(SOAKD_DIR / "reference" / "faults.py")
    vendored = str(tmp_path / "vendored" / "lib.py")

    site, tb, _line = resolver.resolve(((stdlib, 1), (app, 2), (soakd_file, 3))) or ("", (), "")
    assert (site, tb) == (f"{app}:2", (f"{stdlib}:1", f"{app}:2", f"{soakd_file}:3"))
    # soakd's own work (worker, histograms): no target frame below the frame limit.
    assert resolver.resolve(((stdlib, 1), (soakd_file, 3), (soakd_file, 4), (app, 9))) is None
    # The agent's own work is skipped even when a target frame called it.
    assert resolver.resolve(((agent_file, 5), (app, 2))) is None
    # The bundled reference aggregator is a target, not soakd.
    assert resolver.resolve(((reference, 41), (soakd_file, 3))) is not None
    assert resolver.resolve(((vendored, 1), (app, 7))) == (
        f"{app}:7",
        (f"{vendored}:1", f"{app}:7"),
        None,
    )
    # Only stdlib/frozen frames: the innermost stays visible as the site.
    only_std = resolver.resolve((("<frozen importlib._bootstrap>", 3), (stdlib, 4)))
    assert only_std is not None and only_std[0] == "<frozen importlib._bootstrap>:3"
    # Third-party code is not "the stdlib" even when site-packages sits inside lib/pythonX.Y.
    third = os.path.join(default_excluded()[1][0], "aiohttp", "client.py")
    assert resolver.resolve(((third, 10), (stdlib, 1)))[0] == f"{third}:10"  # type: ignore[index]


class GrowingRecord:
    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


class RareRecord:
    def __init__(self, n: int) -> None:
        self.n = n


def test_types_sees_a_growing_custom_class_even_when_it_is_rare() -> None:
    kept: list[object] = []
    agent = Agent(max_types=5)
    name, rare = type_name(GrowingRecord), type_name(RareRecord)
    assert name == f"{__name__}.GrowingRecord"
    kept.extend(GrowingRecord(i) for i in range(50_000))
    first = agent.types()
    assert first[name] >= 50_000
    assert len(first) <= 5 + 10  # top by count plus growers
    kept.extend(RareRecord(i) for i in range(3000))
    second = agent.types()
    assert second[rare] >= 3000  # not among the 5 most numerous, reported as a grower
    kept.extend(GrowingRecord(i) for i in range(10_000))
    third = agent.types()
    assert third[name] >= first[name] + 10_000
    assert rare in third  # once reported, followed so that its series stays continuous


class Cyclic:
    def __init__(self) -> None:
        self.me = self


def test_types_after_a_collection_leaves_out_cyclic_garbage() -> None:
    agent = Agent(max_types=5)
    name = type_name(Cyclic)
    gc.disable()  # the garbage the collector has not reached yet, made deterministic
    try:
        for _ in range(20_000):
            Cyclic()
        assert agent.types()[name] >= 20_000  # counted while it waits for a collection
        # A target that disabled its collector really keeps its garbage: no collection.
        assert agent.types(collect=True)[name] >= 20_000
    finally:
        gc.enable()
    assert agent.types(collect=True).get(name, 0) == 0


def test_types_counts_while_tracing_too(tracing_agent: Agent) -> None:
    kept = [GrowingRecord(i) for i in range(20_000)]
    assert tracing_agent.types()[type_name(GrowingRecord)] >= len(kept)


def test_heap_numbers_are_sane_with_and_without_tracing() -> None:
    agent = Agent()
    agent.stop_tracing()
    off = agent.heap()
    assert off["heap_estimated"] == 1.0
    assert off["traced_bytes"] == 0.0
    assert 10_000 < off["heap_blocks"] < 1e9
    assert off["heap_bytes"] == pytest.approx(off["heap_blocks"] * 80.0)
    assert off["gc_collections"] > 0 and off["gc_garbage"] == 0
    agent.start_tracing()
    try:
        before = agent.heap()
        blob = [bytes(1000) + bytes([i % 256]) for i in range(10_000)]  # ≈ 10 MB
        after = agent.heap()
        assert before["heap_estimated"] == after["heap_estimated"] == 0.0
        assert after["traced_bytes"] - before["traced_bytes"] >= 10_000_000
        assert after["heap_bytes"] == after["traced_bytes"]
        assert after["heap_blocks"] - before["heap_blocks"] >= 10_000
        assert after["tracemalloc_overhead_bytes"] > 10_000 * 20  # its tables cost per block
        agent.sites()  # calibrates the estimate used once tracing stops
        del blob
    finally:
        agent.stop_tracing()
    assert agent.heap()["heap_estimated"] == 1.0
    assert agent.sites()["tracing"] is False


def test_tasks_on_the_loop_thread_and_from_another_thread() -> None:
    async def main() -> tuple[int, int]:
        agent = Agent()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(stop.wait()) for _ in range(5)]
        await asyncio.sleep(0)
        here = agent.tasks()
        there = await asyncio.to_thread(count_tasks_any_thread)
        stop.set()
        await asyncio.gather(*tasks)
        return here, there

    here, there = asyncio.run(main())
    assert here == 6  # five waiters and main()
    assert there == 6  # counted on the loop's thread via call_soon_threadsafe
    assert count_tasks_any_thread() == 0


def _short_socket_path(tmp_path: Path) -> str:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp paths can be longer.
    return f"/tmp/soakd-test-{os.getpid()}-{threading.get_ident() % 10_000}-{tmp_path.name[-8:]}.s"


def test_server_in_process_socket_mode_stale_socket_and_errors(tmp_path: Path) -> None:
    path = _short_socket_path(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # left behind, nobody listens: must be replaced
    server = AgentServer(Agent(), path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with pytest.raises(AgentError, match="another agent already serves"):
            AgentServer(Agent(), path)
        with AgentClient(path, timeout=10) as client:
            assert client.ping()["pid"] == os.getpid()
            assert client.tracing is False
            assert client.heap()["heap_blocks"] > 0
            client._stream.write(b'{"op": "rm -rf"}\n')
            client._stream.flush()
            reply = json.loads(client._stream.readline())
            assert reply["ok"] is False and "unknown op" in reply["error"]
            with pytest.raises(AgentError, match="snapshot_path must be a string"):
                client._call({"op": "sites", "snapshot_path": 5})
    finally:
        server.close()
    assert not os.path.exists(path)
    with pytest.raises(AgentError, match="did not answer ping"):
        AgentClient(path, timeout=2).ping()
    Path(path).write_text("not a socket")
    try:
        with pytest.raises(AgentError, match="is not a socket"):
            AgentServer(Agent(), path)
    finally:
        os.unlink(path)


def test_client_shared_by_threads_gives_each_its_own_answer(tmp_path: Path) -> None:
    """The supervisor's samplers call one client from several worker threads at once."""
    path = _short_socket_path(tmp_path)
    server = AgentServer(Agent(), path)
    errors: list[BaseException] = []
    try:
        with AgentClient(path, timeout=20) as client:

            def hammer(op: str) -> None:
                try:
                    for _ in range(150):
                        if op == "ping":
                            assert client.ping()["pid"] == os.getpid()
                        elif op == "heap":
                            assert client.heap()["heap_blocks"] > 0
                        else:
                            assert client.tasks() >= 0
                except BaseException as exc:  # collected: an assert in a thread is lost
                    errors.append(exc)

            threads = [
                threading.Thread(target=hammer, args=(op,)) for op in ("ping", "heap", "tasks") * 2
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=120)
            assert not any(th.is_alive() for th in threads)
    finally:
        server.close()
    assert errors == []


def test_serve_is_disabled_inside_soakd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOAKD_AGENT_DISABLED", "1")
    assert serve() is None


CHILD_APP = """\
import asyncio
LEAK = []
class LeakyThing:
    def __init__(self, n):
        self.n = n
async def worker():
    while True:
        LEAK.append(bytearray(1024)); LEAK.append(LeakyThing(len(LEAK)))
        await asyncio.sleep(0.0005)
async def main():
    tasks = [asyncio.create_task(worker()) for _ in range(3)]
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
CHILD_LEAK_LINE = 8


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_python_m_soakd_agent_serves_a_real_child(tmp_path: Path) -> None:
    script = (tmp_path / "leaky_app.py").resolve()
    script.write_text(textwrap.dedent(CHILD_APP))
    path = _short_socket_path(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "SOAKD_AGENT_DISABLED"}
    env["SOAKD_AGENT_SOCKET"] = path
    child = subprocess.Popen(
        [sys.executable, "-m", "soakd.agent", "--trace", str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        _wait_for(lambda: os.path.exists(path), 10, "the agent socket")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with AgentClient(path, timeout=10) as client:
            hello = client.ping()
            assert hello["pid"] == child.pid and hello["tracing"] is True
            assert client.tasks() == 4  # three workers and main()
            assert client.heap()["tasks"] == 4.0
            first = client.sites(str(tmp_path / "a.json.gz"), "baseline", t=0.5)
            types_a = client.types(collect=True)
            leaked = lambda: client.heap()["traced_bytes"] > first["traced_bytes"] + 500_000  # noqa: E731
            _wait_for(leaked, 15, "the child to leak 500 kB more")
            second = client.sites(str(tmp_path / "b.json.gz"), "latest", t=1.5)
            types_b = client.types()
            site = f"{script}:{CHILD_LEAK_LINE}"
            assert second["sites"][0]["site"] == site
            assert second["sites"][0]["size"] > first["sites"][0]["size"]
            # the source line is read by the client, on the watcher's side, into the answer
            # and into the snapshot file it writes
            leak_line = "LEAK.append(bytearray(1024)); LEAK.append(LeakyThing(len(LEAK)))"
            assert second["sites"][0]["line"] == leak_line
            written = read_snapshot(tmp_path / "b.json.gz").by_site()
            assert [s.line for s in written if s.site == site] == [leak_line]
            assert types_b["__main__.LeakyThing"] > types_a["__main__.LeakyThing"]
            client.stop_tracing()
            assert client.tracing is False
            client.start_tracing()
            assert client.tracing is True

        result = subprocess.run(
            [sys.executable, "-m", "soakd", "diff", str(tmp_path / "a.json.gz"),
             str(tmp_path / "b.json.gz"), "--top", "3"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        rows = [line for line in result.stdout.splitlines() if line.lstrip().startswith("+")]
        assert rows[0].endswith(site)
    finally:
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=20)
        if child.stdout:
            child.stdout.close()
        stderr = child.stderr.read() if child.stderr else ""
        if child.stderr:
            child.stderr.close()
    assert code == 128 + signal.SIGTERM, stderr
    assert not os.path.exists(path)  # removed on SIGTERM


@pytest.mark.slow
def test_python_m_soakd_agent_usage_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "soakd.agent", "/nonexistent/app.py"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no such script: /nonexistent/app.py" in result.stderr


def test_tracing_is_off_after_the_agent_tests() -> None:
    assert not tracemalloc.is_tracing()


# -- the protocol: one dispatcher, typed answers that read as their JSON ------------------------


def test_answers_survive_the_wire_and_read_like_their_json(
    tracing_agent: Agent, tmp_path: Path
) -> None:
    heap = dispatch(tracing_agent, "heap", {}, tasks=lambda: 3)
    sites = tracing_agent.sites(str(tmp_path / "s.json.gz"), "baseline", t=1.0)
    answers = [
        dispatch(tracing_agent, "ping", {}, tasks=lambda: 0),
        heap,
        tracing_agent.types(),
        sites,
        TracingState(True),
        SitesResult.not_tracing(624),
    ]
    for answer in answers:
        assert not isinstance(answer, int)
        wire = json.loads(json.dumps(encode(answer)))
        assert type(answer).from_json(wire).to_json() == wire  # type: ignore[attr-defined]
        assert dict(answer) == wire
    assert isinstance(heap, HeapSample) and heap.tasks == heap["tasks"] == 3.0
    assert sites["snapshot_path"] == sites.snapshot_path == str(tmp_path / "s.json.gz")
    assert read_snapshot(sites.snapshot_path).role == "baseline"
    assert dispatch(tracing_agent, "tasks", {}, tasks=lambda: 7) == 7


def test_dispatch_refuses_unknown_ops_and_malformed_sites_params() -> None:
    agent = Agent()
    assert set(OPS) == {
        "ping", "heap", "sites", "types", "tasks", "start_tracing", "stop_tracing", "profile"
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown op 'stop'"):
        dispatch(agent, "stop", {}, tasks=lambda: 0)
    for bad in ({"role": 1}, {"t": float("nan")}, {"t": True}, {"snapshot_path": 5}):
        with pytest.raises(TypeError):
            dispatch(agent, "sites", bad, tasks=lambda: 0)
    for interval in (None, 0, -5, True, 1.5, "8KiB"):
        with pytest.raises(TypeError, match="interval"):
            dispatch(agent, "profile", {"interval": interval}, tasks=lambda: 0)


@pytest.mark.skipif(not profiler.AVAILABLE, reason="the profiler extension is not built")
def test_profile_op_restarts_the_sampled_profiler_at_a_new_interval() -> None:
    agent = Agent()
    assert agent.start_profiler(65536)
    try:
        hello = dispatch(agent, "profile", {"interval": 8192}, tasks=lambda: 0)
        assert isinstance(hello, Hello) and hello.profiler is not None
        assert hello.profiler["mode"] == "sampled" and hello.profiler["interval_bytes"] == 8192
        back = dispatch(agent, "profile", {"interval": 65536}, tasks=lambda: 0)
        assert isinstance(back, Hello) and back.profiler is not None
        assert back.profiler["interval_bytes"] == 65536
    finally:
        agent.stop_profiler()
