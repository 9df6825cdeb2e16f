"""Real-world scenario targets: upstream leaks reproduced at pinned releases, and real caches.

Each leaky case is a documented leak from a package's own issue tracker, run against the release
that leaks and the release that fixed it (same target class, same per-query work; only the
``python_path`` the suite puts first differs). ``benchmarks/realworld_setup.py`` installs every
pinned release into ``.realworld/<case>-<variant>`` (``PINS`` below is its list); the target
imports the package inside ``__init__``, so the worker loads the release found on its python_path.

A leak in a C extension that keeps Python objects is attributed to the Python line that calls
into the extension: those lines carry a ``# LEAK[name]`` marker like ``targets.py``. A pure-Python
leak is attributed to the package's own line (the suite names it as ``file:line`` inside the
installed release). Rates are at 20 queries/s; bytes per operation were measured with
tracemalloc (heap) or RSS (native) on the leaky release, 0 on the fixed one.

Leak-free patterns use real libraries at pinned versions: a Jinja2 template cache, the ``re``
module cache, lazy imports on first use, and SQLAlchemy's compiled-statement cache, each filling
to its bound and then turning over.
"""

from __future__ import annotations

import datetime
import importlib
import random
from pathlib import Path
from typing import Any

from targets import Base

ROOT = Path(__file__).resolve().parent.parent.parent
REALWORLD_DIR = ROOT / ".realworld"

# install directory name -> pinned requirements (pip syntax). A case's directories are
# ``<case>-leaky`` and ``<case>-fixed``; ``patterns`` holds the libraries of the leak-free cases.
PINS: dict[str, tuple[str, ...]] = {
    "babel-leaky": ("babel==2.11.0",),
    "babel-fixed": ("babel==2.12.1",),
    "aiohttp-cookies-leaky": ("aiohttp==3.12.2",),
    "aiohttp-cookies-fixed": ("aiohttp==3.12.3",),
    "multidict-init-leaky": ("multidict==6.3.1",),
    "multidict-init-fixed": ("multidict==6.3.2",),
    "multidict-istr-leaky": ("multidict==6.3.2",),
    "multidict-istr-fixed": ("multidict==6.4.2",),
    "multidict-pop-leaky": ("multidict==6.6.3",),
    "multidict-pop-fixed": ("multidict==6.6.4",),
    "ujson-dump-leaky": ("ujson==5.12.0",),
    "ujson-dump-fixed": ("ujson==5.12.1",),
    "protobuf-bytesize-leaky": ("protobuf==4.24.2",),
    "protobuf-bytesize-fixed": ("protobuf==4.24.3",),
    "patterns": ("Jinja2==3.1.4", "MarkupSafe==2.1.5", "SQLAlchemy==2.0.36", "babel==2.12.1"),
}


def install_dir(name: str) -> Path:
    """``.realworld/<name>``: where ``realworld_setup.py`` installs ``PINS[name]``."""
    return REALWORLD_DIR / name


def _imported_from(module: Any, name: str) -> None:
    """Fail loudly if the package did not come from its pinned directory (a stale install)."""
    where = str(Path(module.__file__).resolve())
    if not where.startswith(str(REALWORLD_DIR.resolve())):
        raise RuntimeError(f"{module.__name__} imported from {where}, not from .realworld/{name}")


# -- upstream leaks ----------------------------------------------------------------------------


class BabelPatternCache(Base):
    """Babel ≤ 2.11: ``babel.dates.parse_pattern`` caches every pattern in a plain dict.

    python-babel/babel#962, fixed in 2.12.0 by an ``lru_cache`` (#967). A service formatting
    dates with per-tenant or per-document patterns (a label with a quoted literal) adds one
    ``DateTimePattern`` per new pattern: ``ops`` patterns per query, ~300 B each (6 KB/s per op/q).
    """

    def __init__(self, ops: int = 2, seed: int = 1) -> None:
        super().__init__(seed)
        self.dates = importlib.import_module("babel.dates")
        _imported_from(importlib.import_module("babel"), "babel-*")
        self.ops = ops
        self.when = datetime.datetime(2024, 5, 1, 12, 30)

    def step(self, query: str) -> None:
        for i in range(self.ops):
            label = f"'order {self.n}-{i}' yyyy-MM-dd HH:mm"
            self.dates.format_datetime(self.when, label, locale="en_US")


