"""One leak per root cause: consequences are grouped under their cause as evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from soakd.causes import cause_of, group_causes
from soakd.leaks import LeakLedger
from soakd.sources import functions_of

ASYNCIO = "/usr/lib/python3.11/asyncio"


def _leak(kind: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": kind,
        "site": None,
        "traceback": [],
        "type": None,
        "slope_per_h": 1000.0,
        "unit": "count" if kind in ("tasks", "threads", "fds", "objects") else "bytes",
        "growth": 100.0,
        "p_value": 0.001,
        "first_detected_s": 100.0,
        "line": None,
    }
    return {**base, **fields}


def test_a_stranded_task_leak_is_one_tasks_leak_with_its_heap_as_evidence() -> None:
    site = "/app/jobs.py:40"
    leaks = [
        _leak("heap", site=site, first_detected_s=80.0, growth=5e6,
              traceback=[f"{ASYNCIO}/base_events.py:436", site, "/app/main.py:9"]),
        _leak("heap", first_detected_s=90.0),
        _leak("tasks", first_detected_s=120.0),
        _leak("objects", type="_asyncio.Task"),
        _leak("objects", type="coroutine"),
    ]  # fmt: skip
    [cause] = group_causes(leaks)
    assert cause["kind"] == "tasks"
    assert cause["first_detected_s"] == 80.0  # the group's first sign
    assert sorted((e["kind"], e["site"] or e["type"] or "") for e in cause["evidence"]) == [
        ("heap", ""),
        ("heap", site),
        ("objects", "_asyncio.Task"),
        ("objects", "coroutine"),
    ]


def test_a_thread_leak_owns_its_stacks_and_allocations_not_an_unrelated_site() -> None:
    own = "/app/pool.py:12"
    unrelated = "/app/cache.py:7"
    leaks = [
        _leak("heap", site=own, traceback=[own, "/usr/lib/python3.11/threading.py:982"]),
        _leak("heap", site=unrelated, traceback=[unrelated, "/app/main.py:3"]),
        _leak("native"),
        _leak("threads"),
    ]
    out = group_causes(leaks)
    assert [(leak["kind"], leak["site"]) for leak in out] == [
        ("heap", unrelated),
        ("threads", None),
    ]
    assert {(e["kind"], e["site"]) for e in out[1]["evidence"]} == {("heap", own), ("native", None)}


def test_sites_on_one_call_chain_are_one_leak_at_the_most_grown() -> None:
    inner, outer = "/app/parse.py:88", "/app/handler.py:21"
    leaks = [
        _leak("heap", site=outer, growth=1e5, traceback=[outer, "/app/main.py:3"]),
        _leak("heap", site=inner, growth=4e6, traceback=[inner, outer, "/app/main.py:3"]),
    ]
    [cause] = group_causes(leaks)
    assert cause["site"] == inner
    assert [e["site"] for e in cause["evidence"]] == [outer]


def test_sites_parting_at_neighbouring_lines_of_one_caller_are_one_leak() -> None:
    # babel 2.11's pattern cache: the key is built on the line before the call that stores
    # the value; both blocks are retained by the one cache (tracebacks cut at 4 frames).
    key, stored = "/app/fmt.py:86", "/lib/babel/dates.py:1698"
    callers = ["/app/worker.py:59", "/app/engine.py:465", "/app/engine.py:434"]
    leaks = [
        _leak("heap", site=stored, growth=3e5, first_detected_s=95.0,
              traceback=[stored, "/lib/babel/dates.py:768", "/app/fmt.py:87", callers[0]]),
        _leak("heap", site=key, growth=1.5e5, first_detected_s=95.0,
              traceback=[key, *callers]),
    ]  # fmt: skip
    [cause] = group_causes(leaks)
    assert cause["site"] == stored
    assert [e["site"] for e in cause["evidence"]] == [key]


def test_neighbouring_sites_stay_apart_when_far_apart_in_lines_or_in_time() -> None:
    def site(line: int, first: float, growth: float) -> dict[str, Any]:
        here = f"/app/handler.py:{line}"
        return _leak("heap", site=f"/app/mod{line}.py:1", growth=growth, first_detected_s=first,
                     traceback=[f"/app/mod{line}.py:1", here, "/app/main.py:3"])  # fmt: skip

    assert len(group_causes([site(40, 100.0, 2e5), site(41, 100.0, 1e5)])) == 1
    assert len(group_causes([site(40, 100.0, 2e5), site(45, 100.0, 1e5)])) == 2
    assert len(group_causes([site(40, 100.0, 2e5), site(41, 3700.0, 1e5)])) == 2
    # different callers of the same lines: separate requests, separate leaks
    other = site(41, 100.0, 1e5)
    other["traceback"] = [other["site"], "/app/handler.py:41", "/app/cli.py:8"]
    assert len(group_causes([site(40, 100.0, 2e5), other])) == 2


def test_a_type_is_evidence_of_the_site_that_creates_it() -> None:
    site = "/app/store.py:5"
    leaks = [
        _leak("heap", site=site, traceback=[site], line="self.items.append(Record(query))"),
        _leak("objects", type="app.store.Record"),
        _leak("objects", type="app.other.Session"),
    ]
    out = group_causes(leaks)
    assert [(leak["kind"], leak["site"] or leak["type"]) for leak in out] == [
        ("heap", site),
        ("objects", "app.other.Session"),
    ]
    assert [e["type"] for e in out[0]["evidence"]] == ["app.store.Record"]


def test_independent_leaks_stay_separate() -> None:
    leaks = [
        _leak("heap", site="/app/a.py:1", traceback=["/app/a.py:1"]),
        _leak("fds"),
        _leak("objects", type="app.Widget"),
    ]
    assert len(group_causes(leaks)) == 3


def test_the_summary_lists_causes_from_the_events() -> None:
    ledger = LeakLedger()
    for fields in (_leak("tasks"), _leak("objects", type="_asyncio.Task"), _leak("heap")):
        ledger.apply("leak.confirmed", fields)
    [leak] = ledger.confirmed()
    assert leak["kind"] == "tasks"
    assert {e["kind"] for e in leak.get("evidence", [])} == {"objects", "heap"}


def test_a_consequence_confirmed_after_its_cause_names_it_and_a_cause_does_not() -> None:
    tasks = _leak("tasks", first_detected_s=120.0)
    coroutines = _leak("objects", type="coroutine")
    unrelated = _leak("heap", site="/app/cache.py:7", traceback=["/app/cache.py:7"])
    assert cause_of(coroutines, [unrelated, tasks]) is tasks
    assert cause_of(unrelated, [tasks, coroutines]) is None
    # The cause confirmed after its consequence is news: it is a cause, not a consequence.
    assert cause_of(tasks, [coroutines]) is None


HANDLER = """\
class Target:
    async def process_query(self, query):
        self.n += 1
        yield {"type": "status"}
        docs = [{"title": query} for _ in range(10)]
        await self.pause()
        self.step(query)
        yield {"type": "content", "text": str(docs)}


