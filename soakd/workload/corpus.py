"""Query corpus: weighted, seeded choice of queries, each with a kind for per-kind statistics.

A queries file holds one query per line in any of three forms (mixable; blank lines and lines
starting with ``#`` are skipped):

- ``python asyncio tutorial`` — plain text, kind ``default``, weight 1
- ``complex<TAB>2.5<TAB>design a rate limiter ...`` — kind, weight, text
- ``{"text": "...", "kind": "simple", "weight": 1}`` — a JSON object (kind and weight optional)
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from itertools import accumulate
from pathlib import Path

from soakd.errors import ConfigError
from soakd.workload.settings import QuerySpec, WorkloadSettings

__all__ = ["Corpus", "CorpusEntry", "parse_queries"]

DEFAULT_KIND = "default"
_DEFAULT_FILE = "default_queries.txt"


@dataclass(frozen=True, slots=True)
class CorpusEntry:
    text: str
    kind: str = DEFAULT_KIND
    weight: float = 1.0


class Corpus:
    """Queries picked at random by weight, reproducibly for a given seed."""

    def __init__(
        self, entries: Iterable[CorpusEntry | QuerySpec], *, seed: int | None = None
    ) -> None:
        items = tuple(
            e if isinstance(e, CorpusEntry) else CorpusEntry(e.text, e.kind, e.weight)
            for e in entries
        )
        if not items:
            raise ConfigError("the query corpus is empty; give workload.queries or a queries file")
        for e in items:
            if not (e.weight > 0 and math.isfinite(e.weight)):
                raise ConfigError(f"query weight must be a finite number > 0: {e.weight!r}")
        self.entries: tuple[CorpusEntry, ...] = items
        self.kinds: tuple[str, ...] = tuple(dict.fromkeys(e.kind for e in items))
        self._cum = list(accumulate(e.weight for e in items))
        self._total = self._cum[-1]
        self._rng = random.Random(seed)

    def pick(self) -> CorpusEntry:
        """One entry, chosen with probability proportional to its weight."""
        x = self._rng.random() * self._total
        i = bisect.bisect_right(self._cum, x)
        return self.entries[min(i, len(self.entries) - 1)]

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def default(cls, *, seed: int | None = None) -> Corpus:
        """The built-in corpus: realistic search queries of kinds simple, moderate, complex."""
        text = resources.files(__package__).joinpath(_DEFAULT_FILE).read_text(encoding="utf-8")
        return cls(parse_queries(text, f"<soakd>/{_DEFAULT_FILE}"), seed=seed)

    @classmethod
    def from_file(cls, path: str | Path, *, seed: int | None = None) -> Corpus:
        return cls(read_queries_file(path), seed=seed)

    @classmethod
    def from_config(cls, cfg: WorkloadSettings, queries_path: str | Path | None = None) -> Corpus:
        """``cfg.queries`` plus the queries file (``queries_path``: the caller resolved
        ``cfg.queries_file`` against the config's directory); the default corpus when neither
        gives a query."""
        entries: list[CorpusEntry | QuerySpec] = list(cfg.queries)
        path = queries_path if queries_path is not None else cfg.queries_file
        if path is not None:
            entries.extend(read_queries_file(path))
        if not entries:
            return cls.default(seed=cfg.seed)
        return cls(entries, seed=cfg.seed)


def read_queries_file(path: str | Path) -> list[CorpusEntry]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: queries file not found (workload.queries_file)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: queries file is not UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read queries file: {exc.strerror}") from None
    entries = parse_queries(text, str(p))
    if not entries:
        raise ConfigError(f"{p}: queries file holds no queries (only blank or # lines)")
    return entries


def parse_queries(text: str, source: str) -> list[CorpusEntry]:
    """Parse a queries file's text; ConfigError naming ``source`` and the line on a bad line."""
    out: list[CorpusEntry] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip(" \r\n\f\v")  # tabs kept: an empty first field is an error
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        if line.startswith("{"):
            out.append(_json_line(line, where))
        elif "\t" in line:
            out.append(_tab_line(line, where))
        else:
            out.append(CorpusEntry(line))
    return out


def _tab_line(line: str, where: str) -> CorpusEntry:
    fields = line.split("\t")
    if len(fields) != 3:
        raise ConfigError(
            f"{where}: expected kind<TAB>weight<TAB>text (3 fields), got {len(fields)}: "
            f"{_short(line)}"
        )
    kind, weight, text = (f.strip() for f in fields)
    if not kind:
        raise ConfigError(f"{where}: empty kind; expected kind<TAB>weight<TAB>text")
    if not text:
        raise ConfigError(f"{where}: empty query text")
    return CorpusEntry(text, kind, _weight(weight, where))


def _json_line(line: str, where: str) -> CorpusEntry:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f'{where}: expected a JSON object with "text", got {_short(line)}')
    unknown = set(obj) - {"text", "kind", "weight"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: text, kind, weight"
        )
    text, kind = obj.get("text"), obj.get("kind", DEFAULT_KIND)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f'{where}: "text" must be a non-empty string, got {text!r}')
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f'{where}: "kind" must be a non-empty string, got {kind!r}')
    return CorpusEntry(text.strip(), kind, _weight(obj.get("weight", 1.0), where))


def _weight(value: object, where: str) -> float:
    w = math.nan
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            w = float(value)
        except ValueError:
            pass
    if not (w > 0 and math.isfinite(w)):
        raise ConfigError(f"{where}: weight must be a finite number > 0, got {value!r}")
    return w


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")
