"""What a soak test asks for: the one argument list (:class:`SoakArgs`) and its validation.

The ``soak`` marker, the ``soak`` fixture and :func:`soak_spec` take the same arguments; they
are declared once here, and the marker's key check and its ``pytest --markers`` line are built
from that declaration.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

from soakd.errors import SoakdError
from soakd.units import parse_duration, parse_size

__all__ = [
    "DEFAULT_DURATION_S",
    "MARKER_DOC",
    "SPEC_KEYS",
    "SoakArgs",
    "SoakSpec",
    "SoakUsageError",
    "check_keywords",
    "soak_spec",
]

DEFAULT_DURATION_S = 30.0

_T = TypeVar("_T")


class SoakUsageError(SoakdError, ValueError):
    """A soak was asked for with a bad argument; the message names it and the value."""


class SoakArgs(TypedDict, total=False):
    """The keyword arguments of a soak, after ``target`` (the one positional argument)."""

    duration: str | float | None
    users: int | None
    rounds: int
    method: str | None
    options: Mapping[str, Any] | None
    config: str | os.PathLike[str] | None
    set: Sequence[str]  # mirrors ``soakd run --set``
    max_rss_growth: str | int | None
    max_error_rate: float | None
    max_first_event_ms: float | None


SPEC_KEYS: tuple[str, ...] = ("target", *SoakArgs.__annotations__)
MARKER_DOC = (
    f"soak({', '.join(SPEC_KEYS)}): soak the target with soakd before the test body; "
    "the result is request.node.soak_result"
)


def check_keywords(function: str, kwargs: Mapping[str, object]) -> None:
    """The TypeError Python raises for an unknown keyword: ``**kw: Unpack`` does not check."""
    for name in kwargs:
        if name not in SoakArgs.__annotations__:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")


@dataclass(frozen=True)
class SoakSpec:
    """One soak, with units parsed: durations in seconds, sizes in bytes."""

    target: str | None = None
    duration_s: float | None = None  # None: the config file's run.duration, else 30 s
    users: int | None = None
    rounds: int = 1
    method: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    config: Path | None = None
    overrides: tuple[str, ...] = ()
    max_rss_growth: int | None = None
    max_error_rate: float | None = None
    max_first_event_ms: float | None = None
    max_rss_growth_text: str = ""  # as the user wrote it, for the message


def soak_spec(target: str | None = None, **kw: Unpack[SoakArgs]) -> SoakSpec:
    """Validate the marker's or fixture's arguments; SoakUsageError names the bad one."""
    check_keywords("soak_spec", kw)
    duration = kw.get("duration")
    users = kw.get("users")
    rounds = kw.get("rounds", 1)
    options = kw.get("options")
    config = kw.get("config")
    overrides = kw.get("set", ())
    max_rss_growth = kw.get("max_rss_growth")
    if target is not None and (not isinstance(target, str) or ":" not in target):
        raise SoakUsageError(
            f"soak target must be 'module:attr' such as 'pkg.mod:Factory': {target!r}"
        )
    duration_s = None
    if duration is not None:
        duration_s = _parse("duration", duration, parse_duration)
        if duration_s <= 0:
            raise SoakUsageError(f"soak duration must be > 0: {duration!r}")
    if users is not None and (isinstance(users, bool) or not isinstance(users, int) or users < 1):
        raise SoakUsageError(f"soak users must be an int >= 1: {users!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 100:
        raise SoakUsageError(f"soak rounds must be an int from 1 to 100: {rounds!r}")
    if options is not None and not isinstance(options, Mapping):
        raise SoakUsageError(f"soak options must be a dict of factory arguments: {options!r}")
    if isinstance(overrides, str) or not all(isinstance(s, str) and "=" in s for s in overrides):
        raise SoakUsageError(f"soak set must be a list of 'KEY=VALUE' strings: {overrides!r}")
    growth = (
        None if max_rss_growth is None else _parse("max_rss_growth", max_rss_growth, parse_size)
    )
    return SoakSpec(
        target=target,
        duration_s=duration_s,
        users=users,
        rounds=rounds,
        method=kw.get("method"),
        options=dict(options or {}),
        config=Path(config) if config is not None else None,
        overrides=tuple(overrides),
        max_rss_growth=growth,
        max_error_rate=_limit("max_error_rate", kw.get("max_error_rate")),
        max_first_event_ms=_limit("max_first_event_ms", kw.get("max_first_event_ms")),
        max_rss_growth_text=str(max_rss_growth) if max_rss_growth is not None else "",
    )


def _parse(name: str, value: Any, parser: Callable[[Any], _T]) -> _T:
    try:
        return parser(value)
    except ValueError as exc:
        raise SoakUsageError(f"soak {name}: {exc}") from None


def _limit(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise SoakUsageError(f"soak {name} must be a number >= 0: {value!r}")
    return float(value)
