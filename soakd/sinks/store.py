"""The sample store: SQLite in WAL mode, appended as sampled, readable while the run goes on.

Schema (``samples.db``), documented in the README:
- ``meta(key, value)``: run_id, started_at (ISO-8601), started_epoch, target, config (JSON),
  workload_totals (JSON, cumulative, refreshed each interval).
- ``samples(t, series, value)``: t = seconds since the run started; one row per value.
- ``sites(site, traceback, line)``: the traceback (JSON list, innermost first) and source line of
  each allocation site seen, keyed by ``file:line``.
- ``workload(t, stats)``: per-interval workload stats (JSON).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples(t REAL NOT NULL, series TEXT NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS samples_series_t ON samples(series, t, value);
CREATE TABLE IF NOT EXISTS sites(site TEXT PRIMARY KEY, traceback TEXT NOT NULL, line TEXT);
CREATE TABLE IF NOT EXISTS workload(t REAL NOT NULL, stats TEXT NOT NULL);
"""


class SampleStore:
    """Writer side. Each call commits: a SIGKILL loses at most the batch being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
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


class StoreReader:
    """Read side, used by reports, ``soakd report`` and ``soakd status`` (also mid-run)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(path)
        self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)

    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def series_names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT series FROM samples")]

    def series(self, name: str) -> list[tuple[float, float]]:
        cur = self._db.execute("SELECT t, value FROM samples WHERE series=? ORDER BY t", (name,))
        return [(float(t), float(v)) for t, v in cur]

    def series_like(self, prefix: str) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {}
        cur = self._db.execute(
            "SELECT series, t, value FROM samples WHERE series >= ? AND series < ? ORDER BY t",
            (prefix, prefix + "\U0010ffff"),
        )
        for name, t, v in cur:
            out.setdefault(name, []).append((float(t), float(v)))
        return out

    def bounds(self, name: str) -> tuple[float, float, float] | None:
        """(first, last, peak) value of a series, computed in SQLite (no rows in Python)."""
        q = "SELECT value FROM samples WHERE series=? ORDER BY t {} LIMIT 1"
        first = self._db.execute(q.format("ASC"), (name,)).fetchone()
        if first is None:
            return None
        last = self._db.execute(q.format("DESC"), (name,)).fetchone()
        (peak,) = self._db.execute(
            "SELECT MAX(value) FROM samples WHERE series=?", (name,)
        ).fetchone()
        return float(first[0]), float(last[0]), float(peak)

    def buckets(self, name: str, since: float, count: int = 300) -> list[tuple[float, float]]:
        """The series from ``since`` on, averaged into at most ``count`` time buckets.

        Memory stays bounded however long the run: a checkpoint after 24 h reads 300 rows.
        """
        span = self._db.execute(
            "SELECT MIN(t), MAX(t) FROM samples WHERE series=? AND t>=?", (name, since)
        ).fetchone()
        if span is None or span[0] is None:
            return []
        width = max((span[1] - span[0]) / count, 1e-9)
        cur = self._db.execute(
            "SELECT AVG(t), AVG(value) FROM samples WHERE series=? AND t>=? "
            "GROUP BY CAST((t - ?) / ? AS INTEGER) ORDER BY 1",
            (name, since, span[0], width),
        )
        return [(float(t), float(v)) for t, v in cur]

    def last_workload_t(self) -> float | None:
        row = self._db.execute("SELECT MAX(t) FROM workload").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def last_t(self) -> float | None:
        row = self._db.execute("SELECT MAX(t) FROM samples").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def sites(self) -> dict[str, tuple[list[str], str | None]]:
        rows = self._db.execute("SELECT site, traceback, line FROM sites").fetchall()
        return {s: (json.loads(tb), line) for s, tb, line in rows}

    def workload(self) -> Iterable[tuple[float, dict[str, Any]]]:
        for t, stats in self._db.execute("SELECT t, stats FROM workload ORDER BY t"):
            yield float(t), json.loads(stats)

    def close(self) -> None:
        self._db.close()
