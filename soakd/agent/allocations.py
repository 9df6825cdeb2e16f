"""Allocation sites: tracemalloc traces grouped by the innermost frame that belongs to the target.

Why not ``Snapshot.statistics()`` or ``compare_to()``: at 1M traced blocks they take seconds
(they build a Python object per trace). Here the raw traces from ``_tracemalloc._get_traces()``
are grouped by their traceback *object* — tracemalloc hands out one shared tuple per distinct
traceback — and every distinct traceback is resolved to its site once, then cached.

The grouping loop runs while tracemalloc traces this very thread, so it avoids creating objects
per trace: each traced allocation costs about a microsecond. Traces are appended to one list
per traceback (appends only reallocate now and then) and summed with ``sum(map(...))``, which
adds in C without allocating intermediate integers.
"""

from __future__ import annotations

import os
import sysconfig
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import soakd
from soakd.profiler import StackEstimate
from soakd.snapshots import SnapshotSite, group_sites

__all__ = [
    "SiteGroup",
    "SiteResolver",
    "TraceGroups",
    "collect_sampled",
    "collect_traces",
    "default_excluded",
]

# The traceback tracemalloc stores per trace: innermost frame first, (filename, lineno) pairs.
RawTraceback = tuple[tuple[str, int], ...]


def _dirs(path: str) -> tuple[str, ...]:
    """The directory of ``path`` as imported and resolved: in a target's interpreter soakd is
    imported through a symlink (soakd.supervisor.interpreter), and frames carry that path."""
    return tuple(
        dict.fromkeys(str(p) + os.sep for p in (Path(path).parent, Path(path).resolve().parent))
    )


_SOAKD_DIR = _dirs(soakd.__file__ or "")
# The bundled reference aggregator is a soak *target*: its leaks must be attributed to it.
_SOAKD_TARGET_DIRS = tuple(d + "reference" + os.sep for d in _SOAKD_DIR)
_AGENT_DIR = _dirs(__file__)
_RESOLVED_CACHE_LIMIT = 200_000
# CPython's small-object threshold: larger requests go to malloc and are not counted as blocks.
_PYMALLOC_MAX = 512


