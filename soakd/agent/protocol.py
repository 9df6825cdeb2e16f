"""The agent's operations and their answers: one dispatcher for the worker and the socket server.

An operation is a JSON object ``{"op": OP, ...params}``; its answer is the ``to_json()`` of one
of the frozen dataclasses below (``tasks`` answers a bare integer). The worker answers over its
channel to the supervisor (:mod:`soakd.worker.main`), an external target over a unix socket
(:mod:`soakd.agent.server`); both call :func:`dispatch`, and both clients decode with
``from_json``. Each answer also reads like its JSON object (``answer["heap_bytes"]``), so code
written against the wire form keeps working.

Adding an operation: a name in :data:`Op` and :data:`OPS`, a branch in :func:`dispatch`, an
answer class if it needs one, and a method on :class:`soakd.agent.stats.StatsSource`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from soakd.errors import SoakdError
from soakd.snapshots import SnapshotSite

if TYPE_CHECKING:
    from soakd.agent import Agent

__all__ = [
    "OPS",
    "AgentError",
    "Answer",
    "HeapSample",
    "Hello",
    "Op",
    "SitesResult",
    "TracingState",
    "TypesSample",
    "dispatch",
    "encode",
    "sites_params",
]

Op = Literal[
    "ping", "heap", "sites", "types", "tasks", "start_tracing", "stop_tracing", "profile"
]  # fmt: skip
OPS: Final[tuple[Op, ...]] = (
    "ping", "heap", "sites", "types", "tasks", "start_tracing", "stop_tracing", "profile",
)  # fmt: skip


class AgentError(SoakdError):
    """The agent could not be served or did not answer as it should."""


class _WireView(Mapping[str, Any]):
    """Read access by JSON key to an answer's wire form (``answer["sites"]``)."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


@dataclass(frozen=True, slots=True, eq=False)
class Hello(_WireView):
    """``ping``: who answers, whether tracemalloc traces and what the sampled profiler does.

    ``profiler`` is the agent's :meth:`~soakd.agent.Agent.profiler_status` (``mode``
    "sampled" or "off", ``interval_bytes``, ``frames``, ``lost``: why it is off); None from an
    agent of the first version.
    """

    pid: int
    tracing: bool
    argv: tuple[str, ...] = ()
    profiler: Mapping[str, Any] | None = None

    @property
    def sampling(self) -> bool:
        """The sampled profiler runs: allocation sites are available without tracemalloc."""
        return bool(self.profiler and self.profiler.get("mode") == "sampled")

    def to_json(self) -> dict[str, Any]:
        out = {"pid": self.pid, "tracing": self.tracing, "argv": list(self.argv)}
        if self.profiler is not None:
            out["profiler"] = dict(self.profiler)
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Hello:
        profiler = raw.get("profiler")
        return cls(
            pid=int(raw["pid"]),
            tracing=bool(raw.get("tracing")),
            argv=tuple(str(a) for a in raw.get("argv") or ()),
            profiler=dict(profiler) if isinstance(profiler, dict) else None,
        )


@dataclass(frozen=True, slots=True, eq=False)
class HeapSample(_WireView):
    """``heap``: the cheap heap numbers (meanings in :mod:`soakd.agent.heap`) and the tasks."""

    heap_bytes: float
    heap_estimated: float  # 1.0: heap_bytes is blocks × mean block size, not traced bytes
    heap_blocks: float
    traced_bytes: float
    tracemalloc_overhead_bytes: float
    gc_garbage: float
    gc_collections: float
    malloc_bytes: float | None = None  # glibc only
    tasks: float | None = None  # added by the dispatcher, which knows the loop's thread
    profiler_bytes: float | None = None  # the sampled profiler's own tables, while it runs

    def to_json(self) -> dict[str, float]:
        out = {
            "heap_bytes": self.heap_bytes,
            "heap_estimated": self.heap_estimated,
            "heap_blocks": self.heap_blocks,
            "traced_bytes": self.traced_bytes,
            "tracemalloc_overhead_bytes": self.tracemalloc_overhead_bytes,
            "gc_garbage": self.gc_garbage,
            "gc_collections": self.gc_collections,
        }
        if self.malloc_bytes is not None:
            out["malloc_bytes"] = self.malloc_bytes
        if self.tasks is not None:
            out["tasks"] = self.tasks
        if self.profiler_bytes is not None:
            out["profiler_bytes"] = self.profiler_bytes
        return out

    @classmethod
    def from_json(cls, raw: Any) -> HeapSample:
        def opt(key: str) -> float | None:
            value = raw.get(key)
            return None if value is None else float(value)

        return cls(
            heap_bytes=float(raw["heap_bytes"]),
            heap_estimated=float(raw["heap_estimated"]),
            heap_blocks=float(raw["heap_blocks"]),
            traced_bytes=float(raw["traced_bytes"]),
            tracemalloc_overhead_bytes=float(raw["tracemalloc_overhead_bytes"]),
            gc_garbage=float(raw["gc_garbage"]),
            gc_collections=float(raw["gc_collections"]),
            malloc_bytes=opt("malloc_bytes"),
            tasks=opt("tasks"),
            profiler_bytes=opt("profiler_bytes"),
        )


