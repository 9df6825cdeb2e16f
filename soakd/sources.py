"""The function a ``file:line`` frame is in, read from the target's source on this box.

Tracebacks name frames by file and line only. Whether two sites part inside one function (one
statement's leak seen at the blocks it keeps, :mod:`soakd.causes`) needs the function: a line
number distance cannot tell a long function from two short ones. The supervisor runs beside
the target, so its source files are here; each is parsed once (``ast``) into the line spans of
its functions.

Never trusted: only regular files up to ``MAX_SOURCE_BYTES`` are read (a FIFO or a device
would block, a huge file would stall the analysis), opened without following a FIFO's open,
and any failure to read or parse means "unknown" (``None``), never an error.
"""

from __future__ import annotations

import ast
import os
import stat
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

__all__ = ["MAX_SOURCE_BYTES", "FunctionIndex", "functions_of"]

MAX_SOURCE_BYTES: Final[int] = 2 * 1024 * 1024
_MAX_FILES: Final[int] = 128  # parsed files kept (least recently used dropped)

# (first line, last line, qualified name), sorted by first line; nested spans follow their parent.
_Spans = tuple[tuple[int, int, str], ...]


class FunctionIndex:
    """``index("path/to/file.py:42")`` -> ``"Class.method"``, ``"<module>"`` for top-level
    code, or None when the file cannot be read or parsed. Bounded: ``max_files`` parsed files."""

    def __init__(self, max_files: int = _MAX_FILES) -> None:
        self.max_files = max_files
        self._files: OrderedDict[str, _Spans | None] = OrderedDict()
        self._lock = threading.Lock()  # the analysis thread warms it, the loop reads it

    def __call__(self, frame: str) -> str | None:
        path, _, line = frame.rpartition(":")
        if not path or not line.isdigit():
            return None
        spans = self._spans(path)
        if spans is None:
            return None
        lineno = int(line)
        # the innermost span holding the line: the last one starting at or before it that
        # also ends at or after it (nested spans start after their parent)
        for start, end, name in reversed(spans[: bisect_right(spans, (lineno, 1 << 62, ""))]):
            if start <= lineno <= end:
                return name
        return "<module>"

    def _spans(self, path: str) -> _Spans | None:
        with self._lock:
            if path in self._files:
                self._files.move_to_end(path)
                return self._files[path]
            spans = _parse(path)
            self._files[path] = spans
            while len(self._files) > self.max_files:
                self._files.popitem(last=False)
            return spans


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
