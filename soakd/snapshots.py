"""Heap snapshots in soakd's own safe format, ``soakd.snapshot/1``, and their diff.

A snapshot file is gzip-compressed UTF-8 JSON (never pickle: a run directory may come from
another box, and reading it must not run code)::

    {"schema": "soakd.snapshot/1",
     "taken_at": "2026-01-01T00:00:00+00:00",   # ISO-8601
     "t": 12.5,                                  # seconds since the run started, or null
     "role": "baseline",                         # baseline | latest | final | any short label
     "traced_bytes": 123456,                     # all bytes tracemalloc traced at that moment
     "frames": 8,                                # traceback depth tracemalloc kept
     "sites": [{"site": "/abs/app.py:42",        # innermost frame not in the stdlib or soakd
                "traceback": ["/abs/app.py:42", "/abs/main.py:7"],   # innermost first
                "line": "cache.append(item)",    # stripped source line, or null
                "size": 4096, "count": 16,       # bytes and blocks still allocated there
                "variance": 1.2e9}],             # only when sampled: the estimate's variance
     "sampling": {"interval": 524288}}           # only when sampled (absent: exact tracing)

When ``sampling`` is present, the snapshot comes from soakd's sampled allocation profiler: each
entry's ``size`` and ``count`` are unbiased estimates (rounded to integers), ``variance`` is the
variance of the size estimate, and ``traced_bytes`` is the estimated total. Without it, the
figures are tracemalloc's exact ones (readers of the first version see the same fields).

``sites`` holds the largest groups of live allocations sharing one *traceback* (so one ``site``
may appear in several entries, one per distinct caller chain); :meth:`Snapshot.by_site` merges
them per line. Readers ignore unknown top-level keys, so the format can be extended.

Reading is strict: the decompressed size is capped, every field is type-checked, and any
damage ends in :class:`~soakd.errors.SnapshotError` (exit 2) naming the file, never a traceback.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from soakd.errors import EXIT_USAGE, RunDirError, SnapshotError
from soakd.rundir import open_regular, write_atomic

__all__ = [
    "MAX_DECOMPRESSED_BYTES",
    "SCHEMA",
    "DiffRow",
    "Snapshot",
    "SnapshotSite",
    "diff_snapshots",
    "group_sites",
    "read_snapshot",
    "write_snapshot",
]

SCHEMA = "soakd.snapshot/1"
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
# Bounds that no honest snapshot reaches; past them the file is damaged or hostile.
_MAX_SITES = 100_000
_MAX_FRAMES = 1_000
_MAX_TEXT = 8_192
_MAX_INT = 2**62

GroupBy = Literal["line", "traceback"]


@dataclass(frozen=True, slots=True)
class SnapshotSite:
    """Live allocations that share one traceback (or one site, after :meth:`Snapshot.by_site`)."""

    site: str
    traceback: tuple[str, ...]
    line: str | None
    size: int
    count: int
    variance: float = 0.0  # of ``size``, when it is a sampled estimate; 0: exact
    # Sampled: cumulative variance terms of the samples allocated and freed here (bound the
    # variance of the growth between two snapshots); not written to snapshot files.
    churn: float = 0.0
    # Sampled: live samples taken at an interval coarser than the current one (after a zoom);
    # not written to snapshot files.
    coarse: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "site": self.site,
            "traceback": list(self.traceback),
            "line": self.line,
            "size": self.size,
            "count": self.count,
        }
        if self.variance:
            out["variance"] = round(self.variance, 1)
        return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One parsed ``soakd.snapshot/1`` file."""

    taken_at: str
    t: float | None
    role: str
    traced_bytes: int
    frames: int
    sites: tuple[SnapshotSite, ...]
    schema: str = SCHEMA
    sampling_interval: int | None = None  # bytes; None: exact (tracemalloc)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "taken_at": self.taken_at,
            "t": self.t,
            "role": self.role,
            "traced_bytes": self.traced_bytes,
            "frames": self.frames,
            "sites": [site.to_json() for site in self.sites],
            **(
                {"sampling": {"interval": self.sampling_interval}} if self.sampling_interval else {}
            ),
        }

    def by_site(self) -> list[SnapshotSite]:
        """Entries merged per site (file:line), largest first; keeps the largest traceback."""
        return group_sites(self.sites, "line")


@dataclass(frozen=True, slots=True)
class DiffRow:
    """One line of ``soakd diff``: how the bytes and blocks held at a site changed from A to B."""

    site: str
    traceback: tuple[str, ...]
    line: str | None
    size_a: int
    size_b: int
    size_diff: int
    count_a: int
    count_b: int
    count_diff: int
    # Half-width of the 95 % interval of ``size_diff`` when either side is sampled; 0: exact.
    noise: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "traceback": list(self.traceback),
            "line": self.line,
            "size_a": self.size_a,
            "size_b": self.size_b,
            "size_diff": self.size_diff,
            "count_a": self.count_a,
            "count_b": self.count_b,
            "count_diff": self.count_diff,
            **({"noise": round(self.noise)} if self.noise else {}),
        }