class AiohttpCookieJar(Base):
    """aiohttp 3.12.0-3.12.2: ``CookieJar.filter_cookies`` keeps an entry per request path.

    aio-libs/aiohttp#11052, fixed in 3.12.3 (#11054). ``self._cookies`` is a defaultdict keyed
    by (domain, path): looking up every path prefix of a request creates the entries. One
    request per query to a new resource path (``/items/<id>``): ~770 B/q, 15 KB/s.
    """

    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed)
        aiohttp = importlib.import_module("aiohttp")
        _imported_from(aiohttp, "aiohttp-cookies-*")
        self.url = importlib.import_module("yarl").URL
        self.jar: Any = None  # built on the first query: CookieJar wants a running loop
        self.cookie_jar = aiohttp.CookieJar

    def step(self, query: str) -> None:
        if self.jar is None:
            self.jar = self.cookie_jar()
            self.jar.update_cookies({"session": "abc123"}, self.url("http://api.example.com/"))
        self.jar.filter_cookies(self.url(f"http://api.example.com/items/{self.n}"))


class MultidictInit(Base):
    """multidict 6.3.0-6.3.1: ``CIMultiDict(mapping)`` leaks a reference per construction.

    aio-libs/multidict#1117, fixed in 6.3.2 (#1121). Building request/response header dicts,
    ``ops`` per query: ~184 B each (11 KB/s at 3/q).
    """

    def __init__(self, ops: int = 3, seed: int = 1) -> None:
        super().__init__(seed)
        multidict = importlib.import_module("multidict")
        _imported_from(multidict, "multidict-init-*")
        self.ci = multidict.CIMultiDict
        self.ops = ops

    def step(self, query: str) -> None:
        for _ in range(self.ops):
            headers = self.ci({"User-Agent": "soakd-realworld"})  # LEAK[rw-multidict-init]
            headers.get("User-Agent")


class MultidictIstr(Base):
    """multidict 6.3.0-6.3.2: every new ``istr`` key of a ``CIMultiDict`` leaks.

    aio-libs/multidict#1131, fixed in 6.4.0 (#1133). Copying 10 response headers into a new
    case-insensitive dict per query: ~560 B/q, 11 KB/s.
    """

    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed)
        multidict = importlib.import_module("multidict")
        _imported_from(multidict, "multidict-istr-*")
        self.ci = multidict.CIMultiDict

    def step(self, query: str) -> None:
        result = self.ci()
        headers = self.ci({f"X-Any-{i}": str(i) for i in range(10)})  # LEAK[rw-multidict-istr]
        for key, value in headers.items():
            result.add(key, value)


class MultidictPop(Base):
    """multidict 6.6.0-6.6.3: a ``CIMultiDict`` whose values were popped is never freed.

    aio-libs/multidict#1232, fixed in 6.6.4 (#1233, "memory leak when deleting values or
    clearing them"). Consuming header dicts with ``pop``, ``ops`` per query: ~360 B each
    (14 KB/s at 2/q).
    """

    def __init__(self, ops: int = 2, seed: int = 1) -> None:
        super().__init__(seed)
        multidict = importlib.import_module("multidict")
        _imported_from(multidict, "multidict-pop-*")
        self.ci = multidict.CIMultiDict
        self.ops = ops

    def step(self, query: str) -> None:
        for _ in range(self.ops):
            headers = self.ci({f"X-Any-{i}": str(i) for i in range(10)})  # LEAK[rw-multidict-pop]
            for i in range(10):
                headers.pop(f"X-Any-{i}")


