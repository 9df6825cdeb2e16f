"""The workload's settings as the worker reads them: plain frozen values, standard library only.

The supervisor validates ``[workload]`` (:class:`soakd.config.WorkloadConfig`, pydantic) and
sends the worker its JSON dump; the worker runs in the target's interpreter, where pydantic may
be missing or another major version, so it only reads that dump back into these dataclasses.
Keys it does not know are ignored (the supervisor may be newer than this copy of the reader).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_MILESTONES",
    "Matcher",
    "QuerySpec",
    "StageSpec",
    "ThinkSpec",
    "WorkloadSettings",
]

Matcher = Mapping[str, Any]
DEFAULT_MILESTONES: dict[str, Matcher] = {
    "first_status": {"type": "status"},
    "analysis_complete": {"type": "status", "stage": "analysis_complete"},
}


@dataclass(frozen=True)
class ThinkSpec:
    """The pause each user takes between iterations (``[workload.think_time]``)."""

    distribution: str = "exponential"
    mean: float = 0.05
    min: float = 0.0
    max: float = 1.0


@dataclass(frozen=True)
class StageSpec:
    """One step of a ramp: users or an arrival rate, held ``duration`` seconds."""

    duration: float
    users: int | None = None
    rate: float | None = None


@dataclass(frozen=True)
class QuerySpec:
    text: str
    kind: str = "default"
    weight: float = 1.0


@dataclass(frozen=True)
class WorkloadSettings:
    """``[workload]`` as validated by the supervisor (field names and meaning as there)."""

    users: int = 4
    rate: float | None = None
    max_concurrency: int = 256
    think_time: ThinkSpec = ThinkSpec()
    stages: tuple[StageSpec, ...] = ()
    timeout: float = 30.0
    queries: tuple[QuerySpec, ...] = ()
    queries_file: str | None = None
    error_events: tuple[Matcher, ...] = ({"type": "error"},)
    milestones: Mapping[str, Matcher] = field(default_factory=lambda: dict(DEFAULT_MILESTONES))
    interval: float = 10.0
    seed: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkloadSettings:
        """From the supervisor's dump of a validated ``WorkloadConfig`` (``mode="json"``)."""
        d = cls()
        think = data.get("think_time") or {}
        return cls(
            users=int(data.get("users", d.users)),
            rate=_opt_float(data.get("rate")),
            max_concurrency=int(data.get("max_concurrency", d.max_concurrency)),
            think_time=ThinkSpec(
                distribution=str(think.get("distribution", d.think_time.distribution)),
                mean=float(think.get("mean", d.think_time.mean)),
                min=float(think.get("min", d.think_time.min)),
                max=float(think.get("max", d.think_time.max)),
            ),
            stages=tuple(
                StageSpec(float(s["duration"]), _opt_int(s.get("users")), _opt_float(s.get("rate")))
                for s in data.get("stages") or ()
            ),
            timeout=float(data.get("timeout", d.timeout)),
            queries=tuple(
                QuerySpec(str(q["text"]), str(q.get("kind", "default")), float(q.get("weight", 1)))
                for q in data.get("queries") or ()
            ),
            queries_file=_opt_str(data.get("queries_file")),
            error_events=tuple(dict(m) for m in data.get("error_events", d.error_events)),
            milestones={
                str(k): dict(v) for k, v in (data.get("milestones", d.milestones) or {}).items()
            },
            interval=float(data.get("interval", d.interval)),
            seed=_opt_int(data.get("seed")),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
