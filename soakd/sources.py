"""What a ``file:line`` frame says in the target's source on this box: its line, its function.

Tracebacks name frames by file and line only. The report shows each site's source line, and
whether two sites part inside one function (one statement's leak seen at the blocks it keeps,
:mod:`soakd.causes`) needs the function: a line number distance cannot tell a long function
from two short ones. The supervisor runs beside the target, so its source files are here. Both
are read here, never in the target: loading the sources of every sampled site (megabytes of
lines, ``linecache`` in the agent) grew the target's heap by 8 MB at the first grouping and
slowed the saturated reference aggregator by 2-20 % for the rest of the run (the lines stay;
measured as whole runs in pairs, with and without, see ``benchmarks/overhead.py``).

Never trusted: only regular files up to ``MAX_SOURCE_BYTES`` are read (a FIFO or a device
would block, a huge file would stall the analysis), opened without following a FIFO's open,
and any failure to read or parse means "unknown" (``None``), never an error.
"""

from __future__ import annotations

import ast
import io
import os
import stat
import threading
import tokenize
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar

__all__ = ["MAX_SOURCE_BYTES", "FunctionIndex", "SourceLines", "functions_of"]

MAX_SOURCE_BYTES: Final[int] = 2 * 1024 * 1024
_MAX_FILES: Final[int] = 128  # parsed files kept (least recently used dropped)
_MAX_LINE_FILES: Final[int] = 16  # files whose lines are kept (each at most MAX_SOURCE_BYTES)
MAX_LINE_CHARS: Final[int] = 1000  # a longer source line is cut (minified or generated code)

_T = TypeVar("_T")
# (first line, last line, qualified name), sorted by first line; nested spans follow their parent.
_Spans = tuple[tuple[int, int, str], ...]


class _PerFile(Generic[_T]):
    """What was read from each of the last ``max_files`` files (least recently used dropped),
    keyed by a ``path:lineno`` frame's path; thread-safe: the analysis thread warms it, the
    loop reads it."""

    def __init__(self, load: Callable[[str], _T | None], max_files: int) -> None:
        self.max_files = max_files
        self._load = load
        self._files: OrderedDict[str, _T | None] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, frame: str) -> tuple[_T, int] | None:
        """(what was read from the frame's file, its line number), None when unknown."""
        path, _, line = frame.rpartition(":")
        if not path or not line.isdigit():
            return None
        with self._lock:
            if path in self._files:
                self._files.move_to_end(path)
                found = self._files[path]
            else:
                found = self._files[path] = self._load(path)
                while len(self._files) > self.max_files:
                    self._files.popitem(last=False)
        return None if found is None else (found, int(line))


class FunctionIndex(_PerFile[_Spans]):
    """``index("path/to/file.py:42")`` -> ``"Class.method"``, ``"<module>"`` for top-level
    code, or None when the file cannot be read or parsed. Bounded: ``max_files`` parsed files."""

    def __init__(self, max_files: int = _MAX_FILES) -> None:
        super().__init__(_parse, max_files)

    def __call__(self, frame: str) -> str | None:
        found = self.lookup(frame)
        if found is None:
            return None
        spans, lineno = found
        # the innermost span holding the line: the last one starting at or before it that
        # also ends at or after it (nested spans start after their parent)
        for start, end, name in reversed(spans[: bisect_right(spans, (lineno, 1 << 62, ""))]):
            if start <= lineno <= end:
                return name
        return "<module>"


class SourceLines(_PerFile[tuple[str, ...]]):
    """``lines("path/to/file.py:42")`` -> that line of the file, stripped (None when the file
    cannot be read, the line does not exist or is blank). Bounded: the lines of the last
    ``max_files`` files read, each file at most :data:`MAX_SOURCE_BYTES`."""

    def __init__(self, max_files: int = _MAX_LINE_FILES) -> None:
        super().__init__(lambda path: _decode(_read(path)), max_files)

    def __call__(self, frame: str) -> str | None:
        found = self.lookup(frame)
        if found is None:
            return None
        lines, lineno = found
        if not 1 <= lineno <= len(lines):
            return None
        return lines[lineno - 1].strip()[:MAX_LINE_CHARS] or None


def _decode(source: bytes | None) -> tuple[str, ...] | None:
    """Lines as the interpreter numbers them: the file's declared encoding (PEP 263) and
    universal newlines (never ``str.splitlines``, which also splits at form feeds)."""
    if source is None:
        return None
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        text = source.decode(encoding, errors="replace")
    except (SyntaxError, LookupError):
        return None
    return tuple(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def _parse(path: str) -> _Spans | None:
    source = _read(path)
    if source is None:
        return None
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    out: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                # decorators run in the enclosing scope: the span starts at the def line
                start = child.lineno
                out.append((start, child.end_lineno or start, name))  # a class: its body
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    try:
        visit(tree, "")
    except RecursionError:
        return None
    out.sort()
    return tuple(out)


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SOURCE_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_SOURCE_BYTES + 1)
        return data if len(data) <= MAX_SOURCE_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


_DEFAULT = FunctionIndex()


def functions_of(traceback: Sequence[str], index: FunctionIndex | None = None) -> list[str | None]:
    """The function of each ``file:line`` frame (None where unknown)."""
    find = index or _DEFAULT
    return [find(frame) for frame in traceback]