class _GoneClient:
    """A response stream whose peer went away: every write fails."""

    def write(self, data: str) -> int:
        raise ConnectionResetError("peer closed the stream")


class UjsonDumpError(Base):
    """ujson 5.12.0: ``ujson.dump`` leaks the whole encoded string when ``write`` raises.

    CVE-2026-44660; ultrajson/ultrajson#727 ("objToJSONFile write failure: the encoded JSON
    string was not released"), fixed in 5.12.1. One failed dump of a ~1.2 KB result per
    query (a client that disconnected): ~1250 B/q, 25 KB/s.
    """

    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed)
        self.ujson = importlib.import_module("ujson")
        _imported_from(self.ujson, "ujson-dump-*")
        self.sink = _GoneClient()

    def step(self, query: str) -> None:
        doc = {"query": query, "items": [{"id": i, "name": "x" * 40} for i in range(20)]}
        try:
            self.ujson.dump(doc, self.sink)  # LEAK[rw-ujson-dump]
        except ConnectionResetError:
            pass


class ProtobufByteSize(Base):
    """protobuf 4.22-4.24.2 (upb backend): ``ByteSize()`` of a sub-message leaks arena memory.

    protocolbuffers/upb#1243 ("Memory leak in ByteSize with upb protobuf backend"), fixed in
    protobuf 24.3 / Python 4.24.3 ("Upb: fix a Python memory leak in ByteSize()"). Native:
    malloc'd by upb, invisible to the Python heap. ``ops`` size checks per query, ~77 B each
    (77 KB/s at 50/q, RSS).
    """

    def __init__(self, ops: int = 50, seed: int = 1) -> None:
        super().__init__(seed)
        protobuf = importlib.import_module("google.protobuf")
        _imported_from(protobuf, "protobuf-bytesize-*")
        implementation = importlib.import_module("google.protobuf.internal.api_implementation")
        if implementation.Type() != "upb":
            raise RuntimeError(f"protobuf backend is {implementation.Type()}, not upb")
        self.message = importlib.import_module("google.protobuf.type_pb2").Type()
        self.ops = ops

    def step(self, query: str) -> None:
        for _ in range(self.ops):
            self.message.source_context.ByteSize()


# -- leak-free patterns ------------------------------------------------------------------------


class JinjaTemplateCache(Base):
    """Jinja2's compiled-template LRU cache (``cache_size``) over more templates than it holds.

    Per query one of ``templates`` templates (per-tenant variants) is rendered; the cache fills
    to ``cache_size`` (ever slower: random names) and then turns over, compiling on every miss.
    """

    def __init__(self, templates: int = 3000, cache_size: int = 1200, seed: int = 1) -> None:
        super().__init__(seed)
        jinja2 = importlib.import_module("jinja2")
        _imported_from(jinja2, "patterns")
        self.templates = templates
        self.env = jinja2.Environment(
            loader=jinja2.FunctionLoader(self._source), cache_size=cache_size, autoescape=True
        )

    @staticmethod
    def _source(name: str) -> str:
        tenant = name.rsplit("-", 1)[-1]
        return (
            f"<h1>{{{{ title }}}} for tenant {tenant}</h1><ul>"
            "{% for d in docs %}<li>{{ d.title }}: {{ d.score | round(2) }}</li>{% endfor %}"
            f"</ul><footer>{tenant * 3}</footer>"
        )

    def step(self, query: str) -> None:
        name = f"result-{self.rng.randrange(self.templates)}"
        docs = [{"title": f"{query} #{i}", "score": i / 7} for i in range(5)]
        self.env.get_template(name).render(title=query, docs=docs)