def default_excluded() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(stdlib prefixes, third-party prefixes that live under the stdlib directory)."""
    paths = sysconfig.get_paths()
    stdlib = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if paths.get(k)}
    stdlib |= {paths[k] for k in ("stdlib", "platstdlib") if paths.get(k)}
    # site-packages usually sits inside lib/pythonX.Y: third-party code is not "the stdlib".
    third = {paths[k] for k in ("purelib", "platlib") if paths.get(k)}
    third |= {os.path.realpath(p) for p in third}
    return (
        tuple(sorted(p.rstrip(os.sep) + os.sep for p in stdlib)),
        tuple(sorted(p.rstrip(os.sep) + os.sep for p in third)),
    )


# One definition for the agent's groups and the snapshot file's entries: the agent writes its
# groups into snapshots as they are.
SiteGroup = SnapshotSite


class SiteResolver:
    """Maps a raw traceback to (site, formatted traceback, source line); None = soakd's own.

    A frame is "the target" unless its file is in the standard library, in soakd itself (the
    bundled ``soakd.reference`` target excepted), under one of ``exclude``, or ``<frozen ...>``
    / ``<unknown>``. The site is the innermost target frame. A traceback with no target frame
    but with a soakd frame is soakd's own allocation and is skipped; one made only of stdlib
    frames (interpreter caches, asyncio internals deeper than the frame limit) keeps its
    innermost frame as the site so that it stays visible.

    ``lines`` reads a site's source line (``"path:lineno"`` -> text); without it the line is
    None, for the watcher to read on its side (see :mod:`soakd.sources`).
    """

    def __init__(
        self,
        frames: int,
        exclude: Sequence[str] = (),
        lines: Callable[[str], str | None] | None = None,
    ) -> None:
        self.frames = frames
        self._lines = lines
        self._stdlib, self._third_party = default_excluded()
        self._extra = tuple(os.path.abspath(p) for p in exclude)
        self._file_kind: dict[str, int] = {}  # 0 target, 1 stdlib/frozen, 2 soakd/excluded, 3 agent
        self._abs: dict[str, str] = {}
        self._resolved: dict[RawTraceback, tuple[str, tuple[str, ...], str | None] | None] = {}

    def file_kind(self, filename: str) -> int:
        kind = self._file_kind.get(filename)
        if kind is None:
            kind = self._classify(filename)
            self._file_kind[filename] = kind
        return kind

    def _classify(self, filename: str) -> int:
        if filename.startswith("<"):  # <frozen ...>, <unknown>, <string> (namedtuple, dataclass)
            return 1
        path = self._absolute(filename)
        if path.startswith(_AGENT_DIR):
            return 3
        if path.startswith(_SOAKD_DIR) and not path.startswith(_SOAKD_TARGET_DIRS):
            return 2
        if self._extra and path.startswith(self._extra):
            return 2
        if path.startswith(self._stdlib) and not path.startswith(self._third_party):
            return 1
        return 0

    def _absolute(self, filename: str) -> str:
        path = self._abs.get(filename)
        if path is None:
            path = filename if filename.startswith("<") else os.path.abspath(filename)
            self._abs[filename] = path
        return path

    def resolve(self, raw: RawTraceback) -> tuple[str, tuple[str, ...], str | None] | None:
        cached = self._resolved.get(raw, False)
        if cached is not False:
            return cached  # type: ignore[return-value]  # False is only the miss marker
        result = self._resolve(raw)
        if len(self._resolved) >= _RESOLVED_CACHE_LIMIT:
            self._resolved.clear()  # bounded: a long soak must not grow the agent itself
        self._resolved[raw] = result
        return result

    def _resolve(self, raw: RawTraceback) -> tuple[str, tuple[str, ...], str | None] | None:
        frames = raw[: self.frames]
        site_index = -1
        has_soakd = False
        for i, (filename, _lineno) in enumerate(frames):
            kind = self.file_kind(filename)
            if kind == 0:
                site_index = i
                break
            if kind == 3 and not has_soakd:
                return None  # the agent's own work, even when a target frame called it
            if kind >= 2:
                has_soakd = True
        if site_index < 0:
            if has_soakd or not frames:
                return None
            site_index = 0
        formatted = tuple(f"{self._absolute(f)}:{n}" for f, n in frames)
        site = formatted[site_index]
        return site, formatted, self._lines(site) if self._lines is not None else None


@dataclass(frozen=True, slots=True)
class TraceGroups:
    """Live traces grouped per distinct traceback, resolved to sites."""

    by_traceback: list[SiteGroup]  # soakd's own allocations left out
    traced_bytes: int  # every trace, soakd's own included
    blocks: int
    skipped_bytes: int  # soakd's own
    # soakd's own blocks that ``sys.getallocatedblocks()`` counts (pymalloc's, <= 512 B): the
    # agent's tables, left out of the heap level so that they never read as the target's growth.
    own_blocks: int
    pause_s: float  # the copy of tracemalloc's tables, which holds the GIL throughout
    group_s: float
    # Sampled profiler: per site, the final churn of its stacks released by this snapshot.
    released_churn: Mapping[str, float] = field(default_factory=dict)

    def by_site(self) -> list[SiteGroup]:
        """Merge traceback groups per site, largest first; the heaviest traceback represents it."""
        return group_sites(self.by_traceback, "line")


def collect_traces(resolver: SiteResolver) -> TraceGroups:
    """Copy tracemalloc's traces and group them; the copy is dropped before returning."""
    start = time.perf_counter()
    # Private but stable since 3.4 and what take_snapshot() itself calls; it skips building
    # a Snapshot wrapper we do not need.
    traces: list[tuple[int, int, RawTraceback, int]] = tracemalloc._get_traces()  # type: ignore[attr-defined]
    copied = time.perf_counter()
    groups: dict[RawTraceback, list[tuple[int, int, RawTraceback, int]]] = {}
    get = groups.get
    for trace in traces:
        tb = trace[2]
        bucket = get(tb)
        if bucket is None:
            groups[tb] = [trace]
        else:
            bucket.append(trace)
    blocks = len(traces)
    del traces
    size_of = itemgetter(1)
    out: list[SiteGroup] = []
    traced = 0
    skipped = 0
    own_blocks = 0
    for tb, bucket in groups.items():
        size = sum(map(size_of, bucket))
        traced += size
        resolved = resolver.resolve(tb)
        if resolved is None:
            skipped += size
            own_blocks += sum(1 for trace in bucket if trace[1] <= _PYMALLOC_MAX)
            continue
        site, formatted, line = resolved
        out.append(SiteGroup(site, formatted, line, size, len(bucket)))
    del groups
    out.sort(key=lambda g: -g.size)
    done = time.perf_counter()
    return TraceGroups(
        by_traceback=out,
        traced_bytes=traced,
        blocks=blocks,
        skipped_bytes=skipped,
        own_blocks=own_blocks,
        pause_s=copied - start,
        group_s=done - copied,
    )


def collect_sampled(
    resolver: SiteResolver,
    stacks: Sequence[StackEstimate],
    released: Sequence[tuple[RawTraceback, float]] = (),
) -> TraceGroups:
    """Group the sampled profiler's live stacks like traces: sizes and counts are estimates.

    The profiler hands out one entry per distinct stack, already summed in C, so this loop runs
    over a few thousand entries at most, and ``pause_s`` is the profiler's own table walk.
    """
    start = time.perf_counter()
    out: list[SiteGroup] = []
    total = 0.0
    blocks = 0.0
    skipped = 0.0
    own_blocks = 0.0
    for stack in stacks:
        total += stack.est_bytes
        blocks += stack.est_blocks
        resolved = resolver.resolve(stack.frames)
        if resolved is None:
            skipped += stack.est_bytes
            if stack.est_blocks and stack.est_bytes / stack.est_blocks <= _PYMALLOC_MAX:
                own_blocks += stack.est_blocks
            continue
        site, formatted, line = resolved
        out.append(
            SiteGroup(
                site,
                formatted,
                line,
                round(stack.est_bytes),
                round(stack.est_blocks),
                stack.variance,
                stack.alloc_w2 + stack.free_w2,
                stack.coarse,
            )
        )
    out.sort(key=lambda g: -g.size)
    gone: dict[str, float] = {}
    for frames, churn in released:
        resolved = resolver.resolve(frames)
        if resolved is not None:
            gone[resolved[0]] = gone.get(resolved[0], 0.0) + churn
    done = time.perf_counter()
    return TraceGroups(
        by_traceback=out,
        traced_bytes=round(total),
        blocks=round(blocks),
        skipped_bytes=round(skipped),
        own_blocks=round(own_blocks),
        pause_s=0.0,
        group_s=done - start,
        released_churn=gone,
    )
