"""One leak per root cause: findings that share a cause are grouped under it as evidence.

A leak shows in several series at once: stranded tasks hold their coroutines' frames and
futures (a ``tasks`` finding, ``objects`` findings for those types, the heap level and the
sites that allocate them); leaked threads hold their stacks (``threads`` and RSS); a leaking
line is seen at its site and in the count of the class it creates. Listed side by side they
read as several leaks, a consequence first. :func:`group_causes` keeps one entry per cause:

* an OS-resource leak (``fds``, ``tasks``, ``threads``) is the cause of the heap level, RSS
  and object counts of the types such a resource holds, and of heap sites whose traceback
  passes through the code that makes the resource (``asyncio`` task creation, ``threading``,
  ``socket``/``open``);
* of sites on one call chain (one's traceback holds the other's site) the most grown stays;
* sites whose stacks part only inside one function of a shared caller (lines of one
  function, as the records' ``functions`` read from the source say; without them, lines at
  most ``ADJACENT_LINES`` apart) and that were first detected together are one leak: a
  statement's leak shows at every block it keeps, such as the key or value built on another
  line of the function that stores them, or an object a C extension keeps which reuses a block
  another line allocated (free lists keep a block's first allocation site). The site whose
  stack goes on into a call outside the standard library (the store, the constructor) is the
  cause: the function's own allocations, and what a standard-library call hands back to it
  (``json.dumps``' string, ``asyncio.sleep``'s future), are what that call keeps or reuses.
  Between equals the most grown stays;
* an object type is evidence of the site whose source line names its class.

The cause keeps its own fields, the earliest ``first_detected_s`` of its group, and lists the
others under ``evidence``. Pure: it works on ``leaks[]`` records as summary.json holds them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["EVIDENCE_FIELDS", "cause_of", "evidence_keys", "group_causes"]

RESOURCE_KINDS: Final[tuple[str, ...]] = ("fds", "tasks", "threads")
# Two sites whose stacks part at lines of one caller this close are one statement's leak.
ADJACENT_LINES: Final[int] = 2
# ... if first detected within this many seconds of each other (a leak's consequences show
# with it; a leak that starts later at the next line is news).
TOGETHER_S: Final[float] = 300.0

# A frame of the standard library: lib/pythonX.Y/ but not its site-packages, or a frozen module.
_STDLIB: Final = re.compile(r"(?:^|/)lib/python3\.\d+/(?!(?:site|dist)-packages/)|^<frozen ")

# Type names (last dotted part) a leaked resource of each kind holds.
_HELD_TYPES: Final[dict[str, frozenset[str]]] = {
    "tasks": frozenset(
        {
            "Task",
            "Future",
            "coroutine",
            "Context",
            "frame",
            "cell",
            "TimerHandle",
            "Handle",
            "async_generator",
            "Event",
            "CancelScope",
            "TaskState",
            "_TaskStepMethWrapper",
        }
    ),
    "threads": frozenset(
        {
            "Thread",
            "lock",
            "RLock",
            "Condition",
            "Event",
            "frame",
            "cell",
            "_DummyThread",
            "WorkerThread",
            "Semaphore",
        }
    ),
    "fds": frozenset(
        {
            "socket",
            "SSLSocket",
            "TextIOWrapper",
            "BufferedReader",
            "BufferedWriter",
            "BufferedRandom",
            "FileIO",
            "SocketIO",
            "Popen",
            "DefaultSelector",
            "EpollSelector",
            "_SelectorSocketTransport",
            "StreamReader",
            "StreamWriter",
        }
    ),
}
# Files (path endings) whose frames in a site's traceback mean it allocates a resource.
_SPAWN_FILES: Final[dict[str, tuple[str, ...]]] = {
    "tasks": ("asyncio/tasks.py", "asyncio/base_events.py", "anyio/_backends/_asyncio.py"),
    "threads": ("threading.py", "concurrent/futures/thread.py"),
    "fds": ("socket.py", "ssl.py", "subprocess.py", "selectors.py", "asyncio/selector_events.py"),
}
EVIDENCE_FIELDS: Final[tuple[str, ...]] = (
    "kind", "site", "type", "slope_per_h", "unit", "growth", "first_detected_s",
)  # fmt: skip


def group_causes(leaks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``leaks`` (most certain first) with each consequence folded into its cause's
    ``evidence``; causes keep their order. Records already grouped keep their evidence."""
    out = [dict(leak) for leak in leaks]
    owner = _owners(out)
    for j, i in owner.items():
        cause = out[i]
        evidence = list(cause.get("evidence") or [])
        evidence.append({k: out[j].get(k) for k in EVIDENCE_FIELDS})
        evidence.extend(out[j].get("evidence") or [])
        cause["evidence"] = evidence
        firsts = [f for f in (cause.get("first_detected_s"), out[j].get("first_detected_s"))
                  if isinstance(f, int | float)]  # fmt: skip
        if firsts:
            cause["first_detected_s"] = min(firsts)
    return [leak for j, leak in enumerate(out) if j not in owner]


