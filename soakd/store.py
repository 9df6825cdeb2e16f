"""The sample store ``samples.db``: its schema, the writer (``SampleStore``) and the one
reader (``RunStore``). SQLite in WAL mode, appended as sampled, readable while the run goes on.

Schema, documented in the README:
- ``meta(key, value)``: run_id, started_at (ISO-8601), started_epoch, target, config (JSON),
  workload_totals (JSON, cumulative, refreshed each interval).
- ``samples(t, series, value)``: t = seconds since the run started; one row per value.
- ``sites(site, traceback, line)``: the traceback (JSON list, innermost first) and source line of
  each allocation site seen, keyed by ``file:line``.
- ``workload(t, stats)``: per-interval workload stats (JSON).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soakd.coerce import opt_str, text
from soakd.errors import StoreError
from soakd.rundir import create_file

__all__ = [
    "SCHEMA",
    "Bucket",
    "Point",
    "RunStore",
    "SampleStore",
    "SeriesGrowth",
    "Site",
    "buckets_to_points",
]

Point = tuple[float, float]
MAX_POINTS = 1500
_FINITE = "BETWEEN -1e300 AND 1e300"  # also drops NaN/inf and non-numeric text of a foreign db
_TABLES = frozenset({"meta", "samples", "sites"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples(t REAL NOT NULL, series TEXT NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS samples_series_t ON samples(series, t, value);
CREATE TABLE IF NOT EXISTS sites(site TEXT PRIMARY KEY, traceback TEXT NOT NULL, line TEXT);
CREATE TABLE IF NOT EXISTS workload(t REAL NOT NULL, stats TEXT NOT NULL);
"""


class SampleStore:
    """The writer of ``samples.db``, held by the supervisor's run recorder (the only writer).

    Each call commits: a SIGKILL loses at most the batch being written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # Created here with the run directory's file mode: SQLite gives its -wal and -shm files
        # the database file's mode, so all three stay as private as the directory.
        os.close(create_file(path, os.O_WRONLY))
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # append-only: a small page cache is enough, and it bounds the supervisor's memory
        self._db.execute("PRAGMA cache_size=-1024")
        self._db.executescript(SCHEMA)
        self._known_sites: set[str] = set()

    def set_meta(self, key: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, text))

    def add(self, t: float, values: Mapping[str, float]) -> None:
        rows = [(t, k, float(v)) for k, v in values.items() if v is not None]
        if rows:
            with self._db:
                self._db.executemany("INSERT INTO samples(t, series, value) VALUES (?,?,?)", rows)

    def add_site(self, site: str, traceback: Sequence[str], line: str | None) -> None:
        if site in self._known_sites:
            return
        if len(self._known_sites) < 100_000:  # bounded memo; the table itself dedupes
            self._known_sites.add(site)
        self._db.execute(
            "INSERT OR IGNORE INTO sites(site, traceback, line) VALUES (?,?,?)",
            (site, json.dumps(list(traceback)), line),
        )

    def add_workload(self, t: float, stats: Mapping[str, Any]) -> None:
        self._db.execute("INSERT INTO workload(t, stats) VALUES (?, ?)", (t, json.dumps(stats)))

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass


@dataclass(frozen=True)
class Bucket:
    """One time bucket of a series: its time span and its min, max and mean value."""

    t_lo: float
    t_hi: float
    v_min: float
    v_max: float
    v_avg: float


def buckets_to_points(buckets: Sequence[Bucket]) -> list[Point]:
    """Two points per bucket (min and max), ordered by the local direction of the series.

    Emitting min then max on a rising stretch (max then min on a falling one) keeps monotone
    series monotone on screen while spikes inside a bucket stay visible.
    """
    out: list[Point] = []
    for i, b in enumerate(buckets):
        if b.v_min == b.v_max or b.t_lo == b.t_hi:
            out.append(((b.t_lo + b.t_hi) / 2, b.v_avg if b.v_min != b.v_max else b.v_min))
            continue
        prev_avg = buckets[i - 1].v_avg if i > 0 else b.v_avg
        next_avg = buckets[i + 1].v_avg if i + 1 < len(buckets) else b.v_avg
        if next_avg - prev_avg >= 0:
            out += [(b.t_lo, b.v_min), (b.t_hi, b.v_max)]
        else:
            out += [(b.t_lo, b.v_max), (b.t_hi, b.v_min)]
    return out


@dataclass(frozen=True)
class SeriesGrowth:
    """A series' first and last value (growth = last - first)."""

    name: str
    first: float
    last: float
    t_first: float
    t_last: float

    @property
    def growth(self) -> float:
        return self.last - self.first


@dataclass(frozen=True)
class Site:
    """Where an allocation site's memory comes from: its traceback and source line."""

    traceback: tuple[str, ...]
    line: str | None


def _check_store_files(path: Path) -> None:
    """samples.db and its companions must be regular files, not links: SQLite follows links
    and blocks opening a FIFO, and a foreign run directory may hold either."""
    for name in ("", "-wal", "-shm", "-journal"):
        companion = path.with_name(path.name + name)
        try:
            st = os.lstat(companion)
        except FileNotFoundError:
            if name:
                continue
            raise StoreError(f"{path}: no such file") from None
        except OSError as exc:
            raise StoreError(f"cannot read {companion}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(
                f"{companion} is not a regular file (a link, FIFO or device); soakd reads only "
                "regular files in a run directory"
            )