class ReModuleCache(Base):
    """The ``re`` module's compiled-pattern cache (512 entries on 3.11) under user filters.

    Per query a search filter from a space of ``patterns`` distinct expressions is compiled via
    ``re.search`` (cached by the module), so the cache fills and then evicts its oldest entries.
    """

    def __init__(self, patterns: int = 4000, seed: int = 1) -> None:
        super().__init__(seed)
        self.re = importlib.import_module("re")
        self.patterns = patterns

    def step(self, query: str) -> None:
        k = self.rng.randrange(self.patterns)
        words = "|".join(f"term{k}x{j}" for j in range(k % 5 + 1))
        self.re.search(rf"(?i)\b(?:{words})\b\s+\d{{{k % 4 + 1}}}", query)


class LazyImports(Base):
    """Real packages imported on first use, later in the run: one-off steps, not a leak.

    From 0 s Jinja2 renders a page; at ``at_s[0]`` SQLAlchemy is imported and an in-memory
    engine created; at ``at_s[1]`` Babel formats dates in five locales (locale data loads lazily).
    """

    def __init__(self, at_s: tuple[float, ...] = (40.0, 110.0), seed: int = 1) -> None:
        super().__init__(seed)
        self.at_s = at_s
        jinja2 = importlib.import_module("jinja2")
        _imported_from(jinja2, "patterns")
        self.page = jinja2.Environment(autoescape=True).from_string("<p>{{ q }}</p>")
        self.loaded = 0
        self.engine: Any = None

    def step(self, query: str) -> None:
        self.page.render(q=query)
        if self.loaded == 0 and self.elapsed() >= self.at_s[0]:
            sqlalchemy = importlib.import_module("sqlalchemy")
            self.engine = sqlalchemy.create_engine("sqlite://")
            with self.engine.connect() as conn:
                conn.execute(sqlalchemy.text("select 1"))
            self.loaded = 1
        if self.loaded == 1 and self.elapsed() >= self.at_s[1]:
            dates = importlib.import_module("babel.dates")
            for locale in ("de_DE", "fr_FR", "ja_JP", "pt_BR", "ru_RU"):
                dates.format_date(datetime.date(2024, 5, 1), format="full", locale=locale)
            self.loaded = 2


class SqlalchemyStatementCache(Base):
    """SQLAlchemy's compiled-statement cache (``query_cache_size``) on an in-memory SQLite DB.

    Per query a SELECT of one of ``shapes`` statement shapes (column subset, filter, order) is
    executed; each new shape is compiled and cached. The LRU cache grows to 1.5 × its size and is
    pruned back (a sawtooth), filling over the first minutes.
    """

    def __init__(self, shapes: int = 3000, cache_size: int = 600, seed: int = 1) -> None:
        super().__init__(seed)
        sa = importlib.import_module("sqlalchemy")
        _imported_from(sa, "patterns")
        self.sa = sa
        self.shapes = shapes
        self.engine = sa.create_engine("sqlite://", query_cache_size=cache_size)
        meta = sa.MetaData()
        self.columns = [f"c{i}" for i in range(12)]
        self.table = sa.Table(
            "docs",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            *(sa.Column(c, sa.Integer) for c in self.columns),
        )
        meta.create_all(self.engine)
        with self.engine.begin() as conn:
            conn.execute(
                self.table.insert(),
                [{c: (i * 7 + j) % 97 for j, c in enumerate(self.columns)} for i in range(200)],
            )
        self.conn = self.engine.connect()

    def step(self, query: str) -> None:
        shape = self.rng.randrange(self.shapes)
        shape_rng = random.Random(shape)
        cols = shape_rng.sample(self.columns, shape_rng.randint(1, 6))
        t = self.table.c
        stmt = self.sa.select(*(t[c] for c in cols)).where(
            t[shape_rng.choice(self.columns)] > self.sa.bindparam("low")
        )
        stmt = stmt.order_by(t[shape_rng.choice(self.columns)]).limit(shape % 7 + 1)
        self.conn.execute(stmt, {"low": self.rng.randrange(90)}).fetchall()
