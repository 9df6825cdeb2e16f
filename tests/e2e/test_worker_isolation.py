"""The worker side imports nothing but the standard library.

The real worker (``soakd.worker.main``) runs under ``python -I -S``: no site-packages, no user
site, no PYTHONPATH, so a third-party import would fail outright; an audit hook also records
every module it loads. Only soakd's code directory (the symlink the supervisor makes) and the
target's directory are added. This test plays the supervisor on the channel: it hands over
the settings in a memory file, waits for ``ready`` and a workload report, asks the agent
operations (ping, heap, types, tasks, sites with a snapshot) and stops the worker.

It uses the service interpreter of ``tests/service_env.py`` (Python 3.10 when the box has
it), so it also proves the worker side runs on the oldest supported Python.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from soakd.config import load_config
from soakd.supervisor.interpreter import prepare
from soakd.supervisor.targets import _settings_memfd, worker_settings
from soakd.worker import worker_environment
from tests.service_env import service_python

# Every module of soakd that runs inside the target's interpreter.
WORKER_SIDE = (
    "soakd",
    "soakd.errors",
    "soakd.channel",
    "soakd.profiler",
    "soakd.snapshots",
    "soakd.worker",
    "soakd.worker.main",
    "soakd.worker.settings",
    "soakd.worker.target",
    "soakd.worker.http_target",
    "soakd.worker.environment",
    "soakd.workload",
    "soakd.workload.engine",
    "soakd.workload.corpus",
    "soakd.workload.settings",
    "soakd.agent",
    "soakd.agent.__main__",
    "soakd.agent.server",
    "soakd.agent.allocations",
    "soakd.agent.heap",
    "soakd.agent.objects",
    "soakd.agent.protocol",
    "soakd.agent.env",
)

# Runs the real worker; argv: code dir, report file, modules to import first. The report: the
# sys.path it started with, every import attempted (audit hook), every module loaded and the
# file it came from, and where this interpreter's standard library lives.
BOOT = """\
import json, sys, sysconfig
code_dir, report = sys.argv[1:3]
start_path = list(sys.path)
attempted = []
sys.addaudithook(lambda event, args: event == "import" and attempted.append(args[0]))
sys.path.insert(0, code_dir)
for name in sys.argv[3:]:
    __import__(name)
from soakd.worker.main import main
code = main()
with open(report, "w") as fh:
    json.dump({
        "path": start_path,
        "attempted": attempted,
        "modules": {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())},
        "stdlib": [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")],
    }, fh)
raise SystemExit(code)
"""

SERVICE = """\
import asyncio

_KEPT = []


class Service:
    async def process_query(self, query):
        _KEPT.append(bytearray(16 * 1024))  # the leak
        await asyncio.sleep(0.001)
        yield {"type": "status", "stage": "analysis_complete"}
        yield {"type": "complete"}
"""


class Peer:
    """The supervisor's end of the channel: JSON lines, every read bounded in time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.messages: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def wait(self, match: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages:
                if match(m):
                    self.messages.remove(m)
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.messages[-5:]}")
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 20)
            if not data:
                raise AssertionError(f"worker closed the channel waiting for {what}")
            self.buf += data
            *lines, self.buf = self.buf.split(b"\n")
            self.messages += [json.loads(line) for line in lines if line]

    def ask(self, rid: int, op: str, **params: Any) -> Any:
        self.send({"id": rid, "op": op, **params})
        reply = self.wait(lambda m: m.get("id") == rid, 60, f"the answer to {op}")
        assert reply["ok"], reply
        return reply["result"]


