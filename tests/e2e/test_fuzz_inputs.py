"""Hypothesis fuzz of the two other doors hostile input comes through: the agent protocol (a
real server on a real unix socket, in this process) and the configuration (``check-config``
on a file and on ``--set``, through ``soakd.cli.main``).

The agent must answer every line with an error or a result (or close a connection it refuses),
never lose its serving thread and never print a traceback into the watched app's stderr; the
configuration must be accepted or refused with exit 2, never raise. Counts of inputs tried are
printed and stated in the README's Security section.
"""

from __future__ import annotations

import json
import os
import socket
import string
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soakd.agent import Agent, AgentClient
from soakd.agent.protocol import OPS
from soakd.agent.server import AgentServer
from soakd.cli import main

BOUND_S = 5.0
AGENT_EXAMPLES = 400
CONFIG_EXAMPLES = 300
TRIED = {"agent": 0, "config": 0}

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


_lines = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda op, params: json.dumps({"op": op, **params}, allow_nan=True),
        st.sampled_from([*OPS, "nope", ""]),
        st.dictionaries(
            st.sampled_from(["snapshot_path", "role", "t", "interval", "collect", "snapshot", "x"]),
            _values,
            max_size=4,
        ),
    ).map(str.encode),
    st.integers(min_value=1, max_value=40_000).map(lambda d: _deep(d).encode()),
    st.integers(min_value=1, max_value=200).map(
        lambda n: b'{"op": "ping", "pad": "' + b"x" * (n * 1024) + b'"}'
    ),
    st.text(alphabet=string.printable + "\x00\x1b\u2028", max_size=200).map(str.encode),
)


def _ask(path: str, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(BOUND_S)
        sock.connect(path)
        sock.sendall(line.replace(b"\n", b" ") + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break  # refused and closed: allowed
            data += chunk
        return data


@pytest.mark.slow
def test_agent_protocol_survives_hostile_requests(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "sock"
    home.mkdir(mode=0o700)
    path = str(home / "agent.sock")
    server = AgentServer(Agent(), path, idle_timeout=BOUND_S)
    try:

        @settings(
            max_examples=AGENT_EXAMPLES,
            deadline=None,
            derandomize=True,  # the same inputs on every run: CI never fails on a new draw
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(line=_lines)
        def one(line: bytes) -> None:
            started = time.monotonic()
            answer = _ask(path, line)
            assert time.monotonic() - started < BOUND_S
            if answer:
                reply = json.loads(answer)
                assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
            TRIED["agent"] += 1

        one()
        with AgentClient(path, timeout=BOUND_S) as client:
            assert client.ping()["pid"] == os.getpid()  # still serving
    finally:
        server.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    print(f"agent protocol: {TRIED['agent']} hostile requests, 0 tracebacks")


_toml_keys = st.sampled_from(
    ["workload.rate", "workload.users", "sampling.process_interval", "detection.window",
     "run.duration", "target.factory", "health.max_error_rate", "output.mode", "x.y",
     "alerts.webhooks", "sampling.tracemalloc", "detection.confirm_after", "target.python",
     "target.venv"]
)  # fmt: skip
_toml_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True).map(lambda f: repr(f).replace("inf", "inf").replace("nan", "nan")),
    st.text(alphabet=string.printable, max_size=30).map(lambda s: json.dumps(s)),
    st.sampled_from(['"10s"', '"-1s"', '"1e9h"', "true", "[]", "{}", '"∞"', "[[[[1]]]]"]),
    st.integers(min_value=1, max_value=3000).map(lambda d: "[" * d + "]" * d),
    st.text(max_size=40),
)


@pytest.mark.slow
def test_config_survives_hostile_files_and_sets(tmp_path: Path) -> None:
    valid = tmp_path / "valid.toml"
    valid.write_text(
        '[target]\nfactory = "soakd.reference:ReferenceAggregator"\n', encoding="utf-8"
    )

    @settings(
        max_examples=CONFIG_EXAMPLES,
        deadline=None,
        derandomize=True,  # the same inputs on every run: CI never fails on a new draw
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        body=st.one_of(
            st.binary(max_size=400),
            st.lists(st.tuples(_toml_keys, _toml_values), max_size=5).map(
                lambda kvs: "\n".join(f"{k} = {v}" for k, v in kvs).encode(errors="replace")
            ),
        ),
        key=_toml_keys,
        value=_toml_values,
    )
    def one(body: bytes, key: str, value: str) -> None:
        path = tmp_path / "fuzz.toml"
        path.write_bytes(body)
        for argv in (
            ["check-config", str(path)],
            ["check-config", str(valid), "--set", f"{key}={value}"],
        ):
            started = time.monotonic()
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's own refusals
                code = exc.code if isinstance(exc.code, int) else 2
            assert code in (0, 2), (argv, code)
            assert time.monotonic() - started < BOUND_S
            TRIED["config"] += 1

    one()
    print(f"config: {TRIED['config']} hostile files and --set values, 0 tracebacks")