@dataclass(frozen=True, slots=True, eq=False)
class TypesSample(_WireView):
    """``types``: live gc-tracked objects per type name; reads as that mapping."""

    counts: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, int]:
        return dict(self.counts)

    @classmethod
    def from_json(cls, raw: Any) -> TypesSample:
        return cls({str(k): int(v) for k, v in raw.items()})


@dataclass(frozen=True, slots=True, eq=False)
class SitesResult(_WireView):
    """``sites``: the live traces grouped by site, and what the grouping cost.

    ``own_blocks`` are soakd's own small blocks (which ``sys.getallocatedblocks()`` counts),
    ``pause_s`` the GIL-holding copy of the traces; ``snapshot_path`` and ``write_s`` are set
    only when a snapshot file was asked for, ``snapshot`` (a ``soakd.snapshot/1`` document)
    when it was asked for in the answer. ``sampling_interval`` is set when the sites come
    from the sampled profiler: sizes and counts are then estimates with a ``variance``.
    """

    sites: tuple[SnapshotSite, ...]  # the top ``max_sites`` by size
    traced_bytes: int
    overhead_bytes: int
    blocks: int
    skipped_bytes: int  # soakd's own
    own_blocks: int
    pause_s: float
    group_s: float
    tracing: bool
    snapshot_path: str | None = None
    write_s: float | None = None
    sampling_interval: int | None = None
    # CPU time the agent's thread spent on this request: its work in the target, where the
    # wall-clock times above also count waiting for the target's GIL.
    cpu_s: float = 0.0
    snapshot: Mapping[str, Any] | None = None

    def with_lines(self, lines: Callable[[str], str | None]) -> SitesResult:
        """The watcher's side: each site's source line read by ``lines`` where the agent sent
        none (an agent serving a watcher reads no source in the target), in the snapshot too."""
        sites = tuple(s if s.line else replace(s, line=lines(s.site)) for s in self.sites)
        snapshot = self.snapshot
        if snapshot is not None and isinstance(snapshot.get("sites"), list):
            entries = [
                {**e, "line": lines(e["site"])}
                if isinstance(e, dict) and e.get("line") is None and isinstance(e.get("site"), str)
                else e
                for e in snapshot["sites"]
            ]
            snapshot = {**snapshot, "sites": entries}
        return replace(self, sites=sites, snapshot=snapshot)

    def saved(self, path: str) -> SitesResult:
        """Writes the snapshot the agent sent in this answer to ``path`` (the watcher writes it:
        an agent never writes a file its peer names); the answer without the document, with
        ``snapshot_path`` and ``write_s``. A malformed document: SnapshotError, nothing written."""
        from soakd.snapshots import write_snapshot

        if self.snapshot is None:
            return self
        started = time.perf_counter()
        written = os.fspath(write_snapshot(path, self.snapshot))
        return replace(
            self, snapshot=None, snapshot_path=written, write_s=time.perf_counter() - started
        )

    @classmethod
    def not_tracing(cls, overhead_bytes: int) -> SitesResult:
        """The answer while tracemalloc is off: no sites, nothing paused."""
        return cls((), 0, overhead_bytes, 0, 0, 0, 0.0, 0.0, tracing=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sites": [_site_json(site) for site in self.sites],
            "traced_bytes": self.traced_bytes,
            "overhead_bytes": self.overhead_bytes,
            "blocks": self.blocks,
            "skipped_bytes": self.skipped_bytes,
            "own_blocks": self.own_blocks,
            "pause_s": self.pause_s,
            "group_s": self.group_s,
            "tracing": self.tracing,
        }
        if self.snapshot_path is not None:
            out["snapshot_path"] = self.snapshot_path
        if self.write_s is not None:
            out["write_s"] = self.write_s
        if self.sampling_interval is not None:
            out["sampling_interval"] = self.sampling_interval
        out["cpu_s"] = self.cpu_s
        if self.snapshot is not None:
            out["snapshot"] = dict(self.snapshot)
        return out

    @classmethod
    def from_json(cls, raw: Any) -> SitesResult:
        write_s = raw.get("write_s")
        path = raw.get("snapshot_path")
        return cls(
            sites=tuple(
                SnapshotSite(
                    site=str(s["site"]),
                    traceback=tuple(str(f) for f in s.get("traceback") or ()),
                    line=None if s.get("line") is None else str(s["line"]),
                    size=int(s["size"]),
                    count=int(s["count"]),
                    variance=float(s.get("variance") or 0.0),
                    churn=float(s.get("churn") or 0.0),
                    coarse=int(s.get("coarse") or 0),
                )
                for s in raw.get("sites") or ()
            ),
            traced_bytes=int(raw.get("traced_bytes", 0)),
            overhead_bytes=int(raw.get("overhead_bytes", 0)),
            blocks=int(raw.get("blocks", 0)),
            skipped_bytes=int(raw.get("skipped_bytes", 0)),
            own_blocks=int(raw.get("own_blocks", 0)),
            pause_s=float(raw.get("pause_s", 0.0)),
            group_s=float(raw.get("group_s", 0.0)),
            tracing=bool(raw.get("tracing", True)),
            snapshot_path=None if path is None else str(path),
            write_s=None if write_s is None else float(write_s),
            sampling_interval=(
                None if raw.get("sampling_interval") is None else int(raw["sampling_interval"])
            ),
            cpu_s=float(raw.get("cpu_s", 0.0)),
            snapshot=dict(raw["snapshot"]) if isinstance(raw.get("snapshot"), dict) else None,
        )


