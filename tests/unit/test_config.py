"""Config parsing, --set overrides and units (pure, no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from soakd.config import (
    LEAK_KINDS,
    Config,
    DetectionConfig,
    SamplingConfig,
    load_config,
    parse_set,
)
from soakd.detection import LeakKind
from soakd.errors import ConfigError
from soakd.units import format_duration, format_size, parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("6h", 21600), ("250ms", 0.25), ("1d", 86400), ("1.5h", 5400),
     (30, 30), (2.5, 2.5), ("0s", 0), ("1h30m", 5400), ("1h 30m", 5400), ("1d2h", 93600),
     ("2m30s", 150), ("1s500ms", 1.5), ("1.5h10m", 6000)],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    ["10x", "", "s", "-5s", "1e400", True, None, [1], "nan", "30m1h", "1h1h", "1h-30m", "1h30"],
)
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KiB", 512 * 1024), ("2GiB", 2 * 1024**3), ("10MB", 10_000_000), ("100B", 100),
     (4096, 4096), ("1.5MiB", 1572864), ("10mb", 10_000_000), ("10G", 10 * 1024**3),
     ("512M", 512 * 1024**2), ("64K", 65536), ("1T", 1024**4), ("10GiB", 10 * 1024**3)],
)  # fmt: skip
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["1GiQ", "-1MB", "lots", False, {}, "10Gi", "1m30s"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_formatting() -> None:
    assert format_duration(3725) == "1h02m"
    assert format_duration(65) == "1m05s"
    assert format_size(1536) == "1.5 KiB"


def test_every_key_has_a_default() -> None:
    config = Config()
    assert config.target.factory == "soakd.reference:ReferenceAggregator"
    assert config.workload.users >= 1
    assert config.sampling.tracemalloc == "on-suspicion"
    assert config.metrics.enabled is False
    assert config.metrics.bind == "127.0.0.1:9464"


def test_default_file_is_valid_and_matches_the_models() -> None:
    from_file = load_config(ROOT / "config" / "soakd.toml")
    defaults = Config()
    for section in ("workload", "sampling", "detection", "guard", "metrics", "run"):
        assert getattr(from_file, section) == getattr(defaults, section), section


def test_target_only_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[target]\nfactory = "pkg.mod:Thing"\n')
    config = load_config(path)
    assert config.target.factory == "pkg.mod:Thing"
    assert config.run.duration == 600


def test_set_overrides_take_toml_values() -> None:
    config = load_config(
        None,
        ["workload.users=16", "target.options={scale=2.0}", "target.options.leak_kb=4",
         "run.duration=90s", "workload.rate=2.5", "sampling.tracemalloc=off"],
    )  # fmt: skip
    assert config.workload.users == 16
    assert config.target.options == {"scale": 2.0, "leak_kb": 4}
    assert config.run.duration == 90
    assert config.workload.rate == 2.5
    assert config.sampling.tracemalloc == "off"


def test_set_bare_word_is_a_string() -> None:
    assert parse_set(["target.method=run"]) == [(["target", "method"], "run")]


@pytest.mark.parametrize("bad", ["noequals", "=5", "a..b=1", "x=[1,", "x={a="])
def test_bad_set(bad: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        parse_set([bad])


def test_set_error_names_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["workload.users=0"])
    assert "workload.users = 0" in str(info.value)


def test_rule_units_are_parsed() -> None:
    config = load_config(
        None,
        ['rules=[{metric="rss_bytes", above="1.5GiB", window="5m", for="1m", action="abort"},'
         '{metric="latency_p99_ms", above="250ms"}, {metric="leak", kind="heap"}]'],
    )  # fmt: skip
    rss, lat, leak = config.rules
    assert rss.above == 1.5 * 1024**3 and rss.window == 300 and rss.for_ == 60
    assert lat.above == 250.0
    assert leak.above == 0.0 and leak.kind == "heap"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[[rules]]\nmetric = "rss"\nabove = 1\n', "unknown metric 'rss'"),
        ('[[rules]]\nmetric = "rss_bytes"\nabove = "1GiQ"\n', "expected a size"),
        ('[[rules]]\nmetric = "fds"\n', "exactly one of 'above' or 'below'"),
        ('[[rules]]\nmetric = "fds"\nabove = 5\nwindow = "100ms"\n', "shorter than"),
        ('[[rules]]\nmetric = "fds"\nabove = 5\naction = "explode"\n', "rules[0].action"),
        ('[[rules]]\nmetric = "leak"\nkind = "memory"\n', "unknown leak kind"),
    ],
)
def test_bad_rules(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_leak_kinds_are_the_detectors() -> None:
    assert get_args(LeakKind) == LEAK_KINDS
    assert LEAK_KINDS == ("heap", "native", "objects", "fds", "threads", "tasks")


def test_detection_keys_are_described() -> None:
    assert all(field.description for field in DetectionConfig.model_fields.values())


@pytest.mark.parametrize(
    ("analysis", "heap", "fast"),
    [(10.0, 2.0, 5.0), (10.0, 8.0, 8.0), (10.0, 20.0, 10.0), (30.0, 2.0, 15.0)],
)
def test_fast_analysis_interval(analysis: float, heap: float, fast: float) -> None:
    sampling = SamplingConfig(analysis_interval=analysis, heap_interval=heap)
    assert sampling.fast_analysis_interval == fast


def test_a_bad_union_value_names_its_key_once(tmp_path: Path) -> None:
    path = tmp_path / "soakd.toml"
    path.write_text("[workload]\nerror_events = [{kind = []}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (line,) = str(err.value).splitlines()  # one line, not one per member of the union
    assert f"{path}: workload.error_events[0].kind = []: " in line
    assert "valid string" in line and "valid integer" in line


def test_the_sampled_profiler_is_on_by_default_and_its_interval_is_bounded() -> None:
    s = Config().sampling
    assert s.profiler == "sampled" and s.profiler_interval == 64 * 1024 and s.profiler_on
    assert SamplingConfig(profiler_interval="128KiB").profiler_interval == 128 * 1024
    assert not SamplingConfig(enabled=False).profiler_on
    with pytest.raises(ValueError, match="between 4KiB and 1GiB"):
        SamplingConfig(profiler_interval=100)


def test_the_agent_environment_carries_the_profiler_interval() -> None:
    from soakd.agent.env import ENV_PROFILER, agent_environment, profiler_interval

    env = agent_environment({}, "/tmp/s.sock", 131072)
    assert profiler_interval(524288, env) == 131072
    assert profiler_interval(524288, agent_environment({}, "/tmp/s.sock", None)) is None
    assert profiler_interval(524288, {ENV_PROFILER: "lots"}) == 524288  # never refuses to start
    assert profiler_interval(524288, {}) == 524288