def write_snapshot(path: str | os.PathLike[str], data: Snapshot | Mapping[str, Any]) -> Path:
    """Write atomically (temp file + rename): a reader never sees a half-written snapshot.

    A mapping is validated with the reader's rules first, so soakd never writes a file that
    ``soakd diff`` would refuse.
    """
    target = Path(path)
    snapshot = data if isinstance(data, Snapshot) else _parse(dict(data), str(target))
    payload = json.dumps(snapshot.to_json(), separators=(",", ":"), allow_nan=False)
    buffer = io.BytesIO()
    # mtime=0 keeps identical snapshots byte-identical; level 6 is the usual trade-off.
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(payload.encode("utf-8"))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, buffer.getvalue())
    return target


def read_snapshot(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_DECOMPRESSED_BYTES
) -> Snapshot:
    """Read and validate a snapshot; any problem → SnapshotError (exit 2) naming the file."""
    name = str(path)
    try:
        # a regular file only, never through a link: a FIFO or /dev/zero would never end
        with open_regular(Path(name)) as fh, gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            # read(n) decompresses in chunks and stops at n: a gzip bomb costs at most n bytes.
            raw = gz.read(max_bytes + 1)
    except FileNotFoundError:
        raise _bad(name, "no such file") from None
    except RunDirError as exc:
        raise _bad(name, str(exc).removeprefix(name).lstrip(": ")) from None
    except IsADirectoryError:
        raise _bad(name, "is a directory, expected a .json.gz snapshot file") from None
    except PermissionError:
        raise _bad(name, "permission denied") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise _bad(name, f"not a gzip file ({exc})") from None
    except EOFError:
        raise _bad(name, "truncated gzip data (the file was cut short)") from None
    except OSError as exc:
        raise _bad(name, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise _bad(name, f"decompresses to more than {max_bytes} bytes; refusing to read it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(name, f"not UTF-8 text at byte {exc.start}") from None
    del raw
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _bad(name, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise _bad(name, f"not a valid snapshot document ({type(exc).__name__}: {exc})") from None
    return _parse(document, name)


def diff_snapshots(
    a: Snapshot, b: Snapshot, group_by: GroupBy = "line", top: int | None = 20
) -> list[DiffRow]:
    """Rows for every site (or traceback) in A or B, sorted by size growth, largest first.

    Only the top sites of each snapshot are stored, so a site missing from one side counts as
    zero there: growth at a site that just entered the top N is overstated by at most the
    smallest stored size of that snapshot.
    """
    if group_by not in ("line", "traceback"):
        raise ValueError(f"group_by must be 'line' or 'traceback', got {group_by!r}")
    before = {_key(s, group_by): s for s in group_sites(a.sites, group_by)}
    after = {_key(s, group_by): s for s in group_sites(b.sites, group_by)}
    rows: list[DiffRow] = []
    for key in before.keys() | after.keys():
        old = before.get(key)
        new = after.get(key)
        ref = new if new is not None else old
        assert ref is not None  # the key came from one of the two maps
        size_a = old.size if old else 0
        size_b = new.size if new else 0
        count_a = old.count if old else 0
        count_b = new.count if new else 0
        variance = (old.variance if old else 0.0) + (new.variance if new else 0.0)
        rows.append(
            DiffRow(
                site=ref.site,
                traceback=ref.traceback,
                line=ref.line,
                size_a=size_a,
                size_b=size_b,
                size_diff=size_b - size_a,
                count_a=count_a,
                count_b=count_b,
                count_diff=count_b - count_a,
                noise=1.96 * math.sqrt(variance),
            )
        )
    rows.sort(key=lambda r: (-r.size_diff, -r.count_diff, r.site))
    return rows if top is None else rows[: max(top, 0)]


def _key(site: SnapshotSite, group_by: GroupBy) -> str | tuple[str, ...]:
    return site.site if group_by == "line" else site.traceback


def group_sites(sites: Iterable[SnapshotSite], group_by: GroupBy) -> list[SnapshotSite]:
    """Entries merged per site or traceback, largest first; the heaviest entry represents it."""
    merged: dict[str | tuple[str, ...], list[Any]] = {}
    for s in sites:
        key = _key(s, group_by)
        acc = merged.get(key)
        if acc is None:
            merged[key] = [s, s.size, s.count, s.variance, s.churn, s.coarse]
        else:
            if s.size > acc[0].size:
                acc[0] = s  # the heaviest caller chain represents the site
            acc[1] += s.size
            acc[2] += s.count
            acc[3] += s.variance  # the entries' estimates are independent
            acc[4] += s.churn
            acc[5] += s.coarse
    out = [
        SnapshotSite(s.site, s.traceback, s.line, size, count, variance, churn, coarse)
        for s, size, count, variance, churn, coarse in merged.values()
    ]
    out.sort(key=lambda s: (-s.size, s.site))
    return out


class _Invalid(Exception):
    pass


def _parse(document: object, name: str) -> Snapshot:
    try:
        return _parse_document(document)
    except _Invalid as exc:
        raise _bad(name, str(exc)) from None


def _parse_document(doc: object) -> Snapshot:
    if not isinstance(doc, dict):
        raise _Invalid(f"expected a JSON object at the top, got {_kind(doc)}")
    schema = doc.get("schema")
    if schema != SCHEMA:
        raise _Invalid(f"schema is {_short(schema)}, expected {SCHEMA!r}")
    taken_at = _text(doc, "taken_at", "taken_at", nullable=False)
    assert taken_at is not None
    try:
        datetime.fromisoformat(taken_at)
    except ValueError:
        raise _Invalid(f"taken_at is not an ISO-8601 time: {_short(taken_at)}") from None
    t_raw = doc.get("t")
    t: float | None
    if t_raw is None:
        t = None
    elif isinstance(t_raw, int | float) and not isinstance(t_raw, bool):
        t = float(t_raw)
        if not math.isfinite(t) or t < 0:
            raise _Invalid(f"t must be a finite number ≥ 0 or null, got {_short(t_raw)}")
    else:
        raise _Invalid(f"t must be a number or null, got {_kind(t_raw)}")
    role = _text(doc, "role", "role", nullable=False, limit=64)
    assert role is not None
    traced = _int(doc, "traced_bytes", "traced_bytes")
    frames = _int(doc, "frames", "frames")
    if not 1 <= frames <= _MAX_FRAMES:
        raise _Invalid(f"frames must be between 1 and {_MAX_FRAMES}, got {frames}")
    raw_sites = doc.get("sites")
    if not isinstance(raw_sites, list):
        raise _Invalid(f"sites must be a list, got {_kind(raw_sites)}")
    if len(raw_sites) > _MAX_SITES:
        raise _Invalid(f"sites has {len(raw_sites)} entries, more than {_MAX_SITES}")
    sites = tuple(_parse_site(entry, i) for i, entry in enumerate(raw_sites))
    return Snapshot(
        taken_at=taken_at,
        t=t,
        role=role,
        traced_bytes=traced,
        frames=frames,
        sites=sites,
        sampling_interval=_sampling_interval(doc.get("sampling")),
    )


def _sampling_interval(raw: object) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _Invalid(f"sampling must be an object or absent, got {_kind(raw)}")
    interval = _int(raw, "interval", "sampling.interval")
    if interval < 1:
        raise _Invalid("sampling.interval must be ≥ 1 byte")
    return interval


def _parse_site(entry: object, i: int) -> SnapshotSite:
    where = f"sites[{i}]"
    if not isinstance(entry, dict):
        raise _Invalid(f"{where} must be an object, got {_kind(entry)}")
    site = _text(entry, "site", f"{where}.site", nullable=False)
    assert site is not None
    raw_tb = entry.get("traceback")
    if not isinstance(raw_tb, list):
        raise _Invalid(f"{where}.traceback must be a list, got {_kind(raw_tb)}")
    if len(raw_tb) > _MAX_FRAMES:
        raise _Invalid(f"{where}.traceback has {len(raw_tb)} frames, more than {_MAX_FRAMES}")
    frames: list[str] = []
    for j, frame in enumerate(raw_tb):
        if not isinstance(frame, str) or len(frame) > _MAX_TEXT:
            raise _Invalid(f"{where}.traceback[{j}] must be a string ≤ {_MAX_TEXT} characters")
        frames.append(frame)
    line = _text(entry, "line", f"{where}.line", nullable=True)
    return SnapshotSite(
        site=site,
        traceback=tuple(frames),
        line=line,
        size=_int(entry, "size", f"{where}.size"),
        count=_int(entry, "count", f"{where}.count"),
        variance=_variance(entry, where),
    )


def _variance(entry: dict[str, Any], where: str) -> float:
    value = entry.get("variance", 0.0)
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise _Invalid(f"{where}.variance must be a finite number ≥ 0, got {_short(value)}")
    return float(value)


def _text(
    obj: dict[str, Any], key: str, where: str, *, nullable: bool, limit: int = _MAX_TEXT
) -> str | None:
    value = obj.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"{where} must be a string, got {_kind(value)}")
    if len(value) > limit:
        raise _Invalid(f"{where} is {len(value)} characters long, more than {limit}")
    return value


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(f"{where} must be an integer, got {_kind(value)}")
    if not 0 <= value <= _MAX_INT:
        raise _Invalid(f"{where} must be between 0 and {_MAX_INT}, got {_short(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not allowed in a snapshot")


def _bad(name: str, why: str) -> SnapshotError:
    return SnapshotError(f"invalid snapshot {name}: {why}", exit_code=EXIT_USAGE)


def sites_from_groups(groups: Sequence[Mapping[str, Any]]) -> tuple[SnapshotSite, ...]:
    """Build snapshot entries from the agent's plain-dict groups (already validated types)."""
    return tuple(
        SnapshotSite(
            site=str(g["site"]),
            traceback=tuple(g["traceback"]),
            line=g.get("line"),
            size=int(g["size"]),
            count=int(g["count"]),
        )
        for g in groups
    )