@dataclass(frozen=True, slots=True, eq=False)
class TracingState(_WireView):
    """``start_tracing`` / ``stop_tracing``: whether tracemalloc traces now."""

    tracing: bool

    def to_json(self) -> dict[str, bool]:
        return {"tracing": self.tracing}

    @classmethod
    def from_json(cls, raw: Any) -> TracingState:
        return cls(bool(raw["tracing"]))


Answer = Hello | HeapSample | TypesSample | SitesResult | TracingState | int


def _site_json(site: SnapshotSite) -> dict[str, Any]:
    """A site on the wire: its snapshot-file form plus the sampled noise terms in force."""
    out = site.to_json()
    if site.churn:
        out["churn"] = site.churn
    if site.coarse:
        out["coarse"] = site.coarse
    return out


def encode(answer: Answer) -> Any:
    """The JSON value sent for ``answer``."""
    return answer if isinstance(answer, int) else answer.to_json()


def sites_params(params: Mapping[str, Any]) -> tuple[str | None, str, float | None]:
    """``(snapshot_path, role, t)`` of a ``sites`` request; TypeError when malformed."""
    path = params.get("snapshot_path")
    role = params.get("role", "latest")
    t = params.get("t")
    if path is not None and not isinstance(path, str):
        raise TypeError("snapshot_path must be a string or null")
    if not isinstance(role, str):
        raise TypeError("role must be a string")
    if t is not None and (
        not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t)
    ):
        raise TypeError("t must be a finite number or null")
    return path, role, None if t is None else float(t)


def dispatch(
    agent: Agent,
    op: str,
    params: Mapping[str, Any],
    *,
    tasks: Callable[[], int],
    files: bool = True,
) -> Answer:
    """Run one operation on ``agent``; blocking, so call it off the event loop.

    ``tasks`` counts the target's asyncio tasks from this thread (how depends on who hosts the
    agent). ``files=False`` (an untrusted peer) refuses a ``sites`` snapshot_path with
    PermissionError: the peer gets the snapshot in the answer (``snapshot: true``) instead.
    Raises ValueError for an unknown ``op``, TypeError for malformed ``params``.
    """
    if op == "ping":
        return _hello(agent)
    if op == "heap":
        # The supervisor reads the task count from the heap sample: one request per interval.
        return replace(agent.heap(), tasks=float(tasks()))
    if op == "types":
        return agent.types(collect=_flag(params, "collect"))
    if op == "tasks":
        return tasks()
    if op == "start_tracing":
        agent.start_tracing()
        return TracingState(agent.tracing)
    if op == "stop_tracing":
        agent.stop_tracing()
        return TracingState(agent.tracing)
    if op == "sites":
        path, role, t = sites_params(params)
        if path is not None and not files:
            raise PermissionError(
                "the agent writes no file its peer names: ask with snapshot=true and write"
                " the answer's snapshot yourself"
            )
        return agent.sites(path, role, t=t, inline=_flag(params, "snapshot"))
    if op == "profile":
        interval = params.get("interval")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
            raise TypeError("interval must be a positive integer (bytes)")
        agent.set_profiler_interval(interval)
        return _hello(agent)  # with the profiler's status after the restart
    raise ValueError(f"unknown op {op!r}")


def _flag(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false")
    return value


def _hello(agent: Agent) -> Hello:
    return Hello(
        pid=os.getpid(),
        tracing=agent.tracing,
        argv=tuple(sys.argv[:8]),
        profiler=agent.profiler_status(),
    )