async def handle_a(request):
    return request.body
async def handle_b(request):
    return request.headers
"""


def _sited(path: Path, line: int, deeper: list[str], growth: float) -> dict[str, Any]:
    """A heap finding whose stack parts at ``path:line`` (through ``deeper`` frames first),
    called from one engine line, with its frames' functions read from the source."""
    tb = [*deeper, f"{path}:{line}", "/app/engine.py:465", "/app/engine.py:434"]
    return _leak("heap", site=tb[0], traceback=tb, growth=growth, functions=functions_of(tb))


def test_sites_parting_anywhere_in_one_function_are_one_leak_at_the_store(tmp_path: Path) -> None:
    # A dict that keeps growing: its entries at the line that stores them (through step()),
    # the ints it keeps as values where the function made them, four lines above. The store
    # is the cause even where the values were sampled as more bytes.
    src = tmp_path / "target.py"
    src.write_text(HANDLER, encoding="utf-8")
    store = _sited(src, 7, ["/app/leaky.py:12"], growth=1.5e5)
    values = _sited(src, 3, [], growth=2.5e5)
    assert store["functions"][1] == values["functions"][0] == "Target.process_query"
    [cause] = group_causes([values, store])
    assert cause["site"] == "/app/leaky.py:12"
    assert [e["site"] for e in cause["evidence"]] == [values["site"]]
    # the same from the leak.confirmed events, as summary.json is made
    ledger = LeakLedger()
    for fields in (values, store):
        ledger.apply("leak.confirmed", fields)
    assert [leak["site"] for leak in ledger.confirmed()] == ["/app/leaky.py:12"]


def test_sites_in_two_functions_called_from_one_line_stay_apart(tmp_path: Path) -> None:
    # One dispatch line calls either handler: lines two apart, but two functions, two leaks.
    src = tmp_path / "handlers.py"
    src.write_text(HANDLER, encoding="utf-8")
    a = _sited(src, 12, [], growth=2e5)
    b = _sited(src, 14, ["/app/store.py:3"], growth=1e5)
    assert a["functions"][0] == "handle_a" and b["functions"][1] == "handle_b"
    assert len(group_causes([a, b])) == 2
    # without the source (a report read elsewhere) lines so close count as one statement
    del a["functions"], b["functions"]
    assert len(group_causes([a, b])) == 1


def test_a_call_into_the_standard_library_is_not_where_the_blocks_are_kept(
    tmp_path: Path,
) -> None:
    # multidict 6.3.1 keeps the dict given to CIMultiDict(); new dicts come from CPython's free
    # list, whose blocks keep the site that first allocated them: the json.dumps and
    # asyncio.sleep lines of the same function. The constructor's line is the cause, however
    # deep the standard library's frames go and however much those sites grew.
    src = tmp_path / "target.py"
    src.write_text(HANDLER, encoding="utf-8")
    lib = "/usr/lib/python3.11"
    kept = _sited(src, 7, ["/venv/lib/python3.11/site-packages/app/rw.py:129"], growth=2.5e5)
    sleep = _sited(src, 6, [f"{lib}/asyncio/base_events.py:427", f"{lib}/asyncio/tasks.py:644"],
                   growth=2.7e5)  # fmt: skip
    dumps = _sited(src, 8, [f"{lib}/json/encoder.py:216", f"{lib}/json/__init__.py:231"],
                   growth=1.2e5)  # fmt: skip
    [cause] = group_causes([sleep, kept, dumps])
    assert cause["site"] == kept["site"]
    assert {e["site"] for e in cause["evidence"]} == {sleep["site"], dumps["site"]}
    assert cause_of(sleep, [kept]) is kept
