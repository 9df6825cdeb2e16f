"""A frame's function and line, read from the source: right where they can be, None elsewhere."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from soakd.sources import MAX_LINE_CHARS, MAX_SOURCE_BYTES, FunctionIndex, SourceLines, functions_of

SOURCE = """\
import functools

LIMIT = 3


class Cache:
    size = 0

    @functools.lru_cache
    def get(self, key):
        def build():
            return [key] * LIMIT
        return build()


async def handler(request):
    return request
"""


def test_each_line_is_named_by_its_innermost_function(tmp_path: Path) -> None:
    src = tmp_path / "app.py"
    src.write_text(SOURCE, encoding="utf-8")
    index = FunctionIndex()
    lines = {n: index(f"{src}:{n}") for n in (3, 7, 10, 12, 13, 17)}
    assert lines == {
        3: "<module>",
        7: "Cache",  # a class body
        10: "Cache.get",
        12: "Cache.get.build",
        13: "Cache.get",
        17: "handler",
    }
    assert functions_of([f"{src}:17", "<frozen importlib._bootstrap>:241", "nowhere"]) == [
        "handler",
        None,
        None,
    ]


def test_unreadable_unparsable_and_huge_files_are_unknown(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n", encoding="utf-8")
    huge = tmp_path / "huge.py"
    huge.write_bytes(b"x = 1\n" * (MAX_SOURCE_BYTES // 6 + 1))
    index = FunctionIndex()
    assert index(f"{broken}:1") is None
    assert index(f"{huge}:1") is None
    assert index(f"{tmp_path / 'missing.py'}:1") is None
    assert index(f"{tmp_path}:1") is None  # a directory


def test_a_fifo_in_a_traceback_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)
    answers: list[str | None] = []
    reader = threading.Thread(target=lambda: answers.append(FunctionIndex()(f"{fifo}:1")))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert answers == [None]


def test_the_index_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    index = FunctionIndex(max_files=2)
    for k in range(5):
        src = tmp_path / f"m{k}.py"
        src.write_text("def f():\n    return 1\n", encoding="utf-8")
        assert index(f"{src}:2") == "f"
    assert len(index._files) == 2


def test_a_sites_line_is_read_as_the_interpreter_numbers_it(tmp_path: Path) -> None:
    src = tmp_path / "legacy.py"
    # a declared latin-1 file, CRLF and bare CR line ends, a form feed (not a line end)
    body = "# -*- coding: latin-1 -*-\r\nNAME = 'caf\xe9'\rx = 1\x0c; y = 2\n\n" + "z" * 5000
    src.write_bytes(body.encode("latin-1"))
    lines = SourceLines()
    assert lines(f"{src}:2") == "NAME = 'café'"
    assert lines(f"{src}:3") == "x = 1\x0c; y = 2"
    assert lines(f"{src}:4") is None  # blank
    assert lines(f"{src}:5") == "z" * MAX_LINE_CHARS  # cut, not dropped
    assert lines(f"{src}:6") is None and lines(f"{src}:0") is None  # no such line
    assert lines("no-line-number") is None and lines(f"{src}:x") is None


def test_source_lines_never_block_and_stay_bounded(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.py"
    huge.write_bytes(b"x = 1\n" * (MAX_SOURCE_BYTES // 6 + 1))
    lines = SourceLines(max_files=2)
    answers: list[str | None] = []
    reader = threading.Thread(target=lambda: answers.append(lines(f"{fifo}:1")))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert answers == [None]
    assert lines(f"{huge}:1") is None and lines(f"{tmp_path / 'gone.py'}:1") is None
    for k in range(4):
        src = tmp_path / f"m{k}.py"
        src.write_text(f"VALUE = {k}\n", encoding="utf-8")
        assert lines(f"{src}:1") == f"VALUE = {k}"
    assert len(lines._files) == 2