class RunStore:
    """The read side of ``samples.db``, also mid-run and on a store from another box.

    Opened through a read-only URI: reading never writes or creates a file. Used by the
    summary, the reports, ``status``, ``compare`` and the pytest plugin.

    ``strict`` (the default) is for stores a person hands in: the file must hold a soakd
    store's tables, any SQLite failure is a ``StoreError`` naming the file, and ``meta`` is
    bounded text. ``strict=False`` raises ``FileNotFoundError`` for a missing file and keeps
    SQLite's own errors and the stored meta values, for callers that word their own message.
    Point, name and bucket reads (``edge``, ``raw``, ``plot``, ``growth``) drop non-finite
    values in SQL; whole-series reads (``series``, ``bounds``, ``buckets``) return rows as
    stored.
    """

    def __init__(self, path: Path, *, strict: bool = True) -> None:
        if not strict and not os.path.lexists(path):
            raise FileNotFoundError(path)
        _check_store_files(path)
        self.path = path
        self.strict = strict
        uri = f"{path.resolve().as_uri()}?mode=ro"
        if not strict:
            self.db = sqlite3.connect(uri, uri=True)
            return
        try:
            self.db = sqlite3.connect(uri, uri=True)
            rows = self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            tables = {r[0] for r in rows}
        except sqlite3.Error as exc:
            raise StoreError(f"{path} is not a readable SQLite database: {exc}") from None
        missing = _TABLES - tables
        if missing:
            self.db.close()
            raise StoreError(f"{path} is not a soakd sample store (missing {sorted(missing)})")

    def close(self) -> None:
        self.db.close()

    def _q(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if not self.strict:
            return self.db.execute(sql, params).fetchall()
        try:
            return self.db.execute(sql, params).fetchall()
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            raise StoreError(f"{self.path}: cannot read the sample store: {exc}") from None

    # -- run metadata

    def meta(self) -> dict[str, str]:
        if not self.strict:
            return dict(self._q("SELECT key, value FROM meta"))
        return {
            str(k): v if isinstance(v, str) else str(v)
            for k, v in self._q("SELECT key, value FROM meta LIMIT 10000")
        }

    def last_t(self, names: Sequence[str] | None = None) -> float | None:
        """The newest sample time: of ``names`` (index lookups, not a scan), else of any."""
        if names is None:
            row = self._q("SELECT MAX(t) FROM samples")
            return None if not row or row[0][0] is None else float(row[0][0])
        times = [p[0] for p in (self.edge(n, last=True) for n in names) if p is not None]
        return max(times) if times else None

    def last_workload_t(self) -> float | None:
        row = self._q("SELECT MAX(t) FROM workload")
        return None if not row or row[0][0] is None else float(row[0][0])

    # -- bounded, finite reads (reports, status)

    def edge(self, name: str, *, last: bool) -> Point | None:
        """The first (or last) finite point of one series."""
        rows = self._q(
            f"SELECT t, value FROM samples WHERE series=? AND t {_FINITE} AND value {_FINITE} "
            f"ORDER BY t {'DESC' if last else 'ASC'} LIMIT 1",
            (name,),
        )
        return (float(rows[0][0]), float(rows[0][1])) if rows else None

    def last_value(self, name: str) -> float | None:
        point = self.edge(name, last=True)
        return None if point is None else point[1]

    def names(self, prefix: str, limit: int = 100_000) -> list[str]:
        """Series names starting with ``prefix``: one index seek per name (skip scan)."""
        out: list[str] = []
        hi = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        cur = prefix
        while len(out) < limit:
            rows = self._q(
                "SELECT series FROM samples WHERE series > ? AND series < ? "
                "ORDER BY series LIMIT 1",
                (cur, hi),
            )
            if not rows or not isinstance(rows[0][0], str):
                return out
            cur = rows[0][0]
            out.append(cur)
        return out

    def longest_silence(self, name: str, end: float) -> float:
        """The longest time between points of ``name`` with a value above 0 (and from the last
        to ``end``), less one typical spacing: a series of per-interval counts then gives the
        longest time in which nothing was counted. 0 without points."""
        times = [
            float(r[0])
            for r in self._q(
                f"SELECT t FROM samples WHERE series=? AND t {_FINITE} AND value > 0 "
                f"AND value {_FINITE} ORDER BY t",
                (name,),
            )
        ]
        every = [
            float(r[0])
            for r in self._q(
                f"SELECT t FROM samples WHERE series=? AND t {_FINITE} ORDER BY t LIMIT 64",
                (name,),
            )
        ]
        if not every:
            return 0.0
        spacing = sorted(b - a for a, b in itertools.pairwise(every))
        dt = spacing[len(spacing) // 2] if spacing else 0.0
        marks = [every[0] - dt, *times, end]
        return max(0.0, max(b - a for a, b in itertools.pairwise(marks)) - dt)

    def raw(self, name: str, since: float | None = None) -> list[Point]:
        """Every finite point of one series (optionally from ``since``), for statistics."""
        rows = self._q(
            f"SELECT t, value FROM samples WHERE series=? AND t {_FINITE} AND value {_FINITE} "
            "AND t >= ? ORDER BY t",
            (name, -1e300 if since is None else since),
        )
        return [(float(t), float(v)) for t, v in rows]

    def plot(self, name: str, max_points: int = MAX_POINTS) -> list[Point]:
        """One series downsampled by min/max buckets to at most ``max_points`` points."""
        where = f"series=? AND t {_FINITE} AND value {_FINITE}"
        rows = self._q(f"SELECT MIN(t), MAX(t), COUNT(*) FROM samples WHERE {where}", (name,))
        t0, t1, count = rows[0] if rows else (None, None, 0)
        if not count:
            return []
        if count <= max_points:
            return self.raw(name)
        n = max(1, max_points // 2)
        width = (float(t1) - float(t0)) / n or 1.0
        rows = self._q(
            "SELECT MIN(CAST((t - ?) / ? AS INTEGER), ?) AS b, MIN(t), MAX(t), "
            f"MIN(value), MAX(value), AVG(value) FROM samples WHERE {where} GROUP BY b ORDER BY b",
            (t0, width, n - 1, name),
        )
        return buckets_to_points([Bucket(*(float(c) for c in row[1:])) for row in rows])

    def growth(self, prefix: str) -> list[SeriesGrowth]:
        """First/last value of every series named ``prefix*``, most growth first."""
        out = []
        for name in self.names(prefix):
            first, last = self.edge(name, last=False), self.edge(name, last=True)
            if first is not None and last is not None:
                out.append(SeriesGrowth(name, first[1], last[1], first[0], last[0]))
        out.sort(key=lambda g: g.growth, reverse=True)
        return out

    def sites(self, names: Sequence[str]) -> dict[str, Site]:
        """The traceback and line of each named site the store knows (bounded text)."""
        out: dict[str, Site] = {}
        for name in names:
            rows = self._q("SELECT traceback, line FROM sites WHERE site=? LIMIT 1", (name,))
            if rows:
                out[name] = Site(_traceback(rows[0][0]), opt_str(rows[0][1]))
        return out

    # -- whole-series reads (summary, pytest plugin)

    def series_names(self) -> list[str]:
        return [r[0] for r in self._q("SELECT DISTINCT series FROM samples")]

    def series(self, name: str) -> list[Point]:
        rows = self._q("SELECT t, value FROM samples WHERE series=? ORDER BY t", (name,))
        return [(float(t), float(v)) for t, v in rows]

    def series_like(self, prefix: str) -> dict[str, list[Point]]:
        out: dict[str, list[Point]] = {}
        rows = self._q(
            "SELECT series, t, value FROM samples WHERE series >= ? AND series < ? ORDER BY t",
            (prefix, prefix + "\U0010ffff"),
        )
        for name, t, v in rows:
            out.setdefault(name, []).append((float(t), float(v)))
        return out

    def bounds(self, name: str) -> tuple[float, float, float] | None:
        """(first, last, peak) value of a series, computed in SQLite (no rows in Python)."""
        q = "SELECT value FROM samples WHERE series=? ORDER BY t {} LIMIT 1"
        first = self._q(q.format("ASC"), (name,))
        if not first:
            return None
        last = self._q(q.format("DESC"), (name,))
        ((peak,),) = self._q("SELECT MAX(value) FROM samples WHERE series=?", (name,))
        return float(first[0][0]), float(last[0][0]), float(peak)

    def buckets(self, name: str, since: float, count: int = 300) -> list[Point]:
        """The series from ``since`` on, averaged into at most ``count`` time buckets.

        Memory stays bounded however long the run: a checkpoint after 24 h reads 300 rows.
        """
        span = self._q("SELECT MIN(t), MAX(t) FROM samples WHERE series=? AND t>=?", (name, since))
        if not span or span[0][0] is None:
            return []
        lo, hi = span[0]
        width = max((hi - lo) / count, 1e-9)
        rows = self._q(
            "SELECT AVG(t), AVG(value) FROM samples WHERE series=? AND t>=? "
            "GROUP BY CAST((t - ?) / ? AS INTEGER) ORDER BY 1",
            (name, since, lo, width),
        )
        return [(float(t), float(v)) for t, v in rows]

    def all_sites(self) -> dict[str, tuple[list[str], str | None]]:
        """Every site's traceback (as stored) and line."""
        rows = self._q("SELECT site, traceback, line FROM sites")
        return {s: (json.loads(tb), line) for s, tb, line in rows}

    def workload(self) -> Iterable[tuple[float, dict[str, Any]]]:
        for t, stats in self._q("SELECT t, stats FROM workload ORDER BY t"):
            yield float(t), json.loads(stats)


def _traceback(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, str) or len(raw) > 1_000_000:
        return ()
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return ()
    if not isinstance(value, list):
        return ()
    return tuple(text(f, 1000) for f in value[:200] if isinstance(f, str))