def _stdlib_names(python: str) -> set[str]:
    out = subprocess.run(
        [python, "-I", "-S", "-c", "import sys; print(*sorted(sys.stdlib_module_names))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(out.stdout.split())


@pytest.mark.slow
def test_the_worker_side_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    python_exe = service_python()
    (tmp_path / "iso_service.py").write_text(SERVICE, encoding="utf-8")
    cfg_path = tmp_path / "soakd.toml"
    cfg_path.write_text(
        f'[target]\nfactory = "iso_service:Service"\npython_path = ["."]\n'
        f"python = {json.dumps(python_exe)}\n"
        '[workload]\nusers = 2\ninterval = "500ms"\n[workload.think_time]\ndistribution = "none"\n',
        encoding="utf-8",
    )
    config = load_config(cfg_path)
    python = prepare(config)  # the code directory, and the profiler built for it if need be
    log = tmp_path / "imports.log"
    parent, child = socket.socketpair()
    settings_fd = _settings_memfd(worker_settings(config))
    env = python.environment({"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    env.update(worker_environment(child.fileno(), settings_fd, os.getpid()))
    cmd = [python_exe, "-I", "-S", "-c", BOOT, python.code_dir, str(log), *WORKER_SIDE]
    proc = subprocess.Popen(
        cmd, env=env, pass_fds=(child.fileno(), settings_fd), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    child.close()
    os.close(settings_fd)
    peer = Peer(parent)
    try:
        peer.wait(lambda m: m.get("msg") == "ready", 60, "ready")
        report = peer.wait(lambda m: m.get("msg") == "workload", 30, "a workload report")
        hello = peer.ask(1, "ping")
        heap = peer.ask(2, "heap")
        types = peer.ask(3, "types")
        assert peer.ask(4, "tasks") >= 2  # the two virtual users at least
        snapshot = tmp_path / "latest.json.gz"
        sites = peer.ask(5, "sites", snapshot_path=str(snapshot), role="latest", t=1.0)
        peer.send({"op": "stop"})
        peer.wait(lambda m: m.get("msg") == "finished", 60, "finished")
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        parent.close()
    assert proc.returncode == 0, out[-2000:]
    assert report["totals"]["iterations"] > 0 and report["totals"]["errors"] == 0, report
    assert heap["heap_bytes"] > 0 and types, (heap, types)
    assert snapshot.exists()
    # Attribution works there too: the profiler's sites name the service's line, or the
    # worker says why it cannot (no compiler for a rebuild).
    if python.profiler.startswith("unavailable"):
        assert hello["profiler"]["mode"] == "off" and hello["profiler"]["lost"], hello
    else:
        assert hello["profiler"]["mode"] == "sampled", hello
        leak_site = f"{tmp_path / 'iso_service.py'}:8"
        assert leak_site in json.dumps(sites), str(sites)[:2000]

    seen = json.loads(log.read_text(encoding="utf-8"))
    assert not [p for p in seen["path"] if "site-packages" in p], seen["path"]
    modules: dict[str, str | None] = seen["modules"]
    assert {"soakd.worker.main", "soakd.workload.engine", "soakd.agent", "iso_service"} <= set(
        modules
    )
    # Every module loaded is built in, or comes from the standard library, soakd's package
    # (through the code directory, or the profiler built for this interpreter) or the target.
    places = (
        *(os.path.realpath(p) + os.sep for p in seen["stdlib"]),
        os.path.realpath(Path(python.code_dir) / "soakd") + os.sep,
        str(tmp_path) + os.sep,
    )
    built = python.profiler_extension
    foreign = {
        name: file
        for name, file in modules.items()
        if file is not None and not os.path.realpath(file).startswith(places) and file != built
    }
    assert not foreign, f"modules from outside the stdlib, soakd and the target: {foreign}"
    # And nothing else was even tried, but the stdlib's optional probes (e.g. `org` for
    # Jython in copy.py) that fail on CPython.
    stdlib = _stdlib_names(python_exe) | {"soakd", "iso_service", "__main__", "org"}
    tried = {m.split(".")[0] for m in seen["attempted"]} - stdlib
    assert {t for t in tried if not t.startswith("_sysconfigdata_")} == set(), tried
