"""The worker's settings: read from the JSON the supervisor hands over, standard library only.

The worker runs in the target's interpreter (``[target] python``), whose environment is the
service's own: pydantic may be missing there or be another major version. So the supervisor
validates the whole config and sends the worker the parts it uses as plain JSON
(:func:`soakd.supervisor.targets.worker_settings` writes it); these dataclasses only read it
back. Unknown keys are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soakd.workload.settings import WorkloadSettings

__all__ = ["HttpSettings", "OtelSettings", "SamplingSettings", "TargetSettings", "WorkerSettings"]


@dataclass(frozen=True)
class HttpSettings:
    """``[target.http]``: one request per iteration against a URL."""

    url: str
    method: str = "GET"
    body: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    query_param: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HttpSettings:
        body, param = data.get("body"), data.get("query_param")
        return cls(
            url=str(data["url"]),
            method=str(data.get("method", "GET")),
            body=None if body is None else str(body),
            headers={str(k): str(v) for k, v in (data.get("headers") or {}).items()},
            query_param=None if param is None else str(param),
        )


@dataclass(frozen=True)
class TargetSettings:
    """``[target]``: a factory and method, a scenario, or an HTTP endpoint."""

    factory: str | None = None
    method: str = "process_query"
    scenario: str | None = None
    python_path: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    http: HttpSettings | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TargetSettings:
        http = data.get("http")
        factory, scenario = data.get("factory"), data.get("scenario")
        return cls(
            factory=None if factory is None else str(factory),
            method=str(data.get("method", "process_query")),
            scenario=None if scenario is None else str(scenario),
            python_path=tuple(str(p) for p in data.get("python_path") or ()),
            options=dict(data.get("options") or {}),
            http=None if http is None else HttpSettings.from_json(http),
        )


@dataclass(frozen=True)
class SamplingSettings:
    """The parts of ``[sampling]`` the worker's agent needs."""

    enabled: bool = True
    profiler: str = "sampled"
    profiler_interval: int = 64 * 1024
    tracemalloc: str = "on-suspicion"
    frames: int = 8
    max_sites: int = 50
    max_types: int = 50

    @property
    def profiler_on(self) -> bool:
        return self.enabled and self.profiler == "sampled"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SamplingSettings:
        d = cls()
        return cls(
            enabled=bool(data.get("enabled", d.enabled)),
            profiler=str(data.get("profiler", d.profiler)),
            profiler_interval=int(data.get("profiler_interval", d.profiler_interval)),
            tracemalloc=str(data.get("tracemalloc", d.tracemalloc)),
            frames=int(data.get("frames", d.frames)),
            max_sites=int(data.get("max_sites", d.max_sites)),
            max_types=int(data.get("max_types", d.max_types)),
        )


@dataclass(frozen=True)
class OtelSettings:
    """The parts of ``[otel]`` the worker needs: whether and how often to record iteration
    spans (the endpoint and its headers stay with the supervisor, which exports)."""

    enabled: bool = False
    sample_ratio: float = 0.01
    max_spans: int = 512

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OtelSettings:
        d = cls()
        return cls(
            enabled=bool(data.get("enabled", d.enabled)),
            sample_ratio=float(data.get("sample_ratio", d.sample_ratio)),
            max_spans=int(data.get("max_spans", d.max_spans)),
        )


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the worker is told: what to build, how to drive it, what to sample."""

    target: TargetSettings
    workload: WorkloadSettings
    sampling: SamplingSettings
    otel: OtelSettings = field(default_factory=OtelSettings)
    stop_timeout: float = 30.0
    base_dir: str = "."  # relative paths (python_path, queries_file) resolve against this

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerSettings:
        """From :func:`soakd.supervisor.targets.worker_settings`'s output."""
        return cls(
            target=TargetSettings.from_json(data.get("target") or {}),
            workload=WorkloadSettings.from_json(data.get("workload") or {}),
            sampling=SamplingSettings.from_json(data.get("sampling") or {}),
            otel=OtelSettings.from_json(data.get("otel") or {}),
            stop_timeout=float(data.get("stop_timeout", 30.0)),
            base_dir=str(data.get("base_dir", ".")),
        )