def cause_of(
    leak: Mapping[str, Any], others: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The record among ``others`` whose cause ``leak`` is a consequence of, or None: a leak
    confirmed after its cause (the heap a task leak holds) is not news of its own."""
    owner = _owners([*others, leak])
    root = owner.get(len(others))
    return others[root] if root is not None else None


def _owners(out: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Index of each consequence -> index of its root cause."""
    owner: dict[int, int] = {}
    for i, leak in enumerate(out):
        if leak.get("kind") in RESOURCE_KINDS:
            for j, other in enumerate(out):
                if j != i and j not in owner and _held_by(other, str(leak["kind"])):
                    owner[j] = i
    sites = [i for i, leak in enumerate(out) if leak.get("site") and i not in owner]
    for i in sites:
        for j in sites:
            if i == j or j in owner or i in owner:
                continue
            if _same_chain(out[i], out[j]):
                keep, drop = (i, j) if _growth(out[i]) >= _growth(out[j]) else (j, i)
            elif (depths := _siblings(out[i], out[j])) is not None:
                deeper = (depths[0], _growth(out[i])) >= (depths[1], _growth(out[j]))
                keep, drop = (i, j) if deeper else (j, i)
            else:
                continue
            owner[drop] = keep
    for j, leak in enumerate(out):
        if leak.get("kind") == "objects" and j not in owner:
            for i in sites:
                if i not in owner and _names_class(out[i], leak.get("type")):
                    owner[j] = i
                    break
    roots: dict[int, int] = {}
    for j, i in owner.items():
        while i in owner:  # a consequence of a consequence belongs to the root
            i = owner[i]
        roots[j] = i
    return roots


def evidence_keys(leak: Mapping[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """The ``(kind, site, type)`` of each finding grouped under ``leak``."""
    out = []
    for e in leak.get("evidence") or []:
        if isinstance(e, Mapping):
            site, type_ = e.get("site"), e.get("type")
            out.append(
                (
                    str(e.get("kind") or "?"),
                    site if isinstance(site, str) else None,
                    type_ if isinstance(type_, str) else None,
                )
            )
    return out


def _held_by(leak: Mapping[str, Any], resource: str) -> bool:
    kind = leak.get("kind")
    if kind in RESOURCE_KINDS:
        return False
    if kind == "native":
        return resource == "threads"  # thread stacks are RSS the heap does not see
    if kind == "objects":
        name = str(leak.get("type") or "").rsplit(".", 1)[-1]
        return name in _HELD_TYPES[resource]
    if kind == "heap" and not leak.get("site"):
        return True  # the heap level: the resources' objects are in it
    files = [f.rsplit(":", 1)[0] for f in _frames(leak)]
    return any(f.endswith(_SPAWN_FILES[resource]) for f in files)


def _same_chain(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return b.get("site") in _frames(a) or a.get("site") in _frames(b)


def _siblings(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[int, int] | None:
    """Stacks that share their callers and part inside one function, first detected within
    ``TOGETHER_S``: how far each goes on into calls of its own from there (:func:`_own_depth`;
    0: the function allocated it on its own line), or None. Tracebacks are cut at the
    innermost frames, so the shared callers are matched from the first frame both hold, not
    from the outermost."""
    ta, tb = _frames(a), _frames(b)
    fa, fb = a.get("first_detected_s"), b.get("first_detected_s")
    if not ta or not tb or not isinstance(fa, int | float) or not isinstance(fb, int | float):
        return None
    if abs(fa - fb) > TOGETHER_S:
        return None
    in_b = {f: k for k, f in enumerate(tb)}
    for i, frame in enumerate(ta):
        j = in_b.get(frame)
        if j is None:
            continue
        # the callers from here out agree as far as both go
        n = min(len(ta) - i, len(tb) - j)
        if ta[i : i + n] != tb[j : j + n] or i == 0 or j == 0:
            return None
        x, y = ta[i - 1], tb[j - 1]
        if x == y or x.rpartition(":")[0] != y.rpartition(":")[0]:
            return None
        fx, fy = _function(a, i - 1), _function(b, j - 1)
        together = fx == fy if fx is not None and fy is not None else _near(x, y)
        return (_own_depth(ta[: i - 1]), _own_depth(tb[: j - 1])) if together else None
    return None


def _own_depth(calls: Sequence[str]) -> int:
    """Frames of ``calls`` (a stack's frames inside the call it parts at) outside the standard
    library: the interpreter's ``lib/pythonX.Y`` other than its installed packages, and frozen
    modules. Read from the path, so a target on another interpreter than soakd's is judged
    alike."""
    return sum(1 for frame in calls if not _STDLIB.search(frame))


def _function(leak: Mapping[str, Any], k: int) -> str | None:
    """The function of frame ``k`` as the record says (``functions``, read from the source)."""
    functions = leak.get("functions")
    if not isinstance(functions, list) or k >= len(functions):
        return None
    name = functions[k]
    return name if isinstance(name, str) and name else None


def _frames(leak: Mapping[str, Any]) -> list[str]:
    tb = leak.get("traceback")
    return [f for f in tb if isinstance(f, str)] if isinstance(tb, list) else []


def _near(x: str, y: str) -> bool:
    """``file:line`` frames of one file at most ``ADJACENT_LINES`` apart (and not equal)."""
    fx, _, lx = x.rpartition(":")
    fy, _, ly = y.rpartition(":")
    if fx != fy or not lx.isdigit() or not ly.isdigit():
        return False
    return 0 < abs(int(lx) - int(ly)) <= ADJACENT_LINES


def _names_class(site: Mapping[str, Any], type_name: object) -> bool:
    line = site.get("line")
    if not isinstance(line, str) or not isinstance(type_name, str) or not type_name:
        return False
    cls = type_name.rsplit(".", 1)[-1]
    return f"{cls}(" in line


def _growth(leak: Mapping[str, Any]) -> float:
    g = leak.get("growth")
    return float(g) if isinstance(g, int | float) else 0.0
