"""The config a soak test runs with: cadence presets, merging, and the TOML file soakd reads.

Two presets of the same knobs live here side by side. :func:`short_soak_profile` scales each
interval to the soak's length and clamps it between a floor and soakd's default; :data:`FAST` is
the fixed cadence of soakd's own test suite: the profile's floors, plus a small constant-think
workload and a start timeout. :data:`FAST` stays TOML text because tests splice keys into the
``[workload]`` and ``[run]`` tables it opens.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from soakd.testing.spec import SoakSpec, SoakUsageError
from soakd.units import parse_duration

__all__ = [
    "FAST",
    "build_config",
    "read_user_config",
    "seconds",
    "short_soak_profile",
    "to_toml",
    "toml_value",
]

# (fraction of the soak, floor, ceiling) of each interval, in seconds.
_CADENCE: dict[str, dict[str, tuple[float, float, float]]] = {
    "sampling": {
        "process_interval": (1 / 100, 0.25, 1.0),
        "system_interval": (1 / 50, 0.5, 5.0),
        "heap_interval": (1 / 50, 0.5, 2.0),
        "types_interval": (1 / 10, 2.0, 30.0),
        "sites_interval": (1 / 30, 1.0, 10.0),
        "analysis_interval": (1 / 30, 1.0, 10.0),
        "checkpoint_interval": (1 / 10, 1.0, 30.0),
    },
    "workload": {"interval": (1 / 20, 1.0, 10.0)},
    "run": {"stop_timeout": (1 / 4, 5.0, 30.0)},
    # Warm-up and window scaled so that the detector judges a full window before the end
    # (its shortest window is half the window): else every short soak is "inconclusive".
    "detection": {
        "warmup": (1 / 5, 2.0, 60.0),
        "warmup_max": (2 / 5, 4.0, 600.0),
        "window": (3 / 5, 8.0, 1800.0),
    },
}

# Fast cadence for soakd's tests: every sampler ticks within a second, warm-up is short.
FAST = """
[sampling]
process_interval = "250ms"
system_interval = "500ms"
heap_interval = "500ms"
types_interval = "2s"
sites_interval = "1s"
analysis_interval = "1s"
checkpoint_interval = "1s"
[workload]
users = 2
interval = "1s"
[workload.think_time]
distribution = "constant"
mean = "5ms"
[run]
stop_timeout = "5s"
start_timeout = "30s"
"""


def short_soak_profile(duration_s: float) -> dict[str, Any]:
    """Cadence scaled to a short soak: ~100 process samples, ~30 analyses, whatever its length.

    soakd's defaults suit hours; a 20 s soak with them would see one workload interval and no
    analysis. Each interval is clamped between a floor that keeps the sampler cheap on a
    shared CI box and soakd's own default.
    """
    return {
        section: {
            key: round(min(high, max(low, duration_s * fraction)), 3)
            for key, (fraction, low, high) in knobs.items()
        }
        for section, knobs in _CADENCE.items()
    }


def build_config(
    spec: SoakSpec, duration_s: float, user_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The TOML document for the soak: profile < ``user_config`` < explicit arguments.

    ``spec.overrides`` are not merged here: they go to ``soakd run --set`` so soakd applies
    them last with its own parsing and error messages.
    """
    data = short_soak_profile(duration_s)
    _merge(data, dict(user_config or {}))
    explicit: dict[str, Any] = {"run": {"duration": duration_s}}
    target: dict[str, Any] = {}
    if spec.target is not None:
        target["factory"] = spec.target
    if spec.method is not None:
        target["method"] = spec.method
    if spec.options:
        target["options"] = dict(spec.options)
    if target:
        explicit["target"] = target
    if spec.users is not None:
        explicit["workload"] = {"users": spec.users}
    if spec.max_error_rate is not None:
        # One bar, not two: soakd's health check judges the rate the test allows.
        explicit["health"] = {"max_error_rate": spec.max_error_rate}
    if spec.rounds > 1:
        # soakd judges nothing before the warm-up floor: make that the first round.
        round_s = round(duration_s / spec.rounds, 3)
        warmup_max = data.get("detection", {}).get("warmup_max")
        detection: dict[str, Any] = {"warmup": round_s}
        if warmup_max is None or seconds(warmup_max) < round_s:
            detection["warmup_max"] = round_s
        explicit["detection"] = detection
    _merge(data, explicit)
    return data


def seconds(value: object) -> float:
    """A config duration in seconds; 0 for one soakd itself will reject with a message."""
    try:
        return parse_duration(value)
    except ValueError:
        return 0.0


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def read_user_config(path: Path) -> dict[str, Any]:
    """The user's soakd TOML with its relative paths made absolute (the copy lives elsewhere)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SoakUsageError(f"soak config {path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SoakUsageError(f"soak config {path}: not valid TOML: {exc}") from None
    base = path.resolve().parent
    target = data.get("target")
    if isinstance(target, dict) and isinstance(target.get("python_path"), list):
        target["python_path"] = [
            str(base / p) if isinstance(p, str) else p for p in target["python_path"]
        ]
    workload = data.get("workload")
    if isinstance(workload, dict) and isinstance(workload.get("queries_file"), str):
        workload["queries_file"] = str(base / workload["queries_file"])
    return data


# --------------------------------------------------------------------------- TOML out


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialize a config document to TOML; SoakUsageError names a value TOML cannot hold."""
    return tomli_w.dumps(_plain(data, ()))


def toml_value(value: object) -> str:
    """One value as inline TOML (what ``soakd run --set KEY=VALUE`` takes as VALUE)."""
    return _inline(_plain(value, ()))


def _plain(value: object, path: tuple[str, ...]) -> Any:
    """``value`` as what tomli-w writes: str keys, dicts, lists, no paths or datetimes.

    Datetimes and Decimals are refused although tomli-w could write them: no soakd key takes
    one, so one here is a mistake to name, not to pass on.
    """
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return [_plain(v, path) for v in value]  # an item's path is its array's, for messages
    if isinstance(value, Mapping):
        return {str(k): _plain(v, (*path, str(k))) for k, v in value.items()}
    raise SoakUsageError(
        f"soak config value {'.'.join(path)} = {value!r} cannot be written as TOML "
        "(use str, int, float, bool, list or dict)"
    )


def _inline(value: Any) -> str:
    # tomli-w has no public inline writer: compose arrays and tables, let it escape the rest.
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_key(k)} = {_inline(v)}" for k, v in value.items())
        return "{" + inner + "}" if inner else "{}"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").removesuffix("\n")


def _key(key: str) -> str:
    return tomli_w.dumps({key: 0}).removesuffix(" = 0\n")
